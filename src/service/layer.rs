//! `TokenRefreshLayer`: wraps a service in [`TokenRefresh`].

use std::fmt;
use std::sync::Arc;

use tower_layer::Layer;

use super::builder::Builder;
use super::transport::TransportRules;
use super::TokenRefresh;
use crate::classify::Unauthorized;
use crate::manager::TokenManager;
use crate::{Refresh, TokenHandle};

/// Everything a request needs besides the inner service, behind one `Arc`
/// so that cloning the service or making a response future costs a single
/// reference-count increment.
pub(crate) struct Core<C> {
    pub(crate) manager: TokenManager,
    pub(crate) classifier: C,
    pub(crate) reactive_retry: bool,
    pub(crate) replay_cap: usize,
    pub(crate) rules: TransportRules,
}

/// A [`Layer`] that keeps a bearer token current on every request.
///
/// All services made from one layer (and its clones) share one token and
/// one refresh.
///
/// ```
/// use std::time::Duration;
/// use tower::ServiceBuilder;
/// use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let layer = TokenRefreshLayer::builder(refresh_fn(|_ctx| async {
///         Ok::<_, RefreshError>(TokenSet::new("fresh").with_expires_in(Duration::from_secs(3600)))
///     }))
///     .initial_tokens(TokenSet::new("start").with_refresh_token("r"))
///     .build();
/// let handle = layer.handle();
/// let service = ServiceBuilder::new()
///     .layer(layer)
///     .service_fn(|req: http::Request<_>| async move {
///         let auth = req.headers()["authorization"].to_str().unwrap().to_owned();
///         Ok::<_, std::convert::Infallible>(http::Response::new(auth))
///     });
/// # use tower::ServiceExt;
/// let response = service
///     .oneshot(http::Request::new(http_body_util::Empty::<bytes::Bytes>::new()))
///     .await
///     .unwrap();
/// assert_eq!(response.body(), "Bearer start");
/// assert_eq!(handle.stats().refreshes, 0);
/// # }
/// ```
///
/// # Runtime
///
/// Refreshes run in tasks spawned on the current tokio runtime, with
/// timeouts: the runtime needs its time driver (`enable_time`, on by default
/// with `#[tokio::main]`).
///
/// # Clone
///
/// Clones share the token state.
pub struct TokenRefreshLayer<C = Unauthorized> {
    pub(crate) core: Arc<Core<C>>,
}

impl TokenRefreshLayer<Unauthorized> {
    /// Starts configuring a layer that gets new tokens from `refresher`.
    ///
    /// ```
    /// use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let layer = TokenRefreshLayer::builder(refresh_fn(|_| async {
    ///     Ok::<_, RefreshError>(TokenSet::new("from-refresher"))
    /// }))
    /// .build();
    /// let handle = layer.handle();
    /// assert_eq!(handle.stats().refreshes, 0, "not called before a token is needed");
    /// handle.force_refresh().await.unwrap();
    /// assert_eq!(handle.tokens().unwrap().access_token().expose(), "from-refresher");
    /// # }
    /// ```
    pub fn builder<R: Refresh>(refresher: R) -> Builder<Unauthorized> {
        Builder::new(refresher)
    }
}

impl<C> TokenRefreshLayer<C> {
    /// A handle to inspect and steer the shared token state.
    ///
    /// ```
    /// use std::convert::Infallible;
    /// use http::{Request, Response};
    /// use tower::{Layer, ServiceExt};
    /// use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let layer = TokenRefreshLayer::builder(refresh_fn(|_| async {
    ///     Ok::<_, RefreshError>(TokenSet::new("refreshed"))
    /// }))
    /// .initial_tokens(TokenSet::new("first"))
    /// .build();
    /// let handle = layer.handle();
    /// let client = layer.layer(tower::service_fn(|req: Request<_>| async move {
    ///     let sent = req.headers()["authorization"].to_str().unwrap().to_owned();
    ///     Ok::<_, Infallible>(Response::new(sent))
    /// }));
    ///
    /// // The handle steers what every service made by the layer sends.
    /// handle.force_refresh().await.unwrap();
    /// let request = Request::new(http_body_util::Empty::<bytes::Bytes>::new());
    /// let answer = client.oneshot(request).await.unwrap();
    /// assert_eq!(answer.body(), "Bearer refreshed");
    /// assert_eq!(handle.stats().refreshes, 1);
    /// # }
    /// ```
    pub fn handle(&self) -> TokenHandle {
        TokenHandle::new(self.core.manager.clone())
    }
}

impl<C> Clone for TokenRefreshLayer<C> {
    fn clone(&self) -> Self {
        Self {
            core: Arc::clone(&self.core),
        }
    }
}

impl<S, C> Layer<S> for TokenRefreshLayer<C> {
    type Service = TokenRefresh<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        TokenRefresh::from_core(inner, Arc::clone(&self.core))
    }
}

impl<C> fmt::Debug for TokenRefreshLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenRefreshLayer")
            .field("manager", &self.core.manager)
            .field("reactive_retry", &self.core.reactive_retry)
            .field("replay_cap", &self.core.replay_cap)
            .finish_non_exhaustive()
    }
}
