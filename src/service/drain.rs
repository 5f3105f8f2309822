//! [`Drain`]: a rejection's body read to its end before it is dropped.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Buf;
use http_body::Body;

/// Body bytes of a rejection read before it is dropped anyway: enough for
/// any error document, not a download.
const DRAIN_LIMIT: usize = 64 * 1024;

/// A rejection being read to its end, so that dropping it does not reset
/// its stream. Over HTTP/2, a reset stream's frames still arriving count
/// as errors once the client has forgotten the stream, and past 1,024 of
/// those (h2's default) hyper's client closes the connection
/// (`too_many_internal_resets`), failing every request on it. Dropped
/// unread, the rejections of 10,000 requests in flight at a revocation
/// did that in 2 of 15 runs of the revoked storm (`benches/storm.rs`);
/// read first, in none of 30.
///
/// Pinned on the heap: a response body need not be `Unpin`, and only a
/// rejection whose body has not ended yet gets here.
pub(crate) struct Drain<T> {
    body: Pin<Box<T>>,
    read: usize,
}

impl<T: Body> Drain<T> {
    pub(crate) fn new(body: T) -> Self {
        Self {
            body: Box::pin(body),
            read: 0,
        }
    }

    /// Ready once the body ended, failed, or passed [`DRAIN_LIMIT`] bytes.
    /// Each frame counts at least one byte: found in review, a body always
    /// ready with empty frames (an in-process service's stream) kept this
    /// loop, and its thread, busy for ever.
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        while self.read <= DRAIN_LIMIT && !self.body.is_end_stream() {
            match ready!(self.body.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => {
                    let bytes = frame.data_ref().map_or(0, Buf::remaining);
                    self.read += bytes.max(1);
                }
                Some(Err(_)) | None => break,
            }
        }
        Poll::Ready(())
    }
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use bytes::Bytes;
    use http_body::{Frame, SizeHint};

    use super::*;

    /// A body always ready with another empty frame, counting them.
    struct EmptyFrames(usize);

    impl Body for EmptyFrames {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            self.0 += 1;
            // Far past the limit: the loop would never have ended.
            assert!(self.0 < 10 * DRAIN_LIMIT, "still draining");
            Poll::Ready(Some(Ok(Frame::data(Bytes::new()))))
        }

        fn size_hint(&self) -> SizeHint {
            SizeHint::new()
        }
    }

    #[test]
    fn a_body_of_endless_empty_frames_is_drained_no_further_than_the_limit() {
        let mut drain = Drain::new(EmptyFrames(0));
        let mut cx = Context::from_waker(Waker::noop());

        assert!(drain.poll(&mut cx).is_ready());
        assert_eq!(drain.body.0, DRAIN_LIMIT + 1);
    }
}
