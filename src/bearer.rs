//! [`Bearer`]: the layer's token, handed out for a use outside the layer.

use std::fmt;

use http::HeaderValue;

use crate::manager::Credential;

/// The scheme every header the layer makes starts with.
const SCHEME: &str = "Bearer ";

/// An access token handed out by [`TokenHandle::bearer`], to send outside
/// the layer: a WebSocket handshake, a database or message-broker login
/// (OAuth bearer authentication), a request built by another HTTP client.
///
/// It is the token a request through the layer would be sent with at the
/// same moment, and it knows which token that was: when a server rejects
/// it, [`TokenHandle::bearer_rejected`] gets the next one with the layer's
/// own rules (one refresh for any number of rejections, none for a token
/// already replaced).
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
/// [`TokenHandle::bearer_rejected`]: crate::TokenHandle::bearer_rejected
#[derive(Clone)]
pub struct Bearer(Credential);

impl Bearer {
    pub(crate) fn new(credential: Credential) -> Self {
        Self(credential)
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
        &self.0.header
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
        std::str::from_utf8(&self.0.header.as_bytes()[SCHEME.len()..])
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
        self.0.generation
    }
}

impl fmt::Debug for Bearer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bearer")
            .field("generation", &self.0.generation)
            .finish_non_exhaustive()
    }
}
