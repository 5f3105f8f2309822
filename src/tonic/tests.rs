//! The call deadline through the layer, with tokio's paused clock: the wait
//! for a token and the retry count against a call's `grpc-timeout`.

use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use http::{HeaderValue, Request, Response};
use tower::util::BoxCloneService;
use tower::{Service, ServiceExt};

use super::{with_token_refresh, GrpcTokenRefresh};
use crate::classify::Grpc;
use crate::test_support::{expect_error, panics_on_this_thread, runtime_without_timers};
use crate::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};

/// The `grpc-timeout` each attempt reached the channel with.
type Seen = Arc<Mutex<Vec<Option<HeaderValue>>>>;

/// What the tests wrap: a channel in a box.
pub(super) type Channel =
    BoxCloneService<Request<tonic::body::Body>, Response<tonic::body::Body>, Infallible>;

/// A channel that records each attempt's `grpc-timeout` and accepts only
/// `Bearer new`, answering anything else with a trailers-only
/// UNAUTHENTICATED.
fn channel(seen: &Seen) -> Channel {
    let seen = Arc::clone(seen);
    BoxCloneService::new(tower::service_fn(
        move |request: Request<tonic::body::Body>| {
            let timeout = request.headers().get("grpc-timeout").cloned();
            seen.lock().unwrap().push(timeout);
            let status = if request.headers()["authorization"] == "Bearer new" {
                tonic::Status::ok("")
            } else {
                tonic::Status::unauthenticated("token revoked")
            };
            async move { Ok::<_, Infallible>(status.into_http()) }
        },
    ))
}

/// A layer starting from `Bearer old`, whose refresh to `new` takes
/// `refresh_takes`.
pub(super) fn layer(refresh_takes: Duration) -> TokenRefreshLayer<Grpc> {
    TokenRefreshLayer::builder(refresh_fn(move |_| async move {
        tokio::time::sleep(refresh_takes).await;
        Ok::<_, RefreshError>(TokenSet::new("new").with_expires_in(Duration::from_secs(3600)))
    }))
    .classifier(Grpc)
    .refresh_timeout(Duration::from_secs(600))
    .initial_tokens(TokenSet::new("old").with_expires_in(Duration::from_secs(3600)))
    .build()
}

pub(super) fn call(timeout: Option<&'static str>) -> Request<tonic::body::Body> {
    let mut request = Request::new(tonic::body::Body::empty());
    if let Some(timeout) = timeout {
        let value = HeaderValue::from_static(timeout);
        request.headers_mut().insert("grpc-timeout", value);
    }
    request
}

fn wrapped(seen: &Seen, layer: &TokenRefreshLayer<Grpc>) -> GrpcTokenRefresh<Channel> {
    with_token_refresh(channel(seen), layer)
}

#[tokio::test(start_paused = true)]
async fn a_retry_is_sent_with_what_is_left_of_the_call_timeout() {
    let seen = Seen::default();
    let layer = layer(Duration::from_secs(3));
    let response = wrapped(&seen, &layer).oneshot(call(Some("10S"))).await;

    assert_eq!(response.unwrap().headers()["grpc-status"], "0");
    // Written in the most precise unit that fits eight digits.
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        [Some("10000000u"), Some("7000000u")].map(|v| v.map(HeaderValue::from_static))
    );
}

#[tokio::test(start_paused = true)]
async fn a_call_waiting_for_its_token_past_its_deadline_fails_with_tonics_timeout() {
    let seen = Seen::default();
    let layer = layer(Duration::from_secs(60));
    let started = tokio::time::Instant::now();
    let error = wrapped(&seen, &layer)
        .oneshot(call(Some("2S")))
        .await
        .unwrap_err();

    assert!(error.is::<tonic::TimeoutExpired>(), "{error}");
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    assert_eq!(
        tonic::Status::from_error(error).code(),
        tonic::Code::Cancelled
    );
    // Rejected once, then held waiting for the refresh: no second attempt.
    assert_eq!(seen.lock().unwrap().len(), 1);
    // The refresh goes on for the calls that come after: the next call
    // gets its token with no refresh of its own, and at once.
    tokio::time::sleep(Duration::from_secs(60)).await;
    let started = tokio::time::Instant::now();
    let response = wrapped(&seen, &layer).oneshot(call(None)).await.unwrap();
    assert_eq!(response.headers()["grpc-status"], "0");
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(layer.handle().stats().refreshes, 1);
}

