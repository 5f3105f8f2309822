//! The single-flight refresh: one spawned task, any number of waiters.
//!
//! The refresh runs in its own task, not in the future of the request that
//! noticed the need, so dropping that request (or any other) can neither
//! cancel the refresh nor leave the others waiting on a future nobody polls.
//! Waiters hold only the flight's [cell](super::flight_wait); the task's
//! result (a credential or an `Arc`'d error) is published once to all of
//! them.
//!
//! A flight can be overtaken: `set_tokens` installs tokens while it runs, or
//! the flight overruns its deadline (its runtime stopped driving it) and a
//! new one replaces it. Its late result then changes nothing: it installs
//! no tokens over newer ones and records no failure against them.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::time::Instant;

use super::failure::Failure;
use super::fleet::Offer;
use super::flight_wait::{FlightCell, FlightWait};
use super::snapshot::{makes_header, Credential, Freshness, Prepared, Snapshot};
use super::{later, Control, Shared, TokenManager};
use crate::error::ErrorKind;
use crate::refresh::{DynRefresh, RefreshContext};
use crate::stats::Counters;
use crate::store::DynStore;
use crate::token::NO_ACCESS_TOKEN;
use crate::{Error, RefreshError, RefreshReason, Secret, TokenSet};

/// A flight's result: the new credential, `Ok(None)` when `set_tokens`
/// overtook it (its waiters decide afresh from the tokens set), or the
/// failure.
pub(crate) type Outcome = Result<Option<Credential>, Error>;

/// Slack on top of the refresh and hook timeouts before waiters give up on
/// a flight whose task is not being driven.
const DEADLINE_SLACK: Duration = Duration::from_secs(1);

/// A handle on the refresh in flight.
#[derive(Clone)]
pub(crate) struct Flight {
    cell: Arc<FlightCell>,
    /// A generation the server rejected that this handle's waiter must
    /// not be given back if the refresh fails (see [`Flight::past`]).
    past: Option<u64>,
}

impl Flight {
    /// Waits for the refresh's result; never hangs (see [`FlightWait`]).
    pub(crate) async fn outcome(self) -> Outcome {
        self.waiter().await
    }

    /// A waiter for the refresh's result, to poll in place.
    pub(crate) fn waiter(self) -> FlightWait {
        FlightWait::new(self.cell)
    }

    /// This flight, for a waiter whose token, of `generation`, a server
    /// rejected without it being marked rejected (it had just come, see
    /// `TokenManager::rejected`): if the refresh fails, that token is not
    /// handed back as the one still valid.
    pub(crate) fn past(mut self, generation: u64) -> Self {
        self.past = Some(generation);
        self
    }

    /// The generation given to [`past`](Self::past), if any.
    pub(crate) fn rejected_generation(&self) -> Option<u64> {
        self.past
    }

    /// Whether waiting for it still makes sense at `now`.
    pub(crate) fn is_live(&self, now: Instant) -> bool {
        now < self.cell.deadline
    }

    /// Past this, a new flight may replace it.
    pub(crate) fn deadline(&self) -> Instant {
        self.cell.deadline
    }

    /// See [`FlightCell::ran_here`].
    pub(crate) fn ran_here(&self) -> bool {
        self.cell.ran_here()
    }

    fn id(&self) -> u64 {
        self.cell.id
    }

    /// Tells its waiters that tokens set by hand overtook it: they decide
    /// afresh. The task's own result, later, changes nothing for them.
    pub(crate) fn overtaken(&self) {
        self.cell.publish(Ok(None));
    }
}

/// A refresh registered under the lock, to be spawned once the lock is
/// released: a runtime that is shutting down drops the task at once, and
/// its drop guard takes the lock.
pub(crate) struct Launch {
    flight: Flight,
    task: FlightTask,
    runtime: Handle,
}

impl Launch {
    pub(crate) fn spawn(self) -> Flight {
        self.runtime.spawn(Polled {
            task: self.task.run(),
        });
        self.flight
    }
}

