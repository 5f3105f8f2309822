//! The reqwest-middleware adapter over real loopback HTTP: a reqwest client
//! with `TokenRefreshMiddleware`, the Cognito-style identity server of
//! `tests/support` (seed 002, rate limit included) as the token issuer, and
//! an axum API server that accepts only current access tokens and can
//! revoke them.

#![cfg(feature = "reqwest")]

// `pub`: the fixtures are shared by several test binaries, each using a
// subset of them.
pub mod support;

use std::collections::{HashSet, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{Extensions, Method, StatusCode, Uri};
use http_body_util::channel::Channel;
use hyper::body::{Body, Frame};
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware, Middleware, Next};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tower_token_refresh::reqwest::{token_error, TokenRefreshMiddleware};
use tower_token_refresh::{
    refresh_fn, Builder, Refresh, RefreshWindow, TokenHandle, TokenRefreshLayer, TokenSet,
};

use support::bounded;
use support::gate::{Gate, Hold};
use support::identity::IdentityStats;
use support::redirects::Redirects;
use support::tokens::TokenStore;
use support::{CognitoClient, IdentityServer, DEMO_PASSWORD, DEMO_USER};

// ---------------------------------------------------------------------------
// The axum API server.

/// An axum API on `127.0.0.1:0` accepting only current access tokens of
/// the [`TokenStore`] it shares with the identity server.
///
/// - `GET` any path → `200 {"ok": true}`.
/// - `POST` any path with `Content-Type: application/json` → `200` echoing
///   the body; another content type → `415`.
/// - A missing, unknown or revoked token → `401` with `WWW-Authenticate`,
///   decided from the headers alone: the body is not read first. On
///   `/v1/held-rejection`, the rejection's body stops after its first
///   chunk at the hold ([`AxumApi::hold_next`]), as a request does.
struct AxumApi {
    base_url: String,
    state: Arc<ApiState>,
    serve: JoinHandle<()>,
}

struct ApiState {
    tokens: TokenStore,
    gate: Gate,
    requests: AtomicU64,
    ok: AtomicU64,
    unauthorized: AtomicU64,
    /// The `Authorization` header of every request, in arrival order, and
    /// whether it was accepted.
    seen: Mutex<Vec<(Option<String>, bool)>>,
    /// The client port of every request, in arrival order: which
    /// connection it came on.
    ports: Mutex<Vec<u16>>,
}

/// What the API server has seen so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ApiStats {
    requests: u64,
    ok: u64,
    unauthorized: u64,
}

impl AxumApi {
    async fn start(tokens: TokenStore) -> Self {
        let state = Arc::new(ApiState {
            tokens,
            gate: Gate::default(),
            requests: AtomicU64::new(0),
            ok: AtomicU64::new(0),
            unauthorized: AtomicU64::new(0),
            seen: Mutex::new(Vec::new()),
            ports: Mutex::new(Vec::new()),
        });
        let app = axum::Router::new()
            .fallback(api)
            .with_state(Arc::clone(&state));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base_url = format!("http://{}", listener.local_addr().expect("address"));
        let app = app.into_make_service_with_connect_info::<SocketAddr>();
        let serve = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("serve");
        });
        Self {
            base_url,
            state,
            serve,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// Revokes every access token issued so far; returns how many were live.
    fn revoke_current(&self) -> usize {
        self.state.tokens.revoke_access_tokens()
    }

    /// Holds the next `n` requests, before their token is checked, until the
    /// hold is released or dropped.
    fn hold_next(&self, n: usize) -> Hold {
        self.state.gate.hold_next(n)
    }

    fn stats(&self) -> ApiStats {
        let read = |n: &AtomicU64| n.load(Ordering::SeqCst);
        ApiStats {
            requests: read(&self.state.requests),
            ok: read(&self.state.ok),
            unauthorized: read(&self.state.unauthorized),
        }
    }

    /// Every `Authorization` header the server has seen, with its verdict.
    fn seen(&self) -> Vec<(Option<String>, bool)> {
        self.state.seen.lock().unwrap().clone()
    }

    /// The client port of every request so far.
    fn ports(&self) -> Vec<u16> {
        self.state.ports.lock().unwrap().clone()
    }

    /// The distinct tokens the server accepted.
    fn accepted_tokens(&self) -> HashSet<String> {
        self.seen()
            .into_iter()
            .filter_map(|(auth, accepted)| auth.filter(|_| accepted))
            .collect()
    }
}

impl Drop for AxumApi {
    fn drop(&mut self) {
        self.serve.abort();
    }
}

