//! An axum gateway in front of a token-protected API.
//!
//! Callers talk to the gateway without credentials. Its fallback route
//! forwards every request to the upstream API through a hyper-util client
//! wrapped in `TokenRefreshLayer`, so the upstream's token, its expiry, its
//! refreshes and its revocations stay behind the gateway: a caller never
//! sees any of them. Request bodies stream through (the layer records them
//! only up to its replay cap, for the one retry after a rejection). When
//! the gateway's own credentials fail, callers get the gateway statuses
//! (`502`, `503` with `Retry-After`, `504`), never a challenge to
//! authenticate themselves.
//!
//! On loopback this starts the Cognito-style identity server, the API
//! server and the gateway, sends bursts of requests to the gateway, has the
//! API revoke its token in between, and prints what each side saw.
//!
//! Run it with `cargo run --example axum_gateway --features axum`.

// `pub`: the example uses only part of the shared fixtures.
#[path = "../tests/support/mod.rs"]
pub mod support;

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::{
    HeaderMap, HeaderName, AUTHORIZATION, CONNECTION, HOST, PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION, RETRY_AFTER, TE, TRANSFER_ENCODING, UPGRADE, WWW_AUTHENTICATE,
};
use axum::http::uri::{PathAndQuery, Uri};
use axum::http::{HeaderValue, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{ServiceBuilder, ServiceExt};
use tower_token_refresh::{
    Error, ReplayBody, TokenHandle, TokenRefresh, TokenRefreshLayer, TokenStatus,
};

/// The layered client the gateway forwards with.
pub type Upstream = TokenRefresh<Client<HttpConnector, ReplayBody<Body>>>;

#[derive(Clone)]
struct Gateway {
    /// `scheme://authority` of the upstream API.
    upstream: Uri,
    client: Upstream,
    /// The client's token state, read when a request fails.
    handle: TokenHandle,
}

/// A gateway forwarding everything to `upstream` (`http://host:port`)
/// through `layer`.
pub fn router(upstream: Uri, layer: TokenRefreshLayer) -> Router {
    let http = Client::builder(TokioExecutor::new()).build_http();
    let handle = layer.handle();
    let client = ServiceBuilder::new().layer(layer).service(http);
    Router::new().fallback(forward).with_state(Gateway {
        upstream,
        client,
        handle,
    })
}

/// Serves `router` on a fresh loopback port.
pub async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

async fn forward(State(gateway): State<Gateway>, request: Request) -> Response {
    let (mut parts, body) = request.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let mut target = gateway.upstream.into_parts();
    target.path_and_query = Some(path);
    parts.uri = Uri::from_parts(target).expect("upstream base plus a path");
    // The caller's connection is not the upstream's: the upstream client
    // speaks HTTP/1.1 whatever version the caller used (it refuses an
    // HTTP/2 request), and Host and the hop-by-hop headers stay behind.
    // So do the caller's own credentials, for the gateway or the upstream
    // (a request that already carries Authorization would pass the layer
    // untouched).
    parts.version = Version::HTTP_11;
    remove_hop_by_hop(&mut parts.headers);
    for name in [HOST, PROXY_AUTHORIZATION, AUTHORIZATION] {
        parts.headers.remove(name);
    }
    match gateway
        .client
        .oneshot(Request::from_parts(parts, body))
        .await
    {
        // A rejection that comes out of the layer (after its refresh and
        // retry, where it could make them) refuses the gateway's
        // credentials, not the caller's, who sent none the upstream saw: a
        // `401` with the upstream's challenge would ask the caller to
        // authenticate. So would a `407` for the gateway's own proxy.
        Ok(response)
            if matches!(
                response.status(),
                StatusCode::UNAUTHORIZED | StatusCode::PROXY_AUTHENTICATION_REQUIRED
            ) =>
        {
            (
                StatusCode::BAD_GATEWAY,
                "upstream: the gateway's credentials were refused",
            )
                .into_response()
        }
        Ok(mut response) => {
            // Likewise, the upstream connection's own headers go no
            // further than the gateway, nor do challenges about the
            // gateway's credentials (a `403` for a missing scope, say).
            remove_hop_by_hop(response.headers_mut());
            for name in [PROXY_AUTHENTICATE, WWW_AUTHENTICATE] {
                response.headers_mut().remove(name);
            }
            response.map(Body::new).into_response()
        }
        Err(error) => upstream_failed(&*error, &gateway.handle.status()),
    }
}

/// The gateway's answer when no upstream response came back. The layer's
/// typed error says why, and never holds the token: a token that did not
/// come in time is a `504`; a refresh that failed for now is a `503`; both
/// with a `Retry-After` of what is left of the layer's backoff (or of the
/// wait a rate limit asked for); credentials that need someone to sign in
/// again are a `502`, as a rejection is; a request the layer refused to
/// send in the clear is the gateway's own misconfiguration, a `500`;
/// anything else, such as an unreachable upstream, is a `502`.
fn upstream_failed(error: &(dyn std::error::Error + 'static), status: &TokenStatus) -> Response {
    let typed = error.downcast_ref::<Error>();
    let code = match typed {
        Some(typed) if typed.is_timeout() => StatusCode::GATEWAY_TIMEOUT,
        Some(typed) if typed.is_reauth_required() => StatusCode::BAD_GATEWAY,
        Some(typed) if typed.is_refresh_failed() => StatusCode::SERVICE_UNAVAILABLE,
        Some(typed) if typed.is_insecure_transport() => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_GATEWAY,
    };
    let mut response = (code, format!("upstream: {error}")).into_response();
    // A timed-out refresh is backed off too: its `504` says when to come
    // back as well.
    let wait = status.refreshes_resume_in().filter(|_| {
        matches!(
            code,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
        )
    });
    if let Some(wait) = wait {
        // Whole seconds, rounded up: a caller coming back early would
        // only meet the same wait.
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

/// Removes the fields that belong to one connection (RFC 9110 §7.6.1):
/// `Connection`, the fields it names, and the hop-by-hop fields.
fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let named_by_connection: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::try_from(name.trim()).ok())
        .collect();
    let hop_by_hop = [
        CONNECTION,
        TE,
        TRANSFER_ENCODING,
        UPGRADE,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
    ];
    for name in hop_by_hop.into_iter().chain(named_by_connection) {
        headers.remove(name);
    }
}

#[tokio::main]
async fn main() {
    use support::{ApiServer, CognitoClient, IdentityServer, DEMO_PASSWORD, DEMO_USER};

    let identity = IdentityServer::builder().start().await;
    let api = ApiServer::start(&identity).await;
    let cognito = CognitoClient::new(identity.base_url());
    let tokens = cognito
        .login(DEMO_USER, DEMO_PASSWORD)
        .await
        .expect("login");
    let layer = TokenRefreshLayer::builder(cognito.refresher())
        .initial_tokens(tokens)
        .build();
    let handle = layer.handle();
    let upstream: Uri = api.url("").parse().unwrap();
    let gateway = serve(router(upstream, layer)).await;
    println!("gateway on http://{gateway}, forwarding to {}", api.url(""));

    let caller: Client<HttpConnector, Body> = Client::builder(TokioExecutor::new()).build_http();
    let mut failed = 0;
    for round in ["before", "after"] {
        if round == "after" {
            println!(
                "upstream revoked its current token ({} live)",
                api.revoke_current()
            );
        }
        let tasks: Vec<_> = (0..100)
            .map(|i| {
                let caller = caller.clone();
                let request = axum::http::Request::post(format!("http://{gateway}/v1/orders/{i}"))
                    .header("content-type", "application/json")
                    .body(Body::from(format!(r#"{{"order":{i}}}"#)))
                    .unwrap();
                tokio::spawn(async move { caller.request(request).await })
            })
            .collect();
        let mut ok = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(response) if response.status().is_success() => ok += 1,
                Ok(response) => eprintln!("  gateway answered {}", response.status()),
                Err(error) => eprintln!("  gateway unreachable: {error}"),
            }
        }
        failed += 100 - ok;
        println!("{round} the revocation: 100 calls to the gateway, {ok} OK");
    }
    let stats = handle.stats();
    println!(
        "behind the gateway: {} refresh, {} rejections retried; identity server saw {} refresh calls",
        stats.refreshes,
        stats.retries,
        identity.stats().refresh_calls
    );
    if failed > 0 {
        std::process::exit(1);
    }
}
