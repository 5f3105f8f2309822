//! Token values that never print themselves.
//!
//! ```
//! use std::time::Duration;
//! use tower_token_refresh::TokenSet;
//!
//! let tokens = TokenSet::new("access-123")
//!     .with_refresh_token("refresh-456")
//!     .with_expires_in(Duration::from_secs(3600));
//!
//! assert_eq!(tokens.access_token().expose(), "access-123");
//! // Debug output is redacted: secrets never reach logs by accident.
//! assert!(!format!("{tokens:?}").contains("access-123"));
//! ```

use std::fmt;
use std::time::Duration;

use zeroize::Zeroize;

/// What stands for a secret wherever one would show: in `Debug`, and in
/// errors quoting one.
pub(crate) const REDACTED: &str = "[redacted]";

/// The access token of tokens that carry only a refresh token: not a
/// header value, so that no request sends it and no process adopts it
/// from a store; each refreshes from the refresh token beside it.
pub(crate) const NO_ACCESS_TOKEN: &str = "\n";

/// A secret string (an access or refresh token).
///
/// `Debug` and `Display` print `"[redacted]"`; the value is only reachable
/// through [`Secret::expose`], so it cannot end up in a log line through a
/// `{:?}` by accident (a common leak in hand-written token caches).
///
/// # Memory
///
/// A `Secret` overwrites its buffer with zeros when dropped (with the
/// `zeroize` crate, so the writes are not optimised away), and
/// [`Secret::new`] wipes the `String` it is given when it cannot take that
/// buffer over as it is. Each clone is wiped when it is dropped.
///
/// Copies made outside a `Secret` are *not* wiped: the precomputed
/// `Authorization` header value (a [`Bytes`](bytes::Bytes)-backed
/// `HeaderValue` shared by in-flight requests), the refresh request body,
/// the parsed refresh answer, the `&str`s that [`expose`](Self::expose)
/// hands out and whatever the caller copies from them, and the buffers of
/// the HTTP client, TLS stack and kernel. Wiping narrows the window in
/// which a token sits in freed memory; it does not make a process's memory
/// safe to read. See `SECURITY.md`.
///
/// ```
/// use tower_token_refresh::Secret;
///
/// let secret = Secret::from("eyJhbGciOi...");
/// assert_eq!(format!("{secret:?} {secret}"), "[redacted] [redacted]");
/// assert_eq!(secret.expose(), "eyJhbGciOi...");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Box<str>);

impl Secret {
    /// Wraps a secret value.
    ///
    /// ```
    /// let secret = tower_token_refresh::Secret::new("s3cr3t");
    /// assert_eq!(secret.expose(), "s3cr3t");
    /// ```
    pub fn new(value: impl Into<String>) -> Self {
        let mut value: String = value.into();
        if value.len() == value.capacity() {
            return Self(value.into_boxed_str());
        }
        // `into_boxed_str` would shrink the buffer by reallocating it, and
        // the old one would be freed unwiped: copy, then wipe the original.
        let exact = Box::from(value.as_str());
        value.zeroize();
        Self(exact)
    }

    /// Returns the secret value. Call it only where the value is sent.
    ///
    /// ```
    /// let secret = tower_token_refresh::Secret::new("s3cr3t");
    /// assert_eq!(secret.expose().len(), 6);
    /// ```
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self::new(value)
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self::new(value)
    }
}

/// An access token together with what is needed to renew it.
///
/// The access and refresh tokens travel as one unit: a refresh replaces the
/// whole set at once, so a rotated refresh token can never be paired with an
/// access token from another generation.
///
/// The lifetime (`expires_in`) is counted from the moment the refresh request
/// that produced this set was *sent*, which errs on the side of refreshing
/// early when the network is slow.
///
/// ```
/// use std::time::Duration;
/// use tower_token_refresh::TokenSet;
///
/// let tokens = TokenSet::new("access-1")
///     .with_refresh_token("refresh-1")
///     .with_expires_in(Duration::from_secs(3600))
///     .with_extra("scope", "read");
/// assert_eq!(tokens.refresh_token().unwrap().expose(), "refresh-1");
/// assert_eq!(tokens.expires_in(), Some(Duration::from_secs(3600)));
/// assert_eq!(tokens.extra("scope"), Some("read"));
/// let printed = format!("{tokens:?}");
/// assert!(!printed.contains("access-1") && !printed.contains("refresh-1"));
/// assert!(!printed.contains("read"), "extras show their names only");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct TokenSet {
    access_token: Secret,
    refresh_token: Option<Secret>,
    expires_in: Option<Duration>,
    /// Non-secret fields the issuer sent along (`scope`, `username`, …).
    extras: Vec<(Box<str>, Box<str>)>,
}

