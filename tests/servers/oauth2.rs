//! The RFC 6749 token endpoint: both grants, scope, rotation and reuse
//! detection, malformed requests, injected failures.

use super::*;

/// Every character here means something to Basic or to form encoding:
/// `:` separates id and secret, `+` is a space, `%` starts an escape.
pub(crate) const BASIC_ID: &str = "svc:reports+1 50%";
pub(crate) const BASIC_SECRET: &str = "p@ss:w+rd %2F=";
pub(crate) const POST_ID: &str = "batch job";
pub(crate) const POST_SECRET: &str = "s3cr+t&=";
pub(crate) const PUBLIC_ID: &str = "cli";

pub(crate) async fn server(rotate: bool) -> OAuth2Server {
    OAuth2Server::builder()
        .client(RegisteredClient::secret_basic(BASIC_ID, BASIC_SECRET).scope("read write"))
        .client(RegisteredClient::secret_post(POST_ID, POST_SECRET).scope("read"))
        .client(RegisteredClient::public(PUBLIC_ID).scope("read write"))
        .token_lifetime(Duration::from_secs(120))
        .rotate_refresh_tokens(rotate)
        .start()
        .await
}

/// `Basic base64(urlencode(id) ":" urlencode(secret))` (RFC 6749
/// §2.3.1).
pub(crate) fn basic(id: &str, secret: &str) -> String {
    let encode = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let credentials = format!("{}:{}", encode(id), encode(secret));
    format!("Basic {}", STANDARD.encode(credentials))
}

pub(crate) fn refresh_form(refresh_token: &str) -> Vec<(&str, &str)> {
    vec![
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token),
    ]
}

pub(crate) async fn refresh_basic(oauth: &OAuth2Server, refresh_token: &str) -> Answer {
    call(Method::POST, &oauth.token_url())
        .header(AUTHORIZATION, &basic(BASIC_ID, BASIC_SECRET))
        .form(&refresh_form(refresh_token))
        .send()
        .await
}

async fn refresh_scoped(oauth: &OAuth2Server, refresh_token: &str, scope: &str) -> Answer {
    let mut form = refresh_form(refresh_token);
    form.push(("scope", scope));
    call(Method::POST, &oauth.token_url())
        .header(AUTHORIZATION, &basic(BASIC_ID, BASIC_SECRET))
        .form(&form)
        .send()
        .await
}

pub(crate) fn assert_error(answer: &Answer, status: StatusCode, code: &str) {
    assert_eq!(answer.status, status, "{}", answer.body);
    assert_eq!(answer.body["error"], code, "{}", answer.body);
    let description = answer.body["error_description"].as_str().unwrap();
    // §5.2: "Values for the "error_description" parameter MUST NOT include
    // characters outside the set %x20-21 / %x23-5B / %x5D-7E."
    let outside = |b: u8| !matches!(b, 0x20..=0x21 | 0x23..=0x5b | 0x5d..=0x7e);
    assert!(!description.bytes().any(outside), "{description:?}");
}

#[tokio::test]
async fn refresh_with_basic_auth_answers_as_section_5_1_says() {
    bounded(async {
        let oauth = server(true).await;
        let api = ApiServer::start(&oauth).await;
        let family = oauth.authorize(BASIC_ID, "read write");

        let answer = refresh_basic(&oauth, &family.refresh_token).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        assert_eq!(header(&answer, CACHE_CONTROL), Some("no-store"));
        assert_eq!(header(&answer, PRAGMA), Some("no-cache"));
        assert!(header(&answer, CONTENT_TYPE)
            .unwrap()
            .starts_with("application/json"));
        let body = &answer.body;
        assert_eq!(body["token_type"], "Bearer");
        assert_eq!(body["expires_in"], 120);
        assert_eq!(body["scope"], "read write");
        let access_token = body["access_token"].as_str().unwrap();
        assert_ne!(access_token, family.access_token);
        let successor = body["refresh_token"].as_str().unwrap();
        assert_ne!(successor, family.refresh_token, "rotated");
        assert_eq!(body.as_object().unwrap().len(), 5, "{body}");

        assert_eq!(api_status(&api, access_token).await, StatusCode::OK);
        let stats = oauth.stats();
        assert_eq!((stats.token_calls, stats.refreshed), (1, 1));
    })
    .await;
}

