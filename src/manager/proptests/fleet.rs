//! Property tests of fleet mode: several layers (standing in for several
//! processes) share one token store and one identity server that rotates
//! refresh tokens and refuses a spent one, under random interleavings of
//! time, requests, revocations, forced refreshes and store failures, on
//! tokio's paused clock in a current-thread runtime made per case.
//!
//! Invariants, checked once idle:
//!
//! - every request and every forced refresh ends, and every error is a
//!   typed [`Error`](crate::Error), never a refresh put off because the
//!   store failed (requests go on with the token meanwhile, and a forced
//!   refresh is never put off);
//! - while the store never failed: no refresh token is presented after
//!   another layer has spent it, and no request or forced refresh fails
//!   (the identity server answers every call in time);
//! - the stats add up: every refresh a layer started is a success, a failure
//!   or an adoption (which an idle layer makes too), and the successes are
//!   the identity server's answers.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proptest::prelude::*;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tower::ServiceBuilder;

use super::{advance, cases, paused_runtime, settle};
use crate::error::ErrorKind;
use crate::store::{Lease, MemoryStore, Record, StoreError, TokenStore};
use crate::test_support::rotating::Rotating;
use crate::test_support::{get, send, Api};
use crate::{BoxError, TokenHandle, TokenRefresh, TokenRefreshLayer};

/// A [`MemoryStore`] whose calls, of any kind, fail while `failing` is
/// above zero (each failed call counts it down) or until `down_until`;
/// `failed` counts the calls that did. Announcements still come.
#[derive(Clone, Default)]
struct Outage {
    inner: MemoryStore,
    failing: Arc<AtomicUsize>,
    down_until: Arc<Mutex<Option<Instant>>>,
    failed: Arc<AtomicUsize>,
}

impl Outage {
    /// Whether this call fails (and counts it if so).
    fn fails(&self) -> bool {
        let down = self
            .down_until
            .lock()
            .unwrap()
            .is_some_and(|until| Instant::now() < until);
        let fails = down
            || self
                .failing
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
        if fails {
            self.failed.fetch_add(1, Ordering::SeqCst);
        }
        fails
    }

    fn call<T>(
        &self,
        call: impl Future<Output = Result<T, StoreError>> + Send,
    ) -> impl Future<Output = Result<T, StoreError>> + Send {
        let fails = self.fails();
        async move {
            if fails {
                return Err(StoreError::unavailable("injected store failure"));
            }
            call.await
        }
    }
}

impl TokenStore for Outage {
    fn load(&self) -> impl Future<Output = Result<Option<Record>, StoreError>> + Send {
        self.call(self.inner.load())
    }
    fn compare_and_swap(
        &self,
        expected: Option<u64>,
        record: Record,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        self.call(self.inner.compare_and_swap(expected, record))
    }
    fn try_lease(
        &self,
        ttl: Duration,
    ) -> impl Future<Output = Result<Option<Lease>, StoreError>> + Send {
        self.call(self.inner.try_lease(ttl))
    }
    fn release(&self, lease: Lease) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.call(self.inner.release(lease))
    }
    fn subscribe(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.inner.subscribe()
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// Moves the clock on, in steps of [`STEP`](super::world::STEP).
    Advance(Duration),
    /// Sends this many requests at once through one layer (picked modulo
    /// the number of layers).
    Requests { layer: usize, n: usize },
    /// The API revokes every access token issued so far.
    Revoke,
    /// Forces a refresh through one layer.
    Force(usize),
    /// The next this many store calls fail.
    StoreFails(usize),
    /// Every store call fails for this long from now.
    StoreDown(Duration),
}

/// Steps of a case; with `faults`, store failures among them.
fn op(faults: bool) -> impl Strategy<Value = Op> {
    let store_failures = u32::from(faults);
    prop_oneof![
        6 => (1u64..=8000).prop_map(|ms| Op::Advance(Duration::from_millis(ms))),
        6 => (any::<usize>(), 1usize..=3).prop_map(|(layer, n)| Op::Requests { layer, n }),
        1 => Just(Op::Revoke),
        1 => any::<usize>().prop_map(Op::Force),
        2 * store_failures => (1usize..=4).prop_map(Op::StoreFails),
        store_failures => (1u64..=30).prop_map(|s| Op::StoreDown(Duration::from_secs(s))),
    ]
}

/// Half the cases with store failures, half without: the invariants that
/// hold only while the store works are checked in the second half, with
/// runs as long as the first's.
fn ops() -> impl Strategy<Value = Vec<Op>> {
    any::<bool>().prop_flat_map(|faults| proptest::collection::vec(op(faults), 1..50))
}

/// Short, so that a refresh put off for a store failure (which ends three
/// refresh timeouts before the mandatory window) happens with tokens of
/// tens of seconds.
const REFRESH_TIMEOUT: Duration = Duration::from_secs(3);

type Sent = JoinHandle<Result<(http::StatusCode, String), BoxError>>;

struct Fleet {
    idp: Rotating,
    store: Outage,
    layers: Vec<(TokenHandle, TokenRefresh<Api>)>,
    requests: Vec<Sent>,
    forced: Vec<JoinHandle<Result<(), crate::Error>>>,
}

impl Fleet {
    fn new(idp: Rotating, size: usize) -> Self {
        let store = Outage::default();
        let layers = (0..size)
            .map(|_| {
                let layer = TokenRefreshLayer::builder(idp.source())
                    .refresh_timeout(REFRESH_TIMEOUT)
                    .store(store.clone())
                    .build();
                let client = ServiceBuilder::new()
                    .layer(layer.clone())
                    .service(idp.api.clone());
                (layer.handle(), client)
            })
            .collect();
        Self {
            idp,
            store,
            layers,
            requests: Vec::new(),
            forced: Vec::new(),
        }
    }

