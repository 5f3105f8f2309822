//! How long before expiry a token counts as stale or expired.

use std::time::Duration;

/// A span before a token's expiry, fixed or proportional to its lifetime.
///
/// Two windows shape the token's life: inside the *advisory* window requests
/// still use the token while one background refresh runs; inside the
/// *mandatory* window requests wait for a new token.
///
/// ```
/// use std::time::Duration;
/// use tower_token_refresh::RefreshWindow;
///
/// // Half the lifetime, but never more than five minutes (the advisory default).
/// let advisory = RefreshWindow::fraction(0.5).at_most(Duration::from_secs(300));
/// assert_eq!(advisory.before_expiry(Duration::from_secs(60)), Duration::from_secs(30));
/// assert_eq!(advisory.before_expiry(Duration::from_secs(3600)), Duration::from_secs(300));
///
/// let fixed = RefreshWindow::fixed(Duration::from_secs(1));
/// assert_eq!(fixed.before_expiry(Duration::from_secs(5)), Duration::from_secs(1));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RefreshWindow {
    fraction: Option<f64>,
    fixed: Option<Duration>,
    at_most: Option<Duration>,
}

impl RefreshWindow {
    /// A fixed span before expiry (clamped to the token's lifetime).
    ///
    /// ```
    /// use std::time::Duration;
    /// let w = tower_token_refresh::RefreshWindow::fixed(Duration::from_secs(10));
    /// assert_eq!(w.before_expiry(Duration::from_secs(4)), Duration::from_secs(4));
    /// ```
    pub fn fixed(span: Duration) -> Self {
        Self {
            fraction: None,
            fixed: Some(span),
            at_most: None,
        }
    }

    /// A fraction of the token's lifetime (clamped to `0.0..=1.0`).
    ///
    /// ```
    /// use std::time::Duration;
    /// let w = tower_token_refresh::RefreshWindow::fraction(0.1);
    /// assert_eq!(w.before_expiry(Duration::from_secs(50)), Duration::from_secs(5));
    /// ```
    pub fn fraction(fraction: f64) -> Self {
        let fraction = if fraction.is_nan() {
            0.0
        } else {
            fraction.clamp(0.0, 1.0)
        };
        Self {
            fraction: Some(fraction),
            fixed: None,
            at_most: None,
        }
    }

    /// Caps the span.
    ///
    /// ```
    /// use std::time::Duration;
    /// let w = tower_token_refresh::RefreshWindow::fraction(0.1).at_most(Duration::from_secs(10));
    /// assert_eq!(w.before_expiry(Duration::from_secs(3600)), Duration::from_secs(10));
    /// ```
    pub fn at_most(mut self, cap: Duration) -> Self {
        self.at_most = Some(cap);
        self
    }

    /// The span before expiry for a token living `lifetime`.
    ///
    /// ```
    /// use std::time::Duration;
    /// let w = tower_token_refresh::RefreshWindow::fraction(0.5);
    /// assert_eq!(w.before_expiry(Duration::from_secs(2)), Duration::from_secs(1));
    /// ```
    pub fn before_expiry(&self, lifetime: Duration) -> Duration {
        let span = match (self.fixed, self.fraction) {
            (Some(fixed), _) => fixed,
            // Not `mul_f64`: it panics where the product rounds past
            // `Duration::MAX` (the longest lifetime, fraction 1).
            (None, Some(fraction)) => {
                Duration::try_from_secs_f64(lifetime.as_secs_f64() * fraction).unwrap_or(lifetime)
            }
            (None, None) => Duration::ZERO,
        };
        let span = self.at_most.map_or(span, |cap| span.min(cap));
        span.min(lifetime)
    }

    /// `min(L/2, 5 min)`: the advisory default.
    pub(crate) fn default_advisory() -> Self {
        Self::fraction(0.5).at_most(Duration::from_secs(5 * 60))
    }

    /// `min(L/10, 10 s)`: the mandatory default.
    pub(crate) fn default_mandatory() -> Self {
        Self::fraction(0.1).at_most(Duration::from_secs(10))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_design() {
        let hour = Duration::from_secs(3600);
        assert_eq!(
            RefreshWindow::default_advisory().before_expiry(hour),
            Duration::from_secs(300)
        );
        assert_eq!(
            RefreshWindow::default_mandatory().before_expiry(hour),
            Duration::from_secs(10)
        );
        let short = Duration::from_secs(20);
        assert_eq!(
            RefreshWindow::default_advisory().before_expiry(short),
            Duration::from_secs(10)
        );
        assert_eq!(
            RefreshWindow::default_mandatory().before_expiry(short),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn fraction_is_clamped_and_nan_is_zero() {
        let l = Duration::from_secs(10);
        assert_eq!(RefreshWindow::fraction(7.0).before_expiry(l), l);
        assert_eq!(
            RefreshWindow::fraction(-1.0).before_expiry(l),
            Duration::ZERO
        );
        assert_eq!(
            RefreshWindow::fraction(f64::NAN).before_expiry(l),
            Duration::ZERO
        );
    }

    /// Found in review: `mul_f64` panicked here, the product rounding past
    /// `Duration::MAX`. The method is public.
    #[test]
    fn the_longest_lifetime_makes_a_window_not_a_panic() {
        let window = RefreshWindow::fraction(1.0).before_expiry(Duration::MAX);
        assert!(window > Duration::MAX / 2, "{window:?}");
        let half = RefreshWindow::fraction(0.5).before_expiry(Duration::MAX);
        assert!(
            half <= Duration::MAX / 2 + Duration::from_secs(1),
            "{half:?}"
        );
    }
}
