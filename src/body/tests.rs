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

// === replaying ===

#[tokio::test]
async fn original_and_clone_yield_the_same_chunks_in_order() {
    let mut original = replay(vec![data("hello"), data(" "), data("world")]);
    let expected = vec![Ev::data("hello"), Ev::data(" "), Ev::data("world")];

    let mut retry = original.try_clone().expect("replayable");
    assert_eq!(read_all(&mut original).await.unwrap(), expected);
    drop(original);
    assert_eq!(read_all(&mut retry).await.unwrap(), expected);

    // A clone of a clone, and a clone made once everything was read.
    let mut again = retry.try_clone().expect("replayable");
    drop(retry);
    assert_eq!(read_all(&mut again).await.unwrap(), expected);
    let last = again.try_clone().expect("replayable");
    drop(again);
    assert_eq!(last.collect().await.unwrap().to_bytes(), "hello world");
}

#[tokio::test]
async fn clone_made_before_a_partial_read_replays_it_then_reads_the_rest() {
    // The server answered 401 after reading only part of the body.
    let (tx, body) = TestBody::channel();
    let mut original = ReplayBody::try_new(body, CAP).unwrap();
    let mut retry = original.try_clone().expect("replayable");

    tx.data("abc");
    tx.data("def");
    assert_eq!(next_data(&mut original).await, "abc");
    drop(original); // "def" was never read by the first attempt

    tx.data("ghi");
    drop(tx);
    assert_eq!(
        read_all(&mut retry).await.unwrap(),
        vec![Ev::data("abc"), Ev::data("def"), Ev::data("ghi")]
    );

    // What the retry read from the original was recorded too.
    let third = retry.try_clone().expect("replayable");
    drop(retry);
    assert_eq!(third.collect().await.unwrap().to_bytes(), "abcdefghi");
}

#[tokio::test]
async fn clone_made_before_reading_reads_everything_when_the_original_read_nothing() {
    let (tx, body) = TestBody::channel();
    let original = ReplayBody::try_new(body, CAP).unwrap();
    let mut retry = original.try_clone().expect("replayable");
    drop(original);

    tx.data("abc");
    tx.data("def");
    tx.trailers(trailers("x-checksum", "1"));
    drop(tx);
    assert_eq!(
        read_all(&mut retry).await.unwrap(),
        vec![
            Ev::data("abc"),
            Ev::data("def"),
            Ev::Trailers(trailers("x-checksum", "1")),
        ]
    );
}

#[tokio::test]
async fn clone_after_a_full_read_replays_data_then_trailers_exactly_once() {
    let mut original = replay(vec![
        data("abc"),
        data("def"),
        Item::Trailers(trailers("grpc-status", "0")),
    ]);
    let expected = vec![
        Ev::data("abc"),
        Ev::data("def"),
        Ev::Trailers(trailers("grpc-status", "0")),
    ];
    assert_eq!(read_all(&mut original).await.unwrap(), expected);
    assert!(original.frame().await.is_none(), "trailers end the body");

    for _ in 0..2 {
        let mut retry = original.try_clone().expect("replayable");
        drop(original);
        // `read_all` reads to the end: trailers come after the data, once.
        assert_eq!(read_all(&mut retry).await.unwrap(), expected);
        assert!(retry.frame().await.is_none(), "trailers replayed once");
        original = retry;
    }
}

#[tokio::test]
async fn trailers_read_by_a_replaying_clone_are_recorded_for_later_clones() {
    let (tx, body) = TestBody::channel();
    let mut original = ReplayBody::try_new(body, CAP).unwrap();
    tx.data("abc");
    assert_eq!(next_data(&mut original).await, "abc");

    let mut retry = original.try_clone().expect("replayable");
    drop(original);
    tx.trailers(trailers("x-end", "yes"));
    let expected = vec![Ev::data("abc"), Ev::Trailers(trailers("x-end", "yes"))];
    assert_eq!(read_all(&mut retry).await.unwrap(), expected);

    let mut third = retry.try_clone().expect("replayable");
    drop(retry);
    assert_eq!(read_all(&mut third).await.unwrap(), expected);
}

