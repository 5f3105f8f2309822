//! A gRPC server on loopback, built from tonic's own parts: a
//! `tonic::transport::Server`, an `Interceptor` that checks the bearer
//! token against the [`TokenStore`] of the identity server, and a
//! hand-written service that routes by path to `tonic::server::Grpc`.
//!
//! Service `test.Echo`:
//!
//! - `Unary` (unary): answers with the access token the call carried.
//! - `Collect` (client streaming): answers with the request messages joined
//!   by `|`.
//! - `Watch` (server streaming): sends `tick 0`, `tick 1`, …, as many as
//!   the request message says, then waits for [`GrpcServer::recheck_streams`]
//!   and checks its token again: revoked, the stream ends with
//!   UNAUTHENTICATED in its trailers; still valid, it sends `done` and ends.
//!
//! A call with a missing, unknown, expired or revoked token is answered by
//! the interceptor, before any handler runs, with `Status::unauthenticated`:
//! a trailers-only response, as every gRPC server sends it.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyDataStream;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::body::Body;
use tonic::server::Grpc;
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;
use tonic::{Request, Response, Status, Streaming};
use tower::{Service, ServiceExt};

use crate::support::gate::{Gate, Hold};
use crate::support::tokens::{Issuer, TokenStore};
use crate::wire::{feed, Feed, RawCodec};

pub const UNARY: &str = "/test.Echo/Unary";
pub const COLLECT: &str = "/test.Echo/Collect";
pub const WATCH: &str = "/test.Echo/Watch";

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A running gRPC server; stops accepting when dropped.
pub struct GrpcServer {
    addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

/// What the server has seen so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GrpcStats {
    /// Calls received, each attempt counted.
    pub calls: u64,
    /// Calls the interceptor answered UNAUTHENTICATED (trailers-only).
    pub unauthenticated: u64,
    /// `Unary` calls answered OK.
    pub unary_ok: u64,
    /// `Collect` calls answered OK.
    pub collect_ok: u64,
    /// `Watch` streams started.
    pub watches: u64,
    /// `Watch` streams ended with UNAUTHENTICATED in their trailers.
    pub watches_cut: u64,
}

struct State {
    tokens: TokenStore,
    /// The `grpc-timeout` of each call received, in order.
    timeouts: Mutex<Vec<Option<String>>>,
    gate: Gate,
    stats: watch::Sender<GrpcStats>,
    /// Bumped by `recheck_streams`: open `Watch` streams check their token.
    recheck: watch::Sender<u64>,
}

impl State {
    fn count(&self, update: impl FnOnce(&mut GrpcStats)) {
        self.stats.send_modify(update);
    }
}

