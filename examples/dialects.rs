//! Every refresh dialect against its own loopback server.
//!
//! For each preset this starts a server implementing its document, an API
//! server that accepts only its current tokens, and a hyper-util client
//! wrapped in `TokenRefreshLayer` with the preset as the refresh source;
//! then the server's own counters are printed beside the layer's. For
//! `oauth2`, `dynamosql` and `cognito`, tokens live 1 s, and 50 concurrent
//! requests go out at the start, after each of three expiries and once
//! more after the API revoked the token; `ocient`'s run is below.
//!
//! - `oauth2`: RFC 6749 refresh grant, `client_secret_basic`, a rotated
//!   refresh token on every refresh and reuse detection armed.
//! - `dynamosql`: the DynamoSQL API's JSON envelope; the first token comes
//!   from a login closure.
//! - `cognito`: the Cognito-backed API, limited to 5 refreshes a minute per
//!   IP.
//! - `ocient`: Ocient's token refresh, the access token refreshing itself:
//!   tokens live 2 s, and a burst goes out before and after an idle pause
//!   of 6 s, through which the preset's background refresh keeps the
//!   session alive.
//!
//! Run it with `cargo run --example dialects`.

// `pub`: the example uses only part of the shared fixtures.
#[path = "../tests/support/mod.rs"]
pub mod support;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tower_token_refresh::http::HttpRefresher;
use tower_token_refresh::{
    refresh_fn, BoxError, Refresh, RefreshError, Stats, TokenHandle, TokenRefreshLayer, TokenSet,
};

use support::dynamosql::DynamoSqlServer;
use support::oauth2::{OAuth2Server, RegisteredClient};
use support::ocient::OcientServer;
use support::{authed_client, get, send, ApiServer, AuthedClient, CognitoClient, IdentityServer};

const LIFETIME: Duration = Duration::from_secs(1);
const BURST: usize = 50;
const EXPIRIES: usize = 3;

type RefreshClient = Client<HttpConnector, Full<Bytes>>;

#[tokio::main]
async fn main() {
    let http = || -> RefreshClient { Client::builder(TokioExecutor::new()).build_http() };
    let mut failed = 0;

    // OAuth2 with rotation: every refresh spends the refresh token.
    let server = OAuth2Server::builder()
        .client(RegisteredClient::secret_basic("reporting", "s3cret").scope("read"))
        .token_lifetime(LIFETIME)
        .start()
        .await;
    let granted = server.authorize("reporting", "read");
    let refresher = HttpRefresher::oauth2(server.token_url(), http())
        .client_id("reporting")
        .client_secret("s3cret");
    let initial = TokenSet::new(granted.access_token)
        .with_refresh_token(granted.refresh_token)
        .with_expires_in(LIFETIME);
    let api = ApiServer::start(&server).await;
    let run = drive(
        &api,
        TokenRefreshLayer::builder(refresher).initial_tokens(initial),
    )
    .await;
    let s = server.stats();
    failed += run.report(
        "oauth2",
        &format!(
            "server: {} refreshes, each rotating the refresh token; {} reuse detected",
            s.refreshed, s.reuse_detected
        ),
    );

    // DynamoSQL: no initial tokens; a login closure gets the first.
    let server = DynamoSqlServer::builder()
        .client("analytics", "dsql-secret")
        .token_lifetime(LIFETIME)
        .start()
        .await;
    let refresher = HttpRefresher::dynamosql(server.refresh_url(), http());
    let api = ApiServer::start(&server).await;
    let builder = TokenRefreshLayer::builder(refresher).login(dynamosql_login(server.token_url()));
    let run = drive(&api, builder).await;
    let s = server.stats();
    failed += run.report(
        "dynamosql",
        &format!(
            "server: {} login, {} refreshes (the refresh token never changes)",
            s.logins, s.refreshed
        ),
    );

    // Cognito-style: 5 refreshes a minute per IP; one per expiry fits.
    let server = IdentityServer::builder()
        .token_lifetime(LIFETIME)
        .rate_limit(5, Duration::from_secs(60))
        .start()
        .await;
    let tokens = CognitoClient::new(server.base_url())
        .login(support::DEMO_USER, support::DEMO_PASSWORD)
        .await
        .expect("login");
    let url = format!("{}/api/auth/refresh-token", server.base_url());
    let api = ApiServer::start(&server).await;
    let builder =
        TokenRefreshLayer::builder(HttpRefresher::cognito(url, http())).initial_tokens(tokens);
    let run = drive(&api, builder).await;
    let s = server.stats();
    failed += run.report(
        "cognito",
        &format!(
            "server: {} refresh calls, {} rate limited (429)",
            s.refresh_calls, s.rate_limited
        ),
    );

    // Ocient: the token is its own refresh credential; the preset refreshes
    // it in the background, so an idle pause of three lifetimes is survived.
    let server = OcientServer::builder()
        .user("jdoe", "ocient-pw")
        .token_lifetime(LIFETIME * 2)
        .start()
        .await;
    let refresher =
        HttpRefresher::ocient(server.refresh_url(), http()).database("retail_analytics");
    let api = ApiServer::start(&server).await;
    let builder = TokenRefreshLayer::builder(refresher).login(ocient_login(server.login_url()));
    let layer = builder.build();
    let handle = layer.handle();
    let client = authed_client(layer);
    let mut run = Run::new(handle);
    run.burst(&client, &api).await;
    tokio::time::sleep(LIFETIME * 6).await; // idle
    run.burst(&client, &api).await;
    let s = server.stats();
    let user = run
        .handle
        .tokens()
        .and_then(|t| t.extra("username").map(str::to_owned));
    failed += run.report(
        "ocient",
        &format!(
            "server: {} login, {} refreshes while idle or not; user {}",
            s.logins,
            s.refreshed,
            user.unwrap_or_default()
        ),
    );

    if failed > 0 {
        std::process::exit(1);
    }
}

