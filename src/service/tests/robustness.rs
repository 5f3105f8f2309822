//! Robustness of the token state under awkward timing and hostile values,
//! through the public API: tokens set during a refresh, runtimes that idle
//! or shut down, panics in user code, absurd lifetimes and Retry-After
//! values, and stale-from-birth tokens.

use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tower::{Service, ServiceBuilder, ServiceExt};

use crate::test_support::{recording, yield_until};
use crate::{
    refresh_fn, BoxError, Refresh, RefreshError, RefreshWindow, ReplayBody, TokenRefreshLayer,
    TokenSet,
};

const HOUR: Duration = Duration::from_secs(3600);

type Body = Full<Bytes>;

/// An API that accepts everything and echoes the Authorization header.
fn echo() -> impl Service<
    Request<ReplayBody<Body>>,
    Response = Response<String>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<String>, Infallible>> + Send,
> + Clone
       + Send
       + 'static {
    tower::service_fn(|req: Request<ReplayBody<Body>>| async move {
        let auth = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        Ok::<_, Infallible>(Response::new(auth))
    })
}

fn get() -> Request<Body> {
    Request::new(Full::new(Bytes::new()))
}

async fn bearer<S>(client: &S) -> Result<String, BoxError>
where
    S: Service<Request<Body>, Response = Response<String>, Error = BoxError> + Clone,
{
    Ok(client.clone().oneshot(get()).await?.into_body())
}

