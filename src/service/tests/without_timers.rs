//! On a runtime built without timers no wait can be bounded, so the
//! response future takes none that could last for ever: every request ends
//! with a response or an error.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use tower::{ServiceBuilder, ServiceExt};

use crate::test_support::body::TestBody;
use crate::test_support::{expect_error, get, post, settle, TestBody as RequestBody};
use crate::{refresh_fn, RefreshError, ReplayBody, TokenRefreshLayer, TokenSet};

/// A current-thread runtime without `enable_time`.
fn runtime_without_timers() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime without timers")
}

/// A layer whose token the API rejects. Its refresh would succeed, but
/// without timers every refresh fails (crate docs, "Runtime").
fn layer() -> TokenRefreshLayer {
    let source = refresh_fn(|_| async { Ok::<_, RefreshError>(TokenSet::new("fresh")) });
    TokenRefreshLayer::builder(source)
        .initial_tokens(TokenSet::new("revoked"))
        .build()
}

#[test]
fn a_rejection_is_the_answer_while_the_first_attempt_still_holds_the_body() {
    runtime_without_timers().block_on(async {
        // The API answers 401 at once and keeps the request, body and all,
        // as a transport still sending a duplex body would.
        let kept = Arc::new(Mutex::new(Vec::new()));
        let api = tower::service_fn({
            let kept = Arc::clone(&kept);
            move |req: Request<ReplayBody<RequestBody>>| {
                kept.lock().unwrap().push(req);
                let rejection = Response::builder().status(StatusCode::UNAUTHORIZED);
                async move {
                    Ok::<_, std::convert::Infallible>(rejection.body(TestBody::empty()).unwrap())
                }
            }
        });
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
fn a_rejection_still_arriving_is_the_answer_not_read_and_not_dropped() {
    runtime_without_timers().block_on(async {
        let (tx, rejection) = TestBody::channel();
        let rejection = Arc::new(Mutex::new(Some(rejection)));
        let calls = Arc::new(AtomicUsize::new(0));
        let api = tower::service_fn({
            let calls = Arc::clone(&calls);
            move |_: Request<ReplayBody<RequestBody>>| {
                calls.fetch_add(1, SeqCst);
                let body = rejection.lock().unwrap().take().expect("one call");
                let rejection = Response::builder().status(StatusCode::UNAUTHORIZED);
                async move { Ok::<_, std::convert::Infallible>(rejection.body(body).unwrap()) }
            }
        });
        let client = ServiceBuilder::new().layer(layer()).service(api);
        let request = tokio::spawn(client.oneshot(get()));
        settle().await;

        // Its body has not ended: waiting for it could last for ever, and
        // dropping it unread would reset an HTTP/2 stream.
        assert!(
            request.is_finished(),
            "waited for a rejection still arriving"
        );
        let response = request.await.unwrap().expect("the rejection");
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(calls.load(SeqCst), 1, "not retried");
        // `Tx::data` asserts that the body is still there to be read.
        tx.data("{\"error\":\"invalid_token\"}");
        drop(tx);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "{\"error\":\"invalid_token\"}");
    });
}

#[test]
fn a_rejection_that_has_ended_still_leads_to_the_refresh_and_its_error() {
    runtime_without_timers().block_on(async {
        let client = ServiceBuilder::new()
            .layer(layer())
            .service(tower::service_fn(
                |_: Request<ReplayBody<RequestBody>>| async {
                    let rejection = Response::builder().status(StatusCode::UNAUTHORIZED);
                    Ok::<_, std::convert::Infallible>(rejection.body(TestBody::empty()).unwrap())
                },
            ));
        let error = expect_error(client.oneshot(get()).await);
        assert!(error.is_refresh_failed(), "{error}");
    });
}
