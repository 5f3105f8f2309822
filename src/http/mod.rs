//! Refreshing over HTTP: [`HttpRefresher`] and its presets for the refresh
//! APIs users meet.
//!
//! | preset | request | answer |
//! |---|---|---|
//! | [`oauth2`](HttpRefresher::oauth2) | RFC 6749 §6 form `grant_type=refresh_token`, client auth Basic, in the body, or public | `{access_token, token_type, expires_in, refresh_token?, scope?}` |
//! | [`client_credentials`](HttpRefresher::client_credentials) | RFC 6749 §4.4 form `grant_type=client_credentials` (a login source) | as `oauth2` |
//! | [`dynamosql`](HttpRefresher::dynamosql) | JSON `{"refreshToken"}` | `{success, data: {accessToken, expiresIn, tokenType}}` |
//! | [`cognito`](HttpRefresher::cognito) | JSON `{"refreshToken"}` | `{accessToken, refreshToken, expiresIn, requiresPasswordChange}` |
//! | [`ocient`](HttpRefresher::ocient) | `Authorization: Bearer <current access token>`, JSON `{"database"?}` | `{access_token, username, database, expires_in, status}` |
//! | [`custom`](HttpRefresher::custom) | method, body format, credential placement and fields of your choice | JSON pointers of your choice |
//!
//! Every preset follows the same rules. The refresh call goes straight to
//! the client you pass in, never through the token layer, and follows no
//! redirect (a `3xx` is a transient failure), unless that client follows
//! redirects itself: pass one that does not. A refresh URL must be `https`, unless its host is
//! loopback or [`allow_insecure_http`](HttpRefresher::allow_insecure_http)
//! says otherwise. Answers are read up to a cap (64 KiB by default); unknown
//! fields are ignored; `expires_in` may be a number or a numeric string, and
//! without it a JWT access token's `exp` is used (unverified: it only tells
//! when to refresh), counted from the answer's `Date`, so that a client
//! clock off from the issuer's does not move it (without a `Date`, from the
//! client's clock), and capped at `exp - iat` either way, which bounds a
//! lifetime only from above; a `token_type` other than Bearer
//! is refused as terminal (asking again would spend a refresh token for the
//! same answer); a response without a new refresh token keeps the old one.
//! Failures are classified by status: every 4xx other than 408, 421, 425
//! and 429 is terminal (`400 invalid_grant`, 401 and 403 among them: a
//! configured [login source](crate::Builder::login) then runs once,
//! otherwise new tokens must be set); 429 is rate limited, waiting out its `Retry-After`
//! or, without one, what the endpoint's documented limit implies, and so
//! is a 503 with `Retry-After`; 3xx (never followed), 408, 421, 425, other
//! 5xx, transport errors and undecodable answers are transient. Each
//! failure carries the server's own message, code and request id. A
//! secret the request carried that the server (or the client's own error)
//! echoes back is quoted as `[redacted]`: the tokens in use, the secret
//! body fields, the client secret and its Basic credentials, the endpoint
//! URI's userinfo, query values of 8 characters or more (4 or more under a
//! name that says it is a credential, `client_secret`) and path segments
//! of 8 or more with anything but letters, `-`, `_` and `.` in them (a
//! digit, an escape: a key in the path, not a name such as
//! `refreshToken`); each as sent, percent-encoded throughout or
//! JSON-escaped. A text that quotes one once percent-decoded (some
//! characters escaped, others not) is withheld whole. An echo in another
//! encoding still (base64, `\u` escapes), or cut short by the server, is
//! not recognised.
//!
//! The client can be the very one the layer wraps: a
//! `hyper_util` client for `ReplayBody<B>` bodies works, because
//! [`ReplayBody`](crate::ReplayBody) can be made from bytes.
//!
//! ```
//! use std::convert::Infallible;
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::{Empty, Full};
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_token_refresh::http::HttpRefresher;
//! use tower_token_refresh::{BoxError, ReplayBody, TokenRefreshLayer, TokenSet};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! // Stand-ins for the identity provider and the API; HTTP clients in real use.
//! let idp = tower::service_fn(|_: Request<Full<Bytes>>| async {
//!     let answer = r#"{"access_token":"a2","token_type":"Bearer","expires_in":3600}"#;
//!     Ok::<_, BoxError>(Response::new(Full::<Bytes>::from(answer)))
//! });
//! let api = tower::service_fn(|request: Request<ReplayBody<Empty<Bytes>>>| async move {
//!     let current = request.headers()["authorization"] == "Bearer a2";
//!     let status = if current { StatusCode::OK } else { StatusCode::UNAUTHORIZED };
//!     Ok::<_, Infallible>(Response::builder().status(status).body(Empty::<Bytes>::new()).unwrap())
//! });
//!
//! let refresher = HttpRefresher::oauth2("https://idp.example.com/token", idp).client_id("app");
//! let layer = TokenRefreshLayer::builder(refresher)
//!     .initial_tokens(TokenSet::new("a1").with_refresh_token("r1"))
//!     .build();
//! let handle = layer.handle();
//! let client = ServiceBuilder::new().layer(layer).service(api);
//!
//! // Sent with a1, rejected, refreshed through the preset, retried with a2.
//! let response = client.oneshot(Request::new(Empty::<Bytes>::new())).await.unwrap();
//! assert_eq!(response.status(), StatusCode::OK);
//! assert_eq!(handle.stats().refreshes, 1);
//! assert_eq!(handle.tokens().unwrap().refresh_token().unwrap().expose(), "r1"); // kept
//! # }
//! ```

