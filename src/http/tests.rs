//! `HttpRefresher` against in-process stand-in servers: transport rules,
//! body cap, redirects, client errors, and login recovery through the
//! layer. The same behaviours are proven over loopback in
//! `tests/dialects/`.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use super::*;
use crate::store::TokenStore as _;
use crate::{RefreshReason, TokenRefreshLayer};

type Answer = Response<Full<Bytes>>;

/// A stand-in endpoint answering `answer()` and counting its calls.
fn endpoint(
    answer: impl Fn() -> Answer + Clone + Send + Sync + 'static,
) -> (
    impl Service<Request<Full<Bytes>>, Response = Answer, Error = Infallible, Future: Send>
        + Clone
        + Send
        + Sync
        + 'static,
    Arc<AtomicUsize>,
) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let service = tower::service_fn(move |_request: Request<Full<Bytes>>| {
        counted.fetch_add(1, Ordering::SeqCst);
        let response = answer();
        async move { Ok::<_, Infallible>(response) }
    });
    (service, calls)
}

/// The request bodies a [`recording_endpoint`] received.
type Received = Arc<std::sync::Mutex<Vec<String>>>;

/// A stand-in endpoint recording each request's body and answering its
/// `n`th call (from 1) with `answer(n)`.
fn recording_endpoint(
    answer: impl Fn(usize) -> Answer + Clone + Send + Sync + 'static,
) -> (
    impl Service<Request<Full<Bytes>>, Response = Answer, Error = Infallible, Future: Send>
        + Clone
        + Send
        + Sync
        + 'static,
    Received,
) {
    let received = Received::default();
    let record = Arc::clone(&received);
    let service = tower::service_fn(move |request: Request<Full<Bytes>>| {
        let (record, answer) = (Arc::clone(&record), answer.clone());
        async move {
            let body = request.into_body().collect().await.unwrap().to_bytes();
            let n = {
                let mut received = record.lock().unwrap();
                received.push(String::from_utf8(body.to_vec()).unwrap());
                received.len()
            };
            Ok::<_, Infallible>(answer(n))
        }
    });
    (service, received)
}

fn json(status: StatusCode, body: &str) -> Answer {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::from(body.to_owned()))
        .unwrap()
}

fn ok_tokens() -> Answer {
    json(
        StatusCode::OK,
        r#"{"access_token":"new","token_type":"Bearer","expires_in":3600}"#,
    )
}

/// Seed 002's answer to a sixth refresh in a minute: no `Retry-After`.
fn cognito_too_many() -> Answer {
    json(
        StatusCode::TOO_MANY_REQUESTS,
        r#"{"statusCode":429,"message":"Too many requests","error":"Too Many Requests"}"#,
    )
}

const COGNITO_URL: &str = "https://api.example.com/api/auth/refresh-token";

fn ctx() -> RefreshContext {
    let tokens = TokenSet::new("old-access").with_refresh_token("old-refresh");
    RefreshContext::new(RefreshReason::Forced, Some(Arc::new(tokens)))
}

