//! An axum app whose handlers call a token-protected API with a layered
//! client kept in the app state.
//!
//! Every incoming request runs a handler that makes two upstream calls
//! (an order and its customer) through one shared `TokenRefresh` client:
//! however many requests arrive at once, they share one token, and an
//! expired or revoked token is replaced by a single refresh.
//!
//! On loopback this starts the Cognito-style identity server, the API and
//! the app, sends 300 concurrent requests to the app once when the token
//! has just expired and once after the API revoked it, and prints what
//! each side saw.
//!
//! Run it with `cargo run --example axum_app_state --features axum`.

// `pub`: the example uses only part of the shared fixtures.
#[path = "../tests/support/mod.rs"]
pub mod support;

use std::net::SocketAddr;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;
use tower_token_refresh::TokenRefreshLayer;

use support::{authed_client, AuthedClient};

/// What the handlers share: the layered client and where the API is.
#[derive(Clone)]
pub struct AppState {
    api: String,
    client: AuthedClient,
}

/// The app: `GET /orders/{id}/summary` calls the API twice.
pub fn app(api_base: String, layer: TokenRefreshLayer) -> Router {
    let state = AppState {
        api: api_base,
        client: authed_client(layer),
    };
    Router::new()
        .route("/orders/{id}/summary", get(summary))
        .with_state(state)
}

/// Serves `router` on a fresh loopback port.
pub async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

async fn summary(
    State(state): State<AppState>,
    Path(id): Path<u32>,
) -> Result<Json<Value>, (StatusCode, String)> {
    let order = fetch(&state, &format!("/v1/orders/{id}")).await?;
    let customer = fetch(&state, &format!("/v1/customers/{}", id % 7)).await?;
    Ok(Json(json!({ "order": order, "customer": customer })))
}

/// `GET` on the API through the layered client; any failure is a `502`
/// whose text never holds the token.
async fn fetch(state: &AppState, path: &str) -> Result<Value, (StatusCode, String)> {
    let bad_gateway = |what: String| (StatusCode::BAD_GATEWAY, what);
    let request = support::get(&format!("{}{path}", state.api));
    let response = state
        .client
        .clone()
        .oneshot(request)
        .await
        .map_err(|e| bad_gateway(format!("upstream: {e}")))?;
    if !response.status().is_success() {
        return Err(bad_gateway(format!(
            "upstream answered {}",
            response.status()
        )));
    }
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| bad_gateway(format!("upstream body: {e}")))?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| bad_gateway(format!("upstream JSON: {e}")))
}

#[tokio::main]
async fn main() {
    use std::time::Duration;
    use support::{ApiServer, CognitoClient, IdentityServer, DEMO_PASSWORD, DEMO_USER};

    let identity = IdentityServer::builder().start().await;
    let api = ApiServer::start(&identity).await;
    let cognito = CognitoClient::new(identity.base_url());
    let login = cognito
        .login(DEMO_USER, DEMO_PASSWORD)
        .await
        .expect("login");
    // Start as if the app had been idle past the token's expiry.
    let layer = TokenRefreshLayer::builder(cognito.refresher())
        .initial_tokens(login.with_expires_in(Duration::ZERO))
        // For this demo only, which revokes a token right after it was
        // refreshed: keep the default (5 s) in an application, or a server
        // that answers 401 for other reasons makes every rejection a
        // refresh, and this API allows 5 a minute.
        .min_refresh_interval(Duration::ZERO)
        .build();
    let handle = layer.handle();
    let addr = serve(app(api.url(""), layer)).await;
    println!("app on http://{addr}, calling the API at {}", api.url(""));

    let caller = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<axum::body::Body>();
    let mut failed = 0;
    for round in ["token expired", "token revoked"] {
        if round == "token revoked" {
            api.revoke_current();
        }
        let tasks: Vec<_> = (0..300)
            .map(|i| {
                let caller = caller.clone();
                let uri = format!("http://{addr}/orders/{i}/summary").parse().unwrap();
                tokio::spawn(async move { caller.get(uri).await })
            })
            .collect();
        let mut ok = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(response) if response.status().is_success() => ok += 1,
                Ok(response) => eprintln!("  app answered {}", response.status()),
                Err(error) => eprintln!("  app unreachable: {error}"),
            }
        }
        failed += 300 - ok;
        println!("{round}: 300 requests to the app (600 API calls), {ok} OK");
    }
    let stats = handle.stats();
    println!(
        "shared client: {} refreshes, {} waited, {} retried; identity server saw {} refresh calls",
        stats.refreshes,
        stats.waited,
        stats.retries,
        identity.stats().refresh_calls
    );
    if failed > 0 {
        std::process::exit(1);
    }
}
