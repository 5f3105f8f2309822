//! Deciding whether a response means "your token was rejected".
//!
//! HTTP APIs answer `401 Unauthorized` ([`Unauthorized`], the default; not
//! one whose challenge says `insufficient_scope`, which a new token would
//! not cure). gRPC
//! answers HTTP 200 with `grpc-status: 16` (UNAUTHENTICATED) in the headers of
//! a trailers-only response ([`Grpc`]). Anything else can be expressed as a
//! closure through [`classify_fn`].
//!
//! ```
//! use http::{HeaderMap, StatusCode};
//! use tower_token_refresh::classify::{classify_fn, ClassifyRejection, Grpc, Unauthorized};
//!
//! let headers = HeaderMap::new();
//! assert!(Unauthorized.is_rejection(StatusCode::UNAUTHORIZED, &headers));
//! assert!(!Unauthorized.is_rejection(StatusCode::FORBIDDEN, &headers));
//!
//! let mut grpc_headers = HeaderMap::new();
//! grpc_headers.insert("grpc-status", "16".parse().unwrap());
//! assert!(Grpc.is_rejection(StatusCode::OK, &grpc_headers));
//!
//! // An API that says 419 when a session token has expired.
//! let custom = classify_fn(|status: StatusCode, _: &HeaderMap| status.as_u16() == 419);
//! assert!(custom.is_rejection(StatusCode::from_u16(419).unwrap(), &headers));
//! ```

use std::fmt;

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

/// Decides from a response's status and headers whether the server rejected
/// the token. Only the head is inspected: the decision is made before any of
/// the body is read, so a retried request never half-consumes a response.
///
/// ```
/// use http::{HeaderMap, StatusCode};
/// use tower_token_refresh::classify::ClassifyRejection;
///
/// /// An API that answers an expired token with `419`.
/// #[derive(Clone)]
/// struct Expired419;
///
/// impl ClassifyRejection for Expired419 {
///     fn is_rejection(&self, status: StatusCode, _headers: &HeaderMap) -> bool {
///         status.as_u16() == 419
///     }
/// }
///
/// let status = StatusCode::from_u16(419).unwrap();
/// assert!(Expired419.is_rejection(status, &HeaderMap::new()));
/// ```
pub trait ClassifyRejection: Clone + Send + Sync + 'static {
    /// Whether this response is an authentication rejection.
    ///
    /// ```
    /// use http::{HeaderMap, StatusCode};
    /// use tower_token_refresh::classify::{ClassifyRejection, Unauthorized};
    ///
    /// let headers = HeaderMap::new();
    /// assert!(Unauthorized.is_rejection(StatusCode::UNAUTHORIZED, &headers));
    /// assert!(!Unauthorized.is_rejection(StatusCode::FORBIDDEN, &headers));
    /// ```
    fn is_rejection(&self, status: StatusCode, headers: &HeaderMap) -> bool;
}

/// `401 Unauthorized` is a rejection (the default), unless its Bearer
/// challenge says `error="insufficient_scope"` (RFC 6750 §3.1, which asks
/// for a `403` there, though some servers answer `401`): the token is good,
/// only not for this resource, and a refresh of the same grant brings the
/// same scope. Taken for a rejection, it marked the token rejected for
/// every request and held them all for a refresh that could not help.
///
/// ```
/// use http::{HeaderMap, HeaderValue, StatusCode};
/// use http::header::WWW_AUTHENTICATE;
/// use tower_token_refresh::classify::{ClassifyRejection, Unauthorized};
///
/// let mut headers = HeaderMap::new();
/// assert!(Unauthorized.is_rejection(StatusCode::UNAUTHORIZED, &headers));
/// let expired = r#"Bearer realm="api", error="invalid_token""#;
/// headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static(expired));
/// assert!(Unauthorized.is_rejection(StatusCode::UNAUTHORIZED, &headers));
/// let narrow = r#"Bearer realm="api", error="insufficient_scope", scope="admin""#;
/// headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static(narrow));
/// assert!(!Unauthorized.is_rejection(StatusCode::UNAUTHORIZED, &headers));
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Unauthorized;