/// Found in review: a failure answer whose body stalled after its head
/// ran into the refresh timeout, a transient failure: a 429 lost its
/// `Retry-After`, and a 400 `invalid_grant` was retried for ever. The
/// body is waited for a second at most; the head decides the class.
#[tokio::test(start_paused = true)]
async fn a_failure_answer_whose_body_stalls_keeps_its_status_class() {
    use crate::test_support::body::TestBody;
    let answers = [
        (StatusCode::TOO_MANY_REQUESTS, Some("600")),
        (StatusCode::BAD_REQUEST, None),
    ];
    for (status, retry_after) in answers {
        // Kept open: the body sends half of itself, then nothing more.
        let (feed, body) = TestBody::channel();
        feed.data(r#"{"error":"invalid_gr"#);
        let mut answer = Response::builder().status(status);
        if let Some(seconds) = retry_after {
            answer = answer.header("retry-after", seconds);
        }
        let answer = Arc::new(std::sync::Mutex::new(Some(answer.body(body).unwrap())));
        let idp = tower::service_fn(move |_request: Request<Full<Bytes>>| {
            let answer = answer.lock().unwrap().take().expect("one call");
            async move { Ok::<_, Infallible>(answer) }
        });
        let refresher = HttpRefresher::oauth2("https://idp.example.com/token", idp);
        let started = tokio::time::Instant::now();
        // Bounded on the paused clock, so that a regression fails rather
        // than hangs.
        let refreshed = tokio::time::timeout(Duration::from_secs(60), refresher.refresh(ctx()));
        let err = refreshed
            .await
            .expect("not waiting for the body")
            .unwrap_err();
        assert_eq!(started.elapsed(), FAILURE_BODY_WAIT, "{status}");
        match retry_after {
            Some(_) => assert_eq!(err.retry_after(), Some(Duration::from_secs(600)), "{err}"),
            None => assert!(err.is_terminal(), "{err}"),
        }
        drop(feed);
    }
}

/// Found in review: an error answer past the body limit was a transient
/// failure whatever its status, so a revoked refresh token (400
/// `invalid_grant`) was retried for ever and a 429 lost its `Retry-After`.
#[tokio::test]
async fn an_error_answer_past_the_body_limit_keeps_its_status_class() {
    let padded = |status: StatusCode| {
        let body = format!(
            r#"{{"error":"invalid_grant","pad":"{}"}}"#,
            "x".repeat(70_000)
        );
        let mut answer = json(status, &body);
        answer
            .headers_mut()
            .insert("retry-after", http::HeaderValue::from_static("12"));
        answer
    };
    let (idp, _) = endpoint(move || padded(StatusCode::BAD_REQUEST));
    let refresher = HttpRefresher::oauth2("https://idp.example.com/token", idp);
    let err = refresher.refresh(ctx()).await.unwrap_err();
    assert!(err.is_terminal(), "{err}");

    let (idp, _) = endpoint(move || padded(StatusCode::TOO_MANY_REQUESTS));
    let refresher = HttpRefresher::oauth2("https://idp.example.com/token", idp);
    let err = refresher.refresh(ctx()).await.unwrap_err();
    assert_eq!(err.retry_after(), Some(Duration::from_secs(12)), "{err}");
}

/// Found in review: a `200` that carried no tokens but said why (an
/// envelope's `success: false` beside its error, an Ocient `status`) kept
/// only "undecodable". What it says follows now, with any token, sent or
/// in the answer itself, redacted.
#[tokio::test]
async fn a_success_without_tokens_keeps_what_the_answer_says() {
    let (idp, _) = endpoint(|| {
        json(
            StatusCode::OK,
            r#"{"success":false,"error":{"message":"Refresh token old-refresh expired","code":"TOKEN_EXPIRED","requestId":"req-9"}}"#,
        )
    });
    let refresher = HttpRefresher::dynamosql("https://api.example.com/v1/auth/refresh", idp);
    let err = refresher.refresh(ctx()).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    let message = err.message();
    assert!(message.contains("`success` is not true"), "{message}");
    assert!(
        message.contains("says: Refresh token [redacted] expired"),
        "{message}"
    );
    assert_eq!(
        (err.code(), err.request_id()),
        (Some("TOKEN_EXPIRED"), Some("req-9"))
    );

    // A token in the answer, refused for its lifetime, quoted in its status.
    let (idp, _) = endpoint(|| {
        json(
            StatusCode::OK,
            r#"{"access_token":"new-access","expires_in":-5,"status":{"reason":"new-access issued","sql_state":"00000","vendor_code":0}}"#,
        )
    });
    let refresher = HttpRefresher::ocient("https://sql.example.com/v1/token_refresh", idp);
    let err = refresher.refresh(ctx()).await.unwrap_err();
    let shown = err.to_string();
    assert!(shown.contains("says: [redacted] issued"), "{shown}");
    assert!(!shown.contains("new-access"), "{shown}");

    // An Ocient `200` with no token and a `sql_state` other than `00000`
    // (the seed documents only success): transient, as any undecodable
    // answer, with its status quoted and its `sql_state` as the code.
    let (idp, _) = endpoint(|| {
        json(
            StatusCode::OK,
            r#"{"status":{"reason":"Session has been terminated","sql_state":"08006","vendor_code":-2011}}"#,
        )
    });
    let refresher = HttpRefresher::ocient("https://sql.example.com/v1/token_refresh", idp);
    let err = refresher.refresh(ctx()).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert_eq!(err.status(), Some(200));
    assert_eq!(err.code(), Some("08006"));
    let message = err.message();
    assert!(message.contains("no `access_token` string"), "{message}");
    assert!(
        message.contains("says: Session has been terminated (vendor code: -2011)"),
        "{message}"
    );

    // A message given as a list, in an answer that says it failed: its
    // items are what it says, not other strings to redact from it.
    let (idp, _) = endpoint(|| {
        json(
            StatusCode::OK,
            r#"{"success":false,"error":{"message":["session expired","sign in again"]}}"#,
        )
    });
    let refresher = HttpRefresher::dynamosql("https://api.example.com/v1/auth/refresh", idp);
    let message = refresher
        .refresh(ctx())
        .await
        .unwrap_err()
        .message()
        .to_owned();
    assert!(
        message.ends_with("says: session expired; sign in again"),
        "{message}"
    );

    // A token under a name the dialect does not read (camel case, for a
    // dialect reading `access_token`), quoted in the message.
    let (idp, _) = endpoint(|| {
        json(
            StatusCode::OK,
            r#"{"accessToken":"camel-token","id_token":"id-token-value","message":"issued camel-token and id-token-value"}"#,
        )
    });
    let refresher = HttpRefresher::custom("https://api.example.com/refresh", idp);
    let shown = refresher.refresh(ctx()).await.unwrap_err().to_string();
    assert!(
        shown.contains("says: issued [redacted] and [redacted]"),
        "{shown}"
    );
}

/// Found in review: a token of another kind than Bearer is refused for
/// good, but the answer rotated the refresh token. The new one was
/// dropped with the answer, and a fleet's store kept the spent one for the
/// next process to present. It is kept and stored, as a refused answer's
/// is.
#[tokio::test]
async fn a_token_of_another_kind_keeps_its_rotated_refresh_token_for_the_fleet() {
    let (idp, calls) = endpoint(|| {
        json(
            StatusCode::OK,
            r#"{"access_token":"a2","token_type":"DPoP","expires_in":60,"refresh_token":"r2"}"#,
        )
    });
    let refresher = HttpRefresher::oauth2("https://idp.example.com/token", idp).client_id("app");
    let store = crate::store::MemoryStore::new();
    let layer = TokenRefreshLayer::builder(refresher)
        .store(store.clone())
        .initial_tokens(TokenSet::new("a1").with_refresh_token("r1"))
        .build();
    let error = layer.handle().force_refresh().await.unwrap_err();
    assert!(error.refresh_error().unwrap().is_terminal(), "{error}");
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    crate::test_support::settle().await; // an offer runs on its own task
    let record = store.load().await.unwrap().expect("a record stored");
    let stored = crate::store::decode(record.payload(), std::time::SystemTime::now()).unwrap();
    let kept = stored.tokens.refresh_token().map(|r| r.expose().to_owned());
    assert_eq!(
        kept.as_deref(),
        Some("r2"),
        "the rotated refresh token is stored"
    );
}

/// Found in review: every string of an unusable success answer counts as
/// a secret to look for in what is quoted, and an answer of hundreds held
/// a worker thread for seconds. Past 64 of them, nothing of the answer is
/// quoted (no token answer has that many); at 64, it still is.
#[tokio::test]
async fn a_success_without_tokens_but_with_very_many_strings_is_not_quoted() {
    for (strings, quoted) in [(64, true), (65, false)] {
        let extra: Vec<String> = (0..strings).map(|i| format!("\"s{i}\"")).collect();
        let body = format!(
            r#"{{"success":false,"error":{{"message":"refused","code":"NOPE"}},"x":[{}]}}"#,
            extra.join(",")
        );
        let (idp, _) = endpoint(move || json(StatusCode::OK, &body));
        let refresher = HttpRefresher::dynamosql("https://api.example.com/v1/auth/refresh", idp);
        let err = refresher.refresh(ctx()).await.unwrap_err();
        assert!(err.is_transient(), "{err}");
        let message = err.message();
        assert!(message.contains("`success` is not true"), "{message}");
        assert_eq!(
            message.contains("says: refused"),
            quoted,
            "{strings}: {message}"
        );
        assert_eq!(err.code() == Some("NOPE"), quoted, "{strings}: {err:?}");
    }
}

/// A `Retry-After` date counts from the answer's `Date`, on the server's
/// clock: an hour ahead of this client's, its "two minutes from now" read
/// as an hour and two minutes (cut to the hour the layer waits at most).
#[tokio::test]
async fn a_retry_after_date_counts_from_the_answers_date() {
    let (idp, _) = endpoint(|| {
        let their_now = std::time::SystemTime::now() + Duration::from_secs(3600);
        let mut answer = cognito_too_many();
        let headers = answer.headers_mut();
        let date = |at| http::HeaderValue::try_from(httpdate::fmt_http_date(at)).unwrap();
        headers.insert(http::header::DATE, date(their_now));
        headers.insert("retry-after", date(their_now + Duration::from_secs(120)));
        answer
    });
    let refresher = HttpRefresher::cognito(COGNITO_URL, idp);
    let err = refresher.refresh(ctx()).await.unwrap_err();
    assert_eq!(err.retry_after(), Some(Duration::from_secs(120)), "{err}");
}

/// A `503` may come without a `Date` (RFC 9110 §6.6.1 has one only on
/// `2xx` to `4xx` answers): its `Retry-After` date counts from this
/// client's clock, and, as for delay-seconds, no refresh call is made
/// before it (RFC 9110 §10.2.3: how long the service expects to be
/// unavailable).
#[tokio::test]
async fn a_503_retry_after_date_without_a_date_counts_from_the_clients_clock() {
    let (idp, _) = endpoint(|| {
        let at = std::time::SystemTime::now() + Duration::from_secs(300);
        let mut answer = json(
            StatusCode::SERVICE_UNAVAILABLE,
            r#"{"error":"temporarily_unavailable"}"#,
        );
        let retry_after = http::HeaderValue::try_from(httpdate::fmt_http_date(at)).unwrap();
        answer.headers_mut().insert("retry-after", retry_after);
        answer
    });
    let refresher = HttpRefresher::oauth2("https://idp.example.com/token", idp);
    let err = refresher.refresh(ctx()).await.unwrap_err();
    assert!(err.is_rate_limited(), "{err}");
    // Whole seconds on the wire, and a moment passes before it is read.
    let wait = err.retry_after().expect("the wait the date names");
    assert!(
        (Duration::from_secs(298)..=Duration::from_secs(300)).contains(&wait),
        "{wait:?}"
    );
}

/// Found in review: `rate_limit_wait(Duration::ZERO)`, documented as
/// leaving the backoff alone to decide, made errors say "rate limited for
/// 0s" and report a zero wait as if the server had named one.
#[tokio::test]
async fn a_zero_rate_limit_wait_names_no_wait() {
    let (idp, _) = endpoint(cognito_too_many);
    let refresher = HttpRefresher::cognito(COGNITO_URL, idp);
    let err = refresher.refresh(ctx()).await.unwrap_err();
    assert_eq!(err.retry_after(), Some(Duration::from_secs(60)));

    let (idp, _) = endpoint(cognito_too_many);
    let refresher = HttpRefresher::cognito(COGNITO_URL, idp).rate_limit_wait(Duration::ZERO);
    let err = refresher.refresh(ctx()).await.unwrap_err();
    assert!(err.is_rate_limited(), "{err}");
    assert_eq!(err.retry_after(), None, "{err}");
    assert!(!err.to_string().contains("0s"), "{err}");
}

/// Seed 002's limit, end to end through the layer: after a `429` that
/// names no wait, the next call to the cognito endpoint comes a minute
/// later (the seed's window), not after the backoff (1 s at first).
#[tokio::test(start_paused = true)]
async fn after_a_cognito_429_the_next_call_comes_a_minute_later() {
    let answered = Arc::new(AtomicUsize::new(0));
    let (idp, calls) = endpoint(move || {
        if answered.fetch_add(1, Ordering::SeqCst) == 0 {
            cognito_too_many()
        } else {
            json(
                StatusCode::OK,
                r#"{"accessToken":"new","refreshToken":"r2","expiresIn":3600}"#,
            )
        }
    });
    let refresher = HttpRefresher::cognito(COGNITO_URL, idp);
    let layer = TokenRefreshLayer::builder(refresher)
        .initial_tokens(TokenSet::new("old").with_refresh_token("r1"))
        .build();
    let handle = layer.handle();

    let err = handle.force_refresh().await.unwrap_err();
    assert!(err.refresh_error().unwrap().is_rate_limited(), "{err}");
    tokio::time::advance(Duration::from_millis(59_900)).await;
    assert!(handle.force_refresh().await.is_err());
    assert_eq!(calls.load(Ordering::SeqCst), 1, "no call inside the minute");

    tokio::time::advance(Duration::from_millis(100)).await;
    handle.force_refresh().await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(handle.tokens().unwrap().access_token().expose(), "new");
}

/// Found in review: a bearer credential with Basic client authentication
/// sent the bearer header alone, and the client was not authenticated at
/// all. It is a configuration error now, named before anything is sent.
#[tokio::test]
async fn a_bearer_credential_and_basic_client_auth_cannot_share_the_header() {
    let url = "https://idp.example.com/token";
    let (idp, calls) = endpoint(ok_tokens);
    let both = HttpRefresher::custom(url, idp.clone())
        .credential(Credential::bearer_header())
        .client_id("app")
        .client_secret("client-secret-value");
    let err = both.refresh(ctx()).await.unwrap_err();
    assert!(err.is_terminal(), "{err}");
    assert!(err.to_string().contains("ClientAuthMethod::Post"), "{err}");
    assert_eq!(calls.load(Ordering::SeqCst), 0, "nothing was sent");

    let in_the_body = both.client_auth(ClientAuthMethod::Post);
    let tokens = in_the_body.refresh(ctx()).await.unwrap();
    assert_eq!(tokens.access_token().expose(), "new");
}

/// Found in review: a client secret without a client id went out as Basic
/// `:secret`, authenticating nobody.
#[tokio::test]
async fn a_client_secret_without_a_client_id_is_a_named_error() {
    let (idp, calls) = endpoint(ok_tokens);
    let refresher = HttpRefresher::oauth2("https://idp.example.com/token", idp)
        .client_secret("client-secret-value");
    let err = refresher.refresh(ctx()).await.unwrap_err();
    assert!(err.is_terminal(), "{err}");
    assert!(err.to_string().contains("without a client id"), "{err}");
    assert_eq!(calls.load(Ordering::SeqCst), 0, "nothing was sent");
}

/// Found in review: a client authentication method set with no client id
/// sent an empty `client_id`.
#[tokio::test]
async fn a_client_auth_method_alone_names_no_client() {
    let (idp, sent) = recording_endpoint(|_| ok_tokens());
    let refresher = HttpRefresher::oauth2("https://idp.example.com/token", idp)
        .client_auth(ClientAuthMethod::Post);
    refresher.refresh(ctx()).await.unwrap();
    let sent = sent.lock().unwrap();
    assert_eq!(
        sent[0],
        "grant_type=refresh_token&refresh_token=old-refresh"
    );
}

/// Found in review: a fixed field named like one the refresh sets itself
/// replaced it in a JSON body (the refresh token, here) and went out twice
/// in a form. It is a named error now.
#[tokio::test]
async fn a_fixed_field_cannot_take_the_name_of_one_the_refresh_sets() {
    let url = "https://idp.example.com/token";
    let (idp, calls) = endpoint(ok_tokens);
    for refresher in [
        HttpRefresher::dynamosql(url, idp.clone()).field("refreshToken", "x"),
        HttpRefresher::oauth2(url, idp.clone())
            .client_id("app")
            .client_auth(ClientAuthMethod::Post)
            .field("client_id", "other"),
        HttpRefresher::oauth2(url, idp.clone()).field("grant_type", "password"),
        HttpRefresher::dynamosql(url, idp.clone()).secret_field("refreshToken", "x"),
    ] {
        let err = refresher.refresh(ctx()).await.unwrap_err();
        assert!(err.is_terminal(), "{err}");
        assert!(err.to_string().contains("the fixed body field"), "{err}");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 0, "nothing was sent");
    let audience = HttpRefresher::oauth2(url, idp).field("audience", "api");
    assert!(audience.refresh(ctx()).await.is_ok());
}

/// A field and a secret field of one name replace each other, as two
/// fields do: the body has the last one set, once.
#[tokio::test]
async fn a_secret_field_and_a_field_of_one_name_replace_each_other() {
    let (idp, sent) = recording_endpoint(|_| ok_tokens());
    let url = "https://idp.example.com/token";
    let secret_last = HttpRefresher::oauth2(url, idp.clone())
        .field("api_key", "plain")
        .secret_field("api_key", "secret");
    secret_last.refresh(ctx()).await.unwrap();
    let plain_last = HttpRefresher::oauth2(url, idp)
        .secret_field("api_key", "secret")
        .field("api_key", "plain");
    plain_last.refresh(ctx()).await.unwrap();
    let sent = sent.lock().unwrap();
    assert!(sent[0].ends_with("&api_key=secret"), "{}", sent[0]);
    assert!(sent[1].ends_with("&api_key=plain"), "{}", sent[1]);
    assert!(sent.iter().all(|body| body.matches("api_key").count() == 1));
}

#[tokio::test]
async fn plain_http_is_refused_except_to_loopback_or_when_allowed() {
    let (idp, calls) = endpoint(ok_tokens);
    let refused = HttpRefresher::oauth2("http://idp.example.com/token", idp.clone());
    let err = refused.refresh(ctx()).await.unwrap_err();
    assert!(err.is_terminal());
    assert!(
        err.to_string().contains("plain http to idp.example.com"),
        "{err}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 0, "nothing was sent");

    for url in [
        "http://127.0.0.1:9/token",
        "http://localhost/token",
        "http://[::1]:8/token",
    ] {
        let loopback = HttpRefresher::oauth2(url, idp.clone());
        assert!(loopback.refresh(ctx()).await.is_ok(), "{url}");
    }
    let allowed = HttpRefresher::oauth2("http://idp.example.com/token", idp.clone())
        .allow_insecure_http(true);
    assert!(allowed.refresh(ctx()).await.is_ok());
    assert_eq!(calls.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn bad_urls_are_terminal_errors_naming_the_problem() {
    let (idp, calls) = endpoint(ok_tokens);
    for (url, expected) in [
        ("not a url", "the refresh URL is invalid"),
        ("/relative/token", "no host"),
        ("ftp://idp.example.com/token", "must start with https://"),
    ] {
        let err = HttpRefresher::oauth2(url, idp.clone())
            .refresh(ctx())
            .await
            .unwrap_err();
        assert!(err.is_terminal(), "{url}");
        assert!(err.to_string().contains(expected), "{url}: {err}");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_redirect_is_reported_and_never_followed() {
    let (idp, calls) = endpoint(|| {
        Response::builder()
            .status(StatusCode::FOUND)
            .header("location", "https://elsewhere.example.com/token")
            .body(Full::default())
            .unwrap()
    });
    let err = HttpRefresher::oauth2("https://idp.example.com/token", idp)
        .refresh(ctx())
        .await
        .unwrap_err();
    assert!(err.is_transient());
    assert_eq!(err.status(), Some(302));
    assert!(err.to_string().contains("never follow redirects"), "{err}");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "only the first URL was called"
    );
}

#[tokio::test]
async fn an_answer_over_the_body_limit_is_transient_and_not_read_further() {
    let padding = "x".repeat(DEFAULT_BODY_LIMIT);
    let big = format!(r#"{{"access_token":"new","padding":"{padding}"}}"#);
    let (idp, _) = endpoint(move || json(StatusCode::OK, &big));
    let err = HttpRefresher::oauth2("https://idp.example.com/token", idp.clone())
        .refresh(ctx())
        .await
        .unwrap_err();
    assert!(err.is_transient());
    assert!(err.to_string().contains("larger than 65536 bytes"), "{err}");
    // A raised limit reads it.
    let tokens = HttpRefresher::oauth2("https://idp.example.com/token", idp)
        .body_limit(2 * DEFAULT_BODY_LIMIT)
        .refresh(ctx())
        .await
        .unwrap();
    assert_eq!(tokens.access_token().expose(), "new");
}

#[tokio::test]
async fn an_endless_streamed_answer_stops_at_the_limit() {
    // No content length: the limit must hold while streaming.
    let endless = tower::service_fn(|_request: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(Response::new(Endless(Bytes::from(vec![b' '; 1024]))))
    });
    let err = HttpRefresher::oauth2("https://idp.example.com/token", endless)
        .body_limit(4096)
        .refresh(ctx())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("larger than 4096 bytes"), "{err}");
}

/// A body that never ends: the same chunk, forever.
struct Endless(Bytes);

impl Body for Endless {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(self.0.clone()))))
    }
}

