//! [`TokenHandle`]: look at and steer the shared token state.
//!
//! ```
//! use std::time::Duration;
//! use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let layer = TokenRefreshLayer::builder(refresh_fn(|_| async {
//!         Ok::<_, RefreshError>(TokenSet::new("next").with_expires_in(Duration::from_secs(60)))
//!     }))
//!     .initial_tokens(TokenSet::new("first"))
//!     .build();
//! let handle = layer.handle();
//!
//! handle.force_refresh().await.unwrap();
//! let status = handle.status();
//! assert_eq!(status.generation(), 2);
//! assert!(status.has_token());
//! assert_eq!(handle.stats().refresh_successes, 1);
//! // Status and handle print no token.
//! assert!(!format!("{status:?} {handle:?}").contains("next"));
//! # }
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::error::ErrorKind;
use crate::manager::{Credential, Decision, TokenManager};
use crate::{Bearer, Error, RefreshError, Stats, TokenSet};

/// A handle on the token state shared by a layer and all its services.
///
/// # Clone
///
/// Clones refer to the same state.
///
/// ```
/// use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet, TokenState};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let source = refresh_fn(|_| async { Ok::<_, RefreshError>(TokenSet::new("from-source")) });
/// let layer = TokenRefreshLayer::builder(source).build();
/// let handle = layer.handle();
/// assert_eq!(handle.status().state(), TokenState::Missing);
///
/// handle.clone().force_refresh().await.unwrap();
/// assert_eq!(handle.tokens().unwrap().access_token().expose(), "from-source");
/// assert_eq!(handle.stats().refreshes, 1);
/// # }
/// ```
#[derive(Clone)]
pub struct TokenHandle {
    manager: TokenManager,
}

impl TokenHandle {
    pub(crate) fn new(manager: TokenManager) -> Self {
        Self { manager }
    }

    /// A server rejected the token whose header is `sent` once there was
    /// no request left to retry (see `tonic::WatchedBody`).
    #[cfg(feature = "tonic")]
    pub(crate) fn rejected_after_response(&self, sent: &http::HeaderValue) {
        self.manager.rejected_after_response(sent);
    }

    /// Counters of refreshes, waits, rejections and retries so far.
    ///
    /// ```
    /// use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// # let source = refresh_fn(|_| async { Ok::<_, RefreshError>(TokenSet::new("t")) });
    /// let handle = TokenRefreshLayer::builder(source).build().handle();
    /// handle.force_refresh().await.unwrap();
    /// let stats = handle.stats();
    /// assert_eq!((stats.refreshes, stats.refresh_successes), (1, 1));
    /// # }
    /// ```
    pub fn stats(&self) -> Stats {
        self.manager.stats()
    }

    /// A redacted summary of the current token.
    ///
    /// ```
    /// use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};
    ///
    /// # let source = refresh_fn(|_| async { Ok::<_, RefreshError>(TokenSet::new("t")) });
    /// let handle = TokenRefreshLayer::builder(source).build().handle();
    /// let status = handle.status();
    /// if status.is_reauth_required() { /* ask the user to sign in */ }
    /// assert!(!status.has_token() && status.last_error().is_none());
    /// ```
    pub fn status(&self) -> TokenStatus {
        self.manager.status()
    }

    /// The current tokens, for callers that must persist or inspect them:
    /// those requests are sent with. After a refresh whose answer the layer
    /// refused (see [`on_refresh`](crate::Builder::on_refresh)) but which
    /// rotated the refresh token, their refresh token is the spent one until
    /// the next refresh succeeds; to persist the live one, use the hook.
    ///
    /// ```
    /// use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};
    ///
    /// # let source = refresh_fn(|_| async { Ok::<_, RefreshError>(TokenSet::new("t")) });
    /// let handle = TokenRefreshLayer::builder(source).build().handle();
    /// assert!(handle.tokens().is_none());
    /// handle.set_tokens(TokenSet::new("a").with_refresh_token("r")).unwrap();
    /// // Persist these, e.g. for the next start.
    /// let tokens = handle.tokens().unwrap();
    /// assert_eq!(tokens.refresh_token().unwrap().expose(), "r");
    /// ```
    pub fn tokens(&self) -> Option<Arc<TokenSet>> {
        self.manager.tokens()
    }

