//! What the manager remembers about the last failed refresh.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::later;
use crate::error::ErrorKind;
use crate::{Error, FailureClass, RefreshError};

/// Exponential backoff with jitter for transient refresh failures.
///
/// The n-th consecutive failure waits `min(initial · 2ⁿ⁻¹, max)`, of which the
/// second half is random ("equal jitter"): a fleet that failed together does
/// not retry together, and no wait is shorter than half the nominal one.
///
/// ```
/// use std::time::Duration;
/// use tower_token_refresh::Backoff;
///
/// let backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
/// let third = backoff.delay(3);
/// assert!(third >= Duration::from_secs(2) && third <= Duration::from_secs(4));
/// assert!(backoff.delay(50) <= Duration::from_secs(30));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
}

impl Backoff {
    /// Backoff starting at `initial` and never exceeding `max` (taken as
    /// `initial` if it is smaller: the first wait is never cut short).
    ///
    /// ```
    /// use std::time::Duration;
    /// let b = tower_token_refresh::Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
    /// assert!(b.delay(1) <= Duration::from_millis(100));
    ///
    /// let upside_down = tower_token_refresh::Backoff::new(Duration::from_secs(5), Duration::from_secs(1));
    /// assert!(upside_down.delay(1) >= Duration::from_millis(2500), "half of 5 s at least");
    /// assert!(upside_down.delay(10) <= Duration::from_secs(5));
    /// ```
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max: max.max(initial),
        }
    }

    /// The wait after `failures` consecutive failures (1 for the first).
    ///
    /// ```
    /// use std::time::Duration;
    /// let b = tower_token_refresh::Backoff::default();
    /// assert!(b.delay(1) >= Duration::from_millis(500));
    /// ```
    pub fn delay(&self, failures: u32) -> Duration {
        let exponent = failures.saturating_sub(1).min(32);
        let nominal = self
            .initial
            .checked_mul(1u32 << exponent.min(31))
            .unwrap_or(self.max)
            .min(self.max);
        let half = nominal / 2;
        half + half.mul_f64(fastrand::f64())
    }
}

impl Default for Backoff {
    /// 1 s doubling up to 60 s.
    fn default() -> Self {
        Self::new(Duration::from_secs(1), Duration::from_secs(60))
    }
}

/// The longest `Retry-After` honoured. A longer one (a misconfigured or
/// hostile server, or an HTTP date years ahead) would block every refresh,
/// `force_refresh` included, for as long (tokens set by hand do not lift a
/// rate limit); past this, the server is asked again, once.
pub(crate) const LONGEST_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// A failed refresh and until when it blocks the next one.
pub(crate) struct Failure {
    pub(crate) error: Arc<RefreshError>,
    pub(crate) kind: ErrorKind,
    /// `None` for terminal failures: blocked until new tokens are set.
    pub(crate) until: Option<Instant>,
}

impl Failure {
    pub(crate) fn new(
        error: Arc<RefreshError>,
        kind: ErrorKind,
        consecutive: u32,
        backoff: &Backoff,
        now: Instant,
    ) -> Self {
        let until = match error.class() {
            FailureClass::Terminal => None,
            // The backoff is a floor: a `Retry-After: 0` (or a date the
            // server's clock already passed) let refreshes run back to back
            // for as long as the rate limit lasted.
            FailureClass::RateLimited {
                retry_after: Some(wait),
            } => {
                let wait = wait.min(LONGEST_RETRY_AFTER);
                Some(later(now, wait.max(backoff.delay(consecutive))))
            }
            FailureClass::RateLimited { retry_after: None } | FailureClass::Transient => {
                Some(later(now, backoff.delay(consecutive)))
            }
        };
        Self { error, kind, until }
    }

    /// Refused for good: blocks until new tokens are set.
    pub(crate) fn is_terminal(&self) -> bool {
        self.until.is_none()
    }

    /// A rate limit still in force at `now`: the identity server's word on
    /// when it may be called again, whatever tokens the caller holds, so
    /// new tokens set by hand do not lift it.
    pub(crate) fn limits_calls(&self, now: Instant) -> bool {
        self.error.is_rate_limited() && self.blocks(now)
    }

    /// Whether no refresh may start at `now`.
    pub(crate) fn blocks(&self, now: Instant) -> bool {
        self.until.is_none_or(|until| now < until)
    }

    /// Whether no refresh may start at `now` for a request that cannot use
    /// the current token, or for a forced one. A refresh the store failure
    /// deferred blocks neither: it was put off only because the token was
    /// still good, and the flight they start refreshes without the store.
    pub(crate) fn blocks_needed(&self, now: Instant) -> bool {
        self.kind != ErrorKind::RefreshDeferred && self.blocks(now)
    }

