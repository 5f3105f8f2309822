//! The layer over real loopback HTTP: a hyper-util client wrapped in
//! `TokenRefreshLayer`, a Cognito-style identity server implementing seed
//! 002 (rate limit included) and an API server that accepts only current
//! tokens. See `tests/support`.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{ALLOW, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tokio::time::Instant;
use tower_token_refresh::{
    Builder, Error, RefreshWindow, TokenHandle, TokenRefreshLayer, TokenSet,
};

use support::body::{chunked, full};
use support::bounded;
use support::client::{assert_all_ok, concurrently};
use support::{
    authed_client, get, post, send, ApiServer, AuthedClient, CognitoClient, IdentityServer,
    DEMO_PASSWORD, DEMO_USER,
};

/// An identity server built by `identity`, an API server sharing its
/// tokens, and the tokens of one login.
async fn servers(identity: IdentityServer) -> (IdentityServer, ApiServer, CognitoClient, TokenSet) {
    let api = ApiServer::start(&identity).await;
    let cognito = CognitoClient::new(identity.base_url());
    let tokens = cognito
        .login(DEMO_USER, DEMO_PASSWORD)
        .await
        .expect("login");
    (identity, api, cognito, tokens)
}

/// The servers, and a client layered with tokens from one login.
struct Setup {
    identity: IdentityServer,
    api: ApiServer,
    handle: TokenHandle,
    client: AuthedClient,
}

/// Starts `identity` and an API server beside it, logs in, and builds the
/// layer: `configure` gets the builder and the login tokens and adds the
/// test's own settings.
async fn setup(
    identity: IdentityServer,
    configure: impl FnOnce(Builder, TokenSet) -> Builder,
) -> Setup {
    let (identity, api, cognito, login) = servers(identity).await;
    let layer = configure(TokenRefreshLayer::builder(cognito.refresher()), login).build();
    Setup {
        identity,
        api,
        handle: layer.handle(),
        client: authed_client(layer),
    }
}

/// [`setup`] with the layer starting from the login tokens (`configure`
/// adds the test's own settings). Tokens handed in (not refreshed by the
/// layer) are never held back by `min_refresh_interval`, though they are
/// milliseconds old.
async fn with_login_tokens(configure: impl FnOnce(Builder) -> Builder) -> Setup {
    setup(IdentityServer::builder().start().await, |layer, login| {
        configure(layer.initial_tokens(login))
    })
    .await
}

