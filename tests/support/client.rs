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

/// Sends `n` requests made by `request` at once, each from its own task.
#[cfg(test)]
pub async fn concurrently(
    client: &AuthedClient,
    n: usize,
    request: impl Fn() -> Request<ReqBody>,
) -> Vec<Result<Response<Bytes>, BoxError>> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let client = client.clone();
            let request = request();
            tokio::spawn(async move { send(&client, request).await })
        })
        .collect();
    let mut results = Vec::with_capacity(n);
    for task in tasks {
        results.push(task.await.expect("request task panicked"));
    }
    results
}

#[cfg(test)]
pub fn assert_all_ok(results: &[Result<Response<Bytes>, BoxError>]) {
    for (i, result) in results.iter().enumerate() {
        match result {
            Ok(response) => assert_eq!(response.status(), hyper::StatusCode::OK, "request {i}"),
            Err(error) => panic!("request {i} failed: {error}"),
        }
    }
}
