//! Where new tokens come from: the [`Refresh`] trait and [`refresh_fn`].
//!
//! ```
//! use std::time::Duration;
//! use tower_token_refresh::{refresh_fn, RefreshContext, RefreshError, TokenRefreshLayer, TokenSet};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let source = refresh_fn(|ctx: RefreshContext| async move {
//!     // A real source calls an identity server with `ctx.refresh_token()`.
//!     let _reason = ctx.reason();
//!     Ok::<_, RefreshError>(TokenSet::new("new-access").with_expires_in(Duration::from_secs(300)))
//! });
//! let handle = TokenRefreshLayer::builder(source).build().handle();
//! handle.force_refresh().await.unwrap();
//! assert_eq!(handle.tokens().unwrap().access_token().expose(), "new-access");
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::{RefreshError, RefreshWindow, Secret, TokenSet};

/// Why a refresh was started.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use tower_token_refresh::{refresh_fn, RefreshError, RefreshReason, TokenRefreshLayer, TokenSet};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let reasons = Arc::new(Mutex::new(Vec::new()));
/// let seen = Arc::clone(&reasons);
/// let source = refresh_fn(move |ctx| {
///     seen.lock().unwrap().push(ctx.reason());
///     async { Ok::<_, RefreshError>(TokenSet::new("t")) }
/// });
/// let handle = TokenRefreshLayer::builder(source).build().handle();
/// handle.force_refresh().await.unwrap();
/// assert_eq!(*reasons.lock().unwrap(), [RefreshReason::Forced]);
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RefreshReason {
    /// There was no token yet.
    Initial,
    /// The token entered its refresh window (stale or expired).
    Proactive,
    /// The background timer fired at the token's refresh point.
    Scheduled,
    /// A server rejected the current token (also for each refresh tried
    /// again after a failed one, while that token is still current).
    Rejected,
    /// [`TokenHandle::force_refresh`](crate::TokenHandle::force_refresh) was called.
    Forced,
}

/// What a [`Refresh`] source is told about the refresh it must perform.
///
/// ```
/// use tower_token_refresh::{refresh_fn, RefreshContext, RefreshError, TokenRefreshLayer, TokenSet};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// // Refreshes from the refresh token it is given, rotating it.
/// let source = refresh_fn(|ctx: RefreshContext| {
///     let next = ctx.refresh_token().map(|token| format!("{}'", token.expose()));
///     async move {
///         let next = next.ok_or_else(|| RefreshError::terminal("no refresh token"))?;
///         Ok(TokenSet::new("access").with_refresh_token(next))
///     }
/// });
/// let handle = TokenRefreshLayer::builder(source)
///     .initial_tokens(TokenSet::new("a").with_refresh_token("r"))
///     .build()
///     .handle();
/// handle.force_refresh().await.unwrap();
/// handle.force_refresh().await.unwrap();
/// // Each refresh was given the refresh token the one before returned.
/// assert_eq!(handle.tokens().unwrap().refresh_token().unwrap().expose(), "r''");
/// # }
/// ```
#[derive(Clone)]
pub struct RefreshContext {
    reason: RefreshReason,
    current: Option<Arc<TokenSet>>,
}

impl RefreshContext {
    pub(crate) fn new(reason: RefreshReason, current: Option<Arc<TokenSet>>) -> Self {
        Self { reason, current }
    }

    /// The same refresh, from other tokens (the newest a store holds).
    pub(crate) fn with_current(self, current: Arc<TokenSet>) -> Self {
        Self {
            current: Some(current),
            ..self
        }
    }

