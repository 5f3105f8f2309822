//! Unit tests for [`ReplayBody`], in the spirit of linkerd2-proxy's
//! `linkerd/http/retry/src/replay/tests.rs`.
//!
//! The source body is [`TestBody`]: frames are fed through a
//! `tokio::sync::mpsc` channel (so it can be pending), it can yield data,
//! trailers and errors, and it reports a configurable size hint and
//! `is_end_stream`.

use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Empty, Full};
use tokio::sync::mpsc;

// `crate::body::Capped` is `tower_token_refresh::body::Capped`.
use crate::body::{Capped, ReplayBody};
use crate::BoxError;

use super::{Inner, OriginalFailed};

mod cap;
mod edge_cases;
mod hints;
mod replay;
mod replayable;
mod waiting;

const CAP: usize = 64 * 1024;

// === test body ===

#[derive(Debug)]
enum Item {
    Data(Bytes),
    Trailers(HeaderMap),
    Error(&'static str),
}

/// The error [`TestBody`] yields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TestError(&'static str);

impl fmt::Display for TestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "test body error: {}", self.0)
    }
}

impl std::error::Error for TestError {}

/// Feeds a [`TestBody`]. Dropping it ends the body.
struct Tx(mpsc::UnboundedSender<Item>);

impl Tx {
    fn data(&self, chunk: &'static str) {
        self.send(Item::Data(Bytes::from_static(chunk.as_bytes())));
    }

    fn trailers(&self, trailers: HeaderMap) {
        self.send(Item::Trailers(trailers));
    }

    fn error(&self, message: &'static str) {
        self.send(Item::Error(message));
    }

    fn send(&self, item: Item) {
        assert!(
            self.0.send(item).is_ok(),
            "the test body was dropped before all frames were sent"
        );
    }
}

/// A body fed through a channel, with a configurable size hint.
#[derive(Debug)]
struct TestBody {
    rx: mpsc::UnboundedReceiver<Item>,
    /// The hint reported now; data frames are subtracted from it unless
    /// `fixed_hint`.
    hint: SizeHint,
    fixed_hint: bool,
    /// Report `is_end_stream` once the hint is exactly 0 (like `Full`).
    end_at_zero: bool,
    /// Yielded trailers or an error: the next poll yields `None`.
    finishing: bool,
    /// Yielded `None`: polling again is a bug.
    done: bool,
}

impl TestBody {
    /// A streaming body of unknown length, fed through the returned [`Tx`].
    fn channel() -> (Tx, Self) {
        let (tx, rx) = mpsc::unbounded_channel();
        let body = Self {
            rx,
            hint: SizeHint::new(),
            fixed_hint: false,
            end_at_zero: false,
            finishing: false,
            done: false,
        };
        (Tx(tx), body)
    }

    /// A complete body with an exact size hint; it reports `is_end_stream`
    /// right after its last data frame when it has no trailers and no error.
    fn new(items: Vec<Item>) -> Self {
        let (tx, mut body) = Self::channel();
        let mut len = 0;
        let mut data_only = true;
        for item in items {
            match &item {
                Item::Data(bytes) => len += bytes.len() as u64,
                Item::Trailers(_) | Item::Error(_) => data_only = false,
            }
            tx.send(item);
        }
        body.hint = SizeHint::with_exact(len);
        body.end_at_zero = data_only;
        body
    }

    /// A body that is over at creation (`is_end_stream` is true).
    fn empty() -> Self {
        let (_, mut body) = Self::channel();
        body.hint = SizeHint::with_exact(0);
        body.done = true;
        body
    }

    /// Reports `hint` instead, adjusted as data is read.
    fn with_hint(mut self, hint: SizeHint) -> Self {
        self.hint = hint;
        self.end_at_zero = false;
        self
    }

    /// Reports `hint` forever, whatever is read.
    fn with_fixed_hint(mut self, hint: SizeHint) -> Self {
        self.fixed_hint = true;
        self.with_hint(hint)
    }
}

