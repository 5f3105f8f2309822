//! The handle's [`Bearer`](crate::Bearer) tokens, on tokio's paused clock:
//! the layer's windows, single flight and rejection rules, without a
//! request through the layer.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tower::ServiceBuilder;

use crate::test_support::{burst, failing, issuer, old_token_layer, recording, settle, Api, Held};
use crate::{Bearer, Error, RefreshError, TokenHandle, TokenRefreshLayer, TokenSet};

const HUNDRED: Duration = Duration::from_secs(100);

/// `n` callers at once, each in a task of its own with a clone of `handle`.
async fn callers<F, Fut>(handle: &TokenHandle, n: usize, call: F) -> Vec<Result<Bearer, Error>>
where
    F: Fn(TokenHandle) -> Fut,
    Fut: Future<Output = Result<Bearer, Error>> + Send + 'static,
{
    let tasks: Vec<_> = (0..n).map(|_| tokio::spawn(call(handle.clone()))).collect();
    let mut results = Vec::with_capacity(n);
    for task in tasks {
        results.push(task.await.expect("caller task"));
    }
    results
}

/// Whether every result is `token`.
fn all_got(results: &[Result<Bearer, Error>], token: &str) -> bool {
    results
        .iter()
        .all(|r| r.as_ref().expect("a token").expose() == token)
}

#[tokio::test(start_paused = true)]
async fn a_fresh_token_is_handed_out_at_once_and_a_stale_one_while_one_background_refresh_runs() {
    let api = Api::default();
    // 100 s token: advisory window 50 s, mandatory 10 s.
    let (layer, issuer) = old_token_layer(&api, HUNDRED, Duration::from_secs(5), |b| b);
    let handle = layer.handle();

    let fresh = handle.bearer().await.unwrap();
    assert_eq!((fresh.expose(), issuer.calls()), ("old", 0));

    tokio::time::advance(Duration::from_secs(60)).await;
    let stale = callers(&handle, 50, |h| async move { h.bearer().await }).await;
    assert!(all_got(&stale, "old"));
    // Counted as the refresh starts: the source runs in its own task.
    assert_eq!(
        handle.stats().refreshes,
        1,
        "one background refresh for 50 callers"
    );
    assert_eq!(handle.stats().waited, 0, "nobody waited");

    tokio::time::sleep(Duration::from_secs(6)).await;
    let next = handle.bearer().await.unwrap();
    assert_eq!((next.expose(), next.generation()), ("tok-1", 2));
    assert_eq!(issuer.calls(), 1);
    // Its lifetime counts from when the refresh asked for it, at 60 s.
    assert_eq!(next.expires_in(), Some(Duration::from_secs(94)));
}

#[tokio::test(start_paused = true)]
async fn callers_of_an_expired_token_wait_for_one_refresh() {
    let api = Api::default();
    let (layer, issuer) = old_token_layer(&api, HUNDRED, Duration::from_secs(1), |b| b);
    let handle = layer.handle();
    tokio::time::advance(Duration::from_secs(95)).await;

    let waited = callers(&handle, 100, |h| async move { h.bearer().await }).await;
    assert!(all_got(&waited, "tok-1"));
    assert_eq!(issuer.calls(), 1);
    assert_eq!(handle.stats().waited, 100);
}

#[tokio::test(start_paused = true)]
async fn a_rejection_refreshes_once_for_every_caller_and_a_stale_one_not_at_all() {
    let api = Api::default();
    let (layer, issuer) = old_token_layer(&api, HUNDRED, Duration::from_secs(1), |b| b);
    let handle = layer.handle();
    let old = handle.bearer().await.unwrap();

    let renewed = callers(&handle, 100, |h| {
        let old = old.clone();
        async move { h.bearer_after_rejection(&old).await }
    })
    .await;
    assert!(all_got(&renewed, "tok-1"));
    assert_eq!(issuer.calls(), 1, "one refresh for 100 rejections");

    // Told late of the old token's rejection: the current token, no refresh.
    let late = handle.bearer_after_rejection(&old).await.unwrap();
    assert_eq!(late.expose(), "tok-1");
    assert_eq!(issuer.calls(), 1);
    let stats = handle.stats();
    assert_eq!((stats.rejections, stats.stale_rejections), (101, 1));
    // Nor is the current token marked rejected by it.
    let current = handle.bearer().await.unwrap();
    assert_eq!(current.expose(), "tok-1");
    assert_eq!((handle.stats().waited, issuer.calls()), (stats.waited, 1));
}

