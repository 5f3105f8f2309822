//! Fault injection: the refresh endpoint misbehaves in every way a real one
//! does, on real loopback servers, while a client keeps sending requests.
//!
//! Each test arms one fault and checks the same promises: nothing panics;
//! every request ends, within a bound, with a response or a typed
//! [`tower_token_refresh::Error`]; the token endpoint receives no more
//! calls than the backoff schedule allows (counted and spaced at the
//! server); requests keep succeeding while the token in hand is valid
//! (static stability); and once the fault ends a new token comes and
//! requests succeed again.
//!
//! The token endpoint is the RFC 6749 fixture behind a TCP [`Front`] that
//! forwards to it or injects the fault; the API accepts only current
//! tokens. One test binary with a module per kind of fault, so the
//! fixtures are built and linked once.
//!
//! [`Front`]: support::front::Front

// `pub`: the fixtures are shared by several test binaries, each using a
// subset of them.
#[path = "../support/mod.rs"]
pub mod support;

mod answers;
mod revocation;
mod statuses;
mod transport;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;
use tower::Service;
use tower_token_refresh::http::HttpRefresher;
use tower_token_refresh::{
    Backoff, Error, RefreshWindow, TokenHandle, TokenRefreshLayer, TokenSet, TokenState,
};

use support::bounded;
use support::front::{Front, Mode};
use support::oauth2::{OAuth2Server, RegisteredClient};
use support::{ApiServer, AuthedClient};

/// The public OAuth2 client the layer refreshes as.
const CLIENT: &str = "faults";

/// Tokens turn stale this long after they are issued: the background
/// refresh (and so the fault) starts early in each token's life.
const STALE_AFTER: Duration = Duration::from_millis(500);
/// Requests wait for a refresh this long before expiry.
const MANDATORY: Duration = Duration::from_millis(1500);
const BACKOFF_INITIAL: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_millis(400);
/// Spacing of the requests a test keeps sending.
const EVERY: Duration = Duration::from_millis(25);

/// The shortest wait the backoff allows after `failures` consecutive
/// failures: half of `min(initial · 2ⁿ⁻¹, max)` (the rest is jitter).
fn min_backoff(failures: u32) -> Duration {
    let nominal = BACKOFF_INITIAL
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(BACKOFF_MAX);
    nominal / 2
}

/// The most calls the backoff schedule allows within `window` of the
/// first failing one, had each failed at once.
fn allowed_calls(window: Duration) -> usize {
    let mut calls = 1;
    let mut at = Duration::ZERO;
    loop {
        at += min_backoff(calls as u32);
        if at > window {
            return calls;
        }
        calls += 1;
    }
}

/// Asserts that calls made at `times` were spaced as the failure rules
/// require: after the n-th failure in a row, no call before the backoff's
/// shortest wait for n (or `retry_after`, when the failure said so) has
/// passed. `failed(i)` tells whether call `i` failed. Returns the longest
/// run of failures.
fn assert_spaced(
    times: &[Instant],
    failed: impl Fn(usize) -> bool,
    retry_after: Option<Duration>,
) -> usize {
    let (mut run, mut longest) = (0u32, 0);
    for (i, at) in times.iter().enumerate() {
        if i > 0 && run > 0 {
            let gap = *at - times[i - 1];
            let least = retry_after.unwrap_or_else(|| min_backoff(run));
            // Timers fire on millisecond ticks.
            assert!(
                gap + Duration::from_millis(2) >= least,
                "call {} came {gap:?} after failure {run} in a row; at least {least:?} required",
                i + 1
            );
        }
        run = if failed(i) { run + 1 } else { 0 };
        longest = longest.max(run as usize);
    }
    longest
}

/// Asserts that calls made at `times`, all failing, were backed off and
/// no more than the schedule allows within their span. Returns how many
/// there were.
fn assert_backed_off(times: &[Instant]) -> usize {
    assert_spaced(times, |_| true, None);
    if let (Some(first), Some(last)) = (times.first(), times.last()) {
        let allowed = allowed_calls(*last - *first);
        assert!(
            times.len() <= allowed,
            "{} calls in {:?}, the schedule allows {allowed}",
            times.len(),
            *last - *first
        );
    }
    times.len()
}

/// The refresh calls' own client: un-layered, and one connection per call
/// (no pooling), so the front sees each call as a connection.
type RefreshClient = Counted<Client<HttpConnector, Full<Bytes>>>;

fn refresh_client(calls: &Calls) -> RefreshClient {
    Counted {
        inner: Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build_http(),
        calls: Arc::clone(calls),
    }
}

/// One refresh call as the client made it.
#[derive(Debug, Clone, Copy)]
struct Call {
    at: Instant,
    /// The answer's status; `None` while unanswered or without an answer.
    status: Option<StatusCode>,
}

type Calls = Arc<Mutex<Vec<Call>>>;

/// Logs each call and its answer's status, at the client: the count even
/// when the server never sees a call (connection refused).
#[derive(Clone)]
struct Counted<S> {
    inner: S,
    calls: Calls,
}