mod call_budget;
mod credential;
mod decode;
mod dialect;
mod endpoint;
mod failure;
mod jwt;
mod options;
mod request;

// Not public API (no semver promise): entry points for the fuzz targets in
// `fuzz/`, which cannot reach crate-private items otherwise.
#[doc(hidden)]
#[path = "fuzz.rs"]
pub mod __fuzz;

use std::fmt;
use std::future::{poll_fn, Future};
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::uri::Scheme;
use http::{Request, Response, Uri};
use http_body::Body;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use tokio::time::Instant;
use tower_service::Service;

pub use credential::{ClientAuthMethod, Credential};

use crate::{BoxError, Refresh, RefreshContext, RefreshError, RefreshWindow, TokenSet};
use call_budget::CallLog;
use dialect::{pointer, Client, Dialect, FieldValue};
use failure::{Said, SentSecrets};

/// How much of a refresh answer is read before it counts as hostile.
///
/// ```
/// use bytes::Bytes;
/// use http::{Request, Response};
/// use http_body_util::Full;
/// use tower_token_refresh::http::{HttpRefresher, DEFAULT_BODY_LIMIT};
/// use tower_token_refresh::{BoxError, TokenRefreshLayer, TokenSet};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// // An answer one byte past the limit is not read to its end.
/// let idp = tower::service_fn(|_: Request<Full<Bytes>>| async {
///     let flood = Bytes::from(vec![b' '; DEFAULT_BODY_LIMIT + 1]);
///     Ok::<_, BoxError>(Response::new(Full::new(flood)))
/// });
/// let refresher = HttpRefresher::oauth2("https://idp.example.com/token", idp);
/// let handle = TokenRefreshLayer::builder(refresher)
///     .initial_tokens(TokenSet::new("a").with_refresh_token("r"))
///     .build()
///     .handle();
/// let error = handle.force_refresh().await.unwrap_err();
/// let refused = error.refresh_error().unwrap();
/// assert!(refused.is_transient(), "{error}");
/// assert!(refused.message().contains("larger than 65536 bytes"), "{error}");
/// # }
/// ```
pub const DEFAULT_BODY_LIMIT: usize = 64 * 1024;

/// A [`Refresh`] source that calls a refresh endpoint through an HTTP
/// client service `C` (a `hyper_util` client, or any tower service taking
/// `Request<B>` that is `Clone + Send + Sync`, as a source shared by every
/// request must be: a type-erased client is a
/// `tower::util::BoxCloneSyncService`, not a `BoxCloneService`, which is
/// not `Sync`).
///
/// Make one with a preset ([`oauth2`](Self::oauth2),
/// [`dynamosql`](Self::dynamosql), [`cognito`](Self::cognito),
/// [`ocient`](Self::ocient), [`client_credentials`](Self::client_credentials))
/// or describe another API with [`custom`](Self::custom); every builder
/// method works on every preset.
///
/// Each preset's documentation has a runnable example against a stand-in
/// server; the `dialects` integration tests (`tests/dialects/main.rs` and
/// its modules) run `oauth2`, `client_credentials`, `dynamosql`, `cognito`
/// and `ocient` against real loopback servers through a `hyper_util`
/// client (`custom` is what those presets are made of).
///
/// ```
/// use bytes::Bytes;
/// use http::{Request, Response};
/// use http_body_util::Full;
/// use tower_token_refresh::http::HttpRefresher;
/// use tower_token_refresh::{BoxError, TokenRefreshLayer, TokenSet};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// // A stand-in for the identity provider; a hyper-util client in real use.
/// let idp = tower::service_fn(|request: Request<Full<Bytes>>| async move {
///     assert_eq!(request.uri(), "https://idp.example.com/token");
///     let answer = r#"{"access_token":"a2","token_type":"Bearer","expires_in":600}"#;
///     Ok::<_, BoxError>(Response::new(Full::<Bytes>::from(answer)))
/// });
/// let refresher = HttpRefresher::oauth2("https://idp.example.com/token", idp).client_id("app");
/// let layer = TokenRefreshLayer::builder(refresher)
///     .initial_tokens(TokenSet::new("a1").with_refresh_token("r1"))
///     .build();
/// layer.handle().force_refresh().await.unwrap();
/// assert_eq!(layer.handle().tokens().unwrap().access_token().expose(), "a2");
/// # }
/// ```
///
/// # Clone
///
/// Cloning clones the client and shares the settings.
pub struct HttpRefresher<C, B = Full<Bytes>> {
    client: C,
    settings: Arc<Settings>,
    _body: PhantomData<fn() -> B>,
}