#[tokio::test]
async fn trailers_only_body_is_replayed() {
    let mut original = replay(vec![Item::Trailers(trailers("x-only", "1"))]);
    assert!(!original.is_end_stream(), "trailers are still to come");
    let expected = vec![Ev::Trailers(trailers("x-only", "1"))];
    assert_eq!(read_all(&mut original).await.unwrap(), expected);

    let mut retry = original.try_clone().expect("replayable");
    drop(original);
    assert!(!retry.is_end_stream(), "trailers are still to be replayed");
    assert_eq!(read_all(&mut retry).await.unwrap(), expected);
    assert!(retry.is_end_stream());
}

// === waiting for the original ===

#[test]
fn clone_polled_while_the_original_holds_the_body_waits_and_is_woken_on_drop() {
    let (tx, body) = TestBody::channel();
    let mut original = ReplayBody::try_new(body, CAP).unwrap();
    let mut retry = original.try_clone().expect("replayable");
    let (original_wakes, original_waker) = counting_waker();
    let (retry_wakes, retry_waker) = counting_waker();

    assert!(poll_with(&mut retry, &retry_waker).is_pending());
    tx.data("abc");
    match poll_with(&mut original, &original_waker) {
        Poll::Ready(Some(Ok(frame))) => assert_eq!(to_ev(frame), Ev::data("abc")),
        other => panic!("expected data, got {other:?}"),
    }
    // Still held: the retry keeps waiting, and nothing woke it.
    assert!(poll_with(&mut retry, &retry_waker).is_pending());
    assert_eq!(retry_wakes.count(), 0);

    drop(original);
    assert_eq!(
        retry_wakes.count(),
        1,
        "dropping the original wakes the clone"
    );
    assert_eq!(original_wakes.count(), 0);

    match poll_with(&mut retry, &retry_waker) {
        Poll::Ready(Some(Ok(frame))) => assert_eq!(to_ev(frame), Ev::data("abc")),
        other => panic!("expected the replayed data, got {other:?}"),
    }
    // Now the retry reads the original body itself, and is woken by it.
    assert!(poll_with(&mut retry, &retry_waker).is_pending());
    tx.data("def");
    assert_eq!(retry_wakes.count(), 2, "the source body wakes the clone");
    match poll_with(&mut retry, &retry_waker) {
        Poll::Ready(Some(Ok(frame))) => assert_eq!(to_ev(frame), Ev::data("def")),
        other => panic!("expected data, got {other:?}"),
    }
    drop(tx);
    assert!(matches!(
        poll_with(&mut retry, &retry_waker),
        Poll::Ready(None)
    ));
}

#[test]
fn clone_is_woken_when_an_unread_original_is_dropped() {
    let original = replay(vec![data("abc")]);
    let mut retry = original.try_clone().expect("replayable");
    let (wakes, waker) = counting_waker();

    assert!(poll_with(&mut retry, &waker).is_pending());
    drop(original);
    assert_eq!(wakes.count(), 1);
    match poll_with(&mut retry, &waker) {
        Poll::Ready(Some(Ok(frame))) => assert_eq!(to_ev(frame), Ev::data("abc")),
        other => panic!("expected data, got {other:?}"),
    }
}

