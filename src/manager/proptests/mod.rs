//! Property tests of the token manager, through the layer and its handle:
//! random interleavings of time, requests, revocations and spurious
//! rejections (the API answering `401`), refresh outcomes (tokens of any
//! lifetime, transient, terminal and rate-limited failures, calls that
//! never answer), cancelled requests, forced refreshes and tokens set by
//! hand, on tokio's paused clock in a current-thread runtime made per case.
//! Fleet mode (layers sharing a failing store) has its own, in [`fleet`].
//!
//! Invariants, checked as things happen (see [`world`]) and once idle:
//!
//! - at most one refresh call runs at a time (a `set_tokens` may overtake
//!   one, whose result then counts for nothing);
//! - no refresh call while a failure blocks one: not before the backoff or
//!   `Retry-After` has passed, and not at all after a terminal failure
//!   until new tokens are set;
//! - no request is sent with a token past its expiry, nor inside its
//!   mandatory window unless a refresh failed since the token arrived
//!   (static stability is the only reason to use such a token) or the
//!   token arrived that late and goes to the requests that waited for it;
//! - a request is sent at most twice, the second time only after a `401`;
//! - the generation never decreases, and rises whenever the token changes;
//! - every request ends with a response or a typed [`Error`](crate::Error);
//! - the stats add up: one refresh per call of the source, each a success
//!   or a failure; one rejection per `401`; one retry per second attempt.

mod fleet;
mod world;

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use proptest::prelude::*;
use tokio::task::JoinHandle;
use tower::{ServiceBuilder, ServiceExt};

use crate::{BoxError, TokenHandle, TokenRefreshLayer};
use world::{lock, FakeApi, Outcome, Shared, World, STEP};

#[derive(Debug, Clone)]
enum Op {
    /// Moves the clock on, in steps of [`STEP`].
    Advance(Duration),
    /// Sends this many requests at once.
    Requests(usize),
    /// The API revokes every token issued so far.
    Revoke,
    /// The API rejects the next attempts whatever their token.
    RejectNext(usize),
    /// Drops one of the requests still in flight.
    Cancel(usize),
    Force,
    SetTokens(Option<Duration>),
    /// Decides what the next refresh call does.
    Script(Outcome),
}

fn lifetime() -> impl Strategy<Value = Option<Duration>> {
    prop_oneof![
        1 => Just(None),
        1 => Just(Some(Duration::ZERO)),
        1 => Just(Some(Duration::from_millis(300))),
        2 => Just(Some(Duration::from_secs(2))),
        3 => Just(Some(Duration::from_secs(10))),
        2 => Just(Some(Duration::from_secs(60))),
        1 => Just(Some(Duration::from_secs(3600))),
    ]
}

fn delay() -> impl Strategy<Value = Duration> {
    prop_oneof![
        3 => Just(Duration::ZERO),
        2 => (1u64..=400).prop_map(Duration::from_millis),
        1 => (1u64..=3000).prop_map(Duration::from_millis),
    ]
}

fn outcome() -> impl Strategy<Value = Outcome> {
    let retry_after = prop_oneof![
        Just(None),
        (0u64..=20).prop_map(|s| Some(Duration::from_secs(s))),
    ];
    prop_oneof![
        3 => (lifetime(), delay()).prop_map(|(lifetime, delay)| Outcome::Token { lifetime, delay }),
        3 => delay().prop_map(|delay| Outcome::Transient { delay }),
        1 => delay().prop_map(|delay| Outcome::Terminal { delay }),
        2 => (retry_after, delay())
            .prop_map(|(retry_after, delay)| Outcome::RateLimited { retry_after, delay }),
        1 => Just(Outcome::Hang),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1u64..=6000).prop_map(|ms| Op::Advance(Duration::from_millis(ms))),
        6 => (1usize..=4).prop_map(Op::Requests),
        1 => Just(Op::Revoke),
        1 => (1usize..=3).prop_map(Op::RejectNext),
        2 => any::<usize>().prop_map(Op::Cancel),
        1 => Just(Op::Force),
        1 => lifetime().prop_map(Op::SetTokens),
        4 => outcome().prop_map(Op::Script),
    ]
}

/// Moves the clock on by `span` in steps of [`STEP`], letting the woken
/// tasks run after each step; then `after_each` checks what must hold.
async fn advance(span: Duration, mut after_each: impl FnMut()) {
    let steps = span.as_millis().div_ceil(STEP.as_millis()) as u32;
    for _ in 0..steps {
        tokio::time::advance(STEP).await;
        settle().await;
        after_each();
    }
}

/// A fresh current-thread runtime on tokio's paused clock, one per case.
fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime")
}

/// Lets every task the last change woke run before the clock moves on.
async fn settle() {
    for _ in 0..32 {
        tokio::task::yield_now().await;
    }
}

type Outcomes = Vec<JoinHandle<Result<http::StatusCode, BoxError>>>;

struct Driver {
    world: Shared,
    handle: TokenHandle,
    client: crate::TokenRefresh<FakeApi>,
    requests: Outcomes,
    forced: Vec<JoinHandle<Result<(), crate::Error>>>,
    next_id: u64,
    generation: u64,
    token: Option<String>,
}