/// Tokens set while a refresh runs win over that refresh's result, which
/// started from the old refresh token.
#[tokio::test(start_paused = true)]
async fn tokens_set_during_a_refresh_are_not_overwritten_by_that_refresh() {
    let source = refresh_fn(|_ctx| async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        Ok::<_, RefreshError>(TokenSet::new("from-old-refresh-token").with_expires_in(HOUR))
    });
    let layer = TokenRefreshLayer::builder(source)
        .initial_tokens(TokenSet::new("a0").with_refresh_token("r-old"))
        .build();
    let handle = layer.handle();
    let forcing = handle.clone();
    let forced = tokio::spawn(async move { forcing.force_refresh().await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(handle.status().is_refreshing());

    // The user signs in again while the refresh runs.
    handle
        .set_tokens(
            TokenSet::new("signed-in-again")
                .with_refresh_token("r-new")
                .with_expires_in(HOUR),
        )
        .unwrap();
    let _ = forced.await.unwrap();

    let tokens = handle.tokens().unwrap();
    assert_eq!(
        tokens.refresh_token().unwrap().expose(),
        "r-new",
        "the refresh token set by the user was replaced by the old one"
    );
    assert_eq!(tokens.access_token().expose(), "signed-in-again");
}

/// A terminal failure of a refresh started from the old, dead refresh
/// token is not held against tokens set while it ran; its waiters get the
/// new tokens.
#[tokio::test(start_paused = true)]
async fn terminal_failure_of_a_superseded_refresh_does_not_block_tokens_set_during_it() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let source = refresh_fn(move |_ctx| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        async move {
            if n == 0 {
                tokio::time::sleep(Duration::from_secs(5)).await;
                return Err(RefreshError::terminal("invalid_grant").with_status(400));
            }
            Ok(TokenSet::new("next").with_expires_in(HOUR))
        }
    });
    let layer = TokenRefreshLayer::builder(source)
        .initial_tokens(TokenSet::new("a0").with_refresh_token("dead"))
        .build();
    let handle = layer.handle();
    let forcing = handle.clone();
    let forced = tokio::spawn(async move { forcing.force_refresh().await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    handle
        .set_tokens(
            TokenSet::new("relogin")
                .with_refresh_token("good")
                .with_expires_in(HOUR),
        )
        .unwrap();
    // The superseded refresh reports the tokens that superseded it.
    assert!(forced.await.unwrap().is_ok());

    let again = handle.force_refresh().await;
    assert!(
        again.is_ok(),
        "tokens set after the failed refresh started are blocked by its failure: {again:?}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// A huge Retry-After is recorded as a rate limit, not a panic that would
/// turn it into a short transient backoff; and it blocks refreshes for an
/// hour, not for as long as it says (up to 30 years, `force_refresh`
/// included).
#[tokio::test(start_paused = true)]
async fn huge_retry_after_is_recorded_as_a_rate_limit_and_waited_an_hour() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let source = refresh_fn(move |_ctx| {
        counted.fetch_add(1, Ordering::SeqCst);
        async { Err::<TokenSet, _>(RefreshError::rate_limited(Some(Duration::MAX))) }
    });
    let layer = TokenRefreshLayer::builder(source)
        .initial_tokens(TokenSet::new("a0").with_expires_in(HOUR))
        .build();
    let handle = layer.handle();
    let error = handle.force_refresh().await.unwrap_err();
    let status = handle.status();
    let last = status.last_error().expect("a failure is recorded");
    assert!(
        last.is_rate_limited(),
        "the 429 was lost: error {error}, recorded {last}"
    );

    tokio::time::advance(HOUR - Duration::from_secs(1)).await;
    assert!(handle.force_refresh().await.is_err());
    assert_eq!(calls.load(Ordering::SeqCst), 1, "blocked within the hour");
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(handle.force_refresh().await.is_err());
    assert_eq!(calls.load(Ordering::SeqCst), 2, "asked again after it");
}

/// A refresh whose `expires_in` is huge (Java servers send Long.MAX_VALUE
/// for "never") is installed with a saturated expiry.
#[tokio::test(start_paused = true)]
async fn huge_expires_in_from_a_refresh_is_installed_not_a_panic() {
    let source = refresh_fn(|_ctx| async {
        Ok::<_, RefreshError>(
            TokenSet::new("forever")
                .with_refresh_token("rotated")
                .with_expires_in(Duration::from_secs(i64::MAX as u64)),
        )
    });
    let layer = TokenRefreshLayer::builder(source)
        .initial_tokens(TokenSet::new("a0").with_refresh_token("r0"))
        .build();
    let handle = layer.handle();
    let result = handle.force_refresh().await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(
        handle.tokens().unwrap().refresh_token().unwrap().expose(),
        "rotated"
    );
}

/// `set_tokens` with a huge lifetime is accepted.
#[tokio::test(start_paused = true)]
async fn set_tokens_with_a_huge_lifetime_does_not_panic() {
    let source = refresh_fn(|_ctx| async { Ok::<_, RefreshError>(TokenSet::new("x")) });
    let layer = TokenRefreshLayer::builder(source).build();
    let handle = layer.handle();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        handle.set_tokens(TokenSet::new("t").with_expires_in(Duration::MAX))
    }));
    result.expect("set_tokens panicked").unwrap();
    assert_eq!(handle.tokens().unwrap().access_token().expose(), "t");
    let left = handle.status().expires_in().unwrap();
    assert!(left > Duration::from_secs(20 * 365 * 24 * 3600), "{left:?}");
}

/// A panicking `on_refresh` hook loses nothing: the refreshed tokens,
/// including a rotated refresh token, are installed.
#[tokio::test(start_paused = true)]
async fn a_panicking_hook_does_not_lose_the_rotated_tokens() {
    let source = refresh_fn(|_ctx| async {
        Ok::<_, RefreshError>(
            TokenSet::new("a1")
                .with_refresh_token("r-rotated")
                .with_expires_in(HOUR),
        )
    });
    let layer = TokenRefreshLayer::builder(source)
        .initial_tokens(TokenSet::new("a0").with_refresh_token("r0"))
        .on_refresh(|_tokens: &TokenSet| async { panic!("bug in the user's persistence hook") })
        .build();
    let handle = layer.handle();
    let _ = handle.force_refresh().await;
    assert_eq!(
        handle.tokens().unwrap().refresh_token().unwrap().expose(),
        "r-rotated",
        "the rotated refresh token was thrown away"
    );
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A current-thread runtime on a paused clock, which starts at the moment
/// the runtime is built: runtimes built one after the other agree on the
/// order of their instants.
fn paused_current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap()
}

