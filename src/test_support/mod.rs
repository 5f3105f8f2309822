//! In-process fakes for unit tests: an API that accepts only tokens its
//! issuer handed out, and an issuer that counts its calls. Integration tests
//! in `tests/` use real loopback servers instead.

pub(crate) mod body;
pub(crate) mod logs;
pub(crate) mod rotating;

use std::collections::HashSet;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceExt};

use crate::{refresh_fn, BoxError, Refresh, RefreshContext, RefreshError, ReplayBody, TokenSet};

pub(crate) type TestBody = Full<Bytes>;

/// What the fake API saw and accepts.
#[derive(Debug, Clone, Default)]
pub(crate) struct Api {
    valid: Arc<Mutex<HashSet<String>>>,
    pub(crate) calls: Arc<AtomicUsize>,
    /// Bearer values of every request, in arrival order.
    pub(crate) seen: Arc<Mutex<Vec<String>>>,
    /// Every request's method, URI, version, headers other than
    /// `Authorization` and [`Marker`] extension, in arrival order.
    pub(crate) heads: Arc<Mutex<Vec<String>>>,
}

impl Api {
    pub(crate) fn accept(&self, token: &str) {
        self.valid.lock().unwrap().insert(token.to_owned());
    }

    pub(crate) fn revoke(&self, token: &str) {
        self.valid.lock().unwrap().remove(token);
    }

    pub(crate) fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

/// Answers 401 (body `unauthorized`) without reading the request's body
/// when the token is not valid; otherwise echoes
/// `"<authorization>|<body>|<trailer x-sum or ->"`.
impl<B> Service<Request<ReplayBody<B>>> for Api
where
    B: Body + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<ReplayBody<B>>) -> Self::Future {
        let api = self.clone();
        Box::pin(async move {
            api.calls.fetch_add(1, Ordering::SeqCst);
            let auth = req
                .headers()
                .get(http::header::AUTHORIZATION)
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            api.seen.lock().unwrap().push(auth.clone());
            api.heads
                .lock()
                .unwrap()
                .push(head_without_authorization(&req));
            let token = auth.strip_prefix("Bearer ").unwrap_or_default();
            if !api.valid.lock().unwrap().contains(token) {
                return Ok(Response::builder()
                    .status(StatusCode::UNAUTHORIZED)
                    .body(Full::new(Bytes::from_static(b"unauthorized")))
                    .unwrap());
            }
            let collected = req.into_body().collect().await.expect("body readable");
            let trailer = collected
                .trailers()
                .and_then(|t| t.get("x-sum"))
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_else(|| "-".into());
            let body = collected.to_bytes();
            let echo = format!("{auth}|{}|{trailer}", String::from_utf8_lossy(&body));
            Ok(Response::new(Full::new(Bytes::from(echo))))
        })
    }
}

/// `METHOD URI VERSION` and each header but `Authorization`, one line.
fn head_without_authorization<B>(req: &Request<B>) -> String {
    let mut head = format!("{} {} {:?}", req.method(), req.uri(), req.version());
    for (name, value) in req.headers() {
        if name != http::header::AUTHORIZATION {
            head += &format!(" {name}={value:?}");
        }
    }
    if let Some(Marker(marker)) = req.extensions().get() {
        head += &format!(" extension={marker:?}");
    }
    head
}