impl Driver {
    async fn run(&mut self, op: Op) {
        match op {
            Op::Advance(span) => advance(span, || self.check_generation()).await,
            Op::Requests(n) => {
                for _ in 0..n {
                    self.next_id += 1;
                    let request = Request::builder()
                        .header("x-id", self.next_id)
                        .body(Full::new(Bytes::from_static(b"payload")))
                        .unwrap();
                    let client = self.client.clone();
                    self.requests.push(tokio::spawn(async move {
                        let response = client.oneshot(request).await?;
                        Ok(response.status())
                    }));
                }
            }
            Op::Revoke => lock(&self.world).revoke_all(),
            Op::RejectNext(n) => lock(&self.world).reject_next += n,
            Op::Cancel(pick) => {
                let live: Vec<_> = self.requests.iter().filter(|r| !r.is_finished()).collect();
                if !live.is_empty() {
                    live[pick % live.len()].abort();
                }
            }
            Op::Force => {
                let handle = self.handle.clone();
                self.forced
                    .push(tokio::spawn(async move { handle.force_refresh().await }));
            }
            Op::SetTokens(lifetime) => {
                let tokens = lock(&self.world).handed_tokens(lifetime, false);
                self.handle.set_tokens(tokens).expect("valid tokens");
            }
            Op::Script(outcome) => lock(&self.world).push(outcome),
        }
        settle().await;
        self.check_generation();
    }

    /// The generation never goes back, and moves whenever the token does.
    fn check_generation(&mut self) {
        let generation = self.handle.status().generation();
        let token = self
            .handle
            .tokens()
            .map(|t| t.access_token().expose().to_owned());
        let mut world = lock(&self.world);
        if generation < self.generation {
            world.violation(format!(
                "generation went back from {} to {generation}",
                self.generation
            ));
        }
        if token != self.token && generation == self.generation {
            world.violation(format!("the token changed within generation {generation}"));
        }
        drop(world);
        self.generation = generation;
        self.token = token;
    }

    /// Lets everything finish, then checks outcomes and stats.
    async fn finish(self) -> Vec<String> {
        // The clock runs on by itself while every task waits on a timer.
        tokio::time::sleep(Duration::from_secs(600)).await;
        settle().await;
        let mut violations = Vec::new();
        let mut requests = 0;
        for request in self.requests {
            if !request.is_finished() {
                violations.push("a request never ended".to_owned());
                continue;
            }
            match request.await {
                Ok(Ok(_status)) => requests += 1,
                Ok(Err(error)) => {
                    requests += 1;
                    if error.downcast_ref::<crate::Error>().is_none() {
                        violations.push(format!("an untyped error: {error}"));
                    }
                }
                Err(e) if e.is_cancelled() => {}
                Err(e) => violations.push(format!("a request task failed: {e}")),
            }
        }
        for forced in self.forced {
            if !forced.is_finished() {
                violations.push("a forced refresh never ended".to_owned());
            } else if let Err(e) = forced.await {
                violations.push(format!("a forced refresh task failed: {e}"));
            }
        }

        let stats = self.handle.stats();
        let world = lock(&self.world);
        violations.extend(world.violations.iter().cloned());
        if world.calls_running() > 0 {
            violations.push("a refresh call is still running when idle".to_owned());
        }
        let calls = world.calls() as u64;
        let mut expect = |what: &str, got: u64, want: u64| {
            if got != want {
                violations.push(format!("stats: {what} is {got}, expected {want}"));
            }
        };
        expect("refreshes", stats.refreshes, calls);
        expect(
            "refresh_successes + refresh_failures",
            stats.refresh_successes + stats.refresh_failures,
            stats.refreshes,
        );
        expect("rejections", stats.rejections, world.rejections);
        expect("retries", stats.retries, world.retried());
        if stats.retries > stats.rejections || stats.stale_rejections > stats.rejections {
            violations.push(format!("stats: more retries than rejections: {stats:?}"));
        }
        if stats.refresh_successes > world.calls_succeeded() as u64 {
            violations.push(format!(
                "stats: {} successes from {} successful calls",
                stats.refresh_successes,
                world.calls_succeeded()
            ));
        }
        if stats.waited > 2 * requests.max(self.next_id) {
            violations.push(format!(
                "stats: {} waits for {requests} requests",
                stats.waited
            ));
        }
        violations
    }
}

/// Runs `ops` on a fresh paused runtime; returns the violations seen.
fn run_case(
    initial: Option<Option<Duration>>,
    default: Option<Duration>,
    ops: Vec<Op>,
) -> Vec<String> {
    paused_runtime().block_on(async move {
        let world = World::new(default);
        let mut builder = TokenRefreshLayer::builder(world::scripted(&world))
            .refresh_timeout(world::REFRESH_TIMEOUT)
            .min_refresh_interval(world::MIN_REFRESH_INTERVAL)
            .backoff(world::backoff());
        if let Some(lifetime) = initial {
            builder = builder.initial_tokens(lock(&world).handed_tokens(lifetime, true));
        }
        let layer = builder.build();
        let handle = layer.handle();
        let client = ServiceBuilder::new().layer(layer).service(FakeApi {
            world: world.clone(),
        });
        let mut driver = Driver {
            world,
            handle,
            client,
            requests: Vec::new(),
            forced: Vec::new(),
            next_id: 0,
            generation: 0,
            token: None,
        };
        driver.check_generation();
        for op in ops {
            driver.run(op).await;
        }
        driver.finish().await
    })
}

/// 128 cases unless `PROPTEST_CASES` says otherwise.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(128)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn manager_keeps_its_invariants_under_any_interleaving(
        initial in prop_oneof![Just(None), lifetime().prop_map(Some)],
        default in lifetime(),
        ops in proptest::collection::vec(op(), 1..60),
    ) {
        let violations = run_case(initial, default, ops);
        prop_assert!(violations.is_empty(), "{}", violations.join("\n"));
    }
}