    /// Why this refresh runs.
    ///
    /// ```
    /// # use std::convert::Infallible;
    /// # use http::{Request, Response};
    /// # use tower::{ServiceBuilder, ServiceExt};
    /// use tower_token_refresh::{refresh_fn, RefreshError, RefreshReason, TokenRefreshLayer, TokenSet};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let source = refresh_fn(|ctx| async move {
    ///     match ctx.reason() {
    ///         // No tokens yet: sign in rather than refresh.
    ///         RefreshReason::Initial => Ok(TokenSet::new("signed-in")),
    ///         _ => Err(RefreshError::terminal("this source only signs in")),
    ///     }
    /// });
    /// let layer = TokenRefreshLayer::builder(source).build();
    /// let handle = layer.handle();
    /// let client = ServiceBuilder::new().layer(layer).service_fn(|req: Request<_>| async move {
    ///     Ok::<_, Infallible>(Response::new(req.headers()["authorization"].to_str().unwrap().to_owned()))
    /// });
    /// // The first request finds no token: the source signs in.
    /// let request = Request::new(http_body_util::Empty::<bytes::Bytes>::new());
    /// assert_eq!(client.oneshot(request).await.unwrap().body(), "Bearer signed-in");
    /// // A forced refresh is refused.
    /// assert!(handle.force_refresh().await.unwrap_err().is_reauth_required());
    /// # }
    /// ```
    pub fn reason(&self) -> RefreshReason {
        self.reason
    }

    /// The tokens in use when the refresh started, if any; or, if the
    /// last refresh's answer was refused (its access token already expired,
    /// or not a valid header value) after it rotated the refresh token,
    /// that answer, whose refresh token is the live one.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// // Keeps the lifetime it was given when the answer names none.
    /// let source = refresh_fn(|ctx| {
    ///     let lifetime = ctx.current().and_then(TokenSet::expires_in);
    ///     async move {
    ///         let tokens = TokenSet::new("next");
    ///         Ok::<_, RefreshError>(match lifetime {
    ///             Some(lifetime) => tokens.with_expires_in(lifetime),
    ///             None => tokens,
    ///         })
    ///     }
    /// });
    /// let hour = Duration::from_secs(3600);
    /// let handle = TokenRefreshLayer::builder(source)
    ///     .initial_tokens(TokenSet::new("first").with_expires_in(hour))
    ///     .build()
    ///     .handle();
    /// handle.force_refresh().await.unwrap();
    /// assert_eq!(handle.tokens().unwrap().expires_in(), Some(hour));
    /// # }
    /// ```
    pub fn current(&self) -> Option<&TokenSet> {
        self.current.as_deref()
    }

    /// The current refresh token, if any.
    ///
    /// ```
    /// use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let source = refresh_fn(|ctx| {
    ///     let presented = ctx.refresh_token().map(|t| t.expose().to_owned());
    ///     async move {
    ///         assert_eq!(presented.as_deref(), Some("r1"));
    ///         Ok::<_, RefreshError>(TokenSet::new("a2").with_refresh_token("r2"))
    ///     }
    /// });
    /// let handle = TokenRefreshLayer::builder(source)
    ///     .initial_tokens(TokenSet::new("a1").with_refresh_token("r1"))
    ///     .build()
    ///     .handle();
    /// handle.force_refresh().await.unwrap();
    /// # }
    /// ```
    pub fn refresh_token(&self) -> Option<&Secret> {
        self.current().and_then(TokenSet::refresh_token)
    }

    /// The current access token, if any (some APIs refresh with it).
    ///
    /// ```
    /// use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// // A sliding session: the current access token buys the next one.
    /// let source = refresh_fn(|ctx| {
    ///     let current = ctx.access_token().map(|t| t.expose().to_owned());
    ///     async move {
    ///         let current = current.ok_or_else(|| RefreshError::terminal("no session"))?;
    ///         Ok(TokenSet::new(format!("{current}+")))
    ///     }
    /// });
    /// let handle = TokenRefreshLayer::builder(source)
    ///     .initial_tokens(TokenSet::new("s"))
    ///     .build()
    ///     .handle();
    /// handle.force_refresh().await.unwrap();
    /// assert_eq!(handle.tokens().unwrap().access_token().expose(), "s+");
    /// # }
    /// ```
    ///
    /// `None` too for one that could never be sent (blank, or not a header
    /// value), as in tokens started from a saved refresh token alone
    /// ([`TokenSet::from_refresh_token`]): found in review, a sliding
    /// session presented it as `Authorization: Bearer ` with nothing after.
    pub fn access_token(&self) -> Option<&Secret> {
        self.current()
            .filter(|tokens| crate::manager::makes_header(tokens))
            .map(TokenSet::access_token)
    }
}

