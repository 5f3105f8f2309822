//! `TokenManager`: the one place where token state lives.
//!
//! Every front end (the tower layer, the reqwest middleware, the handle's
//! `bearer` and `bearer_after_rejection`) asks the manager for a credential
//! and reports rejections to it; the manager decides when to refresh and
//! makes sure only one refresh runs at a time.
//!
//! Reading the token is lock-free: the current [`Snapshot`] sits in an
//! `ArcSwap`. The `control` mutex guards the rare decisions (start a refresh,
//! record a failure) and is never held across an `.await`.

mod failure;
mod fleet;
mod flight;
mod flight_wait;
mod hook;
mod snapshot;
mod thread_copy;
mod timer;
pub(crate) mod window;

use std::cell::Cell;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError, Weak};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
#[cfg(feature = "tonic")]
use http::HeaderValue;
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

use crate::error::ErrorKind;
use crate::refresh::{BoxFuture, DynRefresh};
use crate::stats::Counters;
use crate::store::DynStore;
use crate::{Error, RefreshReason, Stats, TokenSet, TokenState, TokenStatus};

pub use failure::Backoff;
use failure::Failure;
pub(crate) use flight::Flight;
use flight_wait::FlightWait;
pub(crate) use snapshot::makes_header;
use snapshot::Prepared;
pub(crate) use snapshot::Snapshot;
pub(crate) use snapshot::{Credential, Freshness, BEARER};
use window::RefreshWindow;

/// Called with the new tokens after each successful refresh, before any
/// request can use them.
pub(crate) type RefreshHook = Arc<dyn Fn(&TokenSet) -> BoxFuture<()> + Send + Sync>;

pub(crate) struct Config {
    pub(crate) advisory: RefreshWindow,
    pub(crate) mandatory: RefreshWindow,
    pub(crate) refresh_timeout: Duration,
    pub(crate) min_refresh_interval: Duration,
    pub(crate) backoff: Backoff,
    pub(crate) background: bool,
    pub(crate) on_refresh: Option<RefreshHook>,
    /// Where the first tokens come from, and new ones after the refresh
    /// credential was rejected for good.
    pub(crate) login: Option<Arc<dyn DynRefresh>>,
    /// Where tokens are shared with other processes (or kept across
    /// restarts).
    pub(crate) store: Option<Arc<dyn DynStore>>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            advisory: RefreshWindow::default_advisory(),
            mandatory: RefreshWindow::default_mandatory(),
            refresh_timeout: Duration::from_secs(10),
            min_refresh_interval: Duration::from_secs(5),
            backoff: Backoff::default(),
            background: false,
            on_refresh: None,
            login: None,
            store: None,
        }
    }
}

impl Config {
    /// The longest a flight may run: each of its calls (refresh, login if
    /// the refresh credential was rejected, the `on_refresh` hook) has the
    /// whole refresh timeout.
    ///
    /// With a store: waiting for another holder's lease (given up a lease
    /// and a poll after the start, but the last load and lease attempt may
    /// begin up to a poll after that and each take a refresh timeout), then
    /// the work under the lease (a lease at most), then releasing it and
    /// running the hook, each bounded by the refresh timeout.
    pub(crate) fn flight_budget(&self) -> Duration {
        match &self.store {
            None => self.work_budget(),
            Some(store) => self
                .lease_ttl()
                .saturating_mul(2)
                .saturating_add(store.poll_interval_dyn().saturating_mul(2))
                .saturating_add(self.refresh_timeout.saturating_mul(4)),
        }
    }

    /// The calls one refresh makes: refresh, login, hook.
    fn work_budget(&self) -> Duration {
        let calls = if self.login.is_some() { 3 } else { 2 };
        self.refresh_timeout.saturating_mul(calls)
    }

    /// How long before a token's mandatory window a refresh put off for a
    /// failing store may still be put off (see `FlightTask::deferral_horizon`):
    /// the flight started then may wait for an offer still out and for a
    /// store load that hangs, then refresh alone, log in if the refresh
    /// credential is refused, and run the `on_refresh` hook, each up to the
    /// refresh timeout. Unlike [`work_budget`](Self::work_budget), which
    /// bounds deadlines and errs long, a login or hook not configured takes
    /// no room here: the room is time the refresh is not put off.
    pub(crate) fn deferral_room(&self) -> Duration {
        let optional = [self.login.is_some(), self.on_refresh.is_some()];
        let calls = 3 + optional.into_iter().map(u32::from).sum::<u32>();
        self.refresh_timeout.saturating_mul(calls)
    }

    /// How long a store's refresh lease lives: the work under it (a second
    /// load, the refresh and login, the compare-and-swap; each store call
    /// bounded by the refresh timeout) and a second of slack. A holder that
    /// is alive never loses it; one that crashed blocks no one longer.
    pub(crate) fn lease_ttl(&self) -> Duration {
        self.work_budget()
            .saturating_add(self.refresh_timeout.saturating_mul(2))
            .saturating_add(Duration::from_secs(1))
    }
}

/// What a request should do next.
pub(crate) enum Decision {
    /// Send with this credential now.
    Use(Credential),
    /// Wait for the refresh in flight.
    Wait(Flight),
    /// Fail with this error (terminal state, or backoff with no valid token).
    Fail(Error),
    /// Return the rejection as it is: a refresh would not help.
    GiveUp,
}