#[test]
fn every_waiting_clone_is_eventually_woken() {
    let original = replay(vec![data("abc")]);
    let mut first = original.try_clone().expect("replayable");
    let mut second = original.try_clone().expect("replayable");
    let (first_wakes, first_waker) = counting_waker();
    let (second_wakes, second_waker) = counting_waker();

    assert!(poll_with(&mut first, &first_waker).is_pending());
    assert!(poll_with(&mut second, &second_waker).is_pending());
    drop(original);
    assert!(second_wakes.count() >= 1);

    // The second clone takes the body, reads it all, and lets it go.
    match poll_with(&mut second, &second_waker) {
        Poll::Ready(Some(Ok(frame))) => assert_eq!(to_ev(frame), Ev::data("abc")),
        other => panic!("expected data, got {other:?}"),
    }
    assert!(matches!(
        poll_with(&mut second, &second_waker),
        Poll::Ready(None)
    ));
    drop(second);

    // The first clone has not been polled since it was told to wait: it
    // must have been woken, or its task would hang forever.
    assert!(
        first_wakes.count() >= 1,
        "a waiting clone was never woken (lost wakeup)"
    );
    match poll_with(&mut first, &first_waker) {
        Poll::Ready(Some(Ok(frame))) => assert_eq!(to_ev(frame), Ev::data("abc")),
        other => panic!("expected data, got {other:?}"),
    }
}

#[test]
fn pending_source_body_is_pending_for_the_reader_and_wakes_it() {
    let (tx, body) = TestBody::channel();
    let mut original = ReplayBody::try_new(body, CAP).unwrap();
    let (wakes, waker) = counting_waker();

    assert!(poll_with(&mut original, &waker).is_pending());
    assert_eq!(wakes.count(), 0);
    tx.data("abc");
    assert_eq!(wakes.count(), 1);
    match poll_with(&mut original, &waker) {
        Poll::Ready(Some(Ok(frame))) => assert_eq!(to_ev(frame), Ev::data("abc")),
        other => panic!("expected data, got {other:?}"),
    }
}

// === the cap ===

#[tokio::test]
async fn body_over_the_cap_keeps_streaming_and_a_clone_yields_capped() {
    let body =
        TestBody::new(vec![data("12345"), data("67890"), data("abc")]).with_hint(SizeHint::new());
    let mut original = ReplayBody::try_new(body, 8).expect("unknown length");
    assert!(!original.is_capped());

    assert_eq!(next_data(&mut original).await, "12345");
    assert!(!original.is_capped());
    assert_eq!(next_data(&mut original).await, "67890");
    assert!(original.is_capped(), "10 bytes read with a cap of 8");
    assert_eq!(next_data(&mut original).await, "abc");
    assert!(original.frame().await.is_none());

    let retry = original.try_clone().expect("still a replay body");
    assert!(retry.is_capped(), "the cap is shared between clones");
    drop(original);
    let error = retry.collect().await.expect_err("not a truncated body");
    assert!(is_capped_error(&error), "{error}");
}

#[tokio::test]
async fn clone_made_before_the_cap_was_hit_yields_capped_not_a_truncated_body() {
    let (tx, body) = TestBody::channel();
    let mut original = ReplayBody::try_new(body, 4).unwrap();
    let mut retry = original.try_clone().expect("replayable");

    tx.data("abc");
    tx.data("def");
    tx.data("ghi");
    assert_eq!(next_data(&mut original).await, "abc");
    assert_eq!(next_data(&mut original).await, "def");
    assert!(original.is_capped());
    assert!(retry.is_capped());
    drop(original);
    drop(tx);

    let error = next_error(&mut retry).await;
    assert!(is_capped_error(&error), "{error}");
    // Never a clean (truncated) end either, for any later clone.
    let third = retry.try_clone().expect("still a replay body");
    drop(retry);
    let error = third.collect().await.expect_err("capped");
    assert!(is_capped_error(&error), "{error}");
}

#[tokio::test]
async fn replaying_clone_that_crosses_the_cap_keeps_streaming() {
    let (tx, body) = TestBody::channel();
    let mut original = ReplayBody::try_new(body, 8).unwrap();
    tx.data("12345");
    assert_eq!(next_data(&mut original).await, "12345");
    let mut retry = original.try_clone().expect("replayable");
    drop(original);

    tx.data("67890");
    tx.data("abc");
    drop(tx);
    assert_eq!(
        read_all(&mut retry).await.unwrap(),
        vec![Ev::data("12345"), Ev::data("67890"), Ev::data("abc")]
    );
    assert!(retry.is_capped());

    let third = retry.try_clone().expect("still a replay body");
    drop(retry);
    let error = third.collect().await.expect_err("capped");
    assert!(is_capped_error(&error), "{error}");
}

