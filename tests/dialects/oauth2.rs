//! The `oauth2` and `client_credentials` presets against an RFC 6749 token
//! endpoint with refresh-token rotation and reuse detection.

use std::time::Duration;

use hyper::StatusCode;
use tower_token_refresh::http::{ClientAuthMethod, HttpRefresher};
use tower_token_refresh::{TokenRefreshLayer, TokenSet};

use crate::support::faults::{Failure, InjectFaults};
use crate::support::oauth2::{OAuth2Server, RegisteredClient};
use crate::support::ApiServer;
use crate::{all_ok, bounded, layered, refresh_client, RefreshClient};

/// Characters that RFC 6749 §2.3.1's form-encoding must protect.
const BASIC_ID: &str = "svc:reporting+1";
const BASIC_SECRET: &str = "s3cr%t:with spaces/&=";

async fn server(lifetime: Duration) -> OAuth2Server {
    OAuth2Server::builder()
        .client(RegisteredClient::secret_basic(BASIC_ID, BASIC_SECRET).scope("read write"))
        .client(RegisteredClient::secret_post("poster", "post-secret").scope("read"))
        .client(RegisteredClient::public("cli").scope("read"))
        .token_lifetime(lifetime)
        .start()
        .await
}

fn basic(server: &OAuth2Server) -> HttpRefresher<RefreshClient> {
    HttpRefresher::oauth2(server.token_url(), refresh_client())
        .client_id(BASIC_ID)
        .client_secret(BASIC_SECRET)
}

/// The `client_credentials` grant for the Basic client, scoped to `read`.
fn client_credentials(server: &OAuth2Server) -> HttpRefresher<RefreshClient> {
    HttpRefresher::client_credentials(server.token_url(), refresh_client())
        .client_id(BASIC_ID)
        .client_secret(BASIC_SECRET)
        .scope("read")
}

