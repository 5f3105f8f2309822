//! Fleet mode: a flight's protocol with a [token store](crate::store).
//!
//! Each process still runs one flight at a time; the store makes one flight
//! in the whole fleet call the refresh source. The flight adopts a newer
//! stored version if one is usable, else takes the lease, refreshes from
//! the newest stored refresh token and stores the result, else waits for
//! whoever holds the lease. A store failure while a sibling is seen
//! holding the lease is waited out, polling on; any other ends the
//! protocol for this flight: ahead of need (the token still good for more than
//! `Config::deferral_room`, three to five refresh timeouts, before its
//! mandatory window) it puts the refresh off, to ask the store again;
//! otherwise it refreshes on its own, as without a store, and then offers
//! its tokens to the store in the background. Tokens refreshed
//! under the lease whose write failed are offered the same way.

use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::time::Instant;

use super::flight::{paired_with_installed, Failed, FlightTask, Obtained};
use super::snapshot::makes_header;
use super::{later, Config, Control, Failure, Prepared, Shared, TokenManager};
use crate::error::ErrorKind;
use crate::refresh::RefreshContext;
use crate::stats::Counters;
use crate::store::{self, Decoded, DynStore, Lease, Record, StoreError};
use crate::{RefreshError, Secret, TokenSet};

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
        self.wait_for_offer().await;
        let give_up = later(
            started,
            config.lease_ttl().saturating_add(store.poll_interval_dyn()),
        );
        // Whether a sibling was seen holding the lease: its refresh is then
        // under way, and one of this flight's own would present the same
        // refresh token. A store error after that is waited out (polling
        // on, until `give_up`) instead of refreshing alone (found in
        // review: one failed load sent the flight alone beside the holder).
        let mut seen_held = false;
        loop {
            let known = self.known();
            let stored = match load(&self.shared, store).await {
                Ok(stored) => stored,
                // A record that does not read too: the holder's write
                // replaces it, and going alone would present the refresh
                // token the holder is presenting. (Should the holder's
                // record not read either, a key this process lacks, the
                // flight times out at `give_up`: slower, but no reuse.)
                Err(error) if seen_held && Instant::now() < give_up => {
                    store_failed(&self.shared, &error, "waiting for the lease's holder");
                    wait_for_change(&mut changes, store.poll_interval_dyn()).await;
                    continue;
                }
                Err(error) => return self.alone(shared_store, known, error, ctx).await,
            };
            if let Some(stored) = stored.filter(|s| usable(&self.shared, s, known)) {
                return Ok(stored.into_obtained());
            }
            // Counted from before the call: the store's own count starts later.
            let lease_ends = later(Instant::now(), config.lease_ttl());
            match call(config, store.try_lease_boxed(config.lease_ttl())).await {
                Ok(Some(lease)) => {
                    let held = HeldLease {
                        store: Arc::clone(shared_store),
                        lease: Some(lease),
                        ends: lease_ends,
                    };
                    let mut result = self.refresh_and_store(shared_store, ctx, lease_ends).await;
                    // Tokens left to offer keep the lease until the offer
                    // has settled: released now, a sibling could take it
                    // and refresh from the refresh token this flight spent.
                    if let Ok(Obtained {
                        offer: Some(offer), ..
                    }) = &mut result
                    {
                        offer.lease = Some(held);
                    } else {
                        held.release(&self.shared).await;
                    }
                    return result;
                }
                Ok(None) => seen_held = true,
                Err(error) if seen_held && Instant::now() < give_up => {
                    store_failed(&self.shared, &error, "waiting for the lease's holder");
                }
                Err(error) => return self.alone(shared_store, known, error, ctx).await,
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
        lease_ends: Instant,
    ) -> Result<Obtained, Failed> {
        let store = &**shared_store;
        let known = self.known();
        // Someone may have stored a version between our load and the lease.
        let stored = match load(&self.shared, store).await {
            Ok(stored) => stored,
            Err(error) => return self.alone(shared_store, known, error, ctx).await,
        };
        let loaded = stored.as_ref().map(|s| s.version);
        let mut expected = loaded;
        let (ctx, base) = match stored {
            Some(stored) if is_newer(stored.version, known) && !spent(&self.shared, &stored) => {
                if usable(&self.shared, &stored, known) {
                    return Ok(stored.into_obtained());
                }
                // Past its time, but it carries the newest refresh token.
                let version = stored.version;
                let installed = self.shared.snapshot.load().tokens.clone();
                let tokens = paired_with_installed(&Arc::new(stored.tokens), installed.as_ref());
                (ctx.with_current(tokens), Some(version))
            }
            stored => (ctx, stored.map(|s| s.version)),
        };
        let current = ctx.current().cloned();
        let mut obtained = self.obtain(ctx, Some((store, base))).await?;
        if obtained.adopted {
            return Ok(obtained);
        }
        if !makes_header(&obtained.tokens) && !obtained.tokens.rotated_from(current.as_ref()) {
            // The flight refuses it, and it holds nothing worth storing.
            // Stored when it rotated the refresh token: the store would
            // otherwise keep the one just spent. No process adopts such a
            // record (`usable` refuses it); each refreshes from it.
            return Ok(obtained);
        }
        // Until they are installed, the only copy of a refresh token the
        // server may already have rotated past.
        self.keep_unstored(&obtained);
        let mut next = next_version(expected, known);
        let mut written = self.write(store, expected, next, &obtained).await;
        // What a failure in `written` failed at, for its log line.
        let mut failed_at = "storing the refreshed tokens";
        // A store emptied meanwhile, or a record written meanwhile that
        // carries a refresh token this process has spent (an offer whose
        // write timed out here and reached the store late), holds nothing
        // to keep. Replaced, still under the lease (once, and only with
        // time left for a load and a write: the lease's time to live does
        // not count them); anything else is a sibling's.
        if matches!(written, Ok(None)) && self.lease_lasts_for_two_calls(lease_ends) {
            match replaceable(&self.shared, store).await {
                Ok(Some(over)) => {
                    // Versions only grow, even past a store that lost its data.
                    next = next_version(over.max(loaded), known);
                    expected = over;
                    written = self.write(store, expected, next, &obtained).await;
                }
                Ok(None) => {}
                // A record no key opens is no place to offer them to (as
                // when refreshing alone).
                Err(error) if error.is_corrupt() => {
                    store_failed(&self.shared, &error, "re-reading the store");
                }
                // Unread, the store may hold nothing (it lost its data and
                // is still coming back): the tokens are offered, as after a
                // failed write. Found in review: they were kept here only,
                // and a process starting meanwhile found the store empty.
                Err(error) => {
                    failed_at = "re-reading the store after a refused write";
                    written = Err(error);
                }
            }
        }
        match written {
            Ok(Some(version)) => {
                // Stored: a later flight adopts them, should this one be
                // dropped before installing them.
                self.unstored_tokens();
                obtained.version = Some(version);
            }
            Ok(None) => tracing::warn!(
                "another writer changed the token store while this process held the refresh lease; \
                 keeping this process's tokens without storing them"
            ),
            // The refresh token the store holds may just have been spent.
            // Installed, the tokens supersede the version they were
            // refreshed from (the newest of the stored and the known ones),
            // so no later flight refreshes from it again, even if the offer
            // fails too; and they are offered, as after a solo refresh.
            Err(error) => {
                store_failed(&self.shared, &error, failed_at);
                let superseded = expected.max(loaded).max(known);
                obtained.version = superseded;
                obtained.offer = Some(Offer::new(
                    shared_store,
                    expected,
                    superseded,
                    obtained.obtained_at,
                ));
            }
        }
        Ok(obtained)
    }

    /// Stores `obtained`'s tokens as `next` over `expected`: the version
    /// stored, or `None` if another writer came first.
    async fn write(
        &self,
        store: &dyn DynStore,
        expected: Option<u64>,
        next: u64,
        obtained: &Obtained,
    ) -> Result<Option<u64>, StoreError> {
        let record = Record::new(next, payload_of(&obtained.tokens, obtained.obtained_at));
        self.note_storing(next);
        let stored = call(
            &self.shared.config,
            store.compare_and_swap_boxed(expected, record),
        )
        .await;
        if matches!(stored, Ok(false)) {
            self.stored_nothing();
        }
        Ok(stored?.then_some(next))
    }

    /// The newest store version this process knows, read at each look:
    /// it only grows, and may have grown since the flight started (a
    /// version a flight overtaken by tokens set by hand stored meanwhile:
    /// never a sibling's tokens to adopt).
    fn known(&self) -> Option<u64> {
        self.shared.lock().store_version
    }

    /// Whether two more store calls (each bounded by the refresh timeout)
    /// end before the lease does.
    fn lease_lasts_for_two_calls(&self, lease_ends: Instant) -> bool {
        let two_calls = self.shared.config.refresh_timeout.saturating_mul(2);
        later(Instant::now(), two_calls) <= lease_ends
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
                .filter(|s| usable(&self.shared, s, base))
                .map(Stored::into_obtained),
            Err(error) => {
                store_failed(&self.shared, &error, "re-reading the store");
                None
            }
        }
    }

    /// Waits (within the refresh timeout) for an offer of tokens the last
    /// flight could not store, if one is still out, so that what this
    /// flight knows includes the version it stores. Without the wait, this
    /// flight could refresh from the tokens being offered and lose the race
    /// to store its own, leaving the store with a spent refresh token; or
    /// adopt the offered tokens back as a sibling's.
    async fn wait_for_offer(&self) {
        let pending = self.shared.lock().pending_offer.clone();
        if let Some(mut offer) = pending {
            // Resolves when the offer's task ends (its sender is dropped).
            let timeout = self.shared.config.refresh_timeout;
            let _ = tokio::time::timeout(timeout, offer.changed()).await;
        }
    }

    /// The store failed: this flight refreshes on its own, and its tokens
    /// are offered to the store once installed ([`Offer`]), unless the
    /// current token may still be sent for a while.
    ///
    /// A refresh without the store is a refresh the fleet does not know
    /// of: another process may hold the lease and present the same
    /// refresh token at the same time, which an issuer that rotates
    /// refresh tokens answers by revoking the whole family. A store blip
    /// ahead of need is therefore waited out: the refresh is put off (a
    /// backoff, ending [`Config::deferral_room`] before the token's
    /// mandatory window at the latest) and the store asked again, while requests go
    /// on with the token. Only a token past that point (or rejected, or
    /// missing), a forced refresh, or a stored record that does not read is
    /// refreshed without the store.
    async fn alone(
        &self,
        shared_store: &Arc<dyn DynStore>,
        known: Option<u64>,
        error: StoreError,
        ctx: RefreshContext,
    ) -> Result<Obtained, Failed> {
        // A record that does not read stays so: waiting would not help.
        if !error.is_corrupt() && self.ahead_of_need() {
            store_failed(
                &self.shared,
                &error,
                "the refresh waits while the token is good",
            );
            let deferred = RefreshError::transient(
                "the token store failed; the refresh waits while the current token is good",
            )
            .with_source(error);
            return Err((deferred, ErrorKind::RefreshDeferred));
        }
        store_failed(&self.shared, &error, "refreshing without the store");
        let mut obtained = self.obtain(ctx, None).await?;
        // A record that does not read (corrupt, or not sealed with this
        // process's key) is refreshed around and never overwritten, even at
        // the version this process knew.
        if !error.is_corrupt() {
            obtained.offer = Some(Offer::new(shared_store, known, known, obtained.obtained_at));
        }
        Ok(obtained)
    }
}