#[tokio::test]
async fn body_exactly_at_the_cap_is_replayable() {
    let body = TestBody::new(vec![data("12345"), data("67890")]);
    let mut original = ReplayBody::try_new(body, 10).expect("lower bound == cap");
    assert!(!original.is_capped());
    assert_eq!(
        read_all(&mut original).await.unwrap(),
        vec![Ev::data("12345"), Ev::data("67890")]
    );
    assert!(!original.is_capped(), "exactly at the cap is not over it");

    let retry = original.try_clone().expect("replayable");
    drop(original);
    assert_eq!(retry.collect().await.unwrap().to_bytes(), "1234567890");
}

#[tokio::test]
async fn one_byte_over_the_cap_is_capped() {
    let body =
        TestBody::new(vec![data("12345"), data("67890"), data("!")]).with_hint(SizeHint::new());
    let mut original = ReplayBody::try_new(body, 10).unwrap();
    assert_eq!(next_data(&mut original).await, "12345");
    assert_eq!(next_data(&mut original).await, "67890");
    assert!(!original.is_capped());
    assert_eq!(next_data(&mut original).await, "!");
    assert!(original.is_capped());
}

#[tokio::test]
async fn size_hint_lower_bound_over_the_cap_is_rejected_with_the_body_back() {
    let body = TestBody::new(vec![data("12345"), data("67890"), data("!")]);
    let rejected = ReplayBody::try_new(body, 10).expect_err("11 bytes > 10");
    // The body is handed back untouched, to be sent as it is.
    assert_eq!(rejected.collect().await.unwrap().to_bytes(), "1234567890!");

    let mut at_least_11 = SizeHint::new();
    at_least_11.set_lower(11);
    let body = TestBody::new(vec![data("12345678901")]).with_hint(at_least_11);
    assert!(ReplayBody::try_new(body, 10).is_err(), "no upper bound");

    // Only the lower bound counts: it may still fit.
    let mut at_most_100 = SizeHint::new();
    at_most_100.set_upper(100);
    let body = TestBody::new(vec![data("12345")]).with_hint(at_most_100);
    let mut body = ReplayBody::try_new(body, 10).expect("lower bound is 0");
    assert_eq!(next_data(&mut body).await, "12345");
    assert!(!body.is_capped());
}

// === size_hint and is_end_stream ===

#[tokio::test]
async fn size_hint_and_is_end_stream_track_the_original() {
    let mut original = replay(vec![data("abc"), data("defg"), data("hi")]);
    assert_eq!(hint(&original), (9, Some(9)));
    assert!(!original.is_end_stream());

    assert_eq!(next_data(&mut original).await, "abc");
    assert_eq!(hint(&original), (6, Some(6)));
    assert!(!original.is_end_stream());

    assert_eq!(next_data(&mut original).await, "defg");
    assert_eq!(hint(&original), (2, Some(2)));
    assert!(!original.is_end_stream());

    assert_eq!(next_data(&mut original).await, "hi");
    assert_eq!(hint(&original), (0, Some(0)));
    assert!(original.is_end_stream(), "the source body says it is over");

    assert!(original.frame().await.is_none());
    assert_eq!(hint(&original), (0, Some(0)));
    assert!(original.is_end_stream());
}

#[tokio::test]
async fn size_hint_and_is_end_stream_track_a_replaying_clone() {
    let mut original = replay(vec![data("abc"), data("defg"), data("hi")]);
    read_all(&mut original).await.unwrap();
    let mut retry = original.try_clone().expect("replayable");
    assert_eq!(hint(&retry), (9, Some(9)));
    assert!(!retry.is_end_stream(), "9 bytes to replay");
    drop(original);
    assert_eq!(hint(&retry), (9, Some(9)));
    assert!(!retry.is_end_stream());

    assert_eq!(next_data(&mut retry).await, "abc");
    assert_eq!(hint(&retry), (6, Some(6)));
    assert!(!retry.is_end_stream());

    assert_eq!(next_data(&mut retry).await, "defg");
    assert_eq!(hint(&retry), (2, Some(2)));
    assert!(!retry.is_end_stream());

    assert_eq!(next_data(&mut retry).await, "hi");
    assert_eq!(hint(&retry), (0, Some(0)));
    assert!(retry.is_end_stream());
    assert!(retry.frame().await.is_none());
}