#[derive(Clone)]
struct Settings {
    /// The parse error is kept and reported by each refresh (terminal), so
    /// that constructors stay infallible as in the rest of the builder API.
    endpoint: Result<Uri, String>,
    dialect: Dialect,
    allow_insecure: bool,
    body_limit: usize,
    /// The calls made, for the dialect's rate limit: shared by clones, which
    /// call the same endpoint, until one is given another limit.
    calls: Arc<CallLog>,
}

impl<C, B> HttpRefresher<C, B>
where
    C: Service<Request<B>>,
{
    fn with_dialect<U>(url: U, client: C, dialect: Dialect) -> Self
    where
        U: TryInto<Uri>,
        U::Error: fmt::Display,
    {
        Self {
            client,
            settings: Arc::new(Settings {
                endpoint: url.try_into().map_err(|e| e.to_string()),
                calls: Arc::default(),
                dialect,
                allow_insecure: false,
                body_limit: DEFAULT_BODY_LIMIT,
            }),
            _body: PhantomData,
        }
    }

    /// RFC 6749 §6: `POST` form `grant_type=refresh_token&refresh_token=…`
    /// (plus `scope` if set), the client authenticated with
    /// `client_secret_basic` by default (see [`client_id`](Self::client_id)).
    /// A rotated refresh token in the answer replaces the old one; an answer
    /// without one keeps it.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http::{Request, Response};
    /// use http_body_util::{BodyExt, Full};
    /// use tower_token_refresh::http::HttpRefresher;
    /// use tower_token_refresh::{BoxError, TokenRefreshLayer, TokenSet};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let idp = tower::service_fn(|request: Request<Full<Bytes>>| async move {
    ///     // "my app" / "s3cret", each form-encoded, then base64 (RFC 6749 §2.3.1).
    ///     assert_eq!(request.headers()["authorization"], "Basic bXkrYXBwOnMzY3JldA==");
    ///     let sent = request.into_body().collect().await?.to_bytes();
    ///     assert_eq!(sent, "grant_type=refresh_token&refresh_token=r1&scope=read");
    ///     let answer = r#"{"access_token":"a2","token_type":"Bearer","expires_in":3600,"refresh_token":"r2","scope":"read"}"#;
    ///     Ok::<_, BoxError>(Response::new(Full::<Bytes>::from(answer)))
    /// });
    ///
    /// let refresher = HttpRefresher::oauth2("https://idp.example.com/oauth/token", idp)
    ///     .client_id("my app")
    ///     .client_secret("s3cret")
    ///     .scope("read");
    /// let layer = TokenRefreshLayer::builder(refresher)
    ///     .initial_tokens(TokenSet::new("a1").with_refresh_token("r1"))
    ///     .build();
    /// let handle = layer.handle();
    /// handle.force_refresh().await.unwrap();
    /// let tokens = handle.tokens().unwrap();
    /// assert_eq!(tokens.refresh_token().unwrap().expose(), "r2"); // rotated
    /// assert_eq!(tokens.extra("scope"), Some("read"));
    /// # }
    /// ```
    pub fn oauth2<U>(url: U, client: C) -> Self
    where
        U: TryInto<Uri>,
        U::Error: fmt::Display,
    {
        Self::with_dialect(url, client, Dialect::oauth2())
    }

    /// RFC 6749 §4.4: `POST` form `grant_type=client_credentials`, the client
    /// authenticated by its id and secret alone. It needs no tokens, so it
    /// serves as a [login source](crate::Builder::login) beside a refresher
    /// that uses refresh tokens: for the first token, and when a refresh
    /// token is rejected (or, as the grant usually issues none, missing),
    /// each login counted in [`Stats::logins`](crate::Stats::logins). It
    /// can also be the refresh source itself: each refresh is then a new
    /// grant, and no login is counted.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http::{Request, Response};
    /// use http_body_util::{BodyExt, Full};
    /// use tower_token_refresh::http::{ClientAuthMethod, HttpRefresher};
    /// use tower_token_refresh::{BoxError, TokenRefreshLayer};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let idp = tower::service_fn(|request: Request<Full<Bytes>>| async move {
    ///     let sent = request.into_body().collect().await?.to_bytes();
    ///     assert_eq!(sent, "grant_type=client_credentials&client_id=svc&client_secret=s3cret");
    ///     let answer = r#"{"access_token":"a1","token_type":"Bearer","expires_in":3600}"#;
    ///     Ok::<_, BoxError>(Response::new(Full::<Bytes>::from(answer)))
    /// });
    ///
    /// let url = "https://idp.example.com/oauth/token";
    /// let login = HttpRefresher::client_credentials(url, idp)
    ///     .client_id("svc")
    ///     .client_secret("s3cret")
    ///     .client_auth(ClientAuthMethod::Post);
    /// // Refreshes use a refresh token; with no tokens yet, the layer logs in.
    /// let refresher = HttpRefresher::oauth2(url, idp).client_id("svc").client_secret("s3cret");
    /// let layer = TokenRefreshLayer::builder(refresher).login(login).build();
    /// let handle = layer.handle();
    /// handle.force_refresh().await.unwrap();
    /// assert_eq!(handle.tokens().unwrap().access_token().expose(), "a1");
    /// assert_eq!(handle.stats().logins, 1);
    /// # }
    /// ```
    pub fn client_credentials<U>(url: U, client: C) -> Self
    where
        U: TryInto<Uri>,
        U::Error: fmt::Display,
    {
        Self::with_dialect(url, client, Dialect::client_credentials())
    }

    /// The DynamoSQL API: `POST /v1/auth/refresh` with JSON
    /// `{"refreshToken"}`, answered with `{success, data: {accessToken,
    /// expiresIn, tokenType}}`. No new refresh token is issued, so the old
    /// one is kept. Errors `{success: false, error: {message, code,
    /// requestId}}` are quoted in the [`RefreshError`].
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http::{Request, Response};
    /// use http_body_util::{BodyExt, Full};
    /// use tower_token_refresh::http::HttpRefresher;
    /// use tower_token_refresh::{BoxError, TokenRefreshLayer, TokenSet};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let idp = tower::service_fn(|request: Request<Full<Bytes>>| async move {
    ///     assert_eq!(request.uri().path(), "/v1/auth/refresh");
    ///     let sent = request.into_body().collect().await?.to_bytes();
    ///     assert_eq!(sent, r#"{"refreshToken":"r1"}"#);
    ///     let answer = r#"{"success":true,"data":{"accessToken":"a2","expiresIn":3600,"tokenType":"Bearer"}}"#;
    ///     Ok::<_, BoxError>(Response::new(Full::<Bytes>::from(answer)))
    /// });
    ///
    /// let refresher = HttpRefresher::dynamosql("https://api.dynamosql.com/v1/auth/refresh", idp);
    /// let layer = TokenRefreshLayer::builder(refresher)
    ///     .initial_tokens(TokenSet::new("a1").with_refresh_token("r1"))
    ///     .build();
    /// let handle = layer.handle();
    /// handle.force_refresh().await.unwrap();
    /// let tokens = handle.tokens().unwrap();
    /// assert_eq!(tokens.access_token().expose(), "a2");
    /// assert_eq!(tokens.refresh_token().unwrap().expose(), "r1"); // kept
    /// # }
    /// ```
    pub fn dynamosql<U>(url: U, client: C) -> Self
    where
        U: TryInto<Uri>,
        U::Error: fmt::Display,
    {
        Self::with_dialect(url, client, Dialect::dynamosql())
    }

    /// The Cognito-backed API: `POST /api/auth/refresh-token` with JSON
    /// `{"refreshToken"}`, answered with `{accessToken, refreshToken,
    /// expiresIn, requiresPasswordChange}`; errors `{statusCode, message,
    /// error}`. The endpoint allows 5 refreshes a minute per client IP: the
    /// layer's single flight keeps it to one per expiry, a sixth call in a
    /// minute is not sent (see [`rate_limit`](Self::rate_limit)), and after
    /// a `429` (calls from elsewhere behind the same IP), which names no
    /// wait, the next call waits at least a minute, the seed's window (see
    /// [`rate_limit_wait`](Self::rate_limit_wait)). Either way the current
    /// token stays in use while valid. `requiresPasswordChange` is kept as
    /// an [extra](TokenSet::extra).
    ///
    /// The server counts every call from the client's IP address, but a
    /// refresher counts only its own calls and its clones': each one built
    /// with this constructor keeps a count of its own. Several layers
    /// refreshing against one such endpoint should use clones of one
    /// refresher, so that they share one count; where they cannot
    /// (several processes behind one address), give each a smaller
    /// [`rate_limit`](Self::rate_limit), so that together they stay within
    /// 5 a minute.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http::{Request, Response};
    /// use http_body_util::{BodyExt, Full};
    /// use tower_token_refresh::http::HttpRefresher;
    /// use tower_token_refresh::{BoxError, TokenRefreshLayer, TokenSet};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// // Stands in for a hyper-util client: an identity server answering as
    /// // the Cognito-backed API documents.
    /// let idp = tower::service_fn(|request: Request<Full<Bytes>>| async move {
    ///     assert_eq!(request.uri().path(), "/api/auth/refresh-token");
    ///     let sent = request.into_body().collect().await?.to_bytes();
    ///     assert_eq!(sent, r#"{"refreshToken":"r1"}"#);
    ///     let answer = r#"{"accessToken":"a2","refreshToken":"r1","expiresIn":3600,"requiresPasswordChange":false}"#;
    ///     Ok::<_, BoxError>(Response::new(Full::<Bytes>::from(answer)))
    /// });
    ///
    /// let refresher = HttpRefresher::cognito("https://api.example.com/api/auth/refresh-token", idp);
    /// let layer = TokenRefreshLayer::builder(refresher)
    ///     .initial_tokens(TokenSet::new("a1").with_refresh_token("r1"))
    ///     .build();
    /// let handle = layer.handle();
    /// handle.force_refresh().await.unwrap();
    /// assert_eq!(handle.tokens().unwrap().access_token().expose(), "a2");
    /// # }
    /// ```
    pub fn cognito<U>(url: U, client: C) -> Self
    where
        U: TryInto<Uri>,
        U::Error: fmt::Display,
    {
        Self::with_dialect(url, client, Dialect::cognito())
    }

    /// Ocient's token refresh: `POST /v1/token_refresh` with `Authorization:
    /// Bearer <current access token>` and JSON `{"database"}`: the one
    /// [`database`](Self::database) sets, else the session's own (the
    /// tokens' `database` extra), else none (`{}`, which the server takes
    /// as `system`). Answered with `{access_token, username, database,
    /// expires_in, status: {reason, sql_state, vendor_code}}`; `username`
    /// and `database` are kept as [extras](TokenSet::extra).
    ///
    /// The access token is its own refresh credential and cannot refresh
    /// itself once expired, so this preset turns on the layer's background
    /// refresh: the token is renewed in its advisory window even when no
    /// request is sent. That window opens at half the token's lifetime (the
    /// endpoint's documented common practice), not 5 minutes before its
    /// end: the server may stop renewing a token before it expires (its
    /// refresh lifetime), and a refresh that keeps failing near the end
    /// would lose the session. Set a [login source](crate::Builder::login)
    /// for the first token and for recovery after a long pause.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http::{Request, Response};
    /// use http_body_util::{BodyExt, Full};
    /// use tower_token_refresh::http::HttpRefresher;
    /// use tower_token_refresh::{BoxError, Refresh, TokenRefreshLayer, TokenSet};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let ocient = tower::service_fn(|request: Request<Full<Bytes>>| async move {
    ///     assert_eq!(request.headers()["authorization"], "Bearer a1");
    ///     let sent = request.into_body().collect().await?.to_bytes();
    ///     assert_eq!(sent, r#"{"database":"retail_analytics"}"#);
    ///     let answer = r#"{"access_token":"a2","username":"jdoe","database":"retail_analytics","expires_in":3600,
    ///                      "status":{"reason":"Token refreshed successfully","sql_state":"00000","vendor_code":0}}"#;
    ///     Ok::<_, BoxError>(Response::new(Full::<Bytes>::from(answer)))
    /// });
    ///
    /// let refresher = HttpRefresher::ocient("https://sql-node.example.com/v1/token_refresh", ocient)
    ///     .database("retail_analytics");
    /// assert!(refresher.needs_background_refresh());
    /// let layer = TokenRefreshLayer::builder(refresher)
    ///     .initial_tokens(TokenSet::new("a1"))
    ///     .build();
    /// let handle = layer.handle();
    /// handle.force_refresh().await.unwrap();
    /// let tokens = handle.tokens().unwrap();
    /// assert_eq!(tokens.access_token().expose(), "a2");
    /// assert_eq!(tokens.extra("username"), Some("jdoe"));
    /// # }
    /// ```
    pub fn ocient<U>(url: U, client: C) -> Self
    where
        U: TryInto<Uri>,
        U::Error: fmt::Display,
    {
        Self::with_dialect(url, client, Dialect::ocient())
    }

    /// Any other JSON refresh API. Starts as `POST` with a JSON body
    /// `{"refresh_token": …}` and an OAuth2-shaped answer
    /// (`access_token`, `expires_in`, `refresh_token`, `token_type`); change
    /// what differs with [`method`](Self::method),
    /// [`form_body`](Self::form_body), [`credential`](Self::credential),
    /// [`field`](Self::field) and the `…_at` pointer methods.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http::{Method, Request, Response};
    /// use http_body_util::{BodyExt, Full};
    /// use tower_token_refresh::http::{Credential, HttpRefresher};
    /// use tower_token_refresh::{BoxError, TokenRefreshLayer, TokenSet};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let api = tower::service_fn(|request: Request<Full<Bytes>>| async move {
    ///     assert_eq!(request.method(), Method::PUT);
    ///     assert_eq!(request.headers()["authorization"], "Bearer r1");
    ///     let sent = request.into_body().collect().await?.to_bytes();
    ///     assert_eq!(sent, r#"{"client":"cli"}"#);
    ///     let answer = r#"{"ok":true,"result":{"jwt":"a2","ttl":"900","renew":"r2"}}"#;
    ///     Ok::<_, BoxError>(Response::new(Full::<Bytes>::from(answer)))
    /// });
    ///
    /// let refresher = HttpRefresher::custom("https://api.example.com/session", api)
    ///     .method(Method::PUT)
    ///     .credential(Credential::bearer_header())
    ///     .field("client", "cli")
    ///     .success_at("/ok")
    ///     .access_token_at("/result/jwt")
    ///     .expires_in_at("/result/ttl")
    ///     .refresh_token_at("/result/renew");
    /// let layer = TokenRefreshLayer::builder(refresher)
    ///     .initial_tokens(TokenSet::new("a1").with_refresh_token("r1"))
    ///     .build();
    /// let handle = layer.handle();
    /// handle.force_refresh().await.unwrap();
    /// let tokens = handle.tokens().unwrap();
    /// assert_eq!(tokens.access_token().expose(), "a2");
    /// assert_eq!(tokens.expires_in(), Some(std::time::Duration::from_secs(900)));
    /// assert_eq!(tokens.refresh_token().unwrap().expose(), "r2");
    /// # }
    /// ```
    pub fn custom<U>(url: U, client: C) -> Self
    where
        U: TryInto<Uri>,
        U::Error: fmt::Display,
    {
        Self::with_dialect(url, client, Dialect::custom())
    }
}

