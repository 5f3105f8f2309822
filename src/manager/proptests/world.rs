//! What the property tests observe: a scripted refresh source and a fake
//! API that both write into one [`World`], which mirrors the rules the
//! manager must follow and records every breach as a violation (never a
//! panic inside a task, where it would be swallowed).

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tokio::time::Instant;
use tower::Service;

use crate::{refresh_fn, Backoff, Refresh, RefreshContext, RefreshError, ReplayBody, TokenSet};

/// How late a task may act on what it learned: the driver advances the
/// clock in steps of this size and lets every woken task run in between.
pub(super) const STEP: Duration = Duration::from_millis(50);
pub(super) const REFRESH_TIMEOUT: Duration = Duration::from_secs(2);
pub(super) const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(1);
pub(super) const API_LATENCY: Duration = Duration::from_millis(20);

pub(super) fn backoff() -> Backoff {
    Backoff::new(Duration::from_millis(500), Duration::from_secs(4))
}

/// The shortest wait `backoff()` may impose after `failures` consecutive
/// failures: half the nominal delay (the rest is jitter).
fn min_backoff(failures: u32) -> Duration {
    let nominal = Duration::from_millis(500)
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(Duration::from_secs(4));
    nominal / 2
}

/// What the next refresh call does.
#[derive(Debug, Clone)]
pub(super) enum Outcome {
    /// Answers a token living `lifetime` (none: no expiry) after `delay`.
    Token {
        lifetime: Option<Duration>,
        delay: Duration,
    },
    Transient {
        delay: Duration,
    },
    Terminal {
        delay: Duration,
    },
    RateLimited {
        retry_after: Option<Duration>,
        delay: Duration,
    },
    /// Never answers: the refresh timeout ends the call.
    Hang,
}

/// What stops the next refresh call, as the manager must see it.
#[derive(Debug, Clone, Copy)]
enum Block {
    Open,
    Until(Instant),
    /// A rate limit: no call before `from`; the layer's own end, jittered
    /// by the backoff floor, comes by `upto`. Tokens set by hand do not
    /// lift it.
    RateLimited {
        from: Instant,
        upto: Instant,
    },
    Terminal,
}

/// A token someone issued, as the client must see its windows.
struct Issued {
    expires_at: Option<Instant>,
    /// Start of the mandatory window: `min(L/10, 10 s)` before expiry.
    mandatory_at: Option<Instant>,
    installed_at: Instant,
    /// Came from a refresh (not handed in with `initial_tokens` or
    /// `set_tokens`).
    refreshed: bool,
    revoked: bool,
}

struct CallRecord {
    /// `set_tokens` calls made before it started.
    epoch: u64,
    ended: Option<(Instant, bool)>,
}

/// The shared record of one test case.
pub(super) struct World {
    pub(super) default_lifetime: Option<Duration>,
    script: VecDeque<Outcome>,
    issued: HashMap<String, Issued>,
    next_token: u64,
    calls: Vec<CallRecord>,
    /// `set_tokens` calls so far.
    epoch: u64,
    block: Block,
    consecutive_failures: u32,
    /// Per request id: the token of each attempt and whether it was
    /// rejected.
    attempts: HashMap<u64, Vec<(String, bool)>>,
    /// Attempts the API rejects whatever their token, as a server that
    /// misuses `401` would.
    pub(super) reject_next: usize,
    /// `401`s delivered to the layer.
    pub(super) rejections: u64,
    pub(super) violations: Vec<String>,
}

pub(super) type Shared = Arc<Mutex<World>>;

pub(super) fn lock(world: &Shared) -> MutexGuard<'_, World> {
    world.lock().unwrap_or_else(|p| p.into_inner())
}

