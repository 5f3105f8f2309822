//! The builder methods of [`HttpRefresher`]: they work on every preset.
//!
//! In the examples, `client` stands for any HTTP client service, such as a
//! `hyper_util` client.

use std::time::Duration;

use http::Method;

use super::credential::{BodyFormat, ClientAuthMethod, Credential};
use super::{pointer, HttpRefresher};
use crate::Secret;

impl<C, B> HttpRefresher<C, B> {
    /// The OAuth2 client id. With a [secret](Self::client_secret) the
    /// client authenticates with it (Basic by default); without one it is a
    /// public client and only sends `client_id` in the body.
    ///
    /// ```
    /// # let client = tower::service_fn(|_: http::Request<http_body_util::Full<bytes::Bytes>>| async { Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::<bytes::Bytes>::default())) });
    /// use tower_token_refresh::http::HttpRefresher;
    /// // A public client (RFC 6749 §2.1): no secret.
    /// let refresher = HttpRefresher::oauth2("https://idp.example.com/token", client).client_id("cli");
    /// # let _ = refresher;
    /// ```
    pub fn client_id(mut self, id: impl Into<String>) -> Self {
        self.client_mut().id = id.into();
        self
    }

    /// The OAuth2 client secret. It never appears in `Debug` output.
    ///
    /// ```
    /// # let client = tower::service_fn(|_: http::Request<http_body_util::Full<bytes::Bytes>>| async { Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::<bytes::Bytes>::default())) });
    /// use tower_token_refresh::http::HttpRefresher;
    /// let refresher = HttpRefresher::oauth2("https://idp.example.com/token", client)
    ///     .client_id("app")
    ///     .client_secret("s3cret");
    /// assert!(!format!("{refresher:?}").contains("s3cret"));
    /// ```
    pub fn client_secret(mut self, secret: impl Into<Secret>) -> Self {
        self.client_mut().secret = Some(secret.into());
        self
    }

    /// How the client sends its secret: HTTP Basic (the default) or body
    /// fields.
    ///
    /// ```
    /// # let client = tower::service_fn(|_: http::Request<http_body_util::Full<bytes::Bytes>>| async { Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::<bytes::Bytes>::default())) });
    /// use tower_token_refresh::http::{ClientAuthMethod, HttpRefresher};
    /// let refresher = HttpRefresher::oauth2("https://idp.example.com/token", client)
    ///     .client_id("app")
    ///     .client_secret("s3cret")
    ///     .client_auth(ClientAuthMethod::Post);
    /// # let _ = refresher;
    /// ```
    pub fn client_auth(mut self, method: ClientAuthMethod) -> Self {
        self.client_mut().method = method;
        self
    }

    /// Asks for `scope` (a `scope` body field; OAuth2 allows narrowing it on
    /// refresh).
    ///
    /// ```
    /// # let client = tower::service_fn(|_: http::Request<http_body_util::Full<bytes::Bytes>>| async { Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::<bytes::Bytes>::default())) });
    /// use tower_token_refresh::http::HttpRefresher;
    /// let refresher = HttpRefresher::oauth2("https://idp.example.com/token", client).scope("read write");
    /// # let _ = refresher;
    /// ```
    pub fn scope(self, scope: impl Into<String>) -> Self {
        self.field("scope", scope)
    }

    /// The Ocient target database (a `database` body field; the server
    /// defaults to `system`).
    ///
    /// ```
    /// # let client = tower::service_fn(|_: http::Request<http_body_util::Full<bytes::Bytes>>| async { Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::<bytes::Bytes>::default())) });
    /// use tower_token_refresh::http::HttpRefresher;
    /// let refresher = HttpRefresher::ocient("https://sql-node.example.com/v1/token_refresh", client)
    ///     .database("retail_analytics");
    /// # let _ = refresher;
    /// ```
    pub fn database(self, database: impl Into<String>) -> Self {
        self.field("database", database)
    }