impl<C, B> HttpRefresher<C, B> {
    fn settings(&mut self) -> &mut Settings {
        Arc::make_mut(&mut self.settings)
    }

    fn dialect(&mut self) -> &mut Dialect {
        &mut self.settings().dialect
    }

    fn client_mut(&mut self) -> &mut Client {
        self.dialect().request.client.get_or_insert_with(|| Client {
            id: String::new(),
            secret: None,
            method: ClientAuthMethod::default(),
        })
    }

    /// The refresh URL, if it may be used: `https`, or `http` to a loopback
    /// host or with insecure transport allowed.
    fn endpoint(&self) -> Result<&Uri, RefreshError> {
        let settings = &self.settings;
        let uri = settings
            .endpoint
            .as_ref()
            .map_err(|e| RefreshError::terminal(format!("the refresh URL is invalid: {e}")))?;
        let Some(host) = uri.host() else {
            return Err(RefreshError::terminal("the refresh URL has no host"));
        };
        match uri.scheme() {
            Some(scheme) if *scheme == Scheme::HTTPS => Ok(uri),
            Some(scheme)
                if *scheme == Scheme::HTTP
                    && (settings.allow_insecure || crate::service::is_loopback(host)) =>
            {
                Ok(uri)
            }
            Some(scheme) if *scheme == Scheme::HTTP => Err(RefreshError::terminal(format!(
                "refused to send a refresh credential over plain http to {host}; \
                 use https, or allow_insecure_http(true)"
            ))),
            _ => Err(RefreshError::terminal(
                "the refresh URL must start with https://",
            )),
        }
    }
}

