//! The tower middleware: [`TokenRefreshLayer`] and [`TokenRefresh`].
//!
//! ```
//! use std::convert::Infallible;
//! use std::time::Duration;
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::{Empty, Full};
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_token_refresh::{refresh_fn, RefreshError, ReplayBody, TokenRefreshLayer, TokenSet};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! // An API that only accepts the refreshed token.
//! let api = tower::service_fn(|req: Request<ReplayBody<Full<Bytes>>>| async move {
//!     let ok = req.headers()["authorization"] == "Bearer new";
//!     let status = if ok { StatusCode::OK } else { StatusCode::UNAUTHORIZED };
//!     Ok::<_, Infallible>(Response::builder().status(status).body(Empty::<Bytes>::new()).unwrap())
//! });
//! let layer = TokenRefreshLayer::builder(refresh_fn(|_| async {
//!         Ok::<_, RefreshError>(TokenSet::new("new").with_expires_in(Duration::from_secs(60)))
//!     }))
//!     .initial_tokens(TokenSet::new("old"))
//!     .build();
//! let handle = layer.handle();
//! let client = ServiceBuilder::new().layer(layer).service(api);
//!
//! // Sent with "old", rejected, refreshed once, retried with "new".
//! let response = client.oneshot(Request::new(Full::new(Bytes::from("payload")))).await.unwrap();
//! assert_eq!(response.status(), StatusCode::OK);
//! assert_eq!(handle.stats().refreshes, 1);
//! assert_eq!(handle.stats().retries, 1);
//! # }
//! ```

mod builder;
pub(crate) mod drain;
pub(crate) mod future;
mod headers;
mod lanes;
mod layer;
mod room;
mod shared;
mod transport;
mod uri_copy;

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::AUTHORIZATION;
use http::{HeaderMap, Request, Response};
use http_body::Body;
use tower_service::Service;

use crate::body::ReplayBody;
use crate::classify::{ClassifyRejection, Unauthorized};
use crate::error::ErrorKind;
use crate::{BoxError, Error, TokenHandle};

pub use builder::Builder;
pub use future::ResponseFuture;
use future::RetryCopy;
use lanes::Lanes;
pub(crate) use layer::Core;
pub use layer::TokenRefreshLayer;
pub(crate) use transport::is_loopback;

/// Adds `Authorization: Bearer …` to requests, keeps the token current and
/// retries a rejected request once with a new token.
///
/// Made by [`TokenRefreshLayer`]. Requests that already carry an
/// `Authorization` header, or that go to an origin outside the allow-list
/// (or whose `Host` header names another origin than their URI), pass
/// through untouched and are never retried.
///
/// The inner service receives `Request<ReplayBody<B>>` for the caller's
/// `Request<B>`: a hyper-util client wrapped for bodies `B` is a
/// `Client<_, ReplayBody<B>>` (see [`ReplayBody`]).
///
/// # Clone
///
/// Cloning clones the inner service and shares the token state.
///
/// # Retries
///
/// A retry is sent through a clone of an instance of the inner service
/// kept for retries, polled ready before the retry: a response future does
/// not carry a clone of its own, which would cost one per request. Once
/// sent, the retry's instance is kept for the next send on its lane, which
/// takes it instead of a clone. The kept instance is taken at the first
/// request that could be retried or had to wait for a token, once per
/// lane: a request uses the lane of the thread calling it (about one lane
/// per core, rounded up to a power of two, at most 8), so that requests
/// sent on different threads do not write one reference count. A request
/// that waits for its first token holds no instance while it waits: once
/// the token has come, it is sent as a retry is.
///
/// ```
/// use std::convert::Infallible;
/// use bytes::Bytes;
/// use http::{Request, Response};
/// use http_body_util::{Empty, Full};
/// use tower::{Layer, ServiceExt};
/// use tower_token_refresh::{refresh_fn, RefreshError, ReplayBody, TokenRefresh, TokenRefreshLayer, TokenSet};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let api = tower::service_fn(|req: Request<ReplayBody<Full<Bytes>>>| async move {
///     assert_eq!(req.headers()["authorization"], "Bearer t1");
///     Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
/// });
/// let source = refresh_fn(|_| async { Ok::<_, RefreshError>(TokenSet::new("unused")) });
/// let layer = TokenRefreshLayer::builder(source)
///     .initial_tokens(TokenSet::new("t1"))
///     .build();
/// let client: TokenRefresh<_> = layer.layer(api);
/// client.oneshot(Request::new(Full::new(Bytes::new()))).await.unwrap();
/// # }
/// ```
pub struct TokenRefresh<S, C = Unauthorized> {
    inner: S,
    lanes: Lanes<S, C>,
}

impl<S, C> TokenRefresh<S, C> {
    pub(crate) fn from_core(inner: S, core: Arc<Core<C>>) -> Self {
        Self {
            inner,
            lanes: Lanes::new(core),
        }
    }

