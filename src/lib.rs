//! A [tower] layer for HTTP clients that keeps a bearer token current
//! without the caller noticing.
//!
//! - **Lock-free hot path**: the token sits in an `ArcSwap`; a request with a
//!   fresh token costs a look-up of the sending thread's own copy of the
//!   precomputed header and one atomic read of the token's flags, two
//!   reference-count bumps (the header's bytes and the shared state its
//!   response future keeps) and, with reactive retry on, a copy of the
//!   request head for the retry.
//! - **Proactive refresh**: inside the advisory window requests keep going
//!   while one background refresh runs; inside the mandatory window they
//!   wait for it. An optional timer refreshes even without traffic.
//! - **Reactive refresh**: a `401` (or a gRPC `UNAUTHENTICATED`) triggers
//!   one refresh and one retry with the body replayed. A `401` for a token
//!   that was already replaced retries with the new one without refreshing.
//! - **Single flight**: any number of concurrent requests cause one refresh,
//!   run in its own task so no cancelled request can stall it.
//! - **Failure classes**: terminal (re-authentication required, fail fast),
//!   rate limited (`Retry-After` honoured) and transient (backoff with
//!   jitter, keep using a still-valid token).
//! - **No leaks**: tokens are redacted in every `Debug`, the header is marked
//!   sensitive.
//! - **Outside the layer too**: [`TokenHandle::bearer`] hands the same token
//!   to connections that are not tower requests (a WebSocket, a broker or
//!   database login), and [`TokenHandle::bearer_after_rejection`] the next one
//!   after a rejection, with the same single flight.
//!
//! ```
//! use std::convert::Infallible;
//! use std::time::Duration;
//! use http::{Request, Response};
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let layer = TokenRefreshLayer::builder(refresh_fn(|ctx| async move {
//!         // Call your identity server here with ctx.refresh_token().
//!         let _ = ctx;
//!         Ok::<_, RefreshError>(TokenSet::new("access").with_expires_in(Duration::from_secs(3600)))
//!     }))
//!     .build();
//! let handle = layer.handle();
//!
//! let client = ServiceBuilder::new().layer(layer).service_fn(|req: Request<_>| async move {
//!     let bearer = req.headers()["authorization"].to_str().unwrap().to_owned();
//!     Ok::<_, Infallible>(Response::new(bearer))
//! });
//! let response = client
//!     .oneshot(Request::new(http_body_util::Empty::<bytes::Bytes>::new()))
//!     .await
//!     .unwrap();
//! assert_eq!(response.body(), "Bearer access");
//! assert_eq!(handle.stats().refreshes, 1); // the first request acquired the token
//! # }
//! ```
//!
//! # Timeouts
//!
//! A request may wait for a refresh (before its first send, and again
//! before its retry), and a rejected one is sent twice. The refresh call, a
//! [login](Builder::login) call and the [`on_refresh`](Builder::on_refresh)
//! hook each get the whole [refresh timeout](Builder::refresh_timeout), so
//! a refresh it waits for runs at most twice that timeout (three times
//! with a login source) plus a second; in [fleet mode](store) it may also
//! wait out another process's lease, which takes longer (see
//! [`Builder::store`]). A refresh whose runtime stops driving it (an idle
//! current-thread runtime) is given up at that bound and replaced, up to
//! three times, so a wait is bounded, but by a few such terms.
//! A timeout layered *below* this one (a `tower` timeout between it and
//! the transport, or a tonic `Endpoint::timeout`) runs per attempt and
//! sees none of the waiting. Put the caller's deadline *above* it, and
//! it covers the whole exchange (with the `tonic` feature,
//! `tonic::GrpcDeadline` holds a gRPC call's own `grpc-timeout` that way):
//!
//! ```
//! use std::time::Duration;
//! use http::{Request, Response};
//! use std::convert::Infallible;
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! // An identity server that never answers.
//! let layer = TokenRefreshLayer::builder(refresh_fn(|_| async {
//!         std::future::pending::<Result<TokenSet, RefreshError>>().await
//!     }))
//!     .build();
//! let client = ServiceBuilder::new()
//!     .timeout(Duration::from_millis(50)) // the whole request, waits included
//!     .layer(layer)
//!     .service_fn(|_req: Request<_>| async { Ok::<_, Infallible>(Response::new(String::new())) });
//!
//! let request = Request::new(http_body_util::Empty::<bytes::Bytes>::new());
//! let error = client.oneshot(request).await.unwrap_err();
//! assert!(error.is::<tower::timeout::error::Elapsed>());
//! # }
//! ```
//!
//! The `reqwest` middleware (feature `reqwest`) does this for a request's
//! own timeout by itself.
//!
//! # Runtime
//!
//! Refreshes run in tasks spawned on the tokio runtime, bounded by tokio
//! timers: build the runtime with them (`enable_time` or `enable_all`, as
//! `#[tokio::main]` does). On a runtime without timers tokio panics where
//! the layer sets one, and its message (to enable them) goes to the panic
//! hook; the layer keeps going without them: every refresh fails, requests
//! that need one get an [`Error`] for which
//! [`is_refresh_failed`](Error::is_refresh_failed) is true, the rest are
//! sent as usual, and no caller's task panics (a reqwest request's own
//! timeout still needs them). No wait that only a timer could bound is
//! taken: a rejected request whose body the transport still holds gets
//! the rejection back, not a retry, and a rejection's body that is not
//! there when first read is dropped unread (over HTTP/2, a reset stream).
//! (With `panic = "abort"`, the first of tokio's panics ends the process.)
//!
//! A request waits for a refresh on the runtime the refresh runs on, and
//! counts on that runtime to drive it. On a `current_thread` runtime only
//! `Runtime::block_on` does: a request awaited there through
//! `Handle::block_on` from another thread, while nothing runs
//! `Runtime::block_on`, waits until something does, as tokio documents for
//! every task and timer of such a runtime. A request awaited on another
//! runtime gives up on the refresh at its deadline instead; one awaited
//! outside any tokio runtime (by another executor), where no timer can
//! bound the wait, waits until the refresh's runtime drives it.
//!
//! [tower]: https://docs.rs/tower

#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]

mod bearer;
pub mod body;
pub mod classify;
mod error;
mod handle;
pub mod http;
mod manager;
mod refresh;
#[cfg(feature = "reqwest")]
pub mod reqwest;
mod service;
mod stats;
pub mod store;
mod token;
#[cfg(feature = "tonic")]
pub mod tonic;

#[cfg(test)]
mod test_support;

pub use bearer::Bearer;
pub use body::ReplayBody;
pub use error::{BoxError, Error, FailureClass, RefreshError};
pub use handle::{InvalidTokenError, TokenHandle, TokenState, TokenStatus};
pub use manager::window::RefreshWindow;
pub use manager::Backoff;
pub use refresh::{refresh_fn, Refresh, RefreshContext, RefreshFn, RefreshReason};
pub use service::{Builder, TokenRefresh, TokenRefreshLayer};
pub use stats::Stats;
pub use token::{Secret, TokenSet};

// The README's examples are compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

/// The response future of [`TokenRefresh`], for naming it in types.
///
/// ```
/// use std::convert::Infallible;
/// use http::{Request, Response};
/// use http_body_util::Empty;
/// use tower::Service;
/// use tower_token_refresh::{classify::Unauthorized, future::ResponseFuture, ReplayBody, TokenRefresh};
///
/// type Body = Empty<bytes::Bytes>;
///
/// // A wrapper that stores the layer's future by name.
/// struct Pending<S: Service<Request<ReplayBody<Body>>>> {
///     future: ResponseFuture<S, Body, Unauthorized>,
/// }
///
/// fn call<S>(service: &mut TokenRefresh<S>, request: Request<Body>) -> Pending<S>
/// where
///     S: Service<Request<ReplayBody<Body>>, Response = Response<Body>, Error = Infallible> + Clone,
/// {
///     Pending { future: service.call(request) }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use tower::ServiceExt;
/// use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};
///
/// let layer = TokenRefreshLayer::builder(refresh_fn(|_| async {
///         Ok::<_, RefreshError>(TokenSet::new("access"))
///     }))
///     .build();
/// let mut service = tower::ServiceBuilder::new().layer(layer).service_fn(
///     |req: Request<ReplayBody<Body>>| async move {
///         assert_eq!(req.headers()["authorization"], "Bearer access");
///         Ok::<_, Infallible>(Response::new(Body::new()))
///     },
/// );
/// service.ready().await.unwrap();
/// let pending = call(&mut service, Request::new(Body::new()));
/// assert_eq!(pending.future.await.unwrap().status(), 200);
/// # }
/// ```
pub mod future {
    pub use crate::service::ResponseFuture;
}
