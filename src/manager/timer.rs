//! The watcher task: marks tokens stale on time, and optionally refreshes
//! without traffic.
//!
//! Three jobs, one task:
//!
//! - It raises each snapshot's `stale` flag shortly before its advisory
//!   point (from then on requests read the clock), so the
//!   hot path reads no clock while a token is fresh (a clock read is the
//!   most expensive part of a fresh-token request on many machines, and a
//!   system call on some virtual ones). If the task dies, its guard hands
//!   the decision back to the clock.
//! - With background refresh on, it starts a refresh at the advisory point
//!   even when no request arrives: sliding-refresh APIs (Ocient's
//!   `token_refresh` takes the current access token as its credential)
//!   cannot recover a token that expired while the client was idle.
//! - With a store that announces changes, it adopts the tokens another
//!   process stored, so this one never sends a token the fleet replaced.

use std::hash::{Hash, Hasher};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use tokio::runtime::{Id, RuntimeFlavor};

use super::snapshot::Snapshot;
use super::{Control, Shared, TokenManager};
use crate::RefreshReason;

impl TokenManager {
    /// Spawns the watcher once, if a runtime is available and the watcher
    /// has not panicked on it; called at construction and again on use
    /// (after a runtime appears, or after the previous runtime shut down
    /// and took the task with it).
    pub(super) fn ensure_timer(&self) {
        let shared = &self.shared;
        if shared.timer_started.load(Ordering::Acquire) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if shared.watcher_panicked_on.load(Ordering::Relaxed) == runtime_key(runtime.id()) {
            return;
        }
        if shared.timer_started.swap(true, Ordering::AcqRel) {
            return;
        }
        // Made before spawning: a task dropped unpolled (its runtime is
        // shutting down) still resets `timer_started`.
        let guard = WatchGuard {
            shared: Arc::downgrade(shared),
            runtime: runtime.id(),
            watching: Weak::new(),
            // Only a multi-thread runtime keeps its timers running while
            // nothing awaits on it; a current-thread runtime may sit idle
            // between `block_on` calls while requests come from elsewhere,
            // so there requests keep reading the clock.
            promise: runtime.runtime_flavor() == RuntimeFlavor::MultiThread,
        };
        runtime.spawn(run(guard, Arc::clone(&shared.changed)));
    }
}

/// Undoes the watcher's promises when its task ends, however it ends.
struct WatchGuard {
    shared: Weak<Shared>,
    runtime: Id,
    watching: Weak<Snapshot>,
    promise: bool,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        if let Some(snapshot) = self.watching.upgrade() {
            snapshot.unwatch();
        }
        // Restarted by the next request, but not on the runtime it
        // panicked on (whatever the panic): it would likely panic again (on
        // a runtime without timers, at once), and every request would
        // spawn another. Requests there read the clock themselves
        // (unwatched above).
        if let Some(shared) = self.shared.upgrade() {
            if std::thread::panicking() {
                shared
                    .watcher_panicked_on
                    .store(runtime_key(self.runtime), Ordering::Relaxed);
            }
            shared.timer_started.store(false, Ordering::Release);
        }
    }
}

/// Holds only `Weak`s between wake-ups, so dropping every layer and handle
/// ends the task (`Shared`'s drop wakes it). An adoption's task holds the
/// state for its one store load, bounded by the refresh timeout.
async fn run(mut guard: WatchGuard, changed: Arc<Notify>) {
    let mut announcements = guard
        .shared
        .upgrade()
        .and_then(|shared| shared.config.store.as_ref()?.subscribe_dyn());
    // An adoption runs on a task of its own: its store load may take up to
    // the refresh timeout, and the watcher keeps its promise meanwhile.
    // One at a time; an announcement made during one waits for it (its
    // receiver keeps it marked unseen).
    let mut adopting: Option<JoinHandle<()>> = None;
    loop {
        let notified = changed.notified();
        tokio::pin!(notified);
        // Register before reading the state, so a change in between is not lost.
        notified.as_mut().enable();
        let Some(shared) = guard.shared.upgrade() else {
            return;
        };
        let snapshot = shared.snapshot.load_full();
        // Without a promise, requests read the clock and `stale` tells
        // them nothing: no timer for it. Found in review: on a paused
        // clock, that timer was one the clock jumped to whenever the
        // runtime waited on anything else (a loopback server's answer),
        // ageing the token by most of its lifetime at once.
        let stale_due = snapshot
            .watch(Instant::now(), guard.promise)
            .filter(|_| guard.promise);
        guard.watching = Arc::downgrade(&snapshot);
        let refresh_due = if shared.config.background {
            next_due(&shared.lock(), &snapshot)
        } else {
            None
        };
        drop((shared, snapshot));

        let wake_at = stale_due.into_iter().chain(refresh_due).min();
        let due = async {
            match wake_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = due => {}
            () = &mut notified => continue,
            () = announced(&mut announcements), if adopting.is_none() => {
                if let Some(shared) = guard.shared.upgrade() {
                    if let Some(store) = shared.config.store.clone() {
                        let manager = TokenManager { shared };
                        adopting = Some(tokio::spawn(async move {
                            manager.adopt_announced(&*store).await;
                        }));
                    }
                }
                continue;
            }
            _ = finished(&mut adopting) => {
                adopting = None;
                continue;
            }
        }

        if let Some(snapshot) = guard.watching.upgrade() {
            snapshot.watch(Instant::now(), guard.promise);
        }
        let Some(shared) = guard.shared.upgrade() else {
            return;
        };
        if shared.config.background {
            start_scheduled(TokenManager { shared });
        }
    }
}

