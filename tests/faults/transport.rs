//! Faults below HTTP: the token endpoint refuses connections, accepts and
//! never answers, or resets the connection.

use std::time::Duration;

use crate::support::front::Mode;
use crate::{bounded, transient_fault, Settings};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_down_refuses_connections_then_backs_off_and_recovers() {
    bounded(async {
        let calls = transient_fault(Settings::default(), Mode::Refuse, false, |error| {
            assert!(error.is_refresh_failed(), "{error}");
            let cause = error.refresh_error().expect("the refresh's error");
            assert!(cause.is_transient(), "{cause}");
            assert!(cause.message().contains("could not be reached"), "{cause}");
        })
        .await;
        eprintln!("connection refused: {calls} calls");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn black_holed_endpoint_times_out_each_refresh_and_backs_off() {
    bounded(async {
        let settings = Settings {
            refresh_timeout: Duration::from_millis(250),
            ..Settings::default()
        };
        let calls = transient_fault(settings, Mode::BlackHole, true, |error| {
            assert!(error.is_timeout(), "{error}");
            assert!(error.refresh_error().unwrap().is_transient());
        })
        .await;
        eprintln!("black hole: {calls} calls");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_resetting_connections_is_a_transient_failure() {
    bounded(async {
        let calls = transient_fault(Settings::default(), Mode::Reset, true, |error| {
            assert!(error.is_refresh_failed(), "{error}");
            assert!(error.refresh_error().unwrap().is_transient());
        })
        .await;
        eprintln!("reset: {calls} calls");
    })
    .await;
}
