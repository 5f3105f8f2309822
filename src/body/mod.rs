//! `ReplayBody`: a request body that can be sent again.
//!
//! The body is recorded while the inner service reads it. A clone made with
//! [`ReplayBody::try_clone`] first replays what was recorded, then goes on
//! reading the original body where the first reader left off: a retry works
//! even when the server answered `401` before reading the whole body.
//!
//! ```
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Full};
//! use tower_token_refresh::ReplayBody;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let body = ReplayBody::try_new(Full::new(Bytes::from_static(b"hello")), 1024).unwrap();
//! let retry = body.try_clone().expect("recordable");
//!
//! assert_eq!(body.collect().await.unwrap().to_bytes(), "hello");
//! assert_eq!(retry.collect().await.unwrap().to_bytes(), "hello");
//! # }
//! ```
//!
//! # Invariants
//!
//! - Only one instance reads the original body at a time. An instance that
//!   needs the original while another holds it waits until that one is
//!   dropped: the retry's body MUST NOT be polled to completion before the
//!   first attempt's body is dropped (the inner service drops it once the
//!   response is done, which is always before a retry is sent).
//! - Recorded frames are replayed in order, trailers last; frames read by a
//!   replaying instance are recorded too, so a later clone sees them all.
//! - Once more than `cap` bytes were read, or more frames than `cap / 64`
//!   (at least 64: each frame kept costs bookkeeping besides its bytes), the
//!   recording is dropped: [`ReplayBody::is_capped`] turns true and an
//!   instance that would need the dropped bytes yields a [`Capped`] error
//!   instead of a truncated body.
//! - A body the layer records for its retry stops recording the same way
//!   once the instance reading it is the only one left: with the retry's
//!   clone gone (dropped once a response is accepted, while the transport
//!   may stream the body for long after), what it reads would be kept for
//!   nobody.
//! - An empty body (`is_end_stream` at creation) costs no allocation.

use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::BoxError;

/// The default recording cap: 64 KiB.
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use tower_token_refresh::body::DEFAULT_REPLAY_CAP;
/// use tower_token_refresh::ReplayBody;
///
/// let fits = Full::new(Bytes::from(vec![0; DEFAULT_REPLAY_CAP]));
/// assert!(ReplayBody::try_new(fits, DEFAULT_REPLAY_CAP).is_ok());
/// // Known to be larger: sent once as it is, never retried.
/// let larger = Full::new(Bytes::from(vec![0; DEFAULT_REPLAY_CAP + 1]));
/// assert!(ReplayBody::try_new(larger, DEFAULT_REPLAY_CAP).is_err());
/// ```
pub const DEFAULT_REPLAY_CAP: usize = 64 * 1024;

pin_project! {
    /// A request body that records what is read from it so that a clone can
    /// send it again. See the [module docs](crate::body) for the invariants.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http_body_util::{BodyExt, Full};
    /// use tower_token_refresh::ReplayBody;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let body = ReplayBody::try_new(Full::new(Bytes::from("payload")), 1024).unwrap();
    /// let again = body.try_clone().expect("replayable");
    /// let first = body.collect().await.unwrap().to_bytes();
    /// // The clone replays what the original read, once the original is done.
    /// assert_eq!(again.collect().await.unwrap().to_bytes(), first);
    /// # }
    /// ```
    pub struct ReplayBody<B> {
        #[pin]
        inner: Inner<B>,
    }
}

pin_project! {
    #[project = InnerProj]
    enum Inner<B> {
        Empty,
        Passthrough { #[pin] body: B },
        Replay { reader: Reader<B> },
    }
}

/// The error a replaying body yields when the bytes it needs were dropped
/// because the body grew past the recording cap.
///
/// ```
/// use tower_token_refresh::body::Capped;
/// use tower_token_refresh::BoxError;
///
/// // What a reader of a replaying body gets, as the body's error: found by
/// // downcasting (through an HTTP client, along the error's `source()`).
/// let error: BoxError = Capped.into();
/// assert!(error.is::<Capped>());
/// assert!(error.to_string().contains("replay cap"));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capped;

impl fmt::Display for Capped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("request body exceeded the replay cap and cannot be replayed")
    }
}

impl std::error::Error for Capped {}

/// The original body's error was already returned to the first reader.
#[derive(Debug, Clone, Copy)]
struct OriginalFailed;

impl fmt::Display for OriginalFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the original request body failed and cannot be replayed")
    }
}

impl std::error::Error for OriginalFailed {}

