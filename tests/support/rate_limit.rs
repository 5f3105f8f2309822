//! "At most N requests per window per client IP", as a sliding log.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Admits a request from one IP unless `limit` or more requests came from
/// it in the last `window`. Seed 002 limits requests ("More than 5
/// requests in 1 minute" → 429), so refused ones count too: a client that
/// calls again sooner than `window / limit` apart stays refused. The
/// DynamoSQL-style server counts the same way; seed 000 documents its 429
/// but no limit, so its tests choose one.
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

    /// Records a request from `ip` at `now`, and tells whether it is within
    /// the limit.
    pub fn admit(&self, ip: IpAddr, now: Instant) -> bool {
        let mut seen = self.seen.lock().unwrap();
        let log = seen.entry(ip).or_default();
        while log
            .front()
            .is_some_and(|&at| now.duration_since(at) >= self.window)
        {
            log.pop_front();
        }
        let within = log.len() < self.limit;
        log.push_back(now);
        within
    }
}