#[tokio::test]
async fn reusing_a_rotated_refresh_token_revokes_its_family() {
    bounded(async {
        let oauth = server(true).await;
        let api = ApiServer::start(&oauth).await;
        let family = oauth.authorize(BASIC_ID, "read");
        let bystander = oauth.authorize(BASIC_ID, "read");

        let answer = refresh_basic(&oauth, &family.refresh_token).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        let successor = answer.body["refresh_token"].as_str().unwrap().to_owned();
        let refreshed_access = answer.body["access_token"].as_str().unwrap().to_owned();
        assert_eq!(api_status(&api, &family.access_token).await, StatusCode::OK);

        let answer = refresh_basic(&oauth, &family.refresh_token).await;
        assert_error(&answer, StatusCode::BAD_REQUEST, "invalid_grant");
        assert_eq!(oauth.stats().reuse_detected, 1);

        // The whole family is gone: its live refresh token and every
        // access token issued from it.
        let answer = refresh_basic(&oauth, &successor).await;
        assert_error(&answer, StatusCode::BAD_REQUEST, "invalid_grant");
        for token in [&family.access_token, &refreshed_access] {
            assert_eq!(api_status(&api, token).await, StatusCode::UNAUTHORIZED);
        }
        // Another family of the same client is untouched.
        assert_eq!(
            api_status(&api, &bystander.access_token).await,
            StatusCode::OK
        );
        let answer = refresh_basic(&oauth, &bystander.refresh_token).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);

        // A revoked family is not detected again.
        let answer = refresh_basic(&oauth, &family.refresh_token).await;
        assert_error(&answer, StatusCode::BAD_REQUEST, "invalid_grant");
        let stats = oauth.stats();
        assert_eq!((stats.reuse_detected, stats.invalid_grant), (1, 3));
    })
    .await;
}

#[tokio::test]
async fn without_rotation_no_refresh_token_comes_back_and_the_old_one_stays() {
    bounded(async {
        let oauth = server(false).await;
        let family = oauth.authorize(BASIC_ID, "read");
        for _ in 0..3 {
            let answer = refresh_basic(&oauth, &family.refresh_token).await;
            assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
            assert!(
                answer.body.get("refresh_token").is_none(),
                "{}",
                answer.body
            );
        }
        let stats = oauth.stats();
        assert_eq!((stats.refreshed, stats.reuse_detected), (3, 0));
    })
    .await;
}

#[tokio::test]
async fn a_refresh_may_narrow_the_scope_but_not_widen_it() {
    bounded(async {
        let oauth = server(true).await;
        let family = oauth.authorize(BASIC_ID, "read write");
        let answer = refresh_scoped(&oauth, &family.refresh_token, "read admin").await;
        assert_error(&answer, StatusCode::BAD_REQUEST, "invalid_scope");
        let answer = refresh_scoped(&oauth, &family.refresh_token, "read  write").await;
        assert_error(&answer, StatusCode::BAD_REQUEST, "invalid_scope");
        // Refused requests do not spend the token.
        let answer = refresh_scoped(&oauth, &family.refresh_token, "read").await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        assert_eq!(answer.body["scope"], "read");
        // The successor keeps the original scope (§6).
        let successor = answer.body["refresh_token"].as_str().unwrap().to_owned();
        let answer = refresh_scoped(&oauth, &successor, "write read").await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        assert_eq!(answer.body["scope"], "write read");
        assert_eq!(oauth.stats().other_errors, 2);
    })
    .await;
}