/// A request extension the test API lists in each request's head.
#[derive(Clone, Debug)]
pub(crate) struct Marker(pub(crate) &'static str);

/// An issuer that registers each token it hands out with `api`.
pub(crate) struct Issuer {
    pub(crate) calls: Arc<AtomicUsize>,
    pub(crate) reasons: Arc<Mutex<Vec<crate::RefreshReason>>>,
}

impl Issuer {
    pub(crate) fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

/// Tokens `tok-1`, `tok-2`, … each living `lifetime`, after `delay`.
pub(crate) fn issuer(
    api: &Api,
    lifetime: Option<Duration>,
    delay: Duration,
) -> (impl Refresh, Issuer) {
    let calls = Arc::new(AtomicUsize::new(0));
    let reasons = Arc::new(Mutex::new(Vec::new()));
    let handle = Issuer {
        calls: Arc::clone(&calls),
        reasons: Arc::clone(&reasons),
    };
    let api = api.clone();
    let source = refresh_fn(move |ctx: RefreshContext| {
        let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
        reasons.lock().unwrap().push(ctx.reason());
        let api = api.clone();
        async move {
            tokio::time::sleep(delay).await;
            let token = format!("tok-{n}");
            api.accept(&token);
            let mut tokens = TokenSet::new(token);
            if let Some(lifetime) = lifetime {
                tokens = tokens.with_expires_in(lifetime);
            }
            Ok::<_, RefreshError>(tokens)
        }
    });
    (source, handle)
}

/// An API that accepted `old`, an issuer of `tok-N` (each living
/// `lifetime`, answering after `delay`), and a layer starting with `old`
/// (also living `lifetime`); `configure` adjusts the builder.
pub(crate) fn old_token_layer(
    api: &Api,
    lifetime: Duration,
    delay: Duration,
    configure: impl FnOnce(crate::Builder) -> crate::Builder,
) -> (crate::TokenRefreshLayer, Issuer) {
    api.accept("old");
    let (source, issuer) = issuer(api, Some(lifetime), delay);
    let builder = crate::TokenRefreshLayer::builder(source)
        .initial_tokens(TokenSet::new("old").with_expires_in(lifetime));
    (configure(builder).build(), issuer)
}

/// A refresh source that fails with `make()` on every call, counting them.
pub(crate) fn failing(
    make: impl Fn() -> RefreshError + Send + Sync + 'static,
) -> (impl Refresh, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let source = refresh_fn(move |_ctx| {
        counter.fetch_add(1, Ordering::SeqCst);
        let error = make();
        async move { Err::<TokenSet, _>(error) }
    });
    (source, calls)
}

/// The refresh tokens a source was shown, call by call.
pub(crate) type Presented = Arc<Mutex<Vec<Option<String>>>>;

/// A source that records the refresh token each call presents and answers
/// its `n`th call (from 1) with `answer(n)`.
pub(crate) fn recording(
    answer: impl Fn(usize) -> Result<TokenSet, RefreshError> + Send + Sync + 'static,
) -> (impl Refresh + Clone, Presented) {
    recording_what(|ctx| exposed(ctx.refresh_token()), answer)
}

/// The access and refresh token each call presented.
pub(crate) type PresentedPairs = Arc<Mutex<Vec<(Option<String>, Option<String>)>>>;

/// As [`recording`], recording the access token beside the refresh token.
pub(crate) fn recording_pairs(
    answer: impl Fn(usize) -> Result<TokenSet, RefreshError> + Send + Sync + 'static,
) -> (impl Refresh + Clone, PresentedPairs) {
    let pair = |ctx: &RefreshContext| (exposed(ctx.access_token()), exposed(ctx.refresh_token()));
    recording_what(pair, answer)
}

fn exposed(token: Option<&crate::Secret>) -> Option<String> {
    token.map(|t| t.expose().to_owned())
}

/// A source that records `what` of each call's context and answers its
/// `n`th call (from 1) with `answer(n)`.
fn recording_what<T: Send + 'static>(
    what: impl Fn(&RefreshContext) -> T + Send + Sync + 'static,
    answer: impl Fn(usize) -> Result<TokenSet, RefreshError> + Send + Sync + 'static,
) -> (impl Refresh + Clone, Arc<Mutex<Vec<T>>>) {
    let presented = Arc::new(Mutex::new(Vec::new()));
    let recorded = Arc::clone(&presented);
    let (what, answer) = (Arc::new(what), Arc::new(answer));
    let source = refresh_fn(move |ctx: RefreshContext| {
        let n = {
            let mut presented = recorded.lock().unwrap();
            presented.push(what(&ctx));
            presented.len()
        };
        let answer = answer(n);
        async move { answer }
    });
    (source, presented)
}

/// A [`PresentedPairs`] entry.
pub(crate) fn sent(access: &str, refresh: &str) -> (Option<String>, Option<String>) {
    (Some(access.to_owned()), Some(refresh.to_owned()))
}

pub(crate) fn get() -> Request<TestBody> {
    Request::new(Full::new(Bytes::new()))
}

pub(crate) fn post(body: &'static str) -> Request<TestBody> {
    Request::post("/")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

/// Sends one request and returns the status and the echoed body. Clones
/// the client before returning, so the future borrows nothing.
pub(crate) fn send<S>(
    client: &S,
    request: Request<TestBody>,
) -> impl Future<Output = Result<(StatusCode, String), BoxError>>
where
    S: Service<Request<TestBody>, Response = Response<Full<Bytes>>, Error = BoxError> + Clone,
{
    let response = client.clone().oneshot(request);
    async move {
        let response = response.await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, String::from_utf8(body.to_vec()).unwrap()))
    }
}

/// Spawns `n` concurrent requests and returns their results.
pub(crate) async fn burst<S>(client: &S, n: usize) -> Vec<Result<(StatusCode, String), BoxError>>
where
    S: Service<Request<TestBody>, Response = Response<Full<Bytes>>, Error = BoxError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { send(&client, get()).await })
        })
        .collect();
    let mut results = Vec::with_capacity(n);
    for task in tasks {
        results.push(task.await.expect("request task panicked"));
    }
    results
}

/// Wraps a service and holds every request sent with `Bearer <token>` until
/// released, like a slow server: lets a test put many requests in flight
/// with the same token before any is answered.
#[derive(Clone)]
pub(crate) struct Hold<S> {
    inner: S,
    bearer: String,
    arrived: Arc<AtomicUsize>,
    open: tokio::sync::watch::Receiver<bool>,
}

pub(crate) struct HoldControl {
    arrived: Arc<AtomicUsize>,
    open: tokio::sync::watch::Sender<bool>,
}

