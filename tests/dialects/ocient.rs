//! The `ocient` preset against the seed 003 server: the current access
//! token refreshes itself, so it must be renewed before it expires, which
//! the preset's background refresh does without any traffic.

use std::time::Duration;

use hyper::StatusCode;
use serde_json::json;
use tower_token_refresh::http::HttpRefresher;
use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};

use crate::support::faults::{Failure, InjectFaults};
use crate::support::ocient::OcientServer;
use crate::support::ApiServer;
use crate::{all_ok, bounded, layered, post_json, refresh_client, RefreshClient};

const USER: &str = "jdoe";
const PASSWORD: &str = "ocient-pw";
const DATABASE: &str = "retail_analytics";

fn refresher(server: &OcientServer) -> HttpRefresher<RefreshClient> {
    HttpRefresher::ocient(server.refresh_url(), refresh_client()).database(DATABASE)
}

/// A login closure for `POST /v1/login`.
fn login(server: &OcientServer) -> impl tower_token_refresh::Refresh {
    let url = server.login_url();
    refresh_fn(move |_ctx| {
        let url = url.clone();
        async move {
            let body = json!({"username": USER, "password": PASSWORD, "database": DATABASE});
            let (status, answer) = post_json(&url, body).await;
            if status != 200 {
                return Err(RefreshError::terminal("login refused").with_status(status));
            }
            Ok(TokenSet::new(answer["access_token"].as_str().unwrap())
                .with_expires_in(Duration::from_secs(answer["expires_in"].as_u64().unwrap())))
        }
    })
}

async fn start(lifetime: Duration) -> OcientServer {
    OcientServer::builder()
        .user(USER, PASSWORD)
        .token_lifetime(lifetime)
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_client_keeps_its_sliding_token_alive_in_the_background() {
    bounded(async {
        let lifetime = Duration::from_secs(2);
        let server = start(lifetime).await;
        let api = ApiServer::start(&server).await;
        let (handle, client) =
            layered(TokenRefreshLayer::builder(refresher(&server)).login(login(&server)));
        let url = api.url("/v1/query");
        all_ok(&client, &url, 20).await; // logs in

        // Three lifetimes without a single request: had nobody refreshed,
        // the token could never be refreshed again (it is its own
        // credential).
        tokio::time::sleep(lifetime * 3).await;
        all_ok(&client, &url, 20).await;

        let stats = server.stats();
        assert_eq!(stats.logins, 1, "no second login was needed");
        assert!(stats.refreshed >= 3, "{stats:?}");
        assert_eq!(stats.unauthorized, 0);
        let current = handle.tokens().unwrap();
        assert_eq!(current.extra("username"), Some(USER));
        assert_eq!(current.extra("database"), Some(DATABASE));
        assert_eq!(handle.stats().refresh_failures, 0);
        assert_eq!(api.stats().ok, 40);
    })
    .await;
}

/// A server that revokes the token a refresh presents (which seed 003
/// allows) rejects the requests still in flight with it: each is retried
/// with the new token, and none of those rejections starts a refresh of
/// its own. Requests keep coming throughout, so some are always in flight
/// when a background refresh lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_when_the_presented_token_is_revoked_are_retried() {
    bounded(async {
        let lifetime = Duration::from_secs(2);
        let server = OcientServer::builder()
            .user(USER, PASSWORD)
            .token_lifetime(lifetime)
            .revoke_presented_on_refresh()
            .start()
            .await;
        let api = ApiServer::start(&server).await;
        let (handle, client) =
            layered(TokenRefreshLayer::builder(refresher(&server)).login(login(&server)));
        let url = api.url("/v1/query");
        let started = tokio::time::Instant::now();
        let mut batches = 0;
        while started.elapsed() < lifetime * 3 {
            all_ok(&client, &url, 8).await;
            batches += 1;
        }

        let stats = server.stats();
        assert_eq!(stats.logins, 1, "{stats:?}");
        // Background refreshes at half the lifetime: about 6 in 3 lifetimes.
        assert!(
            (2..=8).contains(&stats.refreshed),
            "one refresh per half-lifetime, none for a rejection: {stats:?}"
        );
        assert_eq!(stats.unauthorized, 0, "{stats:?}");
        assert_eq!(handle.stats().refresh_failures, 0);
        assert_eq!(api.stats().ok, batches * 8);
    })
    .await;
}

