//! The builder methods of [`HttpRefresher`]: they work on every preset.
//!
//! In the examples, a `tower::service_fn` stands in for the endpoint and
//! checks what it is sent; in real use the refresher gets an HTTP client
//! service, such as a `hyper_util` client. A refresh is started with
//! [`TokenHandle::force_refresh`](crate::TokenHandle::force_refresh); a
//! failed check in the stand-in fails that refresh.

use std::sync::Arc;
use std::time::Duration;

use http::Method;

use super::call_budget::RateLimit;
use super::credential::{BodyFormat, ClientAuthMethod, Credential};
use super::dialect::FieldValue;
use super::{pointer, HttpRefresher};
use crate::Secret;

impl<C, B> HttpRefresher<C, B> {
    /// The OAuth2 client id. With a [secret](Self::client_secret) the
    /// client authenticates with it (Basic by default); without one it is a
    /// public client and only sends `client_id` in the body.
    ///
    /// ```
    /// # use bytes::Bytes;
    /// # use http::{Request, Response};
    /// # use http_body_util::{BodyExt, Full};
    /// use tower_token_refresh::http::HttpRefresher;
    /// use tower_token_refresh::{BoxError, TokenRefreshLayer, TokenSet};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let idp = tower::service_fn(|request: Request<Full<Bytes>>| async move {
    ///     // A public client (RFC 6749 §2.1): no secret, so no Basic auth;
    ///     // it only names itself in the body.
    ///     assert!(request.headers().get("authorization").is_none());
    ///     let sent = request.into_body().collect().await?.to_bytes();
    ///     assert_eq!(sent, "grant_type=refresh_token&refresh_token=r1&client_id=cli");
    ///     Ok::<_, BoxError>(Response::new(Full::<Bytes>::from(r#"{"access_token":"a2"}"#)))
    /// });
    /// let refresher = HttpRefresher::oauth2("https://idp.example.com/token", idp).client_id("cli");
    /// let handle = TokenRefreshLayer::builder(refresher)
    ///     .initial_tokens(TokenSet::new("a1").with_refresh_token("r1"))
    ///     .build()
    ///     .handle();
    /// handle.force_refresh().await.unwrap();
    /// assert_eq!(handle.tokens().unwrap().access_token().expose(), "a2");
    /// # }
    /// ```
    pub fn client_id(mut self, id: impl Into<String>) -> Self {
        self.client_mut().id = id.into();
        self
    }

    /// The OAuth2 client secret. It never appears in `Debug` output.
    ///
    /// ```
    /// # use bytes::Bytes;
    /// # use http::{Request, Response};
    /// # use http_body_util::Full;
    /// use tower_token_refresh::http::HttpRefresher;
    /// use tower_token_refresh::{BoxError, TokenRefreshLayer, TokenSet};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let idp = tower::service_fn(|request: Request<Full<Bytes>>| async move {
    ///     // HTTP Basic (RFC 6749 §2.3.1): base64 of "app:s3cret".
    ///     assert_eq!(request.headers()["authorization"], "Basic YXBwOnMzY3JldA==");
    ///     Ok::<_, BoxError>(Response::new(Full::<Bytes>::from(r#"{"access_token":"a2"}"#)))
    /// });
    /// let refresher = HttpRefresher::oauth2("https://idp.example.com/token", idp)
    ///     .client_id("app")
    ///     .client_secret("s3cret");
    /// assert!(!format!("{refresher:?}").contains("s3cret"));
    /// let handle = TokenRefreshLayer::builder(refresher)
    ///     .initial_tokens(TokenSet::new("a1").with_refresh_token("r1"))
    ///     .build()
    ///     .handle();
    /// handle.force_refresh().await.unwrap();
    /// assert_eq!(handle.tokens().unwrap().access_token().expose(), "a2");
    /// # }
    /// ```
    pub fn client_secret(mut self, secret: impl Into<Secret>) -> Self {
        self.client_mut().secret = Some(secret.into());
        self
    }

    /// How the client sends its secret: HTTP Basic (the default) or body
    /// fields.
    ///
    /// ```
    /// # use bytes::Bytes;
    /// # use http::{Request, Response};
    /// # use http_body_util::{BodyExt, Full};
    /// use tower_token_refresh::http::{ClientAuthMethod, HttpRefresher};
    /// use tower_token_refresh::{BoxError, TokenRefreshLayer, TokenSet};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let idp = tower::service_fn(|request: Request<Full<Bytes>>| async move {
    ///     // `client_secret_post`: in the body, not in a Basic header.
    ///     assert!(request.headers().get("authorization").is_none());
    ///     let sent = request.into_body().collect().await?.to_bytes();
    ///     assert_eq!(sent, "grant_type=refresh_token&refresh_token=r1&client_id=app&client_secret=s3cret");
    ///     Ok::<_, BoxError>(Response::new(Full::<Bytes>::from(r#"{"access_token":"a2"}"#)))
    /// });
    /// let refresher = HttpRefresher::oauth2("https://idp.example.com/token", idp)
    ///     .client_id("app")
    ///     .client_secret("s3cret")
    ///     .client_auth(ClientAuthMethod::Post);
    /// let handle = TokenRefreshLayer::builder(refresher)
    ///     .initial_tokens(TokenSet::new("a1").with_refresh_token("r1"))
    ///     .build()
    ///     .handle();
    /// handle.force_refresh().await.unwrap();
    /// # }
    /// ```
    pub fn client_auth(mut self, method: ClientAuthMethod) -> Self {
        self.client_mut().method = method;
        self
    }

