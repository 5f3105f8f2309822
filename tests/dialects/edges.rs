//! `HttpRefresher` against loopback endpoints that answer at the edges of
//! what the dialects allow: `expires_in` as a string, no `expires_in` but a
//! JWT `exp` (also from a server whose clock is off from the client's), an
//! oversized answer, a redirect, and a plain-http URL to a host that is not
//! loopback.
//!
//! Each endpoint is a real hyper server on `127.0.0.1`, reached through a
//! `hyper_util` client; the layer is driven with `force_refresh`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, LOCATION};
use hyper::{Response, StatusCode};
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tower_token_refresh::http::HttpRefresher;
use tower_token_refresh::{TokenHandle, TokenRefreshLayer, TokenSet};

use crate::support::jwt;
use crate::support::server::{ResBody, Server};
use crate::{bounded, refresh_client};

/// A loopback endpoint answering every request with `answer()`, counting
/// the requests.
async fn endpoint(
    answer: impl Fn() -> Response<ResBody> + Clone + Send + Sync + 'static,
) -> (Server, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let server = Server::start(move |_request, _peer| {
        counted.fetch_add(1, Ordering::SeqCst);
        let response = answer();
        async move { response }
    })
    .await;
    (server, calls)
}

fn json_answer(value: Value) -> Response<ResBody> {
    Response::builder()
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(value.to_string())))
        .unwrap()
}

/// A layer refreshing through `refresher`, holding an old token set.
fn handle_for(refresher: impl tower_token_refresh::Refresh) -> TokenHandle {
    TokenRefreshLayer::builder(refresher)
        .initial_tokens(TokenSet::new("old-access").with_refresh_token("old-refresh"))
        .build()
        .handle()
}

#[tokio::test]
async fn expires_in_as_a_numeric_string_sets_the_lifetime() {
    bounded(async {
        let (server, calls) = endpoint(|| {
            json_answer(json!({"access_token": "a2", "token_type": "Bearer", "expires_in": "1800"}))
        })
        .await;
        let url = format!("{}/oauth/token", server.base_url());
        let handle = handle_for(HttpRefresher::oauth2(url, refresh_client()));
        handle.force_refresh().await.unwrap();
        let tokens = handle.tokens().unwrap();
        assert_eq!(tokens.access_token().expose(), "a2");
        assert_eq!(tokens.expires_in(), Some(Duration::from_secs(1800)));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    })
    .await;
}

/// An unsigned JWT whose `exp` is `lifetime` from now.
fn jwt_expiring_in(lifetime: Duration) -> String {
    jwt::expiring_at(SystemTime::now() + lifetime)
}

/// A Cognito answer carrying `jwt` and no `expiresIn`.
fn cognito_answer_with(jwt: &str) -> Response<ResBody> {
    json_answer(
        json!({"accessToken": jwt, "refreshToken": "old-refresh", "requiresPasswordChange": false}),
    )
}

/// The lifetime a refresh reads from an endpoint answering `answer()`
/// (a Cognito answer without `expiresIn`), checked to be the 600 s its
/// JWT was issued for: whole seconds, less the time the round trip took
/// and the second a `Date` rounds off.
async fn lifetime_read_from(
    answer: impl Fn() -> Response<ResBody> + Clone + Send + Sync + 'static,
) {
    let (server, _) = endpoint(answer).await;
    let url = format!("{}/api/auth/refresh-token", server.base_url());
    let handle = handle_for(HttpRefresher::cognito(url, refresh_client()));
    handle.force_refresh().await.unwrap();
    let lifetime = handle.tokens().unwrap().expires_in().expect("from exp");
    assert!(
        lifetime <= Duration::from_secs(600) && lifetime >= Duration::from_secs(590),
        "{lifetime:?}"
    );
    assert!(handle.status().expires_in().is_some());
}

#[tokio::test]
async fn without_expires_in_the_jwt_exp_sets_the_lifetime() {
    bounded(async {
        let jwt = jwt_expiring_in(Duration::from_secs(600));
        lifetime_read_from(move || cognito_answer_with(&jwt)).await;
    })
    .await;
}

/// An identity server whose clock is an hour behind this client's: its
/// JWT lives 600 s by its own clock, so by the client's it had expired on
/// arrival, and every refresh failed as "already expired". Counted from
/// the answer's `Date`, it lives 600 s (less the second `Date` rounds).
#[tokio::test]
async fn a_jwt_lifetime_counts_from_the_identity_servers_date_not_the_clients_clock() {
    bounded(async {
        lifetime_read_from(|| {
            let their_now = SystemTime::now() - Duration::from_secs(3600);
            let mut answer =
                cognito_answer_with(&jwt::expiring_at(their_now + Duration::from_secs(600)));
            let date = httpdate::fmt_http_date(their_now).parse().unwrap();
            answer.headers_mut().insert(hyper::header::DATE, date);
            answer
        })
        .await;
    })
    .await;
}

