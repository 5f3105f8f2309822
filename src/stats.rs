//! Counters of what the manager did, read through
//! [`TokenHandle::stats`](crate::TokenHandle::stats).
//!
//! Only slow paths count: a request sent with a fresh token touches no
//! counter, so the hot path stays free of shared writes.

use std::sync::atomic::{AtomicU64, Ordering};

/// A point-in-time copy of the manager's counters.
///
/// ```
/// # async fn example(handle: tower_token_refresh::TokenHandle) {
/// let stats = handle.stats();
/// assert!(stats.refresh_successes + stats.refresh_failures <= stats.refreshes);
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Refreshes started (each one call to the refresh source, unless a
    /// [store](crate::store) had newer tokens to adopt).
    pub refreshes: u64,
    /// Refresh calls that produced a token.
    pub refresh_successes: u64,
    /// Refresh calls that failed or timed out.
    pub refresh_failures: u64,
    /// Refreshes that adopted newer tokens another process (or layer) had
    /// put in the [store](crate::store) instead of calling the source.
    pub adopted: u64,
    /// Store operations that failed or timed out; each time the refresh
    /// went on without the store.
    pub store_errors: u64,
    /// Calls to the login source (for the first tokens, or after the
    /// refresh credential was rejected); each happens inside a refresh.
    pub logins: u64,
    /// Requests that had to wait for a refresh before they could be sent.
    pub waited: u64,
    /// Responses classified as an authentication rejection.
    pub rejections: u64,
    /// Rejected requests that were sent again with a new token.
    pub retries: u64,
    /// Rejections of a token that had already been replaced: retried with
    /// the current token without a new refresh.
    pub stale_rejections: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) refreshes: AtomicU64,
    pub(crate) refresh_successes: AtomicU64,
    pub(crate) refresh_failures: AtomicU64,
    pub(crate) logins: AtomicU64,
    pub(crate) adopted: AtomicU64,
    pub(crate) store_errors: AtomicU64,
    pub(crate) waited: AtomicU64,
    pub(crate) rejections: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) stale_rejections: AtomicU64,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Stats {
        let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Stats {
            refreshes: read(&self.refreshes),
            refresh_successes: read(&self.refresh_successes),
            refresh_failures: read(&self.refresh_failures),
            logins: read(&self.logins),
            adopted: read(&self.adopted),
            store_errors: read(&self.store_errors),
            waited: read(&self.waited),
            rejections: read(&self.rejections),
            retries: read(&self.retries),
            stale_rejections: read(&self.stale_rejections),
        }
    }
}
