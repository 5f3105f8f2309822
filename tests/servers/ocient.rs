//! Seed 003: Ocient's `POST /v1/token_refresh`, and the `POST /v1/login`
//! we assume.

use super::*;

const USER: &str = "jdoe";
const PASSWORD: &str = "hunter2";

fn builder() -> support::ocient::OcientBuilder {
    OcientServer::builder()
        .user(USER, PASSWORD)
        .token_lifetime(Duration::from_secs(60))
}

/// Logs in on `database`; the access token.
async fn login(ocient: &OcientServer, database: Option<&str>) -> String {
    let mut credentials = json!({ "username": USER, "password": PASSWORD });
    if let Some(database) = database {
        credentials["database"] = database.into();
    }
    let answer = call(Method::POST, &ocient.login_url())
        .json(&credentials)
        .send()
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.body["database"], database.unwrap_or("system"));
    answer.body["access_token"].as_str().unwrap().to_owned()
}

fn refresh(ocient: &OcientServer, token: &str) -> Call {
    call(Method::POST, &ocient.refresh_url()).bearer(token)
}

/// `{status: {reason, sql_state, vendor_code}}` with `sql_state` and a
/// negative vendor code.
fn assert_status_error(answer: &Answer, status: StatusCode, sql_state: &str) {
    assert_eq!(answer.status, status, "{}", answer.body);
    let object = &answer.body["status"];
    assert!(object["reason"].is_string(), "{}", answer.body);
    assert_eq!(object["sql_state"], sql_state, "{}", answer.body);
    assert!(
        object["vendor_code"].as_i64().is_some_and(|c| c < 0),
        "{}",
        answer.body
    );
}

#[tokio::test]
async fn refresh_answers_as_the_seed_documents() {
    bounded(async {
        let ocient = builder().start().await;
        let api = ApiServer::start(&ocient).await;
        let token = login(&ocient, Some("retail_analytics")).await;

        let answer = refresh(&ocient, &token)
            .json(&json!({ "database": "retail_analytics" }))
            .send()
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        let refreshed = answer.body["access_token"].as_str().unwrap().to_owned();
        assert_ne!(refreshed, token);
        assert_eq!(
            answer.body,
            json!({
                "access_token": refreshed,
                "username": USER,
                "database": "retail_analytics",
                "expires_in": 60,
                "status": {
                    "reason": "Token refreshed successfully",
                    "sql_state": "00000",
                    "vendor_code": 0,
                },
            })
        );
        // The presented token lives on until its own expiry.
        assert_eq!(api_status(&api, &refreshed).await, StatusCode::OK);
        assert_eq!(api_status(&api, &token).await, StatusCode::OK);
        // And a refreshed token can be refreshed in turn.
        let answer = refresh(&ocient, &refreshed).json(&json!({})).send().await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        let stats = ocient.stats();
        assert_eq!(
            (stats.logins, stats.refresh_calls, stats.refreshed),
            (1, 2, 2)
        );
    })
    .await;
}

#[tokio::test]
async fn the_database_defaults_to_system() {
    bounded(async {
        let ocient = builder().start().await;
        let token = login(&ocient, None).await;
        // The body is optional; the content type is not.
        let empty = refresh(&ocient, &token)
            .header(CONTENT_TYPE, "application/json")
            .send()
            .await;
        let no_database = refresh(&ocient, &token).json(&json!({})).send().await;
        for answer in [empty, no_database] {
            assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
            assert_eq!(answer.body["database"], "system");
            assert_eq!(answer.body["username"], USER);
        }
    })
    .await;
}

#[tokio::test]
async fn a_refresh_without_a_bearer_token_is_401() {
    bounded(async {
        let ocient = builder().start().await;
        let token = login(&ocient, None).await;
        let url = ocient.refresh_url();

        let answer = call(Method::POST, &url).json(&json!({})).send().await;
        assert_status_error(&answer, StatusCode::UNAUTHORIZED, "28000");
        let answer = call(Method::POST, &url)
            .header(AUTHORIZATION, &format!("Basic {token}"))
            .json(&json!({}))
            .send()
            .await;
        assert_status_error(&answer, StatusCode::UNAUTHORIZED, "28000");
        let answer = refresh(&ocient, "at.unknown").json(&json!({})).send().await;
        assert_status_error(&answer, StatusCode::UNAUTHORIZED, "28000");

        let credentials = json!({ "username": USER, "password": "wrong" });
        let answer = call(Method::POST, &ocient.login_url())
            .json(&credentials)
            .send()
            .await;
        assert_status_error(&answer, StatusCode::UNAUTHORIZED, "28000");
        let stats = ocient.stats();
        assert_eq!((stats.unauthorized, stats.refreshed), (4, 0));
    })
    .await;
}

