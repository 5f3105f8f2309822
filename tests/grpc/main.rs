//! The layer under tonic, against a real gRPC server on loopback.
//!
//! A `tonic::transport::Channel` wrapped with
//! `tower_token_refresh::tonic::with_token_refresh` carries a client written
//! as generated code is (`client.rs`, over a hand-written raw-bytes codec in
//! `wire.rs`). The server (`server.rs`) checks tokens with a tonic
//! interceptor against the Cognito-style identity server of
//! `tests/support`, which the layer refreshes through with the `cognito`
//! preset. Revoking tokens at the server makes it answer UNAUTHENTICATED.
#![cfg(feature = "tonic")]

// `pub`: the fixtures are shared by several test binaries, each using a
// subset of them.
#[path = "../support/mod.rs"]
pub mod support;

mod client;
mod server;
mod wire;

use std::collections::HashSet;
use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, TE};
use http::StatusCode;
use http_body::Body as _;
use http_body_util::{BodyExt, Full};
use tonic::transport::Channel;
use tonic::Code;
use tower::ServiceExt;
use tower_token_refresh::classify::{ClassifyRejection, Grpc};
use tower_token_refresh::tonic::{token_error, with_token_refresh, GrpcTokenRefresh};
use tower_token_refresh::{TokenHandle, TokenRefreshLayer, TokenSet};

use client::EchoClient;
use server::{GrpcServer, UNARY};
use support::bounded;
use support::{CognitoClient, IdentityServer, DEMO_PASSWORD, DEMO_USER};
use wire::feed;

/// Concurrent calls in the revocation burst.
const BURST: usize = 256;

/// The servers, the layer's handle, and a client over a layered channel
/// that starts with the tokens of one login.
struct Setup {
    identity: IdentityServer,
    server: GrpcServer,
    handle: TokenHandle,
    client: EchoClient<GrpcTokenRefresh<Channel>>,
    login: TokenSet,
}

async fn setup() -> Setup {
    setup_starting_from(|login| login).await
}

/// As [`setup`], the layer starting from the tokens `initial` makes of the
/// login's.
async fn setup_starting_from(initial: impl FnOnce(TokenSet) -> TokenSet) -> Setup {
    let identity = IdentityServer::builder().start().await;
    let server = GrpcServer::start(&identity).await;
    let cognito = CognitoClient::new(identity.base_url());
    let login = cognito
        .login(DEMO_USER, DEMO_PASSWORD)
        .await
        .expect("login");
    // Tokens handed in are never held back by min_refresh_interval: the
    // first rejection of the login token refreshes at once.
    let layer = TokenRefreshLayer::builder(cognito.refresher())
        .classifier(Grpc)
        .initial_tokens(initial(login.clone()))
        .build();
    let channel = server.connect().await;
    Setup {
        handle: layer.handle(),
        client: EchoClient::new(with_token_refresh(channel, &layer)),
        identity,
        server,
        login,
    }
}

fn current_token(handle: &TokenHandle) -> String {
    let tokens = handle.tokens().expect("a token");
    tokens.access_token().expose().to_owned()
}