pin_project! {
    /// What the instance currently reading owns: the log of what was read
    /// and the rest of the original body, pinned in place inside the one
    /// box that is handed between instances through `Shared::slot`.
    struct Recording<B> {
        log: Log,
        cursor: Cursor,
        #[pin]
        rest: Option<B>,
    }
}

/// How far the instance that owns the recording has read in it. Kept in
/// the recording, not in each instance: an instance takes the recording
/// over once and holds it until dropped, so only the owner's position
/// matters, and it starts at zero at each takeover. Outside the instance,
/// the body that travels inside every request stays 24 bytes (40 with the
/// position), which keeps a `Request<ReplayBody<Empty<_>>>` within the 256
/// bytes that `memcpy` copies without a loop.
#[derive(Default)]
struct Cursor {
    frames_sent: usize,
    bytes_sent: usize,
    trailers_sent: bool,
}

/// The chunks recorded, the first kept inline: most bodies kept for a
/// replay come in one frame (a `Full`, a unary gRPC message), and a `Vec`
/// would allocate for it.
#[derive(Default)]
struct Chunks {
    first: Option<Bytes>,
    rest: Vec<Bytes>,
}

impl Chunks {
    fn push(&mut self, chunk: Bytes) {
        match self.first {
            None => self.first = Some(chunk),
            Some(_) => self.rest.push(chunk),
        }
    }

    /// The chunk recorded `index`th; there must be one.
    fn get(&self, index: usize) -> &Bytes {
        match index.checked_sub(1) {
            None => self.first.as_ref().expect("a first chunk recorded"),
            Some(index) => &self.rest[index],
        }
    }
}

/// What was read from the original body so far.
struct Log {
    chunks: Chunks,
    recorded_bytes: usize,
    /// Data frames read from the original so far, recorded or not.
    frames_read: usize,
    trailers: Option<HeaderMap>,
    failed: bool,
}

struct Slot<B> {
    recording: Option<Pin<Box<Recording<B>>>>,
    /// Every instance waiting for the recording. A single slot lost wakeups:
    /// with two instances waiting, the second overwrote the first's waker,
    /// and the first was never woken again.
    waiting: Vec<Waker>,
}

struct Shared<B> {
    slot: Mutex<Slot<B>>,
    capped: AtomicBool,
    cap: usize,
    /// Recording stops while the reading instance is the only one left.
    while_cloned: bool,
    initial_hint: SizeHint,
}

/// One instance's view: its position, and the recording while it reads.
struct Reader<B> {
    shared: Arc<Shared<B>>,
    // Boxed so that the body, which travels inside every request, stays
    // small: moving requests around is on the hot path.
    owned: Option<Pin<Box<Recording<B>>>>,
}

impl<B> ReplayBody<B>
where
    B: Body,
{
    /// Wraps `body` for recording up to `cap` bytes.
    ///
    /// Returns the body back when its size hint already exceeds the cap: it
    /// could never be replayed, so it should be sent as it is.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http_body_util::Full;
    /// use tower_token_refresh::ReplayBody;
    ///
    /// let big = Full::new(Bytes::from(vec![0u8; 100]));
    /// assert!(ReplayBody::try_new(big, 10).is_err());
    /// ```
    pub fn try_new(body: B, cap: usize) -> Result<Self, B> {
        Self::recorded(body, cap, false)
    }

    /// As [`try_new`](Self::try_new), for a body the layer sends with a
    /// clone kept for its retry: recording stops once that clone (and any
    /// other) is gone, since no retry can follow.
    pub(crate) fn try_new_for_retry(body: B, cap: usize) -> Result<Self, B> {
        Self::recorded(body, cap, true)
    }

    fn recorded(body: B, cap: usize, while_cloned: bool) -> Result<Self, B> {
        if body.is_end_stream() {
            return Ok(Self::empty());
        }
        let hint = body.size_hint();
        if hint.lower() > cap as u64 {
            return Err(body);
        }
        let shared = Arc::new(Shared {
            slot: Mutex::new(Slot {
                recording: None,
                waiting: Vec::new(),
            }),
            capped: AtomicBool::new(false),
            cap,
            while_cloned,
            initial_hint: hint,
        });
        let recording = Box::pin(Recording {
            log: Log {
                chunks: Chunks::default(),
                recorded_bytes: 0,
                frames_read: 0,
                trailers: None,
                failed: false,
            },
            cursor: Cursor::default(),
            rest: Some(body),
        });
        Ok(Self {
            inner: Inner::Replay {
                reader: Reader::new(shared, Some(recording)),
            },
        })
    }

    /// Wraps `body` without recording it: it can be sent once.
    ///
    /// ```
    /// use http_body_util::Empty;
    /// use tower_token_refresh::ReplayBody;
    /// let body = ReplayBody::passthrough(Empty::<bytes::Bytes>::new());
    /// assert!(body.try_clone().is_none());
    /// ```
    pub fn passthrough(body: B) -> Self {
        Self {
            inner: Inner::Passthrough { body },
        }
    }
}

