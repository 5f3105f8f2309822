//! `Builder`: every knob of the layer, with the defaults from the design.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::Uri;

use super::layer::{Core, TokenRefreshLayer};
use super::transport::{Origin, TransportRules};
use crate::body::DEFAULT_REPLAY_CAP;
use crate::classify::{ClassifyRejection, Unauthorized};
use crate::manager::{window::RefreshWindow, Backoff, Config, TokenManager};
use crate::refresh::{BoxFuture, DynRefresh};
use crate::store::TokenStore;
use crate::{Refresh, TokenSet};

/// Configures a [`TokenRefreshLayer`]; made by [`TokenRefreshLayer::builder`].
///
/// ```
/// use std::convert::Infallible;
/// use std::time::Duration;
/// use http::{Request, Response};
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_token_refresh::{refresh_fn, RefreshError, RefreshWindow, TokenRefreshLayer, TokenSet, TokenState};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// let layer = TokenRefreshLayer::builder(refresh_fn(|_ctx| async {
///         Ok::<_, RefreshError>(TokenSet::new("t").with_expires_in(Duration::from_secs(60)))
///     }))
///     .advisory_window(RefreshWindow::fixed(Duration::from_secs(10)))
///     .refresh_timeout(Duration::from_secs(5))
///     .replay_cap(16 * 1024)
///     .build();
/// let handle = layer.handle();
/// let client = ServiceBuilder::new().layer(layer).service_fn(|req: Request<_>| async move {
///     let bearer = req.headers()["authorization"].to_str().unwrap().to_owned();
///     Ok::<_, Infallible>(Response::new(bearer))
/// });
/// let request = Request::new(http_body_util::Empty::<bytes::Bytes>::new());
/// assert_eq!(client.oneshot(request).await.unwrap().body(), "Bearer t");
/// // The 60 s token turns stale 10 s before its expiry, not before.
/// tokio::time::advance(Duration::from_secs(49)).await;
/// assert_eq!(handle.status().state(), TokenState::Fresh);
/// tokio::time::advance(Duration::from_secs(2)).await;
/// assert_eq!(handle.status().state(), TokenState::Stale);
/// # }
/// ```
#[must_use = "a builder does nothing until `build` is called"]
pub struct Builder<C = Unauthorized> {
    refresher: Arc<dyn DynRefresh>,
    config: Config,
    initial: Option<TokenSet>,
    classifier: C,
    reactive_retry: bool,
    replay_cap: usize,
    rules: TransportRules,
}

impl Builder<Unauthorized> {
    pub(super) fn new<R: Refresh>(refresher: R) -> Self {
        let defaults = Config::default();
        let config = Config {
            background: refresher.needs_background_refresh(),
            advisory: refresher.advisory_window().unwrap_or(defaults.advisory),
            ..defaults
        };
        Self {
            refresher: Arc::new(refresher),
            config,
            initial: None,
            classifier: Unauthorized,
            reactive_retry: true,
            replay_cap: DEFAULT_REPLAY_CAP,
            rules: TransportRules::default(),
        }
    }
}

