//! What travels on the wire: gRPC messages as raw bytes (a hand-written
//! [`Codec`], no protobuf), and message streams fed from a channel.

use std::convert::Infallible;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes};
use http_body::{Body, Frame};
use http_body_util::BodyDataStream;
use tokio::sync::mpsc;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

/// An outgoing message: its bytes are the payload, as they are.
pub trait Message: Send + Sync + 'static {
    fn into_bytes(self) -> Bytes;
}

impl Message for Bytes {
    fn into_bytes(self) -> Bytes {
        self
    }
}

/// What a client stream made by [`feed`] yields.
impl Message for Result<Bytes, Infallible> {
    fn into_bytes(self) -> Bytes {
        match self {
            Ok(bytes) => bytes,
            Err(never) => match never {},
        }
    }
}

/// Encodes `M` as its bytes and decodes every message as `Bytes`. Both the
/// server and the client use it, as they would use a generated codec.
pub struct RawCodec<M = Bytes>(PhantomData<fn() -> M>);

impl<M> Default for RawCodec<M> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<M: Message> Codec for RawCodec<M> {
    type Encode = M;
    type Decode = Bytes;
    type Encoder = RawEncoder<M>;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        RawEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawDecoder
    }
}

pub struct RawEncoder<M>(PhantomData<fn() -> M>);

impl<M: Message> Encoder for RawEncoder<M> {
    type Item = M;
    type Error = Status;

    fn encode(&mut self, item: M, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item.into_bytes());
        Ok(())
    }
}

pub struct RawDecoder;

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        // tonic hands over exactly one message's bytes.
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// A message stream the test (or a server handler) feeds as it goes:
/// messages sent on the returned sender come out of the stream in order,
/// and the stream ends when the sender is dropped.
///
/// Built on a body and `BodyDataStream` because this test uses no stream
/// crate of its own: the items are `Result<Bytes, E>`.
pub fn feed<E>() -> (
    mpsc::UnboundedSender<Result<Bytes, E>>,
    BodyDataStream<Feed<E>>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    (tx, BodyDataStream::new(Feed { rx }))
}

/// The body behind [`feed`]: one data frame per message.
pub struct Feed<E> {
    rx: mpsc::UnboundedReceiver<Result<Bytes, E>>,
}

impl<E> Body for Feed<E> {
    type Data = Bytes;
    type Error = E;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, E>>> {
        self.rx
            .poll_recv(cx)
            .map(|message| message.map(|m| m.map(Frame::data)))
    }
}