/// What a request held before it is sent does (see
/// [`TokenManager::newest`]).
pub(crate) enum Newest {
    /// Goes out with this credential.
    Send(Credential),
    /// Waits for this refresh first.
    Wait(Flight),
    /// Fails with this error: no refresh can run for the token it needs.
    Fail(Error),
}

/// What has become of a refreshed token by the time its waiter is polled.
enum Since {
    /// Still the current token, and not rejected.
    Current,
    /// The current token, this one or one that replaced it, has been
    /// rejected by a server.
    Rejected,
    /// Another token has replaced it, and no server has rejected that one.
    Replaced,
}

/// Which manager a handed-out token came from. Weak, so a token kept
/// after its layer is gone holds none of it, but its allocation: the
/// address cannot be reused by another manager while this is held.
#[derive(Clone)]
pub(crate) struct ManagerId(Weak<Shared>);

/// A request waiting for a usable token: nameable, so that a response
/// future holds it in place instead of boxing an `async` one (see
/// [`flight_wait`]).
pub(crate) struct Waiting {
    /// The flight waited for; `None` until the first decision, which is
    /// made at the first poll: a future made outside a runtime stays
    /// usable inside one.
    flight: Option<FlightWait>,
    /// Flights joined so far, this one included.
    rounds: u8,
    /// A generation a server rejected that is not handed back should the
    /// refresh end without a token (see [`Flight::past`]).
    past: Option<u64>,
}

impl Waiting {
    /// A request that has not yet looked at the token.
    pub(crate) fn undecided() -> Self {
        Self {
            flight: None,
            rounds: 0,
            past: None,
        }
    }
}

/// State changed only under the `control` lock.
#[derive(Default)]
struct Control {
    flight: Option<Flight>,
    failure: Option<Failure>,
    consecutive_failures: u32,
    /// Refreshes put off in a row because the store failed ahead of need
    /// (`fleet`): they back off on their own count, so that a real
    /// failure after them starts its backoff afresh.
    consecutive_deferrals: u32,
    /// Numbers flights, so a finishing task knows whether it is still the
    /// registered one.
    flights_started: u64,
    /// The refresh token the last flight started refreshes from, if any:
    /// tokens set by hand that carry it do not overtake that flight while
    /// it is the registered one (see `set_tokens`).
    flight_refreshes_from: Option<crate::Secret>,
    /// The store version the current tokens came from or were stored as;
    /// only a newer stored version is adopted.
    store_version: Option<u64>,
    /// The last offer of tokens a flight could not store
    /// (`fleet::Offer`); its channel closes once it has settled, and a
    /// closed one stands for none.
    pending_offer: Option<tokio::sync::watch::Receiver<()>>,
    /// Tokens that carry a live refresh token beside an access token no
    /// request can use: fetched by the last flight but not installed (the
    /// access token already expired, or not a valid header value), or
    /// given as initial tokens (a saved refresh token alone, or refused
    /// tokens the hook persisted). The next flight refreshes from them.
    /// Cleared when tokens are installed.
    refused: Option<Arc<TokenSet>>,
    /// The refresh token (or, for tokens without one, the access token a
    /// sliding session refreshes with) the source last rejected for good:
    /// a flight whose refresh would present it goes straight to the login
    /// instead, rather than present it again each backoff cycle while the
    /// login fails (a wasted round trip that also spends a rate-limited
    /// endpoint's budget). Kept by value, not by generation: the flight may
    /// refresh from refused tokens or, in fleet mode, from a stored record.
    /// Cleared when tokens are installed; a login that succeeds installs.
    dead_refresh_token: Option<crate::Secret>,
    /// The refresh tokens this process spent lately (`fleet::Spent`): a
    /// stored record carrying one is neither adopted nor refreshed from.
    spent: fleet::Spent,
    /// The last `on_refresh` hook started, which the next one stops first
    /// (see [`hook`]).
    last_hook: Option<hook::HookRun>,
    /// The version the registered flight is storing or has stored, and
    /// not yet settled (the flight's number, the version): known as this
    /// process's own should tokens set by hand overtake that flight before
    /// it settles (see `FlightTask::note_storing`).
    storing: Option<(u64, u64)>,
    /// The flight whose tokens made the current snapshot: that snapshot's
    /// generation, the flight's number, and the store version the tokens
    /// came with (see `FlightTask::succeed`).
    installed_by: Option<(u64, u64, Option<u64>)>,
}

pub(crate) struct Shared {
    snapshot: ArcSwap<Snapshot>,
    control: Mutex<Control>,
    refresher: Arc<dyn DynRefresh>,
    config: Config,
    stats: Counters,
    /// Origin of `proactive_gate`'s clock.
    epoch: Instant,
    /// Nanoseconds since `epoch` before which no proactive refresh may start:
    /// the deadline of the flight that runs, `u64::MAX` after a terminal
    /// failure, the backoff deadline after a failure, the installed token's
    /// `proactive_from` after a refresh, 0 after tokens set by hand (the
    /// end of a rate limit they outlast). Lets a
    /// request in the stale window decide without taking the lock.
    proactive_gate: AtomicU64,
    /// Woken whenever the snapshot or the failure state changes.
    changed: Arc<Notify>,
    timer_started: AtomicBool,
    /// The runtime the watcher last panicked on (at once on one without
    /// timers; `timer::runtime_key`, 0 for none), where it is not started
    /// again: each request would spawn another. Background refresh and
    /// adoption stop there; requests read the clock themselves. Atomic:
    /// requests there ask on every call, and the hot path takes no lock.
    watcher_panicked_on: AtomicU64,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Lets the background timer notice that it has nothing left to serve.
        self.changed.notify_waiters();
    }
}