impl GrpcServer {
    /// Starts a server on `127.0.0.1:0` that accepts the access tokens
    /// `issuer` issues.
    pub async fn start(issuer: &impl Issuer) -> Self {
        let state = Arc::new(State {
            tokens: issuer.token_store(),
            timeouts: Mutex::default(),
            gate: Gate::default(),
            stats: watch::channel(GrpcStats::default()).0,
            recheck: watch::channel(0).0,
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local address");
        let service = Held {
            inner: InterceptedService::new(
                Router {
                    state: Arc::clone(&state),
                },
                Auth {
                    state: Arc::clone(&state),
                },
            ),
            state: Arc::clone(&state),
        };
        let task = tokio::spawn(async move {
            Server::builder()
                // The default (hyper's 200) would queue part of a burst
                // client-side while the first 200 are held.
                .max_concurrent_streams(4096)
                .serve_with_incoming(service, TcpIncoming::from(listener))
                .await
                .expect("gRPC server failed");
        });
        Self { addr, state, task }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A channel connected to this server.
    pub async fn connect(&self) -> tonic::transport::Channel {
        tonic::transport::Channel::from_shared(self.endpoint())
            .expect("valid endpoint")
            .connect()
            .await
            .expect("connect")
    }

    /// Revokes every access token issued so far; returns how many were
    /// still valid.
    pub fn revoke_current(&self) -> usize {
        self.state.tokens.revoke_access_tokens()
    }

    /// Holds the next `n` calls, before their token is checked, until the
    /// returned [`Hold`] is released or dropped.
    pub fn hold_next(&self, n: usize) -> Hold {
        self.state.gate.hold_next(n)
    }

    /// Lets every open `Watch` stream check its token again.
    pub fn recheck_streams(&self) {
        self.state.recheck.send_modify(|epoch| *epoch += 1);
    }

    /// The `grpc-timeout` header of each call received so far, as sent.
    pub fn timeouts(&self) -> Vec<Option<String>> {
        self.state.timeouts.lock().unwrap().clone()
    }

    pub fn stats(&self) -> GrpcStats {
        *self.state.stats.borrow()
    }

    /// Waits until the counters satisfy `condition`.
    pub async fn until(&self, condition: impl Fn(&GrpcStats) -> bool) {
        let mut stats = self.state.stats.subscribe();
        stats
            .wait_for(|s| condition(s))
            .await
            .expect("server state kept");
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Counts every call, then holds it at the gate if one is armed: the
/// outermost service, so a held call has not been checked yet.
#[derive(Clone)]
struct Held<S> {
    inner: S,
    state: Arc<State>,
}

impl<S, R> Service<http::Request<Body>> for Held<S>
where
    S: Service<http::Request<Body>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is awaited per call, after the gate.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let inner = self.inner.clone();
        let state = Arc::clone(&self.state);
        let timeout = request.headers().get("grpc-timeout");
        let timeout = timeout.map(|value| value.to_str().expect("ASCII").to_owned());
        state.timeouts.lock().unwrap().push(timeout);
        Box::pin(async move {
            state.count(|s| s.calls += 1);
            state.gate.pass().await;
            inner.oneshot(request).await
        })
    }
}

/// The token check, as a tonic interceptor.
#[derive(Clone)]
struct Auth {
    state: Arc<State>,
}

impl Interceptor for Auth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        match bearer(&request) {
            Some(token) if self.state.tokens.access_token_is_valid(&token) => Ok(request),
            _ => {
                self.state.count(|s| s.unauthenticated += 1);
                Err(Status::unauthenticated("invalid or revoked access token"))
            }
        }
    }
}

fn bearer<T>(request: &Request<T>) -> Option<String> {
    let value = request.metadata().get("authorization")?.to_str().ok()?;
    value.strip_prefix("Bearer ").map(str::to_owned)
}

/// Routes by path, as generated server code does.
#[derive(Clone)]
struct Router {
    state: Arc<State>,
}

impl Service<http::Request<Body>> for Router {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let state = Arc::clone(&self.state);
        Box::pin(async move {
            let mut grpc = Grpc::new(RawCodec::<Bytes>::default());
            let path = request.uri().path().to_owned();
            let response = match path.as_str() {
                UNARY => {
                    let handler = tower::service_fn(move |r| unary(Arc::clone(&state), r));
                    grpc.unary(handler, request).await
                }
                COLLECT => {
                    let handler = tower::service_fn(move |r| collect(Arc::clone(&state), r));
                    grpc.client_streaming(handler, request).await
                }
                WATCH => {
                    let handler = tower::service_fn(move |r| watch(Arc::clone(&state), r));
                    grpc.server_streaming(handler, request).await
                }
                _ => Status::unimplemented(path).into_http(),
            };
            Ok(response)
        })
    }
}

async fn unary(state: Arc<State>, request: Request<Bytes>) -> Result<Response<Bytes>, Status> {
    let token = bearer(&request).expect("checked by the interceptor");
    state.count(|s| s.unary_ok += 1);
    Ok(Response::new(Bytes::from(token)))
}

async fn collect(
    state: Arc<State>,
    request: Request<Streaming<Bytes>>,
) -> Result<Response<Bytes>, Status> {
    let mut messages = request.into_inner();
    let mut received = Vec::new();
    while let Some(message) = messages.message().await? {
        received.push(message);
    }
    state.count(|s| s.collect_ok += 1);
    Ok(Response::new(Bytes::from(received.join(&b'|'))))
}

async fn watch(
    state: Arc<State>,
    request: Request<Bytes>,
) -> Result<Response<BodyDataStream<Feed<Status>>>, Status> {
    let token = bearer(&request).expect("checked by the interceptor");
    let ticks: usize = std::str::from_utf8(request.get_ref())
        .ok()
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| Status::invalid_argument("expected a number of ticks"))?;
    state.count(|s| s.watches += 1);
    let (tx, stream) = feed();
    let mut recheck = state.recheck.subscribe();
    let epoch = *recheck.borrow_and_update();
    tokio::spawn(async move {
        for i in 0..ticks {
            let _ = tx.send(Ok(Bytes::from(format!("tick {i}"))));
        }
        if recheck.wait_for(|e| *e > epoch).await.is_err() {
            return;
        }
        if state.tokens.access_token_is_valid(&token) {
            let _ = tx.send(Ok(Bytes::from_static(b"done")));
        } else {
            state.count(|s| s.watches_cut += 1);
            let _ = tx.send(Err(Status::unauthenticated("access token revoked")));
        }
    });
    Ok(Response::new(stream))
}
