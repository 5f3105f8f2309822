//! What a refresh request carries to prove itself: [`Credential`] (which
//! token, and where) and [`ClientAuthMethod`] (how an OAuth2 client
//! authenticates).

/// Which token a refresh request sends, and where it puts it.
///
/// Most APIs take the refresh token in a body field; sliding-session APIs
/// (Ocient's `token_refresh`) take the current access token as a bearer
/// header instead.
///
/// ```
/// use tower_token_refresh::http::Credential;
///
/// // `{"token": "<refresh token>"}`
/// let in_body = Credential::field("token");
/// // `Authorization: Bearer <current access token>`
/// let sliding = Credential::bearer_header().with_access_token();
/// assert_ne!(in_body, sliding);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    pub(crate) token: TokenKind,
    pub(crate) placement: Placement,
}

/// The token a [`Credential`] sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenKind {
    Refresh,
    Access,
}

/// Where a [`Credential`] goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Placement {
    /// A field of the request body, in the body's format (form or JSON).
    Field(String),
    /// `Authorization: Bearer <token>`.
    BearerHeader,
    /// Nowhere: the request proves itself otherwise (a `client_credentials`
    /// grant authenticates the client alone).
    Omitted,
}

impl Credential {
    /// The refresh token in the body field `name` (a form field or a JSON
    /// string, following the request's body format).
    ///
    /// ```
    /// # use bytes::Bytes;
    /// # use http::{Request, Response};
    /// # use http_body_util::{BodyExt, Full};
    /// use tower_token_refresh::http::{Credential, HttpRefresher};
    /// use tower_token_refresh::{BoxError, TokenRefreshLayer, TokenSet};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let api = tower::service_fn(|request: Request<Full<Bytes>>| async move {
    ///     let sent = request.into_body().collect().await?.to_bytes();
    ///     assert_eq!(sent, "token=r1"); // a form field, as the body is a form
    ///     Ok::<_, BoxError>(Response::new(Full::<Bytes>::from(r#"{"access_token":"a2"}"#)))
    /// });
    /// let refresher = HttpRefresher::custom("https://api.example.com/refresh", api)
    ///     .form_body()
    ///     .credential(Credential::field("token"));
    /// let handle = TokenRefreshLayer::builder(refresher)
    ///     .initial_tokens(TokenSet::new("a1").with_refresh_token("r1"))
    ///     .build()
    ///     .handle();
    /// handle.force_refresh().await.unwrap();
    /// # }
    /// ```
    pub fn field(name: impl Into<String>) -> Self {
        Self {
            token: TokenKind::Refresh,
            placement: Placement::Field(name.into()),
        }
    }

    /// The refresh token as `Authorization: Bearer <token>`.
    ///
    /// ```
    /// # use bytes::Bytes;
    /// # use http::{Request, Response};
    /// # use http_body_util::{BodyExt, Full};
    /// use tower_token_refresh::http::{Credential, HttpRefresher};
    /// use tower_token_refresh::{BoxError, TokenRefreshLayer, TokenSet};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let api = tower::service_fn(|request: Request<Full<Bytes>>| async move {
    ///     assert_eq!(request.headers()["authorization"], "Bearer r1");
    ///     let sent = request.into_body().collect().await?.to_bytes();
    ///     assert_eq!(sent, "{}"); // and not in the body
    ///     Ok::<_, BoxError>(Response::new(Full::<Bytes>::from(r#"{"access_token":"a2"}"#)))
    /// });
    /// let refresher = HttpRefresher::custom("https://api.example.com/refresh", api)
    ///     .credential(Credential::bearer_header());
    /// let handle = TokenRefreshLayer::builder(refresher)
    ///     .initial_tokens(TokenSet::new("a1").with_refresh_token("r1"))
    ///     .build()
    ///     .handle();
    /// handle.force_refresh().await.unwrap();
    /// # }
    /// ```
    pub fn bearer_header() -> Self {
        Self {
            token: TokenKind::Refresh,
            placement: Placement::BearerHeader,
        }
    }