    /// Asks for `scope` (a `scope` body field; OAuth2 allows narrowing it on
    /// refresh).
    ///
    /// ```
    /// # use bytes::Bytes;
    /// # use http::{Request, Response};
    /// # use http_body_util::{BodyExt, Full};
    /// use tower_token_refresh::http::HttpRefresher;
    /// use tower_token_refresh::{BoxError, TokenRefreshLayer, TokenSet};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let idp = tower::service_fn(|request: Request<Full<Bytes>>| async move {
    ///     let sent = request.into_body().collect().await?.to_bytes();
    ///     assert_eq!(sent, "grant_type=refresh_token&refresh_token=r1&scope=read");
    ///     // No `scope` in the answer: the one asked for (RFC 6749 §5.1).
    ///     Ok::<_, BoxError>(Response::new(Full::<Bytes>::from(r#"{"access_token":"a2"}"#)))
    /// });
    /// // Granted `read write`, narrowed to `read` on refresh.
    /// let refresher = HttpRefresher::oauth2("https://idp.example.com/token", idp).scope("read");
    /// let granted = TokenSet::new("a1").with_refresh_token("r1").with_extra("scope", "read write");
    /// let handle = TokenRefreshLayer::builder(refresher).initial_tokens(granted).build().handle();
    /// handle.force_refresh().await.unwrap();
    /// assert_eq!(handle.tokens().unwrap().extra("scope"), Some("read"));
    /// # }
    /// ```
    pub fn scope(self, scope: impl Into<String>) -> Self {
        self.field("scope", scope)
    }

    /// The Ocient target database (a `database` body field). Without one,
    /// a refresh names the database the tokens in use are for (their
    /// `database` [extra](crate::TokenSet::extra), kept from the last
    /// answer or set with the login's tokens), and none if they name none:
    /// the server then moves the session to `system`.
    ///
    /// ```
    /// # use bytes::Bytes;
    /// # use http::{Request, Response};
    /// # use http_body_util::{BodyExt, Full};
    /// use tower_token_refresh::http::HttpRefresher;
    /// use tower_token_refresh::{BoxError, TokenRefreshLayer, TokenSet};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let ocient = tower::service_fn(|request: Request<Full<Bytes>>| async move {
    ///     let sent = request.into_body().collect().await?.to_bytes();
    ///     assert_eq!(sent, r#"{"database":"retail_analytics"}"#);
    ///     Ok::<_, BoxError>(Response::new(Full::<Bytes>::from(r#"{"access_token":"a2"}"#)))
    /// });
    /// let refresher = HttpRefresher::ocient("https://sql-node.example.com/v1/token_refresh", ocient)
    ///     .database("retail_analytics");
    /// let handle = TokenRefreshLayer::builder(refresher)
    ///     .initial_tokens(TokenSet::new("a1"))
    ///     .build()
    ///     .handle();
    /// handle.force_refresh().await.unwrap();
    /// // Kept on the tokens, as the answer left it out.
    /// assert_eq!(handle.tokens().unwrap().extra("database"), Some("retail_analytics"));
    /// # }
    /// ```
    pub fn database(self, database: impl Into<String>) -> Self {
        self.field("database", database)
    }

    /// Sends a body field with a fixed value, replacing an earlier one of
    /// the same name. Never put a secret here: use
    /// [`secret_field`](Self::secret_field),
    /// [`client_secret`](Self::client_secret) or the [`Credential`].
    ///
    /// ```
    /// # use bytes::Bytes;
    /// # use http::{Request, Response};
    /// # use http_body_util::{BodyExt, Full};
    /// use serde_json::{json, Value};
    /// use tower_token_refresh::http::HttpRefresher;
    /// use tower_token_refresh::{BoxError, TokenRefreshLayer, TokenSet};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let api = tower::service_fn(|request: Request<Full<Bytes>>| async move {
    ///     let sent: Value = serde_json::from_slice(&request.into_body().collect().await?.to_bytes())?;
    ///     assert_eq!(sent, json!({"refresh_token": "r1", "audience": "api.example.com"}));
    ///     Ok::<_, BoxError>(Response::new(Full::<Bytes>::from(r#"{"access_token":"a2"}"#)))
    /// });
    /// let refresher = HttpRefresher::custom("https://api.example.com/refresh", api)
    ///     .field("audience", "staging.example.com")
    ///     .field("audience", "api.example.com"); // replaces the first
    /// let handle = TokenRefreshLayer::builder(refresher)
    ///     .initial_tokens(TokenSet::new("a1").with_refresh_token("r1"))
    ///     .build()
    ///     .handle();
    /// handle.force_refresh().await.unwrap();
    /// # }
    /// ```
    pub fn field(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        let value = FieldValue::Plain(value.into());
        set_named(&mut self.dialect().request.fields, name.into(), value);
        self
    }