async fn api(State(state): State<Arc<ApiState>>, request: Request) -> Response {
    state.requests.fetch_add(1, Ordering::SeqCst);
    if let Some(ConnectInfo(peer)) = request.extensions().get::<ConnectInfo<SocketAddr>>() {
        state.ports.lock().unwrap().push(peer.port());
    }
    state.gate.pass().await;

    let uri_path = request.uri().path().to_owned();
    let authorization = request
        .headers()
        .get(AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or("<not ascii>").to_owned());
    let accepted = authorization
        .as_deref()
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|token| state.tokens.access_token_is_valid(token));
    state.seen.lock().unwrap().push((authorization, accepted));
    if !accepted {
        state.unauthorized.fetch_add(1, Ordering::SeqCst);
        // Answered before the body is read; drained afterwards so the
        // client can finish sending.
        let body = request.into_body();
        tokio::spawn(async move {
            let _ = axum::body::to_bytes(body, usize::MAX).await;
        });
        if uri_path == "/v1/held-rejection" {
            let (mut sender, body) = Channel::<Bytes, Infallible>::new(1);
            let state = Arc::clone(&state);
            tokio::spawn(async move {
                let _ = sender.send_data("{\"statusCode\": 401, ".into()).await;
                state.gate.pass().await;
                let _ = sender
                    .send_data("\"message\": \"Unauthorized\"}".into())
                    .await;
            });
            return (StatusCode::UNAUTHORIZED, axum::body::Body::new(body)).into_response();
        }
        if uri_path == "/v1/verbose-rejection" {
            // As a proxy's HTML error page: more than one read's worth.
            return (StatusCode::UNAUTHORIZED, "x".repeat(48 * 1024)).into_response();
        }
        return (
            StatusCode::UNAUTHORIZED,
            [(WWW_AUTHENTICATE, r#"Bearer error="invalid_token""#)],
            Json(json!({ "statusCode": 401, "message": "Unauthorized" })),
        )
            .into_response();
    }

    let response = match *request.method() {
        Method::GET => Json(json!({ "ok": true })).into_response(),
        Method::POST => {
            let json = request
                .headers()
                .get(CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
            if !json {
                return StatusCode::UNSUPPORTED_MEDIA_TYPE.into_response();
            }
            match axum::body::to_bytes(request.into_body(), 1 << 20).await {
                Ok(body) => ([(CONTENT_TYPE, "application/json")], body).into_response(),
                Err(_) => StatusCode::BAD_REQUEST.into_response(),
            }
        }
        _ => StatusCode::METHOD_NOT_ALLOWED.into_response(),
    };
    state.ok.fetch_add(1, Ordering::SeqCst);
    response
}

// ---------------------------------------------------------------------------
// Set-up.

/// The servers, the layer's handle and a reqwest client with the
/// middleware made from the layer.
struct Setup {
    identity: IdentityServer,
    api: AxumApi,
    layer: TokenRefreshLayer,
    handle: TokenHandle,
    client: ClientWithMiddleware,
}

/// Starts the identity server and the axum API beside it, logs in, and
/// builds the layer: `configure` gets the builder and the login tokens.
async fn setup(configure: impl FnOnce(Builder, TokenSet) -> Builder) -> Setup {
    setup_refreshing(CognitoClient::refresher, configure).await
}

/// As [`setup`], refreshing through the source `source` makes of the
/// identity server's client.
async fn setup_refreshing<R: Refresh>(
    source: impl FnOnce(&CognitoClient) -> R,
    configure: impl FnOnce(Builder, TokenSet) -> Builder,
) -> Setup {
    let identity = IdentityServer::builder().start().await;
    let api = AxumApi::start(identity.tokens()).await;
    let cognito = CognitoClient::new(identity.base_url());
    let login = cognito
        .login(DEMO_USER, DEMO_PASSWORD)
        .await
        .expect("login");
    let layer = configure(TokenRefreshLayer::builder(source(&cognito)), login).build();
    let middleware = TokenRefreshMiddleware::new(&layer);
    // The middleware's handle and the layer's see the same state.
    let handle = middleware.handle();
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(middleware)
        .build();
    Setup {
        identity,
        api,
        layer,
        handle,
        client,
    }
}

fn with_login(builder: Builder, login: TokenSet) -> Builder {
    builder.initial_tokens(login)
}

/// Sends `n` requests made by `request` at once, each from its own task;
/// returns each one's status and body.
async fn concurrently<F>(
    n: usize,
    request: F,
) -> Vec<reqwest_middleware::Result<(StatusCode, Bytes)>>
where
    F: Fn() -> reqwest_middleware::RequestBuilder,
{
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let request = request();
            tokio::spawn(async move {
                let response = request.send().await?;
                let status = response.status();
                Ok((status, response.bytes().await?))
            })
        })
        .collect();
    let mut results = Vec::with_capacity(n);
    for task in tasks {
        results.push(task.await.expect("request task panicked"));
    }
    results
}

fn assert_all_ok(results: &[reqwest_middleware::Result<(StatusCode, Bytes)>]) {
    for (i, result) in results.iter().enumerate() {
        match result {
            Ok((status, _)) => assert_eq!(*status, StatusCode::OK, "request {i}"),
            Err(error) => panic!("request {i} failed: {error}"),
        }
    }
}

/// The response body as JSON (reqwest's `json` feature is off).
async fn json_of(response: reqwest::Response) -> Value {
    serde_json::from_slice(&response.bytes().await.unwrap()).expect("a JSON body")
}

fn bearer(handle: &TokenHandle) -> String {
    let tokens = handle.tokens().expect("a token");
    format!("Bearer {}", tokens.access_token().expose())
}

/// Asserts the identity server's counters: every refresh call was answered
/// with a token.
fn assert_refreshed(identity: &IdentityStats, n: u64) {
    assert_eq!((identity.refresh_calls, identity.refreshed), (n, n));
}