impl<C, B, ResB> Refresh for HttpRefresher<C, B>
where
    C: Service<Request<B>, Response = Response<ResB>> + Clone + Send + Sync + 'static,
    C::Future: Send,
    C::Error: Into<BoxError>,
    B: From<Bytes> + Send + 'static,
    ResB: Body + Send + 'static,
    ResB::Data: Send,
    ResB::Error: Into<BoxError>,
{
    fn refresh(
        &self,
        ctx: RefreshContext,
    ) -> impl Future<Output = Result<TokenSet, RefreshError>> + Send {
        let request = self
            .endpoint()
            .and_then(|uri| request::build(&self.settings.dialect.request, uri, &ctx));
        let mut client = self.client.clone();
        let settings = Arc::clone(&self.settings);
        async move {
            let request = request?.map(B::from);
            // Gathered (copies, the Basic credentials) only for a failure.
            let sent = || {
                let uri = settings.endpoint.as_ref().ok();
                request::secrets(&settings.dialect.request, uri, &ctx)
            };
            // A readiness error may quote an earlier request's URL (a
            // buffer's worker reports the error that stopped it).
            poll_fn(|cx| client.poll_ready(cx))
                .await
                .map_err(|error| unreachable_endpoint(without_secrets(error.into(), &sent())))?;
            // Held until the answer is read: the call counts from its end.
            let slot = settings.calls.admit(settings.dialect.rate_limit)?;
            let response = match client.call(request).await {
                Ok(response) => response,
                Err(error) => {
                    let error = error.into();
                    if let Some(slot) = slot.filter(|_| never_reached_the_server(&*error)) {
                        slot.not_sent();
                    }
                    return Err(unreachable_endpoint(without_secrets(error, &sent())));
                }
            };
            let tokens = answer(
                &settings.dialect,
                settings.body_limit,
                response,
                sent,
                SystemTime::now,
            )
            .await?;
            drop(slot);
            Ok(keep_what_was_left_out(
                tokens,
                &settings.dialect,
                ctx.current(),
            ))
        }
    }

    fn needs_background_refresh(&self) -> bool {
        self.sends_access_token()
    }

    /// Half the lifetime for a sliding session (see
    /// [`Refresh::advisory_window`]).
    fn advisory_window(&self) -> Option<RefreshWindow> {
        self.sends_access_token()
            .then(|| RefreshWindow::fraction(0.5))
    }
}

