//! Fleet mode: a flight's protocol with a [token store](crate::store).
//!
//! Each process still runs one flight at a time; the store makes one flight
//! in the whole fleet call the refresh source. The flight adopts a newer
//! stored version if one is usable, else takes the lease, refreshes from
//! the newest stored refresh token and stores the result, else waits for
//! whoever holds the lease. Any store failure ends the protocol for this
//! flight: it refreshes on its own, exactly as without a store, and then
//! offers its tokens to the store in the background.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::time::Instant;

use super::flight::{Failed, FlightTask, Obtained};
use super::snapshot::makes_header;
use super::{later, Config, Prepared, Shared, TokenManager};
use crate::error::ErrorKind;
use crate::refresh::RefreshContext;
use crate::stats::Counters;
use crate::store::{self, Decoded, DynStore, Lease, Record, StoreError};
use crate::{RefreshError, TokenSet};

/// A stored record, decoded.
struct Stored {
    version: u64,
    tokens: TokenSet,
    obtained_at: Instant,
}

impl FlightTask {
    /// Adopts, refreshes under the lease, or waits for the lease holder.
    pub(super) async fn obtain_shared(
        &self,
        shared_store: &Arc<dyn DynStore>,
        ctx: RefreshContext,
        started: Instant,
    ) -> Result<Obtained, Failed> {
        let config = &self.shared.config;
        let store = &**shared_store;
        let mut changes = store.subscribe_dyn();
        if let Some(changes) = &mut changes {
            // Only announcements from now on matter: the load below sees
            // everything stored before.
            changes.borrow_and_update();
        }
        let give_up = later(
            started,
            config.lease_ttl().saturating_add(store.poll_interval_dyn()),
        );
        loop {
            let stored = match load(&self.shared, store).await {
                Ok(stored) => stored,
                Err(error) => return self.alone(shared_store, error, ctx, started).await,
            };
            if let Some(stored) =
                stored.filter(|s| usable(&self.shared.config, s, self.known_version))
            {
                return Ok(stored.into_obtained());
            }
            match call(config, store.try_lease_boxed(config.lease_ttl())).await {
                Ok(Some(lease)) => {
                    let mut held = HeldLease {
                        store: Arc::clone(shared_store),
                        lease: Some(lease),
                    };
                    let result = self.refresh_and_store(shared_store, ctx, started).await;
                    if let Some(lease) = held.lease.take() {
                        self.release(store, lease).await;
                    }
                    return result;
                }
                Ok(None) => {}
                Err(error) => return self.alone(shared_store, error, ctx, started).await,
            }
            if Instant::now() >= give_up {
                return Err((
                    RefreshError::transient(
                        "another process held the token store's refresh lease past its time to live",
                    ),
                    ErrorKind::RefreshTimedOut,
                ));
            }
            wait_for_change(&mut changes, store.poll_interval_dyn()).await;
        }
    }

    /// Under the lease: look once more, refresh from the newest stored
    /// tokens, and store the result as the next version.
    async fn refresh_and_store(
        &self,
        shared_store: &Arc<dyn DynStore>,
        ctx: RefreshContext,
        started: Instant,
    ) -> Result<Obtained, Failed> {
        let store = &**shared_store;
        // Someone may have stored a version between our load and the lease.
        let stored = match load(&self.shared, store).await {
            Ok(stored) => stored,
            Err(error) => return self.alone(shared_store, error, ctx, started).await,
        };
        let expected = stored.as_ref().map(|s| s.version);
        let (ctx, base) = match stored {
            Some(stored) if is_newer(stored.version, self.known_version) => {
                if usable(&self.shared.config, &stored, self.known_version) {
                    return Ok(stored.into_obtained());
                }
                // Past its time, but it carries the newest refresh token.
                let version = stored.version;
                (ctx.with_current(Arc::new(stored.tokens)), Some(version))
            }
            stored => (ctx, stored.map(|s| s.version)),
        };
        let current = ctx.current().cloned();
        let mut obtained = self.obtain(ctx, Some((store, base)), started).await?;
        if obtained.adopted {
            return Ok(obtained);
        }
        // The stored record must carry the refresh token the source kept.
        obtained.tokens = obtained.tokens.inherit_refresh_token(current.as_ref());
        if !makes_header(&obtained.tokens) {
            // The flight fails on it; stored, it would fail every flight of
            // the fleet that adopted it, with nothing left to refresh from.
            return Ok(obtained);
        }
        // Versions only grow, even past a store that lost its data. Below
        // `u64::MAX`: `load` refuses that one, and known versions were loaded.
        let next = expected.max(self.known_version).unwrap_or(0) + 1;
        let record = record_of(&obtained.tokens, next, started);
        match call(
            &self.shared.config,
            store.compare_and_swap_boxed(expected, record),
        )
        .await
        {
            Ok(true) => obtained.version = Some(next),
            Ok(false) => tracing::warn!(
                "another process stored tokens while this one held the refresh lease; \
                 keeping this process's tokens without storing them"
            ),
            Err(error) => store_failed(&self.shared, &error, "storing the refreshed tokens"),
        }
        Ok(obtained)
    }

