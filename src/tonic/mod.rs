//! tonic clients: wrap a `Channel` once, use generated clients unchanged.
//!
//! [`TokenRefresh`] hands its inner service `Request<ReplayBody<B>>`, while a
//! `tonic::transport::Channel` takes `Request<tonic::body::Body>`.
//! [`IntoTonicBody`] converts one into the other, and [`with_token_refresh`]
//! puts it and the layer around a channel in one call. The result is a
//! [`GrpcTokenRefresh`], which a generated client (or `tonic::client::Grpc`)
//! takes as it would take the channel:
//!
//! ```
//! use std::time::Duration;
//! use tonic::transport::{Channel, Endpoint};
//! use tower_token_refresh::classify::Grpc;
//! use tower_token_refresh::tonic::{with_token_refresh, GrpcTokenRefresh};
//! use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let layer = TokenRefreshLayer::builder(refresh_fn(|_ctx| async {
//!         // Call your identity server here.
//!         Ok::<_, RefreshError>(TokenSet::new("access").with_expires_in(Duration::from_secs(3600)))
//!     }))
//!     .classifier(Grpc) // UNAUTHENTICATED is a rejection: refresh once, retry once
//!     .build();
//! let handle = layer.handle();
//!
//! let endpoint = Endpoint::from_static("https://api.example.com");
//! // Given to the client, the channel's origin lets the layer see each
//! // call's scheme and host (see "URIs" below).
//! let origin = endpoint.uri().clone();
//! // Or `.connect().await?`; a lazy channel connects on the first call.
//! let channel: GrpcTokenRefresh<Channel> = with_token_refresh(endpoint.connect_lazy(), &layer);
//! // Generated code: `GreeterClient::with_origin(channel, origin)`.
//! let client = tonic::client::Grpc::with_origin(channel, origin);
//! // Nothing is fetched before the first call needs a token.
//! assert_eq!(handle.stats().refreshes, 0);
//! # let _ = client;
//! # Ok(()) }
//! # #[tokio::main(flavor = "current_thread")] async fn main() { run().await.unwrap() }
//! ```
//!
//! # What is retried
//!
//! A server rejects a call before running it with a *trailers-only*
//! response: HTTP 200, `grpc-status: 16` (UNAUTHENTICATED) in the headers
//! and no body. tonic's own interceptors answer `Status::unauthenticated`
//! that way. [`Grpc`] classifies it as a rejection: the layer refreshes once
//! and sends the call again, its request messages replayed. Unary and
//! client-streaming calls are retried while their request stays under the
//! [replay cap](crate::Builder::replay_cap) (64 KiB by default), and in no
//! more body frames than the cap allows (`cap / 64`, at least 64: 1,024 by
//! default). tonic puts the messages a client stream has ready at once in
//! one frame, so a stream fed one message at a time (from a channel, say)
//! sends a frame for each, and a long one of small messages reaches the
//! frame limit before the cap. A bigger
//! request gets the UNAUTHENTICATED status back, and the refresh still
//! happens, so the next call succeeds.
//!
//! A status sent after the response headers, in the *trailers* (a server
//! stream cut short because its token was revoked, or a handler that
//! answers headers first and then fails with no message at all), is never
//! retried: the caller gets the status, and may already hold messages of
//! the call. An UNAUTHENTICATED there still tells the layer that the
//! token is bad: the response's body ([`WatchedBody`]) reports it as its
//! trailers are read, and the token the call went out with, if still the
//! current one, is marked rejected and refreshed there and then. The next
//! call goes out with the new token instead of being rejected and retried
//! (which a request over the replay cap could not be). As for a rejected
//! call, a token a refresh brought less than the
//! [minimum refresh interval](crate::Builder::min_refresh_interval) ago is
//! not refreshed again; and a stream dropped before its trailers tells
//! nothing.
//!
//! # Errors
//!
//! When the layer cannot get a token (the refresh credential is dead, the
//! refresh failed or timed out, or a plain `http://` URI was refused),
//! tonic turns its error into a `Status`: with `Code::Unknown` and the
//! error's message, unless a cause further down the error's sources (a
//! gRPC status or a transport error from the refresh call, say) gives tonic
//! a code of its own. [`token_error`] gets the crate's [`Error`] back either
//! way, to tell "sign in again" from "try later".
//!
//! # Deadlines
//!
//! A call's `grpc-timeout` (tonic's `Request::set_timeout`) bounds the
//! call up to its response headers (as tonic's own timeout does; a
//! stream's messages after them are bounded by the server, which gets the
//! time left), as in a gRPC client that refreshes its own credentials:
//! [`GrpcDeadline`], which [`with_token_refresh`] puts above the layer,
//! counts it from when the call enters, so the wait for a token and the
//! retry of a rejected call are inside it. A call still waiting when its
//! time is up fails with [`tonic::TimeoutExpired`] (`Code::Cancelled`, as
//! tonic reports its channel's timeouts), and each attempt tells the
//! channel and the server only the time left, not the whole timeout again.
//! A channel's `Endpoint::timeout` still runs below the layer, per
//! attempt; to bound every call whether or not it sets a timeout, put a
//! `tower::timeout::TimeoutLayer` around the wrapped channel (see the
//! [crate docs](crate#timeouts)).
//!
//! # URIs
//!
//! tonic clients send path-only URIs (`/package.Service/Method`); the
//! channel adds its endpoint's origin below the layer. So an
//! [`allowed_origins`](crate::Builder::allowed_origins) list matches no
//! call, and the check that refuses tokens over plain `http://` to other
//! hosts cannot see the scheme. Give the client the origin above the
//! wrapped channel, as the example above does, e.g.
//! `GreeterClient::with_origin(with_token_refresh(channel, &layer), origin)`
//! (or `tonic::client::Grpc::with_origin`): the layer then sees the full
//! URI. Give it the URI the channel connects to (`endpoint.uri()`): the
//! layer judges the origin it is shown, while the channel sends to its own
//! endpoint whatever that origin says, so an `https` origin over an
//! `http://` channel would let the token go out in clear.

