//! The variants of the hot-path benchmark, shared by `hot_path` (criterion,
//! wall-clock) and `hot_path_count` (fixed iterations, for instruction
//! counts under callgrind).

use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, USER_AGENT};
use http::{HeaderValue, Request, Response};
use http_body_util::Empty;
use tower::{Layer, Service, ServiceBuilder};
use tower_http::auth::AddAuthorizationLayer;
use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};

const TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJiZW5jaCJ9.c2lnbmF0dXJl";

/// A service that answers at once, whatever the body type.
#[derive(Clone, Copy)]
struct Noop;

impl<B> Service<Request<B>> for Noop {
    type Response = Response<()>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<()>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        drop(req);
        std::future::ready(Ok(Response::new(())))
    }
}

/// Built the same way inside every timed loop.
fn request() -> Request<Empty<Bytes>> {
    Request::get("https://api.example.com/v1/items?page=2")
        .header(ACCEPT, "application/json")
        .header(USER_AGENT, "bench/1.0")
        .body(Empty::new())
        .expect("valid request")
}

struct NoopWaker;

impl Wake for NoopWaker {
    fn wake(self: Arc<Self>) {}
}

/// Polls `ready` and the response future once each: everything here
/// completes synchronously, so no executor is involved in the measurement.
fn drive<S, B>(service: &mut S, request: Request<B>, cx: &mut Context<'_>)
where
    S: Service<Request<B>>,
    S::Error: std::fmt::Debug,
{
    assert!(matches!(service.poll_ready(cx), Poll::Ready(Ok(()))));
    let future = pin!(service.call(request));
    match future.poll(cx) {
        Poll::Ready(Ok(response)) => drop(std::hint::black_box(response)),
        _ => panic!("the no-op service answers at once"),
    }
}

/// Keeps a copy of the request head until the response arrives.
#[derive(Clone)]
struct HeadCopy<S>(S);

impl<S, B> Service<Request<B>> for HeadCopy<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = KeepHead<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let mut head = Request::new(());
        *head.method_mut() = req.method().clone();
        *head.uri_mut() = req.uri().clone();
        *head.version_mut() = req.version();
        *head.headers_mut() = req.headers().clone();
        *head.extensions_mut() = req.extensions().clone();
        KeepHead {
            future: self.0.call(req),
            _head: head,
        }
    }
}

pin_project_lite::pin_project! {
    struct KeepHead<F> {
        #[pin]
        future: F,
        _head: Request<()>,
    }
}

impl<F: Future> Future for KeepHead<F> {
    type Output = F::Output;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.project().future.poll(cx)
    }
}

/// A bearer layer over a lock, formatting the header on every request.
#[derive(Clone)]
struct Locked<S, L> {
    inner: S,
    token: Arc<L>,
}

trait ReadToken: Send + Sync {
    fn bearer(&self) -> HeaderValue;
}

impl ReadToken for RwLock<String> {
    fn bearer(&self) -> HeaderValue {
        let token = self.read().unwrap();
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap()
    }
}

impl ReadToken for Mutex<String> {
    fn bearer(&self) -> HeaderValue {
        let token = self.lock().unwrap();
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap()
    }
}

impl<S, L, B> Service<Request<B>> for Locked<S, L>
where
    S: Service<Request<B>>,
    L: ReadToken,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        req.headers_mut().insert(AUTHORIZATION, self.token.bearer());
        self.inner.call(req)
    }
}

fn token_layer(retry: bool) -> TokenRefreshLayer {
    TokenRefreshLayer::builder(refresh_fn(|_| async {
        Ok::<_, RefreshError>(TokenSet::new(TOKEN))
    }))
    .initial_tokens(TokenSet::new(TOKEN).with_expires_in(Duration::from_secs(3600)))
    .reactive_retry(retry)
    .build()
}

/// The runtime the layer lives on, as in real use: multi-thread, as a hyper
/// client's runtime usually is, so the layer's watcher task vouches for
/// fresh tokens and a fresh-token request reads no clock.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_time()
        .build()
        .expect("runtime")
}

/// Lets `runtime` run for a moment (the watcher task starts watching).
pub fn settle(runtime: &tokio::runtime::Runtime) {
    runtime.block_on(tokio::time::sleep(Duration::from_millis(5)));
}

/// Every variant, by name, as a closure running `n` requests through it.
/// `settle` lets the runtime run (the layer's watcher task) before the loop.
pub fn run_variant(name: &str, n: usize, settle: impl Fn()) {
    let waker = Waker::from(Arc::new(NoopWaker));
    let mut cx = Context::from_waker(&waker);
    macro_rules! run {
        ($service:expr) => {{
            let mut service = $service;
            drive(&mut service, request(), &mut cx);
            settle();
            for _ in 0..n {
                drive(&mut service, request(), &mut cx);
            }
        }};
    }
    match name {
        "bare" => run!(Noop),
        "static_header" => run!(ServiceBuilder::new()
            .layer(AddAuthorizationLayer::bearer(TOKEN))
            .service(Noop)),
        "static_header_with_head_copy" => run!(ServiceBuilder::new()
            .layer(AddAuthorizationLayer::bearer(TOKEN))
            .service(HeadCopy(Noop))),
        "rwlock" => run!(Locked {
            inner: Noop,
            token: Arc::new(RwLock::new(TOKEN.to_owned())),
        }),
        "mutex" => run!(Locked {
            inner: Noop,
            token: Arc::new(Mutex::new(TOKEN.to_owned())),
        }),
        "token_refresh" => run!(token_layer(true).layer(Noop)),
        "token_refresh_no_retry" => run!(token_layer(false).layer(Noop)),
        other => panic!("unknown variant {other}"),
    }
}

/// The variant names, in report order.
pub const VARIANTS: [&str; 7] = [
    "bare",
    "static_header",
    "static_header_with_head_copy",
    "rwlock",
    "mutex",
    "token_refresh",
    "token_refresh_no_retry",
];
