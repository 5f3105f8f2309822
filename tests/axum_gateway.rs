//! `examples/axum_gateway.rs` under test: callers of the gateway never see
//! the upstream's token, and a burst after an upstream revocation costs
//! one refresh; HTTP/2 callers reach the HTTP/1 upstream, hop-by-hop headers
//! stay behind, and each way the gateway's credentials can fail has its own
//! status: 502 for an upstream refusing the refreshed token, for credentials
//! refused for good and for an upstream that never answers; 503 with the
//! wait for a refresh held off; 504 for a token that did not come in time.
//! An upstream's challenge about the gateway's credentials never reaches
//! its callers, on any status.
#![cfg(feature = "axum")]

// The example itself, so the test exercises exactly what it shows; its
// `main`, and parts of the fixtures it includes, are not used here.
#[path = "../examples/axum_gateway.rs"]
#[allow(dead_code, unused_imports)]
mod gateway;

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use http_body_util::BodyExt;
use hyper::header::AUTHORIZATION;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower_token_refresh::{refresh_fn, Backoff, RefreshError, TokenRefreshLayer, TokenSet};

use gateway::support::bounded;
use gateway::support::{ApiServer, CognitoClient, IdentityServer, DEMO_PASSWORD, DEMO_USER};

/// The identity server, the API and a gateway in front of it, logged in.
struct Gateway {
    identity: IdentityServer,
    api: ApiServer,
    handle: tower_token_refresh::TokenHandle,
    /// The API's access token, which callers must never see.
    secret: String,
    addr: std::net::SocketAddr,
}