#[tokio::test(start_paused = true)]
async fn a_stale_rejection_whose_successor_was_rejected_too_waits_for_its_refresh() {
    let api = Api::default();
    let (layer, issuer) = old_token_layer(&api, HUNDRED, Duration::from_secs(1), |b| {
        b.min_refresh_interval(Duration::ZERO)
    });
    let handle = layer.handle();
    let old = handle.bearer().await.unwrap();
    let first = handle.bearer_after_rejection(&old).await.unwrap();
    assert_eq!(first.expose(), "tok-1");

    // tok-1 rejected in turn; while its refresh runs, the old token's
    // rejection is told late: the successor cannot be used, so it waits.
    let rejecting = tokio::spawn({
        let handle = handle.clone();
        async move { handle.bearer_after_rejection(&first).await }
    });
    settle().await;
    assert!(handle.status().is_refreshing(), "tok-1's refresh runs");
    let late = handle.bearer_after_rejection(&old).await.unwrap();
    assert_eq!(late.expose(), "tok-2");
    assert_eq!(rejecting.await.unwrap().unwrap().expose(), "tok-2");
    assert_eq!(issuer.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_rejection_after_a_terminal_failure_gets_its_typed_error_without_another_call() {
    let (source, calls) = failing(|| RefreshError::terminal("revoked"));
    let handle = TokenRefreshLayer::builder(source)
        .initial_tokens(TokenSet::new("old").with_refresh_token("dead"))
        .build()
        .handle();
    let old = handle.bearer().await.unwrap();
    let error = handle.bearer_after_rejection(&old).await.unwrap_err();
    assert!(error.is_reauth_required(), "{error}");
    let again = handle.bearer_after_rejection(&old).await.unwrap_err();
    assert!(again.is_reauth_required(), "{again}");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
#[should_panic(expected = "another layer")]
async fn a_bearer_told_to_another_layers_handle_panics() {
    let api = Api::default();
    let (one, _) = old_token_layer(&api, HUNDRED, Duration::ZERO, |b| b);
    let (other, _) = old_token_layer(&api, HUNDRED, Duration::ZERO, |b| b);
    let bearer = one.handle().bearer().await.unwrap();
    // Same generation, another layer's token: never taken for its own.
    let _ = other.handle().bearer_after_rejection(&bearer).await;
}

#[tokio::test(start_paused = true)]
async fn a_token_past_ascii_is_exposed_as_it_was_given() {
    let api = Api::default();
    let (layer, _) = old_token_layer(&api, HUNDRED, Duration::ZERO, |b| b);
    let handle = layer.handle();
    handle.set_tokens(TokenSet::new("tøken-ü")).unwrap();
    let bearer = handle.bearer().await.unwrap();
    assert_eq!(bearer.expose(), "tøken-ü");
    assert_eq!(
        bearer.header_value().as_bytes(),
        "Bearer tøken-ü".as_bytes()
    );
    assert_eq!(bearer.expires_in(), None, "set without a lifetime");
}

#[tokio::test(start_paused = true)]
async fn a_token_rejected_soon_after_its_refresh_is_not_refreshed_again() {
    let api = Api::default();
    let (layer, issuer) = old_token_layer(&api, HUNDRED, Duration::ZERO, |b| {
        b.min_refresh_interval(Duration::from_secs(10))
    });
    let handle = layer.handle();
    let old = handle.bearer().await.unwrap();
    let first = handle.bearer_after_rejection(&old).await.unwrap();

    let error = handle.bearer_after_rejection(&first).await.unwrap_err();
    assert!(error.is_rejected_too_soon(), "{error}");
    assert_eq!(issuer.calls(), 1);

    // Past the interval a rejection refreshes again.
    tokio::time::advance(Duration::from_secs(11)).await;
    let second = handle.bearer_after_rejection(&first).await.unwrap();
    assert_eq!((second.expose(), issuer.calls()), ("tok-2", 2));
}

#[tokio::test(start_paused = true)]
async fn failures_are_the_typed_errors_a_request_gets() {
    let (source, calls) = failing(|| RefreshError::terminal("revoked"));
    let handle = TokenRefreshLayer::builder(source).build().handle();
    let error = handle.bearer().await.unwrap_err();
    assert!(error.is_reauth_required(), "{error}");
    // Failing fast now, without another call to the identity server.
    assert!(handle.bearer().await.unwrap_err().is_reauth_required());
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    let (source, _) = failing(|| RefreshError::transient("503"));
    let handle = TokenRefreshLayer::builder(source).build().handle();
    assert!(handle.bearer().await.unwrap_err().is_refresh_failed());
}

#[tokio::test(start_paused = true)]
async fn handle_callers_and_requests_share_one_refresh() {
    let api = Api::default();
    let (source, issuer) = issuer(&api, Some(HUNDRED), Duration::from_secs(1));
    let layer = TokenRefreshLayer::builder(source).build();
    let handle = layer.handle();
    let client = ServiceBuilder::new().layer(layer).service(api.clone());

    let (tokens, responses) = tokio::join!(
        callers(&handle, 20, |h| async move { h.bearer().await }),
        burst(&client, 20)
    );
    assert!(all_got(&tokens, "tok-1"));
    assert!(responses
        .iter()
        .all(|r| r.as_ref().unwrap().1.starts_with("Bearer tok-1")));
    assert_eq!(issuer.calls(), 1);
}

/// In a task of its own: the current token, rejected at once.
fn reject_current(handle: &TokenHandle) -> tokio::task::JoinHandle<Result<Bearer, Error>> {
    let handle = handle.clone();
    tokio::spawn(async move {
        let current = handle.bearer().await?;
        handle.bearer_after_rejection(&current).await
    })
}

#[tokio::test(start_paused = true)]
async fn a_token_rejected_before_its_waiter_takes_it_is_waited_past_each_time() {
    let api = Api::default();
    let (layer, issuer) = old_token_layer(&api, HUNDRED, Duration::from_secs(1), |b| {
        b.min_refresh_interval(Duration::ZERO)
    });
    let handle = layer.handle();
    tokio::time::advance(Duration::from_secs(95)).await;

    // Waits for the refresh of the expired token, then is not polled until
    // tok-1 has been rejected: it must not be handed tok-1.
    let mut waiter = Held::new(handle.bearer());
    assert!(waiter.poll().is_pending());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let first = reject_current(&handle);
    settle().await;
    assert!(waiter.poll().is_pending(), "waits for tok-2");
    // Again between tok-2's refresh and its waiter's next poll.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(first.await.unwrap().unwrap().expose(), "tok-2");
    let second = reject_current(&handle);
    settle().await;

    assert_eq!(waiter.0.await.unwrap().expose(), "tok-3");
    assert_eq!(second.await.unwrap().unwrap().expose(), "tok-3");
    assert_eq!(issuer.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_failure_that_blocks_the_refresh_a_token_needs_before_its_hand_out_is_returned() {
    let (source, presented) = recording(|n| match n {
        1 => Ok(TokenSet::new("tok-1")
            .with_refresh_token("r")
            .with_expires_in(HUNDRED)),
        _ => Err(RefreshError::terminal("revoked")),
    });
    let handle = TokenRefreshLayer::builder(source)
        .min_refresh_interval(Duration::ZERO)
        .build()
        .handle();
    let mut waiter = Held::new(handle.bearer());
    assert!(waiter.poll().is_pending());
    settle().await;
    // tok-1 came, and is rejected before its waiter takes it; the refresh
    // for it fails for good.
    let rejected = reject_current(&handle).await.unwrap().unwrap_err();
    assert!(rejected.is_reauth_required(), "{rejected}");

    let error = waiter.0.await.unwrap_err();
    assert!(error.is_reauth_required(), "{error}");
    assert_eq!(presented.lock().unwrap().len(), 2);
}