    /// Sends a body field whose fixed value is a secret (a static API key
    /// some endpoints take beside the refresh token), replacing an earlier
    /// field of the same name. Unlike [`field`](Self::field)'s, its value is
    /// redacted from the server's words (and the client's errors) wherever
    /// they quote it, as the tokens are; neither is shown by `Debug`.
    ///
    /// ```
    /// # use bytes::Bytes;
    /// # use http::{Request, Response, StatusCode};
    /// # use http_body_util::{BodyExt, Full};
    /// use serde_json::{json, Value};
    /// use tower_token_refresh::http::HttpRefresher;
    /// use tower_token_refresh::{BoxError, TokenRefreshLayer, TokenSet};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// // An endpoint that quotes the key it was sent in its error.
    /// let api = tower::service_fn(|request: Request<Full<Bytes>>| async move {
    ///     let sent: Value = serde_json::from_slice(&request.into_body().collect().await?.to_bytes())?;
    ///     assert_eq!(sent, json!({"refresh_token": "r1", "api_key": "k-29f1c0de"}));
    ///     let answer = format!(r#"{{"message":"api_key {} is disabled"}}"#, sent["api_key"].as_str().unwrap());
    ///     Ok::<_, BoxError>(Response::builder().status(StatusCode::FORBIDDEN).body(Full::<Bytes>::from(answer))?)
    /// });
    /// let refresher = HttpRefresher::custom("https://api.example.com/refresh", api)
    ///     .secret_field("api_key", "k-29f1c0de");
    /// assert!(!format!("{refresher:?}").contains("k-29f1c0de"));
    /// let handle = TokenRefreshLayer::builder(refresher)
    ///     .initial_tokens(TokenSet::new("a1").with_refresh_token("r1"))
    ///     .build()
    ///     .handle();
    /// let error = handle.force_refresh().await.unwrap_err();
    /// let shown = format!("{error} {error:?}");
    /// assert!(shown.contains("api_key [redacted] is disabled"), "{shown}");
    /// assert!(!shown.contains("k-29f1c0de"), "{shown}");
    /// # }
    /// ```
    pub fn secret_field(mut self, name: impl Into<String>, value: impl Into<Secret>) -> Self {
        let value = FieldValue::Secret(value.into());
        set_named(&mut self.dialect().request.fields, name.into(), value);
        self
    }

    /// The HTTP method of the refresh call. Default: `POST`.
    ///
    /// ```
    /// # use bytes::Bytes;
    /// # use http::{Request, Response};
    /// # use http_body_util::{BodyExt, Full};
    /// use http::Method;
    /// use tower_token_refresh::http::HttpRefresher;
    /// use tower_token_refresh::{BoxError, TokenRefreshLayer, TokenSet};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let api = tower::service_fn(|request: Request<Full<Bytes>>| async move {
    ///     assert_eq!(request.method(), Method::PUT);
    ///     Ok::<_, BoxError>(Response::new(Full::<Bytes>::from(r#"{"access_token":"a2"}"#)))
    /// });
    /// let refresher = HttpRefresher::custom("https://api.example.com/session", api)
    ///     .method(Method::PUT);
    /// let handle = TokenRefreshLayer::builder(refresher)
    ///     .initial_tokens(TokenSet::new("a1").with_refresh_token("r1"))
    ///     .build()
    ///     .handle();
    /// handle.force_refresh().await.unwrap();
    /// # }
    /// ```
    pub fn method(mut self, method: Method) -> Self {
        self.dialect().request.method = method;
        self
    }

    /// Sends the body as `application/x-www-form-urlencoded`.
    ///
    /// ```
    /// # use bytes::Bytes;
    /// # use http::{Request, Response};
    /// # use http_body_util::{BodyExt, Full};
    /// use tower_token_refresh::http::HttpRefresher;
    /// use tower_token_refresh::{BoxError, TokenRefreshLayer, TokenSet};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let api = tower::service_fn(|request: Request<Full<Bytes>>| async move {
    ///     assert_eq!(request.headers()["content-type"], "application/x-www-form-urlencoded");
    ///     let sent = request.into_body().collect().await?.to_bytes();
    ///     assert_eq!(sent, "refresh_token=r1"); // `{"refresh_token":"r1"}` without form_body
    ///     Ok::<_, BoxError>(Response::new(Full::<Bytes>::from(r#"{"access_token":"a2"}"#)))
    /// });
    /// let refresher = HttpRefresher::custom("https://api.example.com/refresh", api).form_body();
    /// let handle = TokenRefreshLayer::builder(refresher)
    ///     .initial_tokens(TokenSet::new("a1").with_refresh_token("r1"))
    ///     .build()
    ///     .handle();
    /// handle.force_refresh().await.unwrap();
    /// # }
    /// ```
    pub fn form_body(mut self) -> Self {
        self.dialect().request.format = BodyFormat::Form;
        self
    }

