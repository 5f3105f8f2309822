//! `examples/axum_gateway.rs` under test: callers of the gateway never see
//! the upstream's token, and a burst after an upstream revocation costs
//! one refresh.
#![cfg(feature = "axum")]

// The example itself, so the test exercises exactly what it shows; its
// `main`, and parts of the fixtures it includes, are not used here.
#[path = "../examples/axum_gateway.rs"]
#[allow(dead_code, unused_imports)]
mod gateway;

use axum::body::Body;
use http_body_util::BodyExt;
use hyper::header::AUTHORIZATION;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower_token_refresh::TokenRefreshLayer;

use gateway::support::bounded;
use gateway::support::{ApiServer, CognitoClient, IdentityServer, DEMO_PASSWORD, DEMO_USER};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_never_see_the_token_and_a_revocation_costs_one_refresh() {
    bounded(async {
        let identity = IdentityServer::builder().start().await;
        let api = ApiServer::start(&identity).await;
        let cognito = CognitoClient::new(identity.base_url());
        let tokens = cognito.login(DEMO_USER, DEMO_PASSWORD).await.unwrap();
        let secret = tokens.access_token().expose().to_owned();
        let layer = TokenRefreshLayer::builder(cognito.refresher())
            .initial_tokens(tokens)
            .build();
        let handle = layer.handle();
        let addr = gateway::serve(gateway::router(api.url("").parse().unwrap(), layer)).await;
        let caller: Client<HttpConnector, Body> =
            Client::builder(TokioExecutor::new()).build_http();

        // Each caller sends its own (worthless) credentials and a body.
        let call = |i: usize| {
            let caller = caller.clone();
            let request = hyper::Request::post(format!("http://{addr}/v1/orders/{i}?pay=1"))
                .header(AUTHORIZATION, "Bearer caller-credential")
                .header("content-type", "application/json")
                .body(Body::from(format!(r#"{{"order":{i}}}"#)))
                .unwrap();
            tokio::spawn(async move {
                let response = caller.request(request).await.expect("gateway reachable");
                let status = response.status();
                let headers = format!("{:?}", response.headers());
                let body = response.into_body().collect().await.unwrap().to_bytes();
                (status, headers, body)
            })
        };
        let check =
            |i: usize, (status, headers, body): (hyper::StatusCode, String, bytes::Bytes)| {
                assert_eq!(status, 200, "call {i}: {body:?}");
                assert_eq!(
                    body,
                    format!(r#"{{"order":{i}}}"#).as_bytes(),
                    "call {i}: body forwarded"
                );
                let seen = format!("{headers}{}", String::from_utf8_lossy(&body));
                assert!(!seen.contains(&secret), "call {i} saw the upstream token");
            };

        let first: Vec<_> = (0..50).map(call).collect();
        for (i, task) in first.into_iter().enumerate() {
            check(i, task.await.unwrap());
        }
        assert_eq!(api.revoke_current(), 1);
        let burst: Vec<_> = (0..250).map(call).collect();
        for (i, task) in burst.into_iter().enumerate() {
            check(i, task.await.unwrap());
        }

        assert_eq!(identity.stats().refresh_calls, 1);
        let stats = handle.stats();
        let api = api.stats();
        assert_eq!(stats.refreshes, 1);
        assert_eq!(stats.rejections, api.unauthorized);
        assert_eq!(stats.retries, api.unauthorized);
        assert!(api.unauthorized >= 1);
        assert_eq!(
            api.ok, 300,
            "the caller's own credential never reached the API"
        );
    })
    .await;
}