#[tokio::test]
async fn a_transport_error_is_transient_with_its_cause() {
    let down = tower::service_fn(|_request: Request<Full<Bytes>>| async {
        Err::<Answer, _>(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "connection refused",
        ))
    });
    let err = HttpRefresher::cognito("https://idp.example.com/api/auth/refresh-token", down)
        .refresh(ctx())
        .await
        .unwrap_err();
    assert!(err.is_transient());
    assert!(err.to_string().contains("could not be reached"), "{err}");
    let source = std::error::Error::source(&err).expect("the cause is kept");
    assert!(source.to_string().contains("connection refused"));
}

#[tokio::test]
async fn the_request_never_carries_more_than_the_dialect_says() {
    let seen = Arc::new(std::sync::Mutex::new(None));
    let record = Arc::clone(&seen);
    let idp = tower::service_fn(move |request: Request<Full<Bytes>>| {
        let record = Arc::clone(&record);
        async move {
            let (parts, body) = request.into_parts();
            let body = body.collect().await.unwrap().to_bytes();
            *record.lock().unwrap() = Some((parts, body));
            Ok::<_, Infallible>(ok_tokens())
        }
    });
    HttpRefresher::dynamosql("https://api.dynamosql.com/v1/auth/refresh", idp)
        .refresh(ctx())
        .await
        .unwrap_err(); // an OAuth2 answer is not a DynamoSQL envelope
    let (parts, body) = seen.lock().unwrap().take().unwrap();
    assert_eq!(parts.method, http::Method::POST);
    assert_eq!(parts.uri.path(), "/v1/auth/refresh");
    assert!(parts.headers.get("authorization").is_none());
    assert_eq!(parts.headers["content-type"], "application/json");
    assert_eq!(body, r#"{"refreshToken":"old-refresh"}"#);
}

#[tokio::test]
async fn debug_shows_the_dialect_but_no_secret() {
    let (idp, _) = endpoint(ok_tokens);
    let refresher = HttpRefresher::oauth2("https://idp.example.com/token", idp)
        .client_id("app")
        .client_secret("client-secret-value");
    let debug = format!("{refresher:?}");
    assert!(debug.contains("oauth2") && debug.contains("app"), "{debug}");
    assert!(!debug.contains("client-secret-value"), "{debug}");
}

/// Found in review: `Debug` printed the endpoint whole, and userinfo or a
/// query (`?api_key=`) can carry credentials.
#[tokio::test]
async fn debug_shows_the_endpoint_without_userinfo_or_query() {
    let (idp, _) = endpoint(ok_tokens);
    let url = "https://user:password-value@idp.example.com:8443/token?api_key=key-value";
    let debug = format!("{:?}", HttpRefresher::oauth2(url, idp.clone()));
    assert!(
        debug.contains("\"https://idp.example.com:8443/token\""),
        "{debug}"
    );
    for secret in ["password-value", "key-value", "user"] {
        assert!(!debug.contains(secret), "{debug}");
    }
    // Found in review: a key in the path showed.
    let url = "https://idp.example.com/v1/key/Zk9aQ2xNf1/refresh";
    let debug = format!("{:?}", HttpRefresher::cognito(url, idp.clone()));
    assert!(
        debug.contains("\"https://idp.example.com/v1/key/[redacted]/refresh\""),
        "{debug}"
    );
    let invalid = format!(
        "{:?}",
        HttpRefresher::oauth2("not a uri password-value", idp)
    );
    assert!(!invalid.contains("password-value"), "{invalid}");
}

/// Sliding sessions (the credential dies with the access token) refresh in
/// the background, from half the lifetime; the others when needed, in the
/// layer's default advisory window.
#[tokio::test]
async fn only_sliding_dialects_need_background_refresh_from_half_the_lifetime() {
    let (idp, _) = endpoint(ok_tokens);
    let url = "https://x.example.com/";
    let half = Some(RefreshWindow::fraction(0.5));
    let ocient = HttpRefresher::ocient(url, idp.clone());
    assert!(ocient.needs_background_refresh());
    assert_eq!(ocient.advisory_window(), half);
    let sliding = HttpRefresher::custom(url, idp.clone())
        .credential(Credential::bearer_header().with_access_token());
    assert!(sliding.needs_background_refresh());
    assert_eq!(sliding.advisory_window(), half);
    for other in [
        HttpRefresher::oauth2(url, idp.clone()),
        HttpRefresher::cognito(url, idp.clone()),
        HttpRefresher::dynamosql(url, idp),
    ] {
        assert!(!other.needs_background_refresh(), "{other:?}");
        assert_eq!(other.advisory_window(), None, "{other:?}");
    }
}

/// The Ocient preset's half-lifetime advisory window, in a layer, and the
/// builder's own window over it.
#[tokio::test(start_paused = true)]
async fn the_builders_advisory_window_overrides_the_sliding_sessions_half() {
    let (idp, _) = endpoint(ok_tokens);
    let hour = || TokenSet::new("current").with_expires_in(Duration::from_secs(3600));
    let preset =
        TokenRefreshLayer::builder(HttpRefresher::ocient("https://x.example.com/", idp.clone()))
            .initial_tokens(hour())
            .background_refresh(false)
            .build()
            .handle();
    let overridden =
        TokenRefreshLayer::builder(HttpRefresher::ocient("https://x.example.com/", idp))
            .initial_tokens(hour())
            .background_refresh(false)
            .advisory_window(RefreshWindow::fixed(Duration::from_secs(600)))
            .build()
            .handle();
    tokio::time::advance(Duration::from_secs(1801)).await;
    assert_eq!(preset.status().state(), crate::TokenState::Stale);
    assert_eq!(overridden.status().state(), crate::TokenState::Fresh);
    tokio::time::advance(Duration::from_secs(1200)).await; // 10 min left
    assert_eq!(overridden.status().state(), crate::TokenState::Stale);
}

#[tokio::test]
async fn a_rejected_refresh_token_leads_to_one_login() {
    let (idp, refreshes) = endpoint(|| {
        json(
            StatusCode::BAD_REQUEST,
            r#"{"error":"invalid_grant","error_description":"refresh token revoked"}"#,
        )
    });
    let (login_idp, logins) = endpoint(|| {
        json(
            StatusCode::OK,
            r#"{"access_token":"logged-in","token_type":"Bearer","expires_in":3600,"refresh_token":"fresh"}"#,
        )
    });
    let layer =
        TokenRefreshLayer::builder(HttpRefresher::oauth2("https://idp.example.com/token", idp))
            .login(
                HttpRefresher::client_credentials("https://idp.example.com/token", login_idp)
                    .client_id("svc")
                    .client_secret("s"),
            )
            .initial_tokens(TokenSet::new("old").with_refresh_token("revoked"))
            .build();
    let handle = layer.handle();
    handle.force_refresh().await.unwrap();
    let tokens = handle.tokens().unwrap();
    assert_eq!(tokens.access_token().expose(), "logged-in");
    assert_eq!(tokens.refresh_token().unwrap().expose(), "fresh");
    assert_eq!(refreshes.load(Ordering::SeqCst), 1);
    assert_eq!(logins.load(Ordering::SeqCst), 1);
    let stats = handle.stats();
    assert_eq!((stats.refreshes, stats.logins), (1, 1));
    assert_eq!(stats.refresh_failures, 0, "the login rescued the refresh");
}

#[tokio::test]
async fn a_failed_login_leaves_reauthentication_required() {
    let (idp, _) = endpoint(|| json(StatusCode::UNAUTHORIZED, r#"{"error":"invalid_grant"}"#));
    let (login_idp, logins) =
        endpoint(|| json(StatusCode::UNAUTHORIZED, r#"{"error":"invalid_client"}"#));
    let layer =
        TokenRefreshLayer::builder(HttpRefresher::oauth2("https://idp.example.com/token", idp))
            .login(
                HttpRefresher::client_credentials("https://idp.example.com/token", login_idp)
                    .client_id("svc"),
            )
            .initial_tokens(TokenSet::new("old").with_refresh_token("revoked"))
            .build();
    let handle = layer.handle();
    let err = handle.force_refresh().await.unwrap_err();
    assert!(err.is_reauth_required(), "{err}");
    assert_eq!(err.refresh_error().unwrap().code(), Some("invalid_client"));
    assert_eq!(logins.load(Ordering::SeqCst), 1);
    assert_eq!(handle.stats().logins, 1);
}

#[tokio::test]
async fn without_initial_tokens_the_login_source_gets_the_first() {
    let (idp, refreshes) = endpoint(ok_tokens);
    let (login_idp, logins) = endpoint(ok_tokens);
    let layer =
        TokenRefreshLayer::builder(HttpRefresher::oauth2("https://idp.example.com/token", idp))
            .login(
                HttpRefresher::client_credentials("https://idp.example.com/token", login_idp)
                    .client_id("svc"),
            )
            .build();
    layer.handle().force_refresh().await.unwrap();
    assert_eq!(logins.load(Ordering::SeqCst), 1);
    assert_eq!(
        refreshes.load(Ordering::SeqCst),
        0,
        "nothing to refresh yet"
    );
}

/// Found in review: an OAuth2 answer may leave `scope` out when it is the
/// one asked for (RFC 6749 §5.1), and the token set then lost it. It now
/// keeps the scope the refresh asked for, or else the one granted before.
#[tokio::test]
async fn a_scope_the_answer_leaves_out_is_the_one_asked_for_or_the_one_before() {
    let (idp, _) = endpoint(ok_tokens); // no `scope`
    let granted = TokenSet::new("old-access")
        .with_refresh_token("old-refresh")
        .with_extra("scope", "read write");
    let ctx = || RefreshContext::new(RefreshReason::Forced, Some(Arc::new(granted.clone())));

    let asked = HttpRefresher::oauth2("https://idp.example.com/token", idp.clone()).scope("read");
    let tokens = asked.refresh(ctx()).await.unwrap();
    assert_eq!(tokens.extra("scope"), Some("read"));

    let unasked = HttpRefresher::oauth2("https://idp.example.com/token", idp);
    let tokens = unasked.refresh(ctx()).await.unwrap();
    assert_eq!(tokens.extra("scope"), Some("read write"));

    // An answer that names a scope is taken at its word.
    let (narrowed, _) = endpoint(|| {
        json(
            StatusCode::OK,
            r#"{"access_token":"new","token_type":"Bearer","scope":"read"}"#,
        )
    });
    let tokens = HttpRefresher::oauth2("https://idp.example.com/token", narrowed)
        .refresh(ctx())
        .await
        .unwrap();
    assert_eq!(tokens.extra("scope"), Some("read"));

    // A `client_credentials` grant (as a login) that names no scope asks
    // for the server's default, which an answer leaving `scope` out does
    // not name: the tokens it replaces say nothing of it. Found in review.
    let (idp, _) = endpoint(ok_tokens);
    let login = HttpRefresher::client_credentials("https://idp.example.com/token", idp)
        .client_id("app")
        .client_secret("app-secret");
    let tokens = login.refresh(ctx()).await.unwrap();
    assert_eq!(tokens.extra("scope"), None);
}

/// Found in a second review: an Ocient answer that left `database` out
/// lost the session's database carried from the tokens in use, and the
/// refresh after it sent `{}`, moving the session to `system`.
#[tokio::test]
async fn an_ocient_database_the_answer_leaves_out_is_the_sessions() {
    let (idp, _) = endpoint(|| json(StatusCode::OK, r#"{"access_token":"new"}"#));
    let in_session = TokenSet::new("old-access").with_extra("database", "sales");
    let ctx = RefreshContext::new(RefreshReason::Forced, Some(Arc::new(in_session)));
    let tokens = HttpRefresher::ocient("https://sql.example.com/v1/token_refresh", idp)
        .refresh(ctx)
        .await
        .unwrap();
    assert_eq!(tokens.extra("database"), Some("sales"));
}

/// Found in review: a successful answer refused for what it lacked (here
/// an `expires_in` that is not a number) lost the new refresh token in
/// it, and the next refresh presented the one the issuer had just spent
/// (RFC 6749 §6: the client MUST replace it). It is kept now, as refused
/// tokens' are, and the next refresh presents it.
#[tokio::test(start_paused = true)]
async fn a_refused_answer_keeps_the_new_refresh_token_in_it() {
    let (idp, presented) = recording_endpoint(|n| {
        if n == 1 {
            json(
                StatusCode::OK,
                r#"{"access_token":"a2","token_type":"Bearer","expires_in":"3600s","refresh_token":"r2"}"#,
            )
        } else {
            json(
                StatusCode::OK,
                r#"{"access_token":"a3","token_type":"Bearer","expires_in":3600,"refresh_token":"r3"}"#,
            )
        }
    });
    let layer =
        TokenRefreshLayer::builder(HttpRefresher::oauth2("https://idp.example.com/token", idp))
            .initial_tokens(TokenSet::new("a1").with_refresh_token("r1"))
            .build();
    let handle = layer.handle();

    let error = handle.force_refresh().await.unwrap_err();
    assert!(
        error.to_string().contains("token refresh failed"),
        "{error}"
    );
    let cause = error.refresh_error().unwrap().to_string();
    assert!(cause.contains("expires_in"), "{cause}");
    assert!(
        !cause.contains("r2"),
        "the new refresh token is never shown: {cause}"
    );
    assert_eq!(handle.tokens().unwrap().access_token().expose(), "a1");

    tokio::time::advance(Duration::from_secs(60)).await;
    handle.force_refresh().await.unwrap();
    assert_eq!(handle.tokens().unwrap().access_token().expose(), "a3");
    let presented = presented.lock().unwrap().clone();
    assert_eq!(
        presented,
        [
            "grant_type=refresh_token&refresh_token=r1",
            "grant_type=refresh_token&refresh_token=r2"
        ]
    );
}

/// Found in review: a server that echoed what it was sent in its error
/// text (`"refresh token old-refresh is expired"`) had the token quoted in
/// the error, and so in every log of it. The secrets the refresh could send
/// are redacted from the server's words, whichever field quotes them.
#[tokio::test]
async fn a_server_echoing_the_sent_secrets_has_them_redacted_from_the_error() {
    let (idp, _) = endpoint(|| {
        json(
            StatusCode::BAD_REQUEST,
            r#"{"error":"invalid_grant: old-refresh",
                "error_description":"token old-refresh (client secret client-secret-value, access old-access) is expired"}"#,
        )
    });
    let refresher = HttpRefresher::oauth2("https://idp.example.com/token", idp)
        .client_id("app")
        .client_secret("client-secret-value");
    let err = refresher.refresh(ctx()).await.unwrap_err();
    assert!(err.is_terminal(), "{err}");
    let shown = format!("{err} {err:?} {:?}", err.code());
    for secret in ["old-refresh", "client-secret-value", "old-access"] {
        assert!(!shown.contains(secret), "{secret} in {shown}");
    }
    assert!(
        shown.contains("token [redacted] (client secret [redacted]"),
        "{shown}"
    );
    assert_eq!(err.code(), Some("invalid_grant: [redacted]"));
}

/// Found in review: the client's Basic credentials (base64 of `id:secret`)
/// and a key in the endpoint's query were quoted as the server echoed
/// them.
#[tokio::test]
async fn echoed_basic_credentials_and_endpoint_keys_are_redacted_too() {
    use base64::Engine as _;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("app:client-secret-value")
    );
    let echo = format!(
        r#"{{"error":"invalid_client","error_description":"bad header {basic}, url ?key=endpoint-key-value&v=2"}}"#
    );
    let (idp, _) = endpoint(move || json(StatusCode::UNAUTHORIZED, &echo));
    let refresher = HttpRefresher::oauth2(
        "https://idp.example.com/token?key=endpoint-key-value&v=2",
        idp,
    )
    .client_id("app")
    .client_secret("client-secret-value");
    let err = refresher.refresh(ctx()).await.unwrap_err();
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains(&basic[6..]), "{shown}");
    assert!(!shown.contains("endpoint-key-value"), "{shown}");
    assert!(shown.contains("bad header Basic [redacted]"), "{shown}");
    assert!(shown.contains("&v=2"), "a short value is no key: {shown}");
}

/// Found in review: a query value under a name that says it is a
/// credential, too short to be taken for a key by its looks, was quoted
/// whole as the server echoed the URL.
#[tokio::test]
async fn a_short_secret_under_a_credentials_name_in_the_query_is_redacted() {
    let echo = r#"{"error":"not_found","error_description":"Cannot POST /token?client_secret=s3cr3t&v=2"}"#;
    let (idp, _) = endpoint(move || json(StatusCode::NOT_FOUND, echo));
    let url = "https://idp.example.com/token?client_secret=s3cr3t&v=2";
    let err = HttpRefresher::oauth2(url, idp)
        .refresh(ctx())
        .await
        .unwrap_err();
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains("s3cr3t"), "{shown}");
    assert!(shown.contains("client_secret=[redacted]&v=2"), "{shown}");
}

/// Found in review: the client's error was kept whole when neither its
/// text nor its own `Debug` quoted a secret, though a cause's `Debug` did:
/// walking the causes showed the key.
#[tokio::test]
async fn a_cause_whose_debug_alone_quotes_the_endpoints_key_is_redacted() {
    #[derive(Debug)]
    struct Inner {
        #[allow(dead_code)] // Read through `Debug` only.
        url: &'static str,
    }
    impl std::fmt::Display for Inner {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("connection failed")
        }
    }
    impl std::error::Error for Inner {}
    struct Outer(Inner);
    impl std::fmt::Debug for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Outer")
        }
    }
    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("client error")
        }
    }
    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }
    let url = "https://idp.example.com/token?key=endpoint-key-value";
    let failing = tower::service_fn(move |_: Request<Full<Bytes>>| async move {
        Err::<Answer, BoxError>(Box::new(Outer(Inner { url })))
    });
    let err = HttpRefresher::oauth2(url, failing)
        .refresh(ctx())
        .await
        .unwrap_err();
    let causes = std::iter::successors(std::error::Error::source(&err), |e| e.source());
    let shown = causes.fold(format!("{err} {err:?}"), |shown, cause| {
        format!("{shown} {cause} {cause:?}")
    });
    assert!(!shown.contains("endpoint-key-value"), "{shown}");
    assert!(
        shown.contains("connection failed"),
        "the client's error: {shown}"
    );
}