/// Fingerprints of the refresh tokens this process spent lately: presented
/// to a source that answered with another one. A stored record that
/// carries one is stale whatever its version says: an offer whose write
/// timed out here but reached the store later, while this process went on
/// refreshing, wrote it after the fact. Adopted, it would bring the spent
/// token back, and the next refresh from it would be refused (or, by an
/// issuer that detects reuse, revoke the whole family); so it is neither
/// adopted nor refreshed from, and the process replaces it with its own
/// tokens when it next sees it with no write of its own pending (announced,
/// or at its write under the lease while the lease has time left), before
/// a sibling that adopted it needs a refresh.
///
/// Keyed hashes, with keys of this process's own, not the tokens: nothing
/// secret outlives its tokens here. The last 16 only: older ones have
/// been superseded by the versions written since, unless every write
/// failed for that many refreshes in a row.
#[derive(Default)]
pub(super) struct Spent {
    keys: RandomState,
    last: [Option<u64>; 16],
    next: usize,
}

impl Spent {
    fn fingerprint(&self, token: &Secret) -> u64 {
        self.keys.hash_one(token.expose())
    }

    /// Notes that `presented` was spent, if `answer` replaced it.
    pub(super) fn note(&mut self, presented: Option<&TokenSet>, answer: &TokenSet) {
        let Some(token) = presented.and_then(TokenSet::refresh_token) else {
            return;
        };
        if answer.rotated_from(presented) {
            self.last[self.next] = Some(self.fingerprint(token));
            self.next = (self.next + 1) % self.last.len();
        }
    }