/// Resolves when another process (or layer) announces a stored version;
/// never once the store stops announcing.
async fn announced(announcements: &mut Option<watch::Receiver<u64>>) {
    if let Some(receiver) = announcements {
        if receiver.changed().await.is_ok() {
            return;
        }
    }
    *announcements = None;
    std::future::pending().await
}

/// Resolves when the running adoption ends (panicked or not); never while
/// none runs.
async fn finished(adopting: &mut Option<JoinHandle<()>>) {
    match adopting {
        Some(task) => {
            let _ = task.await;
        }
        None => std::future::pending().await,
    }
}

/// Starts the background refresh if it is due and nothing else runs,
/// deciding under one lock and spawning after it is released.
fn start_scheduled(manager: TokenManager) {
    let launch = {
        let mut control = manager.shared.lock();
        let snapshot = manager.shared.snapshot.load_full();
        let due = next_due(&control, &snapshot);
        if due.is_none_or(|at| at > Instant::now()) {
            return;
        }
        let reason = snapshot.refresh_reason(RefreshReason::Scheduled);
        manager.start_flight(&mut control, reason, &snapshot)
    };
    if let Ok(launch) = launch {
        launch.spawn();
    }
}

/// When the background refresh should run: at the advisory point (never
/// before the token's `proactive_from`), or now when there is no token;
/// never while a refresh runs or a failure blocks.
///
/// While a refresh runs, the time to look again is its deadline: past it,
/// a flight whose runtime stopped driving it (it never settles, so nothing
/// wakes the watcher) is replaced. Found in review: the watcher slept until
/// some change that never came, and the token expired without traffic.
fn next_due(control: &Control, snapshot: &Snapshot) -> Option<Instant> {
    let now = Instant::now();
    if let Some(flight) = control.flight.as_ref().filter(|f| f.is_live(now)) {
        return Some(flight.deadline());
    }
    let due = if snapshot.header.is_none() {
        now
    } else {
        snapshot
            .stale_at?
            .max(snapshot.proactive_from.unwrap_or(now))
    };
    match &control.failure {
        None => Some(due),
        Some(failure) => failure.until.map(|until| until.max(due)),
    }
}

/// A runtime's id as a number for an atomic (tokio gives no other way):
/// the number tokio hashes it as, exactly, so that no two runtimes share a
/// key (tokio never reuses an id); never 0, which stands for none.
pub(crate) fn runtime_key(id: Id) -> u64 {
    /// Keeps the last number written: an `Id` hashes as one `u64`.
    #[derive(Default)]
    struct Exact(u64);

    impl Hasher for Exact {
        fn finish(&self) -> u64 {
            self.0
        }

        fn write(&mut self, bytes: &[u8]) {
            // Not how an `Id` hashes today; folded in should that change.
            for &byte in bytes {
                self.0 = self.0.rotate_left(8) ^ u64::from(byte);
            }
        }

        fn write_u64(&mut self, n: u64) {
            self.0 = n;
        }
    }

    let mut hasher = Exact::default();
    id.hash(&mut hasher);
    hasher.finish().max(1)
}

#[cfg(test)]
mod tests {
    use super::runtime_key;

    #[test]
    fn a_runtimes_key_is_its_id_exactly() {
        let [one, two] = [(); 2].map(|()| crate::test_support::runtime_without_timers());
        let (one, two) = (one.handle().id(), two.handle().id());
        assert_eq!(runtime_key(one).to_string(), one.to_string());
        assert_ne!(runtime_key(one), runtime_key(two));
    }
}
