//! Seed 000: DynamoSQL's `POST /v1/auth/refresh`, and the `POST
//! /v1/auth/token` login we assume.

use super::*;

const CLIENT_ID: &str = "analytics";
const CLIENT_SECRET: &str = "s3cret";

async fn server() -> DynamoSqlServer {
    DynamoSqlServer::builder()
        .client(CLIENT_ID, CLIENT_SECRET)
        .token_lifetime(Duration::from_secs(900))
        .start()
        .await
}

async fn login(dynamo: &DynamoSqlServer) -> Answer {
    let credentials = json!({ "clientId": CLIENT_ID, "clientSecret": CLIENT_SECRET });
    call(Method::POST, &dynamo.token_url())
        .json(&credentials)
        .send()
        .await
}

async fn refresh(dynamo: &DynamoSqlServer, refresh_token: &str) -> Answer {
    call(Method::POST, &dynamo.refresh_url())
        .json(&json!({ "refreshToken": refresh_token }))
        .send()
        .await
}

/// The error envelope, with `code`; returns the `requestId`.
fn assert_envelope(answer: &Answer, status: StatusCode, code: &str) -> String {
    assert_eq!(answer.status, status, "{}", answer.body);
    let body = &answer.body;
    assert_eq!(body["success"], false, "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    body["error"]["requestId"]
        .as_str()
        .expect("requestId")
        .to_owned()
}

#[tokio::test]
async fn login_and_refresh_answer_in_the_success_envelope() {
    bounded(async {
        let dynamo = server().await;
        let api = ApiServer::start(&dynamo).await;

        let answer = login(&dynamo).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        assert_eq!(answer.body["success"], true);
        let data = &answer.body["data"];
        assert_eq!(
            (&data["expiresIn"], &data["tokenType"]),
            (&json!(900), &json!("Bearer"))
        );
        let refresh_token = data["refreshToken"].as_str().unwrap().to_owned();
        let first_access = data["accessToken"].as_str().unwrap().to_owned();

        // Refresh tokens do not rotate: the same one works again.
        for _ in 0..2 {
            let answer = refresh(&dynamo, &refresh_token).await;
            assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
            assert_eq!(answer.body["success"], true);
            let data = answer.body["data"].as_object().unwrap();
            let keys: Vec<_> = data.keys().map(String::as_str).collect();
            assert_eq!(
                keys,
                ["accessToken", "expiresIn", "tokenType"],
                "no refreshToken"
            );
            assert_eq!(
                (&data["expiresIn"], &data["tokenType"]),
                (&json!(900), &json!("Bearer"))
            );
            let access_token = data["accessToken"].as_str().unwrap();
            assert_ne!(access_token, first_access);
            assert_eq!(api_status(&api, access_token).await, StatusCode::OK);
        }
        let stats = dynamo.stats();
        assert_eq!(
            (stats.logins, stats.refresh_calls, stats.refreshed),
            (1, 2, 2)
        );
    })
    .await;
}

#[tokio::test]
async fn missing_or_invalid_body_fields_are_400_in_the_envelope() {
    bounded(async {
        let dynamo = server().await;
        let url = dynamo.refresh_url();
        let mut request_ids = Vec::new();
        for (content_type, body) in [
            (None, r#"{"refreshToken": "rt"}"#),
            (Some("text/plain"), r#"{"refreshToken": "rt"}"#),
            (Some("application/json"), "{not json"),
            (Some("application/json"), r#"["rt"]"#),
            (Some("application/json"), "{}"),
            (Some("application/json"), r#"{"refresh_token": "rt"}"#),
            (Some("application/json"), r#"{"refreshToken": 42}"#),
        ] {
            let mut request = call(Method::POST, &url).body(body);
            if let Some(content_type) = content_type {
                request = request.header(CONTENT_TYPE, content_type);
            }
            let answer = request.send().await;
            request_ids.push(assert_envelope(
                &answer,
                StatusCode::BAD_REQUEST,
                "BAD_REQUEST",
            ));
        }
        let answer = call(Method::POST, &dynamo.token_url())
            .json(&json!({ "clientId": CLIENT_ID }))
            .send()
            .await;
        request_ids.push(assert_envelope(
            &answer,
            StatusCode::BAD_REQUEST,
            "BAD_REQUEST",
        ));

        request_ids.sort();
        request_ids.dedup();
        assert_eq!(request_ids.len(), 8, "a requestId per request");
        let stats = dynamo.stats();
        assert_eq!((stats.bad_requests, stats.refreshed), (8, 0));
    })
    .await;
}

#[tokio::test]
async fn unknown_or_revoked_refresh_tokens_are_401() {
    bounded(async {
        let dynamo = server().await;
        let answer = refresh(&dynamo, "rt.unknown").await;
        assert_envelope(&answer, StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
        assert_eq!(
            answer.body["error"]["message"],
            "Invalid or expired refresh token"
        );

        let login = login(&dynamo).await;
        let refresh_token = login.body["data"]["refreshToken"].as_str().unwrap();
        dynamo.tokens().revoke_refresh_tokens();
        let answer = refresh(&dynamo, refresh_token).await;
        assert_envelope(&answer, StatusCode::UNAUTHORIZED, "UNAUTHORIZED");

        let credentials = json!({ "clientId": CLIENT_ID, "clientSecret": "wrong" });
        let answer = call(Method::POST, &dynamo.token_url())
            .json(&credentials)
            .send()
            .await;
        assert_envelope(&answer, StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
        assert_eq!(dynamo.stats().unauthorized, 3);
    })
    .await;
}

#[tokio::test]
async fn the_rate_limit_answers_429_in_the_envelope() {
    bounded(async {
        let dynamo = DynamoSqlServer::builder()
            .client(CLIENT_ID, CLIENT_SECRET)
            .rate_limit(2, Duration::from_secs(60))
            .start()
            .await;
        let login = login(&dynamo).await;
        let refresh_token = login.body["data"]["refreshToken"].as_str().unwrap();
        // Logins do not count against the limit; any refresh does.
        let answer = refresh(&dynamo, "rt.unknown").await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
        let answer = refresh(&dynamo, refresh_token).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);

        let answer = refresh(&dynamo, refresh_token).await;
        assert_envelope(&answer, StatusCode::TOO_MANY_REQUESTS, "TOO_MANY_REQUESTS");
        assert!(answer.headers.get(RETRY_AFTER).is_none());
        let stats = dynamo.stats();
        assert_eq!((stats.rate_limited, stats.refreshed), (1, 1));
    })
    .await;
}

#[tokio::test]
async fn injected_failures_answer_refreshes_in_the_envelope() {
    bounded(async {
        let dynamo = server().await;
        let login = login(&dynamo).await;
        let refresh_token = login.body["data"]["refreshToken"].as_str().unwrap();
        dynamo.fail_next_refreshes(
            2,
            Failure::new(StatusCode::TOO_MANY_REQUESTS)
                .retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        dynamo.fail_next_refreshes(1, Failure::new(StatusCode::SERVICE_UNAVAILABLE));
        dynamo.fail_next_refreshes(1, Failure::new(StatusCode::INTERNAL_SERVER_ERROR));

        for (status, code, retry_after) in [
            (
                StatusCode::TOO_MANY_REQUESTS,
                "TOO_MANY_REQUESTS",
                Some("Wed, 21 Oct 2015 07:28:00 GMT"),
            ),
            (
                StatusCode::TOO_MANY_REQUESTS,
                "TOO_MANY_REQUESTS",
                Some("Wed, 21 Oct 2015 07:28:00 GMT"),
            ),
            (StatusCode::SERVICE_UNAVAILABLE, "SERVICE_UNAVAILABLE", None),
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "INTERNAL_SERVER_ERROR",
                None,
            ),
        ] {
            let answer = refresh(&dynamo, refresh_token).await;
            assert_envelope(&answer, status, code);
            assert_eq!(header(&answer, RETRY_AFTER), retry_after);
        }
        let answer = refresh(&dynamo, refresh_token).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        let stats = dynamo.stats();
        assert_eq!(
            (stats.refresh_calls, stats.injected, stats.rate_limited),
            (5, 4, 0)
        );
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_delayed_refresh_answer_arrives_after_the_delay() {
    let dynamo = server().await;
    let login = login(&dynamo).await;
    let refresh_token = login.body["data"]["refreshToken"].as_str().unwrap();
    dynamo.delay_refreshes(Duration::from_secs(10));
    let started = tokio::time::Instant::now();
    let answer = refresh(&dynamo, refresh_token).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert!(started.elapsed() >= Duration::from_secs(10));
}

#[tokio::test]
async fn other_methods_get_405_with_allow_and_other_paths_404() {
    bounded(async {
        let dynamo = server().await;
        for url in [dynamo.refresh_url(), dynamo.token_url()] {
            let answer = call(Method::GET, &url).send().await;
            assert_envelope(
                &answer,
                StatusCode::METHOD_NOT_ALLOWED,
                "METHOD_NOT_ALLOWED",
            );
            assert_eq!(header(&answer, ALLOW), Some("POST"));
        }
        let url = format!("{}/v1/auth/logout", dynamo.base_url());
        let answer = call(Method::POST, &url).json(&json!({})).send().await;
        assert_envelope(&answer, StatusCode::NOT_FOUND, "NOT_FOUND");
        assert_eq!(dynamo.stats().refresh_calls, 0);
    })
    .await;
}
