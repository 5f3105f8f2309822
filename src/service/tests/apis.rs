//! The fake APIs and layer that several of these test files share.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

use http::{Request, Response, StatusCode};
use tokio::task::JoinHandle;
use tower::{ServiceBuilder, ServiceExt};

use crate::test_support::body::{TestBody, Tx};
use crate::test_support::{get, TestBody as RequestBody};
use crate::{refresh_fn, BoxError, RefreshError, ReplayBody, TokenRefreshLayer, TokenSet};

/// A layer holding `revoked`, a token the APIs here reject, whose refresh
/// gives `fresh`, which they accept.
pub(super) fn revoked_then_fresh() -> crate::Builder {
    let source = refresh_fn(|_| async { Ok::<_, RefreshError>(TokenSet::new("fresh")) });
    TokenRefreshLayer::builder(source).initial_tokens(TokenSet::new("revoked"))
}

/// An API that accepts only `Bearer fresh` and answers the first request
/// it rejects with `rejection` as the body; counts the requests it gets.
pub(super) fn api_rejecting_with(
    rejection: TestBody,
    calls: &Arc<AtomicUsize>,
) -> impl tower::Service<
    Request<ReplayBody<RequestBody>>,
    Response = Response<TestBody>,
    Error = std::convert::Infallible,
    Future = impl Send,
> + Clone
       + Send {
    let rejection = Arc::new(Mutex::new(Some(rejection)));
    let calls = Arc::clone(calls);
    tower::service_fn(move |req: Request<ReplayBody<RequestBody>>| {
        calls.fetch_add(1, SeqCst);
        let accepted = req.headers()["authorization"] == "Bearer fresh";
        let (status, body) = if accepted {
            (StatusCode::OK, TestBody::empty())
        } else {
            let body = rejection.lock().unwrap().take().expect("one rejection");
            (StatusCode::UNAUTHORIZED, body)
        };
        async move { Ok(Response::builder().status(status).body(body).unwrap()) }
    })
}

/// The request in flight, as spawned.
pub(super) type InFlight = JoinHandle<Result<Response<TestBody>, crate::BoxError>>;

/// Sends a GET through `layer` to [`api_rejecting_with`] a rejection whose
/// body is fed through the returned [`Tx`]; also returns the API's request
/// count.
pub(super) fn send_through(layer: TokenRefreshLayer) -> (Tx, Arc<AtomicUsize>, InFlight) {
    let (tx, rejection) = TestBody::channel();
    let calls = Arc::new(AtomicUsize::new(0));
    let client = ServiceBuilder::new()
        .layer(layer)
        .service(api_rejecting_with(rejection, &calls));
    (tx, calls, tokio::spawn(client.oneshot(get())))
}

/// The requests an [`api_keeping_requests`] was sent, bodies unread.
pub(super) type Kept<B> = Arc<Mutex<Vec<Request<ReplayBody<B>>>>>;

/// An API that answers every request at once, with `status` (or, for
/// `None`, an error, as a transport's timeout) and keeps the request, body
/// and all, unread: as a transport still sending a streamed or duplex body
/// does.
pub(super) fn api_keeping_requests<B: Send + 'static>(
    status: Option<StatusCode>,
) -> (
    impl tower::Service<
            Request<ReplayBody<B>>,
            Response = Response<TestBody>,
            Error = BoxError,
            Future = impl Send,
        > + Clone
        + Send,
    Kept<B>,
) {
    let kept: Kept<B> = Arc::default();
    let api = tower::service_fn({
        let kept = Arc::clone(&kept);
        move |req: Request<ReplayBody<B>>| {
            kept.lock().unwrap().push(req);
            async move {
                let status = status.ok_or("timed out while the body was being sent")?;
                let response = Response::builder().status(status);
                Ok(response.body(TestBody::empty()).unwrap())
            }
        }
    });
    (api, kept)
}