#[tokio::test]
async fn is_end_stream_of_a_replaying_clone_waits_for_the_trailers() {
    let mut original = replay(vec![data("abc"), Item::Trailers(trailers("x-t", "1"))]);
    assert_eq!(hint(&original), (3, Some(3)));
    read_all(&mut original).await.unwrap();
    assert_eq!(hint(&original), (0, Some(0)));
    assert!(original.is_end_stream());

    let mut retry = original.try_clone().expect("replayable");
    drop(original);
    assert_eq!(next_data(&mut retry).await, "abc");
    assert_eq!(hint(&retry), (0, Some(0)), "no data left");
    assert!(!retry.is_end_stream(), "the trailers are left");
    let frame = retry.frame().await.unwrap().unwrap();
    assert_eq!(frame.into_trailers().unwrap(), trailers("x-t", "1"));
    assert!(retry.is_end_stream());
}

#[tokio::test]
async fn size_hint_of_a_clone_continuing_a_partial_read_is_exact() {
    let mut original = replay(vec![data("abc"), data("def"), data("gh")]);
    assert_eq!(next_data(&mut original).await, "abc");
    assert_eq!(next_data(&mut original).await, "def");
    assert_eq!(hint(&original), (2, Some(2)));
    let mut retry = original.try_clone().expect("replayable");
    drop(original);

    assert_eq!(hint(&retry), (8, Some(8)), "initial hint until it reads");
    assert_eq!(next_data(&mut retry).await, "abc");
    // 3 recorded bytes to replay + 2 left in the source.
    assert_eq!(hint(&retry), (5, Some(5)));
    assert!(!retry.is_end_stream());
    assert_eq!(next_data(&mut retry).await, "def");
    assert_eq!(hint(&retry), (2, Some(2)));
    assert!(!retry.is_end_stream());
    assert_eq!(next_data(&mut retry).await, "gh");
    assert_eq!(hint(&retry), (0, Some(0)));
    assert!(retry.is_end_stream());
}

#[tokio::test]
async fn size_hint_stays_inexact_when_the_source_hint_is_inexact() {
    let (tx, body) = TestBody::channel();
    let mut original = ReplayBody::try_new(body, CAP).unwrap();
    assert_eq!(hint(&original), (0, None));
    tx.data("abc");
    tx.data("de");
    assert_eq!(next_data(&mut original).await, "abc");
    assert_eq!(next_data(&mut original).await, "de");
    assert_eq!(hint(&original), (0, None));
    assert!(!original.is_end_stream());

    let mut retry = original.try_clone().expect("replayable");
    drop(original);
    assert_eq!(next_data(&mut retry).await, "abc");
    assert_eq!(hint(&retry), (2, None), "at least the recorded bytes");
    assert!(!retry.is_end_stream());
}

#[tokio::test]
async fn size_hint_does_not_overflow_with_an_unbounded_source_upper_bound() {
    let mut unbounded = SizeHint::new();
    unbounded.set_upper(u64::MAX);
    let body = TestBody::new(vec![data("abc"), data("def")]).with_fixed_hint(unbounded);
    let mut original = ReplayBody::try_new(body, CAP).unwrap();
    assert_eq!(next_data(&mut original).await, "abc");
    assert_eq!(next_data(&mut original).await, "def");
    let mut retry = original.try_clone().expect("replayable");
    drop(original);

    assert_eq!(next_data(&mut retry).await, "abc");
    // 3 bytes to replay on top of a source that may send u64::MAX more.
    let (lower, upper) = hint(&retry);
    assert_eq!(lower, 3);
    assert!(upper.is_none_or(|upper| upper >= 3), "{upper:?}");
}

