//! A refresh endpoint's documented rate limit, kept on the client's side.
//!
//! A server that limits calls per client and counts refused ones too (seed
//! 002: "more than 5 requests in 1 minute" → `429`) punishes a client that
//! learns of the limit only from the `429`: backoff retries after a run of
//! `5xx`, a refresh after each early `401`, forced refreshes, each spends
//! the budget, and the one past it is refused. Counting its own calls, the
//! client does not make that call: it fails at once as rate limited, naming
//! when the next call may go, and the layer keeps the current token and
//! waits as it does for a `429`.
//!
//! Only this process's calls are counted: clients sharing the limit (one IP
//! address, many processes) still meet the server's `429`, handled as
//! before.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::RefreshError;

/// At most `calls` calls in any `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RateLimit {
    pub(crate) calls: u32,
    pub(crate) per: Duration,
}

/// The calls made lately through one refresher and its clones.
#[derive(Debug, Default)]
pub(crate) struct CallLog {
    state: Mutex<Calls>,
}

#[derive(Debug, Default)]
struct Calls {
    /// When recent calls ended, oldest first.
    ended: Vec<Instant>,
    /// Calls under way: each counts until it ends.
    under_way: u32,
}

impl CallLog {
    /// A slot for one call within `limit`, or the rate-limited error naming
    /// when one frees up.
    pub(crate) fn admit(self: &Arc<Self>, limit: RateLimit) -> Result<CallSlot, RefreshError> {
        let now = Instant::now();
        let mut calls = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        calls
            .ended
            .retain(|&ended| now.saturating_duration_since(ended) < limit.per);
        let counted = calls.ended.len() as u64 + u64::from(calls.under_way);
        if counted < u64::from(limit.calls) {
            calls.under_way += 1;
            return Ok(CallSlot {
                log: Arc::clone(self),
            });
        }
        // The oldest ended call leaves the window first; with every counted
        // call still under way, a whole window is the safe guess.
        let wait = calls.ended.first().map_or(limit.per, |&oldest| {
            limit
                .per
                .saturating_sub(now.saturating_duration_since(oldest))
        });
        Err(RefreshError::rate_limited(Some(wait)).with_message(format!(
            "not called: the refresh endpoint allows {} calls per {:?}, all made",
            limit.calls, limit.per
        )))
    }
}

/// One admitted call. It is counted from when it ends (the slot is
/// dropped), not from when it was sent: the server counted it on arrival,
/// which is no later, so by the client's count it never leaves the
/// server's window first.
#[derive(Debug)]
pub(crate) struct CallSlot {
    log: Arc<CallLog>,
}

impl Drop for CallSlot {
    fn drop(&mut self) {
        let mut calls = self
            .log
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        calls.under_way -= 1;
        calls.ended.push(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIVE_A_MINUTE: RateLimit = RateLimit {
        calls: 5,
        per: Duration::from_secs(60),
    };

    #[tokio::test(start_paused = true)]
    async fn the_call_past_the_limit_waits_for_the_oldest_to_leave_the_window() {
        let log = Arc::new(CallLog::default());
        for _ in 0..5 {
            drop(log.admit(FIVE_A_MINUTE).expect("within the limit"));
            tokio::time::advance(Duration::from_secs(2)).await;
        }
        // 10 s after the first ended: it leaves the window in 50 s.
        let refused = log.admit(FIVE_A_MINUTE).expect_err("a sixth in the minute");
        assert!(refused.is_rate_limited(), "{refused}");
        assert_eq!(refused.retry_after(), Some(Duration::from_secs(50)));
        assert!(refused.to_string().contains("5 calls per 60s"), "{refused}");

        tokio::time::advance(Duration::from_secs(50)).await;
        let slot = log.admit(FIVE_A_MINUTE).expect("the first left the window");
        assert!(
            log.admit(FIVE_A_MINUTE).is_err(),
            "the slot counts while held"
        );
        drop(slot);
    }

    /// A call under way counts, and counts from when it ends: a slow call
    /// reaches the server's window no earlier than it ends.
    #[tokio::test(start_paused = true)]
    async fn a_call_counts_while_under_way_and_from_when_it_ends() {
        let log = Arc::new(CallLog::default());
        let one = RateLimit {
            calls: 1,
            per: Duration::from_secs(10),
        };
        let slot = log.admit(one).unwrap();
        let refused = log.admit(one).expect_err("one under way");
        assert_eq!(refused.retry_after(), Some(Duration::from_secs(10)));
        tokio::time::advance(Duration::from_secs(8)).await;
        drop(slot);
        tokio::time::advance(Duration::from_secs(9)).await;
        let refused = log.admit(one).expect_err("ended 9 s ago");
        assert_eq!(refused.retry_after(), Some(Duration::from_secs(1)));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(log.admit(one).is_ok());
    }
}