/// Found in review: a key in the endpoint's path was not among the sent
/// secrets, so a server quoting the path it was called on (a web
/// framework's `Cannot POST /…` for an unknown route) put the key in the
/// error, and in every log of it.
#[tokio::test]
async fn a_server_quoting_a_key_in_the_endpoints_path_has_it_redacted() {
    let (idp, _) = endpoint(|| {
        json(
            StatusCode::NOT_FOUND,
            r#"{"statusCode":404,"message":"Cannot POST /v1/key/Zk9aQ2xNf1/refresh","error":"Not Found"}"#,
        )
    });
    let url = "https://idp.example.com/v1/key/Zk9aQ2xNf1/refresh";
    let err = HttpRefresher::cognito(url, idp)
        .refresh(ctx())
        .await
        .unwrap_err();
    assert!(err.is_terminal(), "{err}");
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains("Zk9aQ2xNf1"), "{shown}");
    assert!(
        shown.contains("Cannot POST /v1/key/[redacted]/refresh"),
        "{shown}"
    );
}

/// A call whose connection was refused never reached the server and does
/// not count against the endpoint's limit: an outage does not leave the
/// client refusing itself for a minute after the server is back.
#[tokio::test]
async fn a_refused_connection_does_not_count_against_the_rate_limit() {
    let refused = tower::service_fn(|_: Request<Full<Bytes>>| async {
        let cause = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        Err::<Answer, BoxError>(Box::new(std::io::Error::other(cause)))
    });
    let refresher = HttpRefresher::cognito(COGNITO_URL, refused);
    for err in refresh_errors(&refresher, 10).await {
        assert!(err.is_transient(), "{err}");
        assert!(!err.is_rate_limited(), "{err}");
    }
    // Other transport failures may have reached the server: they count.
    let reset = tower::service_fn(|_: Request<Full<Bytes>>| async {
        let cause = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        Err::<Answer, BoxError>(Box::new(cause))
    });
    let refresher = HttpRefresher::cognito(COGNITO_URL, reset);
    let errors = refresh_errors(&refresher, 6).await;
    assert!(errors[..5].iter().all(|e| !e.is_rate_limited()));
    assert!(errors[5].is_rate_limited(), "{}", errors[5]);
}