// === empty bodies ===

#[tokio::test]
async fn empty_source_body_becomes_an_empty_replay_body() {
    let mut body = ReplayBody::try_new(TestBody::empty(), CAP).expect("empty");
    // Nothing was allocated for the recording.
    assert!(matches!(body.inner, Inner::Empty));
    assert!(body.is_end_stream());
    assert_eq!(hint(&body), (0, Some(0)));
    assert!(!body.is_capped());

    let mut retry = body.try_clone().expect("replayable");
    assert!(matches!(retry.inner, Inner::Empty));
    assert!(retry.is_end_stream());
    assert_eq!(hint(&retry), (0, Some(0)));

    // TestBody panics if polled after its end: it was not polled at all.
    assert!(body.frame().await.is_none());
    assert!(retry.frame().await.is_none());
    assert!(body.is_end_stream());
}

#[tokio::test]
async fn empty_body_with_a_zero_cap_is_replayable() {
    for body in [
        ReplayBody::try_new(Full::new(Bytes::new()), 0).expect("empty"),
        ReplayBody::<Full<Bytes>>::empty(),
    ] {
        assert!(matches!(body.inner, Inner::Empty));
        let retry = body.try_clone().expect("replayable");
        assert!(!retry.is_capped());
        assert_eq!(body.collect().await.unwrap().to_bytes(), "");
        assert_eq!(retry.collect().await.unwrap().to_bytes(), "");
    }
    let body = ReplayBody::try_new(Empty::<Bytes>::new(), 0).expect("empty");
    assert!(matches!(body.inner, Inner::Empty));
}

#[tokio::test]
async fn body_that_is_empty_but_does_not_say_so_is_replayed_empty() {
    // The source only finds out it is empty when polled.
    let (tx, body) = TestBody::channel();
    drop(tx);
    let mut original = ReplayBody::try_new(body, CAP).unwrap();
    assert!(!original.is_end_stream());
    assert!(original.frame().await.is_none());
    assert!(original.is_end_stream());
    assert_eq!(hint(&original), (0, Some(0)));

    let mut retry = original.try_clone().expect("replayable");
    drop(original);
    assert!(retry.frame().await.is_none());
    assert!(retry.is_end_stream());
}

// === errors ===

#[tokio::test]
async fn error_from_the_source_is_returned_and_a_later_clone_does_not_end_cleanly() {
    let mut original = replay(vec![data("abc"), Item::Error("boom")]);
    assert_eq!(next_data(&mut original).await, "abc");
    let error = next_error(&mut original).await;
    assert_eq!(error.downcast_ref::<TestError>(), Some(&TestError("boom")));
    assert!(!original.is_end_stream());

    let mut retry = original.try_clone().expect("replayable");
    drop(original);
    assert_eq!(next_data(&mut retry).await, "abc", "what was read replays");
    let error = next_error(&mut retry).await;
    assert!(error.downcast_ref::<OriginalFailed>().is_some(), "{error}");
    assert!(!is_capped_error(&error));
    assert!(!retry.is_end_stream());

    let third = retry.try_clone().expect("replayable");
    drop(retry);
    assert!(third.collect().await.is_err(), "never a clean end");
}

#[tokio::test]
async fn clone_made_before_an_error_yields_the_error_not_a_clean_end() {
    // The first attempt stops reading before the failure: the retry meets
    // the source's own error.
    let (tx, body) = TestBody::channel();
    let mut original = ReplayBody::try_new(body, CAP).unwrap();
    let mut retry = original.try_clone().expect("replayable");
    tx.data("abc");
    assert_eq!(next_data(&mut original).await, "abc");
    drop(original);
    tx.error("broken pipe");

    assert_eq!(next_data(&mut retry).await, "abc");
    let error = next_error(&mut retry).await;
    assert_eq!(
        error.downcast_ref::<TestError>(),
        Some(&TestError("broken pipe"))
    );
}

