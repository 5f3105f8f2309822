//! [`poll_drained`]: a rejection's body read to its end before it is
//! dropped.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Buf;
use http_body::Body;

/// Body bytes of a rejection read before it is dropped anyway: enough for
/// any error document, not a download.
const DRAIN_LIMIT: usize = 64 * 1024;

/// Reads a rejection's body to its end, so that dropping it does not
/// reset its stream. Over HTTP/2, a reset stream's frames still arriving
/// count as errors once the client has forgotten the stream, and past
/// 1,024 of those hyper's client closes the connection
/// (`too_many_internal_resets`), failing every request on it. Dropped
/// unread, the rejections of 10,000 requests in flight at a revocation
/// did that in 2 of 15 runs of the revoked storm (`benches/storm.rs`);
/// read first, in none of 30. Ready once the body ended, failed, or passed
/// [`DRAIN_LIMIT`] bytes.
pub(super) fn poll_drained<T: Body>(
    mut body: Pin<&mut T>,
    drained: &mut usize,
    cx: &mut Context<'_>,
) -> Poll<()> {
    while *drained <= DRAIN_LIMIT && !body.is_end_stream() {
        match ready!(body.as_mut().poll_frame(cx)) {
            Some(Ok(frame)) => *drained += frame.data_ref().map_or(0, Buf::remaining),
            Some(Err(_)) | None => break,
        }
    }
    Poll::Ready(())
}
