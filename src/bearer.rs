//! [`Bearer`]: the layer's token, handed out for a use outside the layer.

use std::fmt;
use std::time::Duration;

use http::HeaderValue;
use tokio::time::Instant;

use crate::manager::{Credential, ManagerId, BEARER};

/// An access token handed out by [`TokenHandle::bearer`], to send outside
/// the layer: a WebSocket handshake, a database or message-broker login
/// (OAuth bearer authentication), a request built by another HTTP client.
///
/// It is the token a request through the layer would be sent with at the
/// same moment, and it knows which token that was: when a server rejects
/// it, [`TokenHandle::bearer_after_rejection`] gets the next one with the
/// layer's own rules (one refresh for any number of rejections, none for a
/// token already replaced by a usable one).
///
/// Its `Debug` shows the token's generation only.
///
/// ```
/// use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// # let source = refresh_fn(|_| async { Ok::<_, RefreshError>(TokenSet::new("t")) });
/// let layer = TokenRefreshLayer::builder(source).initial_tokens(TokenSet::new("abc")).build();
/// let bearer = layer.handle().bearer().await.unwrap();
/// assert_eq!(bearer.header_value(), "Bearer abc");
/// assert!(bearer.header_value().is_sensitive());
/// assert_eq!(bearer.expose(), "abc");
/// assert_eq!(bearer.generation(), 1);
/// assert!(!format!("{bearer:?}").contains("abc"));
/// # }
/// ```
///
/// [`TokenHandle::bearer`]: crate::TokenHandle::bearer
/// [`TokenHandle::bearer_after_rejection`]: crate::TokenHandle::bearer_after_rejection
#[derive(Clone)]
pub struct Bearer {
    credential: Credential,
    expires_at: Option<Instant>,
    from: ManagerId,
}

impl Bearer {
    pub(crate) fn new(
        credential: Credential,
        expires_at: Option<Instant>,
        from: ManagerId,
    ) -> Self {
        Self {
            credential,
            expires_at,
            from,
        }
    }

    /// The manager that handed it out.
    pub(crate) fn from(&self) -> &ManagerId {
        &self.from
    }

    /// `Bearer <access token>`, the value of an `Authorization` header;
    /// marked sensitive, as the layer's own header is.
    ///
    /// ```
    /// use http::{header::AUTHORIZATION, Request};
    /// use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// # let source = refresh_fn(|_| async { Ok::<_, RefreshError>(TokenSet::new("t")) });
    /// let handle = TokenRefreshLayer::builder(source).build().handle();
    /// // A WebSocket handshake, say, which the layer does not send.
    /// let mut handshake = Request::get("wss://stream.example.com/v1").body(()).unwrap();
    /// let bearer = handle.bearer().await.unwrap();
    /// handshake.headers_mut().insert(AUTHORIZATION, bearer.header_value().clone());
    /// assert_eq!(handshake.headers()[AUTHORIZATION], "Bearer t");
    /// # }
    /// ```
    pub fn header_value(&self) -> &HeaderValue {
        &self.credential.header
    }

    /// The access token alone, for a protocol that carries it in a field
    /// of its own (SASL `OAUTHBEARER`, a database password). Call it only
    /// where the token is sent.
    ///
    /// ```
    /// use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// # let source = refresh_fn(|_| async { Ok::<_, RefreshError>(TokenSet::new("t")) });
    /// let handle = TokenRefreshLayer::builder(source)
    ///     .initial_tokens(TokenSet::new("eyJhbGciOi.e30.sig"))
    ///     .build()
    ///     .handle();
    /// let bearer = handle.bearer().await.unwrap();
    /// let login = format!("n,,\x01auth=Bearer {}\x01\x01", bearer.expose());
    /// assert_eq!(login, "n,,\x01auth=Bearer eyJhbGciOi.e30.sig\x01\x01");
    /// # }
    /// ```
    pub fn expose(&self) -> &str {
        // The header was made as `Bearer ` and the access token, a `str`.
        std::str::from_utf8(&self.credential.header.as_bytes()[BEARER.len()..])
            .expect("made from the access token, a str")
    }

    /// Which token this is: the [generation](crate::TokenStatus::generation)
    /// it had when handed out, counted from 1 for the first token.
    ///
    /// ```
    /// use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// # let source = refresh_fn(|_| async { Ok::<_, RefreshError>(TokenSet::new("t")) });
    /// let handle = TokenRefreshLayer::builder(source).build().handle();
    /// let bearer = handle.bearer().await.unwrap();
    /// assert_eq!(bearer.generation(), handle.status().generation());
    /// # }
    /// ```
    pub fn generation(&self) -> u64 {
        self.credential.generation
    }

    /// How long until this token expires, by the lifetime its tokens came
    /// with ([`TokenSet::with_expires_in`](crate::TokenSet::with_expires_in);
    /// the HTTP refresher's answer `expires_in`, or else a JWT's `exp`); zero
    /// once past. `None` for a token whose lifetime is not known. A connection signed in with it
    /// may need to sign in again by then (a SASL `OAUTHBEARER` client takes
    /// it as the token's lifetime); the layer's own refresh starts earlier,
    /// at the token's refresh point.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
    /// # let source = refresh_fn(|_| async { Ok::<_, RefreshError>(TokenSet::new("t")) });
    /// let lifetime = Duration::from_secs(3600);
    /// let handle = TokenRefreshLayer::builder(source)
    ///     .initial_tokens(TokenSet::new("a").with_expires_in(lifetime))
    ///     .build()
    ///     .handle();
    /// let bearer = handle.bearer().await.unwrap();
    /// tokio::time::advance(Duration::from_secs(600)).await;
    /// assert_eq!(bearer.expires_in(), Some(Duration::from_secs(3000)));
    /// # }
    /// ```
    pub fn expires_in(&self) -> Option<Duration> {
        self.expires_at
            .map(|at| at.saturating_duration_since(Instant::now()))
    }
}

impl fmt::Debug for Bearer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bearer")
            .field("generation", &self.credential.generation)
            .finish_non_exhaustive()
    }
}