    /// Sends a body field with a fixed value, replacing an earlier one of
    /// the same name. Never put a secret here: use
    /// [`client_secret`](Self::client_secret) or the [`Credential`].
    ///
    /// ```
    /// # let client = tower::service_fn(|_: http::Request<http_body_util::Full<bytes::Bytes>>| async { Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::<bytes::Bytes>::default())) });
    /// use tower_token_refresh::http::HttpRefresher;
    /// let refresher = HttpRefresher::custom("https://api.example.com/refresh", client)
    ///     .field("audience", "api.example.com");
    /// # let _ = refresher;
    /// ```
    pub fn field(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        let (name, value) = (name.into(), value.into());
        let fields = &mut self.dialect().request.fields;
        match fields.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => fields.push((name, value)),
        }
        self
    }

    /// The HTTP method of the refresh call. Default: `POST`.
    ///
    /// ```
    /// # let client = tower::service_fn(|_: http::Request<http_body_util::Full<bytes::Bytes>>| async { Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::<bytes::Bytes>::default())) });
    /// use tower_token_refresh::http::HttpRefresher;
    /// let refresher = HttpRefresher::custom("https://api.example.com/session", client)
    ///     .method(http::Method::PUT);
    /// # let _ = refresher;
    /// ```
    pub fn method(mut self, method: Method) -> Self {
        self.dialect().request.method = method;
        self
    }

    /// Sends the body as `application/x-www-form-urlencoded`.
    ///
    /// ```
    /// # let client = tower::service_fn(|_: http::Request<http_body_util::Full<bytes::Bytes>>| async { Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::<bytes::Bytes>::default())) });
    /// use tower_token_refresh::http::HttpRefresher;
    /// let refresher = HttpRefresher::custom("https://api.example.com/refresh", client).form_body();
    /// # let _ = refresher;
    /// ```
    pub fn form_body(mut self) -> Self {
        self.dialect().request.format = BodyFormat::Form;
        self
    }

    /// Sends the body as a JSON object of strings.
    ///
    /// ```
    /// # let client = tower::service_fn(|_: http::Request<http_body_util::Full<bytes::Bytes>>| async { Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::<bytes::Bytes>::default())) });
    /// use tower_token_refresh::http::HttpRefresher;
    /// let refresher = HttpRefresher::oauth2("https://idp.example.com/token", client).json_body();
    /// # let _ = refresher;
    /// ```
    pub fn json_body(mut self) -> Self {
        self.dialect().request.format = BodyFormat::Json;
        self
    }

    /// Which token the call sends and where.
    ///
    /// ```
    /// # let client = tower::service_fn(|_: http::Request<http_body_util::Full<bytes::Bytes>>| async { Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::<bytes::Bytes>::default())) });
    /// use tower_token_refresh::http::{Credential, HttpRefresher};
    /// let refresher = HttpRefresher::custom("https://api.example.com/refresh", client)
    ///     .credential(Credential::field("token"));
    /// # let _ = refresher;
    /// ```
    pub fn credential(mut self, credential: Credential) -> Self {
        self.dialect().request.credential = credential;
        self
    }

    /// A boolean that must be `true` for the answer to count (an envelope's
    /// success flag). A JSON pointer (`/ok`) or a top-level field name.
    ///
    /// ```
    /// # let client = tower::service_fn(|_: http::Request<http_body_util::Full<bytes::Bytes>>| async { Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::<bytes::Bytes>::default())) });
    /// use tower_token_refresh::http::HttpRefresher;
    /// let refresher = HttpRefresher::custom("https://api.example.com/refresh", client).success_at("/ok");
    /// # let _ = refresher;
    /// ```
    pub fn success_at(mut self, path: &str) -> Self {
        self.dialect().response.success = Some(pointer(path));
        self
    }

    /// Where the access token is. A JSON pointer or a top-level field name.
    ///
    /// ```
    /// # let client = tower::service_fn(|_: http::Request<http_body_util::Full<bytes::Bytes>>| async { Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::<bytes::Bytes>::default())) });
    /// use tower_token_refresh::http::HttpRefresher;
    /// let refresher = HttpRefresher::custom("https://api.example.com/refresh", client)
    ///     .access_token_at("/data/token");
    /// # let _ = refresher;
    /// ```
    pub fn access_token_at(mut self, path: &str) -> Self {
        self.dialect().response.access_token = pointer(path);
        self
    }

    /// Where the lifetime in seconds is (a number or a numeric string).
    /// Without it, a JWT access token's `exp` is used.
    ///
    /// ```
    /// # let client = tower::service_fn(|_: http::Request<http_body_util::Full<bytes::Bytes>>| async { Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::<bytes::Bytes>::default())) });
    /// use tower_token_refresh::http::HttpRefresher;
    /// let refresher = HttpRefresher::custom("https://api.example.com/refresh", client)
    ///     .expires_in_at("/data/ttl");
    /// # let _ = refresher;
    /// ```
    pub fn expires_in_at(mut self, path: &str) -> Self {
        self.dialect().response.expires_in = Some(pointer(path));
        self
    }

    /// Where a new (rotated) refresh token is, if the API sends one.
    ///
    /// ```
    /// # let client = tower::service_fn(|_: http::Request<http_body_util::Full<bytes::Bytes>>| async { Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::<bytes::Bytes>::default())) });
    /// use tower_token_refresh::http::HttpRefresher;
    /// let refresher = HttpRefresher::custom("https://api.example.com/refresh", client)
    ///     .refresh_token_at("/data/refresh");
    /// # let _ = refresher;
    /// ```
    pub fn refresh_token_at(mut self, path: &str) -> Self {
        self.dialect().response.refresh_token = Some(pointer(path));
        self
    }

    /// Where the token type is; when present it must say `Bearer`.
    ///
    /// ```
    /// # let client = tower::service_fn(|_: http::Request<http_body_util::Full<bytes::Bytes>>| async { Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::<bytes::Bytes>::default())) });
    /// use tower_token_refresh::http::HttpRefresher;
    /// let refresher = HttpRefresher::custom("https://api.example.com/refresh", client)
    ///     .token_type_at("/data/kind");
    /// # let _ = refresher;
    /// ```
    pub fn token_type_at(mut self, path: &str) -> Self {
        self.dialect().response.token_type = Some(pointer(path));
        self
    }

    /// Keeps the non-secret field at `path` on the token set as the extra
    /// `name` ([`TokenSet::extra`](crate::TokenSet::extra)).
    ///
    /// ```
    /// # let client = tower::service_fn(|_: http::Request<http_body_util::Full<bytes::Bytes>>| async { Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::<bytes::Bytes>::default())) });
    /// use tower_token_refresh::http::HttpRefresher;
    /// let refresher = HttpRefresher::custom("https://api.example.com/refresh", client)
    ///     .keep_at("tenant", "/data/tenant");
    /// # let _ = refresher;
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
    /// # let client = tower::service_fn(|_: http::Request<http_body_util::Full<bytes::Bytes>>| async { Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::<bytes::Bytes>::default())) });
    /// use tower_token_refresh::http::HttpRefresher;
    /// let refresher = HttpRefresher::custom("https://api.example.com/refresh", client)
    ///     .error_message_at("/problem/detail");
    /// # let _ = refresher;
    /// ```
    pub fn error_message_at(mut self, path: &str) -> Self {
        self.dialect().errors.message.insert(0, pointer(path));
        self
    }

    /// Where an error answer's machine-readable code is.
    ///
    /// ```
    /// # let client = tower::service_fn(|_: http::Request<http_body_util::Full<bytes::Bytes>>| async { Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::<bytes::Bytes>::default())) });
    /// use tower_token_refresh::http::HttpRefresher;
    /// let refresher = HttpRefresher::custom("https://api.example.com/refresh", client)
    ///     .error_code_at("/problem/type");
    /// # let _ = refresher;
    /// ```
    pub fn error_code_at(mut self, path: &str) -> Self {
        self.dialect().errors.code = Some(pointer(path));
        self
    }

    /// Where an error answer's request id is.
    ///
    /// ```
    /// # let client = tower::service_fn(|_: http::Request<http_body_util::Full<bytes::Bytes>>| async { Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::<bytes::Bytes>::default())) });
    /// use tower_token_refresh::http::HttpRefresher;
    /// let refresher = HttpRefresher::custom("https://api.example.com/refresh", client)
    ///     .error_request_id_at("/problem/instance");
    /// # let _ = refresher;
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
    /// # let client = tower::service_fn(|_: http::Request<http_body_util::Full<bytes::Bytes>>| async { Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::<bytes::Bytes>::default())) });
    /// use tower_token_refresh::http::HttpRefresher;
    /// let refresher = HttpRefresher::ocient("http://oc1-lts0:9090/v1/token_refresh", client)
    ///     .allow_insecure_http(true);
    /// # let _ = refresher;
    /// ```
    pub fn allow_insecure_http(mut self, allow: bool) -> Self {
        self.settings().allow_insecure = allow;
        self
    }

    /// How long to wait after a `429` that names no wait (no
    /// `Retry-After`) before the next refresh call: the spacing the
    /// endpoint's rate limit allows, so that this layer's calls alone never
    /// exceed it (processes sharing one IP each wait on their own). The
    /// layer's [backoff](crate::Backoff) still applies when longer, and
    /// `Duration::ZERO` leaves it alone to decide (the error then names no
    /// wait). However long the wait, refreshing is blocked for an hour at
    /// most, as after a server's `Retry-After`. Default: 12 s for
    /// [`cognito`](Self::cognito) (5 calls a minute); none for the other
    /// presets, whose endpoints document no limit.
    ///
    /// ```
    /// # let client = tower::service_fn(|_: http::Request<http_body_util::Full<bytes::Bytes>>| async { Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::<bytes::Bytes>::default())) });
    /// use std::time::Duration;
    /// use tower_token_refresh::http::HttpRefresher;
    /// // An endpoint allowing 10 calls a minute.
    /// let refresher = HttpRefresher::oauth2("https://idp.example.com/oauth2/token", client)
    ///     .rate_limit_wait(Duration::from_secs(6));
    /// # let _ = refresher;
    /// ```
    pub fn rate_limit_wait(mut self, wait: Duration) -> Self {
        self.dialect().rate_limit_wait = (!wait.is_zero()).then_some(wait);
        self
    }

    /// How many bytes of an answer are read at most; a longer answer is a
    /// transient failure. Default: [`DEFAULT_BODY_LIMIT`](super::DEFAULT_BODY_LIMIT) (64 KiB).
    ///
    /// ```
    /// # let client = tower::service_fn(|_: http::Request<http_body_util::Full<bytes::Bytes>>| async { Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::<bytes::Bytes>::default())) });
    /// use tower_token_refresh::http::HttpRefresher;
    /// let refresher = HttpRefresher::cognito("https://api.example.com/api/auth/refresh-token", client)
    ///     .body_limit(16 * 1024);
    /// # let _ = refresher;
    /// ```
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.settings().body_limit = bytes;
        self
    }
}