impl World {
    pub(super) fn new(default_lifetime: Option<Duration>) -> Shared {
        Arc::new(Mutex::new(Self {
            default_lifetime,
            script: VecDeque::new(),
            issued: HashMap::new(),
            next_token: 0,
            calls: Vec::new(),
            epoch: 0,
            block: Block::Open,
            consecutive_failures: 0,
            attempts: HashMap::new(),
            reject_next: 0,
            rejections: 0,
            violations: Vec::new(),
        }))
    }

    pub(super) fn push(&mut self, outcome: Outcome) {
        self.script.push_back(outcome);
    }

    pub(super) fn violation(&mut self, what: String) {
        self.violations
            .push(format!("[{:?}] {what}", Instant::now()));
    }

    /// A new token living `lifetime` from `obtained_at`, accepted by the API.
    fn issue(&mut self, prefix: &str, lifetime: Option<Duration>, obtained_at: Instant) -> String {
        self.next_token += 1;
        let token = format!("{prefix}-{}", self.next_token);
        let expires_at = lifetime.map(|l| super::super::later(obtained_at, l));
        let mandatory_at = lifetime
            .zip(expires_at)
            .map(|(l, e)| e - (l / 10).min(Duration::from_secs(10)));
        self.issued.insert(
            token.clone(),
            Issued {
                expires_at,
                mandatory_at,
                installed_at: Instant::now(),
                refreshed: prefix != "set",
                revoked: false,
            },
        );
        token
    }

    /// Tokens for the layer's `initial_tokens` or `set_tokens`, issued now.
    /// Clears whatever blocked refreshing, as `set_tokens` does, but a rate
    /// limit that may still hold. Its count of failures is kept only while
    /// the limit surely holds; past its earliest end the layer's may have
    /// been cleared, and a lower count only shortens the waits checked.
    pub(super) fn handed_tokens(&mut self, lifetime: Option<Duration>, initial: bool) -> TokenSet {
        if !initial {
            self.epoch += 1;
            let now = Instant::now();
            match self.block {
                Block::RateLimited { from, .. } if now < from => {}
                Block::RateLimited { upto, .. } if now < upto => self.consecutive_failures = 0,
                _ => {
                    self.block = Block::Open;
                    self.consecutive_failures = 0;
                }
            }
        }
        let token = self.issue("set", lifetime, Instant::now());
        let tokens = TokenSet::new(token).with_refresh_token("r");
        match lifetime {
            Some(lifetime) => tokens.with_expires_in(lifetime),
            None => tokens,
        }
    }

    pub(super) fn revoke_all(&mut self) {
        for issued in self.issued.values_mut() {
            issued.revoked = true;
        }
    }

    /// A refresh call starts: at most one runs (unless `set_tokens`
    /// overtook the others), and none while a failure blocks.
    fn begin_call(&mut self) -> (usize, Outcome) {
        let now = Instant::now();
        let overlapping = self
            .calls
            .iter()
            .filter(|c| c.ended.is_none() && c.epoch == self.epoch)
            .count();
        if overlapping > 0 {
            self.violation(format!(
                "a refresh call started while {overlapping} other(s) ran"
            ));
        }
        match self.block {
            Block::Terminal => {
                self.violation("a refresh call after a terminal failure".into());
            }
            Block::Until(until) | Block::RateLimited { from: until, .. } if now < until => {
                self.violation(format!(
                    "a refresh call {:?} before the failure allowed one",
                    until - now
                ));
            }
            _ => {}
        }
        self.calls.push(CallRecord {
            epoch: self.epoch,
            ended: None,
        });
        let outcome = self.script.pop_front().unwrap_or(Outcome::Token {
            lifetime: self.default_lifetime,
            delay: Duration::ZERO,
        });
        (self.calls.len() - 1, outcome)
    }

