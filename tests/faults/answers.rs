//! Answers a token endpoint should never give: cut short, not JSON, ten
//! mebibytes, `expires_in` of zero, negative or absurdly large, and a token
//! that has expired by the time it arrives (a late answer, or a JWT whose
//! `exp` has passed), and a token of a kind other than Bearer.

use std::time::{Duration, SystemTime};

use hyper::StatusCode;
use tokio::time::Instant;
use tower_token_refresh::{Error, TokenState};

use crate::support::front::{self, Mode};
use crate::support::jwt;
use crate::support::tokens::TokenStore;
use crate::{assert_all_ok, bounded, transient_fault, wait_until, Rig, Sent, Settings};

/// The refresh failed transiently, and its message says `what`.
fn undecodable(what: &'static str) -> impl Fn(&Error) {
    move |error| {
        assert!(error.is_refresh_failed(), "{error}");
        let cause = error.refresh_error().expect("the refresh's error");
        assert!(cause.is_transient(), "{cause}");
        assert!(
            cause.to_string().contains(what),
            "expected {what:?} in {cause}"
        );
    }
}

/// A `200` carrying a new access token, valid at the API for an hour,
/// with `expires_in` as the raw JSON `expires_in`.
fn token_answer(store: TokenStore, expires_in: &'static str) -> Mode {
    Mode::answer(move || {
        let token = store.issue_access_token(Duration::from_secs(3600));
        let body = format!(
            r#"{{"access_token":"{token}","token_type":"Bearer","expires_in":{expires_in}}}"#
        );
        front::response(200, "application/json", body.as_bytes(), body.len())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_answer_is_a_transient_failure() {
    bounded(async {
        let body = br#"{"access_token":"cut-","token_type":"Bear"#;
        let fault =
            Mode::answer(move || front::response(200, "application/json", body, body.len() + 100));
        let check = undecodable("could not be read");
        let calls = transient_fault(Settings::default(), fault, true, check).await;
        eprintln!("truncated: {calls} calls");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answer_that_is_not_json_is_a_transient_failure() {
    bounded(async {
        let body = b"<html><body>502 Bad Gateway (but sent as 200)</body></html>";
        let fault = Mode::answer(move || front::response(200, "text/html", body, body.len()));
        let check = undecodable("not JSON");
        let calls = transient_fault(Settings::default(), fault, true, check).await;
        eprintln!("not JSON: {calls} calls");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_mebibyte_answer_stops_at_the_body_limit() {
    bounded(async {
        let mut body = br#"{"access_token":"big","token_type":"Bearer","pad":""#.to_vec();
        body.resize(10 * 1024 * 1024 - 2, b'x');
        body.extend_from_slice(br#""}"#);
        let fault =
            Mode::answer(move || front::response(200, "application/json", &body, body.len()));
        let check = undecodable("larger than");
        let calls = transient_fault(Settings::default(), fault, true, check).await;
        eprintln!("10 MiB: {calls} calls");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expires_in_zero_is_a_token_expired_on_arrival_and_backed_off() {
    bounded(async {
        let store = TokenStore::default();
        let fault = token_answer(store, "0");
        let check = undecodable("already expired");
        let calls = transient_fault(Settings::default(), fault, true, check).await;
        eprintln!("expires_in 0: {calls} calls");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_expires_in_is_a_transient_failure() {
    bounded(async {
        let store = TokenStore::default();
        let fault = token_answer(store, "-3600");
        let check = undecodable("non-negative number");
        let calls = transient_fault(Settings::default(), fault, true, check).await;
        eprintln!("negative expires_in: {calls} calls");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_that_expires_before_it_arrives_is_a_transient_failure() {
    bounded(async {
        let settings = Settings {
            refresh_timeout: Duration::from_secs(1),
            ..Settings::default()
        };
        // Valid for 0.3 s from when it was asked for, answered after 0.4 s.
        let store = TokenStore::default();
        let fault = match token_answer(store, "0.3") {
            Mode::Answer { respond, .. } => Mode::Answer {
                respond,
                delay: Duration::from_millis(400),
            },
            _ => unreachable!(),
        };
        let check = undecodable("already expired");
        let calls = transient_fault(settings, fault, true, check).await;
        eprintln!("expired on arrival: {calls} calls");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_whose_exp_has_passed_is_a_token_expired_on_arrival() {
    bounded(async {
        // No expires_in: the lifetime comes from the JWT's exp, an hour ago.
        let jwt = jwt::expiring_at(SystemTime::now() - Duration::from_secs(3600));
        let fault = Mode::answer(move || {
            front::json_ok(&serde_json::json!({"access_token": jwt, "token_type": "Bearer"}))
        });
        let check = undecodable("already expired");
        let calls = transient_fault(Settings::default(), fault, true, check).await;
        eprintln!("expired JWT: {calls} calls");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurdly_large_expires_in_saturates_and_the_token_is_used() {
    bounded(async {
        let rig = Rig::start(Settings::default()).await;
        rig.front
            .set(token_answer(rig.oauth.tokens(), "1e30"))
            .await;
        // The first token turns stale after 0.5 s; one refresh replaces it.
        let sent = rig
            .traffic_until(Instant::now() + Duration::from_secs(2))
            .await;
        for (i, outcome) in sent.iter().enumerate() {
            assert!(
                matches!(outcome, Sent::Status(StatusCode::OK)),
                "request {i}: {outcome:?}"
            );
        }
        // On a loaded machine the refresh the traffic started may still be
        // under way: waited for, sending nothing that could start one.
        let refreshed = || rig.handle.status().generation() >= 2;
        wait_until("the refresh the traffic started ends", refreshed).await;
        let status = rig.handle.status();
        assert_eq!(status.generation(), 2);
        assert_eq!(status.state(), TokenState::Fresh);
        let years = Duration::from_secs(86_400 * 365 * 10);
        assert!(status.expires_in().unwrap() > years, "{status:?}");

        // Fresh "forever": no refresh call after the one that brought it.
        let sent = rig
            .traffic_until(Instant::now() + Duration::from_secs(1))
            .await;
        assert!(sent
            .iter()
            .all(|s| matches!(s, Sent::Status(StatusCode::OK))));
        assert_eq!(rig.calls().len(), 1);
        assert_eq!(rig.front.accepted().len(), 1);
        assert_eq!(rig.handle.stats().refresh_failures, 0);
        eprintln!("expires_in 1e30: 1 call");
    })
    .await;
}

/// A token of another kind (`DPoP` here) cannot be sent as Bearer, and the
/// issuer would answer the same way again: the failure is terminal, so
/// the endpoint is asked once, not after every backoff (each call spending
/// a refresh token), while the token in hand keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_type_other_than_bearer_is_terminal_and_not_asked_again() {
    bounded(async {
        let rig = Rig::start(Settings::default()).await;
        let store = rig.oauth.tokens();
        rig.front
            .set(Mode::answer(move || {
                let token = store.issue_access_token(Duration::from_secs(3600));
                front::json_ok(&serde_json::json!({
                    "access_token": token, "token_type": "DPoP", "expires_in": 3600,
                }))
            }))
            .await;
        // The first token turns stale after 0.5 s; backed off instead
        // (100 to 400 ms), the endpoint would be asked about five times in
        // the next 1.5 s.
        let sent = rig
            .traffic_until(Instant::now() + Duration::from_secs(2))
            .await;
        assert_all_ok(&sent, "while the token in hand was valid");
        wait_until("the refresh ends", || {
            rig.handle.stats().refresh_failures >= 1
        })
        .await;
        assert_eq!(rig.calls().len(), 1, "asked once");
        let status = rig.handle.status();
        let cause = status.last_error().expect("the refresh's error");
        assert!(cause.is_terminal(), "{cause}");
        assert!(cause.to_string().contains("is not Bearer"), "{cause}");
        assert_eq!(status.generation(), 1, "the DPoP token was not installed");
    })
    .await;
}