impl TokenManager {
    /// Registers a refresh; the caller holds the `control` lock, which is
    /// what guarantees a single live flight, and spawns it after unlocking.
    pub(super) fn start_flight(
        &self,
        control: &mut Control,
        reason: RefreshReason,
        snapshot: &Snapshot,
    ) -> Result<Launch, Error> {
        let Ok(runtime) = Handle::try_current() else {
            return Err(Error::new(ErrorKind::NoRuntime));
        };
        let config = &self.shared.config;
        control.flights_started += 1;
        let cell = Arc::new(FlightCell::new(
            control.flights_started,
            later(
                Instant::now(),
                config.flight_budget().saturating_add(DEADLINE_SLACK),
            ),
            runtime.id(),
        ));
        let flight = Flight {
            cell: Arc::clone(&cell),
            past: None,
        };
        control.flight = Some(flight.clone());
        // Shut until the flight settles, or until its deadline should its
        // runtime stop driving it: past that a new flight may replace it,
        // and a gate left shut would hold every proactive refresh back
        // until requests had to wait for the token.
        let gate = self.shared.nanos(cell.deadline);
        self.shared.proactive_gate.store(gate, Ordering::Release);
        Counters::bump(&self.shared.stats.refreshes);
        let current = refresh_from(control.refused.as_ref(), snapshot.tokens.as_ref());
        control.flight_refreshes_from = current
            .as_ref()
            .and_then(|tokens| tokens.refresh_token().cloned());
        let task = FlightTask {
            shared: Arc::clone(&self.shared),
            publish: Some(cell),
            id: flight.id(),
            reason,
            from_generation: snapshot.generation,
            current,
            refused: None,
            hooked: None,
            unstored: Mutex::new(None),
        };
        Ok(Launch {
            flight,
            task,
            runtime,
        })
    }
}

thread_local! {
    /// Whether this thread is polling a flight's task: a task dropped while
    /// the thread panics is one whose own code panicked only then, not one
    /// dropped with its runtime while something else unwinds.
    static POLLING_A_FLIGHT: Cell<bool> = const { Cell::new(false) };
}

pin_project_lite::pin_project! {
    /// A flight's task, marking the thread while it is polled.
    struct Polled<F> {
        #[pin]
        task: F,
    }
}

impl<F: Future> Future for Polled<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        /// Restores the mark on the way out, unwinding included.
        struct Restore(bool);
        impl Drop for Restore {
            fn drop(&mut self) {
                POLLING_A_FLIGHT.with(|polling| polling.set(self.0));
            }
        }
        let _restore = Restore(POLLING_A_FLIGHT.with(|polling| polling.replace(true)));
        self.project().task.poll(cx)
    }
}

/// The spawned refresh. Dropping it before it publishes (a panic in the
/// refresh source, a runtime shutting down) still publishes an error and
/// clears the flight, so no waiter and no later request is stranded.
pub(super) struct FlightTask {
    pub(super) shared: Arc<Shared>,
    publish: Option<Arc<FlightCell>>,
    id: u64,
    reason: RefreshReason,
    from_generation: u64,
    current: Option<Arc<TokenSet>>,
    /// Fetched tokens `prepare` refused that rotated the refresh token.
    refused: Option<Refused>,
    /// Fetched tokens ready to install, held here while the `on_refresh`
    /// hook runs: should the task be dropped meanwhile (its runtime shut
    /// down), they are installed rather than lost with it.
    hooked: Option<Ready>,
    /// A copy of fetched tokens while a fleet flight stores them, before
    /// `prepare`: installed too should the task be dropped meanwhile.
    /// Found in review: they were lost, and the next refresh presented the
    /// refresh token this one had spent.
    unstored: Mutex<Option<(TokenSet, Instant)>>,
}

/// Fetched tokens refused that rotated the refresh token: no request can
/// use them, but theirs is the live refresh token.
struct Refused {
    tokens: Arc<TokenSet>,
    /// The store version they supersede, as for installed tokens
    /// ([`Obtained::version`]).
    version: Option<u64>,
    /// Their offer to the store, which failed to take them.
    offer: Option<Offer>,
}

/// A failed call, and how the manager must treat it.
pub(super) type Failed = (RefreshError, ErrorKind);

/// Tokens a flight got hold of.
pub(super) struct Obtained {
    pub(super) tokens: TokenSet,
    /// When their lifetime started.
    pub(super) obtained_at: Instant,
    /// The store version they were stored as or read from, or, if storing
    /// them failed, the one whose refresh token they were refreshed from:
    /// known once they are installed, so that no later flight refreshes
    /// from that spent token.
    pub(super) version: Option<u64>,
    /// Read from the store, not fetched by this process.
    pub(super) adopted: bool,
    /// Not stored because the store failed: offered to it once installed.
    pub(super) offer: Option<Offer>,
    /// Why the answer was refused, if it was: the tokens carry its new
    /// refresh token only.
    pub(super) refused: Option<Failed>,
}