impl<C, B> HttpRefresher<C, B> {
    /// Whether the refresh presents the access token: a sliding session.
    fn sends_access_token(&self) -> bool {
        self.settings
            .dialect
            .request
            .credential
            .sends_access_token()
    }
}

/// The kept fields an answer left out that the refresh asked for: the
/// body field of that name it sent (`scope`, Ocient's `database`), whether
/// fixed or carried from the tokens in use, and for `scope` without one,
/// the scope granted before (RFC 6749 §5.1 leaves `scope` out when it is
/// the one asked for, and a refresh that names none asks for the one
/// granted). Not for a request that presents no token (a
/// `client_credentials` grant, as a login): one that names no scope asks
/// for the server's default (§3.3), which the answer, leaving `scope` out,
/// does not name. Found in review: it was labelled with the scope of the
/// tokens it replaced. Other kept fields (Cognito's
/// `requiresPasswordChange`) are the answer's alone.
fn keep_what_was_left_out(
    mut tokens: TokenSet,
    dialect: &Dialect,
    current: Option<&TokenSet>,
) -> TokenSet {
    for (name, _) in &dialect.response.keep {
        if tokens.extra(name).is_some() {
            continue;
        }
        let sent = dialect
            .request
            .fields
            .iter()
            .find(|(field, _)| field == name);
        let refreshed_scope = name == "scope" && dialect.request.credential.presents_a_token();
        let carried = refreshed_scope || dialect.request.carried.contains(&name.as_str());
        let before = current
            .filter(|_| carried)
            .and_then(|current| current.extra(name))
            .filter(|value| !value.is_empty());
        // A secret field is never kept on the token set (extras are plain).
        let sent = sent.and_then(|(_, value)| match value {
            FieldValue::Plain(value) => Some(value.as_str()),
            FieldValue::Secret(_) => None,
        });
        if let Some(value) = sent.or(before) {
            tokens = tokens.with_extra(name.as_str(), value);
        }
    }
    tokens
}

