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
struct Locked<S, L> {
    inner: S,
    token: Arc<L>,
}

// By hand: a derive would require `L: Clone`, and clones share the lock.
impl<S: Clone, L> Clone for Locked<S, L> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            token: Arc::clone(&self.token),
        }
    }
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

/// Runs `n` requests through the variant `name` on each of `threads`
/// threads, each with its own clone of one service (so one layer, one token
/// state, shared by all), as tower services are shared between tasks.
/// `settle` lets the runtime run (the layer's watcher task) before timing.
pub fn run_variant(name: &str, n: usize, threads: usize, settle: impl Fn()) {
    match name {
        "bare" => run(Noop, n, threads, settle),
        "static_header" => run(
            ServiceBuilder::new()
                .layer(AddAuthorizationLayer::bearer(TOKEN))
                .service(Noop),
            n,
            threads,
            settle,
        ),
        "static_header_with_head_copy" => run(
            ServiceBuilder::new()
                .layer(AddAuthorizationLayer::bearer(TOKEN))
                .service(HeadCopy(Noop)),
            n,
            threads,
            settle,
        ),
        "rwlock" => run(
            Locked {
                inner: Noop,
                token: Arc::new(RwLock::new(TOKEN.to_owned())),
            },
            n,
            threads,
            settle,
        ),
        "mutex" => run(
            Locked {
                inner: Noop,
                token: Arc::new(Mutex::new(TOKEN.to_owned())),
            },
            n,
            threads,
            settle,
        ),
        "token_refresh" => run(token_layer(true).layer(Noop), n, threads, settle),
        "token_refresh_no_retry" => run(token_layer(false).layer(Noop), n, threads, settle),
        other => panic!("unknown variant {other}"),
    }
}

fn run<S>(mut service: S, n: usize, threads: usize, settle: impl Fn())
where
    S: Service<Request<Empty<Bytes>>> + Clone + Send,
    S::Error: std::fmt::Debug,
{
    let waker = Waker::from(Arc::new(NoopWaker));
    // One request before timing: lazily built state (the layer's snapshot
    // cache, its watcher task) is not what is measured.
    drive(&mut service, request(), &mut Context::from_waker(&waker));
    settle();
    let requests = |mut service: S| {
        let mut cx = Context::from_waker(&waker);
        for _ in 0..n {
            drive(&mut service, request(), &mut cx);
        }
    };
    if threads == 1 {
        return requests(service);
    }
    let requests = &requests;
    std::thread::scope(|scope| {
        for _ in 0..threads {
            let service = service.clone();
            scope.spawn(move || requests(service));
        }
    });
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