/// 16 KiB that are not all the same byte.
fn payload(len: usize) -> Bytes {
    (0..len)
        .map(|i| (i * 31 % 251) as u8)
        .collect::<Vec<u8>>()
        .into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_requests_with_an_expired_token_cause_one_refresh() {
    bounded(async {
        let Setup {
            identity,
            api,
            handle,
            client,
        } = setup(IdentityServer::builder().start().await, |layer, login| {
            // Same tokens, but the layer is told the access token has no
            // time left: no request may be sent with it.
            layer.initial_tokens(login.with_expires_in(Duration::ZERO))
        })
        .await;

        let url = api.url("/v1/items");
        let results = concurrently(&client, 1000, || get(&url)).await;

        assert_all_ok(&results);
        assert_eq!(identity.stats().refresh_calls, 1);
        assert_eq!(handle.stats().refreshes, 1);
        let api = api.stats();
        assert_eq!((api.requests, api.ok, api.unauthorized), (1000, 1000, 0));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_requests_rejected_after_revocation_refresh_once_and_are_retried() {
    bounded(async {
        let Setup {
            identity,
            api,
            handle,
            client,
        } = with_login_tokens(|layer| layer).await;

        // All 1,000 reach the API server with the login token, then it is
        // revoked and they are checked: every one is rejected.
        let hold = api.hold_next(1000);
        let url = api.url("/v1/items");
        let sending = concurrently(&client, 1000, || get(&url));
        let revoking = async {
            hold.arrived(1000).await;
            assert_eq!(api.revoke_current(), 1, "the login token was live");
            hold.release();
        };
        let (results, ()) = tokio::join!(sending, revoking);

        assert_all_ok(&results);
        assert_eq!(identity.stats().refresh_calls, 1);
        let stats = handle.stats();
        assert_eq!(stats.refreshes, 1);
        assert_eq!(stats.rejections, 1000);
        assert_eq!(stats.retries, 1000);
        let api = api.stats();
        assert_eq!((api.requests, api.unauthorized, api.ok), (2000, 1000, 1000));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_body_is_replayed_when_the_server_rejects_before_reading_it() {
    bounded(async {
        let Setup {
            identity,
            api,
            handle,
            client,
        } = with_login_tokens(|layer| layer).await;
        api.revoke_current();

        // 16 KiB of unknown length, streamed in 1 KiB pieces 2 ms apart:
        // the 401 arrives while the first attempt is still sending.
        let data = payload(16 * 1024);
        let body = chunked(data.clone(), 1024, Duration::from_millis(2));
        let request = post(&api.url("/v1/upload"), "application/octet-stream", body);
        let response = send(&client, request).await.expect("request");

        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.body().len(), data.len());
        assert!(
            response.body() == &data,
            "the retried body differs from the original"
        );
        let api = api.stats();
        assert_eq!(api.rejected_before_body, 1, "first attempt rejected unread");
        assert_eq!((api.requests, api.unauthorized, api.ok), (2, 1, 1));
        let stats = handle.stats();
        assert_eq!((stats.refreshes, stats.retries), (1, 1));
        assert_eq!(identity.stats().refresh_calls, 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_over_the_replay_cap_is_not_retried_and_the_401_is_returned() {
    bounded(async {
        let Setup {
            identity,
            api,
            handle,
            client,
        } = with_login_tokens(|layer| layer.replay_cap(1024)).await;
        api.revoke_current();
        let data = payload(4 * 1024);
        let url = api.url("/v1/upload");

        let rejected = send(
            &client,
            post(&url, "application/octet-stream", full(data.clone())),
        )
        .await
        .expect("request");
        assert_eq!(rejected.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            rejected.headers()[WWW_AUTHENTICATE],
            r#"Bearer error="invalid_token""#
        );
        let stats = handle.stats();
        assert_eq!((stats.rejections, stats.retries), (1, 0));
        assert_eq!(stats.refreshes, 1, "the rejection still refreshed");

        let accepted = send(
            &client,
            post(&url, "application/octet-stream", full(data.clone())),
        )
        .await
        .expect("request");
        assert_eq!(accepted.status(), StatusCode::OK);
        assert!(accepted.body() == &data);
        assert_eq!(handle.stats().refreshes, 1);
        assert_eq!(identity.stats().refresh_calls, 1);
        let api = api.stats();
        assert_eq!((api.requests, api.unauthorized, api.ok), (2, 1, 1));
    })
    .await;
}

/// Under steady traffic across several expiries, each token is replaced
/// once, when it turns stale, and never twice: so the endpoint's limit (5
/// refreshes per 6 s, against one per 1.5 s) is never met, and no expired
/// token is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cognito_rate_limit_is_never_hit_across_expiries() {
    // Tokens live L = 2 s; the layer refreshes A = 0.5 s before expiry, so
    // under steady traffic a token is replaced 1.5 s after the refresh that
    // produced it was sent. How many refreshes there are by the time the
    // workers stop depends on how fast a loaded machine runs them: what is
    // checked is that each token was replaced once, and not before it was
    // due.
    const LIFETIME: Duration = Duration::from_secs(2);
    const ADVISORY: Duration = Duration::from_millis(500);
    const WORKERS: usize = 50;
    /// Expiries the traffic must run across.
    const EXPIRIES: usize = 3;
    bounded(async {
        let identity = IdentityServer::builder()
            .token_lifetime(LIFETIME)
            .rate_limit(5, Duration::from_secs(6))
            .start()
            .await;
        let Setup {
            identity,
            api,
            handle,
            client,
        } = setup(identity, |layer, login| {
            layer
                .initial_tokens(login)
                .advisory_window(RefreshWindow::fixed(ADVISORY))
        })
        .await;

        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let url = api.url("/v1/items");
        let workers: Vec<_> = (0..WORKERS)
            .map(|_| {
                let (client, stop, ok, url) =
                    (client.clone(), stop.clone(), ok.clone(), url.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let response = send(&client, get(&url)).await.expect("request");
                        assert_eq!(response.status(), StatusCode::OK);
                        ok.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                })
            })
            .collect();

        // Until the traffic has run past the third expiry, and that token
        // has been replaced.
        let tokens = identity.tokens();
        loop {
            let expiries = tokens.access_token_expiries();
            if expiries.len() > EXPIRIES && Instant::now() > expiries[EXPIRIES - 1] {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.store(true, Ordering::Relaxed);
        for worker in workers {
            worker.await.expect("worker failed");
        }
        // A request may have started a background refresh just before the
        // workers stopped: wait for it, so the counts below agree.
        loop {
            let stats = handle.stats();
            if stats.refresh_successes + stats.refresh_failures == stats.refreshes {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }

        let stats = identity.stats();
        assert_eq!(stats.rate_limited, 0, "429 from the identity server");
        // The login's token, then one per refresh call, each a success.
        let expiries = tokens.access_token_expiries();
        assert_eq!(stats.refresh_calls, stats.refreshed);
        assert_eq!(stats.refresh_calls as usize, expiries.len() - 1);
        assert_eq!(handle.stats().refreshes, stats.refresh_calls);
        // Each token's successor was issued only once it was nearly due: a
        // second refresh for the same token would have come about a token's
        // whole stale-free life early. (The layer dates a token from when it
        // sent the refresh call, the server from when the call arrived, so
        // a slow call makes the next one look early by its delay: half the
        // stale-free life is the margin for that.)
        let margin = (LIFETIME - ADVISORY) / 2;
        for (i, pair) in expiries.windows(2).enumerate() {
            let (due, next_issued) = (pair[0] - ADVISORY, pair[1] - LIFETIME);
            assert!(
                next_issued + margin >= due,
                "token {} replaced {:?} before it was due",
                i,
                due - next_issued
            );
        }
        let api = api.stats();
        assert_eq!(api.unauthorized, 0, "an expired token was sent");
        assert_eq!(api.ok, ok.load(Ordering::Relaxed));
        assert!(
            api.ok >= WORKERS as u64 * 10,
            "traffic kept flowing: {}",
            api.ok
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_refresh_token_fails_fast_with_reauth_required() {
    bounded(async {
        let Setup {
            identity,
            api,
            handle,
            client,
        } = with_login_tokens(|layer| layer).await;
        identity.tokens().revoke_refresh_tokens();
        api.revoke_current();
        let url = api.url("/v1/items");

        let error = send(&client, get(&url)).await.expect_err("refresh is dead");
        let error = error.downcast_ref::<Error>().expect("the layer's error");
        assert!(error.is_reauth_required(), "{error}");
        let cause = error.refresh_error().expect("the identity server's answer");
        assert!(cause.is_terminal());
        assert_eq!(cause.status(), Some(401));
        assert_eq!(cause.message(), "Invalid or expired refresh token");
        assert_eq!(cause.code(), Some("Unauthorized"));

        // Fails fast: no second call to the identity server.
        let again = send(&client, get(&url)).await.expect_err("still dead");
        assert!(again
            .downcast_ref::<Error>()
            .is_some_and(Error::is_reauth_required));
        assert_eq!(identity.stats().refresh_calls, 1);
        assert_eq!(handle.stats().refreshes, 1);
        assert_eq!(api.stats().requests, 1);
    })
    .await;
}

/// A raw exchange with a fixture server: status, headers, JSON body.
async fn raw(
    method: Method,
    url: &str,
    content_type: Option<&str>,
    body: &str,
) -> (StatusCode, hyper::HeaderMap, Value) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut request = Request::builder().method(method).uri(url);
    if let Some(content_type) = content_type {
        request = request.header(CONTENT_TYPE, content_type);
    }
    let request = request
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let response = client.request(request).await.expect("fixture answers");
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.expect("body").to_bytes();
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (parts.status, parts.headers, value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_server_answers_as_the_seed_documents() {
    bounded(async {
        let (identity, _api, _cognito, login) =
            servers(IdentityServer::builder().start().await).await;
        let base = identity.base_url();
        let refresh_url = format!("{base}/api/auth/refresh-token");
        let refresh_token = login.refresh_token().unwrap().expose().to_owned();
        let valid = json!({ "refreshToken": refresh_token }).to_string();
        let json_type = Some("application/json");

        let (status, headers, _) = raw(Method::GET, &refresh_url, None, "").await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(headers[ALLOW], "POST");
        let (status, _, body) = raw(Method::POST, &format!("{base}/api/auth/nope"), json_type, &valid).await;
        assert_eq!((status, body["statusCode"].as_u64()), (StatusCode::NOT_FOUND, Some(404)));

        // Each of these counts against the limit of 5 per minute.
        for (content_type, body) in [
            (None, valid.as_str()),
            (json_type, "{not json"),
            (json_type, r#"{"refreshToken": 42}"#),
        ] {
            let (status, _, body) = raw(Method::POST, &refresh_url, content_type, body).await;
            assert_eq!(status, StatusCode::BAD_REQUEST);
            assert_eq!((body["statusCode"].as_u64(), body["error"].as_str()), (Some(400), Some("Bad Request")));
            assert!(body["message"].is_string());
        }
        let unknown = json!({ "refreshToken": "eyJjdHkiOiJKV1Qi.unknown" }).to_string();
        let (status, _, body) = raw(Method::POST, &refresh_url, json_type, &unknown).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            body,
            json!({ "statusCode": 401, "message": "Invalid or expired refresh token", "error": "Unauthorized" })
        );
        let (status, _, body) = raw(Method::POST, &refresh_url, json_type, &valid).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body["accessToken"].as_str().is_some_and(|t| t != login.access_token().expose()));
        assert_eq!(body["refreshToken"], refresh_token.as_str(), "not rotated");
        assert_eq!(body["expiresIn"], 3600);
        assert_eq!(body["requiresPasswordChange"], false);
        // The sixth request within the minute.
        let (status, headers, body) = raw(Method::POST, &refresh_url, json_type, &valid).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert!(headers.get("retry-after").is_none());
        assert_eq!(
            body,
            json!({ "statusCode": 429, "message": "Too many requests", "error": "Too Many Requests" })
        );

        let login_url = format!("{base}/api/auth/login");
        let wrong = json!({ "username": DEMO_USER, "password": "wrong" }).to_string();
        let (status, _, _) = raw(Method::POST, &login_url, json_type, &wrong).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);

        let stats = identity.stats();
        assert_eq!(stats.logins, 1);
        assert_eq!(stats.refresh_calls, 6);
        assert_eq!(stats.refreshed, 1);
        assert_eq!(stats.bad_requests, 3);
        assert_eq!(stats.unauthorized, 2);
        assert_eq!(stats.rate_limited, 1);
    })
    .await;
}

/// A body of unknown length is recorded; the 401 arrives after the first
/// 1 KiB (exactly the cap), and the first attempt then streams past the cap.
/// The retry must not be sent with a truncated body: the caller gets the
/// original 401, and the refresh still happens for the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_body_crossing_the_replay_cap_after_the_401_returns_the_401() {
    bounded(async {
        let Setup {
            identity,
            api,
            client,
            ..
        } = with_login_tokens(|layer| layer.replay_cap(1024)).await;
        api.revoke_current();
        let url = api.url("/v1/upload");

        // 4 KiB of unknown length, 1 KiB every 20 ms: the 401 comes first.
        let body = chunked(payload(4 * 1024), 1024, Duration::from_millis(20));
        let response = send(&client, post(&url, "application/octet-stream", body))
            .await
            .expect("the 401, not an error");
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(api.stats().requests, 1, "no truncated retry was sent");

        let accepted = send(&client, get(&url)).await.expect("request");
        assert_eq!(accepted.status(), StatusCode::OK);
        assert_eq!(identity.stats().refresh_calls, 1);
    })
    .await;
}

/// A `GET` of `url` sent outside the layer, by a plain hyper client, with
/// `bearer`'s header: the status the API server answers. A client of its
/// own each time, as each call stands for a connection of its own.
async fn get_outside_the_layer(url: &str, bearer: &tower_token_refresh::Bearer) -> StatusCode {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let request = Request::get(url)
        .header(hyper::header::AUTHORIZATION, bearer.header_value().clone())
        .body(Full::default())
        .unwrap();
    let response = client.request(request).await.expect("API server answers");
    response.status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_sent_outside_the_layer_are_replaced_after_a_revocation_with_one_refresh() {
    bounded(async {
        let Setup {
            identity,
            api,
            handle,
            client,
        } = with_login_tokens(|layer| layer).await;
        let url = api.url("/v1/items");

        // 50 connections of another protocol, say, each authenticated with
        // the handle's token; then the token is revoked and each one is
        // rejected, asks for the next token and authenticates again.
        let mut connections = tokio::task::JoinSet::new();
        // Every connection and this test: all authenticated, then revoked.
        let authenticated = Arc::new(tokio::sync::Barrier::new(51));
        let revoked = Arc::new(tokio::sync::Barrier::new(51));
        for _ in 0..50 {
            let (handle, url) = (handle.clone(), url.clone());
            let (authenticated, revoked) = (Arc::clone(&authenticated), Arc::clone(&revoked));
            connections.spawn(async move {
                let bearer = handle.bearer().await.expect("a token");
                assert_eq!(get_outside_the_layer(&url, &bearer).await, StatusCode::OK);
                authenticated.wait().await;
                revoked.wait().await;
                assert_eq!(
                    get_outside_the_layer(&url, &bearer).await,
                    StatusCode::UNAUTHORIZED
                );
                let next = handle
                    .bearer_after_rejection(&bearer)
                    .await
                    .expect("the next token");
                assert!(next.generation() > bearer.generation());
                get_outside_the_layer(&url, &next).await
            });
        }
        authenticated.wait().await;
        assert_eq!(api.revoke_current(), 1, "the login token was live");
        revoked.wait().await;
        while let Some(status) = connections.join_next().await {
            assert_eq!(status.expect("connection task"), StatusCode::OK);
        }
        assert_eq!(
            identity.stats().refresh_calls,
            1,
            "one refresh for 50 rejections"
        );
        let stats = handle.stats();
        assert_eq!((stats.refreshes, stats.rejections), (1, 50));

        // Requests through the layer send the same new token.
        let response = send(&client, get(&url)).await.expect("through the layer");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(identity.stats().refresh_calls, 1);
    })
    .await;
}
