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
/// use std::time::Duration;
/// use tower_token_refresh::{refresh_fn, RefreshError, RefreshWindow, TokenRefreshLayer, TokenSet};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let layer = TokenRefreshLayer::builder(refresh_fn(|_ctx| async {
///         Ok::<_, RefreshError>(TokenSet::new("t").with_expires_in(Duration::from_secs(60)))
///     }))
///     .advisory_window(RefreshWindow::fixed(Duration::from_secs(10)))
///     .refresh_timeout(Duration::from_secs(5))
///     .replay_cap(16 * 1024)
///     .build();
/// # let _ = layer;
/// # }
/// ```
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
        let config = Config {
            background: refresher.needs_background_refresh(),
            ..Config::default()
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
    /// refreshes from them; without one, the layer starts as if no tokens
    /// were given: the first request gets a token from the
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
    /// refresh runs. Default: `min(lifetime / 2, 5 min)` before expiry.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};
    /// # let source = refresh_fn(|_| async { Ok::<_, RefreshError>(TokenSet::new("t")) });
    /// use tower_token_refresh::RefreshWindow;
    /// let builder = TokenRefreshLayer::builder(source)
    ///     .advisory_window(RefreshWindow::fraction(0.25).at_most(Duration::from_secs(60)));
    /// # let _ = builder;
    /// ```
    pub fn advisory_window(mut self, window: RefreshWindow) -> Self {
        self.config.advisory = window;
        self
    }

    /// When a token counts as expired: requests wait for a new one. Default:
    /// `min(lifetime / 10, 10 s)` before expiry. Never larger than the
    /// advisory window.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};
    /// # let source = refresh_fn(|_| async { Ok::<_, RefreshError>(TokenSet::new("t")) });
    /// use tower_token_refresh::RefreshWindow;
    /// let builder = TokenRefreshLayer::builder(source)
    ///     .mandatory_window(RefreshWindow::fixed(Duration::from_secs(30)));
    /// # let _ = builder;
    /// ```
    pub fn mandatory_window(mut self, window: RefreshWindow) -> Self {
        self.config.mandatory = window;
        self
    }

    /// How long one refresh call may take before it counts as a transient
    /// failure. Default: 10 s.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};
    /// # let source = refresh_fn(|_| async { Ok::<_, RefreshError>(TokenSet::new("t")) });
    /// let builder = TokenRefreshLayer::builder(source).refresh_timeout(Duration::from_secs(3));
    /// # let _ = builder;
    /// ```
    pub fn refresh_timeout(mut self, timeout: Duration) -> Self {
        self.config.refresh_timeout = timeout;
        self
    }

    /// A token we refreshed less than this long ago is not refreshed again
    /// when a server rejects it; the rejection is returned as it is. Protects
    /// the identity server from an API that misuses 401. Default: 5 s.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};
    /// # let source = refresh_fn(|_| async { Ok::<_, RefreshError>(TokenSet::new("t")) });
    /// let builder = TokenRefreshLayer::builder(source).min_refresh_interval(Duration::from_secs(1));
    /// # let _ = builder;
    /// ```
    pub fn min_refresh_interval(mut self, interval: Duration) -> Self {
        self.config.min_refresh_interval = interval;
        self
    }

    /// Backoff after transient failures and rate limits; a rate limit's
    /// `Retry-After` is waited out in full, and never less than this.
    /// Default: 1 s doubling to 60 s, with jitter.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};
    /// # let source = refresh_fn(|_| async { Ok::<_, RefreshError>(TokenSet::new("t")) });
    /// use tower_token_refresh::Backoff;
    /// let builder = TokenRefreshLayer::builder(source)
    ///     .backoff(Backoff::new(Duration::from_millis(250), Duration::from_secs(30)));
    /// # let _ = builder;
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
    /// protocol. The lease a refresh holds lives for its whole budget (the
    /// refresh, login and hook calls, two store calls, each bounded by the
    /// [refresh timeout](Self::refresh_timeout)) plus a second. A request
    /// that has to wait for a token (none yet, expired, or rejected) may
    /// wait out the lease of a holder that crashed, then the refresh that
    /// takes over: at most twice that. Default: no store.
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
    /// // `b` was told of the new version and adopted it, with no refresh.
    /// tokio::task::yield_now().await;
    /// # for _ in 0..10 { tokio::task::yield_now().await; }
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
    /// # let source = refresh_fn(|_| async { Ok::<_, RefreshError>(TokenSet::new("t")) });
    /// let builder = TokenRefreshLayer::builder(source).background_refresh(true);
    /// # let _ = builder;
    /// ```
    pub fn background_refresh(mut self, enabled: bool) -> Self {
        self.config.background = enabled;
        self
    }

    /// Called with every new token set before any request can use it, e.g.
    /// to persist a rotated refresh token. Bounded by the refresh timeout.
    /// Also called with an answer the layer refuses (its access token
    /// already expired, or not a valid header value) if it rotated the
    /// refresh token: no request uses it, but its refresh token is the live
    /// one, and the next refresh starts from it (as it does when such
    /// tokens are given back as [initial tokens](Self::initial_tokens)).
    /// An answer an [`HttpRefresher`](crate::http::HttpRefresher) refuses
    /// for what it lacks comes as its new refresh token beside an access
    /// token that is not a header value.
    /// Tokens a refresh overtaken by [`set_tokens`](crate::TokenHandle::set_tokens)
    /// fetched are shown too, though the layer keeps the tokens set.
    /// With a [store](Self::store), it runs only in the process that
    /// fetched the tokens, not in those that adopt them.
    ///
    /// ```
    /// # use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};
    /// let builder = TokenRefreshLayer::builder(refresh_fn(|_| async {
    ///         Ok::<_, RefreshError>(TokenSet::new("t"))
    ///     }))
    ///     .on_refresh(|tokens: &TokenSet| {
    ///         let has_refresh = tokens.refresh_token().is_some();
    ///         async move { let _ = has_refresh; /* write to disk, a vault, … */ }
    ///     });
    /// # let _ = builder;
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

    /// Which responses count as a token rejection. Default: `401`.
    ///
    /// ```
    /// # use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};
    /// use tower_token_refresh::classify::Grpc;
    /// let builder = TokenRefreshLayer::builder(refresh_fn(|_| async {
    ///         Ok::<_, RefreshError>(TokenSet::new("t"))
    ///     }))
    ///     .classifier(Grpc);
    /// # let _ = builder;
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
    /// what a static header costs; rejections still trigger a refresh.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};
    /// # let source = refresh_fn(|_| async { Ok::<_, RefreshError>(TokenSet::new("t")) });
    /// let builder = TokenRefreshLayer::builder(source).reactive_retry(false);
    /// # let _ = builder;
    /// ```
    pub fn reactive_retry(mut self, enabled: bool) -> Self {
        self.reactive_retry = enabled;
        self
    }

    /// How many body bytes are kept for a retry; larger bodies are not
    /// retried, nor are bodies of more data frames than that (each frame
    /// kept costs memory, an empty one too). Default: 64 KiB.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};
    /// # let source = refresh_fn(|_| async { Ok::<_, RefreshError>(TokenSet::new("t")) });
    /// let builder = TokenRefreshLayer::builder(source).replay_cap(1024 * 1024);
    /// # let _ = builder;
    /// ```
    pub fn replay_cap(mut self, cap: usize) -> Self {
        self.replay_cap = cap;
        self
    }

    /// Send the token over plain `http://` to hosts that are not loopback.
    /// Default: refused with [`Error::is_insecure_transport`](crate::Error::is_insecure_transport).
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};
    /// # let source = refresh_fn(|_| async { Ok::<_, RefreshError>(TokenSet::new("t")) });
    /// let builder = TokenRefreshLayer::builder(source).allow_insecure_http(true);
    /// # let _ = builder;
    /// ```
    pub fn allow_insecure_http(mut self, allowed: bool) -> Self {
        self.rules.allow_insecure = allowed;
        self
    }

    /// Only requests to these origins (`scheme://host[:port]`) get the
    /// token; others pass through untouched. Without a port, an origin
    /// means its scheme's default port; one given as a bare host (no
    /// scheme) matches that host on every scheme and port, plain http
    /// still refused unless allowed. An origin without a host matches
    /// nothing. Default: every origin.
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
    /// # use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};
    /// let builder = TokenRefreshLayer::builder(refresh_fn(|_| async {
    ///         Ok::<_, RefreshError>(TokenSet::new("t"))
    ///     }))
    ///     .allowed_origins([http::Uri::from_static("https://api.example.com")]);
    /// # let _ = builder;
    /// ```
    pub fn allowed_origins<I>(mut self, origins: I) -> Self
    where
        I: IntoIterator<Item = Uri>,
    {
        let parsed = origins
            .into_iter()
            .filter_map(|uri| {
                let origin = Origin::of(&uri);
                if origin.is_none() {
                    // Not quoted: a path or query can hold a key.
                    tracing::warn!("an allowed origin without a host matches no request");
                }
                origin
            })
            .collect();
        self.rules.origins = Some(parsed);
        self
    }

    /// Builds the layer. Spawns nothing unless background refresh is on and
    /// a tokio runtime is running (otherwise the timer starts on first use).
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};
    /// # let source = refresh_fn(|_| async { Ok::<_, RefreshError>(TokenSet::new("t")) });
    /// let layer = TokenRefreshLayer::builder(source).build();
    /// let handle = layer.handle();
    /// assert_eq!(handle.stats().refreshes, 0);
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