/// The transport-agnostic core shared by every front end.
///
/// # Clone
///
/// Clones share the same state.
#[derive(Clone)]
pub(crate) struct TokenManager {
    shared: Arc<Shared>,
}

impl TokenManager {
    pub(crate) fn new(
        refresher: Arc<dyn DynRefresh>,
        config: Config,
        initial: Option<TokenSet>,
    ) -> Self {
        let epoch = Instant::now();
        let mut control = Control::default();
        let snapshot = match initial {
            Some(tokens) if makes_header(&tokens) => Prepared::new(tokens, epoch, false)
                .expect("the header was checked valid above")
                .into_snapshot(1, epoch, &config),
            // A saved refresh token alone (`TokenSet::from_refresh_token`),
            // or tokens the `on_refresh` hook saw refused, persisted and
            // given back: no request can use the access token, but the
            // refresh token is the live one, and the first refresh starts
            // from them.
            Some(tokens) if tokens.refresh_token().is_some() => {
                tracing::info!("no initial access token to send; the first request refreshes from the refresh token");
                control.refused = Some(Arc::new(tokens));
                Snapshot::empty(0)
            }
            // Nothing to refresh from: the first request gets a token as if
            // none had been given (a login source, or a source that needs
            // no refresh token, such as client credentials, can get one).
            Some(_) => {
                tracing::warn!("initial access token is not a valid header value and no refresh token came with it; the first request gets a token as if none had been given");
                Snapshot::empty(0)
            }
            None => Snapshot::empty(0),
        };
        let manager = Self {
            shared: Arc::new(Shared {
                snapshot: ArcSwap::from_pointee(snapshot),
                control: Mutex::new(control),
                refresher,
                config,
                stats: Counters::default(),
                epoch,
                proactive_gate: AtomicU64::new(0),
                changed: Arc::new(Notify::new()),
                timer_started: AtomicBool::new(false),
                watcher_panicked_on: AtomicU64::new(0),
            }),
        };
        manager.ensure_timer();
        manager
    }

    /// The hot path: a credential if the current token may be sent now.
    ///
    /// Lock-free. A fresh token costs a look at the calling thread's copy of
    /// its header and one load of its flags (see `thread_copy`), and where
    /// no watcher vouches for it (a current-thread runtime) a load of
    /// whether the timer runs and a clock read. Otherwise the snapshot is
    /// loaded, which makes or renews that copy. In the stale window it also
    /// starts one background refresh (unless one runs or a backoff is
    /// active, which the gate tells without the lock).
    #[inline]
    pub(crate) fn ready(&self) -> Option<Credential> {
        match thread_copy::vouched(&self.shared) {
            Some(credential) => Some(credential),
            None => self.ready_from_snapshot(),
        }
    }

    /// [`ready`](Self::ready) when the thread's copy cannot vouch for the
    /// token: the first request on a thread, or since the token changed or
    /// was rejected; every request from shortly before the stale window
    /// on (the watcher's lead), and while the timer is not running; and
    /// through a thread's layers past the copies it keeps.
    #[inline(never)]
    fn ready_from_snapshot(&self) -> Option<Credential> {
        #[cfg(test)]
        tests::FROM_SNAPSHOT.with(|count| count.set(count.get() + 1));
        let snapshot = self.shared.snapshot.load();
        // A token the watcher vouches for needs no more checks (the
        // watcher is the timer, so it has started too), while the clock
        // agrees that its word holds. Found in review: trusted without the
        // clock, a watcher that never ran again without dying had requests
        // sent without a thread's copy (a thread's layers past the copies
        // it keeps) go out with its token past expiry, with no bound.
        if !snapshot.kept_fresh_by_the_clock() && !self.admits(&snapshot) {
            return None;
        }
        Some(Credential {
            header: thread_copy::header(&self.shared, &snapshot)?,
            generation: snapshot.generation,
        })
    }

    /// [`ready`](Self::ready)'s checks for a token the watcher does not
    /// vouch for: starts the timer if it is not running, and a proactive
    /// refresh for a stale token; false for a token that must not be sent.
    #[inline]
    fn admits(&self, snapshot: &Snapshot) -> bool {
        if !self.shared.timer_started.load(Ordering::Relaxed) {
            self.ensure_timer();
        }
        match snapshot.freshness_fast() {
            Freshness::Fresh => true,
            Freshness::Stale => {
                if self.shared.gate_open(Instant::now()) {
                    self.start_proactive(snapshot.generation);
                }
                true
            }
            Freshness::Expired => false,
        }
    }