impl<C> Builder<C> {
    /// Tokens to start with. Without them, the first request acquires one
    /// (with [`RefreshReason::Initial`](crate::RefreshReason::Initial)).
    /// An access token that is not a valid header value is never sent:
    /// with a refresh token beside it (a refused answer the
    /// [`on_refresh`](Self::on_refresh) hook persisted), the first request
    /// refreshes from them ([`TokenSet::from_refresh_token`] makes such a
    /// set from a saved refresh token alone); without one, the layer starts
    /// as if no tokens were given: the first request gets a token from the
    /// [login source](Self::login) if one is set, and otherwise from the
    /// refresh source (which a client-credentials source can serve).
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};
    /// # let source = refresh_fn(|_| async { Ok::<_, RefreshError>(TokenSet::new("t")) });
    /// let layer = TokenRefreshLayer::builder(source)
    ///     .initial_tokens(TokenSet::new("a").with_refresh_token("r"))
    ///     .build();
    /// assert!(layer.handle().status().has_token());
    /// ```
    pub fn initial_tokens(mut self, tokens: TokenSet) -> Self {
        self.initial = Some(tokens);
        self
    }

    /// When a token turns stale: requests still use it while one background
    /// refresh runs. Default: `min(lifetime / 2, 5 min)` before expiry, or
    /// the refresh source's [own](crate::Refresh::advisory_window) (the
    /// `ocient` preset's is half the lifetime).
    ///
    /// ```
    /// # use std::{convert::Infallible, time::Duration};
    /// # use http::{Request, Response};
    /// # use tower::{ServiceBuilder, ServiceExt};
    /// # use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
    /// # let source = refresh_fn(|_| async { Ok::<_, RefreshError>(TokenSet::new("new")) });
    /// use tower_token_refresh::RefreshWindow;
    /// let layer = TokenRefreshLayer::builder(source)
    ///     .initial_tokens(TokenSet::new("old").with_expires_in(Duration::from_secs(100)))
    ///     // Stale from 40 s (the default, half the lifetime, would wait until 50 s).
    ///     .advisory_window(RefreshWindow::fraction(0.6).at_most(Duration::from_secs(300)))
    ///     .build();
    /// let handle = layer.handle();
    /// let client = ServiceBuilder::new().layer(layer).service_fn(|req: Request<_>| async move {
    ///     Ok::<_, Infallible>(Response::new(req.headers()["authorization"].to_str().unwrap().to_owned()))
    /// });
    /// let send = || client.clone().oneshot(Request::new(http_body_util::Empty::<bytes::Bytes>::new()));
    ///
    /// tokio::time::advance(Duration::from_secs(41)).await;
    /// // Sent with the stale token at once, while one refresh runs in the background.
    /// assert_eq!(send().await.unwrap().body(), "Bearer old");
    /// assert_eq!((handle.stats().refreshes, handle.stats().waited), (1, 0));
    /// tokio::time::sleep(Duration::from_secs(1)).await;
    /// assert_eq!(send().await.unwrap().body(), "Bearer new");
    /// # }
    /// ```
    pub fn advisory_window(mut self, window: RefreshWindow) -> Self {
        self.config.advisory = window;
        self
    }

    /// When a token counts as expired: requests wait for a new one. Default:
    /// `min(lifetime / 10, 10 s)` before expiry. Never larger than the
    /// advisory window. A token just refreshed that arrives already inside
    /// this window is still sent, until it expires, for the
    /// [minimum refresh interval](Self::min_refresh_interval) after it came:
    /// refreshing again at once would only get another like it.
    ///
    /// ```
    /// # use std::{convert::Infallible, time::Duration};
    /// # use http::{Request, Response};
    /// # use tower::{ServiceBuilder, ServiceExt};
    /// # use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
    /// # let source = refresh_fn(|_| async { Ok::<_, RefreshError>(TokenSet::new("new")) });
    /// use tower_token_refresh::RefreshWindow;
    /// let layer = TokenRefreshLayer::builder(source)
    ///     .initial_tokens(TokenSet::new("old").with_expires_in(Duration::from_secs(100)))
    ///     // Expired from 70 s (the default, 10 s, would send it until 90 s).
    ///     .mandatory_window(RefreshWindow::fixed(Duration::from_secs(30)))
    ///     .build();
    /// let handle = layer.handle();
    /// let client = ServiceBuilder::new().layer(layer).service_fn(|req: Request<_>| async move {
    ///     Ok::<_, Infallible>(Response::new(req.headers()["authorization"].to_str().unwrap().to_owned()))
    /// });
    ///
    /// tokio::time::advance(Duration::from_secs(71)).await;
    /// let request = Request::new(http_body_util::Empty::<bytes::Bytes>::new());
    /// // Not sent with "old": the request waited for the new token.
    /// assert_eq!(client.oneshot(request).await.unwrap().body(), "Bearer new");
    /// assert_eq!(handle.stats().waited, 1);
    /// # }
    /// ```
    pub fn mandatory_window(mut self, window: RefreshWindow) -> Self {
        self.config.mandatory = window;
        self
    }

    /// How long one refresh call may take before it counts as a transient
    /// failure. Default: 10 s. It also bounds the `on_refresh` hook, each
    /// store call, and for a rejected request, the wait for the transport
    /// to let go of its body and then the reading of the rejection's body
    /// (each its own bound), so a very short timeout (zero: every call that does not
    /// answer at its first poll) fails refreshes that would have succeeded.
    /// A timeout too long for the clock (`Duration::MAX`) means no bound at
    /// all: a call that never answers then holds its waiting requests for
    /// good, unless a timeout of their own (above the layer) ends them.
    ///
    /// ```
    /// # use std::{convert::Infallible, time::Duration};
    /// # use http::{Request, Response};
    /// # use tower::{ServiceBuilder, ServiceExt};
    /// # use tower_token_refresh::{refresh_fn, Error, RefreshError, TokenRefreshLayer, TokenSet};
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
    /// // An identity server that never answers.
    /// let source = refresh_fn(|_| std::future::pending::<Result<TokenSet, RefreshError>>());
    /// let layer = TokenRefreshLayer::builder(source).refresh_timeout(Duration::from_secs(3)).build();
    /// let client = ServiceBuilder::new().layer(layer).service_fn(|_req: Request<_>| async {
    ///     Ok::<_, Infallible>(Response::new(String::new()))
    /// });
    ///
    /// let started = tokio::time::Instant::now();
    /// let request = Request::new(http_body_util::Empty::<bytes::Bytes>::new());
    /// let error = client.oneshot(request).await.unwrap_err();
    /// assert!(error.downcast_ref::<Error>().unwrap().is_timeout());
    /// // Given up after 3 s, not the default 10 s.
    /// let waited = started.elapsed();
    /// assert!(waited >= Duration::from_secs(3) && waited < Duration::from_secs(4), "{waited:?}");
    /// # }
    /// ```
    pub fn refresh_timeout(mut self, timeout: Duration) -> Self {
        self.config.refresh_timeout = timeout;
        self
    }

    /// A token we refreshed less than this long ago is not refreshed again
    /// when a server rejects it; the rejection is returned as it is (unless
    /// a refresh is already running, which the request waits for and is
    /// retried with; should that refresh fail, it gets its error). Protects
    /// the identity server from an API that misuses 401. Default: 5 s. It
    /// also holds back proactive refresh for that long (one second at
    /// least, or half the token's lifetime, if shorter) after a refresh.
    ///
    /// ```
    /// # use std::{convert::Infallible, time::Duration};
    /// # use http::{Request, Response, StatusCode};
    /// # use tower::{ServiceBuilder, ServiceExt};
    /// # use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
    /// # let source = refresh_fn(|_| async { Ok::<_, RefreshError>(TokenSet::new("t")) });
    /// let layer = TokenRefreshLayer::builder(source).min_refresh_interval(Duration::from_secs(1)).build();
    /// let handle = layer.handle();
    /// // An API that rejects every token.
    /// let client = ServiceBuilder::new().layer(layer).service_fn(|_req: Request<_>| async {
    ///     Ok::<_, Infallible>(Response::builder().status(StatusCode::UNAUTHORIZED).body(String::new()).unwrap())
    /// });
    /// let send = || client.clone().oneshot(Request::new(http_body_util::Empty::<bytes::Bytes>::new()));
    ///
    /// // Its token was refreshed just now (the first one): the rejection is returned.
    /// assert_eq!(send().await.unwrap().status(), StatusCode::UNAUTHORIZED);
    /// assert_eq!((handle.stats().refreshes, handle.stats().retries), (1, 0));
    /// // Past the interval (the default, 5 s, is not): refreshed, and retried once.
    /// tokio::time::sleep(Duration::from_secs(2)).await;
    /// assert_eq!(send().await.unwrap().status(), StatusCode::UNAUTHORIZED);
    /// assert_eq!((handle.stats().refreshes, handle.stats().retries), (2, 1));
    /// # }
    /// ```
    pub fn min_refresh_interval(mut self, interval: Duration) -> Self {
        self.config.min_refresh_interval = interval;
        self
    }

    /// Backoff after transient failures and rate limits; a rate limit's
    /// `Retry-After` is waited out up to an hour (a longer one is cut to an
    /// hour), and never less than this.
    /// Default: 1 s doubling to 60 s, with jitter. A zero backoff waits
    /// for nothing: while the source fails, each request that needs a
    /// token tries again.
    ///
    /// ```
    /// # use std::{convert::Infallible, time::Duration};
    /// # use http::{Request, Response};
    /// # use tower::{ServiceBuilder, ServiceExt};
    /// # use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
    /// use tower_token_refresh::Backoff;
    /// // An identity server that is down.
    /// let source = refresh_fn(|_| async { Err::<TokenSet, _>(RefreshError::transient("503")) });
    /// let layer = TokenRefreshLayer::builder(source)
    ///     // The first wait: 5 to 10 s (the default's is 0.5 to 1 s).
    ///     .backoff(Backoff::new(Duration::from_secs(10), Duration::from_secs(60)))
    ///     .build();
    /// let handle = layer.handle();
    /// let client = ServiceBuilder::new().layer(layer).service_fn(|_req: Request<_>| async {
    ///     Ok::<_, Infallible>(Response::new(String::new()))
    /// });
    /// let send = || client.clone().oneshot(Request::new(http_body_util::Empty::<bytes::Bytes>::new()));
    ///
    /// assert!(send().await.is_err()); // the first refresh failed
    /// tokio::time::sleep(Duration::from_secs(4)).await;
    /// assert!(send().await.is_err()); // failed fast: no refresh inside the backoff
    /// assert_eq!(handle.stats().refreshes, 1);
    /// tokio::time::sleep(Duration::from_secs(7)).await;
    /// assert!(send().await.is_err()); // past it: tried (and failed) again
    /// assert_eq!(handle.stats().refreshes, 2);
    /// # }
    /// ```
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.config.backoff = backoff;
        self
    }

    /// A login source: called for the first tokens when none were given
    /// (or none that can be sent, with no refresh token beside them), and
    /// once more whenever the refresh credential is rejected for good
    /// (a terminal refresh failure), instead of failing every request until
    /// new tokens are set. The login runs inside the refresh flight, so it
    /// is single-flight like any refresh, and is counted in
    /// [`Stats::logins`](crate::Stats::logins). If the login fails too, its
    /// error is the refresh's error.
    ///
    /// Any [`Refresh`] source can log in: a closure through
    /// [`refresh_fn`](crate::refresh_fn), or an OAuth2
    /// [`client_credentials`](crate::http::HttpRefresher::client_credentials)
    /// grant.
    ///
    /// ```
    /// # use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// # let refresher = refresh_fn(|_| async { Err::<TokenSet, _>(RefreshError::terminal("revoked")) });
    /// let layer = TokenRefreshLayer::builder(refresher)
    ///     .login(refresh_fn(|_ctx| async {
    ///         // Sign in with a stored credential here.
    ///         Ok::<_, RefreshError>(TokenSet::new("signed-in").with_refresh_token("r2"))
    ///     }))
    ///     .initial_tokens(TokenSet::new("old").with_refresh_token("revoked"))
    ///     .build();
    /// let handle = layer.handle();
    /// handle.force_refresh().await.unwrap();
    /// assert_eq!(handle.tokens().unwrap().access_token().expose(), "signed-in");
    /// assert_eq!(handle.stats().logins, 1);
    /// # }
    /// ```
    pub fn login<L: Refresh>(mut self, source: L) -> Self {
        self.config.login = Some(Arc::new(source));
        self
    }

    /// Shares tokens through `store` with other processes (or layers), or
    /// keeps them across restarts: see [`store`](crate::store) for the
    /// protocol. The lease a refresh holds lives for the work under it (the
    /// refresh call, the login call if a [login source](Self::login) is
    /// set, the hook, and two store calls, each bounded by the
    /// [refresh timeout](Self::refresh_timeout)) plus a second. A request
    /// that has to wait for a token (none yet, expired, or rejected) may
    /// wait out the lease of a holder that crashed, then the refresh that
    /// takes over: at most twice the lease, plus twice the store's
    /// [poll interval](TokenStore::poll_interval), plus four refresh
    /// timeouts and a second. With the defaults (a 10 s refresh timeout, no
    /// login source, a 250 ms poll interval) that is about two minutes.
    /// Default: no store.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};
    /// use tower_token_refresh::store::MemoryStore;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// # let source = || refresh_fn(|_| async { Ok::<_, RefreshError>(TokenSet::new("t")) });
    /// let store = MemoryStore::new();
    /// let a = TokenRefreshLayer::builder(source()).store(store.clone()).build();
    /// let b = TokenRefreshLayer::builder(source()).store(store).build();
    /// a.handle().force_refresh().await.unwrap();
    /// // `b` is told of the new version and adopts it, with no refresh, once
    /// // its watcher task has run.
    /// for _ in 0..10 {
    ///     tokio::task::yield_now().await;
    /// }
    /// assert_eq!(b.handle().tokens().unwrap().access_token().expose(), "t");
    /// assert_eq!(b.handle().stats().refreshes, 0);
    /// # }
    /// ```
    pub fn store<S: TokenStore>(mut self, store: S) -> Self {
        self.config.store = Some(Arc::new(store));
        self
    }

    /// Refresh at the advisory point even when no request arrives (needed
    /// by sliding-refresh APIs whose token cannot refresh itself once
    /// expired). Default: off, unless the refresh source says it
    /// [needs it](crate::Refresh::needs_background_refresh) (the `ocient`
    /// preset does).
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
    /// # let source = refresh_fn(|_| async { Ok::<_, RefreshError>(TokenSet::new("new")) });
    /// let layer = TokenRefreshLayer::builder(source)
    ///     .initial_tokens(TokenSet::new("old").with_expires_in(Duration::from_secs(100)))
    ///     .background_refresh(true)
    ///     .build();
    /// let handle = layer.handle();
    /// // No request at all: the timer refreshes at the advisory point, 50 s here.
    /// tokio::time::sleep(Duration::from_secs(49)).await;
    /// assert_eq!(handle.stats().refreshes, 0);
    /// tokio::time::sleep(Duration::from_secs(2)).await;
    /// assert_eq!(handle.stats().refreshes, 1);
    /// assert_eq!(handle.tokens().unwrap().access_token().expose(), "new");
    /// # }
    /// ```
    pub fn background_refresh(mut self, enabled: bool) -> Self {
        self.config.background = enabled;
        self
    }

    /// Called with every new token set before any request can use it, e.g.
    /// to persist a rotated refresh token. Bounded by the refresh timeout:
    /// past it the tokens are used, and the hook runs on. A hook still
    /// running when the next refresh's hook starts (past its timeout, or
    /// that of a refresh overtaken by `set_tokens`) is cancelled by it, at
    /// its next `.await`, as its tokens are older: a late hook does not
    /// persist a refresh token after a newer one, and tokens whose hook a
    /// later refresh's hook cancelled, or started before, are not
    /// installed. Work a cancelled hook has handed off (a blocking write, a
    /// request sent) may still land: write to a temporary file and rename
    /// it, or make writes conditional.
    /// Also called (unless a later refresh's hook has started already)
    /// with an answer the layer refuses (its access token
    /// already expired, or not a valid header value) if it rotated the
    /// refresh token: no request uses it, but its refresh token is the live
    /// one, and the next refresh starts from it (as it does when such
    /// tokens are given back as [initial tokens](Self::initial_tokens)).
    /// An answer an [`HttpRefresher`](crate::http::HttpRefresher) refuses
    /// for what it lacks comes as its new refresh token beside an access
    /// token that is not a header value.
    /// Tokens a refresh overtaken by [`set_tokens`](crate::TokenHandle::set_tokens)
    /// fetched are shown too, though the layer keeps the tokens set,
    /// unless a later refresh has shown its own already.
    /// With a [store](Self::store), it runs only in the process that
    /// fetched the tokens, not in those that adopt them. The hook's future
    /// outlives the call (`'static`): copy what it needs out of `tokens`
    /// before its `async move`, as below. A process that saved only the
    /// refresh token starts again from
    /// [`TokenSet::from_refresh_token`](crate::TokenSet::from_refresh_token). Should the
    /// refresh's runtime shut down while the hook runs, the tokens are
    /// installed all the same (the server may already have spent the
    /// refresh token they replace), whether or not the hook finished.
    ///
    /// ```
    /// # use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};
    /// use std::sync::{Arc, Mutex};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let saved = Arc::new(Mutex::new(None));
    /// let vault = Arc::clone(&saved);
    /// let layer = TokenRefreshLayer::builder(refresh_fn(|_| async {
    ///         Ok::<_, RefreshError>(TokenSet::new("t").with_refresh_token("rotated"))
    ///     }))
    ///     .on_refresh(move |tokens: &TokenSet| {
    ///         let rotated = tokens.refresh_token().map(|r| r.expose().to_owned());
    ///         let vault = Arc::clone(&vault);
    ///         async move { *vault.lock().unwrap() = rotated; /* write to disk, a vault, … */ }
    ///     })
    ///     .build();
    /// layer.handle().force_refresh().await.unwrap();
    /// // The hook ran before the refresh was done.
    /// assert_eq!(saved.lock().unwrap().as_deref(), Some("rotated"));
    /// # }
    /// ```
    pub fn on_refresh<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(&TokenSet) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.config.on_refresh = Some(Arc::new(move |tokens: &TokenSet| {
            Box::pin(hook(tokens)) as BoxFuture<()>
        }));
        self
    }

    /// Which responses count as a token rejection. Default: `401`, but
    /// one whose Bearer challenge says `error="insufficient_scope"`
    /// ([`classify::Unauthorized`](crate::classify::Unauthorized)).
    ///
    /// ```
    /// # use std::convert::Infallible;
    /// # use http::{Request, Response};
    /// # use tower::{ServiceBuilder, ServiceExt};
    /// # use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use tower_token_refresh::classify::Grpc;
    /// let layer = TokenRefreshLayer::builder(refresh_fn(|_| async {
    ///         Ok::<_, RefreshError>(TokenSet::new("new"))
    ///     }))
    ///     .classifier(Grpc)
    ///     .initial_tokens(TokenSet::new("old"))
    ///     .build();
    /// let handle = layer.handle();
    /// // A gRPC server: HTTP 200, with `grpc-status: 16` (UNAUTHENTICATED) for "old".
    /// let client = ServiceBuilder::new().layer(layer).service_fn(|req: Request<_>| async move {
    ///     let status = if req.headers()["authorization"] == "Bearer old" { "16" } else { "0" };
    ///     Ok::<_, Infallible>(Response::builder().header("grpc-status", status).body(String::new()).unwrap())
    /// });
    /// let request = Request::new(http_body_util::Empty::<bytes::Bytes>::new());
    /// let response = client.oneshot(request).await.unwrap();
    /// // Taken for a rejection (the default, `401`s only, would not): refreshed and retried.
    /// assert_eq!(response.headers()["grpc-status"], "0");
    /// assert_eq!(handle.stats().retries, 1);
    /// # }
    /// ```
    pub fn classifier<C2: ClassifyRejection>(self, classifier: C2) -> Builder<C2> {
        Builder {
            refresher: self.refresher,
            config: self.config,
            initial: self.initial,
            classifier,
            reactive_retry: self.reactive_retry,
            replay_cap: self.replay_cap,
            rules: self.rules,
        }
    }

    /// Whether a rejected request is sent again once with a new token.
    /// Default: on. Off, the layer keeps no copy of the request and costs
    /// close to what a static header costs (the README's "Performance"
    /// section has the measured ratio); rejections still trigger a refresh.
    ///
    /// ```
    /// # use std::convert::Infallible;
    /// # use http::{Request, Response, StatusCode};
    /// # use tower::{ServiceBuilder, ServiceExt};
    /// # use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// # let source = refresh_fn(|_| async { Ok::<_, RefreshError>(TokenSet::new("new")) });
    /// let layer = TokenRefreshLayer::builder(source)
    ///     .initial_tokens(TokenSet::new("old"))
    ///     .reactive_retry(false)
    ///     .build();
    /// let handle = layer.handle();
    /// // An API that only accepts the new token.
    /// let client = ServiceBuilder::new().layer(layer).service_fn(|req: Request<_>| async move {
    ///     let ok = req.headers()["authorization"] == "Bearer new";
    ///     let status = if ok { StatusCode::OK } else { StatusCode::UNAUTHORIZED };
    ///     Ok::<_, Infallible>(Response::builder().status(status).body(String::new()).unwrap())
    /// });
    /// let send = || client.clone().oneshot(Request::new(http_body_util::Empty::<bytes::Bytes>::new()));
    ///
    /// // The rejection is the answer; the refresh it started serves the next request.
    /// assert_eq!(send().await.unwrap().status(), StatusCode::UNAUTHORIZED);
    /// assert_eq!(send().await.unwrap().status(), StatusCode::OK);
    /// assert_eq!((handle.stats().refreshes, handle.stats().retries), (1, 0));
    /// # }
    /// ```
    pub fn reactive_retry(mut self, enabled: bool) -> Self {
        self.reactive_retry = enabled;
        self
    }

    /// How many body bytes are kept for a retry; larger bodies are not
    /// retried, nor are bodies of more data frames than `cap / 64` (at
    /// least 64: each frame kept costs memory besides its bytes, an empty
    /// one too). Nothing is kept once a response is accepted, even while
    /// the transport still sends the body. Default: 64 KiB.
    ///
    /// ```
    /// # use std::convert::Infallible;
    /// # use bytes::Bytes;
    /// # use http::{Request, Response, StatusCode};
    /// # use http_body_util::Full;
    /// # use tower::{ServiceBuilder, ServiceExt};
    /// # use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// # let source = refresh_fn(|_| async { Ok::<_, RefreshError>(TokenSet::new("new")) });
    /// let layer = TokenRefreshLayer::builder(source)
    ///     .initial_tokens(TokenSet::new("old"))
    ///     .replay_cap(4)
    ///     .build();
    /// let handle = layer.handle();
    /// // An API that only accepts the new token.
    /// let client = ServiceBuilder::new().layer(layer).service_fn(|req: Request<_>| async move {
    ///     let ok = req.headers()["authorization"] == "Bearer new";
    ///     let status = if ok { StatusCode::OK } else { StatusCode::UNAUTHORIZED };
    ///     Ok::<_, Infallible>(Response::builder().status(status).body(String::new()).unwrap())
    /// });
    /// let send = |body: &'static str| client.clone().oneshot(Request::new(Full::new(Bytes::from(body))));
    ///
    /// // 2 bytes fit the cap: "old" is rejected, the request sent again with "new".
    /// assert_eq!(send("ok").await.unwrap().status(), StatusCode::OK);
    /// // 7 bytes do not: the rejection is the answer.
    /// handle.set_tokens(TokenSet::new("old")).unwrap();
    /// assert_eq!(send("payload").await.unwrap().status(), StatusCode::UNAUTHORIZED);
    /// assert_eq!(handle.stats().retries, 1);
    /// # }
    /// ```
    pub fn replay_cap(mut self, cap: usize) -> Self {
        self.replay_cap = cap;
        self
    }

    /// Send the token over plain `http://` (or any scheme other than
    /// `https`, `unix` but for a hyperlocal socket path, and a `CONNECT`
    /// target to a port other than 443) to hosts that are not loopback:
    /// for instance over a transport of your own that
    /// encrypts below the HTTP client, or to a local socket addressed by an
    /// `http://` URI.
    /// Default: refused with [`Error::is_insecure_transport`](crate::Error::is_insecure_transport).
    ///
    /// ```
    /// # use std::convert::Infallible;
    /// # use bytes::Bytes;
    /// # use http::{Request, Response};
    /// # use http_body_util::Empty;
    /// # use tower::{ServiceBuilder, ServiceExt};
    /// # use tower_token_refresh::{refresh_fn, Error, RefreshError, TokenRefreshLayer, TokenSet};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// # let source = refresh_fn(|_| async { Ok::<_, RefreshError>(TokenSet::new("t")) });
    /// let api = tower::service_fn(|req: Request<_>| async move {
    ///     Ok::<_, Infallible>(Response::new(req.headers()["authorization"].to_str().unwrap().to_owned()))
    /// });
    /// let plain = || Request::get("http://api.example.com/").body(Empty::<Bytes>::new()).unwrap();
    ///
    /// let allowed = TokenRefreshLayer::builder(source.clone())
    ///     .initial_tokens(TokenSet::new("t"))
    ///     .allow_insecure_http(true)
    ///     .build();
    /// let client = ServiceBuilder::new().layer(allowed).service(api.clone());
    /// assert_eq!(client.oneshot(plain()).await.unwrap().body(), "Bearer t");
    ///
    /// // Without it, nothing is sent.
    /// let refused = TokenRefreshLayer::builder(source).initial_tokens(TokenSet::new("t")).build();
    /// let error = ServiceBuilder::new().layer(refused).service(api).oneshot(plain()).await.unwrap_err();
    /// assert!(error.downcast_ref::<Error>().unwrap().is_insecure_transport());
    /// # }
    /// ```
    pub fn allow_insecure_http(mut self, allowed: bool) -> Self {
        self.rules.allow_insecure = allowed;
        self
    }

    /// Only requests to these origins (`scheme://host[:port]`) get the
    /// token; others pass through untouched. Without a port, an origin
    /// means its scheme's default port; one given as a bare host (no
    /// scheme) matches that host on every scheme and port, plain http
    /// still refused unless allowed. A fully qualified host
    /// (`api.example.com.`) is the same host. A path or query is ignored
    /// (the whole origin gets the token), and an origin without a host or
    /// with port 0 matches nothing: each is logged as a warning, as is a
    /// list that matches nothing at all. A request whose `Host` header
    /// names another origin than its URI gets no token either: a front end
    /// routing by `Host` would hand it to that origin. Default: every
    /// origin.
    ///
    /// # Redirects
    ///
    /// Follow redirects above the layer (tower-http's `FollowRedirect`
    /// outside it), with this list naming your API: each hop then goes
    /// through the layer, a hop to another origin gets no token, and its
    /// answer is not taken for a rejection. Without the list such a hop
    /// gets the token. Below the layer the token rides along as far as the
    /// redirect follower lets it, and the last hop's `401` counts as a
    /// rejection wherever it came from.
    ///
    /// ```
    /// # use std::convert::Infallible;
    /// # use bytes::Bytes;
    /// # use http::{Request, Response};
    /// # use http_body_util::Empty;
    /// # use tower::{ServiceBuilder, ServiceExt};
    /// # use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let layer = TokenRefreshLayer::builder(refresh_fn(|_| async {
    ///         Ok::<_, RefreshError>(TokenSet::new("t"))
    ///     }))
    ///     .initial_tokens(TokenSet::new("t"))
    ///     .allowed_origins([http::Uri::from_static("https://api.example.com")])
    ///     .build();
    /// // Answers with the `Authorization` it got, or "none".
    /// let client = ServiceBuilder::new().layer(layer).service_fn(|req: Request<_>| async move {
    ///     let auth = req.headers().get("authorization").map_or("none", |v| v.to_str().unwrap());
    ///     Ok::<_, Infallible>(Response::new(auth.to_owned()))
    /// });
    /// let get = |uri: &'static str| client.clone().oneshot(Request::get(uri).body(Empty::<Bytes>::new()).unwrap());
    ///
    /// assert_eq!(get("https://api.example.com/v1/items").await.unwrap().body(), "Bearer t");
    /// // Another origin gets no token.
    /// assert_eq!(get("https://cdn.example.com/logo.png").await.unwrap().body(), "none");
    /// # }
    /// ```
    pub fn allowed_origins<I>(mut self, origins: I) -> Self
    where
        I: IntoIterator<Item = Uri>,
    {
        let parsed: Vec<Origin> = origins
            .into_iter()
            .filter_map(|uri| {
                // Only the host is logged: a path or query can hold a key.
                let host = uri.host().unwrap_or_default();
                let Some(origin) = Origin::of(&uri) else {
                    tracing::warn!(host, "an allowed origin without a host, or with port 0, matches no request");
                    return None;
                };
                if Origin::has_path_or_query(&uri) {
                    tracing::warn!(host, "an allowed origin's path and query are ignored: its whole origin gets the token");
                }
                Some(origin)
            })
            .collect();
        if parsed.is_empty() {
            tracing::warn!("the allowed origins match no request: none gets the token");
        }
        self.rules.origins = Some(parsed);
        self
    }

    /// Builds the layer. Inside a tokio runtime this spawns its watcher task
    /// (which marks tokens stale on time and, with a store, adopts what
    /// siblings announce; it also runs background refresh when that is on);
    /// outside one, the watcher starts on first use.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
    /// let source = refresh_fn(|_| async {
    ///     Ok::<_, RefreshError>(TokenSet::new("next").with_expires_in(Duration::from_secs(600)))
    /// });
    /// // A token 600 s long, due for a refresh halfway through its life.
    /// let layer = TokenRefreshLayer::builder(source)
    ///     .initial_tokens(TokenSet::new("first").with_expires_in(Duration::from_secs(600)))
    ///     .background_refresh(true)
    ///     .build();
    /// let handle = layer.handle();
    /// assert_eq!(handle.stats().refreshes, 0, "building refreshes nothing");
    ///
    /// // The watcher spawned by `build` refreshes on time, without a request.
    /// tokio::time::sleep(Duration::from_secs(301)).await;
    /// assert_eq!(handle.stats().refreshes, 1);
    /// assert_eq!(handle.tokens().unwrap().access_token().expose(), "next");
    /// # }
    /// ```
    pub fn build(self) -> TokenRefreshLayer<C> {
        let manager = TokenManager::new(self.refresher, self.config, self.initial);
        TokenRefreshLayer {
            core: Arc::new(Core {
                manager,
                classifier: self.classifier,
                reactive_retry: self.reactive_retry,
                replay_cap: self.replay_cap,
                rules: self.rules,
            }),
        }
    }
}

impl<C> std::fmt::Debug for Builder<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("initial_tokens", &self.initial)
            .field("reactive_retry", &self.reactive_retry)
            .field("replay_cap", &self.replay_cap)
            .finish_non_exhaustive()
    }
}
