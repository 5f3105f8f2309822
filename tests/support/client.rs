//! A hyper-util HTTP/1 client wrapped in `TokenRefreshLayer`.

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::header::CONTENT_TYPE;
use hyper::{Method, Request, Response};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{ServiceBuilder, ServiceExt};
use tower_token_refresh::{BoxError, ReplayBody, TokenRefresh, TokenRefreshLayer};

use super::body::{empty, ReqBody};

/// The layered client: every request gets the current bearer token.
pub type AuthedClient = TokenRefresh<Client<HttpConnector, ReplayBody<ReqBody>>>;

/// Wraps a fresh hyper-util client in `layer`.
pub fn authed_client(layer: TokenRefreshLayer) -> AuthedClient {
    let http = Client::builder(TokioExecutor::new()).build_http();
    ServiceBuilder::new().layer(layer).service(http)
}

/// `GET url`.
pub fn get(url: &str) -> Request<ReqBody> {
    Request::get(url).body(empty()).expect("valid request")
}

/// `POST url` with `body` of type `content_type`.
pub fn post(url: &str, content_type: &str, body: ReqBody) -> Request<ReqBody> {
    Request::builder()
        .method(Method::POST)
        .uri(url)
        .header(CONTENT_TYPE, content_type)
        .body(body)
        .expect("valid request")
}

/// Sends `request` and reads the whole response.
pub async fn send(
    client: &AuthedClient,
    request: Request<ReqBody>,
) -> Result<Response<Bytes>, BoxError> {
    let response = client.clone().oneshot(request).await?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Response::from_parts(parts, body))
}
