//! Requests sent later than their call (held for a first token, or
//! retried) are sent through a service polled ready when they are due:
//! the instance held with the request, or a clone of the one kept for
//! retries. One that is not ready then is waited for.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use http::{Request, StatusCode};
use tokio::task::JoinHandle;
use tower::{Service, ServiceBuilder};

use crate::test_support::{expect_error, get, issuer, post, send, settle, Api, Issuer, TestBody};
use crate::{
    refresh_fn, BoxError, RefreshError, ReplayBody, TokenRefresh, TokenRefreshLayer, TokenSet,
};

/// Ready while its gate (shared by every clone) is open.
#[derive(Clone)]
struct Gated {
    api: Api,
    gate: Gate,
}

#[derive(Clone, Default)]
struct Gate {
    open: Arc<AtomicBool>,
    waiting: Arc<Mutex<Vec<Waker>>>,
}

impl Gate {
    fn set(&self, open: bool) {
        self.open.store(open, SeqCst);
        if open {
            self.waiting.lock().unwrap().drain(..).for_each(Waker::wake);
        }
    }
}

impl Service<Request<ReplayBody<TestBody>>> for Gated {
    type Response = <Api as Service<Request<ReplayBody<TestBody>>>>::Response;
    type Error = <Api as Service<Request<ReplayBody<TestBody>>>>::Error;
    type Future = <Api as Service<Request<ReplayBody<TestBody>>>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.gate.open.load(SeqCst) {
            return Service::<Request<ReplayBody<TestBody>>>::poll_ready(&mut self.api, cx);
        }
        self.gate.waiting.lock().unwrap().push(cx.waker().clone());
        Poll::Pending
    }

    fn call(&mut self, req: Request<ReplayBody<TestBody>>) -> Self::Future {
        assert!(self.gate.open.load(SeqCst), "called while not ready");
        self.api.call(req)
    }
}

/// `layer` over `api` behind an open gate.
fn gated(layer: TokenRefreshLayer, api: &Api) -> (TokenRefresh<Gated>, Gate) {
    let gate = Gate::default();
    gate.set(true);
    let service = Gated {
        api: api.clone(),
        gate: gate.clone(),
    };
    (ServiceBuilder::new().layer(layer).service(service), gate)
}

/// Closes the gate, then lets the issuer's token arrive (it answers after
/// a second).
async fn token_arrives_while_closed(gate: &Gate, issuer: &Issuer) {
    gate.set(false);
    tokio::time::advance(Duration::from_secs(2)).await;
    settle().await;
    assert_eq!(issuer.calls(), 1, "the token has arrived");
}

/// The spawned request's answer once the gate reopens; bounded on the
/// paused clock, so a lost wake-up fails the test instead of hanging it.
async fn answered(
    request: JoinHandle<Result<(StatusCode, String), BoxError>>,
) -> (StatusCode, String) {
    let answer = tokio::time::timeout(Duration::from_secs(60), request).await;
    answer.expect("answered once ready").unwrap().unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_request_held_for_its_first_token_waits_for_the_service_to_be_ready_again() {
    let api = Api::default();
    let (source, issuer) = issuer(&api, None, Duration::from_secs(1));
    let (client, gate) = gated(TokenRefreshLayer::builder(source).build(), &api);

    // Called while ready, then held: no token yet.
    let request = tokio::spawn(send(&client, get()));
    settle().await;
    token_arrives_while_closed(&gate, &issuer).await;
    assert_eq!(api.calls(), 0, "not sent while the service is not ready");

    gate.set(true);
    let (status, _) = answered(request).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(api.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_retry_waits_for_the_service_to_be_ready() {
    let api = Api::default();
    api.accept("old");
    let (source, issuer) = issuer(&api, None, Duration::from_secs(1));
    let layer = TokenRefreshLayer::builder(source)
        .initial_tokens(TokenSet::new("old"))
        .build();
    let handle = layer.handle();
    let (client, gate) = gated(layer, &api);
    api.revoke("old");

    let request = tokio::spawn(send(&client, post("replayed")));
    settle().await;
    assert_eq!(api.calls(), 1, "the first attempt, rejected");
    token_arrives_while_closed(&gate, &issuer).await;
    assert_eq!(api.calls(), 1, "no retry while the service is not ready");

    gate.set(true);
    let (status, body) = answered(request).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.starts_with("Bearer tok-1|replayed"), "{body}");
    assert_eq!((api.calls(), handle.stats().retries), (2, 1));
}

/// Found in review: a request held with its token until the token's
/// mandatory window (its service not ready for that long) went out with
/// it, even past its expiry, only to be rejected. It waits for the
/// refresh, as a request arriving then does: inside the window, and past
/// the expiry.
#[tokio::test(start_paused = true)]
async fn a_request_held_into_its_tokens_mandatory_window_waits_for_the_refresh() {
    // tok-1 is dated from its call at 0 s and lives 10 s; the mandatory
    // window (a tenth) opens at 9 s. Held until 9.5 s, then until 13 s.
    for held in [Duration::from_millis(7500), Duration::from_secs(11)] {
        let api = Api::default();
        let (source, issuer) = issuer(&api, Some(Duration::from_secs(10)), Duration::from_secs(1));
        let layer = TokenRefreshLayer::builder(source)
            .background_refresh(false)
            .build();
        let (client, gate) = gated(layer, &api);

        let request = tokio::spawn(send(&client, get()));
        settle().await;
        token_arrives_while_closed(&gate, &issuer).await; // tok-1, at 2 s
        tokio::time::advance(held).await;

        gate.set(true);
        let (status, body) = answered(request).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.starts_with("Bearer tok-2|"), "held {held:?}: {body}");
        assert_eq!(api.calls(), 1, "sent once, with the new token");
        assert_eq!(issuer.calls(), 2);
    }
}

/// Found in review: a request held with a token went out with it even
/// when a newer one had come meanwhile and could not be used (expired, or
/// rejected by another request's answer): a token older than one already
/// unusable. It waits for the refresh instead, as a request arriving then
/// does.
#[tokio::test(start_paused = true)]
async fn a_request_ready_after_a_newer_token_turned_unusable_waits_for_the_refresh() {
    let api = Api::default();
    let (source, issuer) = issuer(&api, None, Duration::from_secs(1));
    let layer = TokenRefreshLayer::builder(source).build();
    let handle = layer.handle();
    let (client, gate) = gated(layer, &api);

    let request = tokio::spawn(send(&client, get()));
    settle().await;
    token_arrives_while_closed(&gate, &issuer).await; // tok-1
    api.accept("set-by-hand");
    let expired = TokenSet::new("set-by-hand").with_expires_in(Duration::ZERO);
    handle.set_tokens(expired).unwrap();

    gate.set(true);
    let (status, body) = answered(request).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.starts_with("Bearer tok-2|"), "{body}");
    assert_eq!(issuer.calls(), 2, "refreshed for the held request");
}

