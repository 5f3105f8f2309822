//! Unit tests for [`ReplayBody`], in the spirit of linkerd2-proxy's
//! `linkerd/http/retry/src/replay/tests.rs`.
//!
//! The source body is `crate::test_support::body::TestBody`: frames are
//! fed through a `tokio::sync::mpsc` channel (so it can be pending), it can
//! yield data, trailers and errors, and it reports a configurable size hint
//! and `is_end_stream`.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Empty, Full};

// `crate::body::Capped` is `tower_token_refresh::body::Capped`.
use crate::body::{Capped, ReplayBody};
use crate::test_support::body::{data, trailers, Item, TestBody, TestError};
use crate::test_support::counting_waker;
use crate::BoxError;

use super::{Inner, OriginalFailed};

mod cap;
mod edge_cases;
mod hints;
mod replay;
mod replayable;
mod waiting;

const CAP: usize = 64 * 1024;

// === helpers ===

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