    /// Whether `tokens` carry a refresh token this process spent.
    fn holds(&self, tokens: &TokenSet) -> bool {
        tokens
            .refresh_token()
            .is_some_and(|token| self.last.contains(&Some(self.fingerprint(token))))
    }
}

/// Whether `stored` carries a refresh token this process has spent.
fn spent(shared: &Shared, stored: &Stored) -> bool {
    shared.lock().spent.holds(&stored.tokens)
}

/// The version to store tokens as: the one after the newer of the stored
/// and the known one, so versions only grow, even past a store that lost
/// its data. Saturated at `u64::MAX`, which `load` refuses as corrupt: the
/// fleet then refreshes around such a record, as around any unreadable one.
fn next_version(stored: Option<u64>, known: Option<u64>) -> u64 {
    stored
        .max(known)
        .map_or(1, |version| version.saturating_add(1))
}

/// The refresh lease while this flight holds it. Released by the flight
/// once its tokens are stored, or by its [`Offer`] once that has settled;
/// dropped still held (the refresh source panicked, the flight's runtime
/// shut down, or its tokens were refused before the offer started), it is
/// released from a task of its own, so other processes need not wait out
/// its time to live.
struct HeldLease {
    store: Arc<dyn DynStore>,
    lease: Option<Lease>,
    /// When the lease lapses, counted from before it was asked for.
    ends: Instant,
}