impl ClassifyRejection for Unauthorized {
    #[inline]
    fn is_rejection(&self, status: StatusCode, headers: &HeaderMap) -> bool {
        status == StatusCode::UNAUTHORIZED && !scope_too_narrow(headers)
    }
}

/// Whether a Bearer challenge of the response's `WWW-Authenticate` says
/// the token lacks the scope the resource needs: an auth-param (RFC 7235)
/// `error="insufficient_scope"`, quoted or not, in any case. Commas inside
/// quoted strings do not split, and another scheme's params do not count
/// (found in review of the first version, which read a quoted
/// `error_description` mentioning it, and any scheme's `error`).
fn scope_too_narrow(headers: &HeaderMap) -> bool {
    let challenges = headers.get_all(http::header::WWW_AUTHENTICATE);
    for value in challenges.iter().filter_map(|value| value.to_str().ok()) {
        let mut scheme = "";
        for item in split_outside_quotes(value).map(str::trim) {
            let param = match param_of(item) {
                Some(param) => param,
                // Not a param: a challenge starts, its scheme first.
                None => {
                    let (first, rest) = item.split_once([' ', '\t']).unwrap_or((item, ""));
                    scheme = first;
                    let Some(param) = param_of(rest.trim()) else {
                        continue;
                    };
                    param
                }
            };
            let (name, value) = param;
            if scheme.eq_ignore_ascii_case("bearer")
                && name.eq_ignore_ascii_case("error")
                && value.eq_ignore_ascii_case("insufficient_scope")
            {
                return true;
            }
        }
    }
    false
}

/// `text` split at the commas outside quoted strings (in which `\\`
/// escapes the next character).
fn split_outside_quotes(text: &str) -> impl Iterator<Item = &str> {
    let (mut quoted, mut escaped) = (false, false);
    let mut commas = text.char_indices().filter_map(move |(at, c)| {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => return Some(at),
            _ => {}
        }
        None
    });
    let mut start = Some(0);
    std::iter::from_fn(move || {
        let from = start?;
        let end = commas.next();
        start = end.map(|at| at + 1);
        Some(&text[from..end.unwrap_or(text.len())])
    })
}

/// `name=value` (spaces around `=` allowed, the value unquoted), if `item`
/// is one: its name a single token.
fn param_of(item: &str) -> Option<(&str, &str)> {
    let (name, value) = item.split_once('=')?;
    let name = name.trim();
    let is_token = !name.is_empty() && !name.contains([' ', '\t', '"']);
    is_token.then(|| (name, value.trim().trim_matches('"')))
}

/// gRPC: `grpc-status: 16` (UNAUTHENTICATED) in the response headers (a
/// trailers-only response, which is how servers reject a call before
/// sending any message), or, without a `grpc-status` there, a `401` (as
/// [`Unauthorized`] reads it: a proxy in front of the server).
///
/// A `grpc-status` in the headers decides whatever the HTTP status, as
/// tonic's client reads it: that header, not the HTTP status, is the
/// call's status. A proxy may answer a trailers-only rejection with a 5xx;
/// and a `401` whose `grpc-status` says something else (`7`,
/// PERMISSION_DENIED, or `0`, OK) is not retried: tonic reports that
/// status, and a call it counts as done must not be sent twice.
///
/// A status that arrives in the trailers, after the response headers, is
/// not retried: only the head decides. A call whose stream already
/// delivered messages has produced output and must not be replayed; one
/// that sent headers and then failed with no message at all (as a tonic
/// server-streaming handler whose first item is an error does) is not
/// retried either, and the caller gets its status. Through
/// [`tonic::with_token_refresh`] (or `IntoTonicBody::reporting_to`) such an
/// UNAUTHENTICATED still counts: the token, if still the current one, is
/// marked rejected and refreshed (as a rejected call's would be), so that
/// the next call does not go out with it.
///
/// ```
/// use http::{HeaderMap, HeaderValue, StatusCode};
/// use tower_token_refresh::classify::{ClassifyRejection, Grpc};
///
/// let mut trailers_only = HeaderMap::new();
/// trailers_only.insert("grpc-status", HeaderValue::from_static("16"));
/// assert!(Grpc.is_rejection(StatusCode::OK, &trailers_only));
///
/// trailers_only.insert("grpc-status", HeaderValue::from_static("7")); // PERMISSION_DENIED
/// assert!(!Grpc.is_rejection(StatusCode::OK, &trailers_only));
/// assert!(!Grpc.is_rejection(StatusCode::UNAUTHORIZED, &trailers_only));
///
/// // A proxy's 401, with no gRPC status of its own.
/// assert!(Grpc.is_rejection(StatusCode::UNAUTHORIZED, &HeaderMap::new()));
/// ```
///
#[cfg_attr(
    feature = "tonic",
    doc = "[`tonic::with_token_refresh`]: crate::tonic::with_token_refresh"
)]
#[cfg_attr(
    not(feature = "tonic"),
    doc = "[`tonic::with_token_refresh`]: https://docs.rs/tower-token-refresh/latest/tower_token_refresh/tonic/fn.with_token_refresh.html"
)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Grpc;

