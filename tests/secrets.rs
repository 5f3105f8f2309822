//! No token and no client secret ever shows in what the crate prints.
//!
//! One full life over loopback, with every `tracing` event at TRACE level
//! captured (from this crate and from everything under it): an RFC 6749
//! token endpoint rotating refresh tokens, an API server, the `oauth2`
//! preset with a Basic-authenticated client and `client_credentials` as
//! the login source. Along the way: requests with and without bodies,
//! forced refreshes, an injected `503` and a `429` with `Retry-After`, a
//! proactive refresh, a revocation answered `401` and retried, a revoked
//! refresh token (`invalid_grant`, recovered by the login), a rotated
//! refresh token presented again (reuse), and a layer without a login
//! source that ends up requiring re-authentication.
//!
//! Then every token the server ever issued, the client secret and the
//! Basic credential are looked for in the captured logs, in the `Display`
//! and `Debug` of every error seen (and their sources), and in the `Debug`
//! of every public type met on the way.

// `pub`: the fixtures are shared by several test binaries, each using a
// subset of them.
pub mod support;

use std::error::Error as StdError;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::StatusCode;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower_token_refresh::http::HttpRefresher;
use tower_token_refresh::{
    refresh_fn, Backoff, BoxError, Error, Refresh, RefreshContext, RefreshWindow,
    TokenRefreshLayer, TokenSet,
};

use support::body::full;
use support::bounded;
use support::faults::{Failure, InjectFaults};
use support::logs::Captured;
use support::oauth2::{OAuth2Server, RegisteredClient};
use support::{authed_client, get, post, send, ApiServer, AuthedClient};

/// Unreserved characters only, so the Basic credential is plain base64 of
/// `id:secret` (RFC 6749 §2.3.1 form-encodes each part first).
const CLIENT_ID: &str = "reporting-svc";

type RefreshClient = Client<HttpConnector, Full<Bytes>>;

/// What the crate printed besides the logs: `Debug` of public values,
/// `Display` and `Debug` of errors and their sources.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<String>>>);

impl Seen {
    fn debug(&self, what: &str, value: &impl Debug) {
        self.push(format!("{what}: {value:?}"));
    }

