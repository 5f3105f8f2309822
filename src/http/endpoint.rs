//! What of a refresh endpoint's URI may be a credential: left out of
//! `Debug`, and redacted wherever the server or the client quotes it.
//!
//! Some APIs take a key in the URI rather than in a header: in the
//! userinfo (`https://key@host`), in the query (`?api_key=…`, or a bare
//! `?KEY`) or in the path (`/v1/key/Zk9aQ2xN…/refresh`). Nothing in a URI
//! says which part is a key, so a part is taken for one by its looks: a
//! query value of 8 characters or more, or of 4 or more under a name that
//! says it is one (`client_secret=s3cr3t`, `sig=…`), and a path segment
//! of 8 or more that is not a name (letters, `-`, `_` and `.` only:
//! `refresh-token`, `refreshToken`). A key of letters alone in the path is
//! taken for a name.

use std::borrow::Cow;
use std::fmt;

use http::Uri;

use crate::token::REDACTED;

/// A value shorter than this is no key (`v=2`, `oauth2`), and redacted it
/// would blot out every `2` in the server's words.
const KEY_LENGTH: usize = 8;

/// A value under a name that says it is a credential is one from this
/// length on. Found in review: `?client_secret=s3cr3t`, too short for a
/// key by its looks, was quoted whole wherever the server or the client
/// named the URL.
const NAMED_KEY_LENGTH: usize = 4;

/// Parts of query names that say their value is a credential.
const CREDENTIAL_NAMES: [&str; 8] = [
    "secret", "key", "token", "pass", "pwd", "sig", "auth", "code",
];

/// Whether the query name `name` says its value is a credential.
fn names_a_credential(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    CREDENTIAL_NAMES.iter().any(|part| name.contains(part))
}

/// Whether the path segment `segment` may be a key: long enough, and not
/// a name (letters, `-`, `_`, `.`). Digits and percent-escapes mark a key,
/// a GUID or an id: harmless to hide. Found in review: capitals alone
/// hid names (`refreshToken`), and redacted them from the server's words.
fn segment_may_be_key(segment: &str) -> bool {
    segment.len() >= KEY_LENGTH
        && !segment
            .bytes()
            .all(|b| b.is_ascii_alphabetic() || matches!(b, b'-' | b'_' | b'.'))
}

/// The parts of `uri` that may be credentials, as they appear in it and
/// percent-decoded: the userinfo whole, its password, and its user name
/// if that is long enough to be a key; path segments that may be keys;
/// query values (or bare query entries) of [`KEY_LENGTH`] or more, or of
/// [`NAMED_KEY_LENGTH`] or more under a credential's name.
pub(super) fn secrets(uri: &Uri) -> Vec<Cow<'_, str>> {
    let mut found: Vec<Cow<'_, str>> = Vec::new();
    // `raw` as it appears, and decoded if that differs and is at least
    // `least` long: decoded, a key may be short (`%2F%2F%2F` is `///`, and
    // redacted it would blot out every `///` in the server's words).
    let mut push = |raw, decoded: String, least: usize| {
        if decoded != raw && decoded.len() >= least {
            found.push(Cow::Owned(decoded));
        }
        found.push(Cow::Borrowed(raw));
    };
    if let Some((userinfo, _)) = uri.authority().and_then(|a| a.as_str().rsplit_once('@')) {
        push(userinfo, percent_decoded(userinfo), 0);
        // A client may print either alone (`username: "…"`). A short user
        // name is a name; a key sent as the user is the userinfo whole.
        if let Some((user, password)) = userinfo.split_once(':') {
            push(password, percent_decoded(password), 0);
            if user.len() >= KEY_LENGTH {
                push(user, percent_decoded(user), 0);
            }
        }
    }
    for segment in uri.path().split('/').filter(|s| segment_may_be_key(s)) {
        push(segment, percent_decoded(segment), KEY_LENGTH);
    }
    // A bare entry (`?KEY`) is its own value.
    for entry in uri.query().unwrap_or_default().split('&') {
        let (least, value) = match entry.split_once('=') {
            Some((name, value)) if names_a_credential(name) => (NAMED_KEY_LENGTH, value),
            Some((_, value)) => (KEY_LENGTH, value),
            None => (KEY_LENGTH, entry),
        };
        if value.len() >= least {
            // In a query (only), `+` is a space.
            push(value, percent_decoded(&value.replace('+', " ")), least);
        }
    }
    found
}