impl Body for TestBody {
    type Data = Bytes;
    type Error = TestError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, TestError>>> {
        let this = &mut *self;
        assert!(!this.done, "TestBody polled after it ended");
        if this.finishing {
            this.done = true;
            return Poll::Ready(None);
        }
        let item = match this.rx.poll_recv(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(item) => item,
        };
        Poll::Ready(match item {
            None => {
                this.done = true;
                None
            }
            Some(Item::Data(bytes)) => {
                if !this.fixed_hint {
                    let len = bytes.len() as u64;
                    let mut hint = SizeHint::new();
                    hint.set_lower(this.hint.lower().saturating_sub(len));
                    if let Some(upper) = this.hint.upper() {
                        hint.set_upper(upper.saturating_sub(len));
                    }
                    this.hint = hint;
                }
                Some(Ok(Frame::data(bytes)))
            }
            Some(Item::Trailers(trailers)) => {
                this.finishing = true;
                Some(Ok(Frame::trailers(trailers)))
            }
            Some(Item::Error(message)) => {
                this.finishing = true;
                Some(Err(TestError(message)))
            }
        })
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.finishing || (self.end_at_zero && self.hint.exact() == Some(0))
    }

    // `SizeHint` is `Copy` only since http-body 1.1; Cargo.toml allows 1.0.
    #[allow(clippy::clone_on_copy)]
    fn size_hint(&self) -> SizeHint {
        self.hint.clone()
    }
}

// === helpers ===

fn data(chunk: &'static str) -> Item {
    Item::Data(Bytes::from_static(chunk.as_bytes()))
}

fn trailers(name: &'static str, value: &'static str) -> HeaderMap {
    let mut trailers = HeaderMap::new();
    trailers.insert(name, HeaderValue::from_static(value));
    trailers
}

/// What a body yielded, comparable.
#[derive(Debug, PartialEq)]
enum Ev {
    Data(Bytes),
    Trailers(HeaderMap),
}

impl Ev {
    fn data(chunk: &'static str) -> Self {
        Ev::Data(Bytes::from_static(chunk.as_bytes()))
    }
}

fn to_ev(frame: Frame<Bytes>) -> Ev {
    match frame.into_data() {
        Ok(data) => Ev::Data(data),
        Err(frame) => Ev::Trailers(frame.into_trailers().expect("data or trailers")),
    }
}

/// Reads frames until the end, or returns the first error. Trailers must be
/// the last frame: anything after them (trailers again, say) fails the test.
async fn read_all<B>(body: &mut B) -> Result<Vec<Ev>, B::Error>
where
    B: Body<Data = Bytes> + Unpin,
{
    let mut events = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Some(Ev::Trailers(_)) = events.last() {
            panic!("a frame after the trailers: {:?}", frame.map(to_ev).ok());
        }
        events.push(to_ev(frame?));
    }
    Ok(events)
}

/// The next frame, which must be data.
async fn next_data<B>(body: &mut B) -> Bytes
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: fmt::Debug,
{
    let frame = body
        .frame()
        .await
        .expect("a frame, not the end")
        .expect("a frame, not an error");
    match frame.into_data() {
        Ok(data) => data,
        Err(frame) => panic!("expected data, got {frame:?}"),
    }
}

/// The next frame, which must be an error.
async fn next_error<B>(body: &mut B) -> B::Error
where
    B: Body<Data = Bytes> + Unpin,
{
    match body.frame().await {
        Some(Err(error)) => error,
        Some(Ok(frame)) => panic!("expected an error, got {frame:?}"),
        None => panic!("expected an error, got the end of the body"),
    }
}

fn hint<B: Body>(body: &B) -> (u64, Option<u64>) {
    let hint = body.size_hint();
    (hint.lower(), hint.upper())
}

fn is_capped_error(error: &BoxError) -> bool {
    error.downcast_ref::<Capped>() == Some(&Capped)
}

/// A waker that counts how often it was woken.
#[derive(Default)]
struct WakeCounter(AtomicUsize);

impl WakeCounter {
    fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

impl Wake for WakeCounter {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn counting_waker() -> (Arc<WakeCounter>, Waker) {
    let counter = Arc::new(WakeCounter::default());
    let waker = Waker::from(Arc::clone(&counter));
    (counter, waker)
}

type Polled = Poll<Option<Result<Frame<Bytes>, BoxError>>>;

fn poll_with<B>(body: &mut ReplayBody<B>, waker: &Waker) -> Polled
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    Pin::new(body).poll_frame(&mut Context::from_waker(waker))
}

fn replay(items: Vec<Item>) -> ReplayBody<TestBody> {
    ReplayBody::try_new(TestBody::new(items), CAP).expect("under the cap")
}
