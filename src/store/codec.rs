//! The layer's encoding of a token set inside a [`Record`](super::Record).
//!
//! JSON, with the times as absolute Unix times in milliseconds: a lifetime
//! (`expires_in`) means nothing to another process or after a restart. Both
//! the issue time and the expiry are kept, so every process derives the
//! same refresh windows from the same lifetime. Secrets are written
//! straight into a buffer that is wiped after use, never through an
//! intermediate copy.
//!
//! ```json
//! {"format":1,"access_token":"…","refresh_token":"…","issued_at_ms":1795000000000,"expires_at_ms":1795003600000,"extras":{"scope":"read"}}
//! ```
//!
//! Later formats stay readable by this release where they can: a writer
//! that only adds fields says so with `min_reader`, the oldest format that
//! reads the record correctly by ignoring what it does not know (absent:
//! the record's own format), and this release reads any record whose
//! `min_reader` is at most [`FORMAT`]. A fleet upgraded one process at a
//! time then shares its tokens throughout; a record it cannot read would
//! leave each older process refreshing on its own, from a refresh token a
//! newer one may have spent.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use zeroize::{Zeroize, Zeroizing};

use super::StoreError;
use crate::TokenSet;

/// The format this release writes, and the newest it reads in full.
const FORMAT: u64 = 1;

/// Encodes `tokens`, whose lifetime counts from `obtained_at` (wall clock).
pub(crate) fn encode(tokens: &TokenSet, obtained_at: SystemTime) -> Zeroizing<Vec<u8>> {
    // Sized for the worst case up front: a buffer that grew would leave the
    // block it grew out of, tokens and all, freed unwiped.
    let mut out = Zeroizing::new(Vec::with_capacity(encoded_capacity(tokens)));
    out.extend_from_slice(b"{\"format\":1,\"access_token\":");
    push_string(&mut out, tokens.access_token().expose());
    if let Some(refresh) = tokens.refresh_token() {
        out.extend_from_slice(b",\"refresh_token\":");
        push_string(&mut out, refresh.expose());
    }
    if let Some(lifetime) = tokens.expires_in() {
        let issued = unix_millis(obtained_at);
        let expires = issued.saturating_add(lifetime.as_millis().min(u128::from(u64::MAX)) as u64);
        out.extend_from_slice(
            format!(",\"issued_at_ms\":{issued},\"expires_at_ms\":{expires}").as_bytes(),
        );
    }
    out.extend_from_slice(b",\"extras\":{");
    for (i, (name, value)) in tokens.extras().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        push_string(&mut out, name);
        out.push(b':');
        push_string(&mut out, value);
    }
    out.extend_from_slice(b"}}");
    out
}

/// An upper bound on the length of `encode(tokens, _)`: the fixed text
/// and two numbers take under 160 bytes, and JSON writes each byte of a
/// string as at most six (`\u001f`), with two quotes and a separator
/// around each string.
fn encoded_capacity(tokens: &TokenSet) -> usize {
    let string = |s: &str| 6 * s.len() + 3;
    let refresh = tokens.refresh_token().map_or(0, |r| string(r.expose()));
    let extras: usize = tokens.extras().map(|(n, v)| string(n) + string(v)).sum();
    160 + string(tokens.access_token().expose()) + refresh + extras
}

pub(super) fn unix_millis(at: SystemTime) -> u64 {
    let millis = at
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    u64::try_from(millis).unwrap_or(u64::MAX)
}

fn push_string(out: &mut Vec<u8>, value: &str) {
    // Writing a &str into a Vec cannot fail.
    serde_json::to_writer(&mut *out, value).expect("strings always serialize");
}

/// Decoded tokens: their whole lifetime, and how long ago they were issued.
#[derive(Debug)]
pub(crate) struct Decoded {
    pub(crate) tokens: TokenSet,
    pub(crate) age: Duration,
}

/// Decodes a payload, aging it to `now` (a clock behind the writer's gives
/// an age of zero).
pub(crate) fn decode(payload: &[u8], now: SystemTime) -> Result<Decoded, StoreError> {
    let mut value: Value = serde_json::from_slice(payload)
        .map_err(|_| StoreError::corrupt("stored tokens: not a JSON object"))?;
    let decoded = decode_value(&mut value, now);
    // Whatever is left (everything, if the record was refused) is wiped.
    wipe(&mut value);
    decoded
}

