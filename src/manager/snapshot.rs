//! The immutable view of the current token that every request reads.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderMap, AUTHORIZATION};
use http::HeaderValue;
use tokio::time::Instant;

use super::later;
use super::Config;
use crate::{RefreshReason, TokenSet};

/// Where a token stands in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Freshness {
    /// Use it.
    Fresh,
    /// Use it, and start one background refresh.
    Stale,
    /// Do not use it: wait for a new one (also: no token, or rejected).
    Expired,
}

/// The header and the generation a request was sent with.
#[derive(Clone)]
pub(crate) struct Credential {
    pub(crate) header: HeaderValue,
    pub(crate) generation: u64,
}

impl Credential {
    /// Sets `Authorization` in `headers` to this token's header, and
    /// returns the generation to remember for the response.
    #[inline]
    pub(crate) fn authorize(self, headers: &mut HeaderMap) -> u64 {
        headers.insert(AUTHORIZATION, self.header);
        self.generation
    }
}

/// A token that passed validation, before it is given a generation.
pub(crate) struct Prepared {
    tokens: Arc<TokenSet>,
    header: HeaderValue,
    obtained_at: Instant,
    refreshed: bool,
    /// Refreshed by another process, which stored it.
    adopted: bool,
}

/// Whether the access token makes a valid header value: the bytes
/// `HeaderValue` accepts from bytes (visible ASCII, space, tab, and any
/// byte past ASCII, an opaque byte to HTTP). Checked without making the
/// header, which would leave one more copy of the token to free.
pub(crate) fn makes_header(tokens: &TokenSet) -> bool {
    let valid = |b: u8| (b >= 0x20 && b != 0x7f) || b == b'\t';
    let token = tokens.access_token().expose();
    // A blank token would send `Bearer ` with nothing to check.
    token.bytes().all(valid) && token.bytes().any(|b| b != b' ' && b != b'\t')
}

/// What every header the layer makes starts with.
pub(crate) const BEARER: &str = "Bearer ";

/// `Authorization: Bearer <access token>`, if the token makes a valid
/// header value.
pub(crate) fn bearer_header(tokens: &TokenSet) -> Result<HeaderValue, InvalidToken> {
    if !makes_header(tokens) {
        return Err(InvalidToken);
    }
    // Made from bytes: since http 1.6 a `String` makes a header of visible
    // ASCII only, and a token past ASCII taken by one http release would be
    // refused by the next.
    let header = format!("{BEARER}{}", tokens.access_token().expose());
    let mut header = HeaderValue::try_from(header.into_bytes()).map_err(|_| InvalidToken)?;
    // Sensitive headers are never HPACK-indexed and are redacted by http's
    // own Debug.
    header.set_sensitive(true);
    Ok(header)
}

impl Prepared {
    /// Validates the access token as a header value.
    ///
    /// `obtained_at` is when the refresh request was sent (or when the tokens
    /// were handed to us), so the lifetime errs towards refreshing early.
    pub(crate) fn new(
        tokens: TokenSet,
        obtained_at: Instant,
        refreshed: bool,
    ) -> Result<Self, InvalidToken> {
        let header = bearer_header(&tokens)?;
        Ok(Self {
            tokens: Arc::new(tokens),
            header,
            obtained_at,
            refreshed,
            adopted: false,
        })
    }

    /// Marks refreshed tokens as another process's, adopted from the
    /// store: refreshed when that process sent its refresh, however late
    /// this one adopts them.
    pub(crate) fn adopted(mut self) -> Self {
        self.adopted = true;
        self
    }

    /// Whether these are another process's tokens, adopted from the store.
    pub(crate) fn is_adopted(&self) -> bool {
        self.adopted
    }

    /// Whether the token is already past its expiry at `now` (an
    /// `expires_in` of 0, or shorter than the refresh took).
    pub(crate) fn is_expired_at(&self, now: Instant) -> bool {
        self.tokens
            .expires_in()
            .is_some_and(|lifetime| later(self.obtained_at, lifetime) <= now)
    }

