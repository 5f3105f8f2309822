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
//!   by tokens set by hand that ends after the next one, or one whose
//!   runtime stopped driving it, replaced after its deadline) is not run,
//!   and its tokens are not installed: the hook never saw them;
//! - nor are tokens whose hook a later one cancelled, or started beside
//!   ([`later_than`]): the later hook's persist last.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::AbortHandle;

use super::{Control, RefreshHook, Shared};
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

/// How long a hook waits for the one it cancelled to stop, at most (or a
/// quarter of the refresh timeout, if less): a hook between two `.await`s
/// stops once it reaches the next, but one stuck in blocking code cannot
/// be cancelled, and the wait comes out of the next hook's own time.
const STOP_GRACE: Duration = Duration::from_secs(1);

impl HookRun {
    /// Cancels the hook if it still runs (at its next `.await`; work it has
    /// handed off, such as a blocking write, may still land). Called under
    /// the lock that records the next hook, so that the cancellation does
    /// not depend on the next hook's task ever running.
    fn cancel(&self) {
        self.abort.abort();
    }

    /// Waits for the cancelled hook to stop, up to `grace`.
    async fn stopped(mut self, grace: Duration) {
        // Fails once the task has ended and dropped the sender.
        let _ = tokio::time::timeout(grace, self.ended.changed()).await;
    }
}

/// Shows `tokens`, which `flight` fetched, to `hook`, after stopping the
/// hook before it; waits up to the refresh timeout. Not run if a later
/// flight's tokens were shown already ([`later_than`]).
pub(super) async fn run(shared: &Shared, flight: u64, hook: &RefreshHook, tokens: Arc<TokenSet>) {
    let timeout = shared.config.refresh_timeout;
    let task = {
        let mut control = shared.lock();
        if later_than(&control, flight) {
            tracing::debug!("on_refresh hook not run: a later refresh's tokens were shown to it");
            return;
        }
        let before = control.last_hook.take();
        if let Some(before) = &before {
            before.cancel();
        }
        let hook = Arc::clone(hook);
        let (ended, ended_rx) = watch::channel(());
        let grace = STOP_GRACE.min(timeout / 4);
        // Spawned under the lock, so that the next hook finds this one.
        let task = tokio::spawn(async move {
            let _ended = ended;
            if let Some(before) = before {
                before.stopped(grace).await;
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

/// Whether a later flight's hook than `flight`'s has started (and
/// cancelled `flight`'s, if it still ran): what it was shown is newer, and
/// what it persists lands last, so `flight`'s tokens are not to be
/// installed. Found in review: they were, and the later flight's
/// discarded.
pub(super) fn later_than(control: &Control, flight: u64) -> bool {
    control
        .last_hook
        .as_ref()
        .is_some_and(|last| last.flight > flight)
}