/// Zeroes every string in `value`.
fn wipe(value: &mut Value) {
    match value {
        Value::String(s) => s.zeroize(),
        Value::Array(items) => items.iter_mut().for_each(wipe),
        Value::Object(fields) => fields.values_mut().for_each(wipe),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

fn decode_value(value: &mut Value, now: SystemTime) -> Result<Decoded, StoreError> {
    let corrupt = |what: &str| StoreError::corrupt(format!("stored tokens: {what}"));
    let Value::Object(fields) = value else {
        return Err(corrupt("not a JSON object"));
    };
    let number = |name: &str| {
        fields
            .get(name)
            .map(|value| value.as_u64().filter(|&n| n > 0))
    };
    let format = number("format")
        .flatten()
        .ok_or_else(|| corrupt("no valid `format`"))?;
    let min_reader = match number("min_reader") {
        None => format,
        Some(Some(min_reader)) if min_reader <= format => min_reader,
        Some(_) => return Err(corrupt("`min_reader` is not a format up to `format`")),
    };
    if min_reader > FORMAT {
        return Err(corrupt(&format!(
            "written in format {format}, which needs a reader of format {min_reader}: \
             this release reads format {FORMAT} (upgrade it)"
        )));
    }
    // Taken out wiped on drop: a later refusal must not free them unwiped.
    let mut take_string = |name: &str| match fields.remove(name) {
        Some(Value::String(s)) => Ok(Some(Zeroizing::new(s))),
        None | Some(Value::Null) => Ok(None),
        Some(mut other) => {
            wipe(&mut other);
            Err(corrupt(&format!("`{name}` is not a string")))
        }
    };
    let access = take_string("access_token")?.ok_or_else(|| corrupt("no `access_token`"))?;
    let refresh = take_string("refresh_token")?;
    let mut tokens = TokenSet::new(access.as_str());
    if let Some(refresh) = refresh {
        tokens = tokens.with_refresh_token(refresh.as_str());
    }
    let millis = |name: &str| match fields.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value
            .as_u64()
            .map(Some)
            .ok_or_else(|| corrupt(&format!("`{name}` is not a whole number"))),
    };
    let mut age = Duration::ZERO;
    if let Some(expires) = millis("expires_at_ms")? {
        let issued = millis("issued_at_ms")?.ok_or_else(|| corrupt("no `issued_at_ms`"))?;
        let lifetime = expires
            .checked_sub(issued)
            .ok_or_else(|| corrupt("expires before it was issued"))?;
        tokens = tokens.with_expires_in(Duration::from_millis(lifetime));
        // Checked: on some platforms a `SystemTime` ends before `u64`
        // milliseconds do.
        let issued_at = UNIX_EPOCH
            .checked_add(Duration::from_millis(issued))
            .ok_or_else(|| corrupt("`issued_at_ms` is past any clock"))?;
        age = now.duration_since(issued_at).unwrap_or_default();
    }
    if let Some(extras) = fields.get("extras") {
        let Value::Object(extras) = extras else {
            return Err(corrupt("`extras` is not an object"));
        };
        for (name, value) in extras {
            let value = value
                .as_str()
                .ok_or_else(|| corrupt("an extra is not a string"))?;
            tokens = tokens.with_extra(name.as_str(), value);
        }
    }
    Ok(Decoded { tokens, age })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn round_trip_keeps_everything_and_ages_the_tokens() {
        let tokens = TokenSet::new("acc\"ess\n")
            .with_refresh_token("ref/resh")
            .with_expires_in(Duration::from_secs(600))
            .with_extra("scope", "read write");
        let payload = encode(&tokens, at(1_000));
        let Decoded { tokens, age } = decode(&payload, at(1_100)).unwrap();
        assert_eq!(tokens.access_token().expose(), "acc\"ess\n");
        assert_eq!(tokens.refresh_token().unwrap().expose(), "ref/resh");
        assert_eq!(tokens.expires_in(), Some(Duration::from_secs(600)));
        assert_eq!(age, Duration::from_secs(100));
        assert_eq!(tokens.extra("scope"), Some("read write"));
    }

    #[test]
    fn a_reader_behind_the_writer_sees_age_zero_and_no_expiry_stays_none() {
        let expiring = TokenSet::new("a").with_expires_in(Duration::from_secs(10));
        let decoded = decode(&encode(&expiring, at(1_000)), at(900)).unwrap();
        assert_eq!(decoded.age, Duration::ZERO);
        let forever = decode(&encode(&TokenSet::new("a"), at(1_000)), at(5_000)).unwrap();
        assert_eq!(forever.tokens.expires_in(), None);
        assert!(forever.tokens.refresh_token().is_none());
    }

    /// A later format that only adds fields (`min_reader` 1) is read, its
    /// new fields ignored; one that needs a newer reader is refused, and
    /// says which.
    #[test]
    fn a_later_format_is_read_when_it_says_an_older_reader_may() {
        let later = br#"{"format":3,"min_reader":1,"access_token":"a","refresh_token":"r","issued_at_ms":1000,"expires_at_ms":61000,"extras":{"scope":"read"},"audience":["api"],"key_id":7}"#;
        let Decoded { tokens, age } = decode(later, at(11)).unwrap();
        assert_eq!(tokens.access_token().expose(), "a");
        assert_eq!(tokens.refresh_token().unwrap().expose(), "r");
        assert_eq!(tokens.expires_in(), Some(Duration::from_secs(60)));
        assert_eq!(age, Duration::from_secs(10));
        assert_eq!(tokens.extra("scope"), Some("read"));
        assert_eq!(tokens.extras().count(), 1, "the new fields are not extras");

        let err = decode(br#"{"format":2,"min_reader":2,"access_token":"a"}"#, at(0));
        let err = err.unwrap_err();
        assert!(err.is_corrupt(), "{err}");
        assert!(err.to_string().contains("format 2"), "{err}");
        assert!(err.to_string().contains("upgrade"), "{err}");
    }

    #[test]
    fn malformed_payloads_are_corrupt_and_name_no_value() {
        for payload in [
            &b"not json"[..],
            b"[1]",
            b"{\"access_token\":\"secret-value\"}",
            b"{\"format\":2,\"access_token\":\"secret-value\"}",
            b"{\"format\":0,\"access_token\":\"secret-value\"}",
            b"{\"format\":\"1\",\"access_token\":\"secret-value\"}",
            b"{\"format\":1,\"min_reader\":2,\"access_token\":\"secret-value\"}",
            b"{\"format\":2,\"min_reader\":0,\"access_token\":\"secret-value\"}",
            b"{\"format\":1}",
            b"{\"format\":1,\"access_token\":7}",
            b"{\"format\":1,\"access_token\":\"secret-value\",\"expires_at_ms\":-1}",
            b"{\"format\":1,\"access_token\":\"secret-value\",\"expires_at_ms\":5}",
            b"{\"format\":1,\"access_token\":\"s\",\"issued_at_ms\":9,\"expires_at_ms\":5}",
            b"{\"format\":1,\"access_token\":\"secret-value\",\"extras\":{\"a\":1}}",
        ] {
            let err = decode(payload, at(0)).unwrap_err();
            assert!(err.is_corrupt(), "{err}");
            assert!(!err.to_string().contains("secret-value"), "{err}");
        }
    }

    /// Found in review: the buffer started at 256 bytes and grew, and each
    /// block it grew out of (a JWT-sized token in it) was freed unwiped.
    /// It is sized once now: the worst case, every byte escaped, fits.
    #[test]
    fn the_buffer_never_grows_so_no_unwiped_copy_is_left() {
        let jwt = "eyJhbGciOiJSUzI1NiJ9.".repeat(45); // ~900 bytes
        let escaped = "\u{1}\u{1f}\"\\".repeat(200); // escaped as \u0001, \u001f, \", \\
        let cases = [
            TokenSet::new(jwt.as_str()).with_refresh_token(jwt.as_str()),
            TokenSet::new(escaped.as_str())
                .with_refresh_token(escaped.as_str())
                .with_expires_in(Duration::MAX)
                .with_extra(escaped.as_str(), escaped.as_str())
                .with_extra("scope", "read"),
            TokenSet::new("a"),
        ];
        for tokens in cases {
            let out = encode(&tokens, at(u64::MAX / 2_000));
            assert_eq!(out.capacity(), encoded_capacity(&tokens));
            let back = decode(&out, at(0)).unwrap().tokens;
            assert_eq!(back.access_token().expose(), tokens.access_token().expose());
        }
    }
}