    fn error(&self, what: &str, error: &(dyn StdError + 'static)) {
        let mut next = Some(error);
        while let Some(error) = next {
            self.push(format!("{what}: {error} / {error:?}"));
            next = error.source();
        }
    }

    fn push(&self, text: String) {
        self.0.lock().unwrap().push(text);
    }

    fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

fn refresh_client() -> RefreshClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// `source`, recording the `Debug` of every context it is called with.
fn recording<R>(source: R, seen: &Seen, what: &'static str) -> impl Refresh
where
    R: Refresh + Clone + Send + Sync + 'static,
{
    let seen = seen.clone();
    refresh_fn(move |ctx: RefreshContext| {
        seen.debug(what, &ctx);
        let source = source.clone();
        async move { source.refresh(ctx).await }
    })
}

/// Sends `GET url`, records an error if there is one, and returns the
/// status (or the error).
async fn get_status(client: &AuthedClient, url: &str, seen: &Seen) -> Result<StatusCode, BoxError> {
    record(send(client, get(url)).await.map(|r| r.status()), seen)
}

async fn post_status(
    client: &AuthedClient,
    url: &str,
    seen: &Seen,
) -> Result<StatusCode, BoxError> {
    let request = post(url, "application/json", full(r#"{"report":"q3"}"#));
    record(send(client, request).await.map(|r| r.status()), seen)
}

fn record<T>(result: Result<T, BoxError>, seen: &Seen) -> Result<T, BoxError> {
    if let Err(error) = &result {
        seen.error("request error", error.as_ref());
    }
    result
}

/// Waits (polling) until `done` holds, at most five seconds.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_or_client_secret_reaches_logs_errors_or_debug_output() {
    let logs = Captured::everything();

    let client_secret = support::tokens::unique("client-secret");
    let basic = STANDARD.encode(format!("{CLIENT_ID}:{client_secret}"));
    let seen = Seen::default();
    let server = OAuth2Server::builder()
        .client(RegisteredClient::secret_basic(CLIENT_ID, &client_secret).scope("read"))
        .start()
        .await;

    bounded(scenario(&server, &client_secret, &seen)).await;

    let issued = server.tokens().issued();
    let logs = logs.text();
    let seen = seen.all();
    // The scenario did what it claims, so the search below means something.
    assert!(issued.len() >= 12, "{} tokens issued", issued.len());
    for expected in [
        "token refresh started",
        "token refreshed",
        "token refresh failed",
        "refresh credential rejected; logging in",
        "invalid_grant",
        "temporarily_unavailable",
        #[cfg(all(feature = "file", feature = "encryption", feature = "redis"))]
        "token store failed",
    ] {
        assert!(
            logs.contains(expected),
            "no {expected:?} in the logs:\n{logs}"
        );
    }
    assert!(seen.len() >= 40, "{} values printed", seen.len());

    let secrets = issued.iter().chain([&client_secret, &basic]);
    for secret in secrets {
        assert!(
            !logs.contains(secret.as_str()),
            "{secret} is in the logs:\n{logs}"
        );
        for printed in &seen {
            assert!(
                !printed.contains(secret.as_str()),
                "{secret} was printed: {printed}"
            );
        }
    }
}

async fn scenario(server: &OAuth2Server, client_secret: &str, seen: &Seen) {
    let api = ApiServer::start(server).await;
    let url = api.url("/v1/reports");
    let refresher = HttpRefresher::oauth2(server.token_url(), refresh_client())
        .client_id(CLIENT_ID)
        .client_secret(client_secret);
    let login = HttpRefresher::client_credentials(server.token_url(), refresh_client())
        .client_id(CLIENT_ID)
        .client_secret(client_secret);
    seen.debug("HttpRefresher", &refresher);
    seen.debug("HttpRefresher", &login);

    let granted = server.authorize(CLIENT_ID, "read");
    let first = TokenSet::new(granted.access_token.clone())
        .with_refresh_token(granted.refresh_token.clone());
    seen.debug("TokenSet", &first);
    seen.debug("Secret", first.access_token());
    seen.push(format!("Secret: {}", first.access_token()));
    let builder = TokenRefreshLayer::builder(recording(refresher.clone(), seen, "RefreshContext"))
        .initial_tokens(first)
        .login(recording(login, seen, "RefreshContext (login)"))
        // Stale one second after each refresh, so a later request
        // refreshes proactively; the tokens live an hour.
        .advisory_window(RefreshWindow::fixed(Duration::from_secs(3599)))
        .backoff(Backoff::new(
            Duration::from_millis(20),
            Duration::from_millis(40),
        ))
        .min_refresh_interval(Duration::ZERO);
    seen.debug("Builder", &builder);
    let layer = builder.build();
    seen.debug("TokenRefreshLayer", &layer);
    let handle = layer.handle();
    let client = authed_client(layer);
    seen.debug("TokenRefresh", &client);
    let snapshot = |what: &str| {
        seen.debug(what, &handle);
        seen.debug("TokenStatus", &handle.status());
        seen.debug("Stats", &handle.stats());
        if let Some(tokens) = handle.tokens() {
            seen.debug("TokenSet", &tokens);
            seen.debug("Secret", tokens.access_token());
        }
    };

    // The initial token, without and with a body.
    assert_eq!(get_status(&client, &url, seen).await.unwrap(), 200);
    assert_eq!(post_status(&client, &url, seen).await.unwrap(), 200);
    snapshot("TokenHandle (initial)");

    // A forced refresh rotates the refresh token.
    handle.force_refresh().await.expect("forced refresh");
    let spent = granted.refresh_token;
    snapshot("TokenHandle (rotated)");
    let bearer = handle.bearer().await.expect("the rotated token");
    seen.debug("Bearer", &bearer);

    // 503, then 429 with Retry-After: errors, and the valid token stays in use.
    server.fail_next_refreshes(1, Failure::new(StatusCode::SERVICE_UNAVAILABLE));
    let error = handle.force_refresh().await.expect_err("503");
    seen.error("Error (503)", &error);
    assert!(
        error.refresh_error().is_some_and(|e| e.is_transient()),
        "{error}"
    );
    assert_eq!(get_status(&client, &url, seen).await.unwrap(), 200);
    tokio::time::sleep(Duration::from_millis(60)).await;
    server.fail_next_refreshes(
        1,
        Failure::new(StatusCode::TOO_MANY_REQUESTS).retry_after("1"),
    );
    let error = handle.force_refresh().await.expect_err("429");
    seen.error("Error (429)", &error);
    assert!(
        error.refresh_error().is_some_and(|e| e.is_rate_limited()),
        "{error}"
    );
    assert_eq!(post_status(&client, &url, seen).await.unwrap(), 200);
    snapshot("TokenHandle (rate limited)");

    // Past Retry-After, and stale: a request starts a proactive refresh.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let before = handle.stats().refresh_successes;
    assert_eq!(get_status(&client, &url, seen).await.unwrap(), 200);
    eventually("a proactive refresh", || {
        handle.stats().refresh_successes > before
    })
    .await;

    // The API revokes the token: 401, one refresh, the request retried.
    api.revoke_current();
    assert_eq!(post_status(&client, &url, seen).await.unwrap(), 200);
    assert_eq!(get_status(&client, &url, seen).await.unwrap(), 200);
    snapshot("TokenHandle (after revocation)");

    // The refresh token is revoked too: invalid_grant, then the login.
    server.tokens().revoke_refresh_tokens();
    api.revoke_current();
    assert_eq!(get_status(&client, &url, seen).await.unwrap(), 200);
    assert!(handle.stats().logins >= 1);
    snapshot("TokenHandle (logged in)");

    // A spent refresh token presented again: reuse, the family revoked.
    let reused = server.authorize(CLIENT_ID, "read");
    let elsewhere = TokenRefreshLayer::builder(refresher.clone())
        .initial_tokens(TokenSet::new("unused").with_refresh_token(reused.refresh_token.clone()))
        .build()
        .handle();
    elsewhere.force_refresh().await.expect("rotated elsewhere");
    handle
        .set_tokens(TokenSet::new(reused.access_token).with_refresh_token(reused.refresh_token))
        .unwrap();
    api.revoke_current();
    assert_eq!(get_status(&client, &url, seen).await.unwrap(), 200);
    assert!(server.stats().reuse_detected >= 1, "{:?}", server.stats());
    snapshot("TokenHandle (after reuse)");

    // Without a login source, a dead refresh token means re-authentication.
    let stranded = TokenRefreshLayer::builder(refresher)
        .initial_tokens(
            TokenSet::new("expired-access")
                .with_refresh_token(spent)
                .with_expires_in(Duration::ZERO),
        )
        .build();
    let stranded_handle = stranded.handle();
    let stranded_client = authed_client(stranded);
    let error = stranded_handle
        .force_refresh()
        .await
        .expect_err("invalid_grant");
    assert!(error.is_reauth_required(), "{error}");
    seen.error("Error (terminal)", &error);
    if let Some(cause) = error.refresh_error() {
        seen.debug("RefreshError", cause);
    }
    let error = get_status(&stranded_client, &url, seen)
        .await
        .expect_err("reauth");
    assert!(error
        .downcast_ref::<Error>()
        .is_some_and(Error::is_reauth_required));
    seen.debug("TokenStatus", &stranded_handle.status());

    #[cfg(all(feature = "file", feature = "encryption", feature = "redis"))]
    stores::scenario(server, client_secret, &url, seen).await;
}

/// Tokens shared through stores: written, adopted, refused when corrupt or
/// sealed with another key, and a Redis that cannot be reached.
#[cfg(all(feature = "file", feature = "encryption", feature = "redis"))]
mod stores {
    use super::*;
    use tower_token_refresh::store::{
        Encrypted, FileStore, MemoryStore, RedisStore, StoreKey, TokenStore,
    };

    /// A layer of the `oauth2` preset, on a new family, sharing `store`.
    fn layer(server: &OAuth2Server, secret: &str, store: impl TokenStore) -> TokenRefreshLayer {
        let granted = server.authorize(CLIENT_ID, "read");
        let refresher = HttpRefresher::oauth2(server.token_url(), refresh_client())
            .client_id(CLIENT_ID)
            .client_secret(secret);
        TokenRefreshLayer::builder(refresher)
            .initial_tokens(
                TokenSet::new(granted.access_token).with_refresh_token(granted.refresh_token),
            )
            .store(store)
            .build()
    }

    pub(super) async fn scenario(server: &OAuth2Server, secret: &str, url: &str, seen: &Seen) {
        let dir = std::env::temp_dir().join(format!("ttr-secrets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokens.json");
        let _ = std::fs::remove_file(&path);
        // A sealed file shared by two layers: one refreshes, one adopts.
        let sealed = Encrypted::new(FileStore::new(&path), StoreKey::from_bytes([5; 32]));
        let sealed = std::sync::Arc::new(sealed);
        let (a, b) = (
            layer(server, secret, sealed.clone()),
            layer(server, secret, sealed.clone()),
        );
        a.handle().force_refresh().await.expect("stored refresh");
        b.handle()
            .force_refresh()
            .await
            .expect("adopted or refreshed");
        let client = authed_client(b.clone());
        assert_eq!(get_status(&client, url, seen).await.unwrap(), 200);
        seen.debug("Encrypted<FileStore>", &sealed);
        seen.debug("Record", &sealed.load().await.unwrap());

        // The same file under another key, then not a token file at all.
        let wrong = Encrypted::new(FileStore::new(&path), StoreKey::from_bytes([6; 32]));
        let error = wrong.load().await.expect_err("another key");
        seen.error("StoreError (key)", &error);
        std::fs::write(&path, b"{\"version\":1,\"payload\":").unwrap();
        let error = FileStore::new(&path).load().await.expect_err("corrupt");
        seen.error("StoreError (corrupt)", &error);
        let corrupt = layer(server, secret, FileStore::new(&path));
        corrupt
            .handle()
            .force_refresh()
            .await
            .expect("refreshed alone");
        assert_eq!(corrupt.handle().stats().store_errors, 1);

        // Redis that nobody listens on: refreshed alone.
        let redis = RedisStore::open("redis://127.0.0.1:1/", "secrets").unwrap();
        seen.debug("RedisStore", &redis);
        let error = redis.load().await.expect_err("nobody listens");
        seen.error("StoreError (redis)", &error);
        let unreachable = layer(server, secret, redis);
        unreachable
            .handle()
            .force_refresh()
            .await
            .expect("refreshed alone");
        assert!(unreachable.handle().stats().store_errors >= 1);

        let memory = MemoryStore::new();
        let shared = layer(server, secret, memory.clone());
        shared.handle().force_refresh().await.unwrap();
        seen.debug("MemoryStore", &memory);
        seen.debug("Record", &memory.load().await.unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
