//! "At most N requests per window per client IP", as a sliding log.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Admits at most `limit` requests from one IP in any span of `window`.
/// Rejected requests are not recorded, so a client that backs off recovers
/// as soon as its oldest admitted request leaves the window.
pub struct RateLimiter {
    limit: usize,
    window: Duration,
    seen: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
}

impl RateLimiter {
    pub fn new(limit: usize, window: Duration) -> Self {
        Self {
            limit,
            window,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Records a request from `ip` at `now` if it is within the limit.
    pub fn admit(&self, ip: IpAddr, now: Instant) -> bool {
        let mut seen = self.seen.lock().unwrap();
        let log = seen.entry(ip).or_default();
        while log
            .front()
            .is_some_and(|&at| now.duration_since(at) >= self.window)
        {
            log.pop_front();
        }
        if log.len() >= self.limit {
            return false;
        }
        log.push_back(now);
        true
    }
}