    /// The inner service.
    ///
    /// ```
    /// use tower::Layer;
    /// # use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};
    /// # let source = refresh_fn(|_| async { Ok::<_, RefreshError>(TokenSet::new("t")) });
    /// let service = TokenRefreshLayer::builder(source).build().layer(vec!["inner"]);
    /// assert_eq!(service.get_ref(), &["inner"]);
    /// ```
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    ///
    /// Retries, and requests that waited for a token, are sent through
    /// clones of the inner service as it was at the first request through
    /// this service or a clone of it that could be retried or had to wait
    /// (on each lane), not through this instance: see "Retries" on
    /// [`TokenRefresh`].
    ///
    /// ```
    /// use tower::Layer;
    /// # use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};
    /// # let source = refresh_fn(|_| async { Ok::<_, RefreshError>(TokenSet::new("t")) });
    /// let mut service = TokenRefreshLayer::builder(source).build().layer(vec!["inner"]);
    /// service.get_mut().push("changed");
    /// assert_eq!(service.get_ref(), &["inner", "changed"]);
    /// ```
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes `self`, returning the inner service.
    ///
    /// ```
    /// use tower::Layer;
    /// # use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};
    /// # let source = refresh_fn(|_| async { Ok::<_, RefreshError>(TokenSet::new("t")) });
    /// let service = TokenRefreshLayer::builder(source).build().layer(vec!["inner"]);
    /// assert_eq!(service.into_inner(), ["inner"]);
    /// ```
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// A handle on the shared token state.
    ///
    /// ```
    /// use tower::Layer;
    /// # use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};
    /// # let source = refresh_fn(|_| async { Ok::<_, RefreshError>(TokenSet::new("t")) });
    /// let layer = TokenRefreshLayer::builder(source).build();
    /// let service = layer.layer(());
    /// // The service's handle and the layer's see one token state.
    /// service.handle().set_tokens(TokenSet::new("set")).unwrap();
    /// assert_eq!(layer.handle().tokens().unwrap().access_token().expose(), "set");
    /// ```
    pub fn handle(&self) -> TokenHandle {
        TokenHandle::new(self.lanes.core().manager.clone())
    }
}

impl<S, C, B, ResBody> Service<Request<B>> for TokenRefresh<S, C>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<ResBody>> + Clone,
    S::Error: Into<BoxError>,
    B: Body,
    C: ClassifyRejection,
    ResBody: Body,
{
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = ResponseFuture<S, B, C>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let shared = self.lanes.current();
        let core = &shared.core;
        if has_authorization(req.headers()) || !core.rules.allows(req.uri(), req.headers()) {
            return self.passthrough(req);
        }
        if core.rules.is_insecure(req.uri()) {
            // Nothing is sent, so the instance polled ready lets go of its
            // readiness (a `Buffer` slot, a concurrency permit) for a clone
            // that must be polled again, as after any call.
            self.inner = self.inner.clone();
            return ResponseFuture::failed(Error::new(ErrorKind::InsecureTransport));
        }
        match core.manager.ready() {
            Some(credential) => {
                let (mut parts, body) = req.into_parts();
                let body = replay_body(core, body);
                // Copied before the insert: the retry adds its own header.
                let retry = RetryCopy::of(&parts, &body, shared, &self.inner);
                let generation = credential.authorize(&mut parts.headers);
                let shared = Arc::clone(shared);
                let fut = self.inner.call(Request::from_parts(parts, body));
                ResponseFuture::sent(fut, generation, retry, shared)
            }
            None => {
                let (parts, body) = req.into_parts();
                let body = replay_body(core, body);
                // The request waits without an instance of the inner
                // service: once its token has come, it is sent as a retry
                // is, through its lane's instance (the one the last send
                // gave back, or a clone). A clone of its own to wait with
                // cost every waiting request a clone and a drop of an inner
                // client's reference counts, which every thread writes,
                // and a box, inside the burst of sends after a refresh.
                shared.remember(&self.inner);
                // The instance polled ready here is let go, for a clone
                // that must be polled again, as after any call: readiness
                // can be a reservation (a slot in a
                // `tower::buffer::Buffer`, which a tonic `Channel` is), and
                // held for every waiting request (a tonic client keeps its
                // service across the call) it could starve the refresh
                // itself when that goes through the same buffer.
                self.inner = self.inner.clone();
                ResponseFuture::acquiring(parts, body, Arc::clone(shared))
            }
        }
    }
}

/// Whether the caller set `Authorization` itself. A request carries a
/// handful of headers, and comparing that many names (an enum compare for
/// standard ones) is cheaper than hashing one for a lookup; measured, the
/// lookup was the largest single cost the layer added to a request.
#[inline]
fn has_authorization(headers: &HeaderMap) -> bool {
    const SCAN_UP_TO: usize = 8;
    if headers.keys_len() <= SCAN_UP_TO {
        headers.keys().any(|name| name == AUTHORIZATION)
    } else {
        headers.contains_key(AUTHORIZATION)
    }
}

impl<S, C> TokenRefresh<S, C> {
    /// Sends `req` as it is: not ours to touch, never retried.
    fn passthrough<B: Body, ResBody>(&mut self, req: Request<B>) -> ResponseFuture<S, B, C>
    where
        S: Service<Request<ReplayBody<B>>, Response = Response<ResBody>>,
    {
        ResponseFuture::passthrough(self.inner.call(req.map(ReplayBody::passthrough)))
    }
}

/// Records the body for a retry when retrying is on and the body may fit
/// the cap; otherwise it is sent once, as it is.
#[inline]
fn replay_body<B: Body, C>(core: &Core<C>, body: B) -> ReplayBody<B> {
    if core.reactive_retry {
        ReplayBody::try_new_for_retry(body, core.replay_cap).unwrap_or_else(ReplayBody::passthrough)
    } else {
        ReplayBody::passthrough(body)
    }
}

impl<S: Clone, C> Clone for TokenRefresh<S, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            lanes: self.lanes.clone(),
        }
    }
}

impl<S: fmt::Debug, C> fmt::Debug for TokenRefresh<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenRefresh")
            .field("inner", &self.inner)
            .field("manager", &self.lanes.core().manager)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