impl fmt::Debug for RefreshContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefreshContext")
            .field("reason", &self.reason)
            .field("current", &self.current)
            .finish()
    }
}

/// A source of fresh tokens.
///
/// Implementations perform one refresh per call; the manager makes one call
/// at a time, runs it in its own task with a timeout, and shares the result
/// with every waiting request. A returned set without a refresh token keeps
/// the previous refresh token.
///
/// Two cases leave a call running while the next one starts, so a source
/// must not rely on having a single caller: a refresh overtaken by
/// [`TokenHandle::set_tokens`](crate::TokenHandle::set_tokens) goes on
/// to its end (its result is discarded), and a refresh whose runtime
/// stopped driving it past its deadline is replaced by one on a runtime
/// that still runs (waiting for it could hold every request up for as
/// long as that runtime stays idle).
///
/// ```
/// use std::future::Future;
/// # use std::convert::Infallible;
/// # use http::{Request, Response};
/// # use tower::{ServiceBuilder, ServiceExt};
/// use tower_token_refresh::{Refresh, RefreshContext, RefreshError, TokenRefreshLayer, TokenSet};
///
/// struct Static;
///
/// impl Refresh for Static {
///     fn refresh(&self, _ctx: RefreshContext)
///         -> impl Future<Output = Result<TokenSet, RefreshError>> + Send {
///         async { Ok(TokenSet::new("static-token")) }
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let client = ServiceBuilder::new()
///     .layer(TokenRefreshLayer::builder(Static).build())
///     .service_fn(|req: Request<_>| async move {
///         let bearer = req.headers()["authorization"].to_str().unwrap().to_owned();
///         Ok::<_, Infallible>(Response::new(bearer))
///     });
/// // No token yet: the layer asks `Static` for one before sending.
/// let request = Request::new(http_body_util::Empty::<bytes::Bytes>::new());
/// assert_eq!(client.oneshot(request).await.unwrap().body(), "Bearer static-token");
/// # }
/// ```
pub trait Refresh: Send + Sync + 'static {
    /// Obtains a new token set.
    ///
    /// Called by the layer, one call at a time per layer but for the two
    /// cases above; an error says by its [class](crate::FailureClass)
    /// what the layer does next.
    ///
    /// ```
    /// use std::future::Future;
    /// use tower_token_refresh::{Refresh, RefreshContext, RefreshError, TokenRefreshLayer, TokenSet};
    ///
    /// struct Counter(std::sync::atomic::AtomicU32);
    ///
    /// impl Refresh for Counter {
    ///     fn refresh(&self, _ctx: RefreshContext)
    ///         -> impl Future<Output = Result<TokenSet, RefreshError>> + Send {
    ///         let n = self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
    ///         async move { Ok(TokenSet::new(format!("token-{n}"))) }
    ///     }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let handle = TokenRefreshLayer::builder(Counter(0.into())).build().handle();
    /// handle.force_refresh().await.unwrap();
    /// handle.force_refresh().await.unwrap();
    /// assert_eq!(handle.tokens().unwrap().access_token().expose(), "token-2");
    /// # }
    /// ```
    fn refresh(
        &self,
        ctx: RefreshContext,
    ) -> impl Future<Output = Result<TokenSet, RefreshError>> + Send;

    /// Whether tokens must be renewed even when no request needs them,
    /// because the credential this source refreshes with dies with the
    /// access token (a sliding session, as in Ocient's `token_refresh`).
    /// The layer then turns its background refresh on unless
    /// [`Builder::background_refresh`](crate::Builder::background_refresh)
    /// says otherwise. Default: `false`.
    ///
    /// ```
    /// use std::future::Future;
    /// use tower_token_refresh::{Refresh, RefreshContext, RefreshError, TokenSet};
    ///
    /// struct Sliding;
    ///
    /// impl Refresh for Sliding {
    ///     fn refresh(&self, ctx: RefreshContext)
    ///         -> impl Future<Output = Result<TokenSet, RefreshError>> + Send {
    ///         let current = ctx.access_token().map(|t| t.expose().to_owned());
    ///         async move { Ok(TokenSet::new(format!("{}+", current.unwrap_or_default()))) }
    ///     }
    ///
    ///     fn needs_background_refresh(&self) -> bool {
    ///         true
    ///     }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
    /// use std::time::Duration;
    /// use tower_token_refresh::TokenRefreshLayer;
    /// let handle = TokenRefreshLayer::builder(Sliding)
    ///     .initial_tokens(TokenSet::new("t").with_expires_in(Duration::from_secs(600)))
    ///     .build()
    ///     .handle();
    /// // No request at all, yet the token is renewed before it dies.
    /// tokio::time::sleep(Duration::from_secs(599)).await;
    /// assert!(handle.stats().refreshes >= 1);
    /// assert!(handle.tokens().unwrap().access_token().expose().starts_with("t+"));
    /// # }
    /// ```
    fn needs_background_refresh(&self) -> bool {
        false
    }

    /// The advisory window this source's tokens need, where the layer's
    /// default (`min(lifetime / 2, 5 min)` before expiry) leaves too little
    /// time: for a sliding session, half the lifetime (what Ocient's
    /// `token_refresh` documents as common practice), as its credential
    /// dies with the access token and the server may stop renewing it
    /// sooner. [`Builder::advisory_window`](crate::Builder::advisory_window)
    /// overrides it. Default: `None`, the layer's default.
    ///
    /// ```
    /// use std::future::Future;
    /// use std::time::Duration;
    /// use tower_token_refresh::{
    ///     Refresh, RefreshContext, RefreshError, RefreshWindow, TokenRefreshLayer, TokenSet,
    ///     TokenState,
    /// };
    ///
    /// struct Sliding;
    ///
    /// impl Refresh for Sliding {
    ///     fn refresh(&self, _ctx: RefreshContext)
    ///         -> impl Future<Output = Result<TokenSet, RefreshError>> + Send {
    ///         async { Ok(TokenSet::new("renewed").with_expires_in(Duration::from_secs(3600))) }
    ///     }
    ///
    ///     fn advisory_window(&self) -> Option<RefreshWindow> {
    ///         Some(RefreshWindow::fraction(0.5))
    ///     }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
    /// let hour = TokenSet::new("first").with_expires_in(Duration::from_secs(3600));
    /// let handle = TokenRefreshLayer::builder(Sliding).initial_tokens(hour).build().handle();
    /// // Stale at half its hour, not 5 minutes before its end.
    /// tokio::time::advance(Duration::from_secs(1801)).await;
    /// assert_eq!(handle.status().state(), TokenState::Stale);
    /// # }
    /// ```
    fn advisory_window(&self) -> Option<RefreshWindow> {
        None
    }
}