    pub(crate) fn shared_tokens(&self) -> Arc<TokenSet> {
        Arc::clone(&self.tokens)
    }

    /// The refresh token these tokens carry.
    pub(crate) fn refresh_token(&self) -> Option<&crate::Secret> {
        self.tokens.refresh_token()
    }

    /// Gives the tokens their generation and windows. `installed_at` starts
    /// the proactive spacing of refreshed tokens, and the
    /// `min_refresh_interval` of those this process refreshed (a slow
    /// refresh must not make its result look old); an adopted token's
    /// interval starts at its sibling's refresh.
    pub(crate) fn into_snapshot(
        self,
        generation: u64,
        installed_at: Instant,
        config: &Config,
    ) -> Snapshot {
        let lifetime = self.tokens.expires_in().map(|lifetime| {
            let expires_at = later(self.obtained_at, lifetime);
            (expires_at, expires_at.duration_since(self.obtained_at))
        });
        let (stale_at, expired_at, expires_at) = match lifetime {
            Some((expires_at, lifetime)) => {
                let advisory = config.advisory.before_expiry(lifetime);
                // The mandatory window never starts before the advisory one.
                let mandatory = config.mandatory.before_expiry(lifetime).min(advisory);
                (
                    Some(expires_at - advisory),
                    Some(expires_at - mandatory),
                    Some(expires_at),
                )
            }
            None => (None, None, None),
        };
        // A refreshed token is not refreshed proactively again before
        // min_refresh_interval (a token stale from birth would otherwise be
        // refreshed back to back), nor before a second whatever that
        // interval (found in review: set to zero, with a window as long as
        // the lifetime, the background refresh ran in a tight loop), nor
        // later than half its lifetime, so short-lived tokens still
        // refresh in the background.
        let proactive_from = self.refreshed.then(|| {
            let spacing = config.min_refresh_interval.max(PROACTIVE_SPACING_AT_LEAST);
            let spacing = lifetime.map_or(spacing, |(_, lifetime)| spacing.min(lifetime / 2));
            later(installed_at, spacing)
        });
        // A token this process refreshed counts from its install (a slow
        // refresh must not make it look old); an adopted one from its
        // sibling's refresh. Found in review: counted from the adoption, a
        // revoked token adopted long after its refresh was taken for one
        // just refreshed, and its rejections given back unrefreshed.
        let refreshed_at = if self.adopted {
            self.obtained_at.min(installed_at)
        } else {
            installed_at
        };
        Snapshot {
            generation,
            tokens: Some(self.tokens),
            header: Some(self.header),
            refreshed_at: self.refreshed.then_some(refreshed_at),
            proactive_from,
            stale_at,
            expired_at,
            expires_at,
            flags: Arc::new(AtomicU8::new(0)),
        }
    }
}

/// The access token is not usable as an HTTP header value.
#[derive(Debug, Clone, Copy)]
pub(crate) struct InvalidToken;

/// One generation of the token, shared by every request that uses it.
pub(crate) struct Snapshot {
    pub(crate) generation: u64,
    pub(crate) tokens: Option<Arc<TokenSet>>,
    pub(crate) header: Option<HeaderValue>,
    /// When a refresh produced this token: its install, for this process's
    /// own refresh; the sibling's refresh, for one adopted from the store.
    /// `None` for tokens handed to us, whose age we cannot know.
    pub(crate) refreshed_at: Option<Instant>,
    /// No proactive or scheduled refresh before this (refreshed tokens only).
    pub(crate) proactive_from: Option<Instant>,
    /// Start of the advisory window.
    pub(crate) stale_at: Option<Instant>,
    /// Start of the mandatory window.
    pub(crate) expired_at: Option<Instant>,
    /// The real expiry, after which the token is useless.
    pub(crate) expires_at: Option<Instant>,
    /// [`REJECTED`], [`WATCHED`], [`STALE`] and [`REPLACED`], in one word
    /// so that a request for a fresh token reads one atomic, not four.
    /// Atomics of the snapshot's own, so marking one needs no swap and is
    /// scoped to its generation; shared with each thread's copy of the
    /// header ([`Marks`]), which reads them without loading the snapshot.
    flags: Arc<AtomicU8>,
}