/// `n` refreshes one after the other, their errors.
async fn refresh_errors<C>(refresher: &HttpRefresher<C>, n: usize) -> Vec<RefreshError>
where
    HttpRefresher<C>: Refresh,
{
    let mut errors = Vec::new();
    for _ in 0..n {
        errors.push(refresher.refresh(ctx()).await.unwrap_err());
    }
    errors
}

/// Found in a third look: the client's own error was kept whole as the
/// refresh error's cause, and a client that names the URL it called (query
/// key and all) put the key in the error.
#[tokio::test]
async fn a_client_error_quoting_the_endpoints_key_is_redacted() {
    let url = "https://idp.example.com/token?key=endpoint-key-value";
    let quoting = tower::service_fn(move |_: Request<Full<Bytes>>| async move {
        Err::<Answer, BoxError>(format!("error sending request for url ({url})").into())
    });
    let err = HttpRefresher::oauth2(url, quoting)
        .refresh(ctx())
        .await
        .unwrap_err();
    assert_key_redacted(&err);

    // Found in review: a readiness error was kept as it came.
    let err = HttpRefresher::oauth2(url, FailingReadiness(url))
        .refresh(ctx())
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert_key_redacted(&err);
}

/// Found in review: an error reading the answer's body was kept as it
/// came, unlike the client's other errors.
#[tokio::test]
async fn an_error_reading_the_answer_quoting_the_endpoints_key_is_redacted() {
    use crate::test_support::body::{Item, TestBody};
    let url = "https://idp.example.com/token?key=endpoint-key-value";
    let failing_body = tower::service_fn(|_: Request<Full<Bytes>>| async {
        let error = "error decoding response body for url \
                     (https://idp.example.com/token?key=endpoint-key-value)";
        Ok::<_, Infallible>(Response::new(TestBody::new(vec![Item::Error(error)])))
    });
    let err = HttpRefresher::oauth2(url, failing_body)
        .refresh(ctx())
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert_key_redacted(&err);
}