    async fn run(&mut self, op: Op) {
        match op {
            Op::Advance(span) => advance(span, || {}).await,
            Op::Requests { layer, n } => {
                let (_, client) = &self.layers[layer % self.layers.len()];
                for _ in 0..n {
                    self.requests.push(tokio::spawn(send(client, get())));
                }
            }
            Op::Revoke => self.idp.revoke_all(),
            Op::Force(layer) => {
                let handle = self.layers[layer % self.layers.len()].0.clone();
                self.forced
                    .push(tokio::spawn(async move { handle.force_refresh().await }));
            }
            Op::StoreFails(n) => {
                self.store.failing.fetch_add(n, Ordering::SeqCst);
            }
            Op::StoreDown(span) => {
                *self.store.down_until.lock().unwrap() = Some(Instant::now() + span);
            }
        }
        settle().await;
    }

    /// Lets everything finish, then checks outcomes and stats.
    async fn finish(self) -> Vec<String> {
        // The clock runs on by itself while every task waits on a timer.
        tokio::time::sleep(Duration::from_secs(600)).await;
        settle().await;
        let store_failed = self.store.failed.load(Ordering::SeqCst) > 0;
        let mut violations = Vec::new();
        let mut unexpected = |what: String| {
            if !store_failed {
                violations.push(format!("{what} though the store never failed"));
            }
        };
        let mut untyped = Vec::new();
        // A refresh put off for a store failure is the layer's own affair:
        // requests go on with the token, and a forced refresh is never put
        // off.
        let mut deferred = Vec::new();
        let mut unfinished = 0;
        for request in self.requests {
            if !request.is_finished() {
                unfinished += 1;
                continue;
            }
            match request.await.expect("the request task ran") {
                Ok(_) => {}
                Err(error) => match error.downcast_ref::<crate::Error>() {
                    Some(typed) if typed.kind() == ErrorKind::RefreshDeferred => {
                        deferred.push(format!("a request failed: {typed}"));
                    }
                    Some(typed) => unexpected(format!("a request failed: {typed}")),
                    None => untyped.push(format!("an untyped error: {error}")),
                },
            }
        }
        for forced in self.forced {
            if !forced.is_finished() {
                unfinished += 1;
                continue;
            }
            match forced.await.expect("the forced refresh's task ran") {
                Ok(()) => {}
                Err(error) if error.kind() == ErrorKind::RefreshDeferred => {
                    deferred.push(format!("a forced refresh failed: {error}"));
                }
                Err(error) => unexpected(format!("a forced refresh failed: {error}")),
            }
        }
        let (_, _, spent) = self.idp.counts();
        if spent > 0 {
            unexpected(format!("{spent} spent refresh tokens presented"));
        }
        if unfinished > 0 {
            violations.push(format!(
                "{unfinished} requests or forced refreshes never ended"
            ));
        }
        violations.extend(untyped);
        violations.extend(deferred);
        let mut successes = 0;
        for (i, (handle, _)) in self.layers.iter().enumerate() {
            let stats = handle.stats();
            successes += stats.refresh_successes;
            // A refresh may end in an adoption; an idle layer adopts too.
            let called = stats.refresh_successes + stats.refresh_failures;
            if called > stats.refreshes || stats.refreshes > called + stats.adopted {
                violations.push(format!("layer {i}: the stats do not add up: {stats:?}"));
            }
        }
        let (logins, refreshes, _) = self.idp.counts();
        if successes != (logins + refreshes) as u64 {
            violations.push(format!(
                "{successes} successes counted for {logins} logins and {refreshes} refreshes"
            ));
        }
        violations
    }
}

/// Runs `ops` on a fleet of `size` layers sharing a store, on a fresh
/// paused runtime; returns the violations seen.
fn run_case(size: usize, (lifetime, delay): (Duration, Duration), ops: Vec<Op>) -> Vec<String> {
    let idp = Rotating {
        lifetime,
        delay,
        ..Rotating::default()
    };
    paused_runtime().block_on(async move {
        let mut fleet = Fleet::new(idp, size);
        for op in ops {
            fleet.run(op).await;
        }
        fleet.finish().await
    })
}

/// The identity server's token lifetime and answer delay: up to a quarter
/// of the lifetime (a token that lives no longer than its refresh takes is
/// refused, rightly), and within the refresh timeout.
fn identity_server() -> impl Strategy<Value = (Duration, Duration)> {
    let lifetime = prop_oneof![
        Just(Duration::from_secs(2)),
        Just(Duration::from_secs(10)),
        Just(Duration::from_secs(30)),
        Just(Duration::from_secs(100)),
    ];
    let share = prop_oneof![2 => Just(0u32), 3 => 1u32..=25];
    (lifetime, share).prop_map(|(lifetime, percent)| {
        let delay = (lifetime * percent / 100).min(REFRESH_TIMEOUT * 5 / 6);
        (lifetime, delay)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn a_fleet_sharing_a_store_keeps_its_invariants_under_any_interleaving(
        size in 2usize..=3,
        idp in identity_server(),
        ops in ops(),
    ) {
        let violations = run_case(size, idp, ops);
        prop_assert!(violations.is_empty(), "{}", violations.join("\n"));
    }
}