async fn gateway_in_front_of_the_api() -> Gateway {
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
    Gateway {
        identity,
        api,
        handle,
        secret,
        addr,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_never_see_the_token_and_a_revocation_costs_one_refresh() {
    bounded(async {
        let Gateway {
            identity,
            api,
            handle,
            secret,
            addr,
        } = gateway_in_front_of_the_api().await;
        let caller = caller();

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

/// Found in review: the gateway forwarded the caller's HTTP version, and
/// the upstream client (HTTP/1) refused an HTTP/2 caller's request, so
/// such callers got a 502.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_caller_is_forwarded_to_the_http1_upstream() {
    bounded(async {
        let gateway = gateway_in_front_of_the_api().await;
        let addr = gateway.addr;
        let caller: Client<HttpConnector, Body> = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build_http();

        let request = hyper::Request::post(format!("http://{addr}/v1/orders/7"))
            .header("content-type", "application/json")
            .body(Body::from(r#"{"order":7}"#))
            .unwrap();
        let response = caller.request(request).await.expect("gateway reachable");

        assert_eq!(response.version(), hyper::Version::HTTP_2);
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(status, 200, "{body:?}");
        assert_eq!(body, r#"{"order":7}"#.as_bytes());
    })
    .await;
}

/// The caller's hop-by-hop headers (and those its `Connection` names) and
/// its proxy credentials stay at the gateway, and so do the upstream's own
/// on the way back; end-to-end headers go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_not_forwarded() {
    bounded(async {
        // An upstream that answers with the names of the headers it got,
        // and hop-by-hop headers of its own.
        let upstream = axum::Router::new().fallback(|headers: hyper::HeaderMap| async move {
            let mut names: Vec<&str> = headers.keys().map(|name| name.as_str()).collect();
            names.sort_unstable();
            let own = [
                ("connection", "x-upstream-hop"),
                ("x-upstream-hop", "1"),
                ("keep-alive", "timeout=7"),
                ("x-upstream-kept", "1"),
            ];
            (own, names.join(","))
        });
        let layer = holding_upstream_token();
        let addr = gateway_in_front_of(upstream, layer).await;
        let caller = caller();

        let request = hyper::Request::get(format!("http://{addr}/v1/items"))
            .header("connection", "x-hop, keep-alive")
            .header("x-hop", "1")
            .header("keep-alive", "timeout=5")
            .header("proxy-authorization", "Basic Y2FsbGVyOnNlY3JldA==")
            .header("x-kept", "1")
            .body(Body::empty())
            .unwrap();
        let response = caller.request(request).await.expect("gateway reachable");
        assert_eq!(response.status(), 200);
        let back = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();

        assert!(back.contains_key("x-upstream-kept"), "{back:?}");
        for dropped in ["x-upstream-hop", "keep-alive"] {
            assert!(!back.contains_key(dropped), "{dropped} returned: {back:?}");
        }

        let names: Vec<&str> = std::str::from_utf8(&body).unwrap().split(',').collect();
        assert!(names.contains(&"x-kept"), "{names:?}");
        assert!(
            names.contains(&"authorization"),
            "the layer's token: {names:?}"
        );
        for dropped in ["connection", "x-hop", "keep-alive", "proxy-authorization"] {
            assert!(!names.contains(&dropped), "{dropped} forwarded: {names:?}");
        }
    })
    .await;
}

/// A gateway through `layer` in front of `upstream`, both on loopback.
async fn gateway_in_front_of(upstream: axum::Router, layer: TokenRefreshLayer) -> SocketAddr {
    let upstream = gateway::serve(upstream).await;
    gateway::serve(gateway::router(
        format!("http://{upstream}").parse().unwrap(),
        layer,
    ))
    .await
}

fn caller() -> Client<HttpConnector, Body> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// The gateway's answer to `GET /v1/items`, with its body as text.
async fn get_items(addr: SocketAddr) -> (hyper::StatusCode, hyper::HeaderMap, String) {
    let request = hyper::Request::get(format!("http://{addr}/v1/items"))
        .body(Body::empty())
        .unwrap();
    let response = caller().request(request).await.expect("gateway reachable");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8(body.to_vec()).unwrap(),
    )
}

/// A layer holding the token `upstream-token`, which it never needs to
/// refresh.
fn holding_upstream_token() -> TokenRefreshLayer {
    let source = refresh_fn(|_| async { Ok::<_, RefreshError>(TokenSet::new("unused")) });
    TokenRefreshLayer::builder(source)
        .initial_tokens(TokenSet::new("upstream-token"))
        .build()
}

/// An upstream that answers every request `status` with the challenge
/// `challenge` and a body naming the status (`forbidden`, say).
fn challenging(status: hyper::StatusCode, challenge: &'static str) -> axum::Router {
    let body = status.canonical_reason().unwrap_or_default().to_lowercase();
    axum::Router::new()
        .fallback(move || async move { (status, [("www-authenticate", challenge)], body) })
}

/// An upstream that answers every request `200`, for tests whose token
/// never gets that far.
fn answering_ok() -> axum::Router {
    axum::Router::new().fallback(|| async { "ok" })
}

/// Found in review: the upstream's `401` (with its challenge) went back
/// to a caller who sent no credentials the upstream saw, asking it to
/// authenticate. Once the layer has refreshed and retried, the rejection
/// is the gateway's trouble: a `502`, without the challenge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_refusing_the_refreshed_token_is_a_bad_gateway_not_a_challenge() {
    bounded(async {
        let upstream = challenging(
            hyper::StatusCode::UNAUTHORIZED,
            r#"Bearer error="invalid_token""#,
        );
        let source = refresh_fn(|_| async { Ok::<_, RefreshError>(TokenSet::new("refused-too")) });
        let layer = TokenRefreshLayer::builder(source)
            .initial_tokens(TokenSet::new("refused"))
            .build();
        let handle = layer.handle();
        let addr = gateway_in_front_of(upstream, layer).await;

        let (status, headers, body) = get_items(addr).await;
        assert_eq!(status, 502, "{body}");
        assert!(!headers.contains_key("www-authenticate"), "{headers:?}");
        assert!(!body.contains("refused-too"), "{body}");
        // The gateway's own words, not the upstream's challenge.
        assert_eq!(body, "upstream: the gateway's credentials were refused");
        let stats = handle.stats();
        assert_eq!((stats.refreshes, stats.retries), (1, 1));
    })
    .await;
}

/// A refresh the identity server rate limited is a `503` carrying its
/// `Retry-After` (no more than the hour the layer keeps to), one failing
/// for now a `503` with the backoff left; credentials refused for good are
/// the gateway's trouble, a `502` without a wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_refresh_is_service_unavailable_with_the_identity_servers_wait() {
    bounded(async {
        for (asked, advertised) in [(29_500, "30"), (7_200_000, "3600")] {
            let limited = refresh_fn(move |_| async move {
                Err::<TokenSet, _>(RefreshError::rate_limited(Some(Duration::from_millis(
                    asked,
                ))))
            });
            let layer = TokenRefreshLayer::builder(limited).build();
            let addr = gateway_in_front_of(answering_ok(), layer).await;
            let (status, headers, body) = get_items(addr).await;
            assert_eq!(status, 503, "{body}");
            assert_eq!(headers["retry-after"], advertised, "for {asked} ms");
        }

        // An identity server failing for now: what is left of the backoff.
        let down = refresh_fn(|_| async { Err::<TokenSet, _>(RefreshError::transient("down")) });
        let layer = TokenRefreshLayer::builder(down)
            .backoff(Backoff::new(
                Duration::from_secs(8),
                Duration::from_secs(60),
            ))
            .build();
        let addr = gateway_in_front_of(answering_ok(), layer).await;
        let (status, headers, body) = get_items(addr).await;
        assert_eq!(status, 503, "{body}");
        let wait: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!(
            (4..=8).contains(&wait),
            "half the first wait or more: {wait}"
        );

        let revoked =
            refresh_fn(|_| async { Err::<TokenSet, _>(RefreshError::terminal("revoked")) });
        let layer = TokenRefreshLayer::builder(revoked).build();
        let addr = gateway_in_front_of(answering_ok(), layer).await;
        let (status, headers, body) = get_items(addr).await;
        assert_eq!(status, 502, "{body}");
        assert!(!headers.contains_key("retry-after"), "{headers:?}");
        assert!(body.contains("re-authentication required"), "{body}");
    })
    .await;
}

/// A token that does not come within the refresh timeout is a `504`; an
/// upstream that closes every connection unanswered a `502`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_timing_out_is_a_gateway_timeout_and_a_dead_upstream_a_bad_gateway() {
    bounded(async {
        let hung = refresh_fn(|_| std::future::pending::<Result<TokenSet, RefreshError>>());
        let layer = TokenRefreshLayer::builder(hung)
            .refresh_timeout(Duration::from_millis(200))
            .backoff(Backoff::new(
                Duration::from_secs(8),
                Duration::from_secs(60),
            ))
            .build();
        let addr = gateway_in_front_of(answering_ok(), layer).await;
        for attempt in ["timed out", "backed off"] {
            let (status, headers, body) = get_items(addr).await;
            assert_eq!(status, 504, "{attempt}: {body}");
            let wait: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
            assert!((3..=8).contains(&wait), "{attempt}: {wait}");
        }

        let closing = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead = closing.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((connection, _)) = closing.accept().await {
                drop(connection);
            }
        });
        let layer = holding_upstream_token();
        let upstream = format!("http://{dead}").parse().unwrap();
        let addr = gateway::serve(gateway::router(upstream, layer)).await;
        let (status, _, body) = get_items(addr).await;
        assert_eq!(status, 502, "{body}");
        assert!(!body.contains("upstream-token"), "{body}");
    })
    .await;
}

/// A challenge about the gateway's credentials stays at the gateway on
/// any status: a `403` asking for another scope goes on without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_challenge_on_a_forbidden_answer_stays_at_the_gateway() {
    bounded(async {
        let upstream = challenging(
            hyper::StatusCode::FORBIDDEN,
            r#"Bearer error="insufficient_scope""#,
        );
        let layer = holding_upstream_token();
        let addr = gateway_in_front_of(upstream, layer).await;
        let (status, headers, body) = get_items(addr).await;
        assert_eq!(
            (status, body.as_str()),
            (hyper::StatusCode::FORBIDDEN, "forbidden")
        );
        assert!(!headers.contains_key("www-authenticate"), "{headers:?}");
    })
    .await;
}
