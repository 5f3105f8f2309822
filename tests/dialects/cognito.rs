//! The `cognito` preset against the seed 002 server: 5 refreshes a minute
//! per IP, flat answers, `{statusCode, message, error}` errors.

use std::time::{Duration, Instant};

use hyper::StatusCode;
use tower_token_refresh::http::{Credential, HttpRefresher};
use tower_token_refresh::{Backoff, RefreshWindow, TokenHandle, TokenRefreshLayer, TokenSet};

use crate::support::faults::{Failure, InjectFaults};
use crate::support::{
    get, send, ApiServer, AuthedClient, CognitoClient, IdentityServer, DEMO_PASSWORD, DEMO_USER,
};
use crate::{all_ok, bounded, layered, refresh_client, RefreshClient};

async fn login(identity: &IdentityServer) -> TokenSet {
    CognitoClient::new(identity.base_url())
        .login(DEMO_USER, DEMO_PASSWORD)
        .await
        .expect("login")
}

fn refresher(identity: &IdentityServer) -> HttpRefresher<RefreshClient> {
    let url = format!("{}/api/auth/refresh-token", identity.base_url());
    HttpRefresher::cognito(url, refresh_client())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_refreshed_through_the_layer() {
    bounded(async {
        let identity = IdentityServer::builder().start().await;
        let api = ApiServer::start(&identity).await;
        let tokens = login(&identity).await;
        let refresh_token = tokens.refresh_token().cloned().unwrap();
        // The login tokens, with no time left: none may be sent.
        let expired = tokens.clone().with_expires_in(Duration::ZERO);
        let (handle, client) =
            layered(TokenRefreshLayer::builder(refresher(&identity)).initial_tokens(expired));

        all_ok(&client, &api.url("/v1/items"), 50).await;

        let stats = identity.stats();
        assert_eq!((stats.refresh_calls, stats.refreshed), (1, 1));
        let current = handle.tokens().unwrap();
        assert_ne!(current.access_token(), tokens.access_token());
        assert_eq!(
            current.refresh_token(),
            Some(&refresh_token),
            "Cognito never rotates"
        );
        assert_eq!(current.expires_in(), Some(Duration::from_secs(3600)));
        assert_eq!(current.extra("requiresPasswordChange"), Some("false"));
        assert_eq!(api.stats().ok, 50);
    })
    .await;
}

#[tokio::test]
async fn documented_errors_map_to_their_classes_with_the_servers_words() {
    bounded(async {
        let identity = IdentityServer::builder()
            .rate_limit(2, Duration::from_secs(60))
            .start()
            .await;
        let tokens = login(&identity).await;
        let handle = TokenRefreshLayer::builder(refresher(&identity))
            .initial_tokens(tokens.clone())
            .build()
            .handle();

        // 401: a revoked refresh token is terminal.
        identity.tokens().revoke_refresh_tokens();
        let err = handle.force_refresh().await.unwrap_err();
        assert!(err.is_reauth_required(), "{err}");
        let cause = err.refresh_error().unwrap();
        assert_eq!(cause.status(), Some(401));
        assert_eq!(cause.code(), Some("Unauthorized"));
        assert!(
            cause
                .to_string()
                .contains("Invalid or expired refresh token"),
            "{cause}"
        );

        // 400: a request the server finds malformed is terminal, quoted.
        let wrong_field = HttpRefresher::cognito(
            format!("{}/api/auth/refresh-token", identity.base_url()),
            refresh_client(),
        )
        .credential(Credential::field("refresh_token"));
        let handle = TokenRefreshLayer::builder(wrong_field)
            .initial_tokens(login(&identity).await)
            .build()
            .handle();
        let err = handle.force_refresh().await.unwrap_err();
        let cause = err.refresh_error().unwrap();
        assert!(cause.is_terminal());
        assert_eq!(cause.status(), Some(400));
        assert!(
            cause.to_string().contains("refreshToken must be a string"),
            "{cause}"
        );

        // 429: the third refresh in the minute is rate limited.
        let err = handle.force_refresh().await.unwrap_err(); // still terminal: no call
        assert!(err.is_reauth_required());
        let handle = TokenRefreshLayer::builder(refresher(&identity))
            .initial_tokens(login(&identity).await)
            .build()
            .handle();
        let err = handle.force_refresh().await.unwrap_err();
        let cause = err.refresh_error().unwrap();
        assert!(cause.is_rate_limited(), "{cause}");
        assert!(cause.to_string().contains("Too many requests"), "{cause}");
        assert_eq!(cause.code(), Some("Too Many Requests"));
        let stats = identity.stats();
        assert_eq!(
            (
                stats.refresh_calls,
                stats.unauthorized,
                stats.bad_requests,
                stats.rate_limited
            ),
            (3, 1, 1, 1)
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_requests_per_expiry_cause_one_refresh_each_and_no_429() {
    bounded(async {
        // The seed's limit (5 a minute per IP), with short-lived tokens.
        // Long enough that a burst on a loaded machine ends well before the
        // token's window (1.8 s after each refresh).
        let lifetime = Duration::from_secs(2);
        let identity = IdentityServer::builder()
            .token_lifetime(lifetime)
            .rate_limit(5, Duration::from_secs(60))
            .start()
            .await;
        let api = ApiServer::start(&identity).await;
        // No stale phase: with the default (half the lifetime), a request of
        // a burst still running half a second after its refresh, as on a
        // loaded machine, would start a background refresh of its own. Only
        // the mandatory window (a tenth of the lifetime) is left.
        let window = RefreshWindow::fixed(lifetime / 10);
        let (handle, client) = layered(
            TokenRefreshLayer::builder(refresher(&identity))
                .initial_tokens(login(&identity).await)
                .advisory_window(window)
                .mandatory_window(window)
                .min_refresh_interval(Duration::ZERO),
        );
        let url = api.url("/v1/items");

        const EXPIRIES: u64 = 4;
        for expiry in 1..=EXPIRIES {
            // No traffic until the token has expired: then 200 requests
            // arrive at once, and all of them need a new token.
            tokio::time::sleep(lifetime + Duration::from_millis(100)).await;
            assert!(handle
                .status()
                .expires_in()
                .is_some_and(|left| left.is_zero()));
            all_ok(&client, &url, 200).await;
            assert_eq!(identity.stats().refresh_calls, expiry, "expiry {expiry}");
        }

        let stats = identity.stats();
        assert_eq!(stats.rate_limited, 0);
        assert_eq!(stats.refreshed, EXPIRIES);
        assert_eq!(handle.stats().refreshes, EXPIRIES);
        let api = api.stats();
        assert_eq!((api.ok, api.unauthorized), (200 * EXPIRIES, 0));
    })
    .await;
}

/// The seed's server (5 refreshes a minute), its API, and a layer holding
/// fresh tokens from a login.
async fn logged_in_at_the_seeds_limit() -> (IdentityServer, ApiServer, TokenHandle, AuthedClient) {
    let identity = IdentityServer::builder().start().await;
    let api = ApiServer::start(&identity).await;
    let (handle, client) = layered(
        TokenRefreshLayer::builder(refresher(&identity)).initial_tokens(login(&identity).await),
    );
    (identity, api, handle, client)
}

/// The sixth refresh in a minute is not sent: the server counts refused
/// calls too, so a client that learnt of the limit from its `429` would
/// stay refused while it kept calling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_refresh_past_the_limit_is_not_sent_and_the_valid_token_is_kept() {
    bounded(async {
        let (identity, api, handle, client) = logged_in_at_the_seeds_limit().await;
        // Forced refreshes spend the minute's five.
        let before_the_first = Instant::now();
        for _ in 0..5 {
            handle.force_refresh().await.unwrap();
        }
        let valid = handle.tokens().unwrap();
        let err = handle.force_refresh().await.unwrap_err();
        let after_the_sixth = Instant::now();
        let cause = err.refresh_error().unwrap();
        assert!(cause.is_rate_limited(), "{err}");
        // Until the first of the five leaves the minute: it ended after
        // `before_the_first`, and the sixth was refused before
        // `after_the_sixth`, however long the calls took.
        let wait = cause.retry_after().expect("a wait");
        let minute = Duration::from_secs(60);
        let spent = after_the_sixth - before_the_first;
        assert!(
            wait >= minute.saturating_sub(spent) && wait <= minute,
            "{wait:?}, {spent:?} after the first call began"
        );
        let stats = identity.stats();
        assert_eq!((stats.refresh_calls, stats.rate_limited), (5, 0));

        // Requests go on with the still-valid token ...
        all_ok(&client, &api.url("/v1/items"), 100).await;
        assert_eq!(
            handle.tokens().unwrap().access_token(),
            valid.access_token()
        );
        // ... and the endpoint is left alone while the layer waits.
        assert!(handle.force_refresh().await.is_err());
        assert_eq!(identity.stats().refresh_calls, 5);
        assert!(handle
            .status()
            .last_error()
            .is_some_and(|e| e.is_rate_limited()));
    })
    .await;
}

/// Calls this process did not make (another process behind the same IP)
/// spent the limit: the server's `429`, which names no wait, is waited out
/// for the documented window (a minute), with the valid token kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_for_calls_made_elsewhere_is_waited_out_with_the_valid_token() {
    bounded(async {
        let (identity, api, handle, client) = logged_in_at_the_seeds_limit().await;
        let elsewhere = TokenRefreshLayer::builder(refresher(&identity))
            .initial_tokens(login(&identity).await)
            .build()
            .handle();
        for _ in 0..5 {
            elsewhere.force_refresh().await.unwrap();
        }
        let valid = handle.tokens().unwrap();
        let err = handle.force_refresh().await.unwrap_err();
        let cause = err.refresh_error().unwrap();
        assert!(cause.is_rate_limited(), "{err}");
        // The seed's 429 names no wait: its window, a minute.
        assert_eq!(cause.retry_after(), Some(Duration::from_secs(60)));
        assert_eq!(identity.stats().rate_limited, 1);

        all_ok(&client, &api.url("/v1/items"), 100).await;
        assert_eq!(
            handle.tokens().unwrap().access_token(),
            valid.access_token()
        );
        assert!(handle.force_refresh().await.is_err());
        assert_eq!(identity.stats().refresh_calls, 6, "left alone meanwhile");
    })
    .await;
}

/// Found in review: the limit was known only from a `429`. Backoff
/// retries after a run of `502`s came sooner than a minute / 5 apart, and
/// the sixth in the minute was refused, and counted, by the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_after_upstream_failures_stay_within_the_limit() {
    bounded(async {
        // The seed's limit, the builder's default: 5 a minute.
        let identity = IdentityServer::builder().start().await;
        identity.fail_next_refreshes(10, Failure::new(StatusCode::BAD_GATEWAY));
        let api = ApiServer::start(&identity).await;
        let expired = login(&identity).await.with_expires_in(Duration::ZERO);
        let (handle, client) = layered(
            TokenRefreshLayer::builder(refresher(&identity))
                .initial_tokens(expired)
                .backoff(Backoff::new(
                    Duration::from_millis(10),
                    Duration::from_millis(20),
                )),
        );
        let url = api.url("/v1/items");
        for _ in 0..10 {
            let result = send(&client, get(&url)).await;
            assert!(result.is_err(), "no token to send");
            tokio::time::sleep(Duration::from_millis(40)).await;
        }

        let stats = identity.stats();
        assert_eq!((stats.refresh_calls, stats.injected), (5, 5), "{stats:?}");
        assert_eq!(stats.rate_limited, 0);
        let status = handle.status();
        let last = status.last_error().expect("failing");
        assert!(last.is_rate_limited(), "{last}");
        assert_eq!(api.stats().ok, 0);
    })
    .await;
}

/// DESIGN's example, as written there: one hyper-util client refreshes and
/// carries the requests (`HttpRefresher::cognito(url, http_client.clone())`,
/// then the layer around `http_client`), for a body type that can be made
/// from bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_refreshes_and_carries_the_requests() {
    use bytes::Bytes;
    use http_body_util::Full;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use tower::{ServiceBuilder, ServiceExt};

    bounded(async {
        let identity = IdentityServer::builder().start().await;
        let api = ApiServer::start(&identity).await;
        let expired = login(&identity).await.with_expires_in(Duration::ZERO);
        let http_client = Client::builder(TokioExecutor::new()).build_http();

        let url = format!("{}/api/auth/refresh-token", identity.base_url());
        let refresher = HttpRefresher::cognito(url, http_client.clone());
        let layer = TokenRefreshLayer::builder(refresher)
            .initial_tokens(expired)
            .build();
        let handle = layer.handle();
        let client = ServiceBuilder::new().layer(layer).service(http_client);

        for _ in 0..3 {
            let request = hyper::Request::get(api.url("/v1/items"))
                .body(Full::new(Bytes::new()))
                .unwrap();
            let response = client.clone().oneshot(request).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
        }
        assert_eq!(handle.stats().refreshes, 1);
        assert_eq!(identity.stats().refreshed, 1);
        assert_eq!(api.stats().ok, 3);
    })
    .await;
}