    /// Sends the body as a JSON object of strings.
    ///
    /// ```
    /// # use bytes::Bytes;
    /// # use http::{Request, Response};
    /// # use http_body_util::{BodyExt, Full};
    /// use tower_token_refresh::http::HttpRefresher;
    /// use tower_token_refresh::{BoxError, TokenRefreshLayer, TokenSet};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let idp = tower::service_fn(|request: Request<Full<Bytes>>| async move {
    ///     assert_eq!(request.headers()["content-type"], "application/json");
    ///     let sent = request.into_body().collect().await?.to_bytes();
    ///     assert_eq!(sent, r#"{"grant_type":"refresh_token","refresh_token":"r1"}"#);
    ///     Ok::<_, BoxError>(Response::new(Full::<Bytes>::from(r#"{"access_token":"a2"}"#)))
    /// });
    /// let refresher = HttpRefresher::oauth2("https://idp.example.com/token", idp).json_body();
    /// let handle = TokenRefreshLayer::builder(refresher)
    ///     .initial_tokens(TokenSet::new("a1").with_refresh_token("r1"))
    ///     .build()
    ///     .handle();
    /// handle.force_refresh().await.unwrap();
    /// # }
    /// ```
    pub fn json_body(mut self) -> Self {
        self.dialect().request.format = BodyFormat::Json;
        self
    }

    /// Which token the call sends and where.
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
    ///     assert_eq!(sent, r#"{"token":"r1"}"#); // not the default `refresh_token`
    ///     Ok::<_, BoxError>(Response::new(Full::<Bytes>::from(r#"{"access_token":"a2"}"#)))
    /// });
    /// let refresher = HttpRefresher::custom("https://api.example.com/refresh", api)
    ///     .credential(Credential::field("token"));
    /// let handle = TokenRefreshLayer::builder(refresher)
    ///     .initial_tokens(TokenSet::new("a1").with_refresh_token("r1"))
    ///     .build()
    ///     .handle();
    /// handle.force_refresh().await.unwrap();
    /// # }
    /// ```
    pub fn credential(mut self, credential: Credential) -> Self {
        self.dialect().request.credential = credential;
        self
    }

    /// A boolean that must be `true` for the answer to count (an envelope's
    /// success flag). A JSON pointer (`/ok`) or a top-level field name.
    ///
    /// ```
    /// # use bytes::Bytes;
    /// # use http::{Request, Response};
    /// # use http_body_util::{BodyExt, Full};
    /// use tower_token_refresh::http::HttpRefresher;
    /// use tower_token_refresh::{BoxError, TokenRefreshLayer, TokenSet};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let api = tower::service_fn(|_: Request<Full<Bytes>>| async {
    ///     let answer = r#"{"ok":false,"access_token":"a2"}"#;
    ///     Ok::<_, BoxError>(Response::new(Full::<Bytes>::from(answer)))
    /// });
    /// let refresher = HttpRefresher::custom("https://api.example.com/refresh", api)
    ///     .success_at("/ok");
    /// let handle = TokenRefreshLayer::builder(refresher)
    ///     .initial_tokens(TokenSet::new("a1").with_refresh_token("r1"))
    ///     .build()
    ///     .handle();
    /// // The envelope says the call failed: its token is not taken.
    /// let error = handle.force_refresh().await.unwrap_err();
    /// let cause = error.refresh_error().unwrap();
    /// assert!(cause.is_transient() && cause.message().contains("`ok` is not true"), "{error}");
    /// assert_eq!(handle.tokens().unwrap().access_token().expose(), "a1");
    /// # }
    /// ```
    pub fn success_at(mut self, path: &str) -> Self {
        self.dialect().response.success = Some(pointer(path));
        self
    }

    /// Where the access token is. A JSON pointer or a top-level field name.
    ///
    /// ```
    /// # use bytes::Bytes;
    /// # use http::{Request, Response};
    /// # use http_body_util::{BodyExt, Full};
    /// use tower_token_refresh::http::HttpRefresher;
    /// use tower_token_refresh::{BoxError, TokenRefreshLayer, TokenSet};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let api = tower::service_fn(|_: Request<Full<Bytes>>| async {
    ///     let answer = r#"{"data":{"token":"a2"}}"#;
    ///     Ok::<_, BoxError>(Response::new(Full::<Bytes>::from(answer)))
    /// });
    /// let refresher = HttpRefresher::custom("https://api.example.com/refresh", api)
    ///     .access_token_at("/data/token");
    /// let handle = TokenRefreshLayer::builder(refresher)
    ///     .initial_tokens(TokenSet::new("a1").with_refresh_token("r1"))
    ///     .build()
    ///     .handle();
    /// handle.force_refresh().await.unwrap();
    /// assert_eq!(handle.tokens().unwrap().access_token().expose(), "a2");
    /// # }
    /// ```
    pub fn access_token_at(mut self, path: &str) -> Self {
        self.dialect().response.access_token = pointer(path);
        self
    }