    /// After the refresh credential was rejected: newer tokens a sibling
    /// stored since the refresh started from `base`, if usable.
    pub(super) async fn adopt_newer(
        &self,
        store: &dyn DynStore,
        base: Option<u64>,
    ) -> Option<Obtained> {
        match load(&self.shared, store).await {
            Ok(stored) => stored
                .filter(|s| usable(&self.shared.config, s, base))
                .map(Stored::into_obtained),
            Err(error) => {
                store_failed(&self.shared, &error, "re-reading the store");
                None
            }
        }
    }

    /// The store failed: this flight refreshes on its own, then offers
    /// its tokens to the store.
    ///
    /// A source that rotates refresh tokens has just spent the one this
    /// process knew, which the store may hold too: left there, it would be
    /// spent again by the next process to refresh from the store, and an
    /// issuer that detects reuse answers that by revoking the whole family.
    /// The offer is a compare-and-swap over the version this process knew,
    /// so it never replaces a newer one, and it runs on its own task: the
    /// requests waiting for this flight do not wait on a store that has
    /// just failed.
    async fn alone(
        &self,
        shared_store: &Arc<dyn DynStore>,
        error: StoreError,
        ctx: RefreshContext,
        started: Instant,
    ) -> Result<Obtained, Failed> {
        store_failed(&self.shared, &error, "refreshing without the store");
        let current = ctx.current().cloned();
        let obtained = self.obtain(ctx, None, started).await?;
        // A record that does not read (corrupt, or not sealed with this
        // process's key) is refreshed around and never overwritten, even at
        // the version this process knew.
        if error.is_corrupt() {
            return Ok(obtained);
        }
        let tokens = obtained
            .tokens
            .clone()
            .inherit_refresh_token(current.as_ref());
        // One that makes no header fails the flight; stored, it would fail
        // every flight that adopted it.
        if makes_header(&tokens) {
            self.offer_in_background(shared_store, &tokens, started);
        }
        Ok(obtained)
    }

    /// Stores `tokens` as the version after the one this process knew, if
    /// that is still the stored one; the process then knows it as its own.
    fn offer_in_background(&self, store: &Arc<dyn DynStore>, tokens: &TokenSet, started: Instant) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let expected = self.known_version;
        // Below `u64::MAX`: known versions were loaded, and `load` refuses it.
        let next = expected.unwrap_or(0) + 1;
        let record = record_of(tokens, next, started);
        let (store, shared) = (Arc::clone(store), Arc::clone(&self.shared));
        runtime.spawn(async move {
            match call(
                &shared.config,
                store.compare_and_swap_boxed(expected, record),
            )
            .await
            {
                Ok(true) => {
                    let mut control = shared.lock();
                    // Unless a version was adopted or stored since.
                    if control.store_version == expected {
                        control.store_version = Some(next);
                    }
                }
                // Another process stored newer tokens meanwhile.
                Ok(false) => {}
                Err(error) => store_failed(
                    &shared,
                    &error,
                    "the tokens refreshed without it stay unstored",
                ),
            }
        });
    }

    async fn release(&self, store: &dyn DynStore, lease: Lease) {
        if let Err(error) = call(&self.shared.config, store.release_boxed(lease)).await {
            // The lease lapses on its own at its time to live.
            store_failed(&self.shared, &error, "the refresh lease will lapse");
        }
    }
}

/// The refresh lease while this flight holds it. Released by the flight
/// once its tokens are stored; dropped still held (the refresh source
/// panicked, or the flight's runtime shut down), it is released from a task
/// of its own, so other processes need not wait out its time to live.
struct HeldLease {
    store: Arc<dyn DynStore>,
    lease: Option<Lease>,
}

impl Drop for HeldLease {
    fn drop(&mut self) {
        let Some(lease) = self.lease.take() else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let store = Arc::clone(&self.store);
            runtime.spawn(async move {
                // Unanswered, the lease lapses at its time to live.
                let _ = store.release_boxed(lease).await;
            });
        }
    }
}

