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
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        while self.read <= DRAIN_LIMIT && !self.body.is_end_stream() {
            match ready!(self.body.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => self.read += frame.data_ref().map_or(0, Buf::remaining),
                Some(Err(_)) | None => break,
            }
        }
        Poll::Ready(())
    }
}
