//! Fixtures of the storm bench: an HTTP/2 API server that can hold
//! requests, an HTTP/2 client, and a timing service that tells the time a
//! request spent in the client from the time the layer added.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{Request, Response, StatusCode};
use http_body_util::{Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tower::Service;
use tower_token_refresh::ReplayBody;

use crate::support::tokens::TokenStore;

/// The client every storm request goes through (inside the layer).
pub type H2Client = Client<HttpConnector, ReplayBody<Empty<Bytes>>>;

/// An HTTP/2-only (prior knowledge) hyper-util client: one connection
/// carries the whole storm.
pub fn h2_client() -> H2Client {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// `GET url`, carrying `attempts` for [`Timed`] if given.
pub fn get(url: &str, attempts: Option<AttemptTime>) -> Request<Empty<Bytes>> {
    let mut request = Request::get(url).body(Empty::new()).expect("valid request");
    if let Some(attempts) = attempts {
        request.extensions_mut().insert(attempts);
    }
    request
}

/// Nanoseconds a request's attempts spent in the client. A request
/// extension: the layer copies extensions into the retry, so both attempts
/// add to the same total.
#[derive(Clone, Default)]
pub struct AttemptTime(pub Arc<AtomicU64>);

/// Adds the time from `call` to the response to the request's
/// [`AttemptTime`].
#[derive(Clone)]
pub struct Timed<S>(S);

impl<S> Timed<S> {
    pub fn new(inner: S) -> Self {
        Self(inner)
    }
}

impl<S, B> Service<Request<B>> for Timed<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = TimedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let attempts = request.extensions().get::<AttemptTime>().cloned();
        TimedFuture {
            future: self.0.call(request),
            started: Instant::now(),
            attempts,
        }
    }
}

pin_project_lite::pin_project! {
    pub struct TimedFuture<F> {
        #[pin]
        future: F,
        started: Instant,
        attempts: Option<AttemptTime>,
    }
}

impl<F: Future> Future for TimedFuture<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let output = std::task::ready!(this.future.poll(cx));
        if let Some(attempts) = this.attempts {
            let nanos = this.started.elapsed().as_nanos() as u64;
            attempts.0.fetch_add(nanos, Ordering::Relaxed);
        }
        Poll::Ready(output)
    }
}

/// How long each refresh took, as the refresher saw it.
#[derive(Clone, Default)]
pub struct RefreshLog(Arc<Mutex<Vec<Duration>>>);

impl RefreshLog {
    pub fn record(&self, took: Duration) {
        self.0.lock().unwrap().push(took);
    }

    pub fn last(&self) -> Option<Duration> {
        self.0.lock().unwrap().last().copied()
    }
}

/// The `q`-quantile of sorted `values` (nearest rank).
pub fn percentile(sorted: &[Duration], q: f64) -> Duration {
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// An API server over HTTP/1 or HTTP/2 (prior knowledge) that accepts the
/// current access tokens of a [`TokenStore`] (`200`, else `401`) and, while
/// holding, parks every request before checking its token.
pub struct HoldingApi {
    addr: SocketAddr,
    state: Arc<State>,
    accept: JoinHandle<()>,
}

struct State {
    tokens: TokenStore,
    holding: AtomicBool,
    held: AtomicUsize,
    released: watch::Sender<bool>,
}

impl HoldingApi {
    /// Serves on a fresh loopback port, up to `streams` concurrent HTTP/2
    /// streams per connection.
    pub async fn start(tokens: TokenStore, streams: u32) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let state = Arc::new(State {
            tokens,
            holding: AtomicBool::new(false),
            held: AtomicUsize::new(0),
            released: watch::channel(false).0,
        });
        let shared = Arc::clone(&state);
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let state = Arc::clone(&shared);
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let state = Arc::clone(&state);
                        async move { Ok::<_, Infallible>(handle(&state, request).await) }
                    });
                    let mut builder = auto::Builder::new(TokioExecutor::new());
                    builder.http2().max_concurrent_streams(streams);
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            state,
            accept,
        }
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Parks every request from now on until [`release`](Self::release).
    pub fn hold(&self) {
        self.state.held.store(0, Ordering::SeqCst);
        self.state.released.send_replace(false);
        self.state.holding.store(true, Ordering::SeqCst);
    }

    /// Returns once `n` requests are parked.
    pub async fn wait_for_held(&self, n: usize) {
        while self.state.held.load(Ordering::SeqCst) < n {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Stops holding and lets every parked request go on.
    pub fn release(&self) {
        self.state.holding.store(false, Ordering::SeqCst);
        self.state.released.send_replace(true);
    }
}

impl Drop for HoldingApi {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn handle(state: &State, request: Request<Incoming>) -> Response<Full<Bytes>> {
    if state.holding.load(Ordering::SeqCst) {
        let mut released = state.released.subscribe();
        state.held.fetch_add(1, Ordering::SeqCst);
        let _ = released.wait_for(|released| *released).await;
    }
    let token = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let status = if token.is_some_and(|t| state.tokens.access_token_is_valid(t)) {
        StatusCode::OK
    } else {
        StatusCode::UNAUTHORIZED
    };
    let mut response = Response::new(Full::new(Bytes::from_static(b"{\"ok\":true}")));
    *response.status_mut() = status;
    response
}
