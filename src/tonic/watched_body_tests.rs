//! UNAUTHENTICATED in a response's trailers, told to the layer by
//! [`WatchedBody`]: the token the call went out with is refreshed for the
//! next call, and the call itself is not retried.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full};
use tower::util::BoxCloneService;
use tower::{Service, ServiceExt};

use super::tests::Channel;
use super::{with_token_refresh, GrpcTokenRefresh, IntoTonicBody, WatchedBody};
use crate::classify::Grpc;
use crate::{refresh_fn, Builder, RefreshError, TokenHandle, TokenRefreshLayer, TokenSet};

/// A channel that answers every call with one message and then `code` in
/// its trailers, as a server stream ends; counts the calls.
fn channel(code: tonic::Code, calls: &Arc<AtomicUsize>) -> Channel {
    let calls = Arc::clone(calls);
    BoxCloneService::new(tower::service_fn(move |_: Request<tonic::body::Body>| {
        calls.fetch_add(1, Ordering::SeqCst);
        // What a server's status becomes: its headers, as trailers.
        let status = tonic::Status::new(code, "stream over");
        let trailers = status
            .into_http::<tonic::body::Body>()
            .into_parts()
            .0
            .headers;
        let body = Full::new(Bytes::from_static(b"tick"))
            .with_trailers(async move { Some(Ok::<_, Infallible>(trailers)) });
        async move { Ok(Response::new(tonic::body::Body::new(body))) }
    }))
}

const AN_HOUR: Duration = Duration::from_secs(3600);

/// A layer whose refreshes bring `new`, with no tokens yet.
fn layer_without_tokens() -> Builder<Grpc> {
    TokenRefreshLayer::builder(refresh_fn(|_| async {
        Ok::<_, RefreshError>(TokenSet::new("new").with_expires_in(AN_HOUR))
    }))
    .classifier(Grpc)
}

/// A layer starting from `old`, whose refreshes bring `new` at once.
fn layer() -> TokenRefreshLayer<Grpc> {
    super::tests::layer(Duration::ZERO)
}

/// The body's trailers, read to the end.
async fn trailers_of(response: Response<WatchedBody<tonic::body::Body>>) -> HeaderMap {
    let collected = response.into_body().collect().await.expect("a body");
    collected.trailers().cloned().expect("trailers")
}

/// The token the next call would go out with, and the rejections,
/// refreshes and retries counted so far.
async fn afterwards(handle: &TokenHandle) -> (String, u64, u64, u64) {
    let next = handle.bearer().await.expect("a token");
    let stats = handle.stats();
    let counts = (stats.rejections, stats.refreshes, stats.retries);
    (next.expose().to_owned(), counts.0, counts.1, counts.2)
}

fn call() -> Request<tonic::body::Body> {
    super::tests::call(None)
}

/// A client through `layer` to a channel ending every call with `code`,
/// the layer's handle, and the channel's count of calls.
fn client_ending_with(
    code: tonic::Code,
    layer: &TokenRefreshLayer<Grpc>,
) -> (GrpcTokenRefresh<Channel>, TokenHandle, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let client = with_token_refresh(channel(code, &calls), layer);
    (client, layer.handle(), calls)
}

#[tokio::test]
async fn unauthenticated_in_the_trailers_refreshes_the_token_the_call_went_out_with() {
    let layer = layer();
    let (client, handle, calls) = client_ending_with(tonic::Code::Unauthenticated, &layer);

    let response = client.oneshot(call()).await.expect("a response");
    assert_eq!(
        handle.stats().rejections,
        0,
        "nothing known before the trailers"
    );
    let trailers = trailers_of(response).await;

    // The caller gets the status, and the call is not sent again.
    assert_eq!(trailers["grpc-status"], "16");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // The token it went out with is not handed out again.
    assert_eq!(afterwards(&handle).await, ("new".into(), 1, 1, 0));
}

#[tokio::test]
async fn streams_cut_together_share_one_refresh() {
    let layer = layer();
    let (client, handle, calls) = client_ending_with(tonic::Code::Unauthenticated, &layer);

    // All sent with the old token, then all cut, their trailers read in
    // turn: the first starts the refresh, the next three find it running,
    // and the last four find it landed (their token replaced).
    let mut responses = Vec::new();
    for _ in 0..8 {
        responses.push(client.clone().oneshot(call()).await.unwrap());
    }
    for (read, response) in responses.into_iter().enumerate() {
        if read == 4 {
            handle.bearer().await.unwrap();
        }
        assert_eq!(trailers_of(response).await["grpc-status"], "16");
    }

    // Only the four read while the old token was current count.
    assert_eq!(afterwards(&handle).await, ("new".into(), 4, 1, 0));
    assert_eq!(calls.load(Ordering::SeqCst), 8);
}

#[tokio::test]
async fn a_token_a_refresh_just_brought_is_not_refreshed_again() {
    let layer = layer_without_tokens().build();
    let (client, handle, _) = client_ending_with(tonic::Code::Unauthenticated, &layer);

    // The call's token came from a refresh moments ago.
    let trailers = trailers_of(client.oneshot(call()).await.unwrap()).await;

    assert_eq!(trailers["grpc-status"], "16");
    assert_eq!(afterwards(&handle).await, ("new".into(), 1, 1, 0));
}