impl Obtained {
    /// Tokens this process fetched with a call made at `sent`.
    pub(super) fn fetched(tokens: TokenSet, sent: Instant) -> Self {
        Self {
            tokens,
            obtained_at: sent,
            version: None,
            adopted: false,
            offer: None,
            refused: None,
        }
    }

    /// The new refresh token of an answer refused for `failed`, carried
    /// by tokens no request can use.
    fn refused(carrier: TokenSet, failed: Failed) -> Self {
        Self {
            refused: Some(failed),
            ..Self::fetched(carrier, Instant::now())
        }
    }
}

/// The token a refresh from `ctx` presents, as far as the manager can
/// tell: the refresh token, or without one the access token (a sliding
/// session, Ocient's, refreshes with it).
fn refresh_credential(ctx: &RefreshContext) -> Option<&Secret> {
    ctx.refresh_token().or_else(|| ctx.access_token())
}

/// The tokens a flight refreshes from: refused tokens that rotated the
/// refresh token, if any (see [`paired_with_installed`]), else the
/// installed ones.
fn refresh_from(
    refused: Option<&Arc<TokenSet>>,
    installed: Option<&Arc<TokenSet>>,
) -> Option<Arc<TokenSet>> {
    match refused {
        Some(refused) => Some(paired_with_installed(refused, installed)),
        None => installed.cloned(),
    }
}

/// Tokens to refresh from that rotated the refresh token (refused here, or
/// a stored record of them). Taken whole, their access token stays paired
/// with its own refresh token. Those whose access token no request could
/// send (the placeholder of an answer refused before its tokens could be
/// read, or one that is no header value) are paired with the installed
/// access token instead, for a source that
/// presents the access token too (a sliding session with a refresh token
/// in its answers): found in review, the placeholder was sent as its
/// credential, which the source refused for good.
pub(super) fn paired_with_installed(
    tokens: &Arc<TokenSet>,
    installed: Option<&Arc<TokenSet>>,
) -> Arc<TokenSet> {
    match (tokens.refresh_token(), installed) {
        (Some(rotated), Some(installed)) if !makes_header(tokens) => {
            Arc::new(TokenSet::clone(installed).with_refresh_token(rotated.clone()))
        }
        _ => Arc::clone(tokens),
    }
}
/// Validated tokens, ready to install.
struct Ready {
    prepared: Prepared,
    version: Option<u64>,
    offer: Option<Offer>,
}

impl Control {
    /// Whether the flight numbered `id` is the registered one.
    fn registers(&self, id: u64) -> bool {
        self.flight.as_ref().is_some_and(|f| f.id() == id)
    }
}

impl Ready {
    /// Tokens a fleet flight was storing when it was dropped, as `prepare`
    /// would take them: to install as this process's own, with no version
    /// (the store still holds the one they were refreshed from, whose
    /// refresh token they replace); or, making no header or already
    /// expired, back as they are, to keep as refused ones are.
    fn unstored((tokens, obtained_at): (TokenSet, Instant)) -> Result<Self, Arc<TokenSet>> {
        match Prepared::new(tokens.clone(), obtained_at, true) {
            Ok(prepared) if !prepared.is_expired_at(Instant::now()) => Ok(Self {
                prepared,
                version: None,
                offer: None,
            }),
            _ => Err(Arc::new(tokens)),
        }
    }
}

impl FlightTask {
    /// Keeps a copy of `obtained`'s tokens until `prepare` (see
    /// [`unstored`](Self::unstored)).
    pub(super) fn keep_unstored(&self, obtained: &Obtained) {
        let copy = (obtained.tokens.clone(), obtained.obtained_at);
        *self.unstored.lock().unwrap_or_else(PoisonError::into_inner) = Some(copy);
    }

    /// Whether this is the flight registered in the control block, not one
    /// given up and replaced.
    fn is_registered(&self) -> bool {
        self.shared.lock().registers(self.id)
    }

