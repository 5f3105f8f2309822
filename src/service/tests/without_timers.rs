//! On a runtime built without timers no wait can be bounded, so the
//! response future takes none that could last for ever: every request ends
//! with a response or an error.

use std::sync::atomic::Ordering::SeqCst;

use http::{Request, Response, StatusCode};
use tower::{ServiceBuilder, ServiceExt};

use super::apis::{api_keeping_requests, revoked_then_fresh, send_through};
use crate::test_support::body::{data, TestBody};
use crate::test_support::{
    expect_error, get, post, runtime_without_timers, settle, TestBody as RequestBody,
};
use crate::{ReplayBody, TokenRefreshLayer};
use http_body::Body as _;

/// A layer whose token the API rejects. Its refresh would succeed, but
/// without timers every refresh fails (crate docs, "Runtime").
fn layer() -> TokenRefreshLayer {
    revoked_then_fresh().build()
}

#[test]
fn a_rejection_is_the_answer_while_the_first_attempt_still_holds_the_body() {
    runtime_without_timers().block_on(async {
        // The API answers 401 at once and keeps the request, body and all.
        let (api, kept) = api_keeping_requests::<RequestBody>(Some(StatusCode::UNAUTHORIZED));
        let client = ServiceBuilder::new().layer(layer()).service(api);
        let request = tokio::spawn(client.oneshot(post("payload")));
        settle().await;

        assert!(
            request.is_finished(),
            "waited for a body that is never released"
        );
        let response = request.await.unwrap().expect("the rejection");
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(kept.lock().unwrap().len(), 1, "not retried");
    });
}

#[test]
fn a_rejection_whose_body_never_ends_is_not_waited_for() {
    runtime_without_timers().block_on(async {
        let (tx, calls, request) = send_through(layer());
        settle().await;

        // The rejection's sender stays open: its body never ends.
        assert!(
            request.is_finished(),
            "waited for a rejection that never ends"
        );
        let error = expect_error(request.await.unwrap());
        assert!(error.is_refresh_failed(), "{error}");
        assert_eq!(calls.load(SeqCst), 1, "no retry without a refresh");
        drop(tx);
    });
}

/// Found in review of an earlier version, which returned every rejection
/// whose body had not been read yet, unread: over HTTP/1 and HTTP/2 a 401
/// with a small JSON body is one, so none was refreshed or retried. A body
/// that is all there is read at once, as on any runtime.
#[test]
fn a_rejection_whose_body_has_arrived_is_read_and_the_refresh_still_runs() {
    runtime_without_timers().block_on(async {
        let api = tower::service_fn(|_: Request<ReplayBody<RequestBody>>| async {
            let body = TestBody::new(vec![data("{\"error\":\"invalid_token\"}")]);
            assert!(
                !body.is_end_stream(),
                "not known to be over before it is read"
            );
            let rejection = Response::builder().status(StatusCode::UNAUTHORIZED);
            Ok::<_, std::convert::Infallible>(rejection.body(body).unwrap())
        });
        let client = ServiceBuilder::new().layer(layer()).service(api);
        let error = expect_error(client.oneshot(get()).await);
        // The refresh ran (and failed, as every refresh does there).
        assert!(error.is_refresh_failed(), "{error}");
    });
}