/// A request body made from bytes, sent once (not recorded), so a client
/// whose body type is `ReplayBody<B>` can carry requests that never went
/// through the token layer, such as
/// [`HttpRefresher`](crate::http::HttpRefresher)'s refresh calls.
///
/// ```
/// use bytes::Bytes;
/// use http_body::Body;
/// use http_body_util::Full;
/// use tower_token_refresh::ReplayBody;
///
/// let body = ReplayBody::<Full<Bytes>>::from(Bytes::from_static(b"{}"));
/// assert_eq!(body.size_hint().exact(), Some(2));
/// assert!(ReplayBody::<Full<Bytes>>::from(Bytes::new()).is_end_stream());
/// ```
impl<B: From<Bytes> + Body> From<Bytes> for ReplayBody<B> {
    fn from(bytes: Bytes) -> Self {
        if bytes.is_empty() {
            Self::empty()
        } else {
            Self::passthrough(B::from(bytes))
        }
    }
}

impl<B> ReplayBody<B> {
    /// An empty body; replayable for free.
    ///
    /// ```
    /// use http_body::Body;
    /// let body = tower_token_refresh::ReplayBody::<http_body_util::Empty<bytes::Bytes>>::empty();
    /// assert!(body.is_end_stream());
    /// ```
    pub fn empty() -> Self {
        Self {
            inner: Inner::Empty,
        }
    }

    /// A new instance that replays this body from the start, or `None` when
    /// the body is not recorded ([`ReplayBody::passthrough`]).
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http_body_util::{BodyExt, Full};
    /// use tower_token_refresh::ReplayBody;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let body = ReplayBody::try_new(Full::new(Bytes::from("payload")), 1024).unwrap();
    /// let replay = body.try_clone().expect("recorded");
    /// // The original is read (sent once), then the clone replays it whole.
    /// assert_eq!(body.collect().await.unwrap().to_bytes(), "payload");
    /// assert_eq!(replay.collect().await.unwrap().to_bytes(), "payload");
    ///
    /// // A body sent as it is keeps no recording to replay.
    /// assert!(ReplayBody::passthrough(Full::new(Bytes::from("once"))).try_clone().is_none());
    /// # }
    /// ```
    pub fn try_clone(&self) -> Option<Self> {
        let inner = match &self.inner {
            Inner::Empty => Inner::Empty,
            Inner::Passthrough { .. } => return None,
            Inner::Replay { reader } => Inner::Replay {
                reader: Reader::new(Arc::clone(&reader.shared), None),
            },
        };
        Some(Self { inner })
    }

    /// Lets go of the recording this clone shares (it becomes an empty
    /// body), so that the original stops recording for it.
    #[inline]
    pub(crate) fn stop_sharing(&mut self) {
        if matches!(self.inner, Inner::Replay { .. }) {
            *self = Self::empty();
        }
    }

    /// Whether the body grew past the cap (or was never recorded), so a
    /// clone could not replay it.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http_body_util::channel::Channel;
    /// use http_body_util::BodyExt;
    /// use tower_token_refresh::ReplayBody;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// // 2 KiB streamed in two chunks, against a cap of 1 KiB: no size hint
    /// // gives the length away, so it is found out while reading.
    /// let (mut tx, streamed) = Channel::<Bytes>::new(2);
    /// for _ in 0..2 {
    ///     tx.send_data(Bytes::from(vec![b'x'; 1024])).await.unwrap();
    /// }
    /// drop(tx);
    /// let body = ReplayBody::try_new(streamed, 1024).unwrap();
    /// let replay = body.try_clone().unwrap();
    /// assert!(!body.is_capped(), "nothing read yet");
    /// assert_eq!(body.collect().await.unwrap().to_bytes().len(), 2048, "sent whole");
    /// assert!(replay.is_capped(), "too large to replay");
    /// assert!(replay.collect().await.is_err(), "a replay would be cut short: `Capped`");
    /// # }
    /// ```
    pub fn is_capped(&self) -> bool {
        match &self.inner {
            Inner::Empty => false,
            Inner::Passthrough { .. } => true,
            Inner::Replay { reader } => reader.shared.capped.load(Ordering::Acquire),
        }
    }