#[tokio::test]
async fn a_refresh_token_is_bound_to_its_client() {
    bounded(async {
        let oauth = server(true).await;
        let family = oauth.authorize(PUBLIC_ID, "read");
        let answer = refresh_basic(&oauth, &family.refresh_token).await;
        assert_error(&answer, StatusCode::BAD_REQUEST, "invalid_grant");
        assert_eq!(oauth.stats().reuse_detected, 0);

        // Neither spent nor revoked by the attempt.
        let mut form = refresh_form(&family.refresh_token);
        form.push(("client_id", PUBLIC_ID));
        let answer = call(Method::POST, &oauth.token_url())
            .form(&form)
            .send()
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    })
    .await;
}

#[tokio::test]
async fn client_credentials_issue_an_access_token_and_no_refresh_token() {
    bounded(async {
        let oauth = server(true).await;
        let api = ApiServer::start(&oauth).await;
        let grant = |scope: Option<&'static str>| {
            let mut form = vec![("grant_type", "client_credentials")];
            form.extend(scope.map(|scope| ("scope", scope)));
            call(Method::POST, &oauth.token_url())
                .header(AUTHORIZATION, &basic(BASIC_ID, BASIC_SECRET))
                .form(&form)
        };

        let answer = grant(None).send().await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        assert_eq!(header(&answer, CACHE_CONTROL), Some("no-store"));
        assert_eq!(header(&answer, PRAGMA), Some("no-cache"));
        assert_eq!(answer.body["token_type"], "Bearer");
        assert_eq!(answer.body["expires_in"], 120);
        assert_eq!(answer.body["scope"], "read write");
        assert!(answer.body.get("refresh_token").is_none());
        let access_token = answer.body["access_token"].as_str().unwrap();
        assert_eq!(api_status(&api, access_token).await, StatusCode::OK);

        let answer = grant(Some("write")).send().await;
        assert_eq!(answer.body["scope"], "write");
        let answer = grant(Some("admin")).send().await;
        assert_error(&answer, StatusCode::BAD_REQUEST, "invalid_scope");
        let answer = call(Method::POST, &oauth.token_url())
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", PUBLIC_ID),
            ])
            .send()
            .await;
        assert_error(&answer, StatusCode::BAD_REQUEST, "unauthorized_client");
        let post = [
            ("grant_type", "client_credentials"),
            ("client_id", POST_ID),
            ("client_secret", POST_SECRET),
        ];
        let answer = call(Method::POST, &oauth.token_url())
            .form(&post)
            .send()
            .await;
        assert_eq!(answer.body["scope"], "read", "{}", answer.body);

        let stats = oauth.stats();
        assert_eq!((stats.client_credentials, stats.other_errors), (3, 2));
    })
    .await;
}

#[tokio::test]
async fn malformed_token_requests_are_answered_per_section_5_2() {
    bounded(async {
        let oauth = server(true).await;
        let family = oauth.authorize(BASIC_ID, "read");
        let url = oauth.token_url();
        let authorization = basic(BASIC_ID, BASIC_SECRET);
        let authed = || call(Method::POST, &url).header(AUTHORIZATION, &authorization);
        let token = family.refresh_token.as_str();

        let as_json = json!({ "grant_type": "refresh_token", "refresh_token": token });
        let answer = authed().json(&as_json).send().await;
        assert_error(&answer, StatusCode::BAD_REQUEST, "invalid_request");
        let answer = authed()
            .body(format!("grant_type=refresh_token&refresh_token={token}"))
            .send()
            .await;
        assert_error(&answer, StatusCode::BAD_REQUEST, "invalid_request");
        for (form, code) in [
            (vec![("refresh_token", token)], "invalid_request"),
            // §3.1: without a value, a parameter counts as omitted.
            (
                vec![("grant_type", ""), ("refresh_token", token)],
                "invalid_request",
            ),
            (vec![("grant_type", "refresh_token")], "invalid_request"),
            (
                vec![
                    ("grant_type", "refresh_token"),
                    ("refresh_token", token),
                    ("refresh_token", token),
                ],
                "invalid_request",
            ),
            (vec![("grant_type", "password")], "unsupported_grant_type"),
            // Quoted in the description only as §5.2 allows.
            (vec![("grant_type", "a\"b\\é")], "unsupported_grant_type"),
            (
                vec![
                    ("grant_type", "refresh_token"),
                    ("refresh_token", "rt.unknown"),
                ],
                "invalid_grant",
            ),
        ] {
            let answer = authed().form(&form).send().await;
            assert_error(&answer, StatusCode::BAD_REQUEST, code);
        }
        let stats = oauth.stats();
        assert_eq!(
            (stats.token_calls, stats.other_errors, stats.invalid_grant),
            (9, 8, 1)
        );
        assert_eq!(stats.refreshed, 0);
    })
    .await;
}

