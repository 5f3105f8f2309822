//! Errors: [`RefreshError`] from a refresh source, [`Error`] from the layer.
//!
//! A refresh source classifies its own failures, because only it knows what
//! the endpoint meant; the manager then behaves as the class demands:
//!
//! ```
//! use std::time::Duration;
//! use tower_token_refresh::RefreshError;
//!
//! let gone = RefreshError::terminal("invalid_grant: refresh token revoked");
//! assert!(gone.is_terminal());
//!
//! let slow_down = RefreshError::rate_limited(Some(Duration::from_secs(12)));
//! assert_eq!(slow_down.retry_after(), Some(Duration::from_secs(12)));
//!
//! let flaky = RefreshError::transient("connection reset").with_status(503);
//! assert!(flaky.is_transient());
//! assert_eq!(flaky.to_string(), "transient refresh failure (status 503): connection reset");
//! ```

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::Secret;

/// A boxed error, the error type of the service (as in tower-http).
///
/// The layer's own failures are an [`Error`] inside it; the inner service's
/// errors pass through as they are.
///
/// ```
/// use std::convert::Infallible;
/// use bytes::Bytes;
/// use http::{Request, Response};
/// use http_body_util::{Empty, Full};
/// use tower::{Layer, ServiceExt};
/// use tower_token_refresh::{refresh_fn, BoxError, Error, RefreshError, ReplayBody};
/// use tower_token_refresh::{TokenRefreshLayer, TokenSet};
///
/// fn report(error: &BoxError) -> &'static str {
///     match error.downcast_ref::<Error>() {
///         Some(error) if error.is_reauth_required() => "sign in again",
///         Some(error) if error.is_insecure_transport() => "use https",
///         Some(_) => "token trouble",
///         None => "transport trouble",
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let api = tower::service_fn(|_: Request<ReplayBody<Full<Bytes>>>| async {
///     Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
/// });
/// let source = refresh_fn(|_| async { Ok::<_, RefreshError>(TokenSet::new("t")) });
/// let client = TokenRefreshLayer::builder(source)
///     .initial_tokens(TokenSet::new("t"))
///     .build()
///     .layer(api);
/// // A token is not sent in clear text to a remote host.
/// let plain = Request::get("http://api.example.com/").body(Full::new(Bytes::new())).unwrap();
/// assert_eq!(report(&client.oneshot(plain).await.unwrap_err()), "use https");
///
/// let io: BoxError = std::io::Error::other("connection reset").into();
/// assert_eq!(report(&io), "transport trouble");
/// # }
/// ```
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// How a failed refresh must be handled.
///
/// ```
/// use std::time::Duration;
/// use tower_token_refresh::{FailureClass, RefreshError};
///
/// let slow_down = RefreshError::rate_limited(Some(Duration::from_secs(30)));
/// assert!(matches!(
///     slow_down.class(),
///     FailureClass::RateLimited { retry_after: Some(wait), .. } if wait == Duration::from_secs(30)
/// ));
/// assert_eq!(RefreshError::terminal("revoked").class(), FailureClass::Terminal);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailureClass {
    /// The credential is dead: for an
    /// [`HttpRefresher`](crate::http::HttpRefresher), every 4xx answer other
    /// than 408, 421, 425 and 429 (`invalid_grant`, 401 and 403 among them).
    /// The credential is not presented again: a configured
    /// [login source](crate::Builder::login) is called once in its place;
    /// without one, no refresh is attempted until new tokens are set.
    Terminal,
    /// The endpoint asked us to slow down (429), or said when it will be
    /// back (503 with `Retry-After`). No refresh call is made before
    /// `retry_after` has passed (an hour at most: a longer wait is cut to
    /// one) nor before the backoff's delay.
    #[non_exhaustive]
    RateLimited {
        /// How long to wait: what the endpoint said (`Retry-After`), or,
        /// when it said nothing, what its documented limit implies (an
        /// [`HttpRefresher`](crate::http::HttpRefresher) preset's
        /// `rate_limit_wait`), if anything.
        retry_after: Option<Duration>,
    },
    /// Anything that may succeed if tried again later: 3xx (never
    /// followed), 408, 421, 425 and 5xx (except a 503 with `Retry-After`),
    /// timeouts, connection errors, undecodable responses. Retried with
    /// backoff.
    Transient,
}

/// Why a refresh source failed, and what the server said about it.
///
/// Build one with [`RefreshError::terminal`], [`RefreshError::rate_limited`]
/// or [`RefreshError::transient`], then add what is known. Never put a token
/// in the message: it is shown in logs.
///
/// ```
/// use tower_token_refresh::RefreshError;
/// let err = RefreshError::terminal("refresh token revoked")
///     .with_status(401)
///     .with_code("invalid_grant")
///     .with_request_id("req-7");
/// assert_eq!(err.code(), Some("invalid_grant"));
/// assert!(err.to_string().contains("req-7"));
/// ```
pub struct RefreshError {
    class: FailureClass,
    message: String,
    status: Option<u16>,
    code: Option<String>,
    request_id: Option<String>,
    source: Option<BoxError>,
    /// A new refresh token in an answer refused for another reason (crate
    /// private: the HTTP refresher sets it). The one presented is spent
    /// once the issuer has answered with another, so the layer keeps this
    /// one to refresh from. Never shown. Boxed: rare, and kept out of the
    /// size of every `Result` that carries the error.
    replacement: Option<Box<Secret>>,
}

impl RefreshError {
    fn with_class(class: FailureClass, message: impl Into<String>) -> Self {
        Self {
            class,
            message: message.into(),
            status: None,
            code: None,
            request_id: None,
            source: None,
            replacement: None,
        }
    }

    /// Carries `refresh_token`, a new one the refused answer held.
    pub(crate) fn with_replacement(mut self, refresh_token: Secret) -> Self {
        self.replacement = Some(Box::new(refresh_token));
        self
    }

    /// The new refresh token the refused answer held, taken out.
    pub(crate) fn take_replacement(&mut self) -> Option<Secret> {
        self.replacement.take().map(|token| *token)
    }

    /// The credential can no longer be refreshed; a user must sign in again.
    ///
    /// ```
    /// assert!(tower_token_refresh::RefreshError::terminal("revoked").is_terminal());
    /// ```
    pub fn terminal(message: impl Into<String>) -> Self {
        Self::with_class(FailureClass::Terminal, message)
    }

    /// The endpoint is rate limiting us, optionally saying for how long.
    ///
    /// ```
    /// let err = tower_token_refresh::RefreshError::rate_limited(None);
    /// assert!(err.is_rate_limited());
    /// ```
    pub fn rate_limited(retry_after: Option<Duration>) -> Self {
        Self::with_class(
            FailureClass::RateLimited { retry_after },
            "too many refresh requests",
        )
    }

    /// A failure worth retrying later, with backoff.
    ///
    /// ```
    /// assert!(tower_token_refresh::RefreshError::transient("timeout").is_transient());
    /// ```
    pub fn transient(message: impl Into<String>) -> Self {
        Self::with_class(FailureClass::Transient, message)
    }

    /// Replaces the message (e.g. with the server's own text).
    ///
    /// ```
    /// let err = tower_token_refresh::RefreshError::rate_limited(None).with_message("slow down");
    /// assert!(err.to_string().ends_with("slow down"));
    /// ```
    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.message = message.into();
        self
    }

    /// Records the HTTP status the refresh endpoint answered with.
    ///
    /// ```
    /// let err = tower_token_refresh::RefreshError::transient("bad gateway").with_status(502);
    /// assert_eq!(err.status(), Some(502));
    /// ```
    pub fn with_status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }

    /// Records the server's machine-readable error code.
    ///
    /// ```
    /// let err = tower_token_refresh::RefreshError::terminal("x").with_code("invalid_grant");
    /// assert_eq!(err.code(), Some("invalid_grant"));
    /// ```
    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into());
        self
    }

    /// Records the server's request or correlation id.
    ///
    /// ```
    /// let err = tower_token_refresh::RefreshError::terminal("x").with_request_id("abc");
    /// assert_eq!(err.request_id(), Some("abc"));
    /// ```
    pub fn with_request_id(mut self, request_id: impl Into<String>) -> Self {
        self.request_id = Some(request_id.into());
        self
    }

    /// Attaches the underlying error (a transport error, a decode error, …).
    ///
    /// ```
    /// use std::error::Error;
    /// let io = std::io::Error::other("reset");
    /// let err = tower_token_refresh::RefreshError::transient("send failed").with_source(io);
    /// assert!(err.source().is_some());
    /// ```
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// The failure's class.
    ///
    /// ```
    /// use tower_token_refresh::{FailureClass, RefreshError};
    /// assert_eq!(RefreshError::terminal("x").class(), FailureClass::Terminal);
    /// ```
    pub fn class(&self) -> FailureClass {
        self.class
    }

    /// Whether no refresh should be attempted again without new credentials.
    ///
    /// ```
    /// assert!(!tower_token_refresh::RefreshError::transient("x").is_terminal());
    /// ```
    pub fn is_terminal(&self) -> bool {
        matches!(self.class, FailureClass::Terminal)
    }

    /// Whether the endpoint rate limited us.
    ///
    /// ```
    /// assert!(!tower_token_refresh::RefreshError::transient("x").is_rate_limited());
    /// ```
    pub fn is_rate_limited(&self) -> bool {
        matches!(self.class, FailureClass::RateLimited { .. })
    }

    /// Whether the failure is of the transient class: retried after a
    /// backoff. A [rate limit](Self::is_rate_limited) may pass later too,
    /// but is a class of its own.
    ///
    /// ```
    /// assert!(!tower_token_refresh::RefreshError::terminal("x").is_transient());
    /// ```
    pub fn is_transient(&self) -> bool {
        matches!(self.class, FailureClass::Transient)
    }

    /// How long to wait before calling a rate-limited endpoint again: what
    /// it said, or what its documented limit implies (see
    /// [`FailureClass::RateLimited`]).
    ///
    /// ```
    /// assert_eq!(tower_token_refresh::RefreshError::terminal("x").retry_after(), None);
    /// ```
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self.class {
            FailureClass::RateLimited { retry_after } => retry_after,
            _ => None,
        }
    }

    /// The server's human-readable message (or ours).
    ///
    /// ```
    /// assert_eq!(tower_token_refresh::RefreshError::terminal("gone").message(), "gone");
    /// ```
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The HTTP status of the refresh response, if there was one.
    ///
    /// ```
    /// assert_eq!(tower_token_refresh::RefreshError::terminal("x").status(), None);
    /// ```
    pub fn status(&self) -> Option<u16> {
        self.status
    }

    /// The server's error code, if it gave one.
    ///
    /// ```
    /// assert_eq!(tower_token_refresh::RefreshError::terminal("x").code(), None);
    /// ```
    pub fn code(&self) -> Option<&str> {
        self.code.as_deref()
    }

    /// The server's request id, if it gave one.
    ///
    /// ```
    /// assert_eq!(tower_token_refresh::RefreshError::terminal("x").request_id(), None);
    /// ```
    pub fn request_id(&self) -> Option<&str> {
        self.request_id.as_deref()
    }
}