/// A server rejected this generation.
const REJECTED: u8 = 1;
/// The manager's watcher task promises to raise [`STALE`] on time
/// ([`Snapshot::watch`]); cleared if that task dies. While it holds, a
/// request for a token that is not yet stale needs no clock read.
const WATCHED: u8 = 2;
/// Raised by the watcher shortly before `stale_at`, or before the expiry
/// when that is close behind: from then on, requests read the clock.
const STALE: u8 = 4;
/// Another snapshot took this one's place: a thread's copy of its header
/// is out of date.
const REPLACED: u8 = 8;

/// How long before a token's advisory point the watcher hands requests
/// back to the clock: more than a timer on a busy runtime is expected to
/// be late, little enough that the clock is read for a moment of each
/// token's life.
pub(crate) const WATCH_LEAD: Duration = Duration::from_millis(100);

/// The least time between a refresh and the next proactive one, whatever
/// `min_refresh_interval` says (but never past half the token's lifetime).
const PROACTIVE_SPACING_AT_LEAST: Duration = Duration::from_secs(1);

/// How long before a token's real expiry the watcher hands requests back
/// to the clock at the latest (see [`Snapshot::watch`]).
const EXPIRY_LEAD: Duration = Duration::from_secs(1);

/// A snapshot's flags and freshness bound, kept with a thread's copy of
/// its header: enough to send that copy without loading the snapshot from
/// the `ArcSwap`, which a service cloned for each request had to do, having
/// no cache of its own. Holds no secret, and not the snapshot, whose
/// refresh token would otherwise outlive the layer on every thread that
/// sent through it.
pub(crate) struct Marks {
    flags: Arc<AtomicU8>,
    /// The start of the advisory window (or of the mandatory one, if that
    /// comes first), when the token has windows: before it,
    /// [`Snapshot::freshness`] says `Fresh`.
    fresh_until: Option<Instant>,
    /// Requests this thread sent on the watcher's word since it last read
    /// the clock (see [`CLOCK_EVERY`]).
    on_its_word: Cell<u8>,
}

/// How many requests a thread sends on the watcher's word between two
/// reads of the clock. The watcher hands requests back to the clock before
/// the advisory point, and its guard does if it dies; one that never runs
/// again without dying (its runtime's workers stuck, or the runtime shut
/// down in the background with the task left undropped) would have every
/// other thread send the token on its word past its expiry. The clock read
/// by one request in this many bounds that (found in review), for eight
/// instructions a request (`scripts/count-instructions.sh`: 4,230 to 4,238
/// with retry on, 3,742 to 3,751 with it off).
const CLOCK_EVERY: u8 = 64;

impl Marks {
    /// Whether the token these marks belong to may be sent as it is: not
    /// replaced, rejected or stale, and either vouched for by the watcher
    /// or (with the manager's timer running, which the long way otherwise
    /// starts) shown fresh by the clock. `false` sends the request the long
    /// way, loading the snapshot, which also starts what a stale token
    /// needs.
    #[inline]
    pub(crate) fn vouch(&self, timer_started: &AtomicBool) -> bool {
        let flags = self.flags.load(Ordering::Acquire);
        if flags == WATCHED {
            let sent = self.on_its_word.get() + 1;
            if sent < CLOCK_EVERY {
                self.on_its_word.set(sent);
                return true;
            }
            self.on_its_word.set(0);
            return self.watcher_on_time();
        }
        flags & (REJECTED | STALE | REPLACED) == 0
            && timer_started.load(Ordering::Relaxed)
            && self.fresh_until.is_none_or(|at| Instant::now() < at)
    }
}