    /// Refreshes now, whatever the token's age, and waits for the result.
    /// Joins a refresh already running; honours a rate limit, a backoff or
    /// a terminal failure still in force (returning its error), but not a
    /// refresh put off because the [store](crate::store) failed: that one
    /// is tried now, without the store if it fails again. A joined refresh
    /// that another runtime stopped driving is given up at its deadline and
    /// replaced once.
    ///
    /// ```
    /// use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let layer = TokenRefreshLayer::builder(refresh_fn(|_| async {
    ///         Ok::<_, RefreshError>(TokenSet::new("refreshed"))
    ///     }))
    ///     .initial_tokens(TokenSet::new("still-good"))
    ///     .build();
    /// let handle = layer.handle();
    /// match handle.force_refresh().await {
    ///     Ok(()) => {}
    ///     Err(e) if e.is_reauth_required() => unreachable!("sign in again"),
    ///     Err(e) => unreachable!("refresh failed: {e}"),
    /// }
    /// assert_eq!(handle.tokens().unwrap().access_token().expose(), "refreshed");
    /// # }
    /// ```
    pub async fn force_refresh(&self) -> Result<(), Error> {
        let flight = self.manager.force()?;
        let ran_here = flight.ran_here();
        match flight.outcome().await {
            // Joined a refresh put off because the store failed, which
            // blocks no forced one, or one that another runtime stopped
            // driving: forced now.
            Err(error) if error.is_deferred() || (error.is_abandoned() && !ran_here) => {
                self.manager.force()?.outcome().await.map(drop)
            }
            // Dropped by this runtime, which is shutting down.
            Err(error) if error.is_abandoned() => Err(Error::new(ErrorKind::RefreshAborted)),
            outcome => outcome.map(drop),
        }
    }

    /// A token to send now, outside the layer (see [`Bearer`]): the one a
    /// request through the layer would be sent with. A fresh token is
    /// handed out at once, without a lock; a stale one too, while one
    /// background refresh runs; for an expired or missing one this waits
    /// for the refresh, joining one already running, as a request does.
    /// Fails as such a request would: [`Error::is_reauth_required`] after
    /// a terminal failure, [`Error::is_refresh_failed`] when the refresh
    /// failed and no valid token is left. A wait counts in
    /// [`Stats::waited`]. Needs a tokio runtime to refresh on, as a request
    /// does. The layer's transport rules (no plain `http://`
    /// beyond loopback, the [allowed origins](crate::Builder::allowed_origins))
    /// cannot apply: where the token goes is the caller's to decide.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    /// use std::sync::Arc;
    /// use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let calls = Arc::new(AtomicUsize::new(0));
    /// let counted = Arc::clone(&calls);
    /// let handle = TokenRefreshLayer::builder(refresh_fn(move |_| {
    ///     let n = counted.fetch_add(1, Ordering::SeqCst) + 1;
    ///     async move { Ok::<_, RefreshError>(TokenSet::new(format!("t{n}"))) }
    /// }))
    /// .build()
    /// .handle();
    /// // No token yet: the callers wait for one refresh between them.
    /// let (a, b) = tokio::join!(handle.bearer(), handle.bearer());
    /// assert_eq!((a.unwrap().expose(), b.unwrap().expose()), ("t1", "t1"));
    /// assert_eq!(calls.load(Ordering::SeqCst), 1);
    /// # }
    /// ```
    pub async fn bearer(&self) -> Result<Bearer, Error> {
        let manager = &self.manager;
        loop {
            let credential = match manager.ready() {
                Some(credential) => credential,
                None => manager.clone().acquire().await?,
            };
            if let Some(bearer) = self.bearer_of(credential) {
                return Ok(bearer);
            }
        }
    }