    /// No token at all, for grants where the client's own credentials are
    /// the proof (OAuth2 `client_credentials`).
    ///
    /// ```
    /// # use bytes::Bytes;
    /// # use http::{Request, Response};
    /// # use http_body_util::{BodyExt, Full};
    /// use tower_token_refresh::http::{Credential, HttpRefresher};
    /// use tower_token_refresh::{BoxError, TokenRefreshLayer};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let idp = tower::service_fn(|request: Request<Full<Bytes>>| async move {
    ///     // The client's id and secret ("svc" / "s3cret"), and no token.
    ///     assert_eq!(request.headers()["authorization"], "Basic c3ZjOnMzY3JldA==");
    ///     let sent = request.into_body().collect().await?.to_bytes();
    ///     assert_eq!(sent, "{}");
    ///     Ok::<_, BoxError>(Response::new(Full::<Bytes>::from(r#"{"access_token":"a1"}"#)))
    /// });
    /// let refresher = HttpRefresher::custom("https://idp.example.com/token", idp)
    ///     .credential(Credential::none())
    ///     .client_id("svc")
    ///     .client_secret("s3cret");
    /// // No tokens to start from, and none needed.
    /// let handle = TokenRefreshLayer::builder(refresher).build().handle();
    /// handle.force_refresh().await.unwrap();
    /// assert_eq!(handle.tokens().unwrap().access_token().expose(), "a1");
    /// # }
    /// ```
    pub fn none() -> Self {
        Self {
            token: TokenKind::Refresh,
            placement: Placement::Omitted,
        }
    }

    /// Sends the current access token instead of the refresh token: the
    /// access token is its own refresh credential, so it must be renewed
    /// before it expires, and refreshers using it turn on background refresh
    /// by default.
    ///
    /// ```
    /// # use bytes::Bytes;
    /// # use http::{Request, Response};
    /// # use http_body_util::{BodyExt, Full};
    /// use tower_token_refresh::http::{Credential, HttpRefresher};
    /// use tower_token_refresh::{BoxError, Refresh, TokenRefreshLayer, TokenSet};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let api = tower::service_fn(|request: Request<Full<Bytes>>| async move {
    ///     // The current access token, not the refresh token `r1`.
    ///     assert_eq!(request.headers()["authorization"], "Bearer a1");
    ///     Ok::<_, BoxError>(Response::new(Full::<Bytes>::from(r#"{"access_token":"a2"}"#)))
    /// });
    /// let refresher = HttpRefresher::custom("https://api.example.com/session", api)
    ///     .credential(Credential::bearer_header().with_access_token());
    /// assert!(refresher.needs_background_refresh());
    /// let handle = TokenRefreshLayer::builder(refresher)
    ///     .initial_tokens(TokenSet::new("a1").with_refresh_token("r1"))
    ///     .build()
    ///     .handle();
    /// handle.force_refresh().await.unwrap();
    /// assert_eq!(handle.tokens().unwrap().access_token().expose(), "a2");
    /// # }
    /// ```
    pub fn with_access_token(mut self) -> Self {
        self.token = TokenKind::Access;
        self
    }

    pub(crate) fn sends_access_token(&self) -> bool {
        self.token == TokenKind::Access && self.placement != Placement::Omitted
    }

    /// Whether the request presents a token at all: not a
    /// `client_credentials` grant, which asks anew each time.
    pub(crate) fn presents_a_token(&self) -> bool {
        self.placement != Placement::Omitted
    }
}

/// How an OAuth2 client proves its identity to the token endpoint
/// (RFC 6749 §2.3.1).
///
/// ```
/// use tower_token_refresh::http::ClientAuthMethod;
/// assert_eq!(ClientAuthMethod::default(), ClientAuthMethod::Basic);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientAuthMethod {
    /// `client_secret_basic`: HTTP Basic with the client id and secret, each
    /// form-encoded first, as RFC 6749 §2.3.1 requires. The default.
    #[default]
    Basic,
    /// `client_secret_post`: `client_id` and `client_secret` as body fields.
    Post,
}

/// The request body's encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyFormat {
    /// `application/x-www-form-urlencoded`.
    Form,
    /// `application/json`, an object of string fields.
    Json,
}
