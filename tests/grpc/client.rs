//! A client for `test.Echo`, written as tonic-build generates clients: the
//! same bounds on the transport, `ready()` before every call, one
//! `tonic::client::Grpc` method per call kind. If the layered channel works
//! here, it works under generated code.

use std::convert::Infallible;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http_body::Body;
use tonic::client::{Grpc, GrpcService};
use tonic::{GrpcMethod, IntoRequest, IntoStreamingRequest, Response, Status, Streaming};
use tower_token_refresh::BoxError;

use crate::server::{COLLECT, UNARY, WATCH};
use crate::wire::RawCodec;

#[derive(Debug, Clone)]
pub struct EchoClient<T> {
    inner: Grpc<T>,
}

impl<T> EchoClient<T>
where
    T: GrpcService<tonic::body::Body>,
    T::Error: Into<BoxError>,
    T::ResponseBody: Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as Body>::Error: Into<BoxError> + Send,
{
    pub fn new(inner: T) -> Self {
        Self {
            inner: Grpc::new(inner),
        }
    }

    /// As generated clients' `with_origin`: calls carry `origin`'s scheme
    /// and authority instead of a path alone.
    pub fn with_origin(inner: T, origin: http::Uri) -> Self {
        Self {
            inner: Grpc::with_origin(inner, origin),
        }
    }

    pub async fn unary(
        &mut self,
        request: impl IntoRequest<Bytes>,
    ) -> Result<Response<Bytes>, Status> {
        self.ready().await?;
        let mut request = request.into_request();
        request
            .extensions_mut()
            .insert(GrpcMethod::new("test.Echo", "Unary"));
        let path = PathAndQuery::from_static(UNARY);
        self.inner
            .unary(request, path, RawCodec::<Bytes>::default())
            .await
    }

    pub async fn collect(
        &mut self,
        request: impl IntoStreamingRequest<Message = Result<Bytes, Infallible>>,
    ) -> Result<Response<Bytes>, Status> {
        self.ready().await?;
        let mut request = request.into_streaming_request();
        request
            .extensions_mut()
            .insert(GrpcMethod::new("test.Echo", "Collect"));
        let path = PathAndQuery::from_static(COLLECT);
        self.inner
            .client_streaming(request, path, RawCodec::default())
            .await
    }

    pub async fn watch(
        &mut self,
        request: impl IntoRequest<Bytes>,
    ) -> Result<Response<Streaming<Bytes>>, Status> {
        self.ready().await?;
        let mut request = request.into_request();
        request
            .extensions_mut()
            .insert(GrpcMethod::new("test.Echo", "Watch"));
        let path = PathAndQuery::from_static(WATCH);
        self.inner
            .server_streaming(request, path, RawCodec::<Bytes>::default())
            .await
    }

    async fn ready(&mut self) -> Result<(), Status> {
        self.inner
            .ready()
            .await
            .map_err(|e| Status::unknown(format!("Service was not ready: {}", e.into())))
    }
}
