//! Every refresh dialect end to end: `HttpRefresher` presets talking to
//! loopback servers that implement their documents strictly (see
//! `tests/support`), a `TokenRefreshLayer` over a hyper-util client, and an
//! API server that accepts only current tokens.
//!
//! One test binary with a module per dialect, so the fixtures are built
//! and linked once.

// `pub`: the fixtures are shared by several test binaries, each using a
// subset of them.
#[path = "../support/mod.rs"]
pub mod support;

mod cognito;
mod dynamosql;
mod edges;
mod oauth2;
mod ocient;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use support::bounded;

/// The client refresh calls go through.
type RefreshClient = Client<HttpConnector, Full<Bytes>>;

/// The refresh calls' own client: un-layered, as the design requires.
fn refresh_client() -> RefreshClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// The layer `builder` makes, its handle, and a client wrapped in it.
fn layered(
    builder: tower_token_refresh::Builder,
) -> (tower_token_refresh::TokenHandle, support::AuthedClient) {
    let layer = builder.build();
    (layer.handle(), support::authed_client(layer))
}

/// Sends `n` `GET url` at once, each from its own task, and asserts that
/// every one was answered `200`.
async fn all_ok(client: &support::AuthedClient, url: &str, n: usize) {
    let results = support::client::concurrently(client, n, || support::get(url)).await;
    support::client::assert_all_ok(&results);
}

/// `POST url` with a JSON body, straight to the server: what a login
/// closure does. Returns the status and the JSON answer.
async fn post_json(url: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
    use http_body_util::BodyExt;
    let request = hyper::Request::post(url)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("valid request");
    let response = refresh_client()
        .request(request)
        .await
        .expect("server reachable");
    let status = response.status().as_u16();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).expect("a JSON answer"),
    )
}