    /// [`poll_waiting`](Self::poll_waiting) from [`Waiting::undecided`],
    /// awaited.
    pub(crate) async fn acquire(self) -> Result<Credential, Error> {
        let mut waiting = Waiting::undecided();
        std::future::poll_fn(|cx| self.poll_waiting(&mut waiting, cx)).await
    }

    /// A server rejected a request sent with `generation`.
    ///
    /// If a newer token exists, retry with it (the stale-401 guard: no
    /// refresh). Otherwise mark this generation rejected and join or start
    /// the refresh, unless the token is too young to be worth refreshing.
    pub(crate) fn rejected(&self, generation: u64) -> Decision {
        let stats = &self.shared.stats;
        Counters::bump(&stats.rejections);
        let snapshot = self.shared.snapshot.load();
        // A token we just obtained being rejected points at a server that
        // misuses 401; refreshing again would only hammer the IdP. A
        // refresh already running is joined, which costs it nothing:
        // found in review, a server that revokes the token a sliding
        // refresh presents (seed 003 allows it) rejected the requests in
        // flight with it until the answer landed, and they were given the
        // 401 instead of the token on its way.
        let current = snapshot.generation == generation;
        let min_interval = self.shared.config.min_refresh_interval;
        let just_came = current
            && snapshot
                .refreshed_at
                .is_some_and(|at| at.elapsed() < min_interval);
        // A token already replaced is left alone: the decision hands out
        // its successor.
        if current && !just_came {
            snapshot.mark_rejected();
        }
        drop(snapshot);
        if just_came {
            if let Some(decision) = self.join_running(generation) {
                return decision;
            }
        }
        let decision = self.decide(Some(RefreshReason::Rejected));
        // Stale is what the decision says, not the load above: a refresh
        // may finish between the two, and a replaced token whose successor
        // is unusable too is waited for, not retried at once.
        if let Decision::Use(credential) = &decision {
            if credential.generation != generation {
                Counters::bump(&stats.stale_rejections);
            }
        }
        decision
    }

    /// A server rejected the token whose header is `sent` after its
    /// response had begun (gRPC's UNAUTHENTICATED in a stream's trailers):
    /// there is no request left to retry, but the next one should not go
    /// out with that token. The header is compared by value with the
    /// current token's. Equal, the rejection is decided as
    /// [`rejected`](Self::rejected) decides one for the current generation:
    /// the token is marked rejected and its refresh started (on its own
    /// task, with no one waiting for it here), unless a refresh brought it
    /// less than `min_refresh_interval` ago (then only counted, as a
    /// rejected request's would be: another refresh would likely be
    /// rejected too). Any other header is left alone, uncounted: a token
    /// already replaced needs nothing, and one that is not the layer's
    /// is none of its business. A token replaced between the look and
    /// the decision counts as a stale rejection, as a request's would.
    #[cfg(feature = "tonic")]
    pub(crate) fn rejected_after_response(&self, sent: &HeaderValue) {
        let generation = {
            let snapshot = self.shared.snapshot.load();
            if snapshot.header.as_ref() != Some(sent) {
                return;
            }
            snapshot.generation
        };
        // What to do with a request; there is none. A refresh it started
        // runs without it.
        drop(self.rejected(generation));
    }

    /// For a rejection of `generation`, a token that came from a refresh
    /// moments ago: the running refresh to wait for, never handing that
    /// token back (see [`Flight::past`]); else giving up. `None` if the
    /// token was replaced meanwhile: decided as any stale rejection is.
    fn join_running(&self, generation: u64) -> Option<Decision> {
        let control = self.shared.lock();
        // Under the lock, where a refresh lands: found in review, one
        // landing between the caller's look and this one left no flight
        // to join, and the request was given its 401 with the new token
        // already in.
        if self.shared.snapshot.load().generation != generation {
            return None;
        }
        let live = control
            .flight
            .as_ref()
            .filter(|f| f.is_live(Instant::now()));
        Some(live.map_or(Decision::GiveUp, |flight| {
            Decision::Wait(flight.clone().past(generation))
        }))
    }

    /// [`poll_waiting`](Self::poll_waiting), awaited.
    pub(crate) async fn wait(self, flight: Flight) -> Result<Credential, Error> {
        let mut waiting = self.waiting(flight);
        std::future::poll_fn(|cx| self.poll_waiting(&mut waiting, cx)).await
    }

    /// A waiter for `flight`, counted as a request that waited; polled with
    /// [`poll_waiting`](Self::poll_waiting).
    pub(crate) fn waiting(&self, flight: Flight) -> Waiting {
        let mut waiting = Waiting::undecided();
        self.join(&mut waiting, flight);
        waiting
    }

    /// Makes `waiting` wait for `flight`; the first flight counts the
    /// request as one that waited.
    fn join(&self, waiting: &mut Waiting, flight: Flight) {
        if waiting.rounds == 0 {
            Counters::bump(&self.shared.stats.waited);
        }
        waiting.past = waiting.past.or(flight.rejected_generation());
        waiting.flight = Some(flight.waiter());
        waiting.rounds += 1;
    }