impl TokenSet {
    /// A token set holding only an access token, with no known expiry.
    ///
    /// A token without expiry is only refreshed after the server rejects
    /// it, or when a refresh is forced
    /// ([`TokenHandle::force_refresh`](crate::TokenHandle::force_refresh)).
    ///
    /// ```
    /// let tokens = tower_token_refresh::TokenSet::new("access");
    /// assert!(tokens.expires_in().is_none());
    /// ```
    pub fn new(access_token: impl Into<Secret>) -> Self {
        Self {
            access_token: access_token.into(),
            refresh_token: None,
            expires_in: None,
            extras: Vec::new(),
        }
    }

    /// A token set holding only a refresh token: what a process starts
    /// from when it persisted the refresh token (in an
    /// [`on_refresh`](crate::Builder::on_refresh) hook) and not the access
    /// token. Given as [initial tokens](crate::Builder::initial_tokens), it
    /// is never sent: the first request refreshes from it. (For
    /// [`set_tokens`](crate::TokenHandle::set_tokens), which needs an
    /// access token to send, it is an error.) A refresh source that
    /// presents the access token (a sliding session) has none to present
    /// ([`RefreshContext::access_token`](crate::RefreshContext::access_token)
    /// is `None`).
    ///
    /// ```
    /// use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// // Read back from where the hook saved it.
    /// let saved = "refresh-7";
    /// let source = refresh_fn(|ctx| {
    ///     let presented = ctx.refresh_token().map(|r| r.expose().to_owned());
    ///     let no_access_token = ctx.access_token().is_none();
    ///     async move {
    ///         assert_eq!(presented.as_deref(), Some("refresh-7"));
    ///         assert!(no_access_token, "none to present");
    ///         Ok::<_, RefreshError>(TokenSet::new("access-8").with_refresh_token("refresh-8"))
    ///     }
    /// });
    /// let layer = TokenRefreshLayer::builder(source)
    ///     .initial_tokens(TokenSet::from_refresh_token(saved))
    ///     .build();
    /// let handle = layer.handle();
    /// assert!(!handle.status().has_token(), "nothing to send yet");
    /// assert!(handle.status().has_refresh_token());
    /// assert_eq!(handle.bearer().await.unwrap().expose(), "access-8");
    /// assert_eq!(handle.stats().refreshes, 1);
    /// # }
    /// ```
    pub fn from_refresh_token(refresh_token: impl Into<Secret>) -> Self {
        Self::new(NO_ACCESS_TOKEN).with_refresh_token(refresh_token)
    }

    /// Adds the credential used to obtain the next access token.
    ///
    /// ```
    /// let tokens = tower_token_refresh::TokenSet::new("a").with_refresh_token("r");
    /// assert_eq!(tokens.refresh_token().map(|t| t.expose()), Some("r"));
    /// ```
    pub fn with_refresh_token(mut self, refresh_token: impl Into<Secret>) -> Self {
        self.refresh_token = Some(refresh_token.into());
        self
    }

    /// Sets the access token's lifetime.
    ///
    /// ```
    /// use std::time::Duration;
    /// let tokens = tower_token_refresh::TokenSet::new("a").with_expires_in(Duration::from_secs(60));
    /// assert_eq!(tokens.expires_in(), Some(Duration::from_secs(60)));
    /// ```
    pub fn with_expires_in(mut self, expires_in: Duration) -> Self {
        self.expires_in = Some(expires_in);
        self
    }

