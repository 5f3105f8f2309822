//! Failures and delays a test arms on a dialect server's refresh endpoint,
//! so a client's handling of each answer is tested against the real
//! server rather than a mock.
//!
//! A server that takes a pending [`Failure`] answers with it in its own
//! error shape instead of doing the work; a delay holds every refresh
//! answer (after the work is done) so a test can keep a refresh in flight;
//! a stall holds every refresh request before any work, so a client that
//! dies meanwhile (its connection closes and the server drops the request)
//! has spent nothing.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use hyper::header::{HeaderValue, RETRY_AFTER};
use hyper::{Response, StatusCode};

use super::server::ResBody;

/// An answer to inject: a status and, optionally, `Retry-After`.
#[derive(Debug, Clone)]
pub struct Failure {
    status: StatusCode,
    retry_after: Option<HeaderValue>,
}

impl Failure {
    /// Answer `status`, without `Retry-After`.
    pub fn new(status: StatusCode) -> Self {
        Self {
            status,
            retry_after: None,
        }
    }

    /// Also send `Retry-After: value`, verbatim: delay-seconds (`"7"`) or
    /// an HTTP date.
    pub fn retry_after(mut self, value: &str) -> Self {
        self.retry_after = Some(value.parse().expect("a valid header value"));
        self
    }

    /// The status to answer with.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// `body` (the dialect's error response for [`status`](Self::status))
    /// with this failure's headers added.
    pub fn respond(&self, mut body: Response<ResBody>) -> Response<ResBody> {
        debug_assert_eq!(body.status(), self.status);
        if let Some(retry_after) = &self.retry_after {
            body.headers_mut().insert(RETRY_AFTER, retry_after.clone());
        }
        body
    }
}

/// The failures and delay armed on one endpoint.
#[derive(Default)]
pub struct Faults {
    pending: Mutex<VecDeque<Failure>>,
    delay: Mutex<Duration>,
    stall: Mutex<Duration>,
    /// Requests that began waiting out a stall.
    stalled: AtomicU64,
}

impl Faults {
    /// Answers the next `n` requests with `failure`, after any failures
    /// already pending.
    pub fn fail_next(&self, n: usize, failure: Failure) {
        let mut pending = self.pending.lock().unwrap();
        pending.extend(std::iter::repeat_n(failure, n));
    }

    /// Holds every answer for `delay` from now on (zero: no delay).
    pub fn set_delay(&self, delay: Duration) {
        *self.delay.lock().unwrap() = delay;
    }

    /// Holds every request for `stall` before any work from now on (zero:
    /// no stall).
    pub fn set_stall(&self, stall: Duration) {
        *self.stall.lock().unwrap() = stall;
    }

    /// Waits out the armed stall.
    pub async fn stall(&self) {
        let stall = *self.stall.lock().unwrap();
        if !stall.is_zero() {
            self.stalled.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(stall).await;
        }
    }

    /// Requests that began waiting out a stall so far: each has read the
    /// stall it waits out, which lifting it no longer shortens.
    pub fn stalled(&self) -> u64 {
        self.stalled.load(Ordering::SeqCst)
    }

    /// One refresh request's answer: after the stall, the pending failure
    /// in the dialect's shape (`shape`, counted in `injected`) or the real
    /// `work`; then the delay.
    pub async fn answer<R>(
        &self,
        injected: &AtomicU64,
        shape: impl FnOnce(&Failure) -> R,
        work: impl Future<Output = R>,
    ) -> R {
        self.stall().await;
        let answer = match self.take() {
            Some(failure) => {
                injected.fetch_add(1, Ordering::SeqCst);
                shape(&failure)
            }
            None => work.await,
        };
        self.delay().await;
        answer
    }

    /// The failure to answer this request with, if one is pending.
    pub fn take(&self) -> Option<Failure> {
        self.pending.lock().unwrap().pop_front()
    }

    /// Waits out the armed delay (on tokio's clock, so a paused test
    /// clock applies).
    pub async fn delay(&self) {
        let delay = *self.delay.lock().unwrap();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }
}

/// A dialect server whose refresh endpoint takes armed faults; it answers
/// an injected failure in its own error shape.
pub trait InjectFaults {
    /// The faults armed on the refresh endpoint.
    fn faults(&self) -> &Faults;

    /// Answers the next `n` refresh requests with `failure`.
    fn fail_next_refreshes(&self, n: usize, failure: Failure) {
        self.faults().fail_next(n, failure);
    }

    /// Holds every refresh answer for `delay`, after the work (zero: not at
    /// all).
    fn delay_refreshes(&self, delay: Duration) {
        self.faults().set_delay(delay);
    }

    /// Holds every refresh request for `stall` before any work (zero: not
    /// at all): a client that dies meanwhile spends nothing.
    fn stall_refreshes(&self, stall: Duration) {
        self.faults().set_stall(stall);
    }
}