impl ClassifyRejection for Grpc {
    #[inline]
    fn is_rejection(&self, status: StatusCode, headers: &HeaderMap) -> bool {
        // Found in review: a `401` counted whatever `grpc-status` said, so
        // a call tonic reports as PERMISSION_DENIED (or even OK) was
        // refreshed for and sent again.
        match headers.get(&GRPC_STATUS) {
            Some(code) => is_unauthenticated(code),
            None => Unauthorized.is_rejection(status, headers),
        }
    }
}

/// The `grpc-status` header's name, made once: a name given as a string
/// is parsed again at each lookup. With `grpc-timeout`'s, those parses
/// cost each gRPC call through the layer about 340 instructions
/// (callgrind, `benches/grpc_throughput.rs`).
static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// A `grpc-status` value that is UNAUTHENTICATED (`16`), spelled as tonic
/// reads it: no spaces, no leading zeros.
#[inline]
fn is_unauthenticated(code: &HeaderValue) -> bool {
    code.as_bytes() == b"16"
}

/// `grpc-status: 16` (UNAUTHENTICATED) in `headers`, a response's or its
/// trailers.
#[cfg(feature = "tonic")]
#[inline]
pub(crate) fn grpc_unauthenticated(headers: &HeaderMap) -> bool {
    headers.get(&GRPC_STATUS).is_some_and(is_unauthenticated)
}

/// A classifier made from a closure; see [`classify_fn`].
///
/// ```
/// use std::convert::Infallible;
/// use bytes::Bytes;
/// use http::{HeaderMap, Request, Response, StatusCode};
/// use http_body_util::{Empty, Full};
/// use tower::{Layer, ServiceExt};
/// use tower_token_refresh::classify::{classify_fn, ClassifyFn};
/// use tower_token_refresh::{refresh_fn, RefreshError, ReplayBody, TokenRefreshLayer, TokenSet};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// // An API that answers a stale token with 403.
/// let api = tower::service_fn(|req: Request<ReplayBody<Full<Bytes>>>| async move {
///     let fresh = req.headers()["authorization"] == "Bearer new";
///     let status = if fresh { StatusCode::OK } else { StatusCode::FORBIDDEN };
///     Ok::<_, Infallible>(Response::builder().status(status).body(Empty::<Bytes>::new()).unwrap())
/// });
/// let source = refresh_fn(|_| async { Ok::<_, RefreshError>(TokenSet::new("new")) });
/// let layer: TokenRefreshLayer<ClassifyFn<_>> = TokenRefreshLayer::builder(source)
///     .initial_tokens(TokenSet::new("old"))
///     .classifier(classify_fn(|status: StatusCode, _: &HeaderMap| status == StatusCode::FORBIDDEN))
///     .build();
/// let handle = layer.handle();
/// let response = layer.layer(api).oneshot(Request::new(Full::new(Bytes::new()))).await.unwrap();
/// assert_eq!(response.status(), StatusCode::OK);
/// assert_eq!(handle.stats().retries, 1);
/// # }
/// ```
#[derive(Clone, Copy)]
pub struct ClassifyFn<F> {
    f: F,
}

