//! What the layer records of a request body, and for how long.

use http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::{Service, ServiceBuilder, ServiceExt};

use super::apis::api_keeping_requests;
use crate::test_support::body::{TestBody, Tx};
use crate::test_support::failing;
use crate::{refresh_fn, RefreshError, ReplayBody, TokenRefreshLayer, TokenSet};

/// A streamed upload answered before its body is read (as a server that
/// answers early does, or an HTTP/2 stream whose response comes first):
/// once the layer has accepted the response it keeps no retry clone, and
/// what the transport reads afterwards is not recorded.
#[tokio::test]
async fn a_body_read_after_the_response_was_accepted_is_not_recorded() {
    read_after_the_answer(Some(StatusCode::OK), false).await;
}

/// Found in review: the same, with the finished response future kept
/// alive: the retry copy it held kept the body recording until it was
/// dropped. An accepted response lets go of the copy at once.
#[tokio::test]
async fn a_body_read_while_the_finished_response_future_is_kept_is_not_recorded() {
    read_after_the_answer(Some(StatusCode::OK), true).await;
}

/// Found in a later review: the same after the first attempt failed with
/// an error (a timeout below the layer, its connection still sending the
/// body): no retry follows an error either, yet the copy kept recording.
#[tokio::test]
async fn a_body_read_after_the_first_attempt_failed_is_not_recorded() {
    read_after_the_answer(None, true).await;
}

/// Sends a streamed upload that the API answers with `status` (or fails,
/// for `None`) before reading it, keeping the finished response future
/// alive if `keep_future` (as a hand-rolled combinator may; `oneshot` and
/// `.await` drop it at once), then reads the body as the transport would:
/// nothing is recorded.
async fn read_after_the_answer(status: Option<StatusCode>, keep_future: bool) {
    let (api, kept) = api_keeping_requests::<TestBody>(status);
    let layer = TokenRefreshLayer::builder(refresh_fn(|_| async {
        Ok::<_, RefreshError>(TokenSet::new("access"))
    }))
    .initial_tokens(TokenSet::new("access"))
    .build();
    let mut client = ServiceBuilder::new().layer(layer).service(api);
    let (tx, upload) = TestBody::channel();
    let mut future = Box::pin(client.ready().await.unwrap().call(Request::new(upload)));
    let answer = (&mut future).await;
    assert_eq!(answer.ok().map(|response| response.status()), status);
    let future = keep_future.then_some(future);

    let mut body = kept
        .lock()
        .unwrap()
        .pop()
        .expect("the request the API kept")
        .into_body();
    assert!(!body.is_capped(), "nothing read yet");
    tx.data("streamed after the response");
    drop(tx);
    let read = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(read, "streamed after the response");
    assert!(
        body.is_capped(),
        "kept for a retry that can no longer happen"
    );
    drop(future);
}

/// Found in review: a request that ended in an error kept its body in the
/// finished response future: a caller keeping that future (a hand-rolled
/// combinator) kept the caller's source of the body open, and a proxied
/// upload's sender never saw its receiver go. Here the first token never
/// comes: the body was never sent.
#[tokio::test(start_paused = true)]
async fn a_request_whose_first_token_never_came_lets_go_of_its_body() {
    let (source, _) = failing(|| RefreshError::terminal("invalid_grant"));
    let layer = TokenRefreshLayer::builder(source).build();
    let (api, _) = api_keeping_requests::<TestBody>(Some(StatusCode::OK));
    let mut client = ServiceBuilder::new().layer(layer).service(api);
    let (tx, upload) = TestBody::channel();

    ends_needing_reauth_and_lets_go_of_the_body(&mut client, upload, &tx).await;
}

/// The same for a request rejected after its body was partly read, whose
/// refresh then failed: the copy kept for its retry held the rest of the
/// caller's body.
#[tokio::test(start_paused = true)]
async fn a_rejected_request_whose_refresh_failed_lets_go_of_its_body() {
    let (source, _) = failing(|| RefreshError::terminal("invalid_grant"));
    let layer = TokenRefreshLayer::builder(source)
        .initial_tokens(TokenSet::new("revoked"))
        .build();
    // Reads one chunk, then rejects the token, dropping the rest.
    let api = tower::service_fn(|request: Request<ReplayBody<TestBody>>| async move {
        let mut body = request.into_body();
        body.frame().await;
        let response = http::Response::builder().status(StatusCode::UNAUTHORIZED);
        Ok::<_, std::convert::Infallible>(response.body(String::new()).unwrap())
    });
    let mut client = ServiceBuilder::new().layer(layer).service(api);
    let (tx, upload) = TestBody::channel();
    tx.data("first chunk");

    ends_needing_reauth_and_lets_go_of_the_body(&mut client, upload, &tx).await;
}

/// Sends `upload` through `client`, where it ends in re-authentication
/// required, keeping the finished response future (as a hand-rolled
/// combinator may): that future no longer holds the body `tx` feeds.
async fn ends_needing_reauth_and_lets_go_of_the_body<S, R>(
    client: &mut S,
    upload: TestBody,
    tx: &Tx,
) where
    S: Service<Request<TestBody>, Response = R, Error = crate::BoxError>,
{
    let mut future = Box::pin(client.ready().await.unwrap().call(Request::new(upload)));
    let Err(error) = (&mut future).await else {
        panic!("answered, though no token could come");
    };
    let error = error
        .downcast_ref::<crate::Error>()
        .expect("the crate's error");
    assert!(error.is_reauth_required(), "{error}");
    assert!(tx.is_closed(), "the finished future let go of the body");
    drop(future);
}