    /// The token to use after a server rejected `rejected`, with the
    /// layer's rules for a rejected request: if a newer, usable token came
    /// meanwhile, that one at once, without a refresh (the rejection was
    /// stale); otherwise one refresh, joined by every other rejection of
    /// the same token (and by requests through the layer), and the token it
    /// brings. Counted in [`Stats::rejections`] (and
    /// [`Stats::stale_rejections`]).
    ///
    /// A token refreshed less than the
    /// [minimum refresh interval](crate::Builder::min_refresh_interval)
    /// ago is not refreshed again (another would likely be rejected too):
    /// that fails with an error for which [`Error::is_rejected_too_soon`]
    /// is true, and the token is left as it is, unless a refresh is
    /// already running: then its token, or its error, never the rejected
    /// token back (a refresh that ends without a token, as one abandoned
    /// by another runtime, put off by a fleet store or overtaken does,
    /// gives the rejected-too-soon error; one dropped by this runtime, a
    /// refresh failure). Reported again once the
    /// interval has passed, it is refreshed. Other failures are as for
    /// [`bearer`](Self::bearer).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let handle = TokenRefreshLayer::builder(refresh_fn(|_| async {
    ///     Ok::<_, RefreshError>(TokenSet::new("new").with_expires_in(Duration::from_secs(3600)))
    /// }))
    /// .initial_tokens(TokenSet::new("revoked"))
    /// .build()
    /// .handle();
    /// let bearer = handle.bearer().await.unwrap();
    /// // The server closed the connection: its token was revoked.
    /// let (a, b) = tokio::join!(
    ///     handle.bearer_after_rejection(&bearer),
    ///     handle.bearer_after_rejection(&bearer),
    /// );
    /// assert_eq!((a.unwrap().expose(), b.unwrap().expose()), ("new", "new"));
    /// assert_eq!(handle.stats().refreshes, 1);
    /// // Rejected again at once: refreshing again would not help.
    /// let again = handle.bearer().await.unwrap();
    /// let error = handle.bearer_after_rejection(&again).await.unwrap_err();
    /// assert!(error.is_rejected_too_soon());
    /// # }
    /// ```
    ///
    /// # Panics
    ///
    /// If `rejected` came from another layer's handle: its generation
    /// would name a token of this one.
    pub async fn bearer_after_rejection(&self, rejected: &Bearer) -> Result<Bearer, Error> {
        let manager = &self.manager;
        assert!(
            manager.is(rejected.from()),
            "a Bearer told to the handle of another layer than the one that handed it out"
        );
        let credential = match manager.rejected(rejected.generation()) {
            Decision::Use(credential) => credential,
            Decision::Wait(flight) => manager.clone().wait(flight).await?,
            Decision::Fail(error) => return Err(error),
            Decision::GiveUp => return Err(Error::new(ErrorKind::RejectedTooSoon)),
        };
        match self.bearer_of(credential) {
            Some(bearer) => Ok(bearer),
            None => self.bearer().await,
        }
    }

    /// `credential` with its token's expiry, read from the current state;
    /// `None` if another token replaced it in the instant since it came:
    /// the caller looks again.
    fn bearer_of(&self, credential: Credential) -> Option<Bearer> {
        let expires_at = self.manager.expiry_of(credential.generation)?;
        Some(Bearer::new(credential, expires_at, self.manager.id()))
    }