/// What a refresh endpoint's answer means: the tokens of a `2xx`, or the
/// error a failure status stands for. The body is read up to `body_limit`
/// bytes first: a longer or unreadable `2xx` is a transient failure, and a
/// failure status keeps its class without the body's message. `now` is read
/// once the body has arrived, for `Retry-After` dates and JWT `exp` in an
/// answer without a `Date`; `sent` gives the secrets to redact from a
/// failure's text, and from the client's error reading a `2xx` body.
///
/// A JWT's `exp` and a `Retry-After` date are on the server's clock, so
/// they count from its `Date` where it sent one: a client clock off from
/// the server's (by minutes, or by more than a token's lifetime, which
/// read every new token as expired on arrival) moves neither. `Date` has
/// whole seconds and is stamped before the body is sent: a token's time
/// left counts from a second past it, so that it is never more than the
/// server's own count, and a wait from `Date` itself, never less.
///
/// Everything after the response head arrives goes through here, so the
/// fuzz targets (`__fuzz`) exercise exactly what a refresh does.
async fn answer<ResB>(
    dialect: &Dialect,
    body_limit: usize,
    response: Response<ResB>,
    sent: impl Fn() -> SentSecrets,
    now: impl FnOnce() -> SystemTime,
) -> Result<TokenSet, RefreshError>
where
    ResB: Body,
    ResB::Error: Into<BoxError>,
{
    let (parts, body) = response.into_parts();
    let date = server_date(&parts.headers);
    if parts.status.is_success() {
        let body = read_capped(body, body_limit, &sent).await?;
        let now = date.map_or_else(now, |date| date + Duration::from_secs(1));
        // A success without tokens may still say why, in the dialect's
        // error shape (an envelope's `success: false` beside its `error`,
        // an Ocient `status`): its words are kept, as for a failure. Found
        // in review: only "undecodable" was left of them. Its status is
        // kept too, as a failure's is: without it, such an error could not
        // be told from one with no answer at all.
        return decode::tokens(&dialect.response, &body, now).map_err(|error| {
            Said::read_unused_success(&dialect.errors, &body, sent())
                .explain(error.with_status(parts.status.as_u16()))
        });
    }
    // The status and headers decide a failure's class; the body adds only
    // the server's message. Lost with a body too long or unreadable, the
    // class was too: a 400 `invalid_grant` became transient and was
    // retried for ever, and a 429 lost its `Retry-After`. So it was with a
    // body that stalls (found in review): it ran into the refresh timeout,
    // a transient failure. Waited for `FAILURE_BODY_WAIT` at most now,
    // where a timer can be set: outside a runtime, or on one built without
    // timers, it is read unbounded, as then the refresh timeout cannot be
    // set either.
    let read = read_capped(body, body_limit, SentSecrets::default);
    let body =
        match crate::manager::timer_at(crate::manager::later(Instant::now(), FAILURE_BODY_WAIT)) {
            Some(waited_out) => tokio::select! {
                biased;
                read = read => read.unwrap_or_default(),
                () = waited_out => Bytes::new(),
            },
            None => read.await.unwrap_or_default(),
        };
    Err(failure::classify(
        parts.status,
        &parts.headers,
        &body,
        dialect,
        &sent(),
        date.unwrap_or_else(now),
    ))
}