// === passthrough ===

#[tokio::test]
async fn passthrough_body_is_not_replayable_and_forwards_frames() {
    let body = TestBody::new(vec![
        data("abc"),
        data("de"),
        Item::Trailers(trailers("x-t", "1")),
    ]);
    let mut body = ReplayBody::passthrough(body);
    assert!(body.try_clone().is_none());
    assert!(body.is_capped());
    assert_eq!(hint(&body), (5, Some(5)));
    assert!(!body.is_end_stream());

    assert_eq!(next_data(&mut body).await, "abc");
    assert_eq!(hint(&body), (2, Some(2)));
    assert_eq!(
        read_all(&mut body).await.unwrap(),
        vec![Ev::data("de"), Ev::Trailers(trailers("x-t", "1"))]
    );
    assert!(body.is_end_stream());
    assert!(body.try_clone().is_none());

    let mut failing = ReplayBody::passthrough(TestBody::new(vec![Item::Error("nope")]));
    let error = next_error(&mut failing).await;
    assert_eq!(error.downcast_ref::<TestError>(), Some(&TestError("nope")));
}

#[test]
fn debug_output_names_the_kind() {
    let body = replay(vec![data("abc")]);
    assert!(format!("{body:?}").contains(r#"kind: "replay""#));
    let body = ReplayBody::passthrough(TestBody::new(vec![data("abc")]));
    assert!(format!("{body:?}").contains(r#"kind: "passthrough""#));
    let body = ReplayBody::<Empty<Bytes>>::empty();
    assert!(format!("{body:?}").contains(r#"kind: "empty""#));
}

// === deciding whether a retry can replay ===

fn replayable_now<B>(body: &ReplayBody<B>, waker: &Waker) -> Poll<bool> {
    body.poll_replayable(&mut Context::from_waker(waker))
}

#[test]
fn replayability_is_pending_while_the_original_reads_within_the_cap_and_true_once_released() {
    let (tx, body) = TestBody::channel();
    let mut original = ReplayBody::try_new(body, CAP).unwrap();
    let retry = original.try_clone().unwrap();
    let (wakes, waker) = counting_waker();

    assert_eq!(replayable_now(&retry, &waker), Poll::Pending);
    tx.data("abc");
    assert!(poll_with(&mut original, &waker).is_ready());
    assert_eq!(replayable_now(&retry, &waker), Poll::Pending);

    drop(original);
    assert!(
        wakes.count() >= 1,
        "releasing the body wakes the waiting retry"
    );
    assert_eq!(replayable_now(&retry, &waker), Poll::Ready(true));
}

#[test]
fn replayability_turns_false_as_soon_as_the_original_outgrows_the_cap() {
    let (tx, body) = TestBody::channel();
    let mut original = ReplayBody::try_new(body, 4).unwrap();
    let retry = original.try_clone().unwrap();
    let (retry_wakes, retry_waker) = counting_waker();
    let (_, original_waker) = counting_waker();

    tx.data("abcd");
    assert!(poll_with(&mut original, &original_waker).is_ready());
    assert_eq!(replayable_now(&retry, &retry_waker), Poll::Pending);

    tx.data("e");
    assert!(poll_with(&mut original, &original_waker).is_ready());
    assert_eq!(
        retry_wakes.count(),
        1,
        "capping wakes the waiting retry at once"
    );
    assert_eq!(replayable_now(&retry, &retry_waker), Poll::Ready(false));
}

#[test]
fn empty_bodies_are_always_replayable_and_passthrough_never() {
    let (_, waker) = counting_waker();
    let empty = ReplayBody::try_new(TestBody::new(vec![]), CAP).unwrap();
    assert_eq!(replayable_now(&empty, &waker), Poll::Ready(true));
    let (_tx, body) = TestBody::channel();
    assert_eq!(
        replayable_now(&ReplayBody::passthrough(body), &waker),
        Poll::Ready(false)
    );
}