#[tokio::test]
async fn other_methods_get_405_with_allow_and_other_paths_404() {
    bounded(async {
        let oauth = server(true).await;
        let answer = call(Method::GET, &oauth.token_url()).send().await;
        assert_error(&answer, StatusCode::METHOD_NOT_ALLOWED, "invalid_request");
        assert_eq!(header(&answer, ALLOW), Some("POST"));
        let url = format!("{}/oauth/authorize", oauth.base_url());
        let answer = call(Method::POST, &url)
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await;
        assert_error(&answer, StatusCode::NOT_FOUND, "invalid_request");
        assert_eq!(oauth.stats().token_calls, 0);
    })
    .await;
}

#[tokio::test]
async fn injected_failures_answer_refreshes_in_the_error_shape() {
    bounded(async {
        let oauth = server(true).await;
        let family = oauth.authorize(BASIC_ID, "read");
        oauth.fail_next_refreshes(
            1,
            Failure::new(StatusCode::TOO_MANY_REQUESTS).retry_after("7"),
        );
        oauth.fail_next_refreshes(1, Failure::new(StatusCode::TOO_MANY_REQUESTS));
        oauth.fail_next_refreshes(1, Failure::new(StatusCode::SERVICE_UNAVAILABLE));
        oauth.fail_next_refreshes(1, Failure::new(StatusCode::INTERNAL_SERVER_ERROR));

        // A client_credentials request does not take a refresh's failure.
        let answer = call(Method::POST, &oauth.token_url())
            .header(AUTHORIZATION, &basic(BASIC_ID, BASIC_SECRET))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);

        for (status, code, retry_after) in [
            (
                StatusCode::TOO_MANY_REQUESTS,
                "temporarily_unavailable",
                Some("7"),
            ),
            (
                StatusCode::TOO_MANY_REQUESTS,
                "temporarily_unavailable",
                None,
            ),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                None,
            ),
            (StatusCode::INTERNAL_SERVER_ERROR, "server_error", None),
        ] {
            let answer = refresh_basic(&oauth, &family.refresh_token).await;
            assert_error(&answer, status, code);
            assert_eq!(header(&answer, RETRY_AFTER), retry_after);
        }
        // Injected failures spend nothing: the token still works.
        let answer = refresh_basic(&oauth, &family.refresh_token).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        let stats = oauth.stats();
        assert_eq!((stats.injected, stats.refreshed), (4, 1));
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_delayed_refresh_answer_arrives_after_the_delay() {
    let oauth = server(true).await;
    let family = oauth.authorize(BASIC_ID, "read");
    oauth.delay_refreshes(Duration::from_secs(10));
    let started = tokio::time::Instant::now();
    let answer = refresh_basic(&oauth, &family.refresh_token).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert!(started.elapsed() >= Duration::from_secs(10));

    oauth.delay_refreshes(Duration::ZERO);
    let started = tokio::time::Instant::now();
    let successor = answer.body["refresh_token"].as_str().unwrap();
    let answer = refresh_basic(&oauth, successor).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert!(started.elapsed() < Duration::from_secs(10));
}
