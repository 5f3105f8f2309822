//! A refresh endpoint's documented rate limit, kept on the client's side.
//!
//! A server that limits calls per client and counts refused ones too (the
//! Cognito-backed API: "more than 5 requests in 1 minute" → `429`)
//! punishes a client that learns of the limit only from the `429`: backoff
//! retries after a run of `5xx`, a refresh after each early `401`, forced
//! refreshes, each spends the budget, and the one past it is refused.
//! Counting its own calls, the client does not make that call: it fails at
//! once as rate limited, naming when the next call may go, and the layer
//! keeps the current token and waits as it does for a `429`.
//!
//! Each refresher built keeps a call log of its own, shared only by its
//! clones (a clone given another limit starts a log of its own): calls
//! that other refreshers make to the same endpoint, in this process or
//! others behind the same IP address, are not counted, and a server that
//! counts per client IP may still answer `429`, handled as before. A call
//! that never reached the server (its connection refused) is not counted;
//! one that a client below retries on its own, or sends after the refresh
//! gave up on it (a queue such as tower's `Buffer`), is counted once.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::RefreshError;

/// At most `calls` calls in any `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RateLimit {
    pub(crate) calls: u32,
    pub(crate) per: Duration,
}

/// The calls made lately through one refresher and its clones, counted
/// against the limit they share (the dialect's): a refresher given another
/// limit starts a log of its own.
#[derive(Debug, Default)]
pub(crate) struct CallLog {
    state: Mutex<Calls>,
}

#[derive(Debug, Default)]
struct Calls {
    /// When recent calls ended, oldest first.
    ended: VecDeque<Instant>,
    /// Calls under way: each counts until it ends.
    under_way: u32,
}

impl CallLog {
    /// A slot for one call within `limit` (none when there is no limit),
    /// or the rate-limited error naming when one frees up.
    pub(crate) fn admit(
        self: &Arc<Self>,
        limit: Option<RateLimit>,
    ) -> Result<Option<CallSlot>, RefreshError> {
        let Some(limit) = limit else {
            return Ok(None);
        };
        let now = Instant::now();
        let mut calls = self.lock();
        while calls
            .ended
            .front()
            .is_some_and(|&ended| now.saturating_duration_since(ended) >= limit.per)
        {
            calls.ended.pop_front();
        }
        let counted = calls.ended.len() as u64 + u64::from(calls.under_way);
        if counted < u64::from(limit.calls) {
            calls.under_way += 1;
            return Ok(Some(CallSlot {
                log: Arc::clone(self),
                counts: true,
            }));
        }
        // The oldest ended call leaves the window first; with every counted
        // call still under way, a whole window is the safe guess.
        let wait = calls.ended.front().map_or(limit.per, |&oldest| {
            limit
                .per
                .saturating_sub(now.saturating_duration_since(oldest))
        });
        Err(RefreshError::rate_limited(Some(wait)).with_message(format!(
            "not called: the refresh endpoint allows {} calls per {:?}, all made",
            limit.calls, limit.per
        )))
    }

    fn lock(&self) -> MutexGuard<'_, Calls> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One admitted call. It is counted from when it ends (the slot is
/// dropped), not from when it was sent: the server counted it on arrival,
/// which is no later, so by the client's count it never leaves the
/// server's window first.
#[derive(Debug)]
pub(crate) struct CallSlot {
    log: Arc<CallLog>,
    counts: bool,
}

impl CallSlot {
    /// Frees the slot without counting the call: it never reached the
    /// server.
    pub(crate) fn not_sent(mut self) {
        self.counts = false;
    }
}

impl Drop for CallSlot {
    fn drop(&mut self) {
        let mut calls = self.log.lock();
        calls.under_way -= 1;
        if self.counts {
            calls.ended.push_back(Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(calls: u32, per: Duration) -> Option<RateLimit> {
        Some(RateLimit { calls, per })
    }

    #[tokio::test(start_paused = true)]
    async fn the_call_past_the_limit_waits_for_the_oldest_to_leave_the_window() {
        let log = Arc::new(CallLog::default());
        let five_a_minute = limit(5, Duration::from_secs(60));
        for _ in 0..5 {
            drop(log.admit(five_a_minute).expect("within the limit"));
            tokio::time::advance(Duration::from_secs(2)).await;
        }
        // 10 s after the first ended: it leaves the window in 50 s.
        let refused = log.admit(five_a_minute).expect_err("a sixth in the minute");
        assert!(refused.is_rate_limited(), "{refused}");
        assert_eq!(refused.retry_after(), Some(Duration::from_secs(50)));
        assert!(refused.to_string().contains("5 calls per 60s"), "{refused}");

        tokio::time::advance(Duration::from_secs(50)).await;
        let slot = log.admit(five_a_minute).expect("the first left the window");
        assert!(
            log.admit(five_a_minute).is_err(),
            "the slot counts while held"
        );
        drop(slot);
    }

    /// A call under way counts, and counts from when it ends: a slow call
    /// reaches the server's window no earlier than it ends.
    #[tokio::test(start_paused = true)]
    async fn a_call_counts_while_under_way_and_from_when_it_ends() {
        let log = Arc::new(CallLog::default());
        let one = limit(1, Duration::from_secs(10));
        let slot = log.admit(one).unwrap();
        let refused = log.admit(one).expect_err("one under way");
        assert_eq!(refused.retry_after(), Some(Duration::from_secs(10)));
        tokio::time::advance(Duration::from_secs(8)).await;
        drop(slot);
        tokio::time::advance(Duration::from_secs(9)).await;
        let refused = log.admit(one).expect_err("ended 9 s ago");
        assert_eq!(refused.retry_after(), Some(Duration::from_secs(1)));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(log.admit(one).unwrap().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_not_sent_is_not_counted_and_without_a_limit_nothing_is() {
        let log = Arc::new(CallLog::default());
        let one = limit(1, Duration::from_secs(10));
        for _ in 0..3 {
            log.admit(one).unwrap().expect("a slot").not_sent();
        }
        drop(log.admit(one).unwrap());
        assert!(log.admit(one).is_err(), "the sent call counts");
        assert!(log.admit(None).unwrap().is_none(), "no limit, no count");
    }
}