    /// Installs new tokens (e.g. after the user signed in again) and clears
    /// any failure, including re-authentication required, but a rate limit
    /// still in force: the identity server said when it may be called again
    /// (`429`, `Retry-After`), whatever tokens the caller holds, so until
    /// then the new tokens are used and not refreshed.
    ///
    /// A refresh still running is overtaken: its answer is discarded, and
    /// requests waiting for it decide afresh from the new tokens. Unless
    /// the new tokens carry the refresh token that refresh refreshes from
    /// (tokens saved earlier, set back): then it runs on, requests waiting
    /// for it wait on, requests that need a refresh join it, and its answer
    /// replaces the tokens set.
    /// Where the identity server rotates refresh tokens, that answer holds
    /// the only live one, and a second refresh presenting the same refresh
    /// token would be taken for a stolen one.
    ///
    /// ```
    /// use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};
    /// # let source = refresh_fn(|_| async { Ok::<_, RefreshError>(TokenSet::new("t")) });
    /// let handle = TokenRefreshLayer::builder(source).build().handle();
    /// handle.set_tokens(TokenSet::new("signed-in-again").with_refresh_token("r2")).unwrap();
    /// let tokens = handle.tokens().unwrap();
    /// assert_eq!(tokens.refresh_token().unwrap().expose(), "r2");
    /// // Not a header value: refused, and the tokens stay as they were.
    /// assert!(handle.set_tokens(TokenSet::new("line\nbreak")).is_err());
    /// assert_eq!(handle.tokens().unwrap().access_token().expose(), "signed-in-again");
    /// ```
    pub fn set_tokens(&self, tokens: TokenSet) -> Result<(), InvalidTokenError> {
        self.manager
            .set_tokens(tokens)
            .map_err(|_| InvalidTokenError(()))
    }
}

impl fmt::Debug for TokenHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenHandle")
            .field("manager", &self.manager)
            .finish()
    }
}

/// The access token cannot be sent in an HTTP header: it is empty or
/// blank, or it contains control characters or bytes that are not visible.
///
/// ```
/// use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};
///
/// # let source = refresh_fn(|_| async { Ok::<_, RefreshError>(TokenSet::new("t")) });
/// let handle = TokenRefreshLayer::builder(source).build().handle();
/// let error = handle.set_tokens(TokenSet::new("line\r\nbreak")).unwrap_err();
/// assert_eq!(error.to_string(), "access token is not a valid HTTP header value");
/// assert!(!handle.status().has_token(), "nothing was installed");
/// assert!(handle.set_tokens(TokenSet::new("")).is_err(), "blank");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidTokenError(());

impl fmt::Display for InvalidTokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("access token is not a valid HTTP header value")
    }
}

impl std::error::Error for InvalidTokenError {}

/// Where the current token stands.
///
/// ```
/// use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet, TokenState};
///
/// # let source = refresh_fn(|_| async { Ok::<_, RefreshError>(TokenSet::new("t")) });
/// let handle = TokenRefreshLayer::builder(source).build().handle();
/// assert_eq!(handle.status().state(), TokenState::Missing);
/// handle.set_tokens(TokenSet::new("a")).unwrap();
/// assert_eq!(handle.status().state(), TokenState::Fresh);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenState {
    /// No token yet; the next request acquires one.
    Missing,
    /// Sent as is.
    Fresh,
    /// Sent as is while a background refresh runs.
    Stale,
    /// Past its refresh point or rejected: requests wait for a new one
    /// (unless a backoff holds refreshes off, or it was refreshed moments
    /// ago: then it is sent while still valid and not rejected).
    Expired,
    /// A terminal refresh failure, and the token past its refresh point,
    /// rejected, or none: new tokens must be set. A token still valid (not
    /// rejected) is sent until it expires.
    ReauthRequired,
}

/// A redacted summary of the token state, from [`TokenHandle::status`].
///
/// ```
/// use std::time::Duration;
/// use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};
///
/// # let source = refresh_fn(|_| async { Ok::<_, RefreshError>(TokenSet::new("t")) });
/// let layer = TokenRefreshLayer::builder(source)
///     .initial_tokens(TokenSet::new("secret-access").with_expires_in(Duration::from_secs(600)))
///     .build();
/// let status = layer.handle().status();
/// assert!(status.has_token());
/// assert!(!status.has_refresh_token());
/// // Safe to log: it never shows a token.
/// assert!(!format!("{status:?}").contains("secret-access"));
/// ```
#[derive(Clone)]
pub struct TokenStatus {
    pub(crate) generation: u64,
    pub(crate) state: TokenState,
    pub(crate) has_token: bool,
    pub(crate) has_refresh_token: bool,
    pub(crate) expires_in: Option<Duration>,
    pub(crate) refreshing: bool,
    pub(crate) last_error: Option<Arc<RefreshError>>,
    pub(crate) refreshes_resume_in: Option<Duration>,
}