#[tokio::test]
async fn a_refresh_without_json_content_type_or_body_is_400() {
    bounded(async {
        let ocient = builder().start().await;
        let token = login(&ocient, None).await;

        let answer = refresh(&ocient, &token).send().await;
        assert_status_error(&answer, StatusCode::BAD_REQUEST, "22023");
        let answer = refresh(&ocient, &token)
            .header(CONTENT_TYPE, "text/plain")
            .body(r#"{"database": "system"}"#)
            .send()
            .await;
        assert_status_error(&answer, StatusCode::BAD_REQUEST, "22023");
        for body in [
            "{not json",
            r#"{"database": 5}"#,
            r#"{"database": ""}"#,
            "[]",
        ] {
            let answer = refresh(&ocient, &token)
                .header(CONTENT_TYPE, "application/json")
                .body(body)
                .send()
                .await;
            assert_status_error(&answer, StatusCode::BAD_REQUEST, "22023");
        }
        let stats = ocient.stats();
        assert_eq!((stats.bad_requests, stats.refreshed), (6, 0));
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn an_expired_token_cannot_be_refreshed() {
    let ocient = builder().start().await;
    let token = login(&ocient, None).await;
    tokio::time::advance(Duration::from_secs(61)).await;
    let answer = refresh(&ocient, &token).json(&json!({})).send().await;
    assert_status_error(&answer, StatusCode::UNAUTHORIZED, "28000");
}

#[tokio::test(start_paused = true)]
async fn a_longer_refresh_lifetime_lets_an_expired_token_be_refreshed() {
    let ocient = builder()
        .refresh_lifetime(Duration::from_secs(120))
        .start()
        .await;
    let api = ApiServer::start(&ocient).await;
    let first = login(&ocient, None).await;
    let second = login(&ocient, None).await;
    tokio::time::advance(Duration::from_secs(61)).await;

    assert_eq!(api_status(&api, &first).await, StatusCode::UNAUTHORIZED);
    let answer = refresh(&ocient, &first).json(&json!({})).send().await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);

    tokio::time::advance(Duration::from_secs(60)).await;
    let answer = refresh(&ocient, &second).json(&json!({})).send().await;
    assert_status_error(&answer, StatusCode::UNAUTHORIZED, "28000");
}

#[tokio::test]
async fn injected_failures_answer_refreshes_with_a_status_object() {
    bounded(async {
        let ocient = builder().start().await;
        let token = login(&ocient, None).await;
        ocient.fail_next_refreshes(
            1,
            Failure::new(StatusCode::TOO_MANY_REQUESTS).retry_after("3"),
        );
        ocient.fail_next_refreshes(1, Failure::new(StatusCode::SERVICE_UNAVAILABLE));
        for (status, sql_state, retry_after) in [
            (StatusCode::TOO_MANY_REQUESTS, "53000", Some("3")),
            (StatusCode::SERVICE_UNAVAILABLE, "58000", None),
        ] {
            let answer = refresh(&ocient, &token).json(&json!({})).send().await;
            assert_status_error(&answer, status, sql_state);
            assert_eq!(header(&answer, RETRY_AFTER), retry_after);
        }
        let answer = refresh(&ocient, &token).json(&json!({})).send().await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        let stats = ocient.stats();
        assert_eq!(
            (stats.injected, stats.refreshed, stats.refresh_calls),
            (2, 1, 3)
        );
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_delayed_refresh_answer_arrives_after_the_delay() {
    let ocient = builder().start().await;
    let token = login(&ocient, None).await;
    ocient.delay_refreshes(Duration::from_secs(10));
    let started = tokio::time::Instant::now();
    let answer = refresh(&ocient, &token).json(&json!({})).send().await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert!(started.elapsed() >= Duration::from_secs(10));
}

#[tokio::test]
async fn other_methods_get_405_with_allow_and_other_paths_404() {
    bounded(async {
        let ocient = builder().start().await;
        for url in [ocient.refresh_url(), ocient.login_url()] {
            let answer = call(Method::GET, &url).send().await;
            assert_status_error(&answer, StatusCode::METHOD_NOT_ALLOWED, "0A000");
            assert_eq!(header(&answer, ALLOW), Some("POST"));
        }
        let url = format!("{}/v1/query", ocient.base_url());
        let answer = call(Method::POST, &url).json(&json!({})).send().await;
        assert_status_error(&answer, StatusCode::NOT_FOUND, "0A000");
    })
    .await;
}