    /// Whether a clone made now could replay this body in full.
    ///
    /// `Ready(true)` once no other instance holds the original (all that was
    /// read is recorded; the rest is still to be read), `Ready(false)` once
    /// the body outgrew the cap or is not recorded, `Pending` while another
    /// instance is still reading it within the cap. The retry waits on this
    /// before giving up the original rejection.
    pub(crate) fn poll_replayable(&self, cx: &mut Context<'_>) -> Poll<bool> {
        let reader = match &self.inner {
            Inner::Empty => return Poll::Ready(true),
            Inner::Passthrough { .. } => return Poll::Ready(false),
            Inner::Replay { reader } => reader,
        };
        let shared = &reader.shared;
        if let Some(recording) = &reader.owned {
            return Poll::Ready(!shared.capped.load(Ordering::Acquire) && !recording.log.failed);
        }
        // Checked under the slot lock, which the capping reader also takes
        // to wake waiters: no wake-up is lost between check and register.
        let mut slot = shared.slot();
        if shared.capped.load(Ordering::Acquire) {
            return Poll::Ready(false);
        }
        if let Some(recording) = &slot.recording {
            // A body that failed cannot be sent again in full.
            return Poll::Ready(!recording.log.failed);
        }
        slot.register(cx.waker());
        Poll::Pending
    }
}

impl<B> Body for ReplayBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().inner.project() {
            InnerProj::Empty => Poll::Ready(None),
            InnerProj::Passthrough { body } => match body.poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(
                    frame.map_data(|mut d| d.copy_to_bytes(d.remaining()))
                ))),
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
            InnerProj::Replay { reader } => reader.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Empty => true,
            Inner::Passthrough { body } => body.is_end_stream(),
            Inner::Replay { reader } => reader.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Empty => SizeHint::with_exact(0),
            Inner::Passthrough { body } => body.size_hint(),
            Inner::Replay { reader } => reader.size_hint(),
        }
    }
}

impl<B> Reader<B> {
    fn new(shared: Arc<Shared<B>>, owned: Option<Pin<Box<Recording<B>>>>) -> Self {
        Self { shared, owned }
    }
}

impl<B> Reader<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.owned.is_none() {
            let mut slot = self.shared.slot();
            match slot.recording.take() {
                Some(mut recording) => {
                    *recording.as_mut().project().cursor = Cursor::default();
                    self.owned = Some(recording);
                }
                None => {
                    slot.register(cx.waker());
                    return Poll::Pending;
                }
            }
        }
        let recording = self.owned.as_mut().expect("acquired above").as_mut();
        let mut recording = recording.project();
        let (log, cursor) = (recording.log, recording.cursor);

        if cursor.frames_sent < log.frames_read {
            if self.shared.capped.load(Ordering::Acquire) {
                return Poll::Ready(Some(Err(Capped.into())));
            }
            let chunk = log.chunks.get(cursor.frames_sent).clone();
            cursor.frames_sent += 1;
            cursor.bytes_sent += chunk.len();
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }

        while let Some(rest) = recording.rest.as_mut().as_pin_mut() {
            let frame = match rest.poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    recording.rest.set(None);
                    break;
                }
                Poll::Ready(Some(Err(error))) => {
                    recording.rest.set(None);
                    log.failed = true;
                    return Poll::Ready(Some(Err(error.into())));
                }
                Poll::Ready(Some(Ok(frame))) => frame,
            };
            match frame.into_data() {
                Ok(mut data) => {
                    let chunk = data.copy_to_bytes(data.remaining());
                    // Alone, this instance is the only one left: no clone
                    // exists to replay what it reads, and in the layer
                    // none is made from an instance being sent.
                    let alone = self.shared.while_cloned && Arc::strong_count(&self.shared) == 1;
                    log.record(&chunk, &self.shared, alone);
                    cursor.frames_sent += 1;
                    cursor.bytes_sent += chunk.len();
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        // Trailers end a body.
                        recording.rest.set(None);
                        log.trailers = Some(trailers.clone());
                        cursor.trailers_sent = true;
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                    }
                    // A frame kind this version of http-body does not know:
                    // skip it, as hyper does.
                }
            }
        }

        if log.failed {
            return Poll::Ready(Some(Err(OriginalFailed.into())));
        }
        if !cursor.trailers_sent {
            if let Some(trailers) = &log.trailers {
                cursor.trailers_sent = true;
                return Poll::Ready(Some(Ok(Frame::trailers(trailers.clone()))));
            }
        }
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        // Without the recording this instance cannot know; "false" is the
        // answer http-body allows when unsure.
        let Some(recording) = &self.owned else {
            return false;
        };
        let cursor = &recording.cursor;
        cursor.frames_sent >= recording.log.frames_read
            && !recording.log.failed
            && recording
                .rest
                .as_ref()
                .is_none_or(|rest| rest.is_end_stream())
            && (cursor.trailers_sent || recording.log.trailers.is_none())
    }

    // `SizeHint` is `Copy` only since http-body 1.1; Cargo.toml allows 1.0.
    #[allow(clippy::clone_on_copy)]
    fn size_hint(&self) -> SizeHint {
        let Some(recording) = &self.owned else {
            return self.shared.initial_hint.clone();
        };
        let replay = recording
            .log
            .recorded_bytes
            .saturating_sub(recording.cursor.bytes_sent) as u64;
        let rest = recording
            .rest
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |rest| rest.size_hint());
        // Saturating/checked: a source may report an upper bound near
        // `u64::MAX`, and a plain `+` overflowed (a panic in debug; in release
        // a wrapped upper bound below the lower one, which `set_upper` rejects
        // with a panic). An upper bound that does not fit is no upper bound.
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower().saturating_add(replay));
        if let Some(upper) = rest.upper().and_then(|upper| upper.checked_add(replay)) {
            hint.set_upper(upper);
        }
        hint
    }
}

