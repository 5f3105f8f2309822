//! A test body fed through a channel: it can be pending, yield data,
//! trailers and errors, and report a configurable size hint and
//! `is_end_stream`. Shared by the `ReplayBody` tests and the layer tests.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;

/// What a [`TestBody`] yields next.
#[derive(Debug)]
pub(crate) enum Item {
    Data(Bytes),
    Trailers(HeaderMap),
    Error(&'static str),
}

/// The error [`TestBody`] yields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TestError(pub(crate) &'static str);

impl fmt::Display for TestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "test body error: {}", self.0)
    }
}

impl std::error::Error for TestError {}

/// Feeds a [`TestBody`]. Dropping it ends the body.
pub(crate) struct Tx(mpsc::UnboundedSender<Item>);

impl Tx {
    pub(crate) fn data(&self, chunk: &'static str) {
        self.send(Item::Data(Bytes::from_static(chunk.as_bytes())));
    }

    pub(crate) fn trailers(&self, trailers: HeaderMap) {
        self.send(Item::Trailers(trailers));
    }

    pub(crate) fn error(&self, message: &'static str) {
        self.send(Item::Error(message));
    }

    /// Whether the body was dropped: nothing reads it any more.
    pub(crate) fn is_closed(&self) -> bool {
        self.0.is_closed()
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
pub(crate) struct TestBody {
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
    pub(crate) fn channel() -> (Tx, Self) {
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
    pub(crate) fn new(items: Vec<Item>) -> Self {
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
    pub(crate) fn empty() -> Self {
        let (_, mut body) = Self::channel();
        body.hint = SizeHint::with_exact(0);
        body.done = true;
        body
    }

    /// Reports `hint` instead, adjusted as data is read.
    pub(crate) fn with_hint(mut self, hint: SizeHint) -> Self {
        self.hint = hint;
        self.end_at_zero = false;
        self
    }

    /// Reports `hint` forever, whatever is read.
    pub(crate) fn with_fixed_hint(mut self, hint: SizeHint) -> Self {
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

/// A data frame.
pub(crate) fn data(chunk: &'static str) -> Item {
    Item::Data(Bytes::from_static(chunk.as_bytes()))
}

/// Trailers with one field.
pub(crate) fn trailers(name: &'static str, value: &'static str) -> HeaderMap {
    let mut trailers = HeaderMap::new();
    trailers.insert(name, HeaderValue::from_static(value));
    trailers
}