/// Makes a classifier from `Fn(StatusCode, &HeaderMap) -> bool`.
///
/// ```
/// use http::{HeaderMap, StatusCode};
/// use tower_token_refresh::classify::{classify_fn, ClassifyRejection};
/// let c = classify_fn(|s: StatusCode, _: &HeaderMap| s == StatusCode::FORBIDDEN);
/// assert!(c.is_rejection(StatusCode::FORBIDDEN, &HeaderMap::new()));
/// ```
pub fn classify_fn<F>(f: F) -> ClassifyFn<F>
where
    F: Fn(StatusCode, &HeaderMap) -> bool + Clone + Send + Sync + 'static,
{
    ClassifyFn { f }
}

impl<F> ClassifyRejection for ClassifyFn<F>
where
    F: Fn(StatusCode, &HeaderMap) -> bool + Clone + Send + Sync + 'static,
{
    fn is_rejection(&self, status: StatusCode, headers: &HeaderMap) -> bool {
        (self.f)(status, headers)
    }
}

impl<F> fmt::Debug for ClassifyFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClassifyFn").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_only_rejects_unauthenticated() {
        let mut headers = HeaderMap::new();
        for (code, rejected) in [("0", false), ("7", false), ("16", true), ("160", false)] {
            headers.insert("grpc-status", code.parse().unwrap());
            assert_eq!(
                Grpc.is_rejection(StatusCode::OK, &headers),
                rejected,
                "{code}"
            );
        }
        assert!(Grpc.is_rejection(StatusCode::UNAUTHORIZED, &HeaderMap::new()));
        assert!(!Unauthorized.is_rejection(StatusCode::OK, &headers));
        // The header is the call's status, whatever the HTTP status.
        headers.insert("grpc-status", "16".parse().unwrap());
        assert!(Grpc.is_rejection(StatusCode::SERVICE_UNAVAILABLE, &headers));
        // A 401 carrying another gRPC status is that status.
        for code in ["0", "7", "14"] {
            headers.insert("grpc-status", code.parse().unwrap());
            assert!(
                !Grpc.is_rejection(StatusCode::UNAUTHORIZED, &headers),
                "{code}"
            );
        }
    }

    #[test]
    fn a_challenge_for_a_wider_scope_is_no_rejection_however_it_is_spelled() {
        let rejected = |challenges: &[&str]| {
            let mut headers = HeaderMap::new();
            for challenge in challenges {
                headers.append(http::header::WWW_AUTHENTICATE, challenge.parse().unwrap());
            }
            let unauthorized = Unauthorized.is_rejection(StatusCode::UNAUTHORIZED, &headers);
            assert_eq!(
                Grpc.is_rejection(StatusCode::UNAUTHORIZED, &headers),
                unauthorized
            );
            unauthorized
        };
        for narrow in [
            r#"Bearer error="insufficient_scope""#,
            r#"bearer realm="api", ERROR = "Insufficient_Scope", scope="admin""#,
            "Bearer error=insufficient_scope",
        ] {
            assert!(!rejected(&[narrow]), "{narrow}");
        }
        assert!(!rejected(&[
            "Basic realm=x",
            r#"Bearer error="insufficient_scope""#
        ]));
        let two = r#"Basic realm="a, b", Bearer realm="api", error="insufficient_scope""#;
        assert!(!rejected(&[two]));
        for expired in [
            r#"Bearer error="invalid_token", error_description="expired""#,
            r#"Bearer error_description="not insufficient_scope_at_all""#,
            r#"Bearer error_description="error=insufficient_scope, said twice""#,
            r#"Bearer error="invalid_token", error_description="Denied, see error=insufficient_scope""#,
            r#"Bearer error_description="a \" , error=insufficient_scope""#,
            r#"DPoP error="insufficient_scope""#,
            "Basic realm=x, error=insufficient_scope",
            "Basic realm=x",
        ] {
            assert!(rejected(&[expired]), "{expired}");
        }
        assert!(rejected(&[]));
    }
}
