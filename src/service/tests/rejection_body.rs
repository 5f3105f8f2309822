//! What happens to a rejection's body when the request is retried, or when
//! its refresh has failed: read to its end first, so that dropping it does
//! not reset an HTTP/2 stream whose frames are still arriving.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use tower::{ServiceBuilder, ServiceExt};

use super::apis::{revoked_then_fresh, send_through, InFlight};
use crate::test_support::body::{TestBody, Tx};
use crate::test_support::{post, settle, TestBody as RequestBody};
use crate::{RefreshError, ReplayBody, TokenRefreshLayer, TokenSet};

/// A layer holding a token the API rejects, refreshed to one it accepts.
fn layer(refresh_timeout: Duration) -> TokenRefreshLayer {
    revoked_then_fresh()
        .refresh_timeout(refresh_timeout)
        .build()
}

/// Ends the rejection `tx` feeds, seeing that the retry waits for its end
/// and is then sent and answered.
async fn ends_then_retried(tx: Tx, calls: &AtomicUsize, request: InFlight) {
    // `Tx::data` asserts that the body is still being read.
    tx.data("{\"error\":\"invalid_token\"}");
    settle().await;
    assert_eq!(calls.load(SeqCst), 1, "retried before the rejection ended");
    drop(tx);

    let response = request.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(calls.load(SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn a_rejection_is_read_to_its_end_before_the_retry_is_sent() {
    let (tx, calls, request) = send_through(layer(Duration::from_secs(60)));
    settle().await;
    assert_eq!(calls.load(SeqCst), 1, "retried before the rejection ended");

    ends_then_retried(tx, &calls, request).await;
}

#[tokio::test(start_paused = true)]
async fn a_rejection_with_an_endless_body_is_dropped_after_64_kib() {
    let kib: &'static str = "x".repeat(1024).leak();
    let started = tokio::time::Instant::now();
    let (tx, calls, request) = send_through(layer(Duration::from_secs(60)));
    for _ in 0..64 {
        tx.data(kib);
    }
    settle().await;
    assert_eq!(calls.load(SeqCst), 1, "gave up reading at 64 KiB or less");
    tx.data(kib);

    let response = request.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(calls.load(SeqCst), 2);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "waited for a timer"
    );
    drop(tx);
}

#[tokio::test(start_paused = true)]
async fn a_rejection_whose_body_never_ends_holds_the_retry_only_until_the_bound() {
    let timeout = Duration::from_secs(5);
    let (tx, calls, request) = send_through(layer(timeout));
    settle().await;
    tokio::time::sleep(timeout - Duration::from_millis(1)).await;
    assert_eq!(calls.load(SeqCst), 1, "retried before the bound");
    let response = tokio::time::timeout(timeout, request)
        .await
        .expect("retried at the bound")
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(calls.load(SeqCst), 2);
    drop(tx);
}

#[tokio::test(start_paused = true)]
async fn a_rejection_is_read_to_its_end_before_a_failed_refresh_is_reported() {
    let (source, refreshes) =
        crate::test_support::failing(|| RefreshError::terminal("invalid_grant").with_status(400));
    let layer = TokenRefreshLayer::builder(source)
        .initial_tokens(TokenSet::new("revoked").with_expires_in(Duration::from_secs(3600)))
        .build();
    // The refresh token dies before the request is rejected: no refresh can
    // run for the rejection.
    let dead = layer.handle().force_refresh().await.unwrap_err();
    assert!(dead.is_reauth_required());

    let (tx, calls, request) = send_through(layer);
    settle().await;
    // `Tx::data` asserts that the body is still being read.
    tx.data("{\"error\":\"invalid_token\"}");
    settle().await;
    assert!(
        !request.is_finished(),
        "answered before the rejection ended"
    );
    drop(tx);

    let error = request.await.unwrap().unwrap_err();
    let error = error
        .downcast_ref::<crate::Error>()
        .expect("the typed error");
    assert!(error.is_reauth_required());
    assert_eq!(calls.load(SeqCst), 1, "no retry without a refresh");
    assert_eq!(refreshes.load(SeqCst), 1);
}

/// Found in review: waiting for the first attempt to let go of the body
/// and reading the rejection shared one bound, so a body held for most of
/// the refresh timeout (an upload still streaming) left the rejection
/// dropped unread, the moment the body came free. Each has a bound of its
/// own.
#[tokio::test(start_paused = true)]
async fn a_rejection_is_read_to_its_end_after_a_long_wait_for_the_body() {
    let timeout = Duration::from_secs(5);
    let (tx, rejection) = TestBody::channel();
    let rejection = Arc::new(Mutex::new(Some(rejection)));
    let kept = Arc::new(Mutex::new(Vec::new()));
    let calls = Arc::new(AtomicUsize::new(0));
    // Rejects `revoked`, keeping its request, body unread, as a transport
    // still sending it does.
    let api = tower::service_fn({
        let (kept, calls) = (Arc::clone(&kept), Arc::clone(&calls));
        move |req: Request<ReplayBody<RequestBody>>| {
            calls.fetch_add(1, SeqCst);
            let answer = if req.headers()["authorization"] == "Bearer fresh" {
                Response::new(TestBody::empty())
            } else {
                kept.lock().unwrap().push(req);
                let body = rejection.lock().unwrap().take().expect("one rejection");
                let answer = Response::builder().status(StatusCode::UNAUTHORIZED);
                answer.body(body).unwrap()
            };
            async move { Ok::<_, std::convert::Infallible>(answer) }
        }
    });
    let client = ServiceBuilder::new().layer(layer(timeout)).service(api);
    let request = tokio::spawn(client.oneshot(post("upload")));
    settle().await;
    tokio::time::sleep(timeout - Duration::from_millis(1)).await;
    assert_eq!(calls.load(SeqCst), 1, "retried while the body was held");

    kept.lock().unwrap().clear();
    // Past the first bound, well inside a second.
    tokio::time::sleep(Duration::from_millis(10)).await;
    ends_then_retried(tx, &calls, request).await;
}