/// A [`Refresh`] source made from an async closure.
///
/// # Clone
///
/// Cloning clones the closure.
///
/// ```
/// use tower_token_refresh::{refresh_fn, RefreshError, RefreshFn, TokenRefreshLayer, TokenSet};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let source: RefreshFn<_> = refresh_fn(|_| async { Ok::<_, RefreshError>(TokenSet::new("t")) });
/// // Two layers (two APIs, say), each refreshing on its own with the same closure.
/// let first = TokenRefreshLayer::builder(source.clone()).build().handle();
/// let second = TokenRefreshLayer::builder(source).build().handle();
/// first.force_refresh().await.unwrap();
/// assert!(first.status().has_token());
/// assert!(!second.status().has_token());
/// # }
/// ```
#[derive(Clone)]
pub struct RefreshFn<F> {
    f: F,
}

/// Makes a [`Refresh`] source from a closure returning a future.
///
/// ```
/// use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let source = refresh_fn(|ctx| async move {
///     match ctx.refresh_token() {
///         Some(_) => Ok(TokenSet::new("next")),
///         None => Err(RefreshError::terminal("no refresh token")),
///     }
/// });
/// let handle = TokenRefreshLayer::builder(source.clone())
///     .initial_tokens(TokenSet::new("first").with_refresh_token("r"))
///     .build()
///     .handle();
/// handle.force_refresh().await.unwrap();
/// assert_eq!(handle.tokens().unwrap().access_token().expose(), "next");
///
/// // With nothing to refresh from, the closure's terminal error is the answer.
/// let empty = TokenRefreshLayer::builder(source).build().handle();
/// let error = empty.force_refresh().await.unwrap_err();
/// assert_eq!(error.refresh_error().unwrap().message(), "no refresh token");
/// # }
/// ```
pub fn refresh_fn<F, Fut>(f: F) -> RefreshFn<F>
where
    F: Fn(RefreshContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<TokenSet, RefreshError>> + Send + 'static,
{
    RefreshFn { f }
}

impl<F, Fut> Refresh for RefreshFn<F>
where
    F: Fn(RefreshContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<TokenSet, RefreshError>> + Send + 'static,
{
    fn refresh(
        &self,
        ctx: RefreshContext,
    ) -> impl Future<Output = Result<TokenSet, RefreshError>> + Send {
        (self.f)(ctx)
    }
}

/// One source shared: by two layers, or as one layer's source and its
/// [login](crate::Builder::login), without being `Clone`.
///
/// ```
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use std::sync::Arc;
/// use tower_token_refresh::{Refresh, RefreshContext, RefreshError, TokenRefreshLayer, TokenSet};
///
/// /// Not `Clone`: it counts the calls made through every layer.
/// struct Counted(AtomicUsize);
///
/// impl Refresh for Counted {
///     async fn refresh(&self, _ctx: RefreshContext) -> Result<TokenSet, RefreshError> {
///         let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
///         Ok(TokenSet::new(format!("token-{n}")))
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let source = Arc::new(Counted(AtomicUsize::new(0)));
/// let first = TokenRefreshLayer::builder(Arc::clone(&source)).build().handle();
/// let second = TokenRefreshLayer::builder(Arc::clone(&source)).build().handle();
/// first.force_refresh().await.unwrap();
/// second.force_refresh().await.unwrap();
/// assert_eq!(second.tokens().unwrap().access_token().expose(), "token-2");
/// # }
/// ```
impl<R: Refresh> Refresh for Arc<R> {
    fn refresh(
        &self,
        ctx: RefreshContext,
    ) -> impl Future<Output = Result<TokenSet, RefreshError>> + Send {
        R::refresh(self, ctx)
    }

    fn needs_background_refresh(&self) -> bool {
        R::needs_background_refresh(self)
    }

    fn advisory_window(&self) -> Option<RefreshWindow> {
        R::advisory_window(self)
    }
}

impl<F> fmt::Debug for RefreshFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefreshFn").finish_non_exhaustive()
    }
}

pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Object-safe form of [`Refresh`], so the layer's type does not name the
/// source. Boxing happens once per refresh, never per request.
pub(crate) trait DynRefresh: Send + Sync + 'static {
    fn refresh_boxed(
        self: Arc<Self>,
        ctx: RefreshContext,
    ) -> BoxFuture<Result<TokenSet, RefreshError>>;
}

impl<R: Refresh> DynRefresh for R {
    fn refresh_boxed(
        self: Arc<Self>,
        ctx: RefreshContext,
    ) -> BoxFuture<Result<TokenSet, RefreshError>> {
        Box::pin(async move { self.refresh(ctx).await })
    }
}