#[tokio::test]
async fn a_stream_dropped_before_its_trailers_tells_nothing() {
    let layer = layer();
    let (client, handle, _) = client_ending_with(tonic::Code::Unauthenticated, &layer);

    let mut body = client.oneshot(call()).await.unwrap().into_body();
    let first = body.frame().await.expect("a frame").expect("no error");
    assert_eq!(first.into_data().expect("a message"), "tick");
    drop(body);

    assert_eq!(afterwards(&handle).await, ("old".into(), 0, 0, 0));
}

#[tokio::test]
async fn other_statuses_in_the_trailers_change_nothing() {
    for code in [tonic::Code::Ok, tonic::Code::PermissionDenied] {
        let layer = layer();
        let (client, handle, _) = client_ending_with(code, &layer);

        let trailers = trailers_of(client.oneshot(call()).await.unwrap()).await;

        assert_eq!(trailers["grpc-status"], (code as i32).to_string());
        let expected = ("old".into(), 0, 0, 0);
        assert_eq!(afterwards(&handle).await, expected, "{code:?}");
    }
}

#[tokio::test]
async fn the_trailers_of_a_call_whose_token_was_replaced_meanwhile_change_nothing() {
    let layer = layer();
    let (client, handle, _) = client_ending_with(tonic::Code::Unauthenticated, &layer);

    let response = client.oneshot(call()).await.unwrap();
    // Signed in again while the stream ran.
    let later = TokenSet::new("signed-in").with_expires_in(AN_HOUR);
    handle.set_tokens(later).unwrap();
    let trailers = trailers_of(response).await;

    assert_eq!(trailers["grpc-status"], "16");
    assert_eq!(afterwards(&handle).await, ("signed-in".into(), 0, 0, 0));
}

#[tokio::test]
async fn a_watched_body_does_not_show_the_header_it_holds() {
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = layer();
    let mut channel = IntoTonicBody::reporting_to(channel(tonic::Code::Ok, &calls), layer.handle());
    // A header not marked sensitive, as a caller might set one by hand.
    let mut request = call();
    let visible = HeaderValue::from_static("Bearer visible");
    request.headers_mut().insert(AUTHORIZATION, visible);

    let ready = ServiceExt::<Request<tonic::body::Body>>::ready(&mut channel).await;
    let response = ready.unwrap().call(request).await.unwrap();
    let shown = format!("{:?} {:?}", response.body(), channel);

    assert!(shown.contains("reporting: true"), "{shown}");
    assert!(!shown.contains("visible"), "{shown}");
}

#[tokio::test]
async fn a_stream_ending_in_an_error_tells_nothing_and_lets_go_of_the_layer() {
    let layer = layer();
    let handle = layer.handle();
    let reset = BoxCloneService::new(tower::service_fn(|_: Request<tonic::body::Body>| {
        // A stream reset by the network: no trailers, an error instead.
        let (sender, body) = http_body_util::channel::Channel::<Bytes, tonic::Status>::new(1);
        sender.abort(tonic::Status::unavailable("connection reset"));
        async move { Ok::<_, Infallible>(Response::new(tonic::body::Body::new(body))) }
    }));
    let client: GrpcTokenRefresh<Channel> = with_token_refresh(reset, &layer);

    let mut body = client.oneshot(call()).await.unwrap().into_body();
    assert!(format!("{body:?}").contains("reporting: true"));
    let ended = body.frame().await.expect("a frame");

    assert!(ended.is_err(), "the stream's error reaches the caller");
    // The body no longer holds the layer's handle or the sent header.
    assert!(format!("{body:?}").contains("reporting: false"), "{body:?}");
    assert_eq!(afterwards(&handle).await, ("old".into(), 0, 0, 0));
}

/// Found in review: a call whose status came in its headers (read by the
/// layer as the answer, and counted) was counted again when its trailers
/// carried the same status.
#[tokio::test]
async fn a_status_in_the_headers_is_not_counted_again_from_the_trailers() {
    let channel: Channel =
        BoxCloneService::new(tower::service_fn(|_: Request<tonic::body::Body>| {
            let status = tonic::Status::unauthenticated("revoked");
            let headers = status
                .into_http::<tonic::body::Body>()
                .into_parts()
                .0
                .headers;
            let trailers = headers.clone();
            let body = Full::new(Bytes::new())
                .with_trailers(async move { Some(Ok::<_, Infallible>(trailers)) });
            let mut response = Response::new(tonic::body::Body::new(body));
            *response.headers_mut() = headers;
            async move { Ok(response) }
        }));
    // A refresh that never lands, so that the token the trailers name is
    // still the current one.
    let layer = TokenRefreshLayer::builder(refresh_fn(|_| {
        std::future::pending::<Result<TokenSet, RefreshError>>()
    }))
    .classifier(Grpc)
    .reactive_retry(false)
    .initial_tokens(TokenSet::new("old").with_expires_in(AN_HOUR))
    .build();
    let handle = layer.handle();
    let client = with_token_refresh(channel, &layer);

    let trailers = trailers_of(client.oneshot(call()).await.unwrap()).await;

    assert_eq!(trailers["grpc-status"], "16");
    assert_eq!(handle.stats().rejections, 1, "counted once");
}