impl Marks {
    /// Whether the watcher's word still holds by the clock: the token not
    /// yet past the point the watcher hands requests back to the clock
    /// before. Past it, the watcher is late (stuck, or gone without its
    /// guard running), and its word is withdrawn for every thread.
    #[cold]
    #[inline(never)]
    fn watcher_on_time(&self) -> bool {
        word_holds(&self.flags, self.fresh_until, Instant::now())
    }
}

/// Whether a watcher's word on a token fresh until `fresh_until` holds at
/// `now`; if not, withdraws it (`WATCHED`) for every thread.
fn word_holds(flags: &AtomicU8, fresh_until: Option<Instant>, now: Instant) -> bool {
    if fresh_until.is_none_or(|at| now < at) {
        return true;
    }
    flags.fetch_and(!WATCHED, Ordering::Release);
    false
}

impl Snapshot {
    pub(crate) fn empty(generation: u64) -> Self {
        Self {
            generation,
            tokens: None,
            header: None,
            refreshed_at: None,
            proactive_from: None,
            stale_at: None,
            expired_at: None,
            expires_at: None,
            flags: Arc::new(AtomicU8::new(0)),
        }
    }

    /// Whether the watcher vouches for this token: present, not rejected,
    /// watched and not yet stale. One load, and no clock read: what a
    /// request for a fresh token costs on a runtime that keeps the watcher.
    #[inline]
    pub(crate) fn kept_fresh(&self) -> bool {
        self.header.is_some() && self.flags.load(Ordering::Acquire) == WATCHED
    }

    /// [`kept_fresh`](Self::kept_fresh), checked by the clock: for a
    /// request sent without a thread's copy, which has no count of requests
    /// between clock reads to keep (see [`CLOCK_EVERY`]). Past the point
    /// the watcher hands requests back to the clock, its word is withdrawn,
    /// as a copy's count does.
    pub(crate) fn kept_fresh_by_the_clock(&self) -> bool {
        self.kept_fresh() && word_holds(&self.flags, self.fresh_until(), Instant::now())
    }

    /// Where the token stands, for the hot path: trusts the watcher's flags
    /// while they hold, so a fresh token costs no clock read; reads the clock
    /// once the watcher raised `stale` (just before the stale window), or
    /// when no watcher runs.
    #[inline]
    pub(crate) fn freshness_fast(&self) -> Freshness {
        let flags = self.flags.load(Ordering::Acquire);
        if self.header.is_none() || flags & REJECTED != 0 {
            return Freshness::Expired;
        }
        if self.stale_at.is_none() || flags & (WATCHED | STALE) == WATCHED {
            return Freshness::Fresh;
        }
        self.freshness(Instant::now())
    }

    /// Where the token stands at `now`, exactly.
    pub(crate) fn freshness(&self, now: Instant) -> Freshness {
        if self.header.is_none() || self.is_rejected() {
            return Freshness::Expired;
        }
        let (Some(stale_at), Some(expired_at)) = (self.stale_at, self.expired_at) else {
            return Freshness::Fresh;
        };
        if now >= expired_at {
            Freshness::Expired
        } else if now >= stale_at {
            Freshness::Stale
        } else {
            Freshness::Fresh
        }
    }

    /// Called by the watcher: raises `stale` if due and, when `promise`
    /// (the watcher's runtime keeps its timers running), promises to raise
    /// it when due. Returns when the watcher must wake, if ever.
    ///
    /// `stale` only sends requests to the clock, which tells the windows
    /// exactly, so it is raised early, for a timer that fires late (a
    /// millisecond at least, more on a busy runtime): [`WATCH_LEAD`] before
    /// `stale_at`, and [`EXPIRY_LEAD`] before the expiry at the latest.
    /// Found in review: with an advisory window of zero, `stale_at` is the
    /// expiry itself, and until a late watcher ran, requests went out with
    /// the expired token.
    pub(crate) fn watch(&self, now: Instant, promise: bool) -> Option<Instant> {
        let due = self.watch_due()?;
        // Raised before `watched`, so no request can see a due token as
        // watched-and-fresh.
        if now >= due {
            self.flags.fetch_or(STALE, Ordering::Release);
        }
        if promise {
            self.flags.fetch_or(WATCHED, Ordering::Release);
        }
        (now < due).then_some(due)
    }