    /// Where the lifetime in seconds is (a number or a numeric string).
    /// Without it, a JWT access token's `exp` is used (the time left capped
    /// at `exp - iat`, where it has an `iat`).
    ///
    /// ```
    /// # use bytes::Bytes;
    /// # use http::{Request, Response};
    /// # use http_body_util::{BodyExt, Full};
    /// use tower_token_refresh::http::HttpRefresher;
    /// use tower_token_refresh::{BoxError, TokenRefreshLayer, TokenSet};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let api = tower::service_fn(|_: Request<Full<Bytes>>| async {
    ///     let answer = r#"{"access_token":"a2","data":{"ttl":"900"}}"#;
    ///     Ok::<_, BoxError>(Response::new(Full::<Bytes>::from(answer)))
    /// });
    /// let refresher = HttpRefresher::custom("https://api.example.com/refresh", api)
    ///     .expires_in_at("/data/ttl");
    /// let handle = TokenRefreshLayer::builder(refresher)
    ///     .initial_tokens(TokenSet::new("a1").with_refresh_token("r1"))
    ///     .build()
    ///     .handle();
    /// handle.force_refresh().await.unwrap();
    /// let lifetime = handle.tokens().unwrap().expires_in();
    /// assert_eq!(lifetime, Some(std::time::Duration::from_secs(900)));
    /// # }
    /// ```
    pub fn expires_in_at(mut self, path: &str) -> Self {
        self.dialect().response.expires_in = Some(pointer(path));
        self
    }

    /// Where a new (rotated) refresh token is, if the API sends one.
    ///
    /// ```
    /// # use bytes::Bytes;
    /// # use http::{Request, Response};
    /// # use http_body_util::{BodyExt, Full};
    /// use tower_token_refresh::http::HttpRefresher;
    /// use tower_token_refresh::{BoxError, TokenRefreshLayer, TokenSet};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let api = tower::service_fn(|_: Request<Full<Bytes>>| async {
    ///     let answer = r#"{"access_token":"a2","data":{"refresh":"r2"}}"#;
    ///     Ok::<_, BoxError>(Response::new(Full::<Bytes>::from(answer)))
    /// });
    /// let refresher = HttpRefresher::custom("https://api.example.com/refresh", api)
    ///     .refresh_token_at("/data/refresh");
    /// let handle = TokenRefreshLayer::builder(refresher)
    ///     .initial_tokens(TokenSet::new("a1").with_refresh_token("r1"))
    ///     .build()
    ///     .handle();
    /// handle.force_refresh().await.unwrap();
    /// // Rotated: r1 would have been kept had the answer carried none.
    /// assert_eq!(handle.tokens().unwrap().refresh_token().unwrap().expose(), "r2");
    /// # }
    /// ```
    pub fn refresh_token_at(mut self, path: &str) -> Self {
        self.dialect().response.refresh_token = Some(pointer(path));
        self
    }

    /// Where the token type is; when present it must say `Bearer`.
    ///
    /// ```
    /// # use bytes::Bytes;
    /// # use http::{Request, Response};
    /// # use http_body_util::{BodyExt, Full};
    /// use tower_token_refresh::http::HttpRefresher;
    /// use tower_token_refresh::{BoxError, TokenRefreshLayer, TokenSet};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let api = tower::service_fn(|_: Request<Full<Bytes>>| async {
    ///     let answer = r#"{"access_token":"a2","data":{"kind":"MAC"}}"#;
    ///     Ok::<_, BoxError>(Response::new(Full::<Bytes>::from(answer)))
    /// });
    /// let refresher = HttpRefresher::custom("https://api.example.com/refresh", api)
    ///     .token_type_at("/data/kind");
    /// let handle = TokenRefreshLayer::builder(refresher)
    ///     .initial_tokens(TokenSet::new("a1").with_refresh_token("r1"))
    ///     .build()
    ///     .handle();
    /// // Not a bearer token: refused, and the current one kept.
    /// let error = handle.force_refresh().await.unwrap_err();
    /// let cause = error.refresh_error().unwrap();
    /// assert!(cause.message().contains("`kind` is not Bearer"), "{error}");
    /// assert_eq!(handle.tokens().unwrap().access_token().expose(), "a1");
    /// # }
    /// ```
    pub fn token_type_at(mut self, path: &str) -> Self {
        self.dialect().response.token_type = Some(pointer(path));
        self
    }