/// The layer's counters against the servers' own: every refresh reached
/// the identity server, every UNAUTHENTICATED the server sent (before a
/// call ran, or in a stream's trailers) was seen as a rejection, and every
/// call beyond the `calls_made` first attempts was a retry.
fn assert_counters_agree(
    handle: &TokenHandle,
    identity: &IdentityServer,
    server: &GrpcServer,
    calls_made: u64,
) {
    let stats = handle.stats();
    let grpc = server.stats();
    assert_eq!(stats.refreshes, identity.stats().refresh_calls, "refreshes");
    let unauthenticated = grpc.unauthenticated + grpc.watches_cut;
    assert_eq!(stats.rejections, unauthenticated, "rejections");
    assert_eq!(stats.retries, grpc.calls - calls_made, "retries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tonic_rejects_a_bad_token_with_a_trailers_only_response() {
    bounded(async {
        let identity = IdentityServer::builder().start().await;
        let server = GrpcServer::start(&identity).await;
        // The bare channel: what the server sends, before any layer.
        let channel = server.connect().await;
        let request = http::Request::post(UNARY)
            .header(CONTENT_TYPE, "application/grpc")
            .header(TE, "trailers")
            .header(AUTHORIZATION, "Bearer never-issued")
            // One empty message: flag 0, length 0.
            .body(tonic::body::Body::new(Full::new(Bytes::from_static(
                &[0; 5],
            ))))
            .expect("valid request");

        let response = channel.oneshot(request).await.expect("response");

        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["grpc-status"], "16");
        assert!(Grpc.is_rejection(response.status(), response.headers()));
        let mut body = response.into_body();
        assert!(body.is_end_stream(), "the headers ended the stream");
        assert!(body.frame().await.is_none(), "no message, no trailers");
        let grpc = server.stats();
        assert_eq!((grpc.calls, grpc.unauthenticated, grpc.unary_ok), (1, 1, 0));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_calls_carry_the_current_token() {
    bounded(async {
        let Setup {
            identity,
            server,
            handle,
            mut client,
            login,
        } = setup().await;

        for _ in 0..3 {
            let response = client.unary(Bytes::from_static(b"hi")).await.expect("call");
            assert_eq!(response.into_inner(), login.access_token().expose());
        }
        handle.force_refresh().await.expect("refresh");
        let refreshed = current_token(&handle);
        assert!(
            refreshed != login.access_token().expose(),
            "the revoked token handed out again"
        );
        let response = client.unary(Bytes::from_static(b"hi")).await.expect("call");
        assert_eq!(response.into_inner(), refreshed);

        let grpc = server.stats();
        assert_eq!((grpc.calls, grpc.unary_ok, grpc.unauthenticated), (4, 4, 0));
        let stats = handle.stats();
        assert_eq!(
            (stats.refreshes, stats.rejections, stats.retries),
            (1, 0, 0)
        );
        assert_counters_agree(&handle, &identity, &server, 4);
    })
    .await;
}

/// A `grpc-timeout` as tonic writes it (`n`, `u` or `m`).
fn grpc_timeout(value: &str) -> Duration {
    let (amount, unit) = value.split_at(value.len() - 1);
    let amount: u64 = amount.parse().expect("digits");
    match unit {
        "n" => Duration::from_nanos(amount),
        "u" => Duration::from_micros(amount),
        "m" => Duration::from_millis(amount),
        _ => panic!("unit {unit:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_call_tells_the_server_only_what_is_left_of_its_timeout() {
    bounded(async {
        let Setup {
            identity: _running,
            server,
            mut client,
            ..
        } = setup().await;
        server.revoke_current();
        let hold = server.hold_next(1);

        let call = tokio::spawn(async move {
            let mut request = tonic::Request::new(Bytes::from_static(b"hi"));
            request.set_timeout(Duration::from_secs(10));
            client.unary(request).await
        });
        hold.arrived(1).await;
        // The first attempt spends this long at the server before it is
        // rejected: the retry must not get it back.
        tokio::time::sleep(Duration::from_millis(300)).await;
        hold.release();
        call.await.expect("call task").expect("retried call");

        let timeouts = server.timeouts();
        let [first, retry] = timeouts.as_slice() else {
            panic!("two attempts, got {timeouts:?}");
        };
        let first = grpc_timeout(first.as_deref().expect("sent"));
        let retry = grpc_timeout(retry.as_deref().expect("sent"));
        // What tonic wrote (10 s), less what passed before the first send
        // (any amount: a loaded machine may take its time).
        assert!(first <= Duration::from_secs(10), "{first:?}");
        // The 300 ms held at the server, at least, came off the retry's.
        let most = first.checked_sub(Duration::from_millis(300));
        assert!(
            most.is_some_and(|most| retry <= most),
            "{retry:?} after {first:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_of_unary_calls_after_revocation_refreshes_once_and_all_succeed() {
    bounded(async {
        let Setup {
            identity,
            server,
            handle,
            client,
            ..
        } = setup().await;

        // All of them reach the server with the login token, then it is
        // revoked and they are checked: every one is rejected.
        let hold = server.hold_next(BURST);
        let calls: Vec<_> = (0..BURST)
            .map(|i| {
                let mut client = client.clone();
                tokio::spawn(async move { client.unary(Bytes::from(format!("call {i}"))).await })
            })
            .collect();
        hold.arrived(BURST).await;
        assert_eq!(server.revoke_current(), 1, "the login token was live");
        hold.release();

        let mut tokens_seen = HashSet::new();
        for (i, call) in calls.into_iter().enumerate() {
            let response = call
                .await
                .expect("call task panicked")
                .unwrap_or_else(|status| panic!("call {i} failed: {status:?}"));
            tokens_seen.insert(response.into_inner());
        }

        let refreshed = Bytes::from(current_token(&handle));
        assert_eq!(
            tokens_seen,
            HashSet::from([refreshed]),
            "every retry carried the new token"
        );
        assert_eq!(identity.stats().refresh_calls, 1);
        let stats = handle.stats();
        let burst = BURST as u64;
        assert_eq!(stats.refreshes, 1);
        assert_eq!((stats.rejections, stats.retries), (burst, burst));
        // The answers come back one by one over one HTTP/2 connection: those
        // handled after the refresh landed are retried without joining it;
        // the others waited for it.
        assert_eq!(stats.stale_rejections + stats.waited, burst);
        let grpc = server.stats();
        assert_eq!(
            (grpc.calls, grpc.unauthenticated, grpc.unary_ok),
            (2 * burst, burst, burst)
        );
        assert_counters_agree(&handle, &identity, &server, burst);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_stream_is_retried_with_its_messages_after_revocation() {
    bounded(async {
        let Setup {
            identity,
            server,
            handle,
            client,
            ..
        } = setup().await;
        assert_eq!(server.revoke_current(), 1, "the login token was live");

        let (messages, stream) = feed::<Infallible>();
        messages.send(Ok(Bytes::from_static(b"alpha"))).unwrap();
        let mut caller = client.clone();
        let call = tokio::spawn(async move { caller.collect(stream).await });
        // The first attempt is rejected while its stream is still open; the
        // other messages are sent only once the retry has reached the
        // server, so it must replay "alpha" and then read on.
        server
            .until(|s| s.unauthenticated == 1 && s.calls == 2)
            .await;
        messages.send(Ok(Bytes::from_static(b"beta"))).unwrap();
        messages.send(Ok(Bytes::from_static(b"gamma"))).unwrap();
        drop(messages);

        let response = call
            .await
            .expect("call task panicked")
            .expect("retried call");
        assert_eq!(response.into_inner(), "alpha|beta|gamma");
        let stats = handle.stats();
        assert_eq!(
            (stats.refreshes, stats.rejections, stats.retries),
            (1, 1, 1)
        );
        let grpc = server.stats();
        assert_eq!(
            (grpc.calls, grpc.unauthenticated, grpc.collect_ok),
            (2, 1, 1)
        );
        assert_counters_agree(&handle, &identity, &server, 1);
    })
    .await;
}

/// A server stream cut short with UNAUTHENTICATED in its trailers, after
/// it delivered messages, is not retried: the caller has its messages and
/// gets the status. But its token is refreshed there and then, and the
/// next call goes out with the new one, never rejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_stream_cut_by_a_revocation_is_not_retried_and_the_next_call_is_not_rejected() {
    bounded(async {
        let Setup {
            identity,
            server,
            handle,
            mut client,
            login,
        } = setup().await;

        let mut ticks = client
            .watch(Bytes::from_static(b"2"))
            .await
            .expect("stream opened")
            .into_inner();
        for expected in ["tick 0", "tick 1"] {
            let tick = ticks.message().await.expect("a message");
            assert_eq!(tick.as_deref(), Some(expected.as_bytes()));
        }
        assert_eq!(server.revoke_current(), 1, "the login token was live");
        server.recheck_streams();

        let status = ticks
            .message()
            .await
            .expect_err("the stream ends in a status");
        assert_eq!(status.code(), Code::Unauthenticated);
        assert_eq!(status.message(), "access token revoked");
        let grpc = server.stats();
        assert_eq!((grpc.calls, grpc.watches, grpc.watches_cut), (1, 1, 1));
        assert_eq!(
            grpc.unauthenticated, 0,
            "rejected in trailers, not by the interceptor"
        );
        // Told to the layer as the trailers were read: refreshed without a
        // retry, and the revoked token is not handed out again.
        let refreshed = handle.bearer().await.expect("a token").expose().to_owned();
        assert!(
            refreshed != login.access_token().expose(),
            "the revoked token handed out again"
        );
        let stats = handle.stats();
        assert_eq!(
            (stats.refreshes, stats.rejections, stats.retries),
            (1, 1, 0)
        );
        assert_counters_agree(&handle, &identity, &server, 1);

        // The next call carries the new token at once.
        let response = client.unary(Bytes::from_static(b"hi")).await.expect("call");
        assert_eq!(response.into_inner(), refreshed);
        let stats = handle.stats();
        assert_eq!(
            (stats.refreshes, stats.rejections, stats.retries),
            (1, 1, 0)
        );
        assert_eq!(server.stats().unauthenticated, 0);
        assert_counters_agree(&handle, &identity, &server, 2);
    })
    .await;
}

/// A call the layer fails (here: the refresh credential is dead) reaches
/// the caller as tonic makes it, `Code::Unknown`, and `token_error` gets
/// the typed error back, to tell "sign in again" from "try later".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_the_layer_fails_carries_its_typed_error() {
    bounded(async {
        let Setup {
            identity,
            server,
            mut client,
            ..
        } = setup_starting_from(|_login| {
            TokenSet::new("expired")
                .with_refresh_token("revoked")
                .with_expires_in(std::time::Duration::ZERO)
        })
        .await;

        let status = client
            .unary(Bytes::from_static(b"hi"))
            .await
            .expect_err("no token to send");
        assert_eq!(status.code(), Code::Unknown);
        let error = token_error(&status).expect("the layer's error");
        assert!(error.is_reauth_required(), "{error}");
        assert_eq!(server.stats().calls, 0, "nothing was sent");
        assert_eq!(identity.stats().refresh_calls, 1);
    })
    .await;
}

/// What the module docs advise for gRPC: the channel's origin given to the
/// client above the wrapped channel. The layer then sees each call's scheme
/// and host, so an allow-list of origins and the plain-http check apply to
/// gRPC calls as to any other; without it, calls are path-only and an
/// allow-list matches none of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_given_to_the_client_lets_the_layer_judge_each_call() {
    bounded(async {
        let identity = IdentityServer::builder().start().await;
        let server = GrpcServer::start(&identity).await;
        let cognito = CognitoClient::new(identity.base_url());
        let login = cognito.login(DEMO_USER, DEMO_PASSWORD).await.unwrap();
        let token = login.access_token().expose().to_owned();
        let endpoint: http::Uri = server.endpoint().parse().unwrap();
        let layer = TokenRefreshLayer::builder(cognito.refresher())
            .classifier(Grpc)
            .initial_tokens(login)
            .allowed_origins([endpoint.clone()])
            .build();
        let channel = server.connect().await;
        let wrapped = || with_token_refresh(channel.clone(), &layer);

        let mut with_origin = EchoClient::with_origin(wrapped(), endpoint);
        let answer = with_origin.unary(Bytes::from_static(b"hi")).await;
        assert_eq!(answer.expect("sent with the token").into_inner(), token);

        let mut path_only = EchoClient::new(wrapped());
        let status = path_only
            .unary(Bytes::from_static(b"hi"))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "no token: {status}");

        // Shown a plain-http origin on another host, the layer refuses to
        // send the token, whatever the channel connects to.
        let remote = "http://10.1.2.3:50051".parse().unwrap();
        let open = TokenRefreshLayer::builder(cognito.refresher())
            .classifier(Grpc)
            .initial_tokens(TokenSet::new("never-sent"))
            .build();
        let mut plain = EchoClient::with_origin(with_token_refresh(channel.clone(), &open), remote);
        let calls_before = server.stats().calls;
        let status = plain.unary(Bytes::from_static(b"hi")).await.unwrap_err();
        let error = token_error(&status).expect("the layer's error");
        assert!(error.is_insecure_transport(), "{error}");
        assert_eq!(server.stats().calls, calls_before, "nothing was sent");
    })
    .await;
}

/// No token the identity server issued reaches the logs (every event at
/// TRACE level, this crate's and tonic's and hyper's) or the `Debug` of the
/// client, its channel, the handle, a response or a status, through a
/// call, a rejected call retried, and a stream cut by UNAUTHENTICATED in
/// its trailers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_reaches_the_logs_or_debug_output_through_tonic() {
    let logs = support::logs::Captured::everything();
    let (identity, printed) = bounded(async {
        let Setup {
            identity,
            server,
            handle,
            mut client,
            ..
        } = setup().await;
        let mut printed = Vec::new();
        // (`Unary` answers with the token it got: its message is left out.)
        let response = client.unary(Bytes::from_static(b"hi")).await.expect("call");
        printed.push(format!("{:?}", response.metadata()));
        server.revoke_current();
        let response = client
            .unary(Bytes::from_static(b"hi"))
            .await
            .expect("retried");
        printed.push(format!("{:?}", response.metadata()));

        let mut ticks = client
            .watch(Bytes::from_static(b"1"))
            .await
            .expect("stream opened")
            .into_inner();
        ticks.message().await.expect("a message");
        server.revoke_current();
        server.recheck_streams();
        let status = ticks.message().await.expect_err("cut");
        assert_eq!(status.code(), Code::Unauthenticated);
        printed.push(format!("{status:?} {status}"));
        printed.push(format!("{client:?}"));
        printed.push(format!(
            "{handle:?} {:?} {:?}",
            handle.tokens(),
            handle.bearer().await
        ));
        // The scenario did what it claims, so the search below means
        // something. (The token the stream was cut for had come moments
        // before: counted, and not refreshed again within
        // `min_refresh_interval`.)
        let stats = handle.stats();
        assert_eq!(
            (stats.refreshes, stats.rejections, stats.retries),
            (1, 2, 1)
        );
        assert_counters_agree(&handle, &identity, &server, 3);
        (identity, printed)
    })
    .await;

    let logs = logs.text();
    assert!(logs.contains("token refresh started"), "{logs}");
    let issued = identity.tokens().issued();
    // The login's access and refresh tokens, and the refreshed access token
    // (this issuer keeps its refresh tokens).
    assert_eq!(issued.len(), 3, "tokens issued");
    for token in &issued {
        assert!(!logs.contains(token.as_str()), "a token is in the logs");
        for text in &printed {
            assert!(
                !text.contains(token.as_str()),
                "a token was printed: {text}"
            );
        }
    }
}