    /// When the watcher raises `stale` (see [`watch`](Self::watch)).
    fn watch_due(&self) -> Option<Instant> {
        let before = |at: Instant, lead| at.checked_sub(lead).unwrap_or(at);
        let advisory = before(self.stale_at?, WATCH_LEAD);
        let expiry = self.expires_at.map(|at| before(at, EXPIRY_LEAD));
        Some(expiry.map_or(advisory, |expiry| advisory.min(expiry)))
    }

    /// Called when the watcher stops: requests read the clock again.
    pub(crate) fn unwatch(&self) {
        self.flags.fetch_and(!WATCHED, Ordering::Release);
    }

    /// Whether the token may still be sent: present, not rejected and not
    /// past its real expiry (even if inside the mandatory window). Used to
    /// keep serving while refreshes fail (static stability).
    pub(crate) fn is_valid(&self, now: Instant) -> bool {
        self.header.is_some() && !self.is_rejected() && self.expires_at.is_none_or(|e| now < e)
    }

    /// The token as a credential, sharing the header value: for the slow
    /// paths (a fresh-token request clones its thread's own copy instead,
    /// see `thread_copy`).
    pub(crate) fn credential(&self) -> Option<Credential> {
        self.header.as_ref().map(|header| Credential {
            header: header.clone(),
            generation: self.generation,
        })
    }

    /// Called once another snapshot has taken this one's place.
    pub(crate) fn mark_replaced(&self) {
        self.flags.fetch_or(REPLACED, Ordering::Release);
    }

    /// What a thread's copy of this snapshot's header needs to tell, on its
    /// own, that the token is still current and fresh.
    pub(crate) fn marks(&self) -> Marks {
        Marks {
            flags: Arc::clone(&self.flags),
            fresh_until: self.fresh_until(),
            on_its_word: Cell::new(0),
        }
    }

    /// The start of the first window, if the token has windows.
    fn fresh_until(&self) -> Option<Instant> {
        let windows = self.stale_at.zip(self.expired_at);
        windows.map(|(stale_at, expired_at)| stale_at.min(expired_at))
    }

    pub(crate) fn mark_rejected(&self) {
        self.flags.fetch_or(REJECTED, Ordering::Release);
    }

    /// Why a refresh of this token runs, when nothing more particular
    /// (a rejection just reported, a forced refresh) started it: `Initial`
    /// without tokens, `Rejected` for a token a server rejected, else
    /// `otherwise`. Found in review: a rejected token refreshed again
    /// after a failed refresh's backoff was told to the source as
    /// proactive, and a source that serves a cached token unless told of
    /// a rejection served the revoked one again.
    pub(crate) fn refresh_reason(&self, otherwise: RefreshReason) -> RefreshReason {
        if self.tokens.is_none() {
            RefreshReason::Initial
        } else if self.is_rejected() {
            RefreshReason::Rejected
        } else {
            otherwise
        }
    }

    /// Whether a server rejected this generation.
    pub(crate) fn is_rejected(&self) -> bool {
        self.flags.load(Ordering::Acquire) & REJECTED != 0
    }

    /// Whether the watcher promises to raise `stale` on time.
    #[cfg(test)]
    pub(crate) fn is_watched(&self) -> bool {
        self.flags.load(Ordering::Acquire) & WATCHED != 0
    }