    /// A refresh call ends; `failed` with `retry_after` (rate limited) or
    /// `terminal`. Mirrors what the manager must record, unless
    /// `set_tokens` overtook the call (then its result counts for nothing).
    fn end_call(&mut self, id: usize, result: Ended) {
        let now = Instant::now();
        let call = &mut self.calls[id];
        call.ended = Some((now, !matches!(result, Ended::Token)));
        if call.epoch != self.epoch {
            return;
        }
        match result {
            Ended::Token => {
                self.block = Block::Open;
                self.consecutive_failures = 0;
            }
            Ended::Terminal => self.block = Block::Terminal,
            Ended::RateLimited(retry_after) => {
                self.consecutive_failures += 1;
                let floor = min_backoff(self.consecutive_failures);
                let from = now + retry_after.unwrap_or(floor);
                // The layer waits `max(Retry-After, backoff)`, the backoff
                // at most twice its floor.
                let upto = now + retry_after.unwrap_or_default().max(floor * 2) + STEP;
                self.block = Block::RateLimited { from, upto };
            }
            Ended::Transient => {
                self.consecutive_failures += 1;
                self.block = Block::Until(now + min_backoff(self.consecutive_failures));
            }
        }
    }

    /// Whether a refresh call failed after `since` and by `now`, or a rate
    /// limit from before (which tokens set by hand do not lift) may still
    /// block refreshing.
    fn failed_since(&self, since: Instant, now: Instant) -> bool {
        let limited = matches!(self.block, Block::RateLimited { upto, .. } if now < upto);
        limited
            || self
                .calls
                .iter()
                .filter_map(|c| c.ended)
                .any(|(at, failed)| failed && at >= since && at <= now)
    }

    /// The API receives attempt of request `id` with `bearer`: never a
    /// token past its expiry, a token inside its mandatory window only
    /// after a refresh failed, never a third attempt. Returns whether the
    /// API accepts it.
    fn sent(&mut self, id: u64, bearer: Option<String>) -> bool {
        let now = Instant::now();
        let Some(token) = bearer else {
            self.violation(format!("request {id} sent without a token"));
            return false;
        };
        let accepted = match self.issued.get(&token) {
            None => {
                self.violation(format!("request {id} sent with unknown token {token}"));
                false
            }
            Some(issued) => {
                let (expires_at, mandatory_at, installed_at, revoked) = (
                    issued.expires_at,
                    issued.mandatory_at,
                    issued.installed_at,
                    issued.revoked,
                );
                // A refreshed token that arrived inside its mandatory window
                // (the call was slow) is used until the minimum interval
                // between refreshes has passed: it is still valid, and
                // refreshing again at once would hammer the identity server.
                let grace = if issued.refreshed {
                    MIN_REFRESH_INTERVAL
                } else {
                    STEP
                };
                if expires_at.is_some_and(|e| now >= e + STEP) {
                    self.violation(format!(
                        "request {id} sent with {token}, expired {:?} ago",
                        now - expires_at.unwrap()
                    ));
                }
                if mandatory_at.is_some_and(|m| now >= m + STEP)
                    && now > installed_at + grace
                    && !self.failed_since(installed_at, now)
                {
                    self.violation(format!(
                        "request {id} sent with {token} inside its mandatory window \
                         though no refresh had failed"
                    ));
                }
                !revoked && expires_at.is_none_or(|e| now < e)
            }
        };
        let accepted = accepted && {
            let refuse = self.reject_next > 0;
            self.reject_next = self.reject_next.saturating_sub(1);
            !refuse
        };
        let attempts = self.attempts.entry(id).or_default();
        let after_success = attempts.last().is_some_and(|(_, rejected)| !rejected);
        attempts.push((token, !accepted));
        let sends = attempts.len();
        if after_success {
            self.violation(format!("request {id} retried after a success"));
        }
        if sends > 2 {
            self.violation(format!("request {id} sent {sends} times"));
        }
        accepted
    }

    /// Requests the API saw twice.
    pub(super) fn retried(&self) -> u64 {
        self.attempts.values().filter(|a| a.len() == 2).count() as u64
    }

    pub(super) fn calls(&self) -> usize {
        self.calls.len()
    }