/// What each kept frame costs besides its bytes: its slot in the log and
/// the shared count a cloned `Bytes` may allocate.
const FRAME_COST: usize = 64;

/// Frames kept whatever the cap, so that a small cap still records a body
/// in a few frames.
const MIN_FRAMES: usize = 64;

impl Log {
    fn record<B>(&mut self, chunk: &Bytes, shared: &Shared<B>, alone: bool) {
        self.frames_read += 1;
        if shared.capped.load(Ordering::Relaxed) {
            return;
        }
        self.recorded_bytes += chunk.len();
        // Frames count too: each one kept costs memory, an empty one as
        // much as any, so a body in tiny frames is held to about as much
        // bookkeeping as the cap allows bytes.
        let max_frames = (shared.cap / FRAME_COST).max(MIN_FRAMES);
        if alone || self.recorded_bytes > shared.cap || self.frames_read > max_frames {
            // Keep streaming for the current reader, but free the memory:
            // nobody can replay this body any more.
            shared.capped.store(true, Ordering::Release);
            self.chunks = Chunks::default();
            // Whoever waits in `poll_replayable` learns the answer now, not
            // when the reader is dropped.
            let waiting = shared.slot().take_waiting();
            waiting.into_iter().for_each(Waker::wake);
        } else {
            self.chunks.push(chunk.clone());
        }
    }
}

impl<B> Shared<B> {
    fn slot(&self) -> MutexGuard<'_, Slot<B>> {
        self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<B> Slot<B> {
    fn register(&mut self, waker: &Waker) {
        if !self.waiting.iter().any(|w| w.will_wake(waker)) {
            self.waiting.push(waker.clone());
        }
    }

    /// The wakers to wake once the slot's lock is released: waking may run
    /// code that takes this lock again (an executor that polls the woken
    /// task at once, or a waker that drops the last of a task holding a
    /// clone of this body).
    fn take_waiting(&mut self) -> Vec<Waker> {
        std::mem::take(&mut self.waiting)
    }
}

impl<B> Drop for Reader<B> {
    fn drop(&mut self) {
        if let Some(recording) = self.owned.take() {
            let waiting = {
                let mut slot = self.shared.slot();
                slot.recording = Some(recording);
                slot.take_waiting()
            };
            // Wake them all: the first to poll takes the recording, the
            // others register again and are woken when it is dropped.
            waiting.into_iter().for_each(Waker::wake);
        }
    }
}

impl<B> fmt::Debug for ReplayBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.inner {
            Inner::Empty => "empty",
            Inner::Passthrough { .. } => "passthrough",
            Inner::Replay { .. } => "replay",
        };
        f.debug_struct("ReplayBody")
            .field("kind", &kind)
            .field("capped", &self.is_capped())
            .finish()
    }
}

#[cfg(test)]
mod tests;