impl fmt::Display for RefreshError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.class {
            FailureClass::Terminal => f.write_str("terminal refresh failure")?,
            FailureClass::RateLimited {
                retry_after: Some(d),
            } => write!(f, "refresh rate limited for {}s", d.as_secs_f64())?,
            FailureClass::RateLimited { retry_after: None } => {
                f.write_str("refresh rate limited")?
            }
            FailureClass::Transient => f.write_str("transient refresh failure")?,
        }
        if let Some(status) = self.status {
            write!(f, " (status {status})")?;
        }
        write!(f, ": {}", self.message)?;
        if let Some(code) = &self.code {
            write!(f, " [code {code}]")?;
        }
        if let Some(id) = &self.request_id {
            write!(f, " [request id {id}]")?;
        }
        Ok(())
    }
}

impl fmt::Debug for RefreshError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefreshError")
            .field("class", &self.class)
            .field("message", &self.message)
            .field("status", &self.status)
            .field("code", &self.code)
            .field("request_id", &self.request_id)
            .field("source", &self.source)
            .finish()
    }
}

impl StdError for RefreshError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

/// Why the layer could not send a request with a valid token.
///
/// [`TokenRefresh`](crate::TokenRefresh) returns it boxed, as a
/// [`BoxError`] (downcast to inspect it, as below), and
/// [`TokenHandle::force_refresh`](crate::TokenHandle::force_refresh),
/// [`TokenHandle::bearer`](crate::TokenHandle::bearer) and
/// [`TokenHandle::bearer_after_rejection`](crate::TokenHandle::bearer_after_rejection)
/// as it is; [`TokenHandle::set_tokens`](crate::TokenHandle::set_tokens)
/// fails with an [`InvalidTokenError`](crate::InvalidTokenError) instead.
///
/// Its predicates ([`is_reauth_required`](Self::is_reauth_required),
/// [`is_refresh_failed`](Self::is_refresh_failed),
/// [`is_timeout`](Self::is_timeout),
/// [`is_insecure_transport`](Self::is_insecure_transport),
/// [`is_rejected_too_soon`](Self::is_rejected_too_soon),
/// [`is_no_runtime`](Self::is_no_runtime)) say what went wrong, and one of
/// them is true for every error. Outside any tokio runtime (a future
/// polled by another executor) no refresh can start, so a request that
/// has to wait for one (no token yet, a token inside its mandatory window,
/// or a rejected one to retry), and `force_refresh` or the handle's
/// `bearer` and `bearer_after_rejection` in the same case, fail with an
/// `Error` for which `is_no_runtime` is true and
/// [`refresh_error`](Self::refresh_error) is `None`; it displays as "token
/// refresh needs a tokio runtime". Requests whose token can still be sent
/// go out as usual there.
///
/// Its `Display` says what failed ("token refresh failed"), not why: the
/// why is its [`source`](StdError::source), the
/// [`refresh_error`](Self::refresh_error) (the server's own words, or the
/// client's error, with secrets redacted) and that one's sources in turn,
/// as Rust errors go. Log the whole chain (with `anyhow`'s `{:#}`, or by
/// walking `source()`), not the `Display` alone.
///
/// ```
/// use std::convert::Infallible;
/// use http::{Request, Response};
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_token_refresh::{refresh_fn, BoxError, Error, RefreshError, TokenRefreshLayer, TokenSet};
///
/// fn explain(err: &BoxError) -> &'static str {
///     match err.downcast_ref::<Error>() {
///         Some(e) if e.is_reauth_required() => "sign in again",
///         Some(_) => "token refresh failed, try later",
///         None => "transport error",
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// // An identity server that revoked the credential.
/// let source = refresh_fn(|_| async { Err::<TokenSet, _>(RefreshError::terminal("revoked")) });
/// let client = ServiceBuilder::new()
///     .layer(TokenRefreshLayer::builder(source).build())
///     .service_fn(|_req: Request<_>| async { Ok::<_, Infallible>(Response::new(String::new())) });
/// let request = Request::new(http_body_util::Empty::<bytes::Bytes>::new());
/// let error = client.oneshot(request).await.unwrap_err();
/// assert_eq!(explain(&error), "sign in again");
///
/// let io: BoxError = std::io::Error::other("connection reset").into();
/// assert_eq!(explain(&io), "transport error");
/// # }
/// ```
#[derive(Clone)]
pub struct Error {
    kind: ErrorKind,
    refresh: Option<Arc<RefreshError>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorKind {
    ReauthRequired,
    RefreshFailed,
    RefreshTimedOut,
    RefreshAborted,
    /// A refresh put off because the token store failed while the current
    /// token was still good (see `manager::fleet`): requests go on with
    /// it, and decide afresh if they cannot; `force_refresh` tries again.
    RefreshDeferred,
    /// A flight stopped being driven: its task was dropped unfinished (its
    /// runtime shutting down), or a waiter off its runtime gave up on it
    /// at its deadline. Nothing of the refresh failed, so nothing is
    /// backed off: waiters decide afresh, which starts a replacement on
    /// their own runtime; `force_refresh` tries again.
    FlightAbandoned,
    /// The request's own timeout (reqwest's) ran out while it waited for
    /// a token.
    #[cfg_attr(not(feature = "reqwest"), allow(dead_code))]
    DeadlineElapsed,
    InsecureTransport,
    NoRuntime,
    /// A token was rejected less than `min_refresh_interval` after it came
    /// from a refresh: not refreshed again yet (or the refresh joined for
    /// it ended without a token).
    RejectedTooSoon,
}

impl ErrorKind {
    /// The request-level meaning of a failed refresh.
    pub(crate) fn of_refresh(error: &RefreshError) -> Self {
        if error.is_terminal() {
            ErrorKind::ReauthRequired
        } else {
            ErrorKind::RefreshFailed
        }
    }
}

impl Error {
    pub(crate) fn new(kind: ErrorKind) -> Self {
        Self {
            kind,
            refresh: None,
        }
    }