/// `raw` with its percent-escapes decoded (nothing else: found in review,
/// decoding it as a form cut it at `&` and took `+` for a space, both
/// literal in userinfo and paths).
pub(super) fn percent_decoded(raw: &str) -> String {
    percent_encoding::percent_decode_str(raw)
        .decode_utf8_lossy()
        .into_owned()
}

/// An endpoint as `Debug` shows it: scheme, host, port and path, with path
/// segments that may be keys hidden. Userinfo and the query are left out:
/// either may carry a credential, as may an endpoint that did not parse.
pub(super) struct ForDebug<'a>(pub(super) &'a Result<Uri, String>);

impl fmt::Debug for ForDebug<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Ok(uri) = self.0 else {
            return f.write_str("<invalid>");
        };
        let scheme = uri.scheme_str().unwrap_or_default();
        let host = uri.host().unwrap_or_default();
        let port = uri.port().map(|p| format!(":{p}")).unwrap_or_default();
        write!(f, "\"{scheme}://{host}{port}")?;
        for (i, segment) in uri.path().split('/').enumerate() {
            if i > 0 {
                f.write_str("/")?;
            }
            let shown = if segment_may_be_key(segment) {
                REDACTED
            } else {
                segment
            };
            f.write_str(shown)?;
        }
        f.write_str("\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(uri: &str) -> Vec<String> {
        let uri: Uri = uri.parse().unwrap();
        let mut found: Vec<String> = secrets(&uri).into_iter().map(Cow::into_owned).collect();
        found.sort();
        found
    }

    #[test]
    fn names_in_a_path_are_no_keys_and_ids_and_keys_are() {
        for name in [
            "refresh-token",
            "token_refresh",
            "refreshToken",
            "RefreshToken",
            "authorize",
            "oauth2",
            "v2.0",
            "token",
        ] {
            assert!(!segment_may_be_key(name), "{name}");
        }
        for key in [
            "Zk9aQ2xN",
            "8d3c4f1e-0b6a-4c1e-9f00-5a1b2c3d4e5f",
            "key%2Fvalue",
        ] {
            assert!(segment_may_be_key(key), "{key}");
        }
    }

    #[test]
    fn every_part_that_may_be_a_credential_is_found_raw_and_decoded() {
        assert_eq!(
            found("https://user-name:pass%2Fword@h/v1/key/Zk9aQ2xN/refresh?v=2&api_key=abcdefgh&BAREKEY99"),
            [
                "BAREKEY99",
                "Zk9aQ2xN",
                "abcdefgh",
                "pass%2Fword",
                "pass/word",
                "user-name",
                "user-name:pass%2Fword",
                "user-name:pass/word",
            ]
        );
        assert!(found("https://idp.example.com/oauth2/v2.0/token?v=2").is_empty());
        // `&` and `+` are themselves in userinfo and paths, not cut or spaces.
        assert_eq!(
            found("https://u:p%26ss+word@h/"),
            ["p%26ss+word", "p&ss+word", "u:p%26ss+word", "u:p&ss+word"]
        );
        // Decoded, too short to be a key.
        assert_eq!(found("https://h/t?x=%2F%2F%2F%2F"), ["%2F%2F%2F%2F"]);
        // Under a name that says it is a credential, shorter values are
        // keys too; not a value that short under any name.
        assert_eq!(
            found("https://h/t?client_secret=s3cr3t&Sig=p%40ss&v=2&api_key=abc"),
            ["p%40ss", "p@ss", "s3cr3t"]
        );
    }

    #[test]
    fn debug_hides_path_segments_that_may_be_keys() {
        let uri = Ok("https://u:p@h:8443/v1/key/Zk9aQ2xN/refresh?k=v"
            .parse()
            .unwrap());
        assert_eq!(
            format!("{:?}", ForDebug(&uri)),
            "\"https://h:8443/v1/key/[redacted]/refresh\""
        );
        let uri = Ok("https://h/oauth2/v2.0/token".parse().unwrap());
        assert_eq!(
            format!("{:?}", ForDebug(&uri)),
            "\"https://h/oauth2/v2.0/token\""
        );
    }
}