    /// Takes the copy [`keep_unstored`](Self::keep_unstored) kept, if any.
    pub(super) fn unstored_tokens(&self) -> Option<(TokenSet, Instant)> {
        self.unstored
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    async fn run(mut self) {
        let started = Instant::now();
        tracing::debug!(
            reason = ?self.reason,
            generation = self.from_generation,
            "token refresh started"
        );
        let ctx = RefreshContext::new(self.reason, self.current.clone());
        let obtained = match self.shared.config.store.clone() {
            Some(store) => self.obtain_shared(&store, ctx, started).await,
            None => self.obtain(ctx, None).await,
        };
        let result = match obtained {
            Ok(obtained) => self.prepare(obtained).await,
            Err(failed) => Err(failed),
        };
        let elapsed_ms = started.elapsed().as_millis() as u64;
        let outcome = match result {
            Ok(ready) => {
                let adopted = ready.prepared.is_adopted();
                let outcome = self.succeed(ready);
                if let Ok(Some(credential)) = &outcome {
                    tracing::info!(
                        reason = ?self.reason,
                        generation = credential.generation,
                        elapsed_ms,
                        adopted,
                        "token refreshed"
                    );
                }
                outcome
            }
            Err((error, kind)) => {
                tracing::warn!(
                    reason = ?self.reason,
                    generation = self.from_generation,
                    elapsed_ms,
                    error = %error,
                    "token refresh failed"
                );
                self.fail(error, kind)
            }
        };
        if let Some(publish) = self.publish.take() {
            publish.publish(outcome);
        }
    }

    /// New tokens from the refresh source, or from the login source when
    /// there are no tokens yet or the refresh credential was rejected for
    /// good. Each call gets the whole refresh timeout; the login happens
    /// inside this flight, so it is single-flight like any refresh.
    ///
    /// With `reread` (a store, and the version the refresh started from), a
    /// rejected refresh credential first sends the flight back to the
    /// store: a sibling may have rotated it, and its tokens are adopted
    /// instead of logging in.
    pub(super) async fn obtain(
        &self,
        ctx: RefreshContext,
        reread: Option<(&dyn DynStore, Option<u64>)>,
    ) -> Result<Obtained, Failed> {
        let shared = &self.shared;
        let login = shared.config.login.as_ref();
        // A credential refused for good is not presented again (see
        // `Control::dead_refresh_token`).
        let presented = refresh_credential(&ctx);
        let dead = presented
            .is_some_and(|presented| shared.lock().dead_refresh_token.as_ref() == Some(presented));
        if (ctx.current().is_some() && !dead) || login.is_none() {
            match self.timed(Arc::clone(&shared.refresher), ctx.clone()).await {
                Err((mut error, kind)) => {
                    if let Some(carrier) = self.replacement_kept(&ctx, &mut error) {
                        return Ok(Obtained::refused(carrier, (error, kind)));
                    }
                    if !error.is_terminal() {
                        return Err((error, kind));
                    }
                    shared.lock().dead_refresh_token = presented.cloned();
                    if let Some((store, base)) = reread {
                        if let Some(adopted) = self.adopt_newer(store, base).await {
                            return Ok(adopted);
                        }
                    }
                    if login.is_none() {
                        return Err((error, kind));
                    }
                    tracing::info!(error = %error, "refresh credential rejected; logging in");
                }
                Ok((tokens, sent)) => {
                    self.note_spent(&ctx, &tokens);
                    // Many issuers return no new refresh token on refresh:
                    // the one presented stays valid. (Not after a login,
                    // below: the one presented was just refused.)
                    let tokens = tokens.inherit_refresh_token(ctx.current());
                    return Ok(Obtained::fetched(tokens, sent));
                }
            }
        }
        let login = login.expect("checked above");
        Counters::bump(&shared.stats.logins);
        self.timed(Arc::clone(login), ctx)
            .await
            .map(|(tokens, sent)| Obtained::fetched(tokens, sent))
    }

    /// A refused answer's new refresh token, taken out of `error` if it
    /// held one, as tokens to keep as refused ones are (and to offer to
    /// the store), whatever the failure's class: the one `ctx` presented is
    /// spent, and the new one may be the only live one. Refused for what it
    /// lacks, or for good (a token of a kind other than Bearer; found in
    /// review: dropped there, it was lost to the fleet, whose store kept
    /// the spent one for the next process).
    fn replacement_kept(&self, ctx: &RefreshContext, error: &mut RefreshError) -> Option<TokenSet> {
        let carrier = TokenSet::new(NO_ACCESS_TOKEN).with_refresh_token(error.take_replacement()?);
        self.note_spent(ctx, &carrier);
        Some(carrier)
    }

    /// In fleet mode, notes the refresh token `ctx` presented as spent if
    /// `answer` replaced it (`fleet::Spent`).
    fn note_spent(&self, ctx: &RefreshContext, answer: &TokenSet) {
        if self.shared.config.store.is_some() {
            self.shared.lock().spent.note(ctx.current(), answer);
        }
    }

    /// One call of `source`, bounded by the refresh timeout; with the
    /// tokens, when the call was made: their lifetime is counted from
    /// then, not from when the flight started, which may have been long
    /// before (waiting for a sibling's lease, a refresh rejected before a
    /// login).
    async fn timed(
        &self,
        source: Arc<dyn DynRefresh>,
        ctx: RefreshContext,
    ) -> Result<(TokenSet, Instant), Failed> {
        let timeout = self.shared.config.refresh_timeout;
        let sent = Instant::now();
        match tokio::time::timeout(timeout, source.refresh_boxed(ctx)).await {
            Ok(Ok(tokens)) => Ok((tokens, sent)),
            Ok(Err(error)) => {
                let kind = ErrorKind::of_refresh(&error);
                Err((error, kind))
            }
            Err(_elapsed) => Err((
                RefreshError::transient(format!(
                    "no answer within the refresh timeout of {timeout:?}"
                )),
                ErrorKind::RefreshTimedOut,
            )),
        }
    }

    /// Whether this flight's refresh can wait: it started ahead of need
    /// (in the advisory window, or at the background timer's advisory
    /// point) and the token it would replace may still be sent (not
    /// rejected) until past its [deferral horizon](Self::deferral_horizon).
    pub(super) fn ahead_of_need(&self) -> bool {
        let snapshot = self.shared.snapshot.load();
        let now = Instant::now();
        matches!(
            self.reason,
            RefreshReason::Proactive | RefreshReason::Scheduled
        ) && snapshot.generation == self.from_generation
            && snapshot.freshness(now) != Freshness::Expired
            && self
                .deferral_horizon(&snapshot)
                .is_none_or(|horizon| now < horizon)
    }

    /// Until when a refresh of `snapshot`'s token may be put off: far
    /// enough before its mandatory window ([`Config::deferral_room`]) that
    /// the flight started then ends while requests still use the token
    /// instead of waiting for it. Found in review: with one refresh timeout
    /// of room, a hung store's load ran into the mandatory window, and
    /// requests waited for the refresh after it. `None` for a token that
    /// never expires.
    ///
    /// [`Config::deferral_room`]: super::Config::deferral_room
    fn deferral_horizon(&self, snapshot: &Snapshot) -> Option<Instant> {
        let mandatory = snapshot.expired_at?;
        let room = self.shared.config.deferral_room();
        Some(mandatory.checked_sub(room).unwrap_or(mandatory))
    }

    /// Validates the new tokens and, for tokens this process fetched, runs
    /// the hook. Adopted tokens were stored with their refresh token, and
    /// their hook ran in the process that fetched them.
    ///
    /// Fetched tokens refused here that rotated the refresh token are kept
    /// in `refused`: the source has spent the one the flight started from,
    /// and theirs may be the only live one. [`fail`](Self::fail) hands them
    /// to the next flight unless this one was overtaken.
    async fn prepare(&mut self, obtained: Obtained) -> Result<Ready, Failed> {
        // From here on they are the `hooked` or `refused` ones.
        self.unstored_tokens();
        let Obtained {
            tokens,
            obtained_at,
            version,
            adopted,
            offer,
            refused,
        } = obtained;
        let rotated = !adopted && tokens.rotated_from(self.current.as_deref());
        if let Some(failed) = refused {
            if rotated {
                let tokens = Arc::new(tokens);
                self.keep_refused(Refused {
                    tokens,
                    version,
                    offer,
                })
                .await;
            }
            return Err(failed);
        }
        let invalid_header = || {
            let error =
                RefreshError::transient("the refreshed access token is not a valid header value");
            (error, ErrorKind::RefreshFailed)
        };
        // Checked first, so that refused tokens are kept without a copy.
        let (tokens, failed) = if makes_header(&tokens) {
            let prepared =
                Prepared::new(tokens, obtained_at, true).map_err(|_| invalid_header())?;
            let prepared = if adopted {
                prepared.adopted()
            } else {
                prepared
            };
            if !prepared.is_expired_at(Instant::now()) {
                let ready = Ready {
                    prepared,
                    version,
                    offer,
                };
                if adopted {
                    return Ok(ready);
                }
                let tokens = ready.prepared.shared_tokens();
                self.hooked = Some(ready);
                self.run_hook(tokens).await;
                return Ok(self.hooked.take().expect("taken only here and on drop"));
            }
            // Installing it would send every waiting request straight back
            // for another refresh; as a failure it is backed off.
            let error =
                RefreshError::transient("the refresh returned a token that had already expired");
            (prepared.shared_tokens(), (error, ErrorKind::RefreshFailed))
        } else {
            (Arc::new(tokens), invalid_header())
        };
        if rotated {
            let refused = Refused {
                tokens,
                version,
                offer,
            };
            self.keep_refused(refused).await;
        }
        Err(failed)
    }

    /// Keeps refused tokens that rotated the refresh token for the next
    /// flight, and shows them to the hook: what it persists must hold the
    /// live refresh token, or a restart would present the spent one.
    async fn keep_refused(&mut self, refused: Refused) {
        let tokens = Arc::clone(&refused.tokens);
        self.refused = Some(refused);
        // Passed on and offered whether or not the hook was shown them: if
        // a later flight's were shown first, that flight is the current
        // one, so `settle_without_tokens` does not keep these, and their
        // offer cannot swap over the version that flight stored.
        self.run_hook(tokens).await;
    }

    /// Runs the user's hook before anyone can use the new tokens, in its own
    /// task and bounded by the refresh timeout: a hook that hangs or panics
    /// must neither strand the waiters nor lose the tokens (possibly a
    /// rotated refresh token). In order with other flights' hooks (see
    /// [`hook`](super::hook)).
    async fn run_hook(&self, tokens: Arc<TokenSet>) {
        if let Some(hook) = &self.shared.config.on_refresh {
            super::hook::run(&self.shared, self.id, hook, tokens).await;
        }
    }

    /// This flight is about to store its tokens as `version`. Overtaken
    /// already by tokens set by hand, the version is known at once as this
    /// process's own, overtaken result; otherwise it is noted, for
    /// `set_tokens` to do the same should it overtake the flight before it
    /// settles. Either way neither the watcher nor a later flight adopts it
    /// over the tokens set by hand: found in review, the watcher did while
    /// the flight released its lease and ran the hook, and a waiting
    /// flight did when the store announced the version before the swap
    /// answered. Known at once only when already overtaken: a flight that
    /// stored and then was dropped installed nothing, and the next one must
    /// adopt what it stored, not refresh again from the refresh token it
    /// spent (found in review). A version known that the swap did not store
    /// is harmless: what the process then refreshes from is the tokens set
    /// by hand.
    pub(super) fn note_storing(&self, version: u64) {
        let mut control = self.shared.lock();
        let registered = control.registers(self.id);
        if self.overtaken_by(&self.shared.snapshot.load()) {
            control.store_version = control.store_version.max(Some(version));
        } else if registered {
            // Only the registered flight's: `set_tokens` overtakes that
            // one, and a flight replaced past its deadline must not write
            // over (or, settling, clear) its replacement's note.
            control.storing = Some((self.id, version));
        }
    }

    /// The swap [`note_storing`](Self::note_storing) announced was refused:
    /// nothing for `set_tokens` to know. (One that failed may have landed
    /// all the same, and stays noted.)
    pub(super) fn stored_nothing(&self) {
        let mut control = self.shared.lock();
        control.storing = control.storing.filter(|(flight, _)| *flight != self.id);
    }

    /// Locks, and tells whether this flight is still the registered one and
    /// whether newer tokens were installed since it started.
    fn settle(&self) -> (MutexGuard<'_, Control>, bool, bool) {
        let mut control = self.shared.lock();
        let current = control.registers(self.id);
        if current {
            control.flight = None;
        }
        control.storing = control.storing.filter(|(flight, _)| *flight != self.id);
        let superseded = self.overtaken_by(&self.shared.snapshot.load());
        (control, current, superseded)
    }

    /// Whether tokens installed since this flight started (`snapshot`'s)
    /// overtake it: any do, but tokens set by hand that carry the refresh
    /// token it refreshes from, which its answer follows (see
    /// `TokenManager::set_tokens`).
    fn overtaken_by(&self, snapshot: &Snapshot) -> bool {
        let from = self.current.as_deref().and_then(TokenSet::refresh_token);
        let set = snapshot.tokens.as_deref().and_then(TokenSet::refresh_token);
        let continued = snapshot.refreshed_at.is_none() && from.is_some() && set == from;
        snapshot.generation != self.from_generation && !continued
    }

    /// Whether the one install since this flight started was a flight's
    /// numbered before this one, with tokens of a store version before
    /// `version`.
    fn only_an_older_flight_installed(&self, control: &Control, version: Option<u64>) -> bool {
        let generation = self.shared.snapshot.load().generation;
        generation == self.from_generation + 1
            && control
                .installed_by
                .is_some_and(|(installed, flight, its_version)| {
                    installed == generation
                        && flight < self.id
                        && version.is_some_and(|version| its_version < Some(version))
                })
    }

    fn succeed(&self, ready: Ready) -> Outcome {
        let shared = &self.shared;
        let (mut control, _, superseded) = self.settle();
        // Tokens that a flight older than this one installed since this one
        // started (one given up past its deadline, finishing late) do not
        // overtake this one's when this one's come from a later store
        // version: it refreshed from what that one stored, or from newer.
        // Found in review: the older one's were kept, this one's
        // discarded, and the next refresh presented the refresh token this
        // one had spent. (Without a store, whichever reached the identity
        // server last holds the live refresh token: the first installed
        // stays, as before.)
        let superseded =
            superseded && !self.only_an_older_flight_installed(&control, ready.version);
        // Still counted when discarded: the call produced a token, and every
        // refresh ends as a success, an adoption or a failure in the stats.
        Counters::bump(if ready.prepared.is_adopted() {
            &shared.stats.adopted
        } else {
            &shared.stats.refresh_successes
        });
        // A later flight's tokens were shown to the hook, before these or
        // while their hook ran: not installed either, as if superseded
        // (found in review: the layer sent tokens the hook never
        // persisted, or persisted before newer ones). Asked under the lock
        // that settles the flight, so a hook starting now is seen.
        let outdated = super::hook::later_than(&control, self.id);
        if superseded || outdated {
            // Stored by this flight (or adopted by it), the version is this
            // process's own result, overtaken: known, so that neither the
            // watcher nor the next flight adopts it over the tokens that
            // overtook it. Found in review: tokens set by hand during a
            // refresh were replaced by that refresh's stored result.
            control.store_version = control.store_version.max(ready.version);
            if let Some(offer) = ready.offer.filter(|_| !outdated) {
                // Not installed, but its refresh token is the live one.
                // (Not when a later flight's tokens were shown to the
                // hook: the later flight's are the ones to keep.)
                offer.start(shared, &mut control, ready.prepared.shared_tokens());
            }
            drop(control);
            tracing::debug!(
                "refresh result discarded: newer tokens were installed or shown to the hook meanwhile"
            );
            return Ok(None);
        }
        let tokens = ready.prepared.shared_tokens();
        let snapshot = shared.install_obtained(&mut control, ready.prepared, ready.version);
        control.installed_by = Some((snapshot.generation, self.id, ready.version));
        if let Some(offer) = ready.offer {
            // Registered under the lock that installs the tokens: a flight
            // that starts after this one waits for the offer.
            offer.start(shared, &mut control, tokens);
        }
        drop(control);
        shared.changed.notify_waiters();
        snapshot
            .credential()
            .map(Some)
            .ok_or_else(|| Error::new(ErrorKind::RefreshAborted))
    }

    /// Settles a flight that ends without tokens to install, keeping the
    /// `refused` tokens it holds; as `settle`.
    fn settle_without_tokens(
        &self,
        refused: Option<Refused>,
    ) -> (MutexGuard<'_, Control>, bool, bool) {
        Counters::bump(&self.shared.stats.refresh_failures);
        let (mut control, current, superseded) = self.settle();
        if let Some(refused) = refused {
            // Their refresh token is the live one: the store gets it
            // whoever decides next, and this process refreshes from it.
            if let Some(offer) = refused.offer {
                let tokens = Arc::clone(&refused.tokens);
                offer.start(&self.shared, &mut control, tokens);
            }
            if current && !superseded {
                control.refused = Some(refused.tokens);
                // Never back: an offer may have moved it on meanwhile.
                control.store_version = control.store_version.max(refused.version);
            }
        }
        (control, current, superseded)
    }

    /// The task was dropped unfinished: its runtime shut down, or it was
    /// aborted. Nothing of the refresh failed, so nothing is backed off or
    /// blamed on the tokens: the gate is set as it was before the flight
    /// (shut until the tokens' own refresh point, or a failure's end), and
    /// waiters (on runtimes still running) decide afresh.
    fn abandon(&mut self) -> Outcome {
        let refused = self.refused.take();
        let (control, current, superseded) = self.settle_without_tokens(refused);
        if current && !superseded {
            let shared = &self.shared;
            let failure_ends = shared.gate_after(control.failure.as_ref());
            let refresh_point = shared.snapshot.load().proactive_from;
            let gate = failure_ends.max(refresh_point.map_or(0, |at| shared.nanos(at)));
            shared.proactive_gate.store(gate, Ordering::Release);
        }
        drop(control);
        self.shared.changed.notify_waiters();
        Err(Error::new(ErrorKind::FlightAbandoned))
    }

    fn fail(&mut self, error: RefreshError, kind: ErrorKind) -> Outcome {
        let error = Arc::new(error);
        let refused = self.refused.take();
        let (mut control, current, superseded) = self.settle_without_tokens(refused);
        let shared = &self.shared;
        if superseded || !current {
            // Whoever overtook this flight decides; its tokens are not
            // blamed for this failure.
            drop(control);
            return if superseded {
                Ok(None)
            } else {
                Err(Error::with_refresh(kind, error))
            };
        }
        let deferred = kind == ErrorKind::RefreshDeferred;
        let consecutive = if deferred {
            &mut control.consecutive_deferrals
        } else {
            &mut control.consecutive_failures
        };
        *consecutive = consecutive.saturating_add(1);
        let failure = Failure::new(
            Arc::clone(&error),
            kind,
            *consecutive,
            &shared.config.backoff,
            Instant::now(),
        );
        // Put off while the token is good, the refresh is tried again by
        // the end of the deferral at the latest.
        let failure = if deferred {
            failure.no_later_than(self.deferral_horizon(&shared.snapshot.load()))
        } else {
            failure
        };
        let gate = shared.gate_after(Some(&failure));
        shared.proactive_gate.store(gate, Ordering::Release);
        control.failure = Some(failure);
        drop(control);
        shared.changed.notify_waiters();
        Err(Error::with_refresh(kind, error))
    }
}

impl Drop for FlightTask {
    fn drop(&mut self) {
        if let Some(publish) = self.publish.take() {
            // A panic is a bug, backed off as a failure, to look for in the
            // panic hook's output (its message is not carried here: a
            // source's panic message may hold a token). Anything else is
            // the runtime shutting down or the task aborted: no failure of
            // the refresh's, which requests on other runtimes would have
            // been refused for until the backoff ended.
            let panicked =
                std::thread::panicking() && POLLING_A_FLIGHT.with(|polling| polling.get());
            let unstored = self.unstored_tokens();
            let outcome = if let Some(ready) = self.hooked.take() {
                // Dropped while the hook ran (which the hook's task may
                // outlive, or not): the tokens came, and a rotating
                // server has already spent the refresh token they
                // replace. Found in review: they were dropped, and the
                // next refresh presented the spent one. (Unless a later
                // flight's hook has started: `succeed` asks.)
                tracing::warn!("refresh task dropped while the on_refresh hook ran; tokens kept");
                self.succeed(ready)
            } else if let Some(tokens) = unstored.filter(|_| self.is_registered()) {
                // Only while this is the registered flight: one replaced
                // meanwhile may hold tokens whose refresh token its
                // replacement has already spent.
                tracing::warn!("refresh task dropped while it stored its tokens; tokens kept");
                match Ready::unstored(tokens) {
                    Ok(ready) => self.succeed(ready),
                    Err(tokens) => {
                        if tokens.rotated_from(self.current.as_deref()) {
                            self.refused = Some(Refused {
                                tokens,
                                version: None,
                                offer: None,
                            });
                        }
                        self.abandon()
                    }
                }
            } else if panicked {
                let cause = "the refresh task panicked (its message went to the panic hook)";
                self.fail(RefreshError::transient(cause), ErrorKind::RefreshAborted)
            } else {
                self.abandon()
            };
            publish.publish(outcome);
        }
    }
}