// ---------------------------------------------------------------------------
// Tests.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_carry_the_current_token() {
    bounded(async {
        let Setup {
            identity,
            api,
            handle,
            client,
            ..
        } = setup(with_login).await;
        let login = bearer(&handle);

        let response = client.get(api.url("/v1/items")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(json_of(response).await, json!({"ok": true}));

        // After a revocation the next request goes out with the refreshed
        // token, which is the handle's current one.
        assert_eq!(api.revoke_current(), 1);
        let response = client.get(api.url("/v1/items")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let current = bearer(&handle);
        assert_ne!(current, login);
        assert_eq!(
            api.seen(),
            vec![
                (Some(login.clone()), true),
                (Some(login), false),
                (Some(current), true),
            ]
        );
        assert_refreshed(&identity.stats(), 1);
        let stats = handle.stats();
        assert_eq!(
            (stats.refreshes, stats.rejections, stats.retries),
            (1, 1, 1)
        );
    })
    .await;
}

/// Records each attempt that reaches it, placed after the token
/// middleware: whether its `Authorization` header is marked sensitive, and
/// its timeout.
#[derive(Clone, Default)]
struct AttemptProbe(Arc<Mutex<Vec<Attempt>>>);

#[derive(Debug, Clone, Copy)]
struct Attempt {
    sensitive: Option<bool>,
    timeout: Option<Duration>,
}

impl AttemptProbe {
    fn attempts(&self) -> Vec<Attempt> {
        self.0.lock().unwrap().clone()
    }
}

impl Middleware for AttemptProbe {
    // The expansion of `#[async_trait] async fn handle`.
    fn handle<'life0, 'life1, 'life2, 'async_trait>(
        &'life0 self,
        req: reqwest::Request,
        extensions: &'life1 mut Extensions,
        next: Next<'life2>,
    ) -> Pin<
        Box<
            dyn Future<Output = reqwest_middleware::Result<reqwest::Response>>
                + Send
                + 'async_trait,
        >,
    >
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        Self: 'async_trait,
    {
        self.0.lock().unwrap().push(Attempt {
            sensitive: req.headers().get(AUTHORIZATION).map(|v| v.is_sensitive()),
            timeout: req.timeout().copied(),
        });
        next.run(req, extensions)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_header_is_marked_sensitive_on_first_send_and_retry() {
    bounded(async {
        let Setup {
            identity: _identity,
            api,
            layer,
            ..
        } = setup(with_login).await;
        let probe = AttemptProbe::default();
        let client = ClientBuilder::new(reqwest::Client::new())
            .with(layer.reqwest_middleware())
            .with(probe.clone())
            .build();

        api.revoke_current();
        let response = client.get(api.url("/")).send().await.unwrap();

        assert_eq!(response.status(), StatusCode::OK);
        // The first attempt and the retry.
        let sensitive: Vec<_> = probe.attempts().iter().map(|a| a.sensitive).collect();
        assert_eq!(sensitive, [Some(true), Some(true)]);
    })
    .await;
}

/// A source refreshing through `cognito`'s preset after `delay`.
fn slow_by(cognito: &CognitoClient, delay: Duration) -> impl Refresh {
    let preset = Arc::new(cognito.refresher());
    refresh_fn(move |ctx| {
        let preset = Arc::clone(&preset);
        async move {
            tokio::time::sleep(delay).await;
            preset.refresh(ctx).await
        }
    })
}

/// The identity server's refresher, each refresh held until `opened`
/// reads true.
fn held_until(cognito: &CognitoClient, opened: tokio::sync::watch::Receiver<bool>) -> impl Refresh {
    let preset = Arc::new(cognito.refresher());
    refresh_fn(move |ctx| {
        let (preset, mut opened) = (Arc::clone(&preset), opened.clone());
        async move {
            let _ = opened.wait_for(|open| *open).await;
            preset.refresh(ctx).await
        }
    })
}

/// Found in review: reqwest counts a request's timeout per attempt, from
/// when the attempt starts, so a request waited for its token's refresh
/// and then had its whole timeout again. The wait is bounded by it now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_timeout_bounds_the_wait_for_a_token() {
    bounded(async {
        let expired = |builder: Builder, login: TokenSet| {
            builder.initial_tokens(login.with_expires_in(Duration::ZERO))
        };
        // The bound below (4 s) tells the request's own timeout (300 ms)
        // from the refresh's end (6 s), however loaded the machine.
        let slow = |cognito: &CognitoClient| slow_by(cognito, Duration::from_secs(6));
        let setup = setup_refreshing(slow, expired).await;
        let request = setup
            .client
            .get(setup.api.url("/"))
            .timeout(Duration::from_millis(300))
            .send();

        let answer = tokio::time::timeout(Duration::from_secs(4), request).await;
        let error = answer.expect("waited out the refresh").unwrap_err();
        let error = token_error(&error).expect("the token error");
        assert!(error.is_timeout(), "{error}");
        assert_eq!(setup.api.stats().requests, 0, "sent without a token");
        // The refresh goes on, and the next request gets its token.
        let response = setup.client.get(setup.api.url("/")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    })
    .await;
}

/// Each attempt is sent with what is left of the request's timeout: the
/// retry after a rejection does not get it whole again after the wait for
/// the refresh. A wait that runs it out fails the request at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_attempt_gets_what_is_left_of_the_request_timeout() {
    bounded(async {
        let refresh = Duration::from_millis(500);
        let slow = |cognito: &CognitoClient| slow_by(cognito, refresh);
        // A token just refreshed may be rejected and refreshed again.
        let configure =
            |builder, login| with_login(builder, login).min_refresh_interval(Duration::ZERO);
        let Setup {
            identity: _identity,
            api,
            layer,
            ..
        } = setup_refreshing(slow, configure).await;
        let probe = AttemptProbe::default();
        let client = ClientBuilder::new(reqwest::Client::new())
            .with(layer.reqwest_middleware())
            .with(probe.clone())
            .build();
        let timeout = Duration::from_secs(10);

        api.revoke_current();
        let response = client.get(api.url("/")).timeout(timeout).send().await;
        assert_eq!(response.unwrap().status(), StatusCode::OK);
        let [first, retry] = probe.attempts()[..] else {
            panic!("{:?}", probe.attempts());
        };
        let (first, retry) = (first.timeout.unwrap(), retry.timeout.unwrap());
        assert!(first <= timeout, "{first:?}");
        assert!(
            retry <= timeout - refresh,
            "{retry:?} after a {refresh:?} refresh"
        );

        api.revoke_current();
        let short = client.get(api.url("/")).timeout(refresh / 2).send().await;
        let error = token_error(short.as_ref().unwrap_err()).expect("the token error");
        assert!(error.is_timeout(), "{error}");
        assert_eq!(probe.attempts().len(), 3, "no retry past the timeout");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_of_256_in_flight_at_revocation_causes_one_refresh() {
    bounded(async {
        const N: usize = 256;
        let Setup {
            identity,
            api,
            handle,
            client,
            ..
        } = setup(with_login).await;
        let url = api.url("/v1/items");

        // Every request reaches the server with the login token, then the
        // token is revoked under them.
        let hold = api.hold_next(N);
        let burst = tokio::spawn(concurrently(N, move || client.get(&url)));
        hold.arrived(N).await;
        assert_eq!(api.revoke_current(), 1);
        hold.release();
        let results = burst.await.unwrap();

        assert_all_ok(&results);
        assert_refreshed(&identity.stats(), 1);
        let stats = handle.stats();
        let n = N as u64;
        assert_eq!(stats.refreshes, 1);
        assert_eq!((stats.rejections, stats.retries), (n, n));
        // Each rejection either joined the refresh or, arriving after it,
        // was retried with the new token without refreshing.
        assert_eq!(stats.waited + stats.stale_rejections, n);
        // The handle's numbers are the servers' numbers.
        let server = api.stats();
        assert_eq!(server.unauthorized, stats.rejections);
        assert_eq!(server.requests, n + stats.retries);
        assert_eq!(server.ok, n);
        assert_eq!(identity.stats().refresh_calls, stats.refreshes);
        assert_eq!(api.accepted_tokens(), HashSet::from([bearer(&handle)]));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_of_200_with_an_expired_token_waits_for_one_refresh() {
    bounded(async {
        const N: usize = 200;
        let Setup {
            identity,
            api,
            handle,
            client,
            ..
        } = setup(|builder, login| {
            // The login tokens, but with no time left: none may be sent.
            builder.initial_tokens(login.with_expires_in(Duration::ZERO))
        })
        .await;
        let url = api.url("/v1/items");

        let results = concurrently(N, || client.get(&url)).await;

        assert_all_ok(&results);
        assert_refreshed(&identity.stats(), 1);
        let stats = handle.stats();
        assert_eq!(
            (stats.refreshes, stats.rejections, stats.retries),
            (1, 0, 0)
        );
        // Those sent before the refresh ended waited for it; later ones
        // found the new token. None went out with the expired one.
        assert!((1..=N as u64).contains(&stats.waited), "{stats:?}");
        let server = api.stats();
        assert_eq!(
            (server.requests, server.ok, server.unauthorized),
            (200, 200, 0)
        );
        assert_eq!(api.accepted_tokens(), HashSet::from([bearer(&handle)]));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_token_is_sent_while_one_background_refresh_runs() {
    bounded(async {
        const N: usize = 50;
        let Setup {
            identity,
            api,
            handle,
            client,
            ..
        } = setup(|builder, login| {
            // Stale from the start: a one-minute token whose advisory window
            // covers its whole life (the mandatory one is 6 s). The
            // refreshed, hour-long token is fresh for 59 minutes.
            builder
                .initial_tokens(login.with_expires_in(Duration::from_secs(60)))
                .advisory_window(RefreshWindow::fixed(Duration::from_secs(60)))
        })
        .await;
        let login = bearer(&handle);
        let url = api.url("/v1/items");

        let results = concurrently(N, || client.get(&url)).await;
        assert_all_ok(&results);
        // Nobody waited: the stale token went out while the refresh ran.
        let stats = handle.stats();
        assert_eq!((stats.waited, stats.rejections), (0, 0));
        while handle.status().generation() < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }

        assert_refreshed(&identity.stats(), 1);
        assert_eq!(handle.stats().refreshes, 1);
        let response = client.get(&url).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let seen = api.seen();
        assert_eq!(seen.len(), N + 1);
        assert_eq!(seen[N], (Some(bearer(&handle)), true));
        assert_ne!(bearer(&handle), login);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_post_is_retried_with_its_body_intact() {
    bounded(async {
        let Setup {
            identity,
            api,
            handle,
            client,
            ..
        } = setup(with_login).await;
        let order = json!({
            "item": "widget",
            "quantity": 3,
            "notes": "ünïcödé and \"quotes\"",
            "lines": (0..100).map(|i| json!({"n": i})).collect::<Vec<_>>(),
        });

        api.revoke_current();
        let response = client
            .post(api.url("/v1/orders"))
            .header(CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(&order).unwrap())
            .send()
            .await
            .unwrap();

        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(json_of(response).await, order);
        let stats = handle.stats();
        assert_eq!(
            (stats.refreshes, stats.rejections, stats.retries),
            (1, 1, 1)
        );
        let server = api.stats();
        assert_eq!((server.requests, server.ok, server.unauthorized), (2, 1, 1));
        assert_refreshed(&identity.stats(), 1);
    })
    .await;
}

/// Found in review: a URL's fragment, which is never sent and which the
/// response's URL does not keep, made a POST look redirected, and so not
/// retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_to_a_url_with_a_fragment_is_retried() {
    bounded(async {
        // Kept whole: its identity server stops when dropped.
        let setup = setup(with_login).await;
        setup.api.revoke_current();
        let response = setup
            .client
            .post(format!("{}#summary", setup.api.url("/v1/orders")))
            .header(CONTENT_TYPE, "application/json")
            .body(r#"{"item":"widget"}"#)
            .send()
            .await
            .unwrap();

        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(json_of(response).await, json!({"item": "widget"}));
        assert_eq!(setup.handle.stats().retries, 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_larger_than_the_replay_cap_is_still_retried() {
    bounded(async {
        let Setup {
            identity: _identity,
            api,
            handle,
            client,
            ..
        } = setup(|builder, login| builder.initial_tokens(login).replay_cap(1024)).await;
        // A clonable reqwest body is already in memory: the cap, which
        // bounds what the tower layer records of a streamed body, does not
        // apply.
        let big = json!({ "blob": "x".repeat(200 * 1024) });

        api.revoke_current();
        let response = client
            .post(api.url("/v1/blobs"))
            .header(CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(&big).unwrap())
            .send()
            .await
            .unwrap();

        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(json_of(response).await, big);
        assert_eq!(handle.stats().retries, 1);
    })
    .await;
}

/// A streaming request body: chunks of unknown total length, which
/// `reqwest::Request::try_clone` cannot copy.
struct Chunks(VecDeque<Bytes>);

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(|chunk| Ok(Frame::data(chunk))))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_body_gets_the_original_rejection_and_the_next_request_the_new_token() {
    bounded(async {
        let Setup {
            identity,
            api,
            handle,
            client,
            ..
        } = setup(with_login).await;
        let chunks = ["{\"part\": ", "1, ", "\"of\": 3}"].map(Bytes::from);
        let body = reqwest::Body::wrap(Chunks(chunks.into()));

        api.revoke_current();
        let response = client
            .post(api.url("/v1/uploads"))
            .header(CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .unwrap();

        // The server's own rejection, not a retry's answer.
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            response.headers()[WWW_AUTHENTICATE],
            r#"Bearer error="invalid_token""#
        );
        let stats = handle.stats();
        assert_eq!((stats.rejections, stats.retries), (1, 0));

        // The rejection started the refresh; the next request uses its token.
        let response = client.get(api.url("/v1/items")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_refreshed(&identity.stats(), 1);
        assert_eq!(handle.stats().refreshes, 1);
        let server = api.stats();
        assert_eq!((server.requests, server.ok, server.unauthorized), (2, 1, 1));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tower_and_reqwest_clients_share_one_token_and_one_refresh() {
    bounded(async {
        const EACH: usize = 100;
        let Setup {
            identity,
            api,
            layer,
            handle,
            client,
        } = setup(with_login).await;
        // A hyper-util client wrapped in the very same layer.
        let tower = support::authed_client(layer.clone());
        let url = api.url("/v1/items");

        let hold = api.hold_next(2 * EACH);
        let via_reqwest = tokio::spawn({
            let (client, url) = (client.clone(), url.clone());
            concurrently(EACH, move || client.get(&url))
        });
        let via_tower: Vec<_> = (0..EACH)
            .map(|_| {
                let (tower, request) = (tower.clone(), support::get(&url));
                tokio::spawn(async move { support::send(&tower, request).await })
            })
            .collect();
        hold.arrived(2 * EACH).await;
        assert_eq!(api.revoke_current(), 1);
        hold.release();

        assert_all_ok(&via_reqwest.await.unwrap());
        for (i, task) in via_tower.into_iter().enumerate() {
            let response = task.await.unwrap().expect("tower request");
            assert_eq!(response.status(), StatusCode::OK, "tower request {i}");
        }

        assert_refreshed(&identity.stats(), 1);
        let stats = layer.handle().stats();
        assert_eq!(stats, handle.stats());
        let n = 2 * EACH as u64;
        assert_eq!(stats.refreshes, 1);
        assert_eq!((stats.rejections, stats.retries), (n, n));
        let server = api.stats();
        assert_eq!(server.unauthorized, stats.rejections);
        assert_eq!((server.requests, server.ok), (n + stats.retries, n));

        // Both clients go on with the one refreshed token.
        let response = client.get(&url).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let response = support::send(&tower, support::get(&url)).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(api.accepted_tokens(), HashSet::from([bearer(&handle)]));
        assert_eq!(identity.stats().refresh_calls, 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_with_its_own_authorization_passes_through_untouched() {
    bounded(async {
        let Setup {
            identity,
            api,
            handle,
            client,
            ..
        } = setup(with_login).await;

        let response = client
            .get(api.url("/v1/items"))
            .header(AUTHORIZATION, "Bearer someone-elses")
            .send()
            .await
            .unwrap();

        // Neither replaced, nor counted, nor retried.
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            api.seen(),
            vec![(Some("Bearer someone-elses".into()), false)]
        );
        let stats = handle.stats();
        assert_eq!(
            (stats.rejections, stats.retries, stats.refreshes),
            (0, 0, 0)
        );
        assert_eq!(identity.stats().refresh_calls, 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_outside_the_allow_list_gets_no_token() {
    bounded(async {
        let Setup {
            api,
            handle,
            client,
            ..
        } = setup(|builder, login| {
            builder
                .initial_tokens(login)
                .allowed_origins([Uri::from_static("https://api.example.com")])
        })
        .await;

        let response = client.get(api.url("/v1/items")).send().await.unwrap();

        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(api.seen(), vec![(None, false)]);
        assert_eq!(handle.stats().rejections, 0);
    })
    .await;
}

/// Found in review: a `Host` header naming another origin than the URL
/// got the token, which a front end routing by `Host` hands to that
/// origin's backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_header_naming_another_origin_gets_no_token() {
    bounded(async {
        let Setup { api, client, .. } = setup(|builder, login| {
            builder
                .initial_tokens(login)
                .allowed_origins([Uri::from_static("127.0.0.1")])
        })
        .await;
        let url = api.url("/v1/items");

        let listed = client.get(&url).send().await.unwrap();
        let elsewhere = client
            .get(&url)
            .header(reqwest::header::HOST, "tenant-b.example.net")
            .send()
            .await
            .unwrap();

        assert_eq!(listed.status(), StatusCode::OK);
        assert_eq!(elsewhere.status(), StatusCode::UNAUTHORIZED);
        let tokens: Vec<bool> = api
            .seen()
            .iter()
            .map(|(token, _)| token.is_some())
            .collect();
        assert_eq!(tokens, [true, false]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_to_a_remote_host_is_refused_with_a_typed_error() {
    bounded(async {
        let Setup { handle, client, .. } = setup(with_login).await;

        // Refused before any connection is attempted.
        let error = client
            .get("http://api.example.com/v1/items")
            .send()
            .await
            .unwrap_err();

        assert!(error.is_middleware());
        let typed = token_error(&error).expect("the crate's error");
        assert!(typed.is_insecure_transport());
        // Also reachable through anyhow directly.
        let reqwest_middleware::Error::Middleware(inner) = &error else {
            panic!("not a middleware error: {error}");
        };
        assert!(inner.downcast_ref::<tower_token_refresh::Error>().is_some());
        assert_eq!(handle.stats().refreshes, 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_refresh_token_fails_with_reauth_required_and_spares_the_idp() {
    bounded(async {
        let Setup {
            identity,
            api,
            handle,
            client,
            ..
        } = setup(with_login).await;
        // One request is in flight with the token, held at the API, while
        // the rest happens.
        let hold = api.hold_next(1);
        let in_flight = tokio::spawn(client.get(api.url("/v1/items")).send());
        hold.arrived(1).await;
        identity.tokens().revoke_refresh_tokens();
        api.revoke_current();

        let error = client.get(api.url("/v1/items")).send().await.unwrap_err();
        let typed = token_error(&error).expect("the crate's error");
        assert!(typed.is_reauth_required(), "{typed}");
        assert_eq!(typed.refresh_error().and_then(|e| e.status()), Some(401));

        // Its rejection arrives after the refresh failed: the same typed
        // error, not the bare 401 (found in review).
        hold.release();
        let error = in_flight.await.unwrap().unwrap_err();
        assert!(token_error(&error).is_some_and(|e| e.is_reauth_required()));

        // Later requests fail fast: the identity server is not called again.
        let error = client.get(api.url("/v1/items")).send().await.unwrap_err();
        assert!(token_error(&error).is_some_and(|e| e.is_reauth_required()));
        let idp = identity.stats();
        assert_eq!((idp.refresh_calls, idp.unauthorized), (1, 1));
        let stats = handle.stats();
        assert_eq!((stats.refreshes, stats.refresh_failures), (1, 1));
        assert!(handle.status().is_reauth_required());
        // Two requests reached the API, each once: the third never left the
        // client.
        assert_eq!(api.stats().requests, 2);
    })
    .await;
}

/// Found in review: the rejection was dropped unread before the retry.
/// Over HTTP/1.1 that closed its connection, so every retry opened a new
/// one (with TLS, a new handshake too); over HTTP/2 it reset the stream,
/// and enough resets close the whole connection. It is read first now, as
/// the tower layer does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejection_is_read_before_the_retry_so_its_connection_is_reused() {
    bounded(async {
        // A slow refresh: the rejection's connection, once its body is read, is
        // back in the pool well before the retry looks for one (it is returned
        // by the connection's own task, which a loaded machine may run late).
        let slow = |cognito: &CognitoClient| slow_by(cognito, Duration::from_secs(1));
        let setup = setup_refreshing(slow, with_login).await;
        let (api, client) = (&setup.api, &setup.client);
        // Read to its end, as the rejection must be: a response dropped before
        // its body has arrived closes its connection.
        let warm = client.get(api.url("/v1/items")).send().await.expect("sent");
        assert_eq!(warm.status(), StatusCode::OK);
        warm.bytes().await.expect("body");
        pooled_again().await;
        api.revoke_current();

        let response = client.get(api.url("/v1/verbose-rejection")).send().await;
        assert_eq!(response.expect("sent").status(), StatusCode::OK);
        assert_eq!(api.stats().unauthorized, 1);
        let ports = api.ports();
        assert_eq!(ports.len(), 3, "{ports:?}");
        assert!(
            ports.iter().all(|port| *port == ports[0]),
            "every request on one connection: {ports:?}"
        );
    })
    .await;
}

/// The same when the rejection meets a refresh that has already failed:
/// the failure is reported once the rejection has been read, so its
/// connection stays in the pool for the requests after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejection_is_read_before_a_failed_refresh_is_reported() {
    bounded(async {
        let Setup {
            identity,
            api,
            handle,
            client,
            ..
        } = setup(with_login).await;
        let warm = client.get(api.url("/v1/items")).send().await.expect("sent");
        assert_eq!(warm.status(), StatusCode::OK);
        warm.bytes().await.expect("body");
        pooled_again().await;

        // Held at the API while the refresh token dies and the token is
        // revoked: its rejection arrives after the refresh failed.
        let hold = api.hold_next(1);
        let in_flight = tokio::spawn(client.get(api.url("/v1/verbose-rejection")).send());
        hold.arrived(1).await;
        identity.tokens().revoke_refresh_tokens();
        api.revoke_current();
        let dead = handle.force_refresh().await.unwrap_err();
        assert!(dead.is_reauth_required(), "{dead}");
        hold.release();
        let error = in_flight.await.unwrap().unwrap_err();
        assert!(token_error(&error).is_some_and(|e| e.is_reauth_required()));

        // Signed in again, once the rejection's connection is back.
        pooled_again().await;
        let access = identity
            .tokens()
            .issue_access_token(Duration::from_secs(3600));
        handle.set_tokens(TokenSet::new(access)).unwrap();
        let response = client.get(api.url("/v1/items")).send().await.expect("sent");
        assert_eq!(response.status(), StatusCode::OK);
        let ports = api.ports();
        assert_eq!(ports.len(), 3, "{ports:?}");
        assert!(
            ports.iter().all(|port| *port == ports[0]),
            "every request on one connection: {ports:?}"
        );
    })
    .await;
}

/// Waits for a connection whose answer was read to be back in the
/// client's pool. Its own task puts it back, which a loaded machine may
/// run late (under a busy loop, the next request opened a new connection
/// in 1 to 3 of 12 runs of this file): a margin, not a measurement.
async fn pooled_again() {
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// On a runtime built without timers, a rejected request whose rejection
/// must be read ends in the layer's error, not in a panic of the caller's
/// task (reading it set a timer): the refresh, spawned there too, cannot
/// set its timeout. The servers run on a runtime of their own, with timers.
#[test]
fn on_a_runtime_without_timers_a_rejected_request_fails_without_a_panic() {
    let servers = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let Setup { api, client, .. } = servers.block_on(setup(with_login));
    api.revoke_current();
    let timerless = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let sent = timerless.block_on(client.get(api.url("/v1/verbose-rejection")).send());
    let error = sent.expect_err("the refresh cannot run");
    let typed = token_error(&error).expect("the crate's error");
    assert!(typed.is_refresh_failed(), "{typed}");
    assert_eq!(api.stats().unauthorized, 1);
}

/// A request waiting for a token that is rejected elsewhere (here through
/// the handle, as a WebSocket's login would), and replaced, between its
/// refresh and the request's next poll does not send it: it goes out with
/// the replacement. Polled by hand, so the order does not depend on the
/// runtime's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_rejected_before_a_waiting_request_takes_it_is_not_sent() {
    bounded(async {
        let (open, opened) = tokio::sync::watch::channel(false);
        let Setup {
            identity,
            api,
            handle,
            client,
            ..
        } = setup_refreshing(
            |cognito| held_until(cognito, opened.clone()),
            |builder, login| {
                builder
                    .initial_tokens(login.with_expires_in(Duration::ZERO))
                    .min_refresh_interval(Duration::ZERO)
            },
        )
        .await;

        // Waits for the refresh of the expired token, held until the
        // request has polled once: a refresh that ended within that poll
        // would have sent the request on its way with its token (found
        // flaky: it did, about once in 15 runs of this file).
        let mut request = Box::pin(client.get(api.url("/v1/items")).send());
        let polled = request
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()));
        assert!(polled.is_pending(), "waits for the refresh");
        open.send_replace(true);
        // The refresh brings a token that is turned down before the
        // request is polled again.
        let refreshed = handle.bearer().await.expect("the refreshed token");
        let next = handle
            .bearer_after_rejection(&refreshed)
            .await
            .expect("the next token");
        assert!(next.generation() > refreshed.generation());

        let response = request.await.expect("answered");
        assert_eq!(response.status(), StatusCode::OK);
        let sent: Vec<_> = api.seen().into_iter().map(|(auth, _)| auth).collect();
        assert_eq!(sent, [Some(format!("Bearer {}", next.expose()))]);
        assert_refreshed(&identity.stats(), 2);
    })
    .await;
}

/// A retry's token rejected by another answer while the rejection before
/// it is being read, and the refresh that would replace it failed for good:
/// the retry is not sent with the token known rejected, and the caller gets
/// the failure's typed error, as the tower layer's held retry does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_whose_token_is_rejected_while_its_rejection_is_read_is_not_sent() {
    bounded(async {
        let Setup {
            identity,
            api,
            handle,
            client,
            ..
        } = setup(|builder, login| {
            builder
                .initial_tokens(login)
                .min_refresh_interval(Duration::ZERO)
        })
        .await;
        // Sent with the login token, held at the API while that token is
        // revoked and refreshed: its rejection will find a newer token.
        let request = api.hold_next(1);
        let sent = tokio::spawn(client.get(api.url("/v1/held-rejection")).send());
        request.arrived(1).await;
        api.revoke_current();
        let login = handle.bearer().await.expect("the login token");
        let newer = handle
            .bearer_after_rejection(&login)
            .await
            .expect("refreshed");

        // Its rejection's body stops halfway, while the newer token is
        // rejected in turn and its refresh token turns out dead.
        let rejection_body = api.hold_next(1);
        request.release();
        rejection_body.arrived(1).await;
        // The body's sender got there; wait for the middleware to have
        // taken the rejection (its head), so that it decided on `newer`
        // before `newer` is refused (found in review: otherwise it could
        // decide after, taking another branch to the same error).
        let taken = async {
            while handle.stats().rejections < 2 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), taken)
            .await
            .expect("the middleware took the rejection");
        identity.tokens().revoke_refresh_tokens();
        let refused = handle.bearer_after_rejection(&newer).await.unwrap_err();
        assert!(refused.is_reauth_required(), "{refused}");
        rejection_body.release();

        let error = sent.await.unwrap().unwrap_err();
        let typed = token_error(&error).expect("the crate's error");
        assert!(typed.is_reauth_required(), "{typed}");
        assert_eq!(api.stats().requests, 1, "the retry never left the client");
        assert_eq!(handle.stats().retries, 0);
    })
    .await;
}

/// The handle's counts of rejections, refreshes and retries.
fn rejections_refreshes_retries(handle: &TokenHandle) -> (u64, u64, u64) {
    let stats = handle.stats();
    (stats.rejections, stats.refreshes, stats.retries)
}

/// A layer holding the token `stale`, which refreshes to `fresh`.
fn stale_then_fresh() -> TokenRefreshLayer {
    TokenRefreshLayer::builder(refresh_fn(|_| async {
        Ok::<_, tower_token_refresh::RefreshError>(TokenSet::new("fresh"))
    }))
    .initial_tokens(TokenSet::new("stale"))
    .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejection_from_another_origin_after_a_redirect_is_not_the_tokens() {
    bounded(async {
        let servers = Redirects::start().await;
        let layer = stale_then_fresh();
        let handle = layer.handle();
        let client = ClientBuilder::new(reqwest::Client::new())
            .with(layer.reqwest_middleware())
            .build();

        // Across origins reqwest drops the token, so the 401 is not about it.
        let response = client.get(servers.url("/away")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(servers.elsewhere_saw(), vec![None]);
        assert_eq!(rejections_refreshes_retries(&handle), (0, 0, 0));

        // Within the origin the token went along: a rejection, refreshed
        // and retried.
        let response = client.get(servers.url("/here")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(rejections_refreshes_retries(&handle), (1, 1, 1));
    })
    .await;
}

/// Found in review: a `POST` answered `303 See Other` (it took effect),
/// whose `GET` of the result was rejected, was sent again whole, and took
/// effect twice. A request that is not idempotent is not retried after a
/// redirect; the refresh still runs.
#[tokio::test]
async fn a_post_rejected_after_a_redirect_is_not_sent_again() {
    bounded(async {
        let servers = Redirects::start().await;
        let layer = stale_then_fresh();
        let handle = layer.handle();
        let client = ClientBuilder::new(reqwest::Client::new())
            .with(layer.reqwest_middleware())
            .build();

        let url = servers.url("/create");
        let response = client.post(&url).body("order").send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(servers.created(), 1, "sent again after it took effect");
        assert_eq!(rejections_refreshes_retries(&handle), (1, 1, 0));

        // The refreshed token serves the next one.
        let response = client.post(&url).body("order").send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(servers.created(), 2);
    })
    .await;
}

/// With `same_origin_redirects`, a redirect to another origin is the
/// answer, not followed: no second hop there can carry the token. One
/// within the origin is followed as before.
#[tokio::test]
async fn same_origin_redirects_stop_at_another_origin() {
    bounded(async {
        let servers = Redirects::start().await;
        let layer = stale_then_fresh();
        let reqwest = reqwest::Client::builder()
            .redirect(tower_token_refresh::reqwest::same_origin_redirects())
            .build()
            .unwrap();
        let client = ClientBuilder::new(reqwest)
            .with(layer.reqwest_middleware())
            .build();

        let response = client.get(servers.url("/away")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::FOUND);
        assert!(servers.elsewhere_saw().is_empty(), "followed elsewhere");
        let response = client.get(servers.url("/here")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(layer.handle().stats().retries, 1);
    })
    .await;
}