use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{Request, Response};
use http_body::Body;
use tower_layer::Layer;
use tower_service::Service;

use crate::classify::Grpc;
use crate::{BoxError, Error, TokenHandle, TokenRefresh, TokenRefreshLayer};
use watched_body::Report;

/// `get_ref`, `get_mut` and `into_inner` for a wrapper of this module
/// made with `new(inner)`, each with its example.
macro_rules! inner_accessors {
    ($wrapper:ident) => {
        #[doc = concat!(
                            "The inner service.\n\n```\n",
                            "use tower_token_refresh::tonic::", stringify!($wrapper), ";\n",
                            "let service = ", stringify!($wrapper), "::new(vec![\"inner\"]);\n",
                            "assert_eq!(service.get_ref(), &[\"inner\"]);\n```"
                        )]
        pub fn get_ref(&self) -> &S {
            &self.inner
        }

        #[doc = concat!(
                            "The inner service, mutably.\n\n```\n",
                            "use tower_token_refresh::tonic::", stringify!($wrapper), ";\n",
                            "let mut service = ", stringify!($wrapper), "::new(vec![\"inner\"]);\n",
                            "service.get_mut().push(\"changed\");\n",
                            "assert_eq!(service.get_ref(), &[\"inner\", \"changed\"]);\n```"
                        )]
        pub fn get_mut(&mut self) -> &mut S {
            &mut self.inner
        }

        #[doc = concat!(
                            "Consumes `self`, returning the inner service.\n\n```\n",
                            "use tower_token_refresh::tonic::", stringify!($wrapper), ";\n",
                            "let service = ", stringify!($wrapper), "::new(vec![\"inner\"]);\n",
                            "assert_eq!(service.into_inner(), [\"inner\"]);\n```"
                        )]
        pub fn into_inner(self) -> S {
            self.inner
        }
    };
}

mod deadline;
#[cfg(test)]
mod tests;
mod timeout_header;
mod watched_body;
#[cfg(test)]
mod watched_body_tests;

pub use deadline::{DeadlineFuture, GrpcDeadline};
pub use watched_body::WatchedBody;

