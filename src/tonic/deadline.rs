//! A gRPC call's deadline across the layer: the wait for a token and the
//! retry of a rejected call count against the `grpc-timeout` the caller set,
//! as they would in a gRPC client that refreshed its own credentials.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::{HeaderMap, Request};
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use super::timeout_header::{self, GRPC_TIMEOUT};
use crate::BoxError;

/// When the call must be over, taken from its `grpc-timeout` as it entered
/// [`GrpcDeadline`]. A request extension, which the layer copies into a
/// retry, so that [`IntoTonicBody`](super::IntoTonicBody) can tell each
/// attempt what is left.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CallDeadline(Instant);

impl CallDeadline {
    /// Sets `headers`' `grpc-timeout` to the time left until the deadline,
    /// so that the channel's per-attempt timer and the server's deadline
    /// end with the call's. `false`, with nothing written, if no time is
    /// left: the attempt must not be sent.
    pub(crate) fn write_remaining(self, headers: &mut HeaderMap) -> bool {
        let left = self.0.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        headers.insert(&GRPC_TIMEOUT, timeout_header::encode(left));
        true
    }
}

/// Holds a call to the deadline its `grpc-timeout` header sets (a tonic
/// call's `Request::set_timeout`), counted from when the call enters this
/// service: a call still waiting for a token, or waiting to be retried,
/// when its time is up fails with [`tonic::TimeoutExpired`] (which tonic
/// reports as `Code::Cancelled`, as it reports its channel's own timeouts),
/// and each attempt carries the time left in its `grpc-timeout`, not the
/// whole timeout again; an attempt due with no time left (its task woken
/// late, after its token came and its time ran out) is not sent and fails
/// the same way.
///
/// [`with_token_refresh`](super::with_token_refresh) puts it above the
/// layer. A call without a `grpc-timeout` (or with one that does not
/// parse, which tonic's channel ignores too) passes through untouched. The rewriting
/// of each attempt's header happens in [`IntoTonicBody`](super::IntoTonicBody),
/// below the layer, so both are needed:
///
/// ```
/// use std::convert::Infallible;
/// use std::time::Duration;
/// use http::{Request, Response};
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_token_refresh::classify::Grpc;
/// use tower_token_refresh::tonic::{GrpcDeadline, IntoTonicBody};
/// use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// // An identity server that takes a minute to answer.
/// let layer = TokenRefreshLayer::builder(refresh_fn(|_| async {
///         tokio::time::sleep(Duration::from_secs(60)).await;
///         Ok::<_, RefreshError>(TokenSet::new("access"))
///     }))
///     .classifier(Grpc)
///     .refresh_timeout(Duration::from_secs(90))
///     .build();
/// let channel = tower::service_fn(|_: Request<tonic::body::Body>| async {
///     Ok::<_, Infallible>(Response::new(tonic::body::Body::empty()))
/// });
/// let handle = layer.handle();
/// let client = ServiceBuilder::new()
///     .layer_fn(GrpcDeadline::new)
///     .layer(layer)
///     .layer_fn(|channel| IntoTonicBody::reporting_to(channel, handle.clone()))
///     .service(channel);
///
/// // What `tonic::Request::set_timeout(Duration::from_secs(2))` sends.
/// let mut call = Request::new(tonic::body::Body::empty());
/// call.headers_mut().insert("grpc-timeout", "2000000u".parse().unwrap());
/// let started = tokio::time::Instant::now();
/// let error = client.oneshot(call).await.unwrap_err();
///
/// assert_eq!(started.elapsed(), Duration::from_secs(2)); // not the minute
/// assert_eq!(tonic::Status::from_error(error).code(), tonic::Code::Cancelled);
/// # }
/// ```
///
/// # Clone
///
/// Cloning clones the inner service.
#[derive(Debug, Clone)]
pub struct GrpcDeadline<S> {
    inner: S,
}

impl<S> GrpcDeadline<S> {
    /// Wraps `inner`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower::ServiceExt;
    /// use tower_token_refresh::tonic::GrpcDeadline;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
    /// // A server that never answers.
    /// let service = GrpcDeadline::new(tower::service_fn(|_: http::Request<tonic::body::Body>| {
    ///     std::future::pending::<Result<http::Response<()>, std::convert::Infallible>>()
    /// }));
    /// let mut call = http::Request::new(tonic::body::Body::empty());
    /// call.headers_mut().insert("grpc-timeout", "250m".parse().unwrap());
    /// let error = service.oneshot(call).await.unwrap_err();
    /// assert!(error.is::<tonic::TimeoutExpired>());
    /// # }
    /// ```
    pub fn new(inner: S) -> Self {
        Self { inner }
    }

    inner_accessors!(GrpcDeadline);
}

impl<S, B> Service<Request<B>> for GrpcDeadline<S>
where
    S: Service<Request<B>>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = DeadlineFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let timeout = request.headers().get(&GRPC_TIMEOUT);
        let deadline = timeout
            .and_then(timeout_header::parse)
            .map(|timeout| crate::manager::later(Instant::now(), timeout));
        // Outside a runtime with timers, as for the layer's own bounds, the
        // call goes on without one rather than panicking in the caller.
        let timer = deadline.and_then(crate::manager::timer_at);
        if let Some(deadline) = deadline.filter(|_| timer.is_some()) {
            request.extensions_mut().insert(CallDeadline(deadline));
        }
        DeadlineFuture {
            inner: self.inner.call(request),
            timer,
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`GrpcDeadline`], for naming it in types.
    ///
    /// ```
    /// use tower::{Service, ServiceExt};
    /// use tower_token_refresh::tonic::{DeadlineFuture, GrpcDeadline};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let mut service = GrpcDeadline::new(tower::service_fn(|_: http::Request<()>| async {
    ///     Ok::<_, std::convert::Infallible>(http::Response::new("answer"))
    /// }));
    /// let future: DeadlineFuture<_> = service.ready().await.unwrap().call(http::Request::new(()));
    /// assert_eq!(*future.await.unwrap().body(), "answer");
    /// # }
    /// ```
    #[must_use = "futures do nothing unless polled"]
    pub struct DeadlineFuture<F> {
        #[pin]
        inner: F,
        timer: Option<Pin<Box<Sleep>>>,
    }
}

impl<F, T, E> Future for DeadlineFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(output) = this.inner.poll(cx) {
            return Poll::Ready(output.map_err(Into::into));
        }
        let Some(timer) = this.timer else {
            return Poll::Pending;
        };
        ready!(timer.as_mut().poll(cx));
        Poll::Ready(Err(tonic::TimeoutExpired(()).into()))
    }
}

impl<F> std::fmt::Debug for DeadlineFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadlineFuture")
            .field("has_deadline", &self.timer.is_some())
            .finish_non_exhaustive()
    }
}