/// Polls one request through `client` on `runtime` once, so that it starts
/// a refresh there, and gives the request up; `runtime` is left undriven.
fn start_a_refresh_on<S>(runtime: &tokio::runtime::Runtime, client: &S)
where
    S: Service<Request<Body>> + Clone,
{
    runtime.block_on(async {
        let mut request = pin!(client.clone().oneshot(get()));
        std::future::poll_fn(|cx| {
            let _ = request.as_mut().poll(cx);
            Poll::Ready(())
        })
        .await;
    });
}

/// A source issuing `t1`, `t2`, … as it is called, counted in `calls`;
/// its first call never answers if `first_hangs`.
fn numbered(calls: &Arc<AtomicUsize>, first_hangs: bool) -> impl Refresh {
    let counter = Arc::clone(calls);
    refresh_fn(move |_ctx| {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            if first_hangs && n == 1 {
                std::future::pending::<()>().await;
            }
            Ok::<_, RefreshError>(TokenSet::new(format!("t{n}")).with_expires_in(HOUR))
        }
    })
}

/// A refresh spawned on a runtime that is alive but not driven (a
/// current-thread runtime between `block_on` calls) strands neither the
/// requests nor a `force_refresh` of another runtime: they give up on it
/// at its deadline and a new refresh replaces it. Found in review: they
/// gave up with an error ("token refresh timed out") instead, with no
/// refresh ever tried; this test only checked that they did not wait past
/// a timeout.
#[test]
fn a_refresh_stuck_on_an_idle_runtime_is_replaced_for_callers_on_another() {
    for forced in [false, true] {
        let calls = Arc::new(AtomicUsize::new(0));
        let layer = TokenRefreshLayer::builder(numbered(&calls, false))
            .refresh_timeout(Duration::from_secs(1))
            .build();
        let handle = layer.handle();
        let client = ServiceBuilder::new().layer(layer).service(echo());

        let idle = paused_current_thread();
        start_a_refresh_on(&idle, &client);
        let outcome = paused_current_thread().block_on(async {
            let sent = async {
                if forced {
                    handle.force_refresh().await?;
                }
                bearer(&client).await
            };
            tokio::time::timeout(Duration::from_secs(5), sent).await
        });
        let sent = outcome.expect("waited 5 s on a refresh (deadline 3 s) that nobody runs");
        assert_eq!(sent.unwrap(), "Bearer t1", "forced: {forced}");
        drop(idle);
    }
}

/// A refresh whose runtime shut down under it failed nothing: requests on
/// another runtime start a new one. Found in review: the dropped task was
/// recorded as a failed refresh, and requests on the other runtime were
/// refused for its backoff without the identity server being called.
#[test]
fn a_refresh_dropped_with_its_runtime_does_not_fail_requests_on_another() {
    let calls = Arc::new(AtomicUsize::new(0));
    // The first refresh is still calling when its runtime goes.
    let layer = TokenRefreshLayer::builder(numbered(&calls, true)).build();
    let handle = layer.handle();
    let client = ServiceBuilder::new().layer(layer).service(echo());

    let first = paused_current_thread();
    start_a_refresh_on(&first, &client);
    first.block_on(async {
        yield_until("the refresh is called", || {
            calls.load(Ordering::SeqCst) >= 1
        })
        .await;
    });
    drop(first);

    let sent = paused_current_thread().block_on(bearer(&client));
    assert_eq!(sent.unwrap(), "Bearer t2");
    assert_eq!(handle.stats().refresh_failures, 1, "the dropped one ended");
}