impl TokenStatus {
    /// Increases by one with every new token.
    ///
    /// ```
    /// use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};
    ///
    /// # let source = refresh_fn(|_| async { Ok::<_, RefreshError>(TokenSet::new("t")) });
    /// let handle = TokenRefreshLayer::builder(source).build().handle();
    /// assert_eq!(handle.status().generation(), 0, "no token yet");
    /// handle.set_tokens(TokenSet::new("a")).unwrap();
    /// handle.set_tokens(TokenSet::new("b")).unwrap();
    /// assert_eq!(handle.status().generation(), 2);
    /// ```
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Where the token stands.
    ///
    /// ```
    /// use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet, TokenState};
    ///
    /// # let source = refresh_fn(|_| async { Ok::<_, RefreshError>(TokenSet::new("t")) });
    /// let layer = TokenRefreshLayer::builder(source).initial_tokens(TokenSet::new("a")).build();
    /// assert_eq!(layer.handle().status().state(), TokenState::Fresh);
    /// ```
    pub fn state(&self) -> TokenState {
        self.state
    }

    /// Whether a token is held.
    ///
    /// ```
    /// use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};
    ///
    /// # let source = refresh_fn(|_| async { Ok::<_, RefreshError>(TokenSet::new("t")) });
    /// let handle = TokenRefreshLayer::builder(source).build().handle();
    /// assert!(!handle.status().has_token());
    /// handle.set_tokens(TokenSet::new("a")).unwrap();
    /// assert!(handle.status().has_token());
    /// ```
    pub fn has_token(&self) -> bool {
        self.has_token
    }

    /// Whether a refresh token is held.
    ///
    /// ```
    /// use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};
    ///
    /// # let source = refresh_fn(|_| async { Ok::<_, RefreshError>(TokenSet::new("t")) });
    /// let handle = TokenRefreshLayer::builder(source).build().handle();
    /// handle.set_tokens(TokenSet::new("a").with_refresh_token("r")).unwrap();
    /// assert!(handle.status().has_refresh_token());
    /// ```
    pub fn has_refresh_token(&self) -> bool {
        self.has_refresh_token
    }

    /// Time left until the access token's real expiry, if known.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};
    ///
    /// # let source = refresh_fn(|_| async { Ok::<_, RefreshError>(TokenSet::new("t")) });
    /// let layer = TokenRefreshLayer::builder(source)
    ///     .initial_tokens(TokenSet::new("a").with_expires_in(Duration::from_secs(600)))
    ///     .build();
    /// let left = layer.handle().status().expires_in().unwrap();
    /// assert!(left <= Duration::from_secs(600) && left > Duration::from_secs(590));
    /// ```
    pub fn expires_in(&self) -> Option<Duration> {
        self.expires_in
    }

    /// Whether a refresh is running now.
    ///
    /// ```
    /// use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use std::sync::Arc;
    /// use tokio::sync::Notify;
    ///
    /// // A source that answers once told to.
    /// let answer = Arc::new(Notify::new());
    /// let told = Arc::clone(&answer);
    /// let source = refresh_fn(move |_| {
    ///     let told = Arc::clone(&told);
    ///     async move {
    ///         told.notified().await;
    ///         Ok::<_, RefreshError>(TokenSet::new("t"))
    ///     }
    /// });
    /// let handle = TokenRefreshLayer::builder(source).build().handle();
    /// assert!(!handle.status().is_refreshing());
    /// let refresh = tokio::spawn({
    ///     let handle = handle.clone();
    ///     async move { handle.force_refresh().await }
    /// });
    /// tokio::task::yield_now().await;
    /// assert!(handle.status().is_refreshing());
    /// answer.notify_one();
    /// refresh.await.unwrap().unwrap();
    /// assert!(!handle.status().is_refreshing(), "done");
    /// # }
    /// ```
    pub fn is_refreshing(&self) -> bool {
        self.refreshing
    }