    pub(super) fn calls_running(&self) -> usize {
        self.calls.iter().filter(|c| c.ended.is_none()).count()
    }

    /// Refresh calls that produced a token.
    pub(super) fn calls_succeeded(&self) -> usize {
        self.calls
            .iter()
            .filter(|c| matches!(c.ended, Some((_, false))))
            .count()
    }
}

/// How a refresh call ended, as the manager classifies it.
enum Ended {
    Token,
    Transient,
    Terminal,
    RateLimited(Option<Duration>),
}

/// Ends a call when dropped: a call the refresh timeout cancelled is a
/// transient failure.
struct CallGuard {
    world: Shared,
    id: usize,
    result: Option<Ended>,
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        let result = self.result.take().unwrap_or(Ended::Transient);
        lock(&self.world).end_call(self.id, result);
    }
}

/// The refresh source: plays the world's script, one outcome per call.
pub(super) fn scripted(world: &Shared) -> impl Refresh {
    let world = Arc::clone(world);
    refresh_fn(move |_ctx: RefreshContext| {
        let world = Arc::clone(&world);
        async move {
            let started = Instant::now();
            let (id, outcome) = lock(&world).begin_call();
            let mut guard = CallGuard {
                world: Arc::clone(&world),
                id,
                result: None,
            };
            let delay = match &outcome {
                Outcome::Token { delay, .. }
                | Outcome::Transient { delay }
                | Outcome::Terminal { delay }
                | Outcome::RateLimited { delay, .. } => *delay,
                Outcome::Hang => Duration::from_secs(3600),
            };
            tokio::time::sleep(delay).await;
            let (ended, result) = match outcome {
                Outcome::Token { lifetime, .. } => {
                    let token = lock(&world).issue("tok", lifetime, started);
                    let mut tokens = TokenSet::new(token);
                    if let Some(lifetime) = lifetime {
                        tokens = tokens.with_expires_in(lifetime);
                    }
                    // Expired on arrival: the manager must treat it as a
                    // transient failure.
                    let dead = lifetime.is_some_and(|l| started + l <= Instant::now());
                    (
                        if dead { Ended::Transient } else { Ended::Token },
                        Ok(tokens),
                    )
                }
                Outcome::Transient { .. } => (
                    Ended::Transient,
                    Err(RefreshError::transient("503").with_status(503)),
                ),
                Outcome::Terminal { .. } => (
                    Ended::Terminal,
                    Err(RefreshError::terminal("invalid_grant").with_status(400)),
                ),
                Outcome::RateLimited { retry_after, .. } => (
                    Ended::RateLimited(retry_after),
                    Err(RefreshError::rate_limited(retry_after)),
                ),
                Outcome::Hang => unreachable!("slept past the refresh timeout"),
            };
            guard.result = Some(ended);
            drop(guard);
            result
        }
    })
}

/// The API: checks and records each attempt when it is called (so the
/// record is exact in time), answers after [`API_LATENCY`], holding the
/// request (and so its body) until then.
#[derive(Clone)]
pub(super) struct FakeApi {
    pub(super) world: Shared,
}

pub(super) type Body = Full<Bytes>;

impl Service<Request<ReplayBody<Body>>> for FakeApi {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<ReplayBody<Body>>) -> Self::Future {
        let id = req
            .headers()
            .get("x-id")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(u64::MAX);
        let bearer = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_owned);
        let accepted = lock(&self.world).sent(id, bearer);
        let world = Arc::clone(&self.world);
        Box::pin(async move {
            tokio::time::sleep(API_LATENCY).await;
            drop(req);
            let status = if accepted {
                StatusCode::OK
            } else {
                // Counted when the layer receives it: a request dropped
                // before then never sees its rejection.
                lock(&world).rejections += 1;
                StatusCode::UNAUTHORIZED
            };
            Ok(Response::builder()
                .status(status)
                .body(Body::default())
                .unwrap())
        })
    }
}
