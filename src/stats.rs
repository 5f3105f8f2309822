//! Counters of what the manager did, read through
//! [`TokenHandle::stats`](crate::TokenHandle::stats).
//!
//! Only slow paths count: a request sent with a fresh token touches no
//! counter, so the hot path stays free of shared writes.

use std::sync::atomic::{AtomicU64, Ordering};

/// A point-in-time copy of the manager's counters.
///
/// ```
/// # use std::convert::Infallible;
/// # use http::{Request, Response, StatusCode};
/// # use tower::{ServiceBuilder, ServiceExt};
/// use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// # let source = refresh_fn(|_| async { Ok::<_, RefreshError>(TokenSet::new("new")) });
/// let layer = TokenRefreshLayer::builder(source).initial_tokens(TokenSet::new("old")).build();
/// let handle = layer.handle();
/// // An API that only accepts the new token.
/// let client = ServiceBuilder::new().layer(layer).service_fn(|req: Request<_>| async move {
///     let ok = req.headers()["authorization"] == "Bearer new";
///     let status = if ok { StatusCode::OK } else { StatusCode::UNAUTHORIZED };
///     Ok::<_, Infallible>(Response::builder().status(status).body(String::new()).unwrap())
/// });
/// let request = Request::new(http_body_util::Empty::<bytes::Bytes>::new());
/// assert_eq!(client.oneshot(request).await.unwrap().status(), StatusCode::OK);
///
/// let stats = handle.stats();
/// assert!(stats.refresh_successes + stats.refresh_failures <= stats.refreshes);
/// // "old" was rejected, refreshed once, and the request retried with "new".
/// assert_eq!((stats.rejections, stats.refreshes, stats.refresh_successes), (1, 1, 1));
/// assert_eq!((stats.retries, stats.stale_rejections, stats.logins), (1, 0, 0));
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Refreshes started, one per single-flight refresh: each calls the
    /// refresh source, the [login source](crate::Builder::login) (counted
    /// in [`logins`](Self::logins) too) or both, unless a
    /// [store](crate::store) had newer tokens to adopt, or failed while the
    /// token was still good (the refresh is then put off, and counted in
    /// [`refresh_failures`](Self::refresh_failures)).
    pub refreshes: u64,
    /// Refresh calls that produced a token.
    pub refresh_successes: u64,
    /// Refresh calls that failed or timed out, refreshes put off because
    /// the [store](crate::store) failed while the token was good, and
    /// refreshes whose task was dropped unfinished with its runtime (those
    /// back nothing off: the next caller starts another).
    pub refresh_failures: u64,
    /// Newer tokens adopted from the [store](crate::store), put there by
    /// another process (or layer), instead of calling the source: by a
    /// refresh, or by the watcher when a sibling announced them (not
    /// counted in [`refreshes`](Self::refreshes)).
    pub adopted: u64,
    /// Store operations that failed or timed out: in a refresh (which then
    /// went on without the store, or was put off while the token was good),
    /// or in the watcher's adoption of an announced version.
    pub store_errors: u64,
    /// Calls to the login source (for the first tokens, or after the
    /// refresh credential was rejected); each happens inside a refresh.
    pub logins: u64,
    /// Waits for a refresh before a send: a request counts once for each
    /// (before its first send, before its retry, and again if the token it
    /// was to be sent with was rejected by another request's answer first).
    /// A token the [handle](crate::TokenHandle::bearer) hands out counts
    /// the same way.
    pub waited: u64,
    /// Responses classified as an authentication rejection, rejections
    /// told to [`TokenHandle::bearer_after_rejection`](crate::TokenHandle::bearer_after_rejection),
    /// and gRPC UNAUTHENTICATED statuses in the trailers of a call sent
    /// with the current token (with the `tonic` feature).
    pub rejections: u64,
    /// Rejected requests handed to the inner service again with a new
    /// token. One the inner service then does not send is counted too (a
    /// gRPC call past its deadline, which `IntoTonicBody` does not send,
    /// with the `tonic` feature).
    pub retries: u64,
    /// Rejections of a token that had already been replaced: the current
    /// token was at hand without a new refresh, and the request was retried
    /// with it where it could be (see [`retries`](Self::retries)).
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
    /// Release: whoever reads this count (acquire) also sees every count
    /// bumped before it, such as the start of the refresh that ended.
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Release);
    }

    /// Reads what ends before what starts (completions before
    /// `refreshes`, retries before `rejections`), so that a copy taken
    /// while refreshes start and end never shows more ended than started.
    /// Struct fields are evaluated in the order written.
    pub(crate) fn snapshot(&self) -> Stats {
        let read = |c: &AtomicU64| c.load(Ordering::Acquire);
        Stats {
            refresh_successes: read(&self.refresh_successes),
            refresh_failures: read(&self.refresh_failures),
            adopted: read(&self.adopted),
            logins: read(&self.logins),
            store_errors: read(&self.store_errors),
            retries: read(&self.retries),
            stale_rejections: read(&self.stale_rejections),
            waited: read(&self.waited),
            refreshes: read(&self.refreshes),
            rejections: read(&self.rejections),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;
    use std::sync::{mpsc, Arc};

    use super::*;

    /// Refreshes (each with its rejection) the churning thread must be seen
    /// to start and end while copies are taken.
    const CHURNED: u64 = 1_000_000;

    /// Found in review: `refreshes` was read first, so a copy taken while a
    /// refresh started and ended could count it as ended but not started.
    /// Copies taken while another thread starts and ends refreshes as fast
    /// as it can never break the invariant the `Stats` docs show.
    #[test]
    fn a_copy_never_shows_more_refreshes_ended_than_started() {
        let counters = Arc::new(Counters::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (started, churning) = mpsc::channel();
        let churn = {
            let (counters, stop) = (counters.clone(), stop.clone());
            std::thread::spawn(move || {
                started.send(()).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    Counters::bump(&counters.refreshes);
                    Counters::bump(&counters.refresh_successes);
                    Counters::bump(&counters.rejections);
                    Counters::bump(&counters.retries);
                }
            })
        };
        // Copies count only while the counters move: not before the thread
        // runs, and not until they have moved by `CHURNED` (however slowly
        // a loaded machine lets it run).
        churning.recv().unwrap();
        let first = counters.snapshot();
        let mut broken = None;
        let mut copies = 0_u64;
        loop {
            let stats = counters.snapshot();
            copies += 1;
            if stats.refresh_successes > stats.refreshes || stats.retries > stats.rejections {
                broken = Some(stats);
                break;
            }
            if stats.refreshes - first.refreshes >= CHURNED
                && stats.rejections - first.rejections >= CHURNED
            {
                break;
            }
        }
        stop.store(true, Ordering::Relaxed);
        churn.join().unwrap();
        assert_eq!(broken, None, "after {copies} copies");
    }
}
