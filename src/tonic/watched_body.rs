//! The response body of [`IntoTonicBody`]: the channel's, watched for
//! UNAUTHENTICATED in its trailers.
//!
//! A server that rejects a token after its response has begun (a stream
//! cut short because its token was revoked) says so in the trailers. The
//! call is not retried: the caller may already hold its messages. But the
//! token is known to be bad, and the next call would go out with it, be
//! rejected in turn and need a retry, one that a request over the replay
//! cap cannot have. So the trailers are told to the layer as a rejection
//! of the token the call was sent with, which starts its refresh.

use std::fmt;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::HeaderValue;
use http_body::{Body, Frame, SizeHint};

use crate::classify::grpc_unauthenticated;
use crate::TokenHandle;

#[cfg(doc)]
use super::IntoTonicBody;

/// Whom to tell of an UNAUTHENTICATED in the trailers, and the token to
/// name: the `Authorization` header the call went out with.
pub(super) struct Report {
    pub(super) handle: TokenHandle,
    pub(super) sent: HeaderValue,
}

pin_project_lite::pin_project! {
    /// The response body of [`IntoTonicBody`]: the channel's own, frame for
    /// frame. Made with [`IntoTonicBody::reporting_to`] (as
    /// [`with_token_refresh`](super::with_token_refresh) makes it), it
    /// tells the layer when the trailers say UNAUTHENTICATED
    /// (`grpc-status: 16`), as they are read: the token the call was sent
    /// with, if still the layer's current one, is marked rejected and
    /// refreshed, so that the next call does not go out with it (unless a
    /// refresh brought it less than the
    /// [minimum refresh interval](crate::Builder::min_refresh_interval)
    /// ago, as for a rejected call). The call itself is not retried, and
    /// its caller gets the status. A body dropped before its trailers, or
    /// ending in an error, tells nothing, nor does the body of a response
    /// whose headers carry a `grpc-status` (the layer has read that one).
    ///
    /// ```
    /// use http_body_util::BodyExt;
    /// use tower::ServiceExt;
    /// use tower_token_refresh::tonic::IntoTonicBody;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let channel = IntoTonicBody::new(tower::service_fn(|_: http::Request<tonic::body::Body>| async {
    ///     Ok::<_, std::convert::Infallible>(http::Response::new(tonic::body::Body::new(
    ///         http_body_util::Full::new(bytes::Bytes::from("message")),
    ///     )))
    /// }));
    /// let response = channel.oneshot(http::Request::new(tonic::body::Body::empty())).await.unwrap();
    /// let body = response.into_body().collect().await.unwrap().to_bytes();
    /// assert_eq!(body, "message");
    /// # }
    /// ```
    pub struct WatchedBody<B> {
        #[pin]
        inner: B,
        // `None` once trailers came (told or not), at the body's end or
        // error, or when made without.
        report: Option<Report>,
    }
}

impl<B> WatchedBody<B> {
    pub(super) fn new(inner: B, report: Option<Report>) -> Self {
        Self { inner, report }
    }

    /// The channel's body.
    ///
    /// ```
    /// use tower::ServiceExt;
    /// use tower_token_refresh::tonic::IntoTonicBody;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let channel = IntoTonicBody::new(tower::service_fn(|_: http::Request<tonic::body::Body>| async {
    ///     Ok::<_, std::convert::Infallible>(http::Response::new("body"))
    /// }));
    /// let response = channel.oneshot(http::Request::new(tonic::body::Body::empty())).await.unwrap();
    /// assert_eq!(*response.body().get_ref(), "body");
    /// # }
    /// ```
    pub fn get_ref(&self) -> &B {
        &self.inner
    }

    /// Consumes `self`, returning the channel's body, unwatched.
    ///
    /// ```
    /// use tower::ServiceExt;
    /// use tower_token_refresh::tonic::IntoTonicBody;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let channel = IntoTonicBody::new(tower::service_fn(|_: http::Request<tonic::body::Body>| async {
    ///     Ok::<_, std::convert::Infallible>(http::Response::new("body"))
    /// }));
    /// let response = channel.oneshot(http::Request::new(tonic::body::Body::empty())).await.unwrap();
    /// assert_eq!(response.into_body().into_inner(), "body");
    /// # }
    /// ```
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B: Body> Body for WatchedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(trailers) = frame.trailers_ref() {
                    // Trailers end a body: whatever they say, nothing
                    // after them needs watching.
                    if let Some(report) = this.report.take() {
                        if grpc_unauthenticated(trailers) {
                            report.handle.rejected_after_response(&report.sent);
                        }
                    }
                }
            }
            Some(Err(_)) | None => *this.report = None,
        }
        Poll::Ready(frame)
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: fmt::Debug> fmt::Debug for WatchedBody<B> {
    // Not the header it watches for: it holds the access token.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WatchedBody")
            .field("inner", &self.inner)
            .field("reporting", &self.report.is_some())
            .finish()
    }
}