/// A burst at the start, one after each expiry, then one after the API
/// revoked the token.
async fn drive(api: &ApiServer, builder: tower_token_refresh::Builder) -> Run {
    // A rejected token younger than `min_refresh_interval` (default 5 s) is
    // not refreshed again; these tokens live 1 s.
    let layer = builder.min_refresh_interval(Duration::ZERO).build();
    let mut run = Run::new(layer.handle());
    let client = authed_client(layer);
    for _ in 0..EXPIRIES {
        run.burst(&client, api).await;
        tokio::time::sleep(LIFETIME + Duration::from_millis(50)).await;
    }
    run.burst(&client, api).await;
    api.revoke_current();
    run.burst(&client, api).await;
    run
}

/// What one preset's run saw.
struct Run {
    handle: TokenHandle,
    ok: usize,
    failed: usize,
}

impl Run {
    fn new(handle: TokenHandle) -> Self {
        Self {
            handle,
            ok: 0,
            failed: 0,
        }
    }

    /// `BURST` concurrent GETs.
    async fn burst(&mut self, client: &AuthedClient, api: &ApiServer) {
        let url = api.url("/v1/items");
        let tasks: Vec<_> = (0..BURST)
            .map(|_| {
                let client = client.clone();
                let request = get(&url);
                tokio::spawn(async move { send(&client, request).await })
            })
            .collect();
        for task in tasks {
            match task.await.expect("request task") {
                Ok(response) if response.status().is_success() => self.ok += 1,
                Ok(response) => {
                    eprintln!("  answered {}", response.status());
                    self.failed += 1;
                }
                Err(error) => {
                    eprintln!("  failed: {error}");
                    self.failed += 1;
                }
            }
        }
    }

    /// Prints the run's line and returns how many requests failed.
    fn report(&self, name: &str, server: &str) -> usize {
        let Stats {
            refreshes,
            logins,
            retries,
            ..
        } = self.handle.stats();
        println!(
            "{name:<10} {} OK, {} failed; layer: {refreshes} refreshes, {logins} logins, {retries} retried; {server}",
            self.ok, self.failed
        );
        self.failed
    }
}

/// `tokens` living `expires_in` seconds, if the answer said (a token of
/// unknown lifetime is refreshed when rejected).
fn expiring(tokens: TokenSet, expires_in: &Value) -> TokenSet {
    match expires_in.as_u64() {
        Some(seconds) => tokens.with_expires_in(Duration::from_secs(seconds)),
        None => tokens,
    }
}

/// A login answered `status`: a rate limit or an outage passes, so the
/// login is tried again later; any other refusal is for good
/// (re-authentication required). A sketch of the layer's own rules for
/// refresh answers, which also pass on `421`, `425` and `3xx` and read
/// `Retry-After`.
fn login_refused(status: u16) -> RefreshError {
    let error = match status {
        429 => RefreshError::rate_limited(None),
        408 | 500..=599 => RefreshError::transient("login endpoint unavailable"),
        _ => RefreshError::terminal("login refused"),
    };
    error.with_status(status)
}

/// `POST url` with a JSON body; the answer's status and JSON.
async fn post_json(url: &str, body: Value) -> Result<(u16, Value), RefreshError> {
    let client: RefreshClient = Client::builder(TokioExecutor::new()).build_http();
    let request = hyper::Request::post(url)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("valid request");
    let unreachable =
        |e: BoxError| RefreshError::transient("login endpoint unreachable").with_source(e);
    let response = client
        .request(request)
        .await
        .map_err(|e| unreachable(e.into()))?;
    let status = response.status().as_u16();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| unreachable(e.into()))?
        .to_bytes();
    let json = serde_json::from_slice(&bytes)
        .map_err(|_| RefreshError::transient("login answer is not JSON"))?;
    Ok((status, json))
}

/// DynamoSQL's `POST /v1/auth/token` as a login source.
fn dynamosql_login(url: String) -> impl Refresh {
    refresh_fn(move |_ctx| {
        let url = url.clone();
        async move {
            let body = json!({"clientId": "analytics", "clientSecret": "dsql-secret"});
            let (status, answer) = post_json(&url, body).await?;
            let data = &answer["data"];
            match (
                status,
                data["accessToken"].as_str(),
                data["refreshToken"].as_str(),
            ) {
                (200, Some(access), Some(refresh)) => Ok(expiring(
                    TokenSet::new(access).with_refresh_token(refresh),
                    &data["expiresIn"],
                )),
                _ => Err(login_refused(status)),
            }
        }
    })
}

/// Ocient's `POST /v1/login` as a login source.
fn ocient_login(url: String) -> impl Refresh {
    refresh_fn(move |_ctx| {
        let url = url.clone();
        async move {
            let body = json!({"username": "jdoe", "password": "ocient-pw", "database": "retail_analytics"});
            let (status, answer) = post_json(&url, body).await?;
            match (status, answer["access_token"].as_str()) {
                (200, Some(access)) => Ok(expiring(TokenSet::new(access), &answer["expires_in"])),
                _ => Err(login_refused(status)),
            }
        }
    })
}
