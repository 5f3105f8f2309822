//! The lease and change signal of stores that live inside one process.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::Lease;
use crate::manager::later;

/// A lease that lapses at its deadline, and the signal announcing each
/// stored version to the layers of this process.
pub(super) struct Local {
    lease: Mutex<Option<(Lease, Instant)>>,
    changes: watch::Sender<u64>,
}

impl Local {
    pub(super) fn new() -> Self {
        Self {
            lease: Mutex::new(None),
            changes: watch::Sender::new(0),
        }
    }

    pub(super) fn try_lease(&self, ttl: Duration) -> Option<Lease> {
        // Plain data, always left consistent: a panic elsewhere must not
        // wedge the store.
        let mut held = self.lease.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if held.as_ref().is_some_and(|(_, until)| *until > now) {
            return None;
        }
        let lease = Lease::new(Lease::random_owner());
        // Saturating: a `refresh_timeout` of `Duration::MAX` makes the
        // longest lease there is, not a panic.
        *held = Some((lease.clone(), later(now, ttl)));
        Some(lease)
    }

    pub(super) fn release(&self, lease: &Lease) {
        let mut held = self.lease.lock().unwrap_or_else(PoisonError::into_inner);
        if held.as_ref().is_some_and(|(owner, _)| owner == lease) {
            *held = None;
        }
    }

    pub(super) fn is_leased(&self) -> bool {
        let held = self.lease.lock().unwrap_or_else(PoisonError::into_inner);
        held.as_ref()
            .is_some_and(|(_, until)| *until > Instant::now())
    }

    pub(super) fn announce(&self, version: u64) {
        self.changes.send_replace(version);
    }

    /// Has every watcher load the record, with no version of its own to
    /// announce (as a Redis subscription restored does).
    #[cfg(test)]
    pub(super) fn signal(&self) {
        self.changes.send_modify(|_| {});
    }

    pub(super) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}