/// A tonic channel (or any service taking `Request<tonic::body::Body>`)
/// behind the token layer, as [`with_token_refresh`] makes it: the type to
/// name in a field or a generated client's type parameter.
///
/// ```
/// use tonic::transport::Channel;
/// use tower::ServiceExt;
/// use tower_token_refresh::classify::Grpc;
/// use tower_token_refresh::tonic::{with_token_refresh, GrpcTokenRefresh};
/// use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};
///
/// // Generated code: `GreeterClient<GrpcTokenRefresh<Channel>>`.
/// struct Api {
///     channel: GrpcTokenRefresh<Channel>,
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let layer = TokenRefreshLayer::builder(refresh_fn(|_| async {
///         Ok::<_, RefreshError>(TokenSet::new("access"))
///     }))
///     .classifier(Grpc)
///     .build();
/// // Connects on the first call; nothing listens there.
/// let channel = Channel::from_static("http://127.0.0.1:1").connect_lazy();
/// let api = Api { channel: with_token_refresh(channel, &layer) };
///
/// let call = http::Request::new(tonic::body::Body::empty());
/// let error = api.channel.oneshot(call).await.unwrap_err();
/// // The token came first; then the channel could not connect.
/// assert_eq!(layer.handle().stats().refreshes, 1);
/// assert_eq!(tonic::Status::from_error(error).code(), tonic::Code::Unavailable);
/// # }
/// ```
pub type GrpcTokenRefresh<S, C = Grpc> = GrpcDeadline<TokenRefresh<IntoTonicBody<S>, C>>;

/// Wraps `service` (usually a `tonic::transport::Channel`) in `layer`, for
/// a generated client to take as it would take the channel.
///
/// The layer must classify with [`Grpc`]: with the default (`401` only),
/// an UNAUTHENTICATED call would reach the caller without a refresh. For a
/// classifier of your own, write
/// `GrpcDeadline::new(layer.layer(IntoTonicBody::reporting_to(service, layer.handle())))`.
///
/// ```
/// use std::convert::Infallible;
/// use std::time::Duration;
/// use http::{Request, Response};
/// use tower::ServiceExt;
/// use tower_token_refresh::classify::Grpc;
/// use tower_token_refresh::tonic::with_token_refresh;
/// use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// // A gRPC server that only accepts the refreshed token, answering any
/// // other with a trailers-only UNAUTHENTICATED, as tonic's interceptors do.
/// let server = tower::service_fn(|req: Request<tonic::body::Body>| async move {
///     let status = if req.headers()["authorization"] == "Bearer new" {
///         tonic::Status::ok("")
///     } else {
///         tonic::Status::unauthenticated("token revoked")
///     };
///     Ok::<Response<tonic::body::Body>, Infallible>(status.into_http())
/// });
/// let layer = TokenRefreshLayer::builder(refresh_fn(|_| async {
///         Ok::<_, RefreshError>(TokenSet::new("new").with_expires_in(Duration::from_secs(60)))
///     }))
///     .classifier(Grpc)
///     .initial_tokens(TokenSet::new("old"))
///     .build();
/// let handle = layer.handle();
///
/// let channel = with_token_refresh(server, &layer);
/// let response = channel.oneshot(Request::new(tonic::body::Body::empty())).await.unwrap();
/// assert_eq!(response.headers()["grpc-status"], "0");
/// assert_eq!((handle.stats().refreshes, handle.stats().retries), (1, 1));
/// # }
/// ```
pub fn with_token_refresh<S>(service: S, layer: &TokenRefreshLayer<Grpc>) -> GrpcTokenRefresh<S> {
    let channel = IntoTonicBody::reporting_to(service, layer.handle());
    GrpcDeadline::new(layer.layer(channel))
}

/// The crate's [`Error`] behind a call's `Status`, if the layer failed the
/// call: tonic reports it (usually with `Code::Unknown`) keeping the error
/// as the status's source.
///
/// ```
/// use tower::ServiceExt;
/// use tower_token_refresh::classify::Grpc;
/// use tower_token_refresh::tonic::{token_error, with_token_refresh};
/// use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let layer = TokenRefreshLayer::builder(refresh_fn(|_| async {
///         Err::<tower_token_refresh::TokenSet, _>(RefreshError::terminal("refresh token revoked"))
///     }))
///     .classifier(Grpc)
///     .build();
/// let channel = tower::service_fn(|_: http::Request<tonic::body::Body>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(tonic::body::Body::empty()))
/// });
/// let channel = with_token_refresh(channel, &layer);
/// let error = channel.oneshot(http::Request::new(tonic::body::Body::empty())).await.unwrap_err();
///
/// // What tonic's client makes of it.
/// let status = tonic::Status::from_error(error);
/// assert_eq!(status.code(), tonic::Code::Unknown);
/// assert!(token_error(&status).is_some_and(|e| e.is_reauth_required()));
/// # }
/// ```
pub fn token_error(status: &tonic::Status) -> Option<&Error> {
    std::iter::successors(std::error::Error::source(status), |error| error.source())
        .find_map(|error| error.downcast_ref::<Error>())
}

/// Turns the request body into a `tonic::body::Body` (the body type of
/// `tonic::transport::Channel`), so that a channel can sit below
/// [`TokenRefresh`], which sends `Request<ReplayBody<B>>`. Below a
/// [`GrpcDeadline`], it also sets each attempt's `grpc-timeout` to what is
/// left of the call's. Made with [`reporting_to`](Self::reporting_to), it
/// also tells the layer of an UNAUTHENTICATED in a response's trailers
/// (see [`WatchedBody`]).
///
/// [`with_token_refresh`] uses it; with `ServiceBuilder`, put it below the
/// layer (and [`GrpcDeadline`] above it):
///
/// ```
/// use std::convert::Infallible;
/// use http::{Request, Response};
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_token_refresh::classify::Grpc;
/// use tower_token_refresh::tonic::IntoTonicBody;
/// use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let layer = TokenRefreshLayer::builder(refresh_fn(|_| async {
///         Ok::<_, RefreshError>(TokenSet::new("access"))
///     }))
///     .classifier(Grpc)
///     .build();
/// // Stands in for a `tonic::transport::Channel`.
/// let channel = tower::service_fn(|req: Request<tonic::body::Body>| async move {
///     let bearer = req.headers()["authorization"].to_str().unwrap().to_owned();
///     Ok::<_, Infallible>(Response::new(bearer))
/// });
/// let handle = layer.handle();
/// let client = ServiceBuilder::new()
///     .layer(layer)
///     .layer_fn(|channel| IntoTonicBody::reporting_to(channel, handle.clone()))
///     .service(channel);
/// let response = client.oneshot(Request::new(tonic::body::Body::empty())).await.unwrap();
/// assert_eq!(response.body().get_ref(), "Bearer access");
/// # }
/// ```
///
/// # Clone
///
/// Cloning clones the inner service.
#[derive(Clone)]
pub struct IntoTonicBody<S> {
    inner: S,
    // Told of UNAUTHENTICATED in a response's trailers.
    reports_to: Option<TokenHandle>,
}

impl<S> IntoTonicBody<S> {
    /// Wraps `inner`; responses are passed on as they come, in a
    /// [`WatchedBody`] that reports nothing.
    ///
    /// ```
    /// use http_body::Body as _;
    /// use tower::ServiceExt;
    /// use tower_token_refresh::tonic::IntoTonicBody;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let service = IntoTonicBody::new(tower::service_fn(|req: http::Request<tonic::body::Body>| async move {
    ///     Ok::<_, std::convert::Infallible>(http::Response::new(req.body().size_hint().exact()))
    /// }));
    /// let request = http::Request::new(http_body_util::Full::new(bytes::Bytes::from("hello")));
    /// let response = service.oneshot(request).await.unwrap();
    /// assert_eq!(*response.body().get_ref(), Some(5));
    /// # }
    /// ```
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            reports_to: None,
        }
    }

    /// Wraps `inner`, telling `handle`'s layer when a response's trailers
    /// say UNAUTHENTICATED: the token the call went out with, if still
    /// the current one, is marked rejected and refreshed, so that the next
    /// call does not go out with it (see [`WatchedBody`] for when not).
    ///
    /// ```
    /// use std::time::Duration;
    /// use http_body_util::BodyExt;
    /// use tower::ServiceExt;
    /// use tower_token_refresh::classify::Grpc;
    /// use tower_token_refresh::tonic::{GrpcDeadline, IntoTonicBody};
    /// use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// // A server stream cut short: its token was revoked after it began.
    /// let channel = tower::service_fn(|_: http::Request<tonic::body::Body>| async {
    ///     let status = tonic::Status::unauthenticated("token revoked");
    ///     let trailers = status.into_http::<tonic::body::Body>().into_parts().0.headers;
    ///     let body = http_body_util::Full::new(bytes::Bytes::from("a message"))
    ///         .with_trailers(async { Some(Ok(trailers)) });
    ///     Ok::<_, std::convert::Infallible>(http::Response::new(tonic::body::Body::new(body)))
    /// });
    /// let layer = TokenRefreshLayer::builder(refresh_fn(|_| async {
    ///         Ok::<_, RefreshError>(TokenSet::new("new").with_expires_in(Duration::from_secs(60)))
    ///     }))
    ///     .classifier(Grpc)
    ///     .initial_tokens(TokenSet::new("old").with_expires_in(Duration::from_secs(60)))
    ///     .build();
    /// let handle = layer.handle();
    /// let client = GrpcDeadline::new(
    ///     tower::Layer::layer(&layer, IntoTonicBody::reporting_to(channel, handle.clone())),
    /// );
    ///
    /// let response = client.oneshot(http::Request::new(tonic::body::Body::empty())).await.unwrap();
    /// let trailers = response.into_body().collect().await.unwrap().trailers().cloned();
    /// // The caller gets the status; the next call gets a new token.
    /// assert_eq!(trailers.unwrap()["grpc-status"], "16");
    /// assert_eq!(handle.bearer().await.unwrap().expose(), "new");
    /// assert_eq!((handle.stats().rejections, handle.stats().retries), (1, 0));
    /// # }
    /// ```
    pub fn reporting_to(inner: S, handle: TokenHandle) -> Self {
        Self {
            inner,
            reports_to: Some(handle),
        }
    }

    inner_accessors!(IntoTonicBody);
}

impl<S: std::fmt::Debug> std::fmt::Debug for IntoTonicBody<S> {
    // Not the handle's status: the layer above shows it already.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntoTonicBody")
            .field("inner", &self.inner)
            .field("reporting", &self.reports_to.is_some())
            .finish()
    }
}