    /// Records a non-secret field the issuer sent along with the tokens
    /// (`scope`, `username`, `database`, …), replacing an earlier value.
    ///
    /// Never store a credential here: extras are plain strings.
    ///
    /// ```
    /// let tokens = tower_token_refresh::TokenSet::new("a").with_extra("scope", "read write");
    /// assert_eq!(tokens.extra("scope"), Some("read write"));
    /// ```
    pub fn with_extra(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        let name = name.into().into_boxed_str();
        let value = value.into().into_boxed_str();
        match self.extras.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => self.extras.push((name, value)),
        }
        self
    }

    /// A non-secret field the issuer sent along, by name.
    ///
    /// ```
    /// let tokens = tower_token_refresh::TokenSet::new("a").with_extra("username", "jdoe");
    /// assert_eq!(tokens.extra("username"), Some("jdoe"));
    /// assert_eq!(tokens.extra("database"), None);
    /// ```
    pub fn extra(&self, name: &str) -> Option<&str> {
        self.extras
            .iter()
            .find(|(n, _)| &**n == name)
            .map(|(_, v)| &**v)
    }

    /// Every extra field, in the order they were recorded.
    ///
    /// ```
    /// let tokens = tower_token_refresh::TokenSet::new("a")
    ///     .with_extra("username", "jdoe")
    ///     .with_extra("database", "retail");
    /// let names: Vec<_> = tokens.extras().map(|(name, _)| name).collect();
    /// assert_eq!(names, ["username", "database"]);
    /// ```
    pub fn extras(&self) -> impl Iterator<Item = (&str, &str)> {
        self.extras.iter().map(|(n, v)| (&**n, &**v))
    }

    /// The access token sent as `Authorization: Bearer …`.
    ///
    /// ```
    /// let tokens = tower_token_refresh::TokenSet::new("a");
    /// assert_eq!(tokens.access_token().expose(), "a");
    /// ```
    pub fn access_token(&self) -> &Secret {
        &self.access_token
    }

    /// The refresh token, if the issuer gave one.
    ///
    /// ```
    /// assert!(tower_token_refresh::TokenSet::new("a").refresh_token().is_none());
    /// ```
    pub fn refresh_token(&self) -> Option<&Secret> {
        self.refresh_token.as_ref()
    }

    /// The access token's lifetime, if known.
    ///
    /// ```
    /// assert!(tower_token_refresh::TokenSet::new("a").expires_in().is_none());
    /// ```
    pub fn expires_in(&self) -> Option<Duration> {
        self.expires_in
    }

    /// Whether this set carries a refresh token other than `previous`'s:
    /// the source rotated it, and the old one may be spent.
    pub(crate) fn rotated_from(&self, previous: Option<&TokenSet>) -> bool {
        let old = previous.and_then(TokenSet::refresh_token);
        self.refresh_token
            .as_ref()
            .is_some_and(|new| Some(new) != old)
    }

    /// Keeps `previous`'s refresh token when this set came without one.
    ///
    /// Many issuers (the DynamoSQL- and Cognito-style APIs among them) return
    /// no new refresh token on refresh; the old one stays valid.
    pub(crate) fn inherit_refresh_token(mut self, previous: Option<&TokenSet>) -> Self {
        if self.refresh_token.is_none() {
            self.refresh_token = previous.and_then(|p| p.refresh_token.clone());
        }
        self
    }
}

impl fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSet")
            .field("access_token", &self.access_token)
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| REDACTED),
            )
            .field("expires_in", &self.expires_in)
            // Names only: a user could store anything in an extra.
            .field(
                "extras",
                &self.extras.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_secret() {
        let tokens = TokenSet::new("AT-visible?")
            .with_refresh_token("RT-visible?")
            .with_expires_in(Duration::from_secs(5));
        let debug = format!(
            "{tokens:?} {:?} {}",
            tokens.access_token(),
            tokens.access_token()
        );
        assert!(!debug.contains("AT-visible"), "{debug}");
        assert!(!debug.contains("RT-visible"), "{debug}");
        assert!(debug.contains("expires_in"));
    }

    #[test]
    fn missing_refresh_token_is_inherited_but_a_rotated_one_wins() {
        let old = TokenSet::new("a1").with_refresh_token("r1");
        let kept = TokenSet::new("a2").inherit_refresh_token(Some(&old));
        assert_eq!(kept.refresh_token().unwrap().expose(), "r1");
        let rotated = TokenSet::new("a3")
            .with_refresh_token("r2")
            .inherit_refresh_token(Some(&old));
        assert_eq!(rotated.refresh_token().unwrap().expose(), "r2");
    }
}