    /// Keeps the non-secret field at `path` on the token set as the extra
    /// `name` ([`TokenSet::extra`](crate::TokenSet::extra)).
    ///
    /// ```
    /// # use bytes::Bytes;
    /// # use http::{Request, Response};
    /// # use http_body_util::{BodyExt, Full};
    /// use tower_token_refresh::http::HttpRefresher;
    /// use tower_token_refresh::{BoxError, TokenRefreshLayer, TokenSet};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let api = tower::service_fn(|_: Request<Full<Bytes>>| async {
    ///     let answer = r#"{"access_token":"a2","data":{"tenant":"acme"}}"#;
    ///     Ok::<_, BoxError>(Response::new(Full::<Bytes>::from(answer)))
    /// });
    /// let refresher = HttpRefresher::custom("https://api.example.com/refresh", api)
    ///     .keep_at("tenant", "/data/tenant");
    /// let handle = TokenRefreshLayer::builder(refresher)
    ///     .initial_tokens(TokenSet::new("a1").with_refresh_token("r1"))
    ///     .build()
    ///     .handle();
    /// handle.force_refresh().await.unwrap();
    /// assert_eq!(handle.tokens().unwrap().extra("tenant"), Some("acme"));
    /// # }
    /// ```
    pub fn keep_at(mut self, name: impl Into<String>, path: &str) -> Self {
        self.dialect()
            .response
            .keep
            .push((name.into(), pointer(path)));
        self
    }

    /// Where an error answer's message is; tried before the preset's own.
    ///
    /// ```
    /// # use bytes::Bytes;
    /// # use http::{Request, Response, StatusCode};
    /// # use http_body_util::Full;
    /// use tower_token_refresh::http::HttpRefresher;
    /// use tower_token_refresh::{BoxError, TokenRefreshLayer, TokenSet};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let api = tower::service_fn(|_: Request<Full<Bytes>>| async {
    ///     let problem = r#"{"problem":{"detail":"refresh token revoked","type":"revoked","instance":"req-42"}}"#;
    ///     let answer = Response::builder().status(StatusCode::BAD_REQUEST);
    ///     Ok::<_, BoxError>(answer.body(Full::<Bytes>::from(problem))?)
    /// });
    /// let refresher = HttpRefresher::custom("https://api.example.com/refresh", api)
    ///     .error_message_at("/problem/detail");
    /// let handle = TokenRefreshLayer::builder(refresher)
    ///     .initial_tokens(TokenSet::new("a1").with_refresh_token("r1"))
    ///     .build()
    ///     .handle();
    /// let error = handle.force_refresh().await.unwrap_err();
    /// assert_eq!(error.refresh_error().unwrap().message(), "refresh token revoked");
    /// # }
    /// ```
    pub fn error_message_at(mut self, path: &str) -> Self {
        self.dialect().errors.message.insert(0, pointer(path));
        self
    }

    /// Where an error answer's machine-readable code is.
    ///
    /// ```
    /// # use bytes::Bytes;
    /// # use http::{Request, Response, StatusCode};
    /// # use http_body_util::Full;
    /// use tower_token_refresh::http::HttpRefresher;
    /// use tower_token_refresh::{BoxError, TokenRefreshLayer, TokenSet};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let api = tower::service_fn(|_: Request<Full<Bytes>>| async {
    ///     let problem = r#"{"problem":{"detail":"refresh token revoked","type":"revoked","instance":"req-42"}}"#;
    ///     let answer = Response::builder().status(StatusCode::BAD_REQUEST);
    ///     Ok::<_, BoxError>(answer.body(Full::<Bytes>::from(problem))?)
    /// });
    /// let refresher = HttpRefresher::custom("https://api.example.com/refresh", api)
    ///     .error_code_at("/problem/type");
    /// let handle = TokenRefreshLayer::builder(refresher)
    ///     .initial_tokens(TokenSet::new("a1").with_refresh_token("r1"))
    ///     .build()
    ///     .handle();
    /// let error = handle.force_refresh().await.unwrap_err();
    /// assert_eq!(error.refresh_error().unwrap().code(), Some("revoked"));
    /// # }
    /// ```
    pub fn error_code_at(mut self, path: &str) -> Self {
        self.dialect().errors.code = Some(pointer(path));
        self
    }

    /// Where an error answer's request id is.
    ///
    /// ```
    /// # use bytes::Bytes;
    /// # use http::{Request, Response, StatusCode};
    /// # use http_body_util::Full;
    /// use tower_token_refresh::http::HttpRefresher;
    /// use tower_token_refresh::{BoxError, TokenRefreshLayer, TokenSet};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let api = tower::service_fn(|_: Request<Full<Bytes>>| async {
    ///     let problem = r#"{"problem":{"detail":"refresh token revoked","type":"revoked","instance":"req-42"}}"#;
    ///     let answer = Response::builder().status(StatusCode::BAD_REQUEST);
    ///     Ok::<_, BoxError>(answer.body(Full::<Bytes>::from(problem))?)
    /// });
    /// let refresher = HttpRefresher::custom("https://api.example.com/refresh", api)
    ///     .error_request_id_at("/problem/instance");
    /// let handle = TokenRefreshLayer::builder(refresher)
    ///     .initial_tokens(TokenSet::new("a1").with_refresh_token("r1"))
    ///     .build()
    ///     .handle();
    /// let error = handle.force_refresh().await.unwrap_err();
    /// assert_eq!(error.refresh_error().unwrap().request_id(), Some("req-42"));
    /// # }
    /// ```
    pub fn error_request_id_at(mut self, path: &str) -> Self {
        self.dialect().errors.request_id = Some(pointer(path));
        self
    }

