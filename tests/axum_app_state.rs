//! `examples/axum_app_state.rs` under test: handlers sharing one layered
//! client in the app state share one token, and many concurrent incoming
//! requests cause one refresh per expiry or revocation.
#![cfg(feature = "axum")]

// The example itself, so the test exercises exactly what it shows; its
// `main`, and parts of the fixtures it includes, are not used here.
#[path = "../examples/axum_app_state.rs"]
#[allow(dead_code, unused_imports)]
mod app_state;

use std::time::Duration;

use axum::body::Body;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower_token_refresh::TokenRefreshLayer;

use app_state::support::bounded;
use app_state::support::{ApiServer, CognitoClient, IdentityServer, DEMO_PASSWORD, DEMO_USER};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_handlers_share_one_token_and_one_refresh() {
    bounded(async {
        let identity = IdentityServer::builder().start().await;
        let api = ApiServer::start(&identity).await;
        let cognito = CognitoClient::new(identity.base_url());
        let login = cognito.login(DEMO_USER, DEMO_PASSWORD).await.unwrap();
        let layer = TokenRefreshLayer::builder(cognito.refresher())
            .initial_tokens(login.with_expires_in(Duration::ZERO))
            .min_refresh_interval(Duration::ZERO)
            .build();
        let handle = layer.handle();
        let addr = app_state::serve(app_state::app(api.url(""), layer)).await;
        let caller = Client::builder(TokioExecutor::new()).build_http::<Body>();

        let round = |n: usize| {
            let tasks: Vec<_> = (0..n)
                .map(|i| {
                    let caller = caller.clone();
                    let uri = format!("http://{addr}/orders/{i}/summary").parse().unwrap();
                    tokio::spawn(
                        async move { caller.get(uri).await.expect("app reachable").status() },
                    )
                })
                .collect();
            async move {
                for (i, task) in tasks.into_iter().enumerate() {
                    assert_eq!(task.await.unwrap(), 200, "request {i}");
                }
            }
        };

        // The token expired while the app was idle: 300 requests, 600
        // upstream calls, one refresh.
        round(300).await;
        assert_eq!(identity.stats().refresh_calls, 1);
        assert_eq!(handle.stats().refreshes, 1);
        assert_eq!(api.stats().unauthorized, 0, "nobody sent the expired token");

        // A revocation: one more refresh, every call retried once at most.
        // (The login token is live too: only the client thought it expired.)
        assert_eq!(api.revoke_current(), 2);
        round(300).await;
        assert_eq!(identity.stats().refresh_calls, 2);
        let stats = handle.stats();
        let upstream = api.stats();
        assert_eq!(stats.refreshes, 2);
        assert_eq!(stats.retries, upstream.unauthorized);
        assert_eq!(upstream.ok, 1200);
    })
    .await;
}