/// How long a failure answer's body is waited for once its head has come:
/// the head decides the failure's class, and the body only adds the
/// server's words.
const FAILURE_BODY_WAIT: Duration = Duration::from_secs(1);

/// The server's clock when it answered: its `Date`, if that parses. RFC
/// 9110 §6.6.1 has an origin server with a clock send one on every `2xx`,
/// `3xx` and `4xx` answer (a `429` among them); a `5xx` may come without,
/// and then its `Retry-After` date counts from the client's clock. A
/// `Date` that a proxy in front added speaks for the proxy's clock.
fn server_date(headers: &http::HeaderMap) -> Option<SystemTime> {
    let date = headers.get(http::header::DATE)?.to_str().ok()?;
    httpdate::parse_http_date(date.trim()).ok()
}

/// Whether a client's error says the request never reached the server: a
/// connection refused, wherever in the error's causes (hyper-util wraps
/// it in its own errors).
fn never_reached_the_server(error: &(dyn std::error::Error + 'static)) -> bool {
    if let Some(io) = error.downcast_ref::<std::io::Error>() {
        if io.kind() == std::io::ErrorKind::ConnectionRefused {
            return true;
        }
        // An `io::Error` wrapping another names that one's cause as its
        // own source, skipping the one it wraps.
        if io
            .get_ref()
            .is_some_and(|inner| never_reached_the_server(inner))
        {
            return true;
        }
    }
    error.source().is_some_and(never_reached_the_server)
}

/// The client's error, or, if it or a cause quotes a secret the request
/// carried (a client naming the URL it called, query key and all), its
/// text with the secrets redacted, as a stand-in without causes.
fn without_secrets(error: BoxError, sent: &SentSecrets) -> BoxError {
    let causes = std::iter::successors(error.source(), |cause| cause.source());
    let text = causes.fold(error.to_string(), |text, cause| format!("{text}: {cause}"));
    // Each cause's `Debug` too: found in review, a cause whose `Debug`
    // alone quoted the URL was kept, and walking the causes showed it.
    let chain = std::iter::successors(Some(&*error as &(dyn std::error::Error + 'static)), |e| {
        e.source()
    });
    let debug_quotes = chain
        .map(|cause| format!("{cause:?}"))
        .any(|d| sent.quoted_in(&d));
    if !sent.quoted_in(&text) && !debug_quotes {
        return error;
    }
    sent.redact(text).into()
}

fn unreachable_endpoint(error: BoxError) -> RefreshError {
    RefreshError::transient("the refresh endpoint could not be reached").with_source(error)
}

/// The whole body, unless it is longer than `limit` bytes. The client's
/// error, if reading fails, loses the secrets `sent` gives, as its other
/// errors do.
async fn read_capped<ResB>(
    body: ResB,
    limit: usize,
    sent: impl Fn() -> SentSecrets,
) -> Result<Bytes, RefreshError>
where
    ResB: Body,
    ResB::Error: Into<BoxError>,
{
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(RefreshError::transient(format!(
            "the refresh answer is larger than {limit} bytes"
        ))),
        Err(e) => Err(
            RefreshError::transient("the refresh answer could not be read")
                .with_source(without_secrets(e, &sent())),
        ),
    }
}

impl<C: Clone, B> Clone for HttpRefresher<C, B> {
    fn clone(&self) -> Self {
        Self {
            client: self.client.clone(),
            settings: Arc::clone(&self.settings),
            _body: PhantomData,
        }
    }
}

impl<C, B> fmt::Debug for HttpRefresher<C, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let settings = &self.settings;
        let client_id = settings.dialect.request.client.as_ref().map(|c| &c.id);
        f.debug_struct("HttpRefresher")
            .field("dialect", &settings.dialect.name)
            .field("endpoint", &endpoint::ForDebug(&settings.endpoint))
            .field("client_id", &client_id)
            .field("allow_insecure_http", &settings.allow_insecure)
            .field("body_limit", &settings.body_limit)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
