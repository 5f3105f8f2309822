//! The `dynamosql` preset against the seed 000 server: a JSON envelope, no
//! new refresh token on refresh, `{success: false, error: {message, code,
//! requestId}}` errors.

use std::time::Duration;

use hyper::StatusCode;
use serde_json::json;
use tower_token_refresh::http::{Credential, HttpRefresher};
use tower_token_refresh::{refresh_fn, RefreshError, RefreshWindow, TokenRefreshLayer, TokenSet};

use crate::support::dynamosql::DynamoSqlServer;
use crate::support::faults::{Failure, InjectFaults};
use crate::support::ApiServer;
use crate::{all_ok, bounded, layered, post_json, refresh_client, RefreshClient};

const CLIENT_ID: &str = "analytics";
const CLIENT_SECRET: &str = "dsql-secret";

fn refresher(server: &DynamoSqlServer) -> HttpRefresher<RefreshClient> {
    HttpRefresher::dynamosql(server.refresh_url(), refresh_client())
}

/// A login closure for `POST /v1/auth/token` with the API client's
/// credentials.
fn login(server: &DynamoSqlServer) -> impl tower_token_refresh::Refresh {
    let url = server.token_url();
    refresh_fn(move |_ctx| {
        let url = url.clone();
        async move {
            let body = json!({"clientId": CLIENT_ID, "clientSecret": CLIENT_SECRET});
            let (status, answer) = post_json(&url, body).await;
            if status != 200 {
                return Err(RefreshError::terminal("login refused").with_status(status));
            }
            let data = &answer["data"];
            Ok(TokenSet::new(data["accessToken"].as_str().unwrap())
                .with_refresh_token(data["refreshToken"].as_str().unwrap())
                .with_expires_in(Duration::from_secs(data["expiresIn"].as_u64().unwrap())))
        }
    })
}

async fn start(lifetime: Duration) -> DynamoSqlServer {
    DynamoSqlServer::builder()
        .client(CLIENT_ID, CLIENT_SECRET)
        .token_lifetime(lifetime)
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_closure_then_refreshes_that_keep_the_refresh_token() {
    bounded(async {
        // Long enough that a burst on a loaded machine ends well before the
        // token's window (1.8 s after each refresh).
        let lifetime = Duration::from_secs(2);
        let server = start(lifetime).await;
        let api = ApiServer::start(&server).await;
        // No stale phase: with the default (half the lifetime), a request of
        // a burst still running half a second after its refresh, as on a
        // loaded machine, would start a background refresh of its own. Only
        // the mandatory window (a tenth of the lifetime) is left.
        let window = RefreshWindow::fixed(lifetime / 10);
        // No initial tokens: the first request logs in.
        let (handle, client) = layered(
            TokenRefreshLayer::builder(refresher(&server))
                .login(login(&server))
                .advisory_window(window)
                .mandatory_window(window),
        );
        let url = api.url("/v1/query");

        all_ok(&client, &url, 100).await;
        let first = handle.tokens().unwrap();
        for _ in 0..3 {
            tokio::time::sleep(lifetime + Duration::from_millis(100)).await;
            all_ok(&client, &url, 100).await;
        }

        let stats = server.stats();
        assert_eq!((stats.logins, stats.refreshed), (1, 3));
        let current = handle.tokens().unwrap();
        assert_ne!(current.access_token(), first.access_token());
        assert_eq!(
            current.refresh_token(),
            first.refresh_token(),
            "no new refresh token is issued"
        );
        assert_eq!(current.expires_in(), Some(lifetime));
        assert_eq!((handle.stats().logins, handle.stats().refreshes), (1, 4));
        assert_eq!(api.stats().ok, 400);
    })
    .await;
}

#[tokio::test]
async fn documented_errors_map_to_their_classes_with_message_code_and_request_id() {
    bounded(async {
        let server = start(Duration::from_secs(3600)).await;
        let initial = || {
            let tokens = server.tokens();
            let grant = tokens.new_grant();
            TokenSet::new("unused").with_refresh_token(tokens.issue_refresh_token_in(grant))
        };

        // 400: a body without `refreshToken`.
        let wrong_field = refresher(&server).credential(Credential::field("token"));
        let handle = TokenRefreshLayer::builder(wrong_field)
            .initial_tokens(initial())
            .build()
            .handle();
        let err = handle.force_refresh().await.unwrap_err();
        let cause = err.refresh_error().unwrap();
        assert!(cause.is_terminal());
        assert_eq!(
            (cause.status(), cause.code()),
            (Some(400), Some("BAD_REQUEST"))
        );
        assert!(cause.request_id().is_some_and(|id| !id.is_empty()));

        // 401: an unknown refresh token.
        let handle = TokenRefreshLayer::builder(refresher(&server))
            .initial_tokens(TokenSet::new("a").with_refresh_token("never-issued"))
            .build()
            .handle();
        let err = handle.force_refresh().await.unwrap_err();
        assert!(err.is_reauth_required());
        let cause = err.refresh_error().unwrap();
        assert_eq!(
            (cause.status(), cause.code()),
            (Some(401), Some("UNAUTHORIZED"))
        );
        let text = cause.to_string();
        assert!(text.contains(cause.request_id().unwrap()), "{text}");

        // 429 and 503, injected into the real server's error envelope.
        server.fail_next_refreshes(
            1,
            Failure::new(StatusCode::TOO_MANY_REQUESTS).retry_after("3"),
        );
        let handle = TokenRefreshLayer::builder(refresher(&server))
            .initial_tokens(initial())
            .build()
            .handle();
        let err = handle.force_refresh().await.unwrap_err();
        let cause = err.refresh_error().unwrap();
        assert!(cause.is_rate_limited());
        assert_eq!(cause.retry_after(), Some(Duration::from_secs(3)));
        assert_eq!(cause.code(), Some("TOO_MANY_REQUESTS"));

        // The seed's own 429 ("Too many requests."), which names no wait:
        // rate limited, the wait left to the layer's backoff.
        let limited = DynamoSqlServer::builder()
            .client(CLIENT_ID, CLIENT_SECRET)
            .rate_limit(1, Duration::from_secs(60))
            .start()
            .await;
        let handle = TokenRefreshLayer::builder(refresher(&limited))
            .login(login(&limited))
            .build()
            .handle();
        handle.force_refresh().await.unwrap(); // the login
        handle.force_refresh().await.unwrap(); // the one refresh the limit allows
        let err = handle.force_refresh().await.unwrap_err();
        let cause = err.refresh_error().unwrap();
        assert!(cause.is_rate_limited(), "{err}");
        assert_eq!(cause.retry_after(), None, "{err}");
        assert_eq!(
            (cause.status(), cause.code()),
            (Some(429), Some("TOO_MANY_REQUESTS"))
        );

        server.fail_next_refreshes(1, Failure::new(StatusCode::SERVICE_UNAVAILABLE));
        let handle = TokenRefreshLayer::builder(refresher(&server))
            .initial_tokens(initial())
            .build()
            .handle();
        let err = handle.force_refresh().await.unwrap_err();
        assert!(err.refresh_error().unwrap().is_transient());

        let stats = server.stats();
        assert_eq!(
            (stats.bad_requests, stats.unauthorized, stats.injected),
            (1, 1, 2)
        );
    })
    .await;
}