#[tokio::test]
async fn an_oversized_answer_is_a_transient_failure_and_the_old_token_stays() {
    bounded(async {
        // 1 MiB of JSON: valid, but far past the 64 KiB cap.
        let padding = "p".repeat(1024 * 1024);
        let (server, calls) = endpoint(move || {
            json_answer(json!({"access_token": "a2", "expires_in": 60, "padding": padding}))
        })
        .await;
        let url = format!("{}/oauth/token", server.base_url());
        let handle = handle_for(HttpRefresher::oauth2(url, refresh_client()));
        let err = handle.force_refresh().await.unwrap_err();
        let refresh = err.refresh_error().expect("a refresh failure");
        assert!(refresh.is_transient(), "{err}");
        assert!(
            refresh.to_string().contains("larger than 65536 bytes"),
            "{err}"
        );
        assert_eq!(
            handle.tokens().unwrap().access_token().expose(),
            "old-access"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    })
    .await;
}

#[tokio::test]
async fn a_redirect_from_the_refresh_endpoint_is_not_followed() {
    bounded(async {
        let (target, target_calls) = endpoint(|| {
            json_answer(
                json!({"access_token": "stolen?", "token_type": "Bearer", "expires_in": 60}),
            )
        })
        .await;
        let location = format!("{}/elsewhere", target.base_url());
        let (server, calls) = endpoint(move || {
            Response::builder()
                .status(StatusCode::TEMPORARY_REDIRECT)
                .header(LOCATION, location.as_str())
                .body(Full::default())
                .unwrap()
        })
        .await;
        let url = format!("{}/oauth/token", server.base_url());
        let handle = handle_for(HttpRefresher::oauth2(url, refresh_client()));
        let err = handle.force_refresh().await.unwrap_err();
        let refresh = err.refresh_error().expect("a refresh failure");
        assert_eq!(refresh.status(), Some(307));
        assert!(
            refresh.to_string().contains("never follow redirects"),
            "{err}"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(
            target_calls.load(Ordering::SeqCst),
            0,
            "the redirect target never saw the refresh token"
        );
    })
    .await;
}

/// A client whose resolver sends every host name to `addr`, so a URL
/// naming a real-looking host reaches a loopback server.
fn client_resolving_to(
    addr: SocketAddr,
) -> impl tower::Service<
    hyper::Request<Full<Bytes>>,
    Response = Response<hyper::body::Incoming>,
    Error = hyper_util::client::legacy::Error,
    Future: Send,
> + Clone
       + Send
       + Sync
       + 'static {
    let resolver = tower::service_fn(move |_name: Name| async move {
        Ok::<_, std::io::Error>(std::iter::once(addr))
    });
    Client::builder(TokioExecutor::new()).build(HttpConnector::new_with_resolver(resolver))
}

#[tokio::test]
async fn a_plain_http_url_to_another_host_is_refused_before_any_connection() {
    bounded(async {
        let (server, calls) = endpoint(|| {
            json_answer(json!({"access_token": "a2", "token_type": "Bearer", "expires_in": 60}))
        })
        .await;
        let addr: SocketAddr = server
            .base_url()
            .trim_start_matches("http://")
            .parse()
            .unwrap();
        let url = format!("http://idp.example.com:{}/oauth/token", addr.port());

        let refused = handle_for(HttpRefresher::oauth2(
            url.as_str(),
            client_resolving_to(addr),
        ));
        let err = refused.force_refresh().await.unwrap_err();
        assert!(
            err.is_reauth_required(),
            "a configuration error is terminal: {err}"
        );
        let refresh = err.refresh_error().expect("the refresher's error");
        assert!(
            refresh
                .to_string()
                .contains("plain http to idp.example.com"),
            "{refresh}"
        );
        assert_eq!(
            calls.load(Ordering::SeqCst),
            0,
            "nothing reached the server"
        );

        // The same URL, explicitly allowed, does reach it.
        let allowed = handle_for(
            HttpRefresher::oauth2(url.as_str(), client_resolving_to(addr))
                .allow_insecure_http(true),
        );
        allowed.force_refresh().await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    })
    .await;
}