    /// Whether a terminal refresh failure requires new tokens: true from
    /// the current token's refresh point (its mandatory window) on, once it
    /// was rejected, or with no token at all. A token still valid goes on
    /// being sent until it expires; requests fail fast from then on.
    ///
    /// ```
    /// use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let source = refresh_fn(|_| async { Err::<TokenSet, _>(RefreshError::terminal("revoked")) });
    /// // With no token to send.
    /// let handle = TokenRefreshLayer::builder(source).build().handle();
    /// assert!(handle.force_refresh().await.is_err());
    /// assert!(handle.status().is_reauth_required());
    /// # }
    /// ```
    pub fn is_reauth_required(&self) -> bool {
        self.state == TokenState::ReauthRequired
    }

    /// The last refresh failure, while it still affects refreshing.
    ///
    /// ```
    /// use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let source = refresh_fn(|_| async { Err::<TokenSet, _>(RefreshError::terminal("revoked")) });
    /// let handle = TokenRefreshLayer::builder(source)
    ///     .initial_tokens(TokenSet::new("a").with_refresh_token("r"))
    ///     .build()
    ///     .handle();
    /// assert!(handle.status().last_error().is_none());
    /// let _ = handle.force_refresh().await;
    /// assert_eq!(handle.status().last_error().unwrap().message(), "revoked");
    /// # }
    /// ```
    pub fn last_error(&self) -> Option<&RefreshError> {
        self.last_error.as_deref()
    }

    /// How long the last failure still holds refreshes off: its backoff,
    /// or for a rate limit the longer of that and the wait the server asked
    /// for (capped at an hour). A request that needs a new token before
    /// then fails at once, so this is what a server in front of the layer
    /// can advertise in `Retry-After`. `None` when no failure holds
    /// refreshes off, and after a terminal failure, which holds them off
    /// until new tokens are set (see
    /// [`is_reauth_required`](Self::is_reauth_required)).
    ///
    /// Failures are all it counts. A rejected token that was refreshed
    /// less than [`min_refresh_interval`](crate::Builder::min_refresh_interval)
    /// ago is not refreshed again whatever this says: a request through the
    /// layer gets the rejection back, and
    /// [`TokenHandle::bearer_after_rejection`] an error for which
    /// [`Error::is_rejected_too_soon`](crate::Error::is_rejected_too_soon)
    /// is true (unless a refresh is already running: both wait for it).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
    /// let source = refresh_fn(|_| async {
    ///     Err::<TokenSet, _>(RefreshError::rate_limited(Some(Duration::from_secs(30))))
    /// });
    /// let handle = TokenRefreshLayer::builder(source).build().handle();
    /// assert_eq!(handle.status().refreshes_resume_in(), None);
    /// assert!(handle.force_refresh().await.is_err());
    /// assert_eq!(handle.status().refreshes_resume_in(), Some(Duration::from_secs(30)));
    /// tokio::time::advance(Duration::from_secs(12)).await;
    /// assert_eq!(handle.status().refreshes_resume_in(), Some(Duration::from_secs(18)));
    /// tokio::time::advance(Duration::from_secs(18)).await;
    /// assert_eq!(handle.status().refreshes_resume_in(), None, "over");
    /// # }
    /// ```
    pub fn refreshes_resume_in(&self) -> Option<Duration> {
        self.refreshes_resume_in
    }
}

impl fmt::Debug for TokenStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenStatus")
            .field("generation", &self.generation)
            .field("state", &self.state)
            .field("has_token", &self.has_token)
            .field("has_refresh_token", &self.has_refresh_token)
            .field("expires_in", &self.expires_in)
            .field("refreshing", &self.refreshing)
            .field("last_error", &self.last_error)
            .field("refreshes_resume_in", &self.refreshes_resume_in)
            .finish()
    }
}

#[cfg(test)]
mod tests;