/// Tokens fetched before the refresh's runtime shut down, while the
/// `on_refresh` hook ran, are installed: a rotating server has already
/// spent the refresh token they replace. Found in review: they were
/// dropped with the task, and the next refresh presented the spent one.
#[test]
fn tokens_fetched_before_the_runtime_shut_down_during_the_hook_are_kept() {
    let (source, presented) = recording(|n| {
        let tokens = TokenSet::new(format!("t{n}")).with_refresh_token(format!("r{}", n + 1));
        Ok(tokens.with_expires_in(HOUR))
    });
    let hook_ran = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hook_ran);
    let layer = TokenRefreshLayer::builder(source)
        .initial_tokens(
            TokenSet::new("t0")
                .with_refresh_token("r1")
                .with_expires_in(Duration::ZERO),
        )
        .on_refresh(move |_tokens: &TokenSet| {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(5))
        })
        .build();
    let client = ServiceBuilder::new().layer(layer).service(echo());

    let first = paused_current_thread();
    start_a_refresh_on(&first, &client);
    first.block_on(async {
        yield_until("the hook runs", || hook_ran.load(Ordering::SeqCst) >= 1).await;
    });
    drop(first);

    let sent = paused_current_thread().block_on(bearer(&client));
    assert_eq!(sent.unwrap(), "Bearer t1");
    let presented = presented.lock().unwrap().clone();
    assert_eq!(
        presented,
        [Some("r1".to_owned())],
        "no refresh from the spent r1"
    );
}

/// A refresh source that panics makes a failed refresh, backed off like
/// any other, whose error says so (the panic's message stays with the
/// panic hook: it may hold a token).
#[tokio::test(start_paused = true)]
async fn a_panicking_source_is_a_failure_that_is_backed_off() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let source = refresh_fn(move |_ctx| {
        counter.fetch_add(1, Ordering::SeqCst);
        async {
            if true {
                panic!("a bug in the refresh source");
            }
            Ok::<_, RefreshError>(TokenSet::new("never"))
        }
    });
    let handle = TokenRefreshLayer::builder(source).build().handle();

    let error = handle.force_refresh().await.unwrap_err();
    let cause = error.refresh_error().expect("the refresh's error");
    assert!(cause.to_string().contains("panicked"), "{cause}");
    assert!(handle.force_refresh().await.is_err());
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "called again within the backoff"
    );
}

/// A runtime dropped while something else unwinds (a panicking test that
/// owns it) takes its refresh task with it: that is no panic of the
/// refresh's own, and nothing is backed off. Found in a second review: the
/// drop was told apart from a panic only by the thread's state.
#[test]
fn a_refresh_dropped_with_its_runtime_during_an_unrelated_panic_is_not_a_failure() {
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = TokenRefreshLayer::builder(numbered(&calls, false)).build();
    let handle = layer.handle();
    let client = ServiceBuilder::new().layer(layer).service(echo());

    let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let first = paused_current_thread();
        start_a_refresh_on(&first, &client);
        panic!("an unrelated panic, with the runtime still owned");
    }));
    assert!(unwound.is_err());

    let sent = paused_current_thread().block_on(bearer(&client));
    assert_eq!(sent.unwrap(), "Bearer t1");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the dropped one never called"
    );
    assert_eq!(handle.stats().refresh_failures, 1, "the dropped one ended");
}

/// A refresh abandoned with its runtime leaves the refresh point of the
/// tokens it would have replaced where it was: requests elsewhere do not
/// start another before it. Found in a second review: the gate was opened
/// outright, and a token stale on arrival was refreshed back to back.
#[test]
fn a_refresh_abandoned_with_its_runtime_keeps_the_tokens_refresh_point() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let source = refresh_fn(move |_ctx| {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            if n == 2 {
                std::future::pending::<()>().await;
            }
            Ok::<_, RefreshError>(TokenSet::new(format!("t{n}")).with_expires_in(HOUR))
        }
    });
    let layer = TokenRefreshLayer::builder(source)
        // Stale on arrival: refreshed in the background once the minimum
        // interval after a refresh has passed.
        .advisory_window(RefreshWindow::fraction(1.0))
        .min_refresh_interval(Duration::from_secs(10))
        .build();
    let handle = layer.handle();
    let client = ServiceBuilder::new().layer(layer).service(echo());

    let first = paused_current_thread();
    first.block_on(async {
        handle.force_refresh().await.unwrap(); // t1
        let forcing = handle.clone();
        tokio::spawn(async move { forcing.force_refresh().await });
        yield_until("the second refresh is called", || {
            calls.load(Ordering::SeqCst) >= 2
        })
        .await;
    });
    drop(first); // the second refresh with it

    paused_current_thread().block_on(async {
        assert_eq!(bearer(&client).await.unwrap(), "Bearer t1");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 2, "refreshed back to back");

        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(bearer(&client).await.unwrap(), "Bearer t1");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 3, "no background refresh");
        assert_eq!(bearer(&client).await.unwrap(), "Bearer t3");
    });
}