impl<S, B, ResBody> Service<Request<B>> for IntoTonicBody<S>
where
    S: Service<Request<tonic::body::Body>, Response = Response<ResBody>> + Clone,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<WatchedBody<ResBody>>;
    type Error = BoxError;
    type Future = AttemptFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if let Some(deadline) = req.extensions().get::<deadline::CallDeadline>().copied() {
            // Past the deadline (a task woken late, after its token came
            // and its time ran out) the attempt is not sent: the server
            // would get a call the client has given up on. The instance
            // polled ready lets go of its readiness (a `Buffer` slot, which
            // a tonic `Channel` holds) for a clone that must be polled
            // again, as after any call; found in review: kept, it held the
            // slot until the caller's next call.
            if !deadline.write_remaining(req.headers_mut()) {
                self.inner = self.inner.clone();
                return AttemptFuture {
                    sent: None,
                    report: None,
                };
            }
        }
        let report = self.reports_to.as_ref().and_then(|handle| {
            let sent = req.headers().get(AUTHORIZATION)?.clone();
            Some(Report {
                handle: handle.clone(),
                sent,
            })
        });
        // An empty body becomes tonic's allocation-free empty body; anything
        // else is boxed once, as tonic boxes every body it sends.
        AttemptFuture {
            sent: Some(self.inner.call(req.map(tonic::body::Body::new))),
            report,
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`IntoTonicBody`]: the inner service's, its
    /// body in a [`WatchedBody`], or [`tonic::TimeoutExpired`] for an
    /// attempt due after its call's deadline (set by [`GrpcDeadline`]
    /// above the layer), which is not sent.
    ///
    /// ```
    /// use tower::{Service, ServiceExt};
    /// use tower_token_refresh::tonic::{AttemptFuture, IntoTonicBody};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let mut service = IntoTonicBody::new(tower::service_fn(|_: http::Request<tonic::body::Body>| async {
    ///     Ok::<_, std::convert::Infallible>(http::Response::new("answer"))
    /// }));
    /// let request = http::Request::new(tonic::body::Body::empty());
    /// let ready = ServiceExt::<http::Request<tonic::body::Body>>::ready(&mut service).await;
    /// let future: AttemptFuture<_> = ready.unwrap().call(request);
    /// assert_eq!(*future.await.unwrap().body().get_ref(), "answer");
    /// # }
    /// ```
    #[must_use = "futures do nothing unless polled"]
    pub struct AttemptFuture<F> {
        // `None`: not sent, no time was left.
        #[pin]
        sent: Option<F>,
        // Handed to the response's body.
        report: Option<Report>,
    }
}

impl<F, B, E> std::future::Future for AttemptFuture<F>
where
    F: std::future::Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<WatchedBody<B>>, BoxError>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(sent) = this.sent.as_pin_mut() else {
            return Poll::Ready(Err(tonic::TimeoutExpired(()).into()));
        };
        let response = ready!(sent.poll(cx)).map_err(Into::into)?;
        // A status in the headers is the call's (tonic reads no other):
        // the layer above has classified it already. Found in review: the
        // same status repeated in the trailers was counted a second time.
        let report = this
            .report
            .take()
            .filter(|_| !response.headers().contains_key("grpc-status"));
        Poll::Ready(Ok(response.map(|body| WatchedBody::new(body, report))))
    }
}

impl<F> std::fmt::Debug for AttemptFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttemptFuture")
            .field("sent", &self.sent.is_some())
            .finish_non_exhaustive()
    }
}