/// A source whose first refresh brings tok-1 (accepted by `api`) after a
/// second, and whose next ones are refused for good; with its call count.
fn tok_1_then_refused_for_good(api: &Api) -> (impl crate::Refresh, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let accept = api.clone();
    let source = refresh_fn(move |_| {
        let first = counter.fetch_add(1, SeqCst) == 0;
        let api = accept.clone();
        async move {
            if !first {
                return Err(RefreshError::terminal("revoked"));
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            api.accept("tok-1");
            Ok(TokenSet::new("tok-1").with_refresh_token("r"))
        }
    });
    (source, calls)
}

/// A request sent while the layer holds `initial` (none, or a token the
/// API does not accept), held until tok-1 has come and, with its service
/// not ready, been rejected by another request's answer and its refresh
/// refused for good. Once the service is ready, the request must fail with
/// the typed error, the API having seen only its `sent_before` attempts.
async fn held_while_its_token_is_refused(
    initial: Option<TokenSet>,
    request: Request<TestBody>,
    sent_before: usize,
) {
    let api = Api::default();
    let (source, calls) = tok_1_then_refused_for_good(&api);
    let mut builder = TokenRefreshLayer::builder(source).min_refresh_interval(Duration::ZERO);
    if let Some(initial) = initial {
        builder = builder.initial_tokens(initial);
    }
    let layer = builder.build();
    let handle = layer.handle();
    let (client, gate) = gated(layer, &api);

    let request = tokio::spawn(send(&client, request));
    settle().await;
    assert_eq!(api.calls(), sent_before);
    gate.set(false);
    tokio::time::advance(Duration::from_secs(2)).await;
    settle().await; // tok-1 came; the request holds it
    api.revoke("tok-1");
    let bearer = handle.bearer().await.unwrap();
    assert_eq!(bearer.expose(), "tok-1");
    let refused = handle.bearer_after_rejection(&bearer).await.unwrap_err();
    assert!(refused.is_reauth_required(), "{refused}");

    gate.set(true);
    let answer = tokio::time::timeout(Duration::from_secs(60), request).await;
    let error = expect_error(answer.expect("answered once ready").unwrap());
    assert!(error.is_reauth_required(), "{error}");
    assert_eq!(
        api.calls(),
        sent_before,
        "not sent with the token known rejected"
    );
    assert_eq!(calls.load(SeqCst), 2);
}

/// Found in review (twice): a request held with a token that another
/// request's answer then rejected, and whose refresh then failed for good,
/// went out with it anyway, only to be rejected. It fails with the
/// failure's typed error, as a request arriving then does, unsent: a first
/// send, and a retry (whose rejection was returned as it was).
#[tokio::test(start_paused = true)]
async fn a_request_held_with_a_token_rejected_meanwhile_whose_refresh_failed_is_not_sent() {
    // Held for its first token, then for its service.
    held_while_its_token_is_refused(None, get(), 0).await;
}

#[tokio::test(start_paused = true)]
async fn a_retry_held_with_a_token_rejected_meanwhile_whose_refresh_failed_is_not_sent() {
    // Rejected ("old" is not accepted), then held for tok-1 and its service.
    let old = TokenSet::new("old").with_refresh_token("r0");
    held_while_its_token_is_refused(Some(old), post("replayed"), 1).await;
}