impl HeldLease {
    /// Releases the lease; unanswered, it lapses at its time to live.
    async fn release(mut self, shared: &Shared) {
        let Some(lease) = self.lease.take() else {
            return;
        };
        if let Err(error) = call(&shared.config, self.store.release_boxed(lease)).await {
            store_failed(shared, &error, "the refresh lease will lapse");
        }
    }
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
            offer: None,
            refused: None,
        }
    }
}

impl TokenManager {
    /// Adopts a version another process announced, unless a flight of ours
    /// runs (it adopts on its own) or the stored tokens are not usable (the
    /// next request that needs a refresh handles them). A record there is
    /// no keeping is replaced instead (`replace_stale`): one carrying a
    /// refresh token this process spent, or one older than the
    /// version this process knows (the store went back: a Redis restarted
    /// from its last snapshot, a file restored from a backup), whose
    /// refresh token a later version's refresh spent. Found in review: a
    /// process starting then adopted the old record and refreshed from its
    /// spent token, which an issuer detecting reuse answers by revoking
    /// the whole family. So is no record at all where this process knows a
    /// version (a Redis restarted without its data): found in a later
    /// review, a process starting then refreshed from the tokens it was
    /// given, long spent, or logged in and began a second family.
    pub(super) async fn adopt_announced(&self, store: &dyn DynStore) {
        let shared = &self.shared;
        let known = shared.lock().store_version;
        let stored = match load(shared, store).await {
            Ok(Some(stored)) if usable(shared, &stored, known) => stored,
            // Spent whatever its version (a process a version behind may
            // offer tokens whose refresh token a sibling spent, at the
            // version that sibling knows: found in a second review), or
            // older than what this process knows.
            Ok(Some(stored))
                if spent(shared, &stored) || known.is_some_and(|known| stored.version < known) =>
            {
                self.replace_stale(Some(stored.version));
                return;
            }
            Ok(None) if known.is_some() => {
                self.replace_stale(None);
                return;
            }
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
        let prepared = prepared.adopted();
        let mut control = shared.lock();
        // While an offer is out, the announced version may be this
        // process's own tokens: the offer settles which it is.
        if control.busy_with_store(Instant::now())
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

impl Control {
    /// Whether a flight runs or an offer is out: either settles what the
    /// store holds for this process.
    fn busy_with_store(&self, now: Instant) -> bool {
        let offering = self
            .pending_offer
            .as_ref()
            .is_some_and(|pending| pending.has_changed().is_ok());
        offering || self.flight.as_ref().is_some_and(|f| f.is_live(now))
    }
}

impl TokenManager {
    /// Offers this process's tokens over `found`, the version of a record
    /// that carries a spent refresh token (or `None`, no record), before a
    /// sibling adopts it (or, finding none, starts from the tokens it was
    /// given) and refreshes from a spent token. Not while a flight runs
    /// (its write finds it) or an offer is out (the next announcement or
    /// flight finds it); and tokens set by hand are not this process's to
    /// store.
    fn replace_stale(&self, found: Option<u64>) {
        let shared = &self.shared;
        let mut control = shared.lock();
        let now = Instant::now();
        if control.busy_with_store(now) {
            return;
        }
        // Tokens refused for good are no one's to store: a process started
        // with new tokens would take them over its own (found in review).
        let refused_for_good = control.failure.as_ref().is_some_and(Failure::is_terminal);
        let snapshot = shared.snapshot.load_full();
        let Some(tokens) = snapshot.tokens.clone() else {
            return;
        };
        if refused_for_good || snapshot.refreshed_at.is_none() || control.spent.holds(&tokens) {
            return;
        }
        // When their lifetime started: their expiry less their lifetime.
        let obtained_at = snapshot
            .expires_at
            .zip(tokens.expires_in())
            .and_then(|(expires_at, lifetime)| expires_at.checked_sub(lifetime))
            .unwrap_or(now);
        match found {
            Some(version) => tracing::warn!(
                version,
                "the token store holds a refresh token since spent; replacing it"
            ),
            None => tracing::warn!("the token store lost its record; storing the tokens again"),
        }
        let known = control.store_version;
        let store = shared.config.store.clone().expect("fleet mode has a store");
        Offer::new(&store, found, known, obtained_at).start(shared, &mut control, tokens);
    }
}

/// Tokens a flight could not store because the store failed: fetched on
/// its own, or fetched under the lease and then not written. They are
/// stored as the version after the newer of the one the process knew and
/// the one found in the store.
///
/// A source that rotates refresh tokens has just spent the refresh token
/// the flight refreshed from, which the store may hold: left there, it
/// would be spent again by the next process to refresh from the store, and
/// an issuer that detects reuse answers that by revoking the whole family.
/// The offer is a compare-and-swap over the version the store held when
/// the flight read it, so it never replaces a newer one, and it runs on
/// its own task: the requests waiting for the flight do not wait on a store
/// that has just failed. While it is out, the process's next flight waits
/// for it and its watcher adopts nothing. A flight that refreshed under the
/// lease hands the lease to its offer, which releases it once it has
/// settled, so that no sibling refreshes from the store meanwhile. The
/// lease's time to live is not lengthened for it: it covers the offer when
/// the calls before it took less than their whole timeouts, as they do
/// unless the store or the source hangs; past it, the lease lapses as it
/// would for a crashed holder.
///
/// An offer under the lease that fails is tried again, backing off, for up
/// to a refresh timeout while the lease leaves time for another call:
/// released after one failure, the lease went to a waiting sibling, which
/// loaded the version this flight refreshed from and presented the refresh
/// token it had spent (found in review). A store down for longer leaves
/// nothing better: the lease goes, and a sibling refreshes from the store
/// as it would after a crash.
pub(super) struct Offer {
    store: Arc<dyn DynStore>,
    /// The version the store held when the flight read it: the one the
    /// process knew, for a solo flight; under the lease, the one loaded
    /// there, which may be newer (a sibling's, past its time), older, or
    /// none (a store that lost its data).
    expected: Option<u64>,
    /// The version the process knows once the tokens are installed, which
    /// the offer's version is numbered past. Once stored, the process knows
    /// the offer's version as its own, whatever it has installed since.
    known: Option<u64>,
    /// When the tokens' lifetime started.
    obtained_at: Instant,
    /// The refresh lease, if the flight held it: released once the offer
    /// has settled (or, dropped unstarted, from a task of its own).
    lease: Option<HeldLease>,
}

impl Offer {
    fn new(
        store: &Arc<dyn DynStore>,
        expected: Option<u64>,
        known: Option<u64>,
        obtained_at: Instant,
    ) -> Self {
        Self {
            store: Arc::clone(store),
            expected,
            known,
            obtained_at,
            lease: None,
        }
    }

    /// Registers the offer of `tokens` in `control` and starts it.
    pub(super) fn start(self, shared: &Arc<Shared>, control: &mut Control, tokens: Arc<TokenSet>) {
        // Called by the flight's task, on its runtime, or by its drop
        // guard, which may run while that runtime shuts down: then the
        // offer is given up, and a lease it held lapses.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (settled, pending) = watch::channel(());
        control.pending_offer = Some(pending);
        let shared = Arc::clone(shared);
        let one_call = shared.config.refresh_timeout;
        // Tried again within one refresh timeout of now, about as long as
        // the process's own next flight waits for an offer, and only where
        // a whole attempt (a swap, a load and a swap) ends before the lease
        // does.
        let stop_by = later(Instant::now(), one_call);
        runtime.spawn(async move {
            // Encoded here, not under the caller's lock.
            let payload = payload_of(&tokens, self.obtained_at);
            let (mut stored, mut version) = self.attempt(&shared, &payload).await;
            let mut pause = OFFER_RETRY_FIRST;
            while let (Err(error), Some(held)) = (&stored, &self.lease) {
                let retry_at = later(Instant::now(), pause);
                if retry_at > stop_by || later(retry_at, one_call.saturating_mul(3)) > held.ends {
                    break;
                }
                store_failed(
                    &shared,
                    error,
                    "offering the refreshed tokens again under the lease",
                );
                tokio::time::sleep(pause).await;
                pause = pause.saturating_mul(2).min(OFFER_RETRY_MAX);
                (stored, version) = self.attempt(&shared, &payload).await;
            }
            match stored {
                // The process knows it as its own. Moved on meanwhile (it
                // installed other tokens, set by hand, or adopted or stored
                // a later version), it still knows it: its own tokens,
                // overtaken, never to be adopted back over what overtook
                // them (found in review: tokens set by hand while the
                // offer was out were replaced by it).
                Ok(true) => {
                    let mut control = shared.lock();
                    control.store_version = control.store_version.max(Some(version));
                }
                // Another process stored newer tokens meanwhile.
                Ok(false) => {}
                Err(error) => store_failed(&shared, &error, "the refreshed tokens stay unstored"),
            }
            // Released before the offer settles: the process's next flight
            // may want the lease.
            if let Some(held) = self.lease {
                held.release(&shared).await;
            }
            // Closes the channel: the offer has settled, and the version it
            // moved is there for whoever waited.
            drop(settled);
        });
    }
}

/// The first wait before an offer under the lease is tried again, and the
/// longest: a store that failed a moment ago is asked again soon, then
/// less often while it stays down.
const OFFER_RETRY_FIRST: Duration = Duration::from_millis(200);
const OFFER_RETRY_MAX: Duration = Duration::from_secs(2);

impl Offer {
    /// One offer of `payload` over the version the flight read, as the
    /// version after it (or, replacing what the store holds instead, after
    /// that): whether it was stored, and as which version.
    async fn attempt(&self, shared: &Shared, payload: &[u8]) -> (Result<bool, StoreError>, u64) {
        let config = &shared.config;
        let record = |version| Record::new(version, payload.to_vec());
        let next = next_version(self.expected, self.known);
        let stored = call(
            config,
            self.store
                .compare_and_swap_boxed(self.expected, record(next)),
        )
        .await;
        // Refused, the swap may have found no sibling's newer tokens but a
        // store that lost its data, or a late write of this process's: the
        // tokens replace them, or the store stays empty (a sibling logs
        // in) or spent (a sibling refreshes in vain).
        if !matches!(stored, Ok(false)) {
            return (stored, next);
        }
        match replaceable(shared, &*self.store).await {
            Ok(Some(over)) => {
                let next = next_version(over.max(self.expected), self.known);
                let swap = self.store.compare_and_swap_boxed(over, record(next));
                (call(config, swap).await, next)
            }
            Ok(None) => (stored, next),
            Err(error) => {
                store_failed(shared, &error, "re-reading the store");
                (stored, next)
            }
        }
    }
}

/// After a swap was refused: the version to store over instead, when what
/// the store holds now is nothing to keep: `Some(None)` for a store found
/// empty (it lost its data, as a Redis restarted without persistence
/// does), `Some(version)` for a record carrying a refresh token this
/// process has spent (a write of its own that timed out and landed late).
/// `None` for a sibling's record; the error of a store that cannot be read.
async fn replaceable(
    shared: &Shared,
    store: &dyn DynStore,
) -> Result<Option<Option<u64>>, StoreError> {
    Ok(match load(shared, store).await? {
        None => {
            tracing::warn!("the token store was found empty; storing the refreshed tokens");
            Some(None)
        }
        Some(stored) if spent(shared, &stored) => Some(Some(stored.version)),
        Some(_) => None,
    })
}

/// Counts and logs a failed store call.
fn store_failed(shared: &Shared, error: &StoreError, doing: &str) {
    Counters::bump(&shared.stats.store_errors);
    tracing::warn!(error = %error, "token store failed; {doing}");
}

/// What a record of `tokens`, whose lifetime started at `obtained_at`,
/// holds.
fn payload_of(tokens: &TokenSet, obtained_at: Instant) -> Vec<u8> {
    let issued = SystemTime::now()
        .checked_sub(obtained_at.elapsed())
        .unwrap_or_else(SystemTime::now);
    store::encode(tokens, issued).to_vec()
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
    let (tokens, obtained_at) = dated(tokens, age, Instant::now());
    Ok(Some(Stored {
        version: record.version(),
        tokens,
        obtained_at,
    }))
}

/// When tokens `age` old were obtained, by the monotonic clock.
///
/// Where that clock cannot go back so far (on Windows it starts at boot,
/// so tokens stored before a reboot, or by another machine before this one
/// booted, have no instant of their own), they are dated now instead, with
/// what is left of their lifetime: their expiry stays where it was (their
/// windows are those of the shorter lifetime). Counted as fresh from now,
/// tokens past their expiry were adopted and sent, and live ones outlived
/// their expiry by the machine's age.
fn dated(tokens: TokenSet, age: Duration, now: Instant) -> (TokenSet, Instant) {
    if let Some(obtained_at) = now.checked_sub(age) {
        return (tokens, obtained_at);
    }
    let tokens = match tokens.expires_in() {
        Some(lifetime) => {
            let left = lifetime.saturating_sub(age);
            tokens.with_expires_in(left)
        }
        None => tokens,
    };
    (tokens, now)
}

fn is_newer(version: u64, known: Option<u64>) -> bool {
    known.is_none_or(|known| version > known)
}

/// Whether `stored` is newer than `than` and may be sent now: not inside
/// its mandatory window, computed from its whole lifetime as the process
/// that stored it did.
fn usable(shared: &Shared, stored: &Stored, than: Option<u64>) -> bool {
    // A token that makes no header is refreshed from, not adopted.
    if !is_newer(stored.version, than)
        || !makes_header(&stored.tokens)
        || spent(shared, stored)
        || rejected_here(shared, &stored.tokens)
    {
        return false;
    }
    let config = &shared.config;
    let Some(lifetime) = stored.tokens.expires_in() else {
        return true;
    };
    let advisory = config.advisory.before_expiry(lifetime);
    let mandatory = config.mandatory.before_expiry(lifetime).min(advisory);
    later(Instant::now(), mandatory) < later(stored.obtained_at, lifetime)
}

/// Whether `tokens` carry the access token a server rejected in this
/// process, still the current one: stored as a version this process did
/// not know (it started from those tokens, or a sibling adopted them),
/// they would only be rejected again. Found in review: adopted, the
/// retry was rejected, and the rejections after it were given back for
/// `min_refresh_interval` as those of a token just refreshed.
fn rejected_here(shared: &Shared, tokens: &TokenSet) -> bool {
    let snapshot = shared.snapshot.load();
    let current = snapshot.tokens.as_ref();
    snapshot.is_rejected() && current.is_some_and(|c| c.access_token() == tokens.access_token())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found in review: an age the clock could not go back to counted as
    /// fresh from now. Here the age is one no clock can go back to.
    #[test]
    fn tokens_older_than_the_clock_keep_their_expiry() {
        let now = Instant::now();
        let hour = Duration::from_secs(3600);
        let expired = TokenSet::new("a").with_expires_in(hour);
        let (tokens, at) = dated(expired, Duration::MAX, now);
        assert_eq!((tokens.expires_in(), at), (Some(Duration::ZERO), now));

        let live = TokenSet::new("a").with_expires_in(Duration::MAX);
        let (tokens, at) = dated(live, Duration::MAX - hour, now);
        assert_eq!((tokens.expires_in(), at), (Some(hour), now));

        let endless = TokenSet::new("a");
        let (tokens, at) = dated(endless, Duration::MAX, now);
        assert_eq!((tokens.expires_in(), at), (None, now));

        let recent = TokenSet::new("a").with_expires_in(hour);
        let (tokens, at) = dated(recent, Duration::from_secs(60), now);
        assert_eq!(tokens.expires_in(), Some(hour));
        assert_eq!(at + Duration::from_secs(60), now);
    }
}
