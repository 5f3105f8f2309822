//! [`Shared`]: what one [`TokenRefresh`](super::TokenRefresh), its clones
//! and their response futures share.

use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use super::Core;

/// The layer's core, and the instances of the inner service that retries
/// are sent through.
///
/// A response future able to retry used to carry its own clone of the
/// inner service, made on every request. For a hyper-util `Client` that is
/// half a dozen reference counts, shared by every task and thread, bumped
/// and dropped per request for a retry few requests make. Now a retry
/// takes the instance the last retry on this lane gave back, or else
/// clones the one taken from the service at its first request ([`Kept`]).
///
/// Each request uses the copy of its thread's [lane](super::lanes).
/// `repr(C)` keeps the padding last, after the fields requests read.
#[repr(C)]
pub(crate) struct Shared<S, C> {
    pub(crate) core: Arc<Core<C>>,
    /// Set at the first request; a `Mutex` rather than requiring the inner
    /// service to be `Sync` (a `BoxCloneService` is not).
    retry_service: OnceLock<Mutex<Kept<S>>>,
    /// Lanes are allocated one after the other: without this, one lane's
    /// reference count could share a cache line (128 bytes apart on x86,
    /// which fetches lines in pairs) with the fields of the lane before.
    _padding: [u64; 16],
}

impl<S, C> Shared<S, C> {
    pub(crate) fn new(core: Arc<Core<C>>) -> Self {
        Self {
            core,
            retry_service: OnceLock::new(),
            _padding: [0; 16],
        }
    }
}

/// The instance retries are cloned from, and one instance a retry sent
/// through and gave back, for the next retry to take instead of a clone.
///
/// A retry used to clone the kept instance and drop its clone right after
/// the call: for a hyper-util `Client`, half a dozen reference counts
/// that every thread writes, bumped and dropped once per retry, all within
/// the burst of retries that follows a revocation. A retry is sent within
/// one poll of its future, so one spare per lane is enough for the next.
///
/// A spare is safe to hand out because it was called: a call takes
/// whatever readiness the instance held (a `Buffer` slot, a permit), so
/// the spare holds none, and it is polled ready before its next call as
/// any instance is.
struct Kept<S> {
    original: S,
    spare: Option<S>,
}

impl<S: Clone, C> Shared<S, C> {
    /// Keeps a clone of `inner` for retries, at the first request that
    /// could be retried or has to wait for a token. Called by
    /// `RetryCopy::of` and before a request waits, so every retry copy and
    /// every waiting request finds an instance here.
    #[inline]
    pub(crate) fn remember(&self, inner: &S) {
        if self.retry_service.get().is_none() {
            self.retry_service.get_or_init(|| {
                Mutex::new(Kept {
                    original: inner.clone(),
                    spare: None,
                })
            });
        }
    }

    /// An instance of the inner service for one retry (or a request that
    /// waited for its first token), not polled ready: the spare a send gave
    /// back, or a clone. `None` only if no instance was ever remembered,
    /// which cannot be for a request being retried or that waited.
    pub(crate) fn retry_service(&self) -> Option<S> {
        let kept = self.retry_service.get()?;
        let mut kept = kept.lock().unwrap_or_else(PoisonError::into_inner);
        Some(kept.spare.take().unwrap_or_else(|| kept.original.clone()))
    }

    /// Takes back an instance a retry (or a request that waited) was sent
    /// through (called, so it holds no readiness), as the spare; dropped outside the lock if
    /// there is one already.
    pub(crate) fn give_back(&self, service: S) {
        let Some(kept) = self.retry_service.get() else {
            return;
        };
        let mut kept = kept.lock().unwrap_or_else(PoisonError::into_inner);
        if kept.spare.is_none() {
            kept.spare = Some(service);
        }
        // Otherwise `service`, a parameter, drops after the guard, a
        // local: outside the lock.
    }
}