    /// Whether the watcher has raised `stale`.
    #[cfg(test)]
    pub(crate) fn is_stale(&self) -> bool {
        self.flags.load(Ordering::Acquire) & STALE != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RefreshWindow;

    fn snapshot(lifetime: Option<u64>) -> (Instant, Snapshot) {
        let now = Instant::now();
        let mut tokens = TokenSet::new("t");
        if let Some(secs) = lifetime {
            tokens = tokens.with_expires_in(Duration::from_secs(secs));
        }
        let snap =
            Prepared::new(tokens, now, true)
                .unwrap()
                .into_snapshot(1, now, &Config::default());
        (now, snap)
    }

    /// A watcher that never raises `stale` (its runtime wedged, and no
    /// guard run) is caught by the clock read of one request in
    /// `CLOCK_EVERY`: past the advisory point, its word is withdrawn for
    /// every thread. Before it, the word stands.
    #[tokio::test(start_paused = true)]
    async fn a_watcher_late_past_its_promise_loses_its_word() {
        let timer_started = AtomicBool::new(true);
        let (_, snap) = snapshot(Some(100));
        snap.watch(Instant::now(), true);
        let marks = snap.marks();
        let vouched = |n| (0..n).filter(|_| marks.vouch(&timer_started)).count();
        assert_eq!(
            vouched(usize::from(CLOCK_EVERY) * 3),
            usize::from(CLOCK_EVERY) * 3
        );

        // Past the advisory point (50 s), the watcher never having run.
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(
            vouched(usize::from(CLOCK_EVERY)),
            usize::from(CLOCK_EVERY) - 1
        );
        assert!(!snap.is_watched(), "withdrawn for every thread");
        assert!(!snap.kept_fresh());
        assert!(
            !marks.vouch(&timer_started),
            "the clock decides from here on"
        );
    }

    /// Found in review: an empty access token was installed, and sent as
    /// `Authorization: Bearer ` with nothing after it.
    #[test]
    fn a_blank_access_token_makes_no_header() {
        for blank in ["", " ", "\t", " \t "] {
            assert!(!makes_header(&TokenSet::new(blank)), "{blank:?}");
            assert!(bearer_header(&TokenSet::new(blank)).is_err(), "{blank:?}");
        }
        assert!(makes_header(&TokenSet::new(" t ")));
    }

    /// The check that makes no header agrees with `HeaderValue` itself on
    /// every byte, so a token it passes is one the header takes.
    #[test]
    fn makes_header_agrees_with_header_value_on_every_byte() {
        for byte in 0..=u8::MAX {
            let token = String::from_utf8_lossy(&[b'a', byte, b'z']).into_owned();
            let by_http = HeaderValue::from_bytes(format!("Bearer {token}").as_bytes()).is_ok();
            let tokens = TokenSet::new(token.as_str());
            assert_eq!(makes_header(&tokens), by_http, "byte {byte:#04x}");
            assert_eq!(bearer_header(&tokens).is_ok(), by_http, "byte {byte:#04x}");
        }
    }

    #[test]
    fn freshness_follows_the_windows() {
        let (t0, snap) = snapshot(Some(100));
        let at = |secs| t0 + Duration::from_secs(secs);
        assert_eq!(snap.freshness(at(0)), Freshness::Fresh);
        assert_eq!(snap.freshness(at(49)), Freshness::Fresh);
        assert_eq!(snap.freshness(at(50)), Freshness::Stale);
        assert_eq!(snap.freshness(at(89)), Freshness::Stale);
        assert_eq!(snap.freshness(at(90)), Freshness::Expired);
        assert!(snap.is_valid(t0 + Duration::from_secs(99)));
        assert!(!snap.is_valid(t0 + Duration::from_secs(100)));
    }

    #[test]
    fn token_without_expiry_is_fresh_until_rejected() {
        let (_, snap) = snapshot(None);
        assert_eq!(snap.freshness_fast(), Freshness::Fresh);
        snap.mark_rejected();
        assert_eq!(snap.freshness_fast(), Freshness::Expired);
    }

    #[tokio::test(start_paused = true)]
    async fn watched_token_is_fresh_without_the_clock_until_the_watcher_raises_stale() {
        let (_, snap) = snapshot(Some(100));
        // Not watched: the clock decides.
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(snap.freshness_fast(), Freshness::Stale);
        // Watched before its advisory point: fresh until the watcher says so.
        let (t1, snap) = snapshot(Some(100));
        let due = t1 + Duration::from_secs(50) - WATCH_LEAD;
        assert_eq!(snap.watch(t1, true), Some(due));
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(snap.freshness_fast(), Freshness::Fresh, "no clock read");
        assert_eq!(
            snap.watch(Instant::now(), true),
            None,
            "already due: raised at once"
        );
        assert_eq!(snap.freshness_fast(), Freshness::Stale);
        // A dead watcher hands back to the clock.
        let (t2, snap) = snapshot(Some(100));
        snap.watch(t2, true);
        snap.unwatch();
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(snap.freshness_fast(), Freshness::Stale);
    }

    /// The watcher is due before the advisory point, so that a timer
    /// firing late (here by a millisecond) keeps no token fresh past it.
    #[tokio::test(start_paused = true)]
    async fn a_watcher_running_late_keeps_no_token_fresh_past_its_advisory_point() {
        let (now, snap) = snapshot(Some(100));
        let stale_at = now + Duration::from_secs(50);
        let due = snap.watch(now, true).expect("a wake-up");
        tokio::time::advance(due + Duration::from_millis(1) - now).await;
        assert_eq!(snap.watch(Instant::now(), true), None, "raised when run");
        assert_eq!(snap.freshness_fast(), Freshness::Fresh, "by the clock");
        tokio::time::advance(stale_at - Instant::now()).await;
        assert_eq!(snap.freshness_fast(), Freshness::Stale);
    }

    /// With no advisory window, the advisory point is the expiry: the
    /// watcher hands the token to the clock a second before it, so that a
    /// watcher late by less than that (here half a second) keeps it fresh
    /// no longer. Found in review: until the late watcher ran, requests
    /// went out with the expired token.
    #[tokio::test(start_paused = true)]
    async fn a_token_with_no_advisory_window_is_handed_to_the_clock_before_it_expires() {
        let config = Config {
            advisory: RefreshWindow::fixed(Duration::ZERO),
            ..Config::default()
        };
        let now = Instant::now();
        let tokens = TokenSet::new("t").with_expires_in(Duration::from_secs(100));
        let snap = Prepared::new(tokens, now, true)
            .unwrap()
            .into_snapshot(1, now, &config);
        let due = snap.watch(now, true).expect("a wake-up");
        assert_eq!(snap.freshness_fast(), Freshness::Fresh, "watched: no clock");
        let expiry = now + Duration::from_secs(100);
        // The watcher runs half a second late, if that is before the expiry.
        let late = due + Duration::from_millis(500);
        if late < expiry {
            tokio::time::advance(late - now).await;
            assert_eq!(snap.watch(Instant::now(), true), None, "raised when run");
        }
        tokio::time::advance(expiry - Instant::now()).await;
        assert_eq!(snap.freshness_fast(), Freshness::Expired);
    }

    #[test]
    fn header_is_sensitive_and_bearer() {
        let (_, snap) = snapshot(None);
        let header = snap.header.unwrap();
        assert!(header.is_sensitive());
        assert_eq!(header.to_str().unwrap(), "Bearer t");
    }

    #[test]
    fn absurd_lifetimes_saturate_instead_of_overflowing() {
        let tokens = TokenSet::new("t").with_expires_in(Duration::MAX);
        let snap = Prepared::new(tokens, Instant::now(), true)
            .unwrap()
            .into_snapshot(1, Instant::now(), &Config::default());
        let years = Duration::from_secs(86_400 * 365 * 29);
        assert!(snap.expires_at.unwrap() > Instant::now() + years);
        assert_eq!(snap.freshness(Instant::now()), Freshness::Fresh);
    }

    #[test]
    fn token_with_newline_is_refused() {
        assert!(Prepared::new(TokenSet::new("a\nb"), Instant::now(), true).is_err());
    }
}