    /// A usable token: at once, or once the refresh in flight (joined or
    /// started here for an undecided waiter) is done. A failed refresh
    /// still yields the current token while it is valid (static
    /// stability).
    ///
    /// A flight overtaken by `set_tokens` hands out nothing: the tokens set
    /// may have passed their refresh point, or expired, while it ran. Each
    /// waiter then decides afresh, as a new request would, joining or
    /// starting a refresh from those tokens if they need one. So does a
    /// waiter whose new token a server rejected before the waiter was
    /// polled: handed out, it would only be rejected again. And a waiter
    /// whose new token another replaced meanwhile (its rejection's refresh,
    /// say) decides afresh too, which hands out the newest if it is usable.
    pub(crate) fn poll_waiting(
        &self,
        waiting: &mut Waiting,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Credential, Error>> {
        /// Each round outlives a refresh whose outcome the waiter could not
        /// use (overtaken by tokens set by hand, its token rejected or
        /// replaced before this poll, put off or abandoned); past a few,
        /// the caller is better off with an error.
        const ROUNDS: u8 = 3;
        loop {
            let mut reason = None;
            // The token a server rejected for this waiter, if it was left
            // unmarked: never handed back to it.
            let rejected_for_it = waiting.past;
            if let Some(flight) = &mut waiting.flight {
                match ready!(flight.poll_outcome(cx)) {
                    Ok(Some(credential)) => match self.since_it_came(&credential) {
                        Since::Current => return Poll::Ready(Ok(credential)),
                        // Rejected by another answer between its refresh
                        // and this poll (it, or the token that replaced
                        // it), it is not handed out: decided afresh below,
                        // as for a request arriving now, which joins or
                        // starts the refresh the rejection needs.
                        Since::Rejected => reason = Some(RefreshReason::Rejected),
                        // Replaced (by the refresh its rejection started,
                        // tokens set by hand, a proactive refresh, a
                        // store's): decided afresh below, which hands out
                        // the newest token if it is usable and otherwise
                        // waits for its refresh or fails, as a request
                        // arriving now would. Found by a reqwest test: the
                        // request, which sends what this hands out as it
                        // is, went out with a token rejected and replaced
                        // before it was polled.
                        Since::Replaced => {}
                    },
                    // Overtaken: decided afresh below.
                    Ok(None) => {}
                    Err(error) => {
                        let snapshot = self.shared.snapshot.load();
                        let rejected = rejected_for_it == Some(snapshot.generation);
                        if !rejected && snapshot.is_valid(Instant::now()) {
                            if let Some(credential) = snapshot.credential() {
                                return Poll::Ready(Ok(credential));
                            }
                        }
                        // Put off while the token was good, which it is no
                        // longer (rejected meanwhile): decided afresh,
                        // which refreshes without the store. Abandoned (its
                        // runtime stopped driving it): decided afresh, which
                        // replaces it on this runtime, unless this is the
                        // runtime that dropped it. Either way, the token
                        // rejected for this waiter but left unmarked (a
                        // rejection moments after its refresh) starts no
                        // refresh: the decision below refuses it.
                        if error.is_abandoned() && flight.dropped_here() {
                            return Poll::Ready(Err(Error::new(ErrorKind::RefreshAborted)));
                        }
                        if !error.is_deferred() && !error.is_abandoned() {
                            return Poll::Ready(Err(error));
                        }
                    }
                }
            }
            match self.decide(reason) {
                // The token a server rejected moments after its refresh,
                // left unmarked (see `rejected`): the refresh joined for it
                // ended without a token (put off, abandoned, or its result
                // overtaken), and the rejection stands, as when there was
                // none to join. Found in review: it was handed back, and
                // retried.
                Decision::Use(credential) if rejected_for_it == Some(credential.generation) => {
                    return Poll::Ready(Err(Error::new(ErrorKind::RejectedTooSoon)))
                }
                Decision::Use(credential) => return Poll::Ready(Ok(credential)),
                Decision::Wait(next) if waiting.rounds < ROUNDS => self.join(waiting, next),
                // Only rejections give up; should that ever change, fail the
                // request rather than the process.
                Decision::Wait(_) | Decision::GiveUp => {
                    return Poll::Ready(Err(Error::new(ErrorKind::RefreshAborted)))
                }
                Decision::Fail(error) => return Poll::Ready(Err(error)),
            }
        }
    }

    /// Use the current token, join the flight, start one, or fail because a
    /// failure still blocks refreshing. Decided under the lock; a new
    /// flight is spawned after it is released.
    fn decide(&self, reason: Option<RefreshReason>) -> Decision {
        let launch = {
            let mut control = self.shared.lock();
            let snapshot = self.shared.snapshot.load_full();
            let now = Instant::now();
            // Re-check under the lock: a refresh may have finished since the
            // caller looked (the "serialize but never re-check" pitfall).
            if snapshot.freshness(now) != Freshness::Expired {
                if let Some(credential) = snapshot.credential() {
                    return Decision::Use(credential);
                }
            }
            // A flight past its deadline is not being driven (its runtime
            // idles or stopped): start a new one instead of joining it.
            if let Some(flight) = control.flight.as_ref().filter(|f| f.is_live(now)) {
                return Decision::Wait(flight.clone());
            }
            if let Some(failure) = control.failure.as_ref().filter(|f| f.blocks_needed(now)) {
                if snapshot.is_valid(now) {
                    return snapshot
                        .credential()
                        .map_or(Decision::GiveUp, Decision::Use);
                }
                return Decision::Fail(failure.to_error());
            }
            // A refreshed token that arrived already inside its mandatory
            // window (a slow identity server, or a lifetime shorter than
            // the window) is used while valid until `min_refresh_interval`
            // has passed: refreshing again at once, request after request,
            // would call that server back to back.
            // A rejection of this very token marked it, so it is not valid;
            // a stale one (of a token it replaced) is retried with it.
            if snapshot.is_valid(now) && self.arrived_recently(&snapshot, now) {
                if let Some(credential) = snapshot.credential() {
                    return Decision::Use(credential);
                }
            }
            let reason = reason.unwrap_or(snapshot.refresh_reason(RefreshReason::Proactive));
            match self.start_flight(&mut control, reason, &snapshot) {
                Ok(launch) => launch,
                Err(error) => return Decision::Fail(error),
            }
        };
        Decision::Wait(launch.spawn())
    }

    /// Whether `snapshot` came from a refresh less than
    /// `min_refresh_interval` ago (tokens set by hand never count).
    fn arrived_recently(&self, snapshot: &Snapshot, now: Instant) -> bool {
        let interval = self.shared.config.min_refresh_interval;
        snapshot
            .refreshed_at
            .is_some_and(|at| now.saturating_duration_since(at) < interval)
    }

    /// Starts a background refresh for a stale token, if still needed.
    fn start_proactive(&self, generation: u64) {
        // Never block a request on the lock: whoever holds it is already
        // deciding about a refresh. A poisoned lock guards data that is
        // always left consistent, so it is used like any other.
        let mut control = match self.shared.control.try_lock() {
            Ok(control) => control,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return,
        };
        let snapshot = self.shared.snapshot.load_full();
        let now = Instant::now();
        if snapshot.generation != generation
            || control.flight.as_ref().is_some_and(|f| f.is_live(now))
            || control.failure.as_ref().is_some_and(|f| f.blocks(now))
        {
            return;
        }
        // Without a runtime the request goes on with its still-usable token.
        let launch = self.start_flight(&mut control, RefreshReason::Proactive, &snapshot);
        drop(control);
        if let Ok(launch) = launch {
            launch.spawn();
        }
    }

    /// Starts a refresh regardless of the token's freshness, honouring any
    /// failure that still blocks refreshing (a refresh put off because the
    /// store failed does not).
    pub(crate) fn force(&self) -> Result<Flight, Error> {
        let launch = {
            let mut control = self.shared.lock();
            let now = Instant::now();
            if let Some(flight) = control.flight.as_ref().filter(|f| f.is_live(now)) {
                return Ok(flight.clone());
            }
            if let Some(failure) = control.failure.as_ref().filter(|f| f.blocks_needed(now)) {
                return Err(failure.to_error());
            }
            let snapshot = self.shared.snapshot.load_full();
            self.start_flight(&mut control, RefreshReason::Forced, &snapshot)?
        };
        Ok(launch.spawn())
    }

    /// Replaces the tokens and clears any failure, terminal included, but
    /// a rate limit still in force.
    pub(crate) fn set_tokens(&self, tokens: TokenSet) -> Result<(), InvalidTokens> {
        let prepared = Prepared::new(tokens, Instant::now(), false).map_err(|_| InvalidTokens)?;
        let mut control = self.shared.lock();
        // A rate limit still in force is kept (DESIGN, 429: no refresh call
        // before `Retry-After`), with the count its next backoff grows
        // from. Every other failure was about the old tokens (terminal), or
        // is cleared with them.
        let now = Instant::now();
        let kept_until = control
            .failure
            .as_ref()
            .filter(|failure| failure.limits_calls(now))
            .and_then(|failure| failure.until);
        if kept_until.is_none() {
            control.failure = None;
            control.consecutive_failures = 0;
        }
        control.consecutive_deferrals = 0;
        // A refresh still running started from the old tokens: its result
        // must not replace these (it would also carry the old refresh
        // token). It finds itself superseded when it ends; its waiters are
        // told now, and decide afresh from these tokens rather than wait
        // for it (up to its deadline, if the identity server hangs).
        // Unless these carry the refresh token it refreshes from (an app
        // setting back the tokens it saved): its answer is then theirs to
        // follow, and the only one holding the live refresh token where
        // the server rotates them, so it is kept, and requests join it
        // rather than present that refresh token a second time beside it
        // (found in review). Its waiters wait on for its answer, which
        // replaces these tokens anyway.
        let continued = control.flight.is_some()
            && control
                .flight_refreshes_from
                .as_ref()
                .is_some_and(|from| prepared.refresh_token() == Some(from));
        let overtaken = if continued {
            None
        } else {
            // What it has stored already is its own result, overtaken:
            // never adopted back over these tokens.
            if let Some((_, version)) = control.storing.take() {
                control.store_version = control.store_version.max(Some(version));
            }
            control.flight.take()
        };
        control.refused = None;
        control.dead_refresh_token = None;
        self.shared.install(prepared);
        // Shut until a kept rate limit ends, as after any failure: requests
        // in the stale window would otherwise each take the lock to find
        // it. Left shut while a kept refresh runs, as its start shut it.
        if !continued {
            let gate = self.shared.gate_after(control.failure.as_ref());
            self.shared.proactive_gate.store(gate, Ordering::Release);
        }
        drop(control);
        if let Some(flight) = overtaken {
            flight.overtaken();
        }
        self.shared.changed.notify_waiters();
        Ok(())
    }

    /// The bound on one refresh; also bounds how long a rejected request
    /// waits for its body to be released before giving up the retry.
    pub(crate) fn refresh_timeout(&self) -> Duration {
        self.shared.config.refresh_timeout
    }

    pub(crate) fn stats(&self) -> Stats {
        self.shared.stats.snapshot()
    }

    /// What a request holding `credential` goes out with, decided as it is
    /// sent: a request that waited for its service to be ready (or a retry
    /// for its body) goes out with the newest token. That is the current
    /// credential if it is newer than `credential` and usable, else
    /// `credential` itself, unless that very token was rejected by another
    /// request's answer since it was handed out, or reached its mandatory
    /// window since, or a newer one exists but cannot be used (in its
    /// mandatory window, or rejected in turn): then the refresh to wait
    /// for, or the failure that blocks it, as a request arriving now would
    /// get. Sent anyway, the older token would only be rejected again.
    pub(crate) fn newest(&self, credential: Credential) -> Newest {
        let snapshot = self.shared.snapshot.load();
        let newer = snapshot.generation > credential.generation;
        let expired = snapshot.freshness(Instant::now()) == Freshness::Expired;
        if newer && !expired {
            if let Some(newer) = snapshot.credential() {
                return Newest::Send(newer);
            }
        }
        // This token or the newer one, rejected by another request's answer.
        let rejected = snapshot.is_rejected();
        drop(snapshot);
        // This very token may also have reached its mandatory window while
        // the request was held (its service slow to be ready). Found in
        // review: it went out even past its expiry, only to be rejected.
        if newer || rejected || expired {
            match self.decide(rejected.then_some(RefreshReason::Rejected)) {
                Decision::Wait(flight) => return Newest::Wait(flight),
                Decision::Use(current) => return Newest::Send(current),
                // No refresh can run (a failure blocks it): its typed
                // error, as a request arriving now gets (DESIGN: requests
                // fail fast with a clear error). Found in review (twice):
                // sent anyway, the request was only rejected, and a
                // retry's rejection was returned as it was.
                Decision::Fail(error) => return Newest::Fail(error),
                // Only rejections give up.
                Decision::GiveUp => {}
            }
        }
        Newest::Send(credential)
    }

    /// What has become of `credential`'s token since it came.
    fn since_it_came(&self, credential: &Credential) -> Since {
        let snapshot = self.shared.snapshot.load();
        if snapshot.is_rejected() {
            Since::Rejected
        } else if snapshot.generation != credential.generation {
            Since::Replaced
        } else {
            Since::Current
        }
    }

    /// When the token of `generation` expires, if it is still the current
    /// one: `Some(None)` for a token without a known expiry, `None` once
    /// another has replaced it.
    pub(crate) fn expiry_of(&self, generation: u64) -> Option<Option<Instant>> {
        let snapshot = self.shared.snapshot.load();
        (snapshot.generation == generation).then_some(snapshot.expires_at)
    }

    /// Which manager this is, for a token handed out to be told of later.
    pub(crate) fn id(&self) -> ManagerId {
        ManagerId(Arc::downgrade(&self.shared))
    }

    /// Whether `id` is this manager's.
    pub(crate) fn is(&self, id: &ManagerId) -> bool {
        Weak::ptr_eq(&id.0, &Arc::downgrade(&self.shared))
    }

    /// Counts a rejection without acting on it (the retry's own rejection:
    /// acting on it could start a second refresh for one request).
    pub(crate) fn count_rejection(&self) {
        Counters::bump(&self.shared.stats.rejections);
    }

    pub(crate) fn count_retry(&self) {
        Counters::bump(&self.shared.stats.retries);
    }

    /// A redacted summary of the current state.
    pub(crate) fn status(&self) -> TokenStatus {
        let control = self.shared.lock();
        let snapshot = self.shared.snapshot.load_full();
        let now = Instant::now();
        let terminal = control.failure.as_ref().is_some_and(Failure::is_terminal);
        // Or held beside no usable access token (found in review: tokens
        // started from a saved refresh token said none).
        let holds_refresh =
            |tokens: Option<&Arc<TokenSet>>| tokens.is_some_and(|t| t.refresh_token().is_some());
        let has_refresh =
            holds_refresh(snapshot.tokens.as_ref()) || holds_refresh(control.refused.as_ref());
        let state = match snapshot.freshness(now) {
            Freshness::Expired if terminal => TokenState::ReauthRequired,
            _ if snapshot.header.is_none() => TokenState::Missing,
            Freshness::Fresh => TokenState::Fresh,
            Freshness::Stale => TokenState::Stale,
            Freshness::Expired => TokenState::Expired,
        };
        TokenStatus {
            generation: snapshot.generation,
            state,
            has_token: snapshot.header.is_some(),
            has_refresh_token: has_refresh,
            expires_in: snapshot
                .expires_at
                .map(|e| e.saturating_duration_since(now)),
            // A flight past its deadline is given up on: nothing runs.
            refreshing: control.flight.as_ref().is_some_and(|f| f.is_live(now)),
            last_error: control.failure.as_ref().map(|f| Arc::clone(&f.error)),
            refreshes_resume_in: control
                .failure
                .as_ref()
                .and_then(|f| f.needed_resume_in(now)),
        }
    }

    pub(crate) fn tokens(&self) -> Option<Arc<TokenSet>> {
        self.shared.snapshot.load().tokens.clone()
    }
}

/// The access token could not be used as a header value.
#[derive(Debug, Clone, Copy)]
pub(crate) struct InvalidTokens;

/// `instant + span`, saturating far in the future instead of panicking: an
/// `expires_in` of `i64::MAX` seconds or a huge `Retry-After` must not
/// overflow the clock.
pub(crate) fn later(instant: Instant, span: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(86_400 * 365 * 30);
    instant.checked_add(span.min(FAR)).unwrap_or(instant)
}

/// A timer at `deadline` for a bound on a request's wait, where one can be
/// set: `None` outside a tokio runtime, and on one built without timers.
/// There tokio panics setting a timer (its message, which says to enable
/// them, still goes to the panic hook; tokio has no way to ask first):
/// caught here, the request goes on without the bound instead of its
/// caller's task failing. The runtime is remembered, so that a path taken
/// by every request (a gRPC call's deadline) does not panic each time.
pub(crate) fn timer_at(deadline: Instant) -> Option<Pin<Box<Sleep>>> {
    thread_local! {
        /// The last runtime this thread found without timers
        /// ([`timer::runtime_key`]; 0: none). Per thread, not per process:
        /// a runtime's tasks run on its own threads, so one slot each is
        /// enough, and runtimes elsewhere in the process cannot evict it.
        static WITHOUT_TIMERS: Cell<u64> = const { Cell::new(0) };
    }
    let runtime = timer::runtime_key(tokio::runtime::Handle::try_current().ok()?.id());
    if WITHOUT_TIMERS.with(Cell::get) == runtime {
        return None;
    }
    let timer = std::panic::catch_unwind(|| Box::pin(tokio::time::sleep_until(deadline))).ok();
    if timer.is_none() {
        WITHOUT_TIMERS.with(|slot| slot.set(runtime));
    }
    timer
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Control> {
        // The lock guards plain data that is always left consistent, so a
        // panic elsewhere must not wedge every later request.
        self.control.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn gate_open(&self, now: Instant) -> bool {
        self.nanos(now) >= self.proactive_gate.load(Ordering::Acquire)
    }

    /// The proactive gate a `failure` sets (see [`Shared::proactive_gate`]):
    /// shut until it ends, for good if it never does; open without one.
    fn gate_after(&self, failure: Option<&Failure>) -> u64 {
        failure.map_or(0, |failure| {
            failure.until.map_or(u64::MAX, |until| self.nanos(until))
        })
    }

    fn nanos(&self, instant: Instant) -> u64 {
        let nanos = instant.saturating_duration_since(self.epoch).as_nanos();
        u64::try_from(nanos).unwrap_or(u64::MAX - 1)
    }

    /// Installs tokens a flight fetched or adopted: clears any failure,
    /// records their store version, and allows no proactive refresh before
    /// the new token does. A flight still registered (one that replaced the
    /// flight installing, after its deadline) is superseded by these
    /// tokens: its result will be discarded, so it keeps the gate closed
    /// no longer, and while it runs, requests that find the gate open find
    /// it running and start nothing.
    fn install_obtained(
        &self,
        control: &mut Control,
        prepared: Prepared,
        version: Option<u64>,
    ) -> Arc<Snapshot> {
        let snapshot = self.install(prepared);
        control.refused = None;
        control.dead_refresh_token = None;
        // Never back, as everywhere: a version this process stored for a
        // refresh that tokens set by hand overtook stays known whatever
        // version the tokens installed now came with.
        control.store_version = control.store_version.max(version);
        control.failure = None;
        control.consecutive_failures = 0;
        control.consecutive_deferrals = 0;
        let gate = snapshot.proactive_from.unwrap_or_else(Instant::now);
        self.proactive_gate
            .store(self.nanos(gate), Ordering::Release);
        snapshot
    }

    /// Stores the next generation. Callers hold the `control` lock, which is
    /// what makes generations strictly increasing.
    fn install(&self, prepared: Prepared) -> Arc<Snapshot> {
        let replaced = self.snapshot.load();
        let generation = replaced.generation + 1;
        let snapshot = Arc::new(prepared.into_snapshot(generation, Instant::now(), &self.config));
        // Marked before the store, so that a thread that has loaded the new
        // snapshot sees the mark too and its copy of the old header vouches
        // no more: marked after, `TokenHandle::bearer` could be handed the
        // old header by the copy while the new snapshot said otherwise, and
        // ask again until the mark came. A thread that sees the mark early
        // loads the old snapshot, still the current one, as before.
        replaced.mark_replaced();
        self.snapshot.store(Arc::clone(&snapshot));
        snapshot
    }
}

impl std::fmt::Debug for TokenManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let status = self.status();
        f.debug_struct("TokenManager")
            .field("generation", &status.generation())
            .field("state", &status.state())
            .field("refreshing", &status.is_refreshing())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod fleet_tests;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
