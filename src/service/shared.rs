//! [`Shared`]: what one [`TokenRefresh`](super::TokenRefresh), its clones
//! and their response futures share.

use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use super::Core;

/// The layer's core, and the instance of the inner service that retries
/// are sent through clones of.
///
/// A response future able to retry used to carry its own clone of the
/// inner service, made on every request. For a hyper-util `Client` that is
/// half a dozen reference counts, shared by every task and thread, bumped
/// and dropped per request for a retry few requests make. Now a retry
/// clones this instance, taken from the service at its first request.
///
/// Each request uses the copy of its thread's [lane](super::lanes).
/// `repr(C)` keeps the padding last, after the fields requests read.
#[repr(C)]
pub(crate) struct Shared<S, C> {
    pub(crate) core: Arc<Core<C>>,
    /// Set at the first request; a `Mutex` rather than requiring the inner
    /// service to be `Sync` (a `BoxCloneService` is not).
    retry_service: OnceLock<Mutex<S>>,
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

impl<S: Clone, C> Shared<S, C> {
    /// Keeps a clone of `inner` for retries, at the first request that
    /// could be retried. Called only by `RetryCopy::of`, so every retry
    /// copy finds an instance here.
    #[inline]
    pub(crate) fn remember(&self, inner: &S) {
        if self.retry_service.get().is_none() {
            self.retry_service.get_or_init(|| Mutex::new(inner.clone()));
        }
    }

    /// A clone of the inner service for one retry; `None` only if no retry
    /// copy was ever made, which cannot be for a request being retried.
    pub(crate) fn retry_service(&self) -> Option<S> {
        let kept = self.retry_service.get()?;
        Some(kept.lock().unwrap_or_else(PoisonError::into_inner).clone())
    }
}
