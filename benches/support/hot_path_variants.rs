//! The variants of the hot-path benchmark, shared by `hot_path` (criterion,
//! wall-clock), `hot_path_count` (fixed iterations, for instruction counts
//! under callgrind) and `tests/allocations.rs` (allocations per request).

use std::cell::Cell;
use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, Barrier, Mutex, RwLock};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, USER_AGENT};
use http::{Extensions, HeaderMap, HeaderValue, Method, Request, Response, Uri, Version};
use http_body::Body;
use http_body_util::Empty;
use tower::{Layer, Service, ServiceBuilder};
use tower_http::auth::AddAuthorizationLayer;
use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};

const TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJiZW5jaCJ9.c2lnbmF0dXJl";

/// A service that answers at once. It reads the request body first, as an
/// HTTP client sends it, so that a body kept for replay records what it
/// would record in real use; an empty body costs one `is_end_stream`.
#[derive(Clone, Copy)]
struct Noop;

impl<B> Service<Request<B>> for Noop
where
    B: Body,
    B::Error: std::fmt::Debug,
{
    type Response = Response<Empty<Bytes>>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<Empty<Bytes>>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let mut body = pin!(req.into_body());
        if !body.is_end_stream() {
            NOOP_WAKER.with(|waker| {
                let mut cx = Context::from_waker(waker);
                while let Poll::Ready(Some(frame)) = body.as_mut().poll_frame(&mut cx) {
                    drop(frame.expect("in-memory bodies do not fail"));
                }
            });
        }
        std::future::ready(Ok(Response::new(Empty::new())))
    }
}

thread_local! {
    // Made once per thread: `Waker::from` allocates, and allocations per
    // request are measured.
    static NOOP_WAKER: Waker = Waker::from(Arc::new(NoopWaker));
}

/// Built the same way inside every timed loop.
pub fn request() -> Request<Empty<Bytes>> {
    request_with(Empty::new())
}

/// The benchmark's request with `body`.
pub fn request_with<B>(body: B) -> Request<B> {
    Request::get("https://api.example.com/v1/items?page=2")
        .header(ACCEPT, "application/json")
        .header(USER_AGENT, "bench/1.0")
        .body(body)
        .expect("valid request")
}

struct NoopWaker;

impl Wake for NoopWaker {
    fn wake(self: Arc<Self>) {}
}

/// Polls `ready` and the response future once each: everything here
/// completes synchronously, so no executor is involved in the measurement.
pub fn drive<S, B>(service: &mut S, request: Request<B>, cx: &mut Context<'_>)
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
        // Plain fields: the cheapest copy (`Parts` cannot be built directly,
        // and going through `Request::new` drops a default of each part).
        let head = (
            req.method().clone(),
            req.uri().clone(),
            req.version(),
            req.headers().clone(),
            req.extensions().clone(),
        );
        KeepHead {
            future: self.0.call(req),
            head,
        }
    }
}

type Head = (Method, Uri, Version, HeaderMap, Extensions);

pin_project_lite::pin_project! {
    struct KeepHead<F> {
        #[pin]
        future: F,
        head: Head,
    }
}

impl<F: Future> Future for KeepHead<F> {
    type Output = F::Output;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        this.future.poll(cx).map(|output| {
            // Read once the response is there, as a retry would read it: a
            // copy never read could be left out by the optimizer.
            std::hint::black_box(&*this.head);
            output
        })
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

// The guard lives for the `format!` only, as the one-line way to write it
// keeps it (a temporary dropped at the end of the statement): the header
// value's own copy is made outside the lock, as golang/oauth2 releases its
// mutex before setting the header.
impl ReadToken for RwLock<String> {
    fn bearer(&self) -> HeaderValue {
        let header = format!("Bearer {}", self.read().unwrap());
        HeaderValue::from_str(&header).unwrap()
    }
}

impl ReadToken for Mutex<String> {
    fn bearer(&self) -> HeaderValue {
        let header = format!("Bearer {}", self.lock().unwrap());
        HeaderValue::from_str(&header).unwrap()
    }
}

/// Puts a [`Locked`] bearer layer over a service, as
/// `ServiceBuilder::layer` takes it.
struct LockedLayer<L>(Arc<L>);

impl<S, L> Layer<S> for LockedLayer<L> {
    type Service = Locked<S, L>;

