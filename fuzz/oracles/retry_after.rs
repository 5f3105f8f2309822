//! `Retry-After` as a refresh reads it from a `429`: any header value,
//! against clocks at the epoch, today and far ahead.
//!
//! Properties: no panic; delay-seconds are taken as they are (past
//! `u64::MAX`, as the longest wait); an HTTP date gives the time from `now`
//! until then (zero once it has passed); anything else gives no delay.
//!
//! Shared by the fuzz target (`fuzz/fuzz_targets/retry_after.rs`) and
//! `tests/fuzz_seeds.rs`, which replays the committed seeds through
//! [`check`] on every test run.

use std::time::{Duration, UNIX_EPOCH};

use http::header::RETRY_AFTER;
use http::{HeaderMap, HeaderValue};
use tower_token_refresh::http::__fuzz;

/// Runs one input and panics if a property does not hold.
pub fn check(data: &[u8]) {
    checked(data);
}

/// [`check`], telling whether there was anything to check: bytes that are
/// no header value (a control character, say) never reach a refresh, and
/// are let go (`tests/fuzz_seeds.rs` holds every committed seed to being
/// one).
pub fn checked(data: &[u8]) -> bool {
    let Ok(value) = HeaderValue::from_bytes(data) else {
        return false;
    };
    let mut headers = HeaderMap::new();
    headers.insert(RETRY_AFTER, value.clone());
    // A value with obs-text (bytes over 0x7f) is neither form; around
    // either, only optional whitespace (SP, HTAB) is allowed.
    let text = value.to_str().ok().map(|t| t.trim_matches([' ', '\t']));
    // Delay-seconds are digits only (no sign); more than can be counted
    // is the longest wait, not none.
    let seconds = text
        .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
        .map(|t| t.parse::<u64>().unwrap_or(u64::MAX));
    let date = text.and_then(|t| httpdate::parse_http_date(t).ok());
    for now in [
        UNIX_EPOCH,
        UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        UNIX_EPOCH + Duration::from_secs(253_402_300_799), // 9999-12-31
    ] {
        let delay = __fuzz::retry_after(&headers, now);
        let expected = match (seconds, date) {
            (Some(seconds), _) => Some(Duration::from_secs(seconds)),
            // A date in the past means "now".
            (None, Some(at)) => Some(at.duration_since(now).unwrap_or(Duration::ZERO)),
            (None, None) => None,
        };
        assert_eq!(delay, expected, "{text:?} at {now:?}");
    }
    true
}
