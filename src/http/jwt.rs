//! The `exp` claim of a JWT access token, read without verifying anything:
//! it only tells us when to refresh, never whether to trust the token.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::Value;

/// How long until `token`'s `exp`, if it is a JWT with a numeric `exp`.
/// An `exp` in the past gives zero.
///
/// `exp` is on the issuer's clock; `now` is too where the answer had a
/// `Date` (a second past it), and is ours otherwise. With a numeric `iat`
/// before `exp`, the time left is also capped at the lifetime the token
/// was issued with (`exp - iat`): without a `Date`, a clock running behind
/// the issuer's would otherwise stretch the token's life by as much, and
/// requests would go out with it past its end. A token issued a while
/// before it came (an issuer handing out a cached token) is counted from
/// `now`: the cap is never the later of the two.
pub(crate) fn expires_in(token: &str, now: SystemTime) -> Option<Duration> {
    let mut parts = token.split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        // Five parts: an encrypted JWE, whose payload we cannot read.
        return None;
    }
    // Some issuers pad; the JWS compact form does not, so accept both.
    let payload = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: Value = serde_json::from_slice(&payload).ok()?;
    let exp = claims.get("exp")?.as_f64()?;
    if !exp.is_finite() {
        return None;
    }
    let since_epoch = now.duration_since(UNIX_EPOCH).ok()?.as_secs_f64();
    let mut left = exp - since_epoch;
    let issued = claims.get("iat").and_then(Value::as_f64);
    if let Some(lifetime) = issued
        .map(|iat| exp - iat)
        .filter(|l| l.is_finite() && *l > 0.0)
    {
        left = left.min(lifetime);
    }
    Some(Duration::try_from_secs_f64(left.max(0.0)).unwrap_or(Duration::MAX))
}

#[cfg(test)]
pub(crate) fn token_with_claims(claims: &Value) -> String {
    let encode = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
    format!(
        "{}.{}.signature",
        encode(&serde_json::json!({"alg": "RS256", "typ": "JWT"})),
        encode(claims)
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn exp_gives_the_time_left() {
        let token = token_with_claims(&json!({"sub": "x", "exp": 1_000_900}));
        assert_eq!(
            expires_in(&token, at(1_000_000)),
            Some(Duration::from_secs(900))
        );
    }

    #[test]
    fn a_past_exp_gives_zero() {
        let token = token_with_claims(&json!({"exp": 10}));
        assert_eq!(expires_in(&token, at(1_000)), Some(Duration::ZERO));
    }

    #[test]
    fn a_clock_behind_the_issuers_does_not_stretch_the_issued_lifetime() {
        // Issued at 1,000,000 for 900 s; our clock is 120 s behind.
        let token = token_with_claims(&json!({"iat": 1_000_000, "exp": 1_000_900}));
        assert_eq!(
            expires_in(&token, at(999_880)),
            Some(Duration::from_secs(900))
        );
        // Ahead by 120 s: the time left by our clock, the shorter.
        assert_eq!(
            expires_in(&token, at(1_000_120)),
            Some(Duration::from_secs(780))
        );
    }

    #[test]
    fn an_iat_that_gives_no_lifetime_is_left_out() {
        // At or after `exp`, not a number: the time left by our clock.
        // Ages ago: a lifetime longer than the time left, so no cap.
        for iat in [
            json!(1_000_900),
            json!(1_001_000),
            json!("earlier"),
            json!(-1e300),
        ] {
            let token = token_with_claims(&json!({"iat": iat, "exp": 1_000_900}));
            assert_eq!(
                expires_in(&token, at(1_000_000)),
                Some(Duration::from_secs(900)),
                "iat {iat}"
            );
        }
    }

    #[test]
    fn anything_else_gives_none() {
        let now = at(1_000);
        assert_eq!(expires_in("opaque-token", now), None);
        assert_eq!(expires_in("a.b.c", now), None);
        assert_eq!(expires_in("a.b.c.d.e", now), None);
        let no_exp = token_with_claims(&json!({"sub": "x"}));
        assert_eq!(expires_in(&no_exp, now), None);
        let string_exp = token_with_claims(&json!({"exp": "soon"}));
        assert_eq!(expires_in(&string_exp, now), None);
        let huge = token_with_claims(&json!({"exp": 1e300}));
        assert_eq!(expires_in(&huge, now), Some(Duration::MAX));
    }
}