/// Found in review: a call woken only once both its token had come and its
/// deadline had passed (a busy runtime) still sent its retry, with
/// `grpc-timeout: 1n`: a call the client then reported as timed out.
#[tokio::test(start_paused = true)]
async fn a_call_woken_after_its_deadline_sends_no_retry() {
    let seen = Seen::default();
    let layer = layer(Duration::from_secs(1));
    let mut service = wrapped(&seen, &layer);
    let ready = ServiceExt::<Request<tonic::body::Body>>::ready(&mut service).await;
    let future = ready.unwrap().call(call(Some("2S")));
    let mut future = std::pin::pin!(future);
    let first = std::future::poll_fn(|cx| Poll::Ready(future.as_mut().poll(cx))).await;
    assert!(first.is_pending(), "waiting for the refresh");
    assert_eq!(seen.lock().unwrap().len(), 1, "the first attempt, rejected");
    crate::test_support::settle().await; // the refresh starts

    // The refresh ends at 1 s and the deadline passes at 2 s before the
    // call is polled again.
    tokio::time::advance(Duration::from_secs(3)).await;
    crate::test_support::settle().await;
    assert_eq!(
        layer.handle().stats().refresh_successes,
        1,
        "the token has come"
    );
    let error = future.await.unwrap_err();

    assert!(error.is::<tonic::TimeoutExpired>(), "{error}");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "no retry past the deadline: {seen:?}");
}

/// Found in review: a call due with no time left was not sent, and the
/// instance polled ready for it kept its readiness: with a tonic
/// `Channel`, a slot of its buffer, held until the caller's next call.
#[tokio::test(start_paused = true)]
async fn a_call_not_sent_past_its_deadline_lets_go_of_its_buffer_slot() {
    let seen = Seen::default();
    let layer = layer(Duration::from_secs(1));
    // One slot, as a channel whose buffer is full but for one call.
    let buffered = BoxCloneService::new(tower::buffer::Buffer::new(channel(&seen), 1));
    let mut first = with_token_refresh(buffered, &layer);
    let mut second = first.clone();
    let ready = ServiceExt::<Request<tonic::body::Body>>::ready(&mut first).await;
    let error = ready.unwrap().call(call(Some("0n"))).await.unwrap_err();
    assert!(error.is::<tonic::TimeoutExpired>(), "{error}");

    let slot = ServiceExt::<Request<tonic::body::Body>>::ready(&mut second);
    let slot = tokio::time::timeout(Duration::from_secs(5), slot).await;
    assert!(slot.is_ok(), "the slot is still held by the call not sent");
    assert!(seen.lock().unwrap().is_empty(), "nothing was sent");
}

#[tokio::test(start_paused = true)]
async fn calls_without_a_timeout_or_with_one_that_does_not_parse_pass_untouched() {
    let seen = Seen::default();
    let layer = layer(Duration::from_secs(3));
    let client = wrapped(&seen, &layer);
    client.clone().oneshot(call(None)).await.unwrap();
    client.oneshot(call(Some("10 seconds"))).await.unwrap();

    let seen = seen.lock().unwrap().clone();
    let expected = [None, None, Some("10 seconds")];
    assert_eq!(seen, expected.map(|v| v.map(HeaderValue::from_static)));
}

#[test]
fn without_timers_a_call_goes_on_without_its_deadline() {
    let runtime = runtime_without_timers();
    let seen = Seen::default();
    // There every refresh fails (see the crate docs' "Runtime"): start
    // with the token the channel accepts.
    let layer = TokenRefreshLayer::builder(refresh_fn(|_| async {
        Ok::<_, RefreshError>(TokenSet::new("new"))
    }))
    .classifier(Grpc)
    .initial_tokens(TokenSet::new("new"))
    .build();
    let before = panics_on_this_thread();
    let response = runtime.block_on(wrapped(&seen, &layer).oneshot(call(Some("2S"))));
    // tokio panicked (caught) where the deadline's timer was set.
    assert!(
        panics_on_this_thread() > before,
        "the first call tried a timer"
    );

    assert_eq!(response.unwrap().headers()["grpc-status"], "0");
    // Not rewritten: with no timer to end the call, the channel's and the
    // server's are the only ones.
    assert_eq!(
        *seen.lock().unwrap(),
        [Some(HeaderValue::from_static("2S"))]
    );

    // The runtime is remembered: the calls after the first do not panic.
    let panics = panics_on_this_thread();
    for _ in 0..3 {
        let response = runtime.block_on(wrapped(&seen, &layer).oneshot(call(Some("2S"))));
        assert_eq!(response.unwrap().headers()["grpc-status"], "0");
    }
    assert_eq!(
        panics_on_this_thread(),
        panics,
        "no further panic after the first call"
    );
}

#[tokio::test(start_paused = true)]
async fn a_layer_failure_is_not_taken_for_a_timeout() {
    let layer = TokenRefreshLayer::builder(refresh_fn(|_| async {
        Err::<TokenSet, _>(RefreshError::terminal("refresh token revoked"))
    }))
    .classifier(Grpc)
    .build();
    let result = wrapped(&Seen::default(), &layer)
        .oneshot(call(Some("2S")))
        .await;

    assert!(expect_error(result.map(drop)).is_reauth_required());
}