    /// How much longer it [blocks needed refreshes](Self::blocks_needed),
    /// when that ends by itself: `None` when it does not block them, or
    /// blocks them until new tokens are set (terminal).
    pub(crate) fn needed_resume_in(&self, now: Instant) -> Option<Duration> {
        if !self.blocks_needed(now) {
            return None;
        }
        self.until.map(|until| until.saturating_duration_since(now))
    }

    /// Ends the wait no later than `at`, if given.
    pub(crate) fn no_later_than(mut self, at: Option<Instant>) -> Self {
        if let (Some(until), Some(at)) = (self.until, at) {
            self.until = Some(until.min(at));
        }
        self
    }

    pub(crate) fn to_error(&self) -> Error {
        Error::with_refresh(self.kind, Arc::clone(&self.error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_within_jitter_and_caps() {
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(8));
        for _ in 0..100 {
            let d1 = b.delay(1);
            assert!(d1 >= Duration::from_millis(500) && d1 <= Duration::from_secs(1));
            let d4 = b.delay(4);
            assert!(d4 >= Duration::from_secs(4) && d4 <= Duration::from_secs(8));
            let d9 = b.delay(9);
            assert!(d9 >= Duration::from_secs(4) && d9 <= Duration::from_secs(8));
            assert!(b.delay(u32::MAX) <= Duration::from_secs(8));
        }
    }

    /// Jitter spreads the retries of many clients that failed together:
    /// delays vary, over the whole half-open range, not one end of it.
    #[test]
    fn backoff_delays_are_spread_over_their_range() {
        let b = Backoff::new(Duration::from_secs(8), Duration::from_secs(8));
        let delays: Vec<Duration> = (0..200).map(|_| b.delay(1)).collect();
        let (low, high) = (Duration::from_secs(5), Duration::from_secs(7));
        // With uniform jitter, each check fails with odds of (3/4)^200,
        // about 1e-25.
        assert!(delays.iter().any(|d| *d < low), "none in the lower quarter");
        assert!(
            delays.iter().any(|d| *d > high),
            "none in the upper quarter"
        );
    }

    #[test]
    fn a_retry_after_past_the_backoff_is_honoured_exactly_and_terminal_never_expires() {
        let now = Instant::now();
        let limited = Failure::new(
            Arc::new(RefreshError::rate_limited(Some(Duration::from_secs(30)))),
            ErrorKind::RefreshFailed,
            1,
            &Backoff::default(),
            now,
        );
        assert_eq!(limited.until, Some(now + Duration::from_secs(30)));
        assert!(limited.blocks(now + Duration::from_secs(29)));
        assert!(!limited.blocks(now + Duration::from_secs(30)));

        let terminal = Failure::new(
            Arc::new(RefreshError::terminal("gone")),
            ErrorKind::ReauthRequired,
            1,
            &Backoff::default(),
            now,
        );
        assert!(terminal.blocks(now + Duration::from_secs(86_400 * 365)));
    }

    /// Found in review: a `Retry-After` of years (or a date years ahead)
    /// was honoured up to the clock's 30-year cap, blocking every refresh,
    /// `force_refresh` included, for as long.
    #[test]
    fn a_retry_after_past_an_hour_waits_an_hour() {
        let now = Instant::now();
        for asked in [
            Duration::from_secs(3601),
            Duration::from_secs(86_400 * 365 * 10),
            Duration::MAX,
        ] {
            let limited = Failure::new(
                Arc::new(RefreshError::rate_limited(Some(asked))),
                ErrorKind::RefreshFailed,
                1,
                &Backoff::default(),
                now,
            );
            assert_eq!(limited.until, Some(now + LONGEST_RETRY_AFTER), "{asked:?}");
        }
        // A backoff configured longer still wins.
        let patient = Backoff::new(Duration::from_secs(7200), Duration::from_secs(7200));
        let limited = Failure::new(
            Arc::new(RefreshError::rate_limited(Some(Duration::MAX))),
            ErrorKind::RefreshFailed,
            1,
            &patient,
            now,
        );
        // Its delay (3600 to 7200 s, jittered) is not cut to the hour.
        assert!(limited.until.unwrap() > now + LONGEST_RETRY_AFTER);
    }

    /// Found in review: `Retry-After: 0` (or a date already past) ended
    /// the block at once, so refreshes ran back to back during the rate
    /// limit. The backoff is the floor.
    #[test]
    fn a_retry_after_shorter_than_the_backoff_waits_the_backoff() {
        let now = Instant::now();
        let backoff = Backoff::new(Duration::from_secs(8), Duration::from_secs(60));
        for consecutive in [1, 3] {
            let limited = Failure::new(
                Arc::new(RefreshError::rate_limited(Some(Duration::ZERO))),
                ErrorKind::RefreshFailed,
                consecutive,
                &backoff,
                now,
            );
            let until = limited.until.expect("a rate limit ends");
            assert!(until >= now + Duration::from_secs(4), "{consecutive}");
            assert!(limited.blocks(now + Duration::from_secs(3)));
        }
    }
}