/// `err`, its causes and their `Debug` show the endpoint's key only
/// redacted.
fn assert_key_redacted(err: &RefreshError) {
    let causes = std::iter::successors(std::error::Error::source(err), |e| e.source());
    let shown = causes.fold(format!("{err} {err:?}"), |shown, cause| {
        format!("{shown} {cause} {cause:?}")
    });
    assert!(!shown.contains("endpoint-key-value"), "{shown}");
    assert!(shown.contains("?key=[redacted]"), "{shown}");
}

/// A client whose readiness fails with an error quoting the URL of a
/// request it sent before, as a buffer's worker reports the error that
/// stopped it.
#[derive(Clone)]
struct FailingReadiness(&'static str);

impl Service<Request<Full<Bytes>>> for FailingReadiness {
    type Response = Answer;
    type Error = BoxError;
    type Future = std::future::Ready<Result<Answer, BoxError>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        let error = format!(
            "buffered service failed: error sending request for url ({})",
            self.0
        );
        std::task::Poll::Ready(Err(error.into()))
    }

    fn call(&mut self, _: Request<Full<Bytes>>) -> Self::Future {
        std::future::ready(Err("called without being ready".into()))
    }
}

/// A refusal found through `source()`, as hyper-util reports it (its
/// error, then a connect error, then the `io::Error`), is not counted.
#[tokio::test]
async fn a_refused_connection_behind_the_clients_own_errors_does_not_count() {
    #[derive(Debug)]
    struct Wrapped(std::io::Error);
    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("client error (Connect)")
        }
    }
    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }
    let refused = tower::service_fn(|_: Request<Full<Bytes>>| async {
        let cause = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        Err::<Answer, BoxError>(Box::new(Wrapped(cause)))
    });
    let refresher = HttpRefresher::cognito(COGNITO_URL, refused);
    let errors = refresh_errors(&refresher, 10).await;
    assert!(errors.iter().all(|e| !e.is_rate_limited()), "{}", errors[9]);
}
