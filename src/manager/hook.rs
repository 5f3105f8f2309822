//! The `on_refresh` hook, run in the order the tokens came.
//!
//! Each refresh shows its tokens to the hook before anyone can use them,
//! in a task of its own that the refresh waits for up to the refresh
//! timeout. Past it the tokens are used, and the hook runs on; so does
//! the hook of a refresh overtaken by tokens set by hand, alongside the
//! next refresh's. Hooks persist tokens, and a rotated refresh token
//! persisted after a newer one would have a restart present a token
//! already spent. So, found in review:
//!
//! - a hook starts by cancelling the one before it, should that one still
//!   run: its tokens are older than the ones about to be shown (the
//!   refresh that showed them started earlier, and a later one has
//!   finished since), and whatever it was still to persist is stale;
//! - a hook for tokens older than ones already shown (a refresh overtaken
//!   by tokens set by hand that ends after the next one) is not run.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::AbortHandle;

use super::{RefreshHook, Shared};
use crate::TokenSet;

/// The last hook started: for the next one to cancel and wait for.
pub(super) struct HookRun {
    /// The flight whose tokens it was shown (flights are numbered in the
    /// order they start).
    flight: u64,
    abort: AbortHandle,
    /// Closed once its task has ended, done or cancelled.
    ended: watch::Receiver<()>,
}

impl HookRun {
    /// Cancels the hook if it still runs (at its next `.await`; work it has
    /// handed off, such as a blocking write, may still land) and waits,
    /// up to `bound`, for it to stop: a hook stuck in blocking code cannot
    /// be cancelled, and the next must not wait for it forever.
    async fn stop(mut self, bound: Duration) {
        self.abort.abort();
        // Fails once the task has ended and dropped the sender.
        let _ = tokio::time::timeout(bound, self.ended.changed()).await;
    }
}

/// Shows `tokens`, which `flight` fetched, to `hook`, after stopping the
/// hook before it; waits up to the refresh timeout.
pub(super) async fn run(shared: &Shared, flight: u64, hook: &RefreshHook, tokens: Arc<TokenSet>) {
    let timeout = shared.config.refresh_timeout;
    let task = {
        let mut control = shared.lock();
        if control
            .last_hook
            .as_ref()
            .is_some_and(|last| last.flight > flight)
        {
            tracing::debug!("on_refresh hook not run: a later refresh's tokens were shown to it");
            return;
        }
        let before = control.last_hook.take();
        let hook = Arc::clone(hook);
        let (ended, ended_rx) = watch::channel(());
        // Spawned under the lock, so that the next hook finds this one.
        let task = tokio::spawn(async move {
            let _ended = ended;
            if let Some(before) = before {
                before.stop(timeout).await;
            }
            hook(&tokens).await;
        });
        control.last_hook = Some(HookRun {
            flight,
            abort: task.abort_handle(),
            ended: ended_rx,
        });
        task
    };
    match tokio::time::timeout(timeout, task).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) if error.is_cancelled() => tracing::warn!(
            "on_refresh hook cancelled: a later refresh's hook started, or its runtime shut down"
        ),
        Ok(Err(_)) => tracing::warn!("on_refresh hook panicked; the tokens are kept"),
        Err(_) => tracing::warn!("on_refresh hook did not finish within the refresh timeout"),
    }
}