/// With no database set on the refresher, a refresh stays in the
/// session's database, kept from the login's answer. Found in review: it
/// sent `{}`, which the endpoint answers by moving the session to
/// `system`.
#[tokio::test]
async fn a_refresh_stays_in_the_sessions_database() {
    bounded(async {
        let server = start(Duration::from_secs(3600)).await;
        let login = json!({"username": USER, "password": PASSWORD, "database": DATABASE});
        let (status, answer) = post_json(&server.login_url(), login).await;
        assert_eq!(status, 200, "{answer}");
        let logged_in = TokenSet::new(answer["access_token"].as_str().unwrap())
            .with_extra("database", answer["database"].as_str().unwrap());
        let refresher = HttpRefresher::ocient(server.refresh_url(), refresh_client());
        let handle = TokenRefreshLayer::builder(refresher)
            .background_refresh(false)
            .initial_tokens(logged_in)
            .build()
            .handle();

        handle.force_refresh().await.unwrap();
        assert_eq!(server.stats().refreshed, 1);
        let current = handle.tokens().unwrap();
        assert_eq!(current.extra("database"), Some(DATABASE));
    })
    .await;
}

#[tokio::test]
async fn errors_carry_reason_sql_state_and_vendor_code() {
    bounded(async {
        let server = start(Duration::from_secs(3600)).await;
        // 401: a token the server never issued.
        let handle = TokenRefreshLayer::builder(refresher(&server))
            .background_refresh(false)
            .initial_tokens(TokenSet::new("never-issued"))
            .build()
            .handle();
        let err = handle.force_refresh().await.unwrap_err();
        assert!(err.is_reauth_required());
        let cause = err.refresh_error().unwrap();
        assert_eq!((cause.status(), cause.code()), (Some(401), Some("28000")));
        assert!(cause.to_string().contains("vendor code: -401"), "{cause}");

        // 429 and 500, injected in the server's own shape.
        let (_, answer) = post_json(
            &server.login_url(),
            json!({"username": USER, "password": PASSWORD}),
        )
        .await;
        let token = answer["access_token"].as_str().unwrap().to_owned();
        for (status, check) in [
            (StatusCode::TOO_MANY_REQUESTS, "rate limited"),
            (StatusCode::INTERNAL_SERVER_ERROR, "transient"),
        ] {
            server.fail_next_refreshes(1, Failure::new(status));
            let handle = TokenRefreshLayer::builder(refresher(&server))
                .background_refresh(false)
                .initial_tokens(TokenSet::new(token.clone()))
                .build()
                .handle();
            let err = handle.force_refresh().await.unwrap_err();
            let cause = err.refresh_error().unwrap();
            let class = if cause.is_rate_limited() {
                "rate limited"
            } else if cause.is_transient() {
                "transient"
            } else {
                "terminal"
            };
            assert_eq!(class, check, "{status}: {cause}");
            assert_eq!(cause.status(), Some(status.as_u16()));
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_past_its_refresh_lifetime_is_replaced_by_one_login() {
    bounded(async {
        let lifetime = Duration::from_secs(1);
        let server = start(lifetime).await;
        let api = ApiServer::start(&server).await;
        let (_, answer) = post_json(
            &server.login_url(),
            json!({"username": USER, "password": PASSWORD}),
        )
        .await;
        let stale = answer["access_token"].as_str().unwrap().to_owned();
        tokio::time::sleep(lifetime + Duration::from_millis(100)).await;

        // The layer starts with a token too old to refresh (a process that
        // slept through its lifetime): the refresh is refused, one login
        // serves every waiting request.
        let (handle, client) = layered(
            TokenRefreshLayer::builder(refresher(&server))
                .login(login(&server))
                .initial_tokens(TokenSet::new(stale).with_expires_in(Duration::ZERO)),
        );
        all_ok(&client, &api.url("/v1/query"), 100).await;

        let stats = server.stats();
        assert_eq!(
            (stats.refresh_calls, stats.unauthorized, stats.logins),
            (1, 1, 2)
        );
        assert_eq!(handle.stats().logins, 1);
    })
    .await;
}