    /// Allows a plain `http://` refresh URL to a host that is not loopback.
    /// The credential then crosses the network in clear text: only for
    /// networks you trust. Default: refused.
    ///
    /// ```
    /// # use bytes::Bytes;
    /// # use http::{Request, Response};
    /// # use http_body_util::Full;
    /// use tower_token_refresh::http::HttpRefresher;
    /// use tower_token_refresh::{BoxError, TokenRefreshLayer, TokenSet};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// # let ocient = tower::service_fn(|_: Request<Full<Bytes>>| async {
    /// #     Ok::<_, BoxError>(Response::new(Full::<Bytes>::from(r#"{"access_token":"a2"}"#)))
    /// # });
    /// let url = "http://oc1-lts0:9090/v1/token_refresh";
    /// // Refused by default, before anything is sent.
    /// let handle = TokenRefreshLayer::builder(HttpRefresher::ocient(url, ocient))
    ///     .initial_tokens(TokenSet::new("a1"))
    ///     .build()
    ///     .handle();
    /// let error = handle.force_refresh().await.unwrap_err();
    /// assert!(error.refresh_error().unwrap().message().contains("plain http"), "{error}");
    ///
    /// let refresher = HttpRefresher::ocient(url, ocient).allow_insecure_http(true);
    /// let handle = TokenRefreshLayer::builder(refresher)
    ///     .initial_tokens(TokenSet::new("a1"))
    ///     .build()
    ///     .handle();
    /// handle.force_refresh().await.unwrap();
    /// assert_eq!(handle.tokens().unwrap().access_token().expose(), "a2");
    /// # }
    /// ```
    pub fn allow_insecure_http(mut self, allow: bool) -> Self {
        self.settings().allow_insecure = allow;
        self
    }

    /// The endpoint's rate limit, at most `calls` calls in any `per`, kept
    /// on this side: a refresh past it is not sent but fails at once as
    /// rate limited, naming when the next call may go, and the layer keeps
    /// the current token and waits as after a `429`. A server that counts
    /// refused calls too (the Cognito-backed API does) would otherwise stay
    /// refused while backoff retries after a run of `5xx`s, or forced
    /// refreshes, called it again. A call counts from when its answer has
    /// been read; one whose connection was refused does not count.
    ///
    /// The count is this refresher's and its clones' (those made after this
    /// call: a clone made before keeps its own limit and count); a
    /// refresher built separately keeps a count of its own. A server that
    /// limits calls per client IP address, as the Cognito-backed API does,
    /// counts every call from that address: several layers refreshing
    /// against one such endpoint should use clones of one refresher, or
    /// each be given a smaller limit so that together they stay within the
    /// server's. Processes behind one address count apart, and meet the
    /// server's `429` unless their limits add up to no more than its. A
    /// client that retries calls on its own spends more of the limit than
    /// is counted. Zero `calls` or `per`: no limit. Default: 5 calls a
    /// minute for [`cognito`](Self::cognito); none for the other presets,
    /// whose endpoints document no limit.
    ///
    /// ```
    /// # use bytes::Bytes;
    /// # use http::{Request, Response};
    /// # use http_body_util::Full;
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use tower_token_refresh::http::HttpRefresher;
    /// use tower_token_refresh::{BoxError, TokenRefreshLayer, TokenSet};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let calls = Arc::new(AtomicUsize::new(0));
    /// let counted = Arc::clone(&calls);
    /// let idp = tower::service_fn(move |_: Request<Full<Bytes>>| {
    ///     counted.fetch_add(1, Ordering::SeqCst);
    ///     let answer = r#"{"access_token":"a2","expires_in":3600}"#;
    ///     async move { Ok::<_, BoxError>(Response::new(Full::<Bytes>::from(answer))) }
    /// });
    /// // An endpoint allowing 2 calls an hour.
    /// let refresher = HttpRefresher::oauth2("https://idp.example.com/oauth2/token", idp)
    ///     .rate_limit(2, Duration::from_secs(3600));
    /// let handle = TokenRefreshLayer::builder(refresher)
    ///     .initial_tokens(TokenSet::new("a1").with_refresh_token("r1"))
    ///     .build()
    ///     .handle();
    /// handle.force_refresh().await.unwrap();
    /// handle.force_refresh().await.unwrap();
    /// let error = handle.force_refresh().await.unwrap_err();
    /// let cause = error.refresh_error().unwrap();
    /// assert!(cause.is_rate_limited(), "{error}");
    /// assert!(cause.retry_after().unwrap() > Duration::from_secs(3599));
    /// assert_eq!(calls.load(Ordering::SeqCst), 2, "the third was not sent");
    /// # }
    /// ```
    pub fn rate_limit(mut self, calls: u32, per: Duration) -> Self {
        let limit = (calls > 0 && !per.is_zero()).then_some(RateLimit { calls, per });
        self.dialect().rate_limit = limit;
        // Counted apart from any clone made before, which keeps its limit.
        self.settings().calls = Arc::default();
        self
    }