/// Requests on a runtime that has shut down (still entered) cannot run a
/// refresh: each fails at once, having started one flight, which that
/// runtime drops. Found in a second review: each decided afresh after the
/// drop and started flight after flight.
#[test]
fn requests_on_a_shut_down_runtime_start_one_flight_each() {
    let runtime = current_thread();
    let shut_down = runtime.handle().clone();
    drop(runtime);
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = TokenRefreshLayer::builder(numbered(&calls, false)).build();
    let handle = layer.handle();
    let client = ServiceBuilder::new().layer(layer).service(echo());

    let sent = shut_down.block_on(bearer(&client));
    let error = sent.expect_err("no runtime to refresh on");
    let error = error.downcast_ref::<crate::Error>().unwrap();
    assert!(error.is_refresh_failed(), "{error}");
    assert_eq!(handle.stats().refreshes, 1);
    let forced = shut_down.block_on(handle.force_refresh());
    assert!(forced.unwrap_err().is_refresh_failed());
    assert_eq!(handle.stats().refreshes, 2);
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

/// The background timer does not wait on a refresh stuck on an idle
/// runtime: past its deadline it starts one of its own, without traffic.
/// Found in review: it waited for the stuck refresh to settle, which it
/// never did, and the token expired.
#[test]
fn the_background_timer_replaces_a_refresh_stuck_on_an_idle_runtime() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let source = refresh_fn(move |_ctx| {
        counter.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, RefreshError>(TokenSet::new("new").with_expires_in(HOUR)) }
    });
    let driven = paused_current_thread();
    // Built on `driven`, whose timer watches the token from then on.
    let (handle, client) = driven.block_on(async {
        let layer = TokenRefreshLayer::builder(source)
            .initial_tokens(TokenSet::new("old").with_expires_in(Duration::from_secs(100)))
            .background_refresh(true)
            .build();
        let handle = layer.handle();
        let client = ServiceBuilder::new().layer(layer).service(echo());
        assert_eq!(bearer(&client).await.unwrap(), "Bearer old");
        (handle, client)
    });

    // Stale (the advisory window is 50 s): a request elsewhere starts a
    // background refresh on a runtime that is never driven again.
    let stalled = paused_current_thread();
    stalled.block_on(async {
        tokio::time::advance(Duration::from_secs(55)).await;
        assert_eq!(bearer(&client).await.unwrap(), "Bearer old");
    });
    assert!(handle.status().is_refreshing());

    driven.block_on(async { tokio::time::sleep(Duration::from_secs(95)).await });
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one refresh, the timer's");
    assert_eq!(handle.tokens().unwrap().access_token().expose(), "new");
    drop(stalled);
}

