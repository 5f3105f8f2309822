//! Quickstart: a hyper-util client that always sends a current bearer token.
//!
//! On loopback this starts a Cognito-style identity server (access tokens
//! live 5 s; at most 5 refreshes per minute per IP, as its documentation
//! says) and an API server that accepts only current tokens. It logs in
//! once, then 8 workers send requests for 10 s through `TokenRefreshLayer`.
//! Midway the API server revokes the current token.
//!
//! The layer refreshes each token 1 s before it expires, without holding up
//! requests, and answers the revocation with one refresh and one retry per
//! rejected request. No request fails, and the identity server sees a
//! handful of refreshes, never a 429.
//!
//! Run it with `cargo run --example quickstart`.

// `pub`: the example uses only part of the shared fixtures (its own
// client is built below, as yours would be).
#[path = "../tests/support/mod.rs"]
pub mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;
use tower::ServiceBuilder;
use tower_token_refresh::{
    refresh_fn, Refresh, RefreshContext, RefreshWindow, ReplayBody, TokenRefresh, TokenRefreshLayer,
};

use support::body::{full, ReqBody};
use support::{get, post, send, ApiServer, CognitoClient, IdentityServer};

/// The layered client, as a struct field would name it: the inner client
/// takes the request's body wrapped in `ReplayBody` (kept for a retry).
type AuthedClient = TokenRefresh<Client<HttpConnector, ReplayBody<ReqBody>>>;

const TOKEN_LIFETIME: Duration = Duration::from_secs(5);
const RUN_FOR: Duration = Duration::from_secs(10);
const REVOKE_AT: Duration = Duration::from_millis(6500);
const WORKERS: usize = 8;

#[tokio::main]
async fn main() {
    // 1. The servers: an identity server and the API it protects.
    let identity = IdentityServer::builder()
        .token_lifetime(TOKEN_LIFETIME)
        .rate_limit(5, Duration::from_secs(60))
        .start()
        .await;
    let api = ApiServer::start(&identity).await;
    println!("identity server on {}", identity.base_url());
    println!("API server on      {}", api.url(""));

    // 2. Log in once. From here on the layer keeps the token current.
    let cognito = CognitoClient::new(identity.base_url());
    let tokens = cognito
        .login(support::DEMO_USER, support::DEMO_PASSWORD)
        .await
        .expect("login");
    let started = Instant::now();

    // 3. The layer around a plain hyper-util client.
    let layer = TokenRefreshLayer::builder(printing_refresher(&cognito, started))
        .initial_tokens(tokens)
        // Refresh 1 s before expiry; requests keep flowing meanwhile.
        .advisory_window(RefreshWindow::fixed(Duration::from_secs(1)))
        // A token revoked 1 s or more after we got it may be replaced at
        // once (the default, 5 s, is as long as these tokens live).
        .min_refresh_interval(Duration::from_secs(1))
        .build();
    let handle = layer.handle();
    let http = Client::builder(TokioExecutor::new()).build_http();
    let client: AuthedClient = ServiceBuilder::new().layer(layer).service(http);

    // 4. Traffic: 8 workers sending GETs and POSTs for 10 s.
    let tally = Arc::new(Tally::default());
    let workers: Vec<_> = (0..WORKERS)
        .map(|n| {
            let url = api.url(&format!("/v1/workers/{n}/orders"));
            tokio::spawn(worker(n, client.clone(), url, Arc::clone(&tally), started))
        })
        .collect();

    // 5. Midway, the API server revokes the current token.
    tokio::time::sleep_until(started + REVOKE_AT).await;
    let revoked = api.revoke_current();
    println!(
        "[{}] API server revoked the current access token ({revoked} live)",
        since(started)
    );
    for worker in workers {
        worker.await.expect("worker panicked");
    }

    // 6. What happened.
    let layer = handle.stats();
    let idp = identity.stats();
    let api = api.stats();
    println!(
        "API server: {} requests, {} OK, {} rejected with 401 ({} before reading the body)",
        api.requests, api.ok, api.unauthorized, api.rejected_before_body
    );
    println!(
        "identity server: {} login, {} refresh calls ({} OK, {} 401, {} 429, {} 400)",
        idp.logins,
        idp.refresh_calls,
        idp.refreshed,
        idp.unauthorized,
        idp.rate_limited,
        idp.bad_requests
    );
    let (sent, ok, failed) = tally.read();
    println!(
        "summary: {sent} requests sent, {ok} OK, {failed} failed; \
         {} rejections seen, {} retried; \
         refresh calls: {} at the identity server, {} by the layer; {} rate limited (429)",
        layer.rejections, layer.retries, idp.refresh_calls, layer.refreshes, idp.rate_limited
    );
    if failed > 0 || idp.rate_limited > 0 {
        std::process::exit(1);
    }
}

/// The identity server's refresh endpoint (the library's `cognito` preset)
/// as the layer's token source, printing each refresh as it happens (never
/// the token).
fn printing_refresher(cognito: &CognitoClient, started: Instant) -> impl Refresh {
    let preset = Arc::new(cognito.refresher());
    let count = Arc::new(AtomicU64::new(0));
    refresh_fn(move |ctx: RefreshContext| {
        let preset = Arc::clone(&preset);
        let n = count.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            let reason = ctx.reason();
            let result = preset.refresh(ctx).await;
            match &result {
                Ok(tokens) => println!(
                    "[{}] refresh #{n} ({reason:?}): new token, valid {:?}",
                    since(started),
                    tokens.expires_in().unwrap_or_default()
                ),
                Err(error) => println!(
                    "[{}] refresh #{n} ({reason:?}) failed: {error}",
                    since(started)
                ),
            }
            result
        }
    })
}

/// Sends a POST (echoed back by the API) or a GET every 20 ms until the run
/// is over, and counts the outcomes.
async fn worker(n: usize, client: AuthedClient, url: String, tally: Arc<Tally>, started: Instant) {
    while started.elapsed() < RUN_FOR {
        let i = tally.sent.fetch_add(1, Ordering::SeqCst);
        let order = format!(r#"{{"worker":{n},"order":{i}}}"#);
        let is_post = i % 2 == 0;
        let request = if is_post {
            post(&url, "application/json", full(order.clone()))
        } else {
            get(&url)
        };
        let problem = match send(&client, request).await {
            // A replayed POST body must arrive intact.
            Ok(response) if is_post && response.body() != order.as_bytes() => {
                Some("echoed body differs".to_owned())
            }
            Ok(response) if response.status().is_success() => None,
            Ok(response) => Some(response.status().to_string()),
            Err(error) => Some(error.to_string()),
        };
        match problem {
            None => tally.ok.fetch_add(1, Ordering::SeqCst),
            Some(problem) => {
                eprintln!("[{}] worker {n}: {problem}", since(started));
                tally.failed.fetch_add(1, Ordering::SeqCst)
            }
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Requests sent, answered OK, and failed.
#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
}

impl Tally {
    fn read(&self) -> (u64, u64, u64) {
        let read = |n: &AtomicU64| n.load(Ordering::SeqCst);
        (read(&self.sent), read(&self.ok), read(&self.failed))
    }
}

/// Seconds since the start, for log lines: ` 4.01s`.
fn since(started: Instant) -> String {
    format!("{:5.2}s", started.elapsed().as_secs_f64())
}
