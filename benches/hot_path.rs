//! The hot path: one request with a fresh token through `ServiceBuilder`, a
//! token layer and a no-op inner service, against baselines in the same run.
//!
//! - `bare`: the inner service alone.
//! - `static_header`: tower-http's `AddAuthorization::bearer`, a precomputed
//!   header: the limit for header injection.
//! - `static_header_with_head_copy`: the same plus a copy of the request head
//!   (method, URI, version, headers, extensions) kept until the response: the
//!   floor for any layer able to retry.
//! - `rwlock` / `mutex`: hand-written layers reading a token behind a lock
//!   and formatting the header per request, as most hand-written code does.
//! - `token_refresh`, `token_refresh_no_retry`: this crate with reactive
//!   retry on (the default) and off.
//!
//! Run with `cargo bench --bench hot_path`; compare ratios from one run.

use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
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

fn hot_path(c: &mut Criterion) {
    let waker = Waker::from(Arc::new(NoopWaker));
    let mut cx = Context::from_waker(&waker);
    let mut group = c.benchmark_group("hot_path");

    let mut bare = ServiceBuilder::new().service(Noop);
    group.bench_function("bare", |b| b.iter(|| drive(&mut bare, request(), &mut cx)));

    let mut static_header = ServiceBuilder::new()
        .layer(AddAuthorizationLayer::bearer(TOKEN))
        .service(Noop);
    group.bench_function("static_header", |b| {
        b.iter(|| drive(&mut static_header, request(), &mut cx))
    });

    let mut head_copy = ServiceBuilder::new()
        .layer(AddAuthorizationLayer::bearer(TOKEN))
        .service(HeadCopy(Noop));
    group.bench_function("static_header_with_head_copy", |b| {
        b.iter(|| drive(&mut head_copy, request(), &mut cx))
    });

    let mut rwlock = Locked {
        inner: Noop,
        token: Arc::new(RwLock::new(TOKEN.to_owned())),
    };
    group.bench_function("rwlock", |b| {
        b.iter(|| drive(&mut rwlock, request(), &mut cx))
    });

    let mut mutex = Locked {
        inner: Noop,
        token: Arc::new(Mutex::new(TOKEN.to_owned())),
    };
    group.bench_function("mutex", |b| {
        b.iter(|| drive(&mut mutex, request(), &mut cx))
    });

    let mut ours = token_layer(true).layer(Noop);
    group.bench_function("token_refresh", |b| {
        b.iter(|| drive(&mut ours, request(), &mut cx))
    });

    let mut ours_no_retry = token_layer(false).layer(Noop);
    group.bench_function("token_refresh_no_retry", |b| {
        b.iter(|| drive(&mut ours_no_retry, request(), &mut cx))
    });

    group.finish();
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
