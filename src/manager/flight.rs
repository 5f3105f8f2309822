//! The single-flight refresh: one spawned task, any number of waiters.
//!
//! The refresh runs in its own task, not in the future of the request that
//! noticed the need, so dropping that request (or any other) can neither
//! cancel the refresh nor leave the others waiting on a future nobody polls.
//! Waiters hold only a `watch` receiver; the task's result (a credential or
//! an `Arc`'d error) is published once to all of them.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::time::Instant;

use super::failure::Failure;
use super::snapshot::{Credential, Prepared, Snapshot};
use super::{Control, Shared, TokenManager};
use crate::error::ErrorKind;
use crate::refresh::RefreshContext;
use crate::stats::Counters;
use crate::{Error, RefreshError, RefreshReason, TokenSet};

type Outcome = Result<Credential, Error>;

/// A handle on the refresh in flight.
#[derive(Clone)]
pub(crate) struct Flight {
    outcome: watch::Receiver<Option<Outcome>>,
}

impl Flight {
    /// Waits for the refresh's result. Never hangs: if the task dies without
    /// publishing, its guard publishes an error first, and a closed channel
    /// is reported as an aborted refresh.
    pub(crate) async fn outcome(mut self) -> Outcome {
        match self.outcome.wait_for(Option::is_some).await {
            Ok(outcome) => outcome.clone().expect("waited for Some"),
            Err(_) => Err(Error::new(ErrorKind::RefreshAborted)),
        }
    }
}

impl TokenManager {
    /// Spawns the refresh task. The caller holds the `control` lock, which is
    /// what guarantees a single flight.
    pub(super) fn start_flight(
        &self,
        control: &mut Control,
        reason: RefreshReason,
        snapshot: &Snapshot,
    ) -> Result<Flight, Error> {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Err(Error::new(ErrorKind::NoRuntime));
        };
        let (publish, outcome) = watch::channel(None);
        let flight = Flight { outcome };
        control.flight = Some(flight.clone());
        self.shared
            .proactive_gate
            .store(u64::MAX, Ordering::Release);
        Counters::bump(&self.shared.stats.refreshes);
        let task = FlightTask {
            shared: Arc::clone(&self.shared),
            publish: Some(publish),
            reason,
            from_generation: snapshot.generation,
        };
        runtime.spawn(task.run(snapshot.tokens.clone()));
        Ok(flight)
    }
}

/// The spawned refresh. Dropping it before it publishes (a panic in the
/// refresh source, a runtime shutting down) still publishes an error and
/// clears the flight, so no waiter and no later request is stranded.
struct FlightTask {
    shared: Arc<Shared>,
    publish: Option<watch::Sender<Option<Outcome>>>,
    reason: RefreshReason,
    from_generation: u64,
}

impl FlightTask {
    async fn run(mut self, current: Option<Arc<TokenSet>>) {
        let started = Instant::now();
        let config = &self.shared.config;
        tracing::debug!(
            reason = ?self.reason,
            generation = self.from_generation,
            "token refresh started"
        );
        let ctx = RefreshContext::new(self.reason, current.clone());
        let call = Arc::clone(&self.shared.refresher).refresh_boxed(ctx);
        let outcome = match tokio::time::timeout(config.refresh_timeout, call).await {
            Ok(Ok(tokens)) => {
                let tokens = tokens.inherit_refresh_token(current.as_deref());
                match Prepared::new(tokens, started, true) {
                    Ok(prepared) => {
                        self.run_hook(&prepared).await;
                        Ok(prepared)
                    }
                    Err(_) => Err((
                        RefreshError::transient(
                            "the refreshed access token is not a valid header value",
                        ),
                        ErrorKind::RefreshFailed,
                    )),
                }
            }
            Ok(Err(error)) => {
                let kind = ErrorKind::of_refresh(&error);
                Err((error, kind))
            }
            Err(_elapsed) => Err((
                RefreshError::transient(format!(
                    "no answer within the refresh timeout of {:?}",
                    config.refresh_timeout
                )),
                ErrorKind::RefreshTimedOut,
            )),
        };
        let elapsed_ms = started.elapsed().as_millis() as u64;
        let outcome = match outcome {
            Ok(prepared) => {
                let credential = self.succeed(prepared);
                tracing::info!(
                    reason = ?self.reason,
                    generation = credential.generation,
                    elapsed_ms,
                    "token refreshed"
                );
                Ok(credential)
            }
            Err((error, kind)) => {
                tracing::warn!(
                    reason = ?self.reason,
                    generation = self.from_generation,
                    elapsed_ms,
                    error = %error,
                    "token refresh failed"
                );
                Err(self.fail(error, kind))
            }
        };
        if let Some(publish) = self.publish.take() {
            publish.send_replace(Some(outcome));
        }
    }

    /// Runs the user's hook before anyone can use the new tokens, bounded by
    /// the refresh timeout: a hung hook must not strand every waiter, and
    /// the tokens (possibly a rotated refresh token) must not be lost either.
    async fn run_hook(&self, prepared: &Prepared) {
        let Some(hook) = &self.shared.config.on_refresh else {
            return;
        };
        let hook = hook(prepared.tokens());
        if tokio::time::timeout(self.shared.config.refresh_timeout, hook)
            .await
            .is_err()
        {
            tracing::warn!("on_refresh hook did not finish within the refresh timeout");
        }
    }

    fn succeed(&self, prepared: Prepared) -> Credential {
        let shared = &self.shared;
        let mut control = shared.lock();
        let snapshot = shared.install(prepared);
        control.flight = None;
        control.failure = None;
        control.consecutive_failures = 0;
        shared.proactive_gate.store(0, Ordering::Release);
        drop(control);
        Counters::bump(&shared.stats.refresh_successes);
        shared.changed.notify_waiters();
        snapshot
            .credential()
            .expect("an installed snapshot has a header")
    }

    fn fail(&self, error: RefreshError, kind: ErrorKind) -> Error {
        let shared = &self.shared;
        let now = Instant::now();
        let error = Arc::new(error);
        let mut control = shared.lock();
        control.flight = None;
        control.consecutive_failures = control.consecutive_failures.saturating_add(1);
        let failure = Failure::new(
            Arc::clone(&error),
            kind,
            control.consecutive_failures,
            &shared.config.backoff,
            now,
        );
        let gate = failure.until.map_or(u64::MAX, |until| shared.nanos(until));
        shared.proactive_gate.store(gate, Ordering::Release);
        control.failure = Some(failure);
        drop(control);
        Counters::bump(&shared.stats.refresh_failures);
        shared.changed.notify_waiters();
        Error::with_refresh(kind, error)
    }
}

impl Drop for FlightTask {
    fn drop(&mut self) {
        if let Some(publish) = self.publish.take() {
            let error = self.fail(
                RefreshError::transient("the refresh task ended without a result"),
                ErrorKind::RefreshAborted,
            );
            publish.send_replace(Some(Err(error)));
        }
    }
}