/// A refresh that ran past its deadline (its runtime idled) and then
/// succeeded while its replacement ran leaves its tokens a background
/// refresh once that replacement has ended. Found in review: the replacement,
/// finding itself superseded, ended without reopening it, and the tokens
/// were refreshed only once requests had to wait for them.
#[test]
fn tokens_from_a_replaced_refresh_still_get_their_background_refresh() {
    let calls = Arc::new(AtomicUsize::new(0));
    let replacement_may_finish = Arc::new(tokio::sync::Notify::new());
    let (counter, gate) = (Arc::clone(&calls), Arc::clone(&replacement_may_finish));
    let source = refresh_fn(move |_ctx| {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        let gate = Arc::clone(&gate);
        async move {
            // The first call is the replacement's: the replaced refresh
            // only calls once its runtime is driven again.
            if n == 1 {
                gate.notified().await;
            }
            Ok::<_, RefreshError>(TokenSet::new(format!("t{n}")).with_expires_in(HOUR))
        }
    });
    let layer = TokenRefreshLayer::builder(source)
        .refresh_timeout(Duration::from_millis(100))
        // Stale on arrival, refreshable in the background 100 ms later.
        .advisory_window(RefreshWindow::fraction(1.0))
        .min_refresh_interval(Duration::from_millis(100))
        .build();
    let handle = layer.handle();
    let client = ServiceBuilder::new().layer(layer).service(echo());

    let idle = paused_current_thread();
    start_a_refresh_on(&idle, &client); // refresh 1

    paused_current_thread().block_on(async {
        // Past refresh 1's deadline (2 × 100 ms + 1 s), a request replaces
        // it with refresh 2 and waits for that one.
        tokio::time::sleep(Duration::from_millis(1300)).await;
        let waiter = client.clone();
        let waiting = tokio::spawn(async move { bearer(&waiter).await });
        while calls.load(Ordering::SeqCst) < 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Refresh 1 runs at last, elsewhere, and succeeds while 2 runs.
        std::thread::scope(|scope| {
            let idle = &idle;
            let driven = scope.spawn(move || {
                idle.block_on(async { tokio::time::sleep(Duration::from_millis(20)).await });
            });
            driven.join().unwrap();
        });
        assert_eq!(handle.tokens().unwrap().access_token().expose(), "t2");
        replacement_may_finish.notify_one();
        assert_eq!(waiting.await.unwrap().unwrap(), "Bearer t2");

        // Stale, and past its 100 ms spacing: a request starts a refresh.
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(bearer(&client).await.unwrap(), "Bearer t2");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 3, "no background refresh");
    });
    drop(idle);
}

/// Found in review: the status said a refresh was running for as long as
/// one stuck on an idle runtime stayed registered, past the deadline at
/// which every request gives it up.
#[test]
fn a_refresh_given_up_at_its_deadline_is_not_reported_as_running() {
    let source = refresh_fn(|_ctx| async {
        Ok::<_, RefreshError>(TokenSet::new("t").with_expires_in(HOUR))
    });
    let layer = TokenRefreshLayer::builder(source)
        .refresh_timeout(Duration::from_millis(100))
        .build();
    let handle = layer.handle();
    let client = ServiceBuilder::new().layer(layer).service(echo());

    let idle = paused_current_thread();
    start_a_refresh_on(&idle, &client);
    assert!(handle.status().is_refreshing());
    let past_the_deadline = paused_current_thread().block_on(async {
        // Its deadline: 2 × 100 ms + 1 s after the refresh started.
        tokio::time::advance(Duration::from_millis(1300)).await;
        !handle.status().is_refreshing()
    });
    assert!(past_the_deadline);
    drop(idle);
}

/// A watcher on an idle current-thread runtime cannot vouch for freshness:
/// requests from elsewhere read the clock and never send an expired token.
#[test]
fn a_watcher_on_an_idle_runtime_does_not_keep_an_expired_token_fresh() {
    let source = refresh_fn(|_ctx| async {
        Ok::<_, RefreshError>(TokenSet::new("new").with_expires_in(HOUR))
    });
    let layer = TokenRefreshLayer::builder(source)
        .initial_tokens(TokenSet::new("old").with_expires_in(Duration::from_millis(600)))
        .advisory_window(RefreshWindow::fixed(Duration::from_millis(300)))
        .mandatory_window(RefreshWindow::fixed(Duration::from_millis(100)))
        .build();
    let client = ServiceBuilder::new().layer(layer).service(echo());

    let idle = paused_current_thread();
    idle.block_on(async {
        assert_eq!(bearer(&client).await.unwrap(), "Bearer old");
        // The watcher (spawned on `idle`) runs and marks the token watched.
        tokio::time::sleep(Duration::from_millis(20)).await;
    });

    let sent = paused_current_thread().block_on(async {
        tokio::time::sleep(Duration::from_millis(700)).await; // past the real expiry
        bearer(&client).await.unwrap()
    });
    assert_eq!(sent, "Bearer new", "an expired token was sent as fresh");
    drop(idle);
}

