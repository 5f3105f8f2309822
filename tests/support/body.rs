//! Request bodies for the layered client.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};

/// The one request body type the layered client sends, so requests with
/// different bodies share one client.
///
/// The error type is concrete on purpose: with `Box<dyn Error + Send +
/// Sync>` here, rustc cannot prove the response future `Send` inside
/// `tokio::spawn` ("implementation of `Service` is not general enough", the
/// known higher-ranked lifetime limitation, rust-lang/rust#100013).
pub type ReqBody = UnsyncBoxBody<Bytes, Infallible>;

/// No body (for `GET`).
pub fn empty() -> ReqBody {
    Empty::new().boxed_unsync()
}

/// A body of known length, sent in one piece.
pub fn full(bytes: impl Into<Bytes>) -> ReqBody {
    Full::new(bytes.into()).boxed_unsync()
}

/// A body of unknown length (sent chunked), yielding `chunk`-byte pieces of
/// `data` with a pause before each piece after the first: the server can
/// answer long before the client has finished sending it.
#[cfg(test)]
pub fn chunked(data: Bytes, chunk: usize, pause: std::time::Duration) -> ReqBody {
    chunked::Chunked {
        rest: data,
        chunk,
        pause,
        sleep: None,
    }
    .boxed_unsync()
}

#[cfg(test)]
mod chunked {
    use std::convert::Infallible;
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{ready, Context, Poll};
    use std::time::Duration;

    use bytes::Bytes;
    use hyper::body::{Body, Frame};
    use tokio::time::Sleep;

    pub(super) struct Chunked {
        pub(super) rest: Bytes,
        pub(super) chunk: usize,
        pub(super) pause: Duration,
        pub(super) sleep: Option<Pin<Box<Sleep>>>,
    }

    impl Body for Chunked {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            if self.rest.is_empty() {
                return Poll::Ready(None);
            }
            if let Some(sleep) = self.sleep.as_mut() {
                ready!(sleep.as_mut().poll(cx));
            }
            let pause = self.pause;
            self.sleep = Some(Box::pin(tokio::time::sleep(pause)));
            let n = self.chunk.min(self.rest.len());
            let piece = self.rest.split_to(n);
            Poll::Ready(Some(Ok(Frame::data(piece))))
        }

        fn is_end_stream(&self) -> bool {
            self.rest.is_empty()
        }
    }
}