    /// Whether a refresh was put off, not tried: deciding afresh may
    /// still start one (see [`ErrorKind::RefreshDeferred`]).
    pub(crate) fn is_deferred(&self) -> bool {
        self.kind == ErrorKind::RefreshDeferred
    }

    /// Whether the flight waited for stopped being driven (see
    /// [`ErrorKind::FlightAbandoned`]): deciding afresh starts another.
    pub(crate) fn is_abandoned(&self) -> bool {
        self.kind == ErrorKind::FlightAbandoned
    }

    /// What went wrong, for tests that tell kinds without a public
    /// predicate.
    #[cfg(test)]
    pub(crate) fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub(crate) fn with_refresh(kind: ErrorKind, refresh: Arc<RefreshError>) -> Self {
        Self {
            kind,
            refresh: Some(refresh),
        }
    }

    /// The refresh credential is dead: new tokens must be set through
    /// [`TokenHandle::set_tokens`](crate::TokenHandle::set_tokens).
    ///
    /// ```
    /// # use std::convert::Infallible;
    /// # use http::{Request, Response};
    /// # use tower::{ServiceBuilder, ServiceExt};
    /// use tower_token_refresh::{refresh_fn, Error, RefreshError, TokenRefreshLayer, TokenSet};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// // The identity server revoked the credential.
    /// let source = refresh_fn(|_| async { Err::<TokenSet, _>(RefreshError::terminal("revoked")) });
    /// let layer = TokenRefreshLayer::builder(source).build();
    /// let handle = layer.handle();
    /// let client = ServiceBuilder::new().layer(layer).service_fn(|_req: Request<_>| async {
    ///     Ok::<_, Infallible>(Response::new(String::new()))
    /// });
    /// let send = || client.clone().oneshot(Request::new(http_body_util::Empty::<bytes::Bytes>::new()));
    ///
    /// let error = send().await.unwrap_err();
    /// assert!(error.downcast_ref::<Error>().unwrap().is_reauth_required());
    /// // Tokens set by hand (the user signed in again) clear it.
    /// handle.set_tokens(TokenSet::new("signed-in")).unwrap();
    /// assert!(send().await.is_ok());
    /// # }
    /// ```
    pub fn is_reauth_required(&self) -> bool {
        self.kind == ErrorKind::ReauthRequired
    }