impl<S, B, R> Service<Request<B>> for Counted<S>
where
    S: Service<Request<B>, Response = Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<R>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let index = {
            let mut calls = self.calls.lock().unwrap();
            let at = Instant::now();
            calls.push(Call { at, status: None });
            calls.len() - 1
        };
        let calls = Arc::clone(&self.calls);
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = answer.await?;
            calls.lock().unwrap()[index].status = Some(response.status());
            Ok(response)
        })
    }
}

/// What a test varies.
#[derive(Clone, Copy)]
struct Settings {
    /// Of every access token the endpoint issues.
    lifetime: Duration,
    /// How long after it is issued a token turns stale.
    stale_after: Duration,
    refresh_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            lifetime: Duration::from_secs(4),
            stale_after: STALE_AFTER,
            refresh_timeout: Duration::from_millis(300),
        }
    }
}

/// A token endpoint behind a front, an API, and a layered client holding
/// a token the endpoint issued just now.
struct Rig {
    oauth: OAuth2Server,
    api: ApiServer,
    front: Front,
    handle: TokenHandle,
    client: AuthedClient,
    calls: Calls,
    settings: Settings,
    /// When the first token was issued.
    issued: Instant,
}

impl Rig {
    async fn start(settings: Settings) -> Self {
        let oauth = OAuth2Server::builder()
            .client(RegisteredClient::public(CLIENT).scope("read"))
            .token_lifetime(settings.lifetime)
            .start()
            .await;
        let api = ApiServer::start(&oauth).await;
        let front = Front::start(&oauth.base_url()).await;
        let calls = Calls::default();
        let refresher = HttpRefresher::oauth2(front.url("/oauth/token"), refresh_client(&calls))
            .client_id(CLIENT);
        let issued = Instant::now();
        let granted = oauth.authorize(CLIENT, "read");
        let layer = TokenRefreshLayer::builder(refresher)
            .initial_tokens(
                TokenSet::new(granted.access_token)
                    .with_refresh_token(granted.refresh_token)
                    .with_expires_in(settings.lifetime),
            )
            .advisory_window(RefreshWindow::fixed(
                settings.lifetime.saturating_sub(settings.stale_after),
            ))
            .mandatory_window(RefreshWindow::fixed(MANDATORY))
            .refresh_timeout(settings.refresh_timeout)
            .min_refresh_interval(Duration::from_millis(100))
            .backoff(Backoff::new(BACKOFF_INITIAL, BACKOFF_MAX))
            .build();
        let handle = layer.handle();
        let client = support::authed_client(layer);
        Self {
            oauth,
            api,
            front,
            handle,
            client,
            calls,
            settings,
            issued,
        }
    }

    fn url(&self) -> String {
        self.api.url("/v1/reports")
    }

    /// The longest a request may take: a refresh it waits for, which may
    /// include a login-free retry of the call, and slack for a busy host.
    fn request_bound(&self) -> Duration {
        self.settings.refresh_timeout * 2 + Duration::from_secs(3)
    }

    /// When the first token expires.
    fn expiry(&self) -> Instant {
        self.issued + self.settings.lifetime
    }

    /// The last moment a request may start and still be sure to end
    /// before the first token expires, even after waiting out a refresh.
    fn still_valid_until(&self) -> Instant {
        self.expiry() - self.settings.refresh_timeout - Duration::from_millis(700)
    }

    /// Refresh calls the client made since the rig started.
    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// One `GET`, bounded.
    async fn get(&self) -> Sent {
        send(&self.client, &self.url(), self.request_bound()).await
    }

    /// `GET`s every [`EVERY`] until `until`, each from its own task, all
    /// awaited.
    async fn traffic_until(&self, until: Instant) -> Vec<Sent> {
        traffic(&self.client, &self.url(), self.request_bound(), until).await
    }

    /// Static stability: with the fault armed, every request until shortly
    /// before the first token expires succeeds with it.
    async fn assert_served_while_valid(&self) -> usize {
        let sent = self.traffic_until(self.still_valid_until()).await;
        assert_all_ok(&sent, "while the token was valid");
        assert!(sent.len() > 20, "too few requests to tell: {}", sent.len());
        assert_eq!(self.handle.status().generation(), 1, "no new token came");
        sent.len()
    }