    fn layer(&self, inner: S) -> Locked<S, L> {
        Locked {
            inner,
            token: Arc::clone(&self.0),
        }
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

/// Something to do with one variant's service. The variants differ in
/// type, so a generic method stands in for a closure.
pub trait UseService<B> {
    /// Uses `service`, the variant's service.
    fn with<S>(self, service: S)
    where
        S: Service<Request<B>> + Clone + Send,
        S::Error: std::fmt::Debug;
}

/// Builds the variant `name` over the no-op service and hands it to `user`.
pub fn with_variant<B, U>(name: &str, user: U)
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<tower_token_refresh::BoxError> + std::fmt::Debug,
    U: UseService<B>,
{
    match name {
        "bare" => user.with(Noop),
        "static_header" => user.with(
            ServiceBuilder::new()
                .layer(AddAuthorizationLayer::bearer(TOKEN))
                .service(Noop),
        ),
        "static_header_with_head_copy" => user.with(
            ServiceBuilder::new()
                .layer(AddAuthorizationLayer::bearer(TOKEN))
                .service(HeadCopy(Noop)),
        ),
        "rwlock" => user.with(
            ServiceBuilder::new()
                .layer(LockedLayer(Arc::new(RwLock::new(TOKEN.to_owned()))))
                .service(Noop),
        ),
        "mutex" => user.with(
            ServiceBuilder::new()
                .layer(LockedLayer(Arc::new(Mutex::new(TOKEN.to_owned()))))
                .service(Noop),
        ),
        "token_refresh" => user.with(ServiceBuilder::new().layer(token_layer(true)).service(Noop)),
        "token_refresh_no_retry" => user.with(
            ServiceBuilder::new()
                .layer(token_layer(false))
                .service(Noop),
        ),
        other => panic!("unknown variant {other}"),
    }
}

/// Runs `n` requests through the variant `name` on each of `threads`
/// threads, each with its own clone of one service (so one layer, one token
/// state, shared by all), as tower services are shared between tasks.
/// `settle` lets the runtime run (the layer's watcher task) before timing.
///
/// Returns the time the requests took, and only that: building the layer,
/// the first request, `settle` (a sleep of several milliseconds) and
/// spawning the threads are left out. Timed from the outside, a sample of
/// a few thousand requests carried the sleep as hundreds of nanoseconds per
/// request, more in the short samples than in the long ones.
pub fn run_variant(
    name: &str,
    n: usize,
    threads: usize,
    clones: Clones,
    settle: impl Fn(),
) -> Duration {
    let elapsed = Cell::new(Duration::ZERO);
    with_variant(
        name,
        Runner {
            n,
            threads,
            clones,
            settle,
            elapsed: &elapsed,
        },
    );
    elapsed.get()
}

/// Which clone of the service each request goes through.
#[derive(Clone, Copy)]
pub enum Clones {
    /// The thread's own, made once: a service kept per worker.
    PerThread,
    /// A clone made for the request and dropped after it, from the
    /// thread's: `client.clone().oneshot(request)`, as tower and tonic
    /// clients are commonly called.
    #[allow(
        dead_code,
        reason = "the criterion bench `hot_path` keeps one per thread"
    )]
    PerRequest,
}

struct Runner<'a, F> {
    n: usize,
    threads: usize,
    clones: Clones,
    settle: F,
    elapsed: &'a Cell<Duration>,
}

impl<F: Fn()> UseService<Empty<Bytes>> for Runner<'_, F> {
    fn with<S>(self, mut service: S)
    where
        S: Service<Request<Empty<Bytes>>> + Clone + Send,
        S::Error: std::fmt::Debug,
    {
        let Runner {
            n,
            threads,
            clones,
            settle,
            elapsed,
        } = self;
        let waker = Waker::from(Arc::new(NoopWaker));
        // One request before timing: lazily built state (the thread's
        // copy of the layer's header, its watcher task) is not what is
        // measured.
        drive(&mut service, request(), &mut Context::from_waker(&waker));
        settle();
        let requests = |mut service: S| {
            let mut cx = Context::from_waker(&waker);
            for _ in 0..n {
                match clones {
                    Clones::PerThread => drive(&mut service, request(), &mut cx),
                    Clones::PerRequest => drive(&mut service.clone(), request(), &mut cx),
                }
            }
        };
        if threads == 1 {
            let started = Instant::now();
            requests(service);
            elapsed.set(started.elapsed());
            return;
        }
        let requests = &requests;
        // The clock starts once every thread is spawned and waiting.
        let start = &Barrier::new(threads + 1);
        std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    let mut service = service.clone();
                    scope.spawn(move || {
                        // This thread's lazily built state (the layer's
                        // copy of the header and spare buffers, the
                        // allocator's arena) is made before the clock
                        // starts, as the first thread's was above.
                        let warm_up = Waker::from(Arc::new(NoopWaker));
                        let mut cx = Context::from_waker(&warm_up);
                        drive(&mut service, request(), &mut cx);
                        start.wait();
                        requests(service)
                    })
                })
                .collect();
            start.wait();
            let started = Instant::now();
            for worker in workers {
                worker.join().expect("requests do not panic");
            }
            elapsed.set(started.elapsed());
        });
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