fn tokens(access: String, refresh: String) -> TokenSet {
    TokenSet::new(access).with_refresh_token(refresh)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_authentication_method_refreshes_and_adopts_the_rotated_token() {
    bounded(async {
        let server = server(Duration::from_secs(3600)).await;
        let api = ApiServer::start(&server).await;
        let refreshers = [
            ("svc", BASIC_ID, basic(&server)),
            (
                "post",
                "poster",
                HttpRefresher::oauth2(server.token_url(), refresh_client())
                    .client_id("poster")
                    .client_secret("post-secret")
                    .client_auth(ClientAuthMethod::Post),
            ),
            (
                "public",
                "cli",
                HttpRefresher::oauth2(server.token_url(), refresh_client()).client_id("cli"),
            ),
        ];
        for (name, client_id, refresher) in refreshers {
            let granted = server.authorize(client_id, "read");
            let (handle, client) = layered(
                TokenRefreshLayer::builder(refresher.scope("read"))
                    .initial_tokens(tokens(granted.access_token, granted.refresh_token.clone())),
            );
            handle
                .force_refresh()
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let current = handle.tokens().unwrap();
            let rotated = current.refresh_token().unwrap().expose();
            assert_ne!(rotated, granted.refresh_token, "{name}: rotated");
            assert_eq!(current.extra("scope"), Some("read"), "{name}");
            all_ok(&client, &api.url("/v1/reports"), 20).await;
        }
        let stats = server.stats();
        assert_eq!(
            (stats.refreshed, stats.invalid_client, stats.reuse_detected),
            (3, 0, 0)
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_concurrent_requests_across_five_rotations_never_reuse_a_refresh_token() {
    bounded(async {
        let lifetime = Duration::from_secs(1);
        let server = server(lifetime).await;
        let api = ApiServer::start(&server).await;
        let granted = server.authorize(BASIC_ID, "read");
        let (handle, client) = layered(
            TokenRefreshLayer::builder(basic(&server))
                .initial_tokens(tokens(granted.access_token, granted.refresh_token)),
        );
        let url = api.url("/v1/reports");

        // 500 requests spread over five token lifetimes, each in its own
        // task, so refreshes happen while others are in flight: stale-window
        // refreshes, waits at expiry, and rejections all mix.
        let started = tokio::time::Instant::now();
        let tasks: Vec<_> = (0..500u64)
            .map(|i| {
                let client = client.clone();
                let url = url.clone();
                tokio::spawn(async move {
                    tokio::time::sleep_until(started + Duration::from_millis(i * 11)).await;
                    crate::support::send(&client, crate::support::get(&url)).await
                })
            })
            .collect();
        for (i, task) in tasks.into_iter().enumerate() {
            let response = task
                .await
                .unwrap()
                .unwrap_or_else(|e| panic!("request {i}: {e}"));
            assert_eq!(response.status(), 200, "request {i}");
        }

        let stats = server.stats();
        assert_eq!(
            stats.reuse_detected, 0,
            "a spent refresh token was presented"
        );
        assert_eq!(stats.invalid_grant, 0);
        assert!(
            stats.refreshed >= 5,
            "five lifetimes need five rotations: {stats:?}"
        );
        assert_eq!(handle.stats().refresh_successes, stats.refreshed);
        assert_eq!(handle.stats().refresh_failures, 0);
        assert_eq!(api.stats().ok, 500);
    })
    .await;
}

#[tokio::test]
async fn documented_errors_map_to_their_classes_with_code_and_description() {
    bounded(async {
        let server = server(Duration::from_secs(3600)).await;
        let granted = server.authorize(BASIC_ID, "read");
        let start = || tokens(granted.access_token.clone(), granted.refresh_token.clone());

        // 401 invalid_client: a wrong secret.
        let wrong_secret = HttpRefresher::oauth2(server.token_url(), refresh_client())
            .client_id(BASIC_ID)
            .client_secret("wrong");
        let handle = TokenRefreshLayer::builder(wrong_secret)
            .initial_tokens(start())
            .build()
            .handle();
        let err = handle.force_refresh().await.unwrap_err();
        let cause = err.refresh_error().unwrap();
        assert!(cause.is_terminal(), "{cause}");
        assert_eq!(
            (cause.status(), cause.code()),
            (Some(401), Some("invalid_client"))
        );

        // 400 invalid_scope: asking for more than was granted.
        let wide = basic(&server).scope("read write admin");
        let handle = TokenRefreshLayer::builder(wide)
            .initial_tokens(start())
            .build()
            .handle();
        let err = handle.force_refresh().await.unwrap_err();
        let cause = err.refresh_error().unwrap();
        assert!(cause.is_terminal(), "{cause}");
        assert_eq!(
            (cause.status(), cause.code()),
            (Some(400), Some("invalid_scope"))
        );

        // 429 with Retry-After in seconds, then as an HTTP date.
        let handle = TokenRefreshLayer::builder(basic(&server))
            .initial_tokens(start())
            .build()
            .handle();
        server.fail_next_refreshes(
            1,
            Failure::new(StatusCode::TOO_MANY_REQUESTS).retry_after("7"),
        );
        let err = handle.force_refresh().await.unwrap_err();
        let cause = err.refresh_error().unwrap();
        assert!(cause.is_rate_limited());
        assert_eq!(cause.retry_after(), Some(Duration::from_secs(7)));
        assert_eq!(cause.code(), Some("temporarily_unavailable"));

        let in_a_minute =
            httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(60));
        let handle = TokenRefreshLayer::builder(basic(&server))
            .initial_tokens(start())
            .build()
            .handle();
        server.fail_next_refreshes(
            1,
            Failure::new(StatusCode::TOO_MANY_REQUESTS).retry_after(&in_a_minute),
        );
        let err = handle.force_refresh().await.unwrap_err();
        let after = err.refresh_error().unwrap().retry_after().unwrap();
        assert!(
            after > Duration::from_secs(55) && after <= Duration::from_secs(60),
            "{after:?}"
        );

        // 503 and 500: transient.
        for status in [
            StatusCode::SERVICE_UNAVAILABLE,
            StatusCode::INTERNAL_SERVER_ERROR,
        ] {
            let handle = TokenRefreshLayer::builder(basic(&server))
                .initial_tokens(start())
                .build()
                .handle();
            server.fail_next_refreshes(1, Failure::new(status));
            let err = handle.force_refresh().await.unwrap_err();
            let cause = err.refresh_error().unwrap();
            assert!(cause.is_transient(), "{status}: {cause}");
            assert_eq!(cause.status(), Some(status.as_u16()));
        }

        // 400 invalid_grant: the refresh token is spent (reuse after a
        // rotation). Terminal, with the server's description.
        let handle = TokenRefreshLayer::builder(basic(&server))
            .initial_tokens(start())
            .build()
            .handle();
        handle.force_refresh().await.unwrap(); // rotates: `start()`'s token is spent
        let replay = TokenRefreshLayer::builder(basic(&server))
            .initial_tokens(start())
            .build()
            .handle();
        let err = replay.force_refresh().await.unwrap_err();
        assert!(err.is_reauth_required());
        let cause = err.refresh_error().unwrap();
        assert_eq!(
            (cause.status(), cause.code()),
            (Some(400), Some("invalid_grant"))
        );
        assert!(!cause.message().is_empty());
        assert_eq!(server.stats().reuse_detected, 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_family_is_recovered_by_one_client_credentials_login() {
    bounded(async {
        let server = server(Duration::from_secs(3600)).await;
        let api = ApiServer::start(&server).await;
        let granted = server.authorize(BASIC_ID, "read");
        let (handle, client) = layered(
            TokenRefreshLayer::builder(basic(&server))
                .login(client_credentials(&server))
                .initial_tokens(tokens(granted.access_token, granted.refresh_token.clone())),
        );
        // Someone else spends the refresh token and then presents it again:
        // the server revokes the family, access token included.
        let thief = TokenRefreshLayer::builder(basic(&server))
            .initial_tokens(tokens("x".into(), granted.refresh_token.clone()))
            .build()
            .handle();
        thief.force_refresh().await.unwrap();
        let thief_again = TokenRefreshLayer::builder(basic(&server))
            .initial_tokens(tokens("x".into(), granted.refresh_token))
            .build()
            .handle();
        assert!(thief_again.force_refresh().await.is_err());
        assert_eq!(server.stats().reuse_detected, 1);

        // 200 requests: rejected, one refresh (invalid_grant), one login.
        all_ok(&client, &api.url("/v1/reports"), 200).await;
        let stats = handle.stats();
        assert_eq!(
            (stats.refreshes, stats.logins, stats.refresh_failures),
            (1, 1, 0)
        );
        assert_eq!(server.stats().client_credentials, 1);
    })
    .await;
}

/// Initial tokens that cannot be sent and carry no refresh token start the
/// layer as if none were given: a client-credentials source, which needs no
/// refresh token, gets the first token, once, for all requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_credentials_source_replaces_an_unusable_initial_token() {
    bounded(async {
        let server = server(Duration::from_secs(3600)).await;
        let api = ApiServer::start(&server).await;
        let (handle, client) = layered(
            TokenRefreshLayer::builder(client_credentials(&server))
                .initial_tokens(TokenSet::new("bad\r\n")),
        );

        all_ok(&client, &api.url("/v1/reports"), 50).await;
        assert_eq!(server.stats().client_credentials, 1);
        let stats = handle.stats();
        assert_eq!(
            (stats.refreshes, stats.logins, stats.refresh_failures),
            (1, 0, 0)
        );
    })
    .await;
}
