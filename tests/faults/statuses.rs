//! Failure statuses from the token endpoint: `500`s in bursts, and `429`
//! with and without `Retry-After` (the latter from the Cognito-style
//! server's own rate limit).

use std::time::Duration;

use hyper::StatusCode;
use tokio::time::Instant;
use tower_token_refresh::http::HttpRefresher;
use tower_token_refresh::{Backoff, RefreshWindow, TokenRefreshLayer};

use crate::support::faults::{Failure, InjectFaults};
use crate::support::front::Front;
use crate::support::{ApiServer, CognitoClient, IdentityServer, DEMO_PASSWORD, DEMO_USER};
use crate::{
    assert_all_ok, assert_spaced, bounded, refresh_client, refreshes_ended, traffic_while,
    wait_until, Call, Calls, Rig, Sent, Settings, BACKOFF_INITIAL, BACKOFF_MAX, MANDATORY,
    STALE_AFTER,
};

/// How long the layer may take to make the refresh calls a test waits for.
/// Generous: it only catches a layer that stopped calling, and a loaded
/// machine may take its time.
const CALLS_LIMIT: Duration = Duration::from_secs(20);

/// Sends requests (which start the refreshes) until the layer holds a
/// token newer than generation `after`.
async fn new_token_after(rig: &Rig, after: u64) {
    while rig.handle.status().generation() <= after {
        let _ = rig.get().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends a `GET` every `EVERY`, each from its own task, until the
/// refresh calls the client made satisfy `done`; then awaits the requests
/// and any refresh still under way, so that the calls and counts read next
/// are final (no request is left to start another refresh).
async fn traffic_until_calls(rig: &Rig, what: &str, done: impl Fn(&[Call]) -> bool) -> Vec<Sent> {
    let give_up = Instant::now() + CALLS_LIMIT;
    let more = || {
        let calls = rig.calls();
        let more = !done(&calls);
        assert!(
            !more || Instant::now() < give_up,
            "{what}: not within {CALLS_LIMIT:?}; calls {calls:?}"
        );
        more
    };
    let sent = traffic_while(&rig.client, &rig.url(), rig.request_bound(), more).await;
    wait_until(what, || refreshes_ended(&rig.handle)).await;
    sent
}

/// Whether call `i` has been answered with `status`.
fn answered(calls: &[Call], i: usize, status: StatusCode) -> bool {
    calls.get(i).is_some_and(|call| call.status == Some(status))
}

/// The calls' statuses, checking the front accepted each of them.
fn statuses(rig: &Rig) -> (Vec<Instant>, Vec<Option<StatusCode>>) {
    let accepted = rig.front.accepted();
    let calls = rig.calls();
    assert_eq!(accepted.len(), calls.len(), "one connection per call");
    (accepted, calls.iter().map(|c| c.status).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_of_500s_are_backed_off_while_the_valid_token_serves() {
    bounded(async {
        let rig = Rig::start(Settings::default()).await;
        rig.oauth
            .fail_next_refreshes(3, Failure::new(StatusCode::INTERNAL_SERVER_ERROR));
        // Until the three failures, backed off, and a success: however long
        // a loaded machine takes, requests are served meanwhile.
        let sent = traffic_until_calls(&rig, "the first burst", |calls| {
            answered(calls, 3, StatusCode::OK)
        })
        .await;
        assert_all_ok(&sent, "during the first burst");
        assert_eq!(rig.oauth.stats().injected, 3);

        // The next burst starts with the next call after a fresh token.
        let generation = rig.handle.status().generation();
        new_token_after(&rig, generation).await;
        rig.oauth
            .fail_next_refreshes(4, Failure::new(StatusCode::SERVICE_UNAVAILABLE));
        // The burst is the next run of failures (a call already under way
        // when it was armed may be its first).
        let burst = |calls: &[Call]| {
            (4..calls.len()).find(|&i| calls[i].status.is_some_and(|s| s.is_server_error()))
        };
        let sent = traffic_until_calls(&rig, "the second burst", |calls| {
            burst(calls)
                .is_some_and(|before| calls.get(before + 4).is_some_and(|c| c.status.is_some()))
        })
        .await;
        assert_all_ok(&sent, "during the second burst");
        assert_eq!(rig.oauth.stats().injected, 7);
        let before = burst(&rig.calls()).expect("a second burst");

        let (accepted, statuses) = statuses(&rig);
        let failed = |i: usize| statuses[i] != Some(StatusCode::OK);
        assert!(statuses[..3].iter().all(|s| s.unwrap().is_server_error()));
        assert!(statuses[before..before + 4]
            .iter()
            .all(|s| s.unwrap().is_server_error()));
        assert_eq!(statuses[before + 4], Some(StatusCode::OK), "recovered");
        let longest = assert_spaced(&accepted, failed, None);
        assert_eq!(longest, 4);
        let stats = rig.handle.stats();
        assert_eq!(stats.refresh_failures, 7);
        assert_eq!(stats.refreshes, stats.refresh_successes + 7);
        assert_eq!(rig.oauth.stats().token_calls, accepted.len() as u64);
        eprintln!("500 bursts: {} calls, 7 failed", accepted.len());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_with_retry_after_means_no_call_before_it_and_the_token_serves() {
    bounded(async {
        let rig = Rig::start(Settings::default()).await;
        rig.oauth.fail_next_refreshes(
            1,
            Failure::new(StatusCode::TOO_MANY_REQUESTS).retry_after("2"),
        );
        // The first call (at 0.5 s) is told to wait 2 s; the token lives 4 s.
        // Until the call after the wait has been answered: requests are
        // served meanwhile, with the valid token or (on a machine slow
        // enough to reach its last 1.5 s) after waiting for that call.
        let sent = traffic_until_calls(&rig, "a call after Retry-After", |calls| {
            calls.get(1).is_some_and(|call| call.status.is_some())
        })
        .await;
        assert_all_ok(&sent, "while rate limited");

        let (accepted, statuses) = statuses(&rig);
        assert_eq!(statuses[0], Some(StatusCode::TOO_MANY_REQUESTS));
        assert_eq!(statuses[1], Some(StatusCode::OK));
        let waited = accepted[1] - accepted[0];
        assert!(
            waited + Duration::from_millis(2) >= Duration::from_secs(2),
            "called again after {waited:?}"
        );
        assert_spaced(&accepted[..2], |i| i == 0, Some(Duration::from_secs(2)));
        assert!(rig.handle.status().generation() > 1);
        assert_eq!(rig.handle.stats().refresh_failures, 1);
        eprintln!("429 with Retry-After: {} calls", accepted.len());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_server_rate_limit_without_retry_after_is_backed_off() {
    bounded(async {
        // One refresh per 2 s; tokens of 6 s, stale after 0.5 s: the second
        // refresh, half a second after the first, is refused. The server's
        // 429 names no wait, so the refresher is told the server's window
        // (the preset's own is seed 002's, a minute); a call made sooner
        // would be refused too, as refused calls count against the limit.
        let lifetime = Duration::from_secs(6);
        let spacing = Duration::from_secs(2);
        let identity = IdentityServer::builder()
            .token_lifetime(lifetime)
            .rate_limit(1, spacing)
            .start()
            .await;
        let api = ApiServer::start(&identity).await;
        let front = Front::start(&identity.base_url()).await;
        let calls = Calls::default();
        let tokens = CognitoClient::new(identity.base_url())
            .login(DEMO_USER, DEMO_PASSWORD)
            .await
            .expect("logged in");
        // The server's 429 is under test: no count on the client's side,
        // which would keep the calls from meeting it.
        let refresher =
            HttpRefresher::cognito(front.url("/api/auth/refresh-token"), refresh_client(&calls))
                .rate_limit_wait(spacing)
                .rate_limit(0, Duration::ZERO);
        let layer = TokenRefreshLayer::builder(refresher)
            .initial_tokens(tokens)
            .advisory_window(RefreshWindow::fixed(lifetime - STALE_AFTER))
            .mandatory_window(RefreshWindow::fixed(MANDATORY))
            .refresh_timeout(Duration::from_millis(300))
            .min_refresh_interval(Duration::from_millis(100))
            .backoff(Backoff::new(BACKOFF_INITIAL, BACKOFF_MAX))
            .build();
        let handle = layer.handle();
        let client = crate::support::authed_client(layer);

        // Traffic until the limit was hit and a later call succeeded, not
        // for a fixed time: on a loaded machine the calls come later.
        let give_up = Instant::now() + CALLS_LIMIT;
        let more = || {
            let stats = identity.stats();
            let more = stats.rate_limited == 0 || stats.refreshed < 2;
            assert!(
                !more || Instant::now() < give_up,
                "not limited then recovered within {CALLS_LIMIT:?}: {stats:?}"
            );
            more
        };
        let bound = Duration::from_secs(5);
        let sent = traffic_while(&client, &api.url("/v1/reports"), bound, more).await;
        assert_all_ok(&sent, "while rate limited");
        // No refresh still under way, so that the counts below are final.
        wait_until("the last refresh ends", || refreshes_ended(&handle)).await;

        let accepted = front.accepted();
        let statuses: Vec<_> = calls.lock().unwrap().iter().map(|c| c.status).collect();
        assert_eq!(accepted.len(), statuses.len(), "one connection per call");
        let limited = statuses
            .iter()
            .filter(|s| **s == Some(StatusCode::TOO_MANY_REQUESTS))
            .count();
        assert!(limited >= 1, "the rate limit was hit: {statuses:?}");
        let limited_at = |i: usize| statuses[i] == Some(StatusCode::TOO_MANY_REQUESTS);
        assert_spaced(&accepted, limited_at, Some(spacing));
        let stats = identity.stats();
        assert_eq!(
            stats.refresh_calls,
            accepted.len() as u64,
            "counted at the server"
        );
        assert_eq!(stats.rate_limited, limited as u64);
        assert!(
            stats.refreshed >= 2,
            "recovered after the window: {stats:?}"
        );
        let refresh_failures = handle.stats().refresh_failures;
        assert_eq!(refresh_failures, limited as u64);
        eprintln!(
            "429 without Retry-After: {} calls, {limited} limited",
            accepted.len()
        );
    })
    .await;
}