    /// Once the first token expired and the fault still holds, requests
    /// fail fast with the layer's typed error, which `check` inspects.
    async fn assert_typed_errors_after_expiry(&self, check: impl Fn(&Error)) {
        tokio::time::sleep_until(self.expiry() + Duration::from_millis(300)).await;
        for _ in 0..5 {
            match self.get().await {
                Sent::Failed(error) => check(&error),
                other => panic!("after expiry, with the endpoint still failing: {other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Ends the fault; a new token must come within the backoff's longest
    /// wait plus a refresh, and then a burst of requests succeeds.
    async fn assert_recovers(&self) {
        self.front.set(Mode::Forward).await;
        let ended = Instant::now();
        let give_up = ended + BACKOFF_MAX + self.settings.refresh_timeout + Duration::from_secs(5);
        loop {
            match self.get().await {
                Sent::Status(StatusCode::OK) => break,
                Sent::Failed(_) | Sent::Status(_) => {}
                other => panic!("while recovering: {other:?}"),
            }
            assert!(
                Instant::now() < give_up,
                "no recovery after the fault ended"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let status = self.handle.status();
        assert!(status.generation() > 1, "a new token was installed");
        assert!(
            matches!(status.state(), TokenState::Fresh | TokenState::Stale),
            "{:?}",
            status.state()
        );
        let sent = self
            .traffic_until(Instant::now() + Duration::from_millis(250))
            .await;
        assert!(sent
            .iter()
            .all(|s| matches!(s, Sent::Status(StatusCode::OK))));
        assert!(self.oauth.stats().refreshed >= 1);
    }
}

/// How one request ended.
#[derive(Debug)]
enum Sent {
    Status(StatusCode),
    /// The layer's own error.
    Failed(Error),
    /// Any other error: a bug, the layer must type what it causes. (Read
    /// through `Debug`, in assertion messages.)
    Untyped(#[allow(dead_code)] String),
    /// Not ended within the bound.
    Hung,
}

/// `GET url` every [`EVERY`] until `until`, each from its own task and
/// bounded by `bound`, all awaited.
/// How long the layer may take to get past a fault (a revocation, the end
/// of a refresh). Generous: it only catches a layer that stopped
/// refreshing, and a loaded machine may take its time.
const STEP_LIMIT: Duration = Duration::from_secs(20);

/// Waits (bounded by [`STEP_LIMIT`]) until `ready` holds.
async fn wait_until(what: &str, ready: impl Fn() -> bool) {
    let give_up = Instant::now() + STEP_LIMIT;
    while !ready() {
        assert!(
            Instant::now() < give_up,
            "not within {STEP_LIMIT:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Whether no refresh of `handle`'s is under way: counts read next are
/// final.
fn refreshes_ended(handle: &TokenHandle) -> bool {
    let stats = handle.stats();
    stats.refresh_successes + stats.refresh_failures == stats.refreshes
}

async fn traffic(client: &AuthedClient, url: &str, bound: Duration, until: Instant) -> Vec<Sent> {
    traffic_while(client, url, bound, || Instant::now() < until).await
}

/// `GET url` every [`EVERY`] for as long as `more` says, each from its own
/// task and bounded by `bound`, all awaited.
async fn traffic_while(
    client: &AuthedClient,
    url: &str,
    bound: Duration,
    mut more: impl FnMut() -> bool,
) -> Vec<Sent> {
    let mut tasks = Vec::new();
    while more() {
        let client = client.clone();
        let url = url.to_owned();
        tasks.push(tokio::spawn(
            async move { send(&client, &url, bound).await },
        ));
        tokio::time::sleep(EVERY).await;
    }
    let mut sent = Vec::with_capacity(tasks.len());
    for task in tasks {
        sent.push(task.await.expect("a request task panicked"));
    }
    sent
}

/// Asserts that every request in `sent` was answered `200`.
fn assert_all_ok(sent: &[Sent], when: &str) {
    for (i, outcome) in sent.iter().enumerate() {
        assert!(
            matches!(outcome, Sent::Status(StatusCode::OK)),
            "request {i} {when}: {outcome:?}"
        );
    }
}

async fn send(client: &AuthedClient, url: &str, bound: Duration) -> Sent {
    match tokio::time::timeout(bound, support::send(client, support::get(url))).await {
        Err(_) => Sent::Hung,
        Ok(Ok(response)) => Sent::Status(response.status()),
        Ok(Err(error)) => match error.downcast_ref::<Error>() {
            Some(error) => Sent::Failed(error.clone()),
            None => Sent::Untyped(error.to_string()),
        },
    }
}

/// A fault that makes every refresh call fail transiently, end to end:
/// armed at once, static stability while the token is valid, backoff
/// counted at the server (`at_server`: the front accepts the calls) and
/// at the client, typed errors after expiry (`check`), recovery. Returns
/// how many refresh calls the fault took.
async fn transient_fault(
    settings: Settings,
    fault: Mode,
    at_server: bool,
    check: impl Fn(&Error),
) -> usize {
    let rig = Rig::start(settings).await;
    rig.front.set(fault).await;
    rig.assert_served_while_valid().await;
    rig.assert_typed_errors_after_expiry(&check).await;

    let calls: Vec<Instant> = rig.calls().iter().map(|c| c.at).collect();
    let failed = assert_backed_off(&calls);
    assert!(failed >= 2, "the fault was hit more than once: {failed}");
    if at_server {
        let accepted = rig.front.accepted();
        assert_eq!(accepted.len(), calls.len(), "one connection per call");
        assert_backed_off(&accepted);
    } else {
        assert!(rig.front.accepted().is_empty());
    }
    assert_eq!(rig.oauth.stats().token_calls, 0, "nothing got through");
    let stats = rig.handle.stats();
    assert_eq!(stats.refresh_failures as usize, failed);
    assert_eq!(stats.refresh_successes, 0);

    rig.assert_recovers().await;
    failed
}
