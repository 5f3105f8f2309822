//! The optional background timer: refresh at the advisory point even when
//! no request arrives.
//!
//! Sliding-refresh APIs (Ocient's `token_refresh` takes the current access
//! token as its credential) cannot recover a token that expired while the
//! client was idle, so for them refreshing on traffic alone is not enough.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use tokio::sync::Notify;
use tokio::time::Instant;

use super::{Shared, TokenManager};
use crate::RefreshReason;

impl TokenManager {
    /// Spawns the timer once, if enabled and a runtime is available; called
    /// at construction and again on use when construction had no runtime.
    pub(super) fn ensure_timer(&self) {
        let shared = &self.shared;
        if !shared.config.background || shared.timer_started.load(Ordering::Acquire) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if shared.timer_started.swap(true, Ordering::AcqRel) {
            return;
        }
        runtime.spawn(run(Arc::downgrade(shared), Arc::clone(&shared.changed)));
    }
}

/// Holds only a `Weak` between wake-ups, so dropping every layer and handle
/// ends the task (`Shared`'s drop wakes it).
async fn run(shared: Weak<Shared>, changed: Arc<Notify>) {
    loop {
        let notified = changed.notified();
        tokio::pin!(notified);
        // Register before reading the state, so a change in between is not lost.
        notified.as_mut().enable();
        let due = match shared.upgrade() {
            Some(shared) => next_due(&shared),
            None => return,
        };
        match due {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = &mut notified => continue,
                }
            }
            None => {
                notified.await;
                continue;
            }
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let manager = TokenManager { shared };
        if next_due(&manager.shared).is_some_and(|at| at <= Instant::now()) {
            let mut control = manager.shared.lock();
            let snapshot = manager.shared.snapshot.load_full();
            if control.flight.is_none() {
                let reason = if snapshot.tokens.is_none() {
                    RefreshReason::Initial
                } else {
                    RefreshReason::Scheduled
                };
                let _ = manager.start_flight(&mut control, reason, &snapshot);
            }
        }
    }
}

/// When the timer should next refresh: at the advisory point, or now when
/// there is no token, but never while a refresh runs or a failure blocks.
fn next_due(shared: &Shared) -> Option<Instant> {
    let control = shared.lock();
    if control.flight.is_some() {
        return None;
    }
    let snapshot = shared.snapshot.load();
    let due = if snapshot.header.is_none() {
        Instant::now()
    } else {
        snapshot.stale_at?
    };
    match &control.failure {
        None => Some(due),
        Some(failure) => failure.until.map(|until| until.max(due)),
    }
}
