//! The `cognito` preset against the seed 002 server: 5 refreshes a minute
//! per IP, flat answers, `{statusCode, message, error}` errors.

use std::time::Duration;

use tower_token_refresh::http::{Credential, HttpRefresher};
use tower_token_refresh::{TokenRefreshLayer, TokenSet};

use crate::support::{ApiServer, CognitoClient, IdentityServer, DEMO_PASSWORD, DEMO_USER};
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
        let lifetime = Duration::from_secs(1);
        let identity = IdentityServer::builder()
            .token_lifetime(lifetime)
            .rate_limit(5, Duration::from_secs(60))
            .start()
            .await;
        let api = ApiServer::start(&identity).await;
        let (handle, client) = layered(
            TokenRefreshLayer::builder(refresher(&identity))
                .initial_tokens(login(&identity).await)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_limit_the_layer_backs_off_and_keeps_the_valid_token() {
    bounded(async {
        let identity = IdentityServer::builder()
            .rate_limit(5, Duration::from_secs(60))
            .start()
            .await;
        let api = ApiServer::start(&identity).await;
        let (handle, client) = layered(
            TokenRefreshLayer::builder(refresher(&identity)).initial_tokens(login(&identity).await),
        );
        // Forced refreshes spend the minute's five.
        for _ in 0..5 {
            handle.force_refresh().await.unwrap();
        }
        let valid = handle.tokens().unwrap();
        let err = handle.force_refresh().await.unwrap_err();
        let cause = err.refresh_error().unwrap();
        assert!(cause.is_rate_limited(), "{err}");
        // The seed's 429 names no wait: the preset takes the spacing its
        // documented limit allows, a minute / 5.
        assert_eq!(cause.retry_after(), Some(Duration::from_secs(12)));
        assert_eq!(identity.stats().rate_limited, 1);

        // Requests go on with the still-valid token ...
        all_ok(&client, &api.url("/v1/items"), 100).await;
        assert_eq!(
            handle.tokens().unwrap().access_token(),
            valid.access_token()
        );
        // ... and the endpoint is left alone while the layer backs off.
        assert!(handle.force_refresh().await.is_err());
        assert_eq!(identity.stats().refresh_calls, 6);
        assert!(handle
            .status()
            .last_error()
            .is_some_and(|e| e.is_rate_limited()));
    })
    .await;
}