    /// How long to wait after a `429` that names no wait (no
    /// `Retry-After`) before the next refresh call: the spacing the
    /// endpoint's documented limit implies: for a limit of so many calls a
    /// period, counted over the last period, the whole period (a `429`
    /// says only that the period held too many calls). The
    /// layer's [backoff](crate::Backoff) still applies when longer, and
    /// `Duration::ZERO` leaves it alone to decide (the error then names no
    /// wait). However long the wait, it blocks refreshing for an hour at
    /// most, as a server's `Retry-After` does (the backoff's own delay,
    /// if longer, still applies). Default: a minute for
    /// [`cognito`](Self::cognito) (5 calls a minute); none for the other
    /// presets, whose endpoints document no limit.
    ///
    /// ```
    /// # use bytes::Bytes;
    /// # use http::{Request, Response, StatusCode};
    /// # use http_body_util::Full;
    /// use std::time::Duration;
    /// use tower_token_refresh::http::HttpRefresher;
    /// use tower_token_refresh::{BoxError, TokenRefreshLayer, TokenSet};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// // A 429 that names no wait (no `Retry-After`).
    /// let idp = tower::service_fn(|_: Request<Full<Bytes>>| async {
    ///     let answer = Response::builder().status(StatusCode::TOO_MANY_REQUESTS);
    ///     Ok::<_, BoxError>(answer.body(Full::<Bytes>::default())?)
    /// });
    /// // An endpoint allowing 10 calls a minute.
    /// let refresher = HttpRefresher::oauth2("https://idp.example.com/oauth2/token", idp)
    ///     .rate_limit_wait(Duration::from_secs(6));
    /// let handle = TokenRefreshLayer::builder(refresher)
    ///     .initial_tokens(TokenSet::new("a1").with_refresh_token("r1"))
    ///     .build()
    ///     .handle();
    /// let error = handle.force_refresh().await.unwrap_err();
    /// let cause = error.refresh_error().unwrap();
    /// assert!(cause.is_rate_limited(), "{error}");
    /// assert_eq!(cause.retry_after(), Some(Duration::from_secs(6)));
    /// # }
    /// ```
    pub fn rate_limit_wait(mut self, wait: Duration) -> Self {
        self.dialect().rate_limit_wait = (!wait.is_zero()).then_some(wait);
        self
    }

    /// How many bytes of an answer are read at most; a longer answer is a
    /// transient failure. Default: [`DEFAULT_BODY_LIMIT`](super::DEFAULT_BODY_LIMIT) (64 KiB).
    ///
    /// ```
    /// # use bytes::Bytes;
    /// # use http::{Request, Response};
    /// # use http_body_util::Full;
    /// use tower_token_refresh::http::HttpRefresher;
    /// use tower_token_refresh::{BoxError, TokenRefreshLayer, TokenSet};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// // A valid answer of some 20 KB: within the default limit, not within 16 KiB.
    /// let api = tower::service_fn(|_: Request<Full<Bytes>>| async {
    ///     let answer = format!(r#"{{"accessToken":"a2","padding":"{}"}}"#, "x".repeat(20_000));
    ///     Ok::<_, BoxError>(Response::new(Full::<Bytes>::from(answer)))
    /// });
    /// let refresher = HttpRefresher::cognito("https://api.example.com/api/auth/refresh-token", api)
    ///     .body_limit(16 * 1024);
    /// let handle = TokenRefreshLayer::builder(refresher)
    ///     .initial_tokens(TokenSet::new("a1").with_refresh_token("r1"))
    ///     .build()
    ///     .handle();
    /// let error = handle.force_refresh().await.unwrap_err();
    /// let cause = error.refresh_error().unwrap();
    /// assert!(cause.is_transient(), "{error}");
    /// assert_eq!(cause.message(), "the refresh answer is larger than 16384 bytes");
    /// # }
    /// ```
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.settings().body_limit = bytes;
        self
    }
}

/// Sets `name` to `value` among `fields`: in its place if it is there,
/// else last.
fn set_named(fields: &mut Vec<(String, FieldValue)>, name: String, value: FieldValue) {
    match fields.iter_mut().find(|(n, _)| *n == name) {
        Some(slot) => slot.1 = value,
        None => fields.push((name, value)),
    }
}