/// A refresh spawned on a runtime that has shut down (the task is dropped
/// at once, and its guard takes the control lock) does not deadlock: the
/// task is spawned after the lock is released.
#[test]
fn a_refresh_spawned_on_a_shut_down_runtime_does_not_deadlock() {
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = current_thread();
        let handle = runtime.handle().clone();
        drop(runtime);
        let _entered = handle.enter();
        let source = refresh_fn(|_ctx| async {
            Ok::<_, RefreshError>(TokenSet::new("t").with_expires_in(HOUR))
        });
        let layer = TokenRefreshLayer::builder(source)
            .initial_tokens(TokenSet::new("old").with_expires_in(Duration::from_secs(100)))
            // Stale from the start: the first request starts a background refresh.
            .advisory_window(RefreshWindow::fraction(1.0))
            .build();
        let mut client = ServiceBuilder::new().layer(layer).service(echo());
        let _response = client.call(get());
        done.send(()).unwrap();
    });
    assert!(
        finished.recv_timeout(Duration::from_secs(5)).is_ok(),
        "Service::call deadlocked on the control mutex"
    );
}

/// A token that is stale from birth (an advisory window as long as its
/// lifetime) is not refreshed back to back by the background timer:
/// refreshes are spaced by `min(min_refresh_interval, lifetime / 2)`.
#[tokio::test(start_paused = true)]
async fn the_background_timer_does_not_refresh_back_to_back() {
    let calls = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = Arc::clone(&calls);
    let source = refresh_fn(move |_ctx| {
        record.lock().unwrap().push(tokio::time::Instant::now());
        async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok::<_, RefreshError>(TokenSet::new("t").with_expires_in(Duration::from_secs(300)))
        }
    });
    let layer = TokenRefreshLayer::builder(source)
        .initial_tokens(TokenSet::new("t0").with_expires_in(Duration::from_secs(300)))
        .advisory_window(RefreshWindow::fixed(Duration::from_secs(600)))
        .background_refresh(true)
        .build();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let calls = calls.lock().unwrap().clone();
    // Refreshed without traffic, but each token kept for the default
    // min_refresh_interval of 5 s (a call takes 100 ms): 2 in 10 s.
    assert!(calls.len() >= 2, "{} refresh calls in 10 s", calls.len());
    for pair in calls.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(gap >= Duration::from_secs(5), "refreshed {gap:?} apart");
    }
    drop(layer);
}

/// Tokens set during a rate limit do not lift it: turning stale inside it,
/// they are used without a refresh call until it ends; then a request in
/// their stale window starts a background refresh.
#[tokio::test(start_paused = true)]
async fn tokens_set_during_a_rate_limit_are_refreshed_in_their_stale_window_once_it_ends() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let source = refresh_fn(move |_ctx| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        async move {
            if n == 0 {
                return Err(RefreshError::rate_limited(Some(Duration::from_secs(30))));
            }
            Ok(TokenSet::new("next").with_expires_in(HOUR))
        }
    });
    let layer = TokenRefreshLayer::builder(source)
        .initial_tokens(TokenSet::new("a0").with_expires_in(HOUR))
        .build();
    let handle = layer.handle();
    let client = ServiceBuilder::new().layer(layer).service(echo());
    let _ = handle.force_refresh().await;
    // Stale from 20 s (half its 40 s), inside the 30 s limit.
    handle
        .set_tokens(TokenSet::new("b").with_expires_in(Duration::from_secs(40)))
        .unwrap();
    tokio::time::sleep(Duration::from_secs(25)).await;
    assert_eq!(handle.status().state(), crate::TokenState::Stale);
    assert_eq!(bearer(&client).await.unwrap(), "Bearer b");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1, "no call inside the limit");

    tokio::time::sleep(Duration::from_secs(5)).await; // past it
    assert_eq!(bearer(&client).await.unwrap(), "Bearer b");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(bearer(&client).await.unwrap(), "Bearer next");
}