    /// A refresh failed (transiently or rate limited) and no valid token
    /// was left to send; later requests may succeed.
    ///
    /// ```
    /// # use std::convert::Infallible;
    /// # use http::{Request, Response};
    /// # use tower::{ServiceBuilder, ServiceExt};
    /// use tower_token_refresh::{refresh_fn, Error, RefreshError, TokenRefreshLayer, TokenSet};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// // The identity server is down, and there is no token yet.
    /// let source = refresh_fn(|_| async { Err::<TokenSet, _>(RefreshError::transient("503")) });
    /// let client = ServiceBuilder::new()
    ///     .layer(TokenRefreshLayer::builder(source).build())
    ///     .service_fn(|_req: Request<_>| async { Ok::<_, Infallible>(Response::new(String::new())) });
    /// let request = Request::new(http_body_util::Empty::<bytes::Bytes>::new());
    /// let error = client.oneshot(request).await.unwrap_err();
    /// let error = error.downcast_ref::<Error>().unwrap();
    /// assert!(error.is_refresh_failed());
    /// assert!(!error.is_reauth_required(), "a later request may succeed");
    /// # }
    /// ```
    pub fn is_refresh_failed(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::RefreshFailed
                | ErrorKind::RefreshTimedOut
                | ErrorKind::RefreshAborted
                | ErrorKind::RefreshDeferred
                | ErrorKind::FlightAbandoned
        )
    }