impl Stored {
    fn into_obtained(self) -> Obtained {
        Obtained {
            tokens: self.tokens,
            obtained_at: self.obtained_at,
            version: Some(self.version),
            adopted: true,
        }
    }
}

impl TokenManager {
    /// Adopts a version another process announced, unless a flight of ours
    /// runs (it adopts on its own) or the stored tokens are not usable (the
    /// next request that needs a refresh handles them).
    pub(super) async fn adopt_announced(&self, store: &dyn DynStore) {
        let shared = &self.shared;
        let known = shared.lock().store_version;
        let stored = match load(shared, store).await {
            Ok(Some(stored)) if usable(&shared.config, &stored, known) => stored,
            Ok(_) => return,
            Err(error) => {
                Counters::bump(&shared.stats.store_errors);
                tracing::debug!(error = %error, "token store failed; adopting later");
                return;
            }
        };
        let Ok(prepared) = Prepared::new(stored.tokens, stored.obtained_at, true) else {
            return;
        };
        let mut control = shared.lock();
        let now = Instant::now();
        if control.flight.as_ref().is_some_and(|f| f.is_live(now))
            || !is_newer(stored.version, control.store_version)
        {
            return;
        }
        shared.install_obtained(&mut control, prepared, Some(stored.version));
        drop(control);
        Counters::bump(&shared.stats.adopted);
        tracing::debug!(
            version = stored.version,
            "adopted tokens another process stored"
        );
        shared.changed.notify_waiters();
    }
}

/// Counts and logs a failed store call.
fn store_failed(shared: &Shared, error: &StoreError, doing: &str) {
    Counters::bump(&shared.stats.store_errors);
    tracing::warn!(error = %error, "token store failed; {doing}");
}

/// The record storing `tokens`, obtained by a flight that began at
/// `started`, as `version`.
fn record_of(tokens: &TokenSet, version: u64, started: Instant) -> Record {
    let issued = SystemTime::now()
        .checked_sub(started.elapsed())
        .unwrap_or_else(SystemTime::now);
    Record::new(version, store::encode(tokens, issued).to_vec())
}

/// Resolves at the next announced version, or after `poll`.
pub(super) async fn wait_for_change(changes: &mut Option<watch::Receiver<u64>>, poll: Duration) {
    let closed = match changes {
        Some(receiver) => tokio::select! {
            changed = receiver.changed() => changed.is_err(),
            () = tokio::time::sleep(poll) => false,
        },
        None => {
            tokio::time::sleep(poll).await;
            false
        }
    };
    if closed {
        // The store stopped announcing: poll from now on.
        *changes = None;
    }
}

async fn call<T>(
    config: &Config,
    future: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    let timeout = config.refresh_timeout;
    tokio::time::timeout(timeout, future)
        .await
        .unwrap_or_else(|_| {
            Err(StoreError::unavailable(format!(
                "no answer within the refresh timeout of {timeout:?}"
            )))
        })
}

async fn load(shared: &Shared, store: &dyn DynStore) -> Result<Option<Stored>, StoreError> {
    let Some(record) = call(&shared.config, store.load_boxed()).await? else {
        return Ok(None);
    };
    // No version can follow it: the next one stored would overflow.
    if record.version() == u64::MAX {
        return Err(StoreError::corrupt(
            "the stored version is the largest there is",
        ));
    }
    let Decoded { tokens, age } = store::decode(record.payload(), SystemTime::now())?;
    let now = Instant::now();
    Ok(Some(Stored {
        version: record.version(),
        tokens,
        // An age the clock cannot go back to counts as fresh from now.
        obtained_at: now.checked_sub(age).unwrap_or(now),
    }))
}

fn is_newer(version: u64, known: Option<u64>) -> bool {
    known.is_none_or(|known| version > known)
}

/// Whether `stored` is newer than `than` and may be sent now: not inside
/// its mandatory window, computed from its whole lifetime as the process
/// that stored it did.
fn usable(config: &Config, stored: &Stored, than: Option<u64>) -> bool {
    // A token that makes no header is refreshed from, not adopted.
    if !is_newer(stored.version, than) || !makes_header(&stored.tokens) {
        return false;
    }
    let Some(lifetime) = stored.tokens.expires_in() else {
        return true;
    };
    let advisory = config.advisory.before_expiry(lifetime);
    let mandatory = config.mandatory.before_expiry(lifetime).min(advisory);
    later(Instant::now(), mandatory) < later(stored.obtained_at, lifetime)
}