impl HoldControl {
    /// Yields until `n` held requests have arrived.
    pub(crate) async fn wait_for(&self, n: usize) {
        let arrived = || self.arrived.load(Ordering::SeqCst) >= n;
        yield_until("the held requests arrive", arrived).await;
    }

    pub(crate) fn release(&self) {
        self.open.send_replace(true);
    }
}

pub(crate) fn hold<S>(inner: S, token: &str) -> (Hold<S>, HoldControl) {
    let arrived = Arc::new(AtomicUsize::new(0));
    let (open_tx, open_rx) = tokio::sync::watch::channel(false);
    let hold = Hold {
        inner,
        bearer: format!("Bearer {token}"),
        arrived: Arc::clone(&arrived),
        open: open_rx,
    };
    (
        hold,
        HoldControl {
            arrived,
            open: open_tx,
        },
    )
}

impl<S, B> Service<Request<B>> for Hold<S>
where
    S: Service<Request<B>> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let held = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .is_some_and(|v| v.as_bytes() == self.bearer.as_bytes());
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let mut open = self.open.clone();
        let arrived = Arc::clone(&self.arrived);
        Box::pin(async move {
            if held {
                arrived.fetch_add(1, Ordering::SeqCst);
                let _ = open.wait_for(|open| *open).await;
            }
            inner.call(req).await
        })
    }
}

/// A waker that counts how often it was woken; its `Arc`'s count tells
/// how many wakers made from it are still held.
#[derive(Default)]
pub(crate) struct WakeCounter(AtomicUsize);

impl WakeCounter {
    pub(crate) fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

impl Wake for WakeCounter {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// Runs `step` on a thread of its own; a step that deadlocks on a lock
/// fails the test after a bound instead of hanging it.
pub(crate) fn finishes(step: impl FnOnce() + Send + 'static) -> bool {
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        step();
        let _ = done.send(());
    });
    finished
        .recv_timeout(std::time::Duration::from_secs(5))
        .is_ok()
}

/// A counting waker and the counter behind it.
pub(crate) fn counting_waker() -> (Arc<WakeCounter>, Waker) {
    let counter = Arc::new(WakeCounter::default());
    let waker = Waker::from(Arc::clone(&counter));
    (counter, waker)
}

/// A current-thread runtime built without `enable_time`: tokio panics
/// where a timer is set on it (see the crate docs' "Runtime").
pub(crate) fn runtime_without_timers() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime without timers")
}

/// A current-thread runtime with timers on a paused clock, for tests that
/// drive two runtimes (`#[tokio::test]` gives one).
pub(crate) fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a paused runtime")
}

/// A caller held between the polls of its future: `poll` polls it once,
/// as a task that has not been woken yet is not.
pub(crate) struct Held<F>(pub(crate) Pin<Box<F>>);

impl<F: Future> Held<F> {
    pub(crate) fn new(future: F) -> Self {
        Self(Box::pin(future))
    }

    pub(crate) fn poll(&mut self) -> Poll<F::Output> {
        self.0
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
    }
}

/// Yields until `done`; fails, naming `what`, after a bound of yields that
/// no passing test comes near. On a paused clock a loop of yields never
/// lets time move, so without the bound a regression would spin for good
/// (found in an audit of the suite).
pub(crate) async fn yield_until(what: &str, done: impl Fn() -> bool) {
    const AT_MOST: u32 = 1_000_000;
    for _ in 0..AT_MOST {
        if done() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("{what}: not after {AT_MOST} yields");
}

/// Until `condition` holds, polling each millisecond of real time; panics
/// after 5 s, saying what was awaited. For multi-thread runtimes, whose
/// clock cannot be paused (the watcher vouches for tokens only there).
pub(crate) async fn until_real_time(what: &str, condition: impl Fn() -> bool) {
    tokio::time::timeout(Duration::from_secs(5), async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("not within 5 s: {what}"));
}

/// Lets spawned tasks run until they wait on something outside them.
/// A forced refresh through `handle`, on a task of its own.
pub(crate) fn refreshing_in_the_background(
    handle: &crate::TokenHandle,
) -> tokio::task::JoinHandle<Result<(), crate::Error>> {
    let handle = handle.clone();
    tokio::spawn(async move { handle.force_refresh().await })
}

pub(crate) async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

/// The layer's typed error behind a failed request.
pub(crate) fn expect_error<T: std::fmt::Debug>(result: Result<T, BoxError>) -> crate::Error {
    let error = result.expect_err("expected the layer to fail the request");
    error
        .downcast_ref::<crate::Error>()
        .expect("a tower_token_refresh::Error")
        .clone()
}

/// How many panics this thread has seen, counted by a hook installed once
/// for the whole test binary (ahead of the default hook, which still
/// prints). One hook for every test: tests that each swapped in their own
/// would race and lose one another's. A current-thread runtime runs its
/// spawned tasks on the thread that blocks on it, so their panics count
/// there.
pub(crate) fn panics_on_this_thread() -> usize {
    thread_local! {
        static PANICS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.with(|panics| panics.set(panics.get() + 1));
            previous(info);
        }));
    });
    PANICS.with(std::cell::Cell::get)
}