    /// The refresh took longer than the configured refresh timeout, or the
    /// request's own timeout ran out while it waited for a token (a
    /// request through the `reqwest` middleware), or
    /// [`force_refresh`](crate::TokenHandle::force_refresh) found a refresh,
    /// and then its replacement, given up past their deadlines (their
    /// runtime stopped driving them).
    ///
    /// ```
    /// # use std::{convert::Infallible, time::Duration};
    /// # use http::{Request, Response};
    /// # use tower::{ServiceBuilder, ServiceExt};
    /// use tower_token_refresh::{refresh_fn, Error, RefreshError, TokenRefreshLayer, TokenSet};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
    /// // An identity server that never answers.
    /// let source = refresh_fn(|_| std::future::pending::<Result<TokenSet, RefreshError>>());
    /// let layer = TokenRefreshLayer::builder(source).refresh_timeout(Duration::from_secs(2)).build();
    /// let client = ServiceBuilder::new().layer(layer).service_fn(|_req: Request<_>| async {
    ///     Ok::<_, Infallible>(Response::new(String::new()))
    /// });
    /// let request = Request::new(http_body_util::Empty::<bytes::Bytes>::new());
    /// let error = client.oneshot(request).await.unwrap_err();
    /// let error = error.downcast_ref::<Error>().unwrap();
    /// assert!(error.is_timeout());
    /// assert!(error.is_refresh_failed(), "a refresh that timed out failed");
    /// # }
    /// ```
    pub fn is_timeout(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::RefreshTimedOut | ErrorKind::FlightAbandoned | ErrorKind::DeadlineElapsed
        )
    }

    /// The request's URI named a scheme other than `https` (`http://`, or
    /// `https` spelled in capitals when the URI was built from parts) and a
    /// host that is not loopback, or was a `CONNECT` target (an authority
    /// without a scheme) to such a host on a port other than 443, and
    /// insecure transport was not allowed.
    ///
    /// ```
    /// # use std::convert::Infallible;
    /// # use bytes::Bytes;
    /// # use http::{Request, Response};
    /// # use http_body_util::Empty;
    /// # use tower::{ServiceBuilder, ServiceExt};
    /// use tower_token_refresh::{refresh_fn, Error, RefreshError, TokenRefreshLayer, TokenSet};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// # let source = refresh_fn(|_| async { Ok::<_, RefreshError>(TokenSet::new("t")) });
    /// let layer = TokenRefreshLayer::builder(source).initial_tokens(TokenSet::new("t")).build();
    /// let client = ServiceBuilder::new().layer(layer).service_fn(|_req: Request<_>| async {
    ///     Ok::<_, Infallible>(Response::new(String::new()))
    /// });
    /// let get = |uri: &'static str| client.clone().oneshot(Request::get(uri).body(Empty::<Bytes>::new()).unwrap());
    ///
    /// let error = get("http://api.example.com/").await.unwrap_err();
    /// assert!(error.downcast_ref::<Error>().unwrap().is_insecure_transport());
    /// // https, or plain http to a loopback host, is fine.
    /// assert!(get("https://api.example.com/").await.is_ok());
    /// assert!(get("http://127.0.0.1:8080/").await.is_ok());
    /// # }
    /// ```
    pub fn is_insecure_transport(&self) -> bool {
        self.kind == ErrorKind::InsecureTransport
    }

    /// A token told of to
    /// [`TokenHandle::bearer_after_rejection`](crate::TokenHandle::bearer_after_rejection)
    /// had come from a refresh less than the
    /// [minimum refresh interval](crate::Builder::min_refresh_interval)
    /// before: another refresh would likely bring a token rejected the
    /// same way (a server that misuses its rejection, or a clock or
    /// audience mismatch), so none was made, nor was one running to wait
    /// for. The rejection stands; told again once the interval has passed,
    /// the handle refreshes. (A request through the layer gets the
    /// server's rejection back in this case.)
    ///
    /// Also the answer when a refresh was running and was joined, but
    /// ended without a token (abandoned by another runtime that stopped
    /// driving it, put off by a fleet store, or its result overtaken): the
    /// token the server rejected is not handed back. A request through the
    /// layer gets this error then, not the 401: its rejection was read
    /// while it waited for that refresh.
    ///
    /// ```
    /// use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// # let source = refresh_fn(|_| async { Ok::<_, RefreshError>(TokenSet::new("t")) });
    /// let handle = TokenRefreshLayer::builder(source).build().handle();
    /// let bearer = handle.bearer().await.unwrap(); // just refreshed
    /// let error = handle.bearer_after_rejection(&bearer).await.unwrap_err();
    /// assert!(error.is_rejected_too_soon());
    /// assert!(!error.is_refresh_failed(), "no refresh was tried");
    /// assert_eq!(handle.stats().refreshes, 1);
    /// # }
    /// ```
    pub fn is_rejected_too_soon(&self) -> bool {
        self.kind == ErrorKind::RejectedTooSoon
    }

    /// No refresh could start: the future was polled outside any tokio
    /// runtime (by another executor), and a refresh runs as a tokio task.
    /// A mistake in the program, not a passing failure: poll the layer's
    /// futures on a tokio runtime. Requests whose token can still be sent
    /// go out as usual there.
    ///
    /// ```
    /// use std::future::Future;
    /// use std::pin::pin;
    /// use std::task::{Context, Poll, Waker};
    /// use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};
    ///
    /// # let source = refresh_fn(|_| async { Ok::<_, RefreshError>(TokenSet::new("t")) });
    /// let handle = TokenRefreshLayer::builder(source).build().handle();
    /// // Polled by hand, with no tokio runtime anywhere.
    /// let mut refresh = pin!(handle.force_refresh());
    /// let Poll::Ready(Err(error)) = refresh.as_mut().poll(&mut Context::from_waker(Waker::noop()))
    /// else {
    ///     panic!("no refresh can run here");
    /// };
    /// assert!(error.is_no_runtime());
    /// assert!(!error.is_refresh_failed());
    /// ```
    pub fn is_no_runtime(&self) -> bool {
        self.kind == ErrorKind::NoRuntime
    }

    /// The refresh source's own error, when a refresh failed.
    ///
    /// ```
    /// # use std::convert::Infallible;
    /// # use http::{Request, Response};
    /// # use tower::{ServiceBuilder, ServiceExt};
    /// use tower_token_refresh::{refresh_fn, Error, RefreshError, TokenRefreshLayer, TokenSet};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let source = refresh_fn(|_| async {
    ///     Err::<TokenSet, _>(RefreshError::transient("bad gateway").with_status(502))
    /// });
    /// let client = ServiceBuilder::new()
    ///     .layer(TokenRefreshLayer::builder(source).build())
    ///     .service_fn(|_req: Request<_>| async { Ok::<_, Infallible>(Response::new(String::new())) });
    /// let request = Request::new(http_body_util::Empty::<bytes::Bytes>::new());
    /// let error = client.oneshot(request).await.unwrap_err();
    /// let cause = error.downcast_ref::<Error>().unwrap().refresh_error().unwrap();
    /// assert_eq!(cause.status(), Some(502));
    /// assert_eq!(cause.message(), "bad gateway");
    /// # }
    /// ```
    pub fn refresh_error(&self) -> Option<&RefreshError> {
        self.refresh.as_deref()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.kind {
            ErrorKind::ReauthRequired => "re-authentication required",
            ErrorKind::RefreshFailed => "token refresh failed",
            ErrorKind::RefreshTimedOut => "token refresh timed out",
            ErrorKind::RefreshAborted => "token refresh task ended without a result",
            ErrorKind::RefreshDeferred => "token refresh deferred: the token store failed",
            ErrorKind::FlightAbandoned => "token refresh abandoned: its runtime stopped driving it",
            ErrorKind::DeadlineElapsed => {
                "the request's timeout elapsed while it waited for a token"
            }
            ErrorKind::InsecureTransport => {
                "refusing to send a bearer token to a non-loopback host without https"
            }
            ErrorKind::NoRuntime => "token refresh needs a tokio runtime",
            ErrorKind::RejectedTooSoon => {
                "a token was rejected within the minimum refresh interval of its \
                 refresh: not refreshed again yet"
            }
        })
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.kind)
            .field("refresh", &self.refresh)
            .finish()
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.refresh
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_carries_server_details() {
        let err = RefreshError::terminal("Invalid or expired refresh token")
            .with_status(401)
            .with_code("Unauthorized")
            .with_request_id("r-1");
        assert_eq!(
            err.to_string(),
            "terminal refresh failure (status 401): Invalid or expired refresh token \
             [code Unauthorized] [request id r-1]"
        );
    }

    #[test]
    fn terminal_refresh_error_becomes_reauth_required_with_source() {
        let gone = RefreshError::terminal("gone");
        let err = Error::with_refresh(ErrorKind::of_refresh(&gone), Arc::new(gone));
        assert!(err.is_reauth_required());
        assert!(!err.is_refresh_failed());
        assert_eq!(
            err.source().unwrap().to_string(),
            "terminal refresh failure: gone"
        );
        let flaky = RefreshError::transient("flaky");
        let err = Error::with_refresh(ErrorKind::of_refresh(&flaky), Arc::new(flaky));
        assert!(err.is_refresh_failed());
    }
}
