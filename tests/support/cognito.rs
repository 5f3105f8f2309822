//! The client side of the Cognito-style identity server: log in, and
//! refresh with the mapping from its answers to [`RefreshError`] classes.
//!
//! | answer | class |
//! |---|---|
//! | `200` with `accessToken` and `expiresIn` | a new [`TokenSet`] |
//! | `200` that does not decode | transient |
//! | `429` | rate limited (`Retry-After` seconds if sent; the seed sends none) |
//! | `408`, `5xx`, no answer | transient |
//! | any other `4xx` (`401` revoked, `400`, `403`) | terminal |

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{CONTENT_TYPE, RETRY_AFTER};
use hyper::{HeaderMap, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tower_token_refresh::{RefreshContext, RefreshError, TokenSet};

/// Talks to an [`IdentityServer`](super::IdentityServer) with its own,
/// un-layered hyper-util client: the refresh call never passes through the
/// token layer.
#[derive(Clone)]
pub struct CognitoClient {
    http: Client<HttpConnector, Full<Bytes>>,
    base_url: String,
}

impl CognitoClient {
    /// A client for the identity server at `base_url` (`http://host:port`).
    pub fn new(base_url: impl Into<String>) -> Self {
        Self {
            http: Client::builder(TokioExecutor::new()).build_http(),
            base_url: base_url.into(),
        }
    }

    /// `POST /api/auth/login`: the first tokens, refresh token included.
    pub async fn login(&self, username: &str, password: &str) -> Result<TokenSet, RefreshError> {
        let body = json!({ "username": username, "password": password });
        self.post("/api/auth/login", &body).await
    }

    /// `POST /api/auth/refresh-token` with the context's refresh token.
    pub async fn refresh(&self, ctx: &RefreshContext) -> Result<TokenSet, RefreshError> {
        let Some(refresh_token) = ctx.refresh_token() else {
            return Err(RefreshError::terminal("no refresh token: log in first"));
        };
        let body = json!({ "refreshToken": refresh_token.expose() });
        self.post("/api/auth/refresh-token", &body).await
    }

    async fn post(&self, path: &str, body: &Value) -> Result<TokenSet, RefreshError> {
        let request = Request::post(format!("{}{path}", self.base_url))
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("valid request");
        let response =
            self.http.request(request).await.map_err(|e| {
                RefreshError::transient("identity server unreachable").with_source(e)
            })?;
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.map_err(|e| {
            RefreshError::transient("identity server response cut short").with_source(e)
        })?;
        let bytes = bytes.to_bytes();
        if parts.status == StatusCode::OK {
            decode(&bytes)
        } else {
            Err(classify(parts.status, &parts.headers, &bytes))
        }
    }
}

/// `{accessToken, refreshToken, expiresIn}` → [`TokenSet`].
fn decode(bytes: &[u8]) -> Result<TokenSet, RefreshError> {
    let undecodable = || RefreshError::transient("undecodable token response").with_status(200);
    let value: Value = serde_json::from_slice(bytes).map_err(|e| undecodable().with_source(e))?;
    let access = value["accessToken"].as_str().ok_or_else(undecodable)?;
    let expires_in = value["expiresIn"].as_f64().ok_or_else(undecodable)?;
    let expires_in = Duration::try_from_secs_f64(expires_in).map_err(|_| undecodable())?;
    let mut tokens = TokenSet::new(access).with_expires_in(expires_in);
    if let Some(refresh) = value["refreshToken"].as_str() {
        tokens = tokens.with_refresh_token(refresh);
    }
    Ok(tokens)
}

/// A non-200 answer → the failure class the layer acts on, carrying the
/// server's `message` and `error` (never a token).
fn classify(status: StatusCode, headers: &HeaderMap, bytes: &[u8]) -> RefreshError {
    let value: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
    let message = value["message"]
        .as_str()
        .or(status.canonical_reason())
        .unwrap_or("unexpected status")
        .to_owned();
    let error = if status == StatusCode::TOO_MANY_REQUESTS {
        RefreshError::rate_limited(retry_after(headers)).with_message(message)
    } else if status == StatusCode::REQUEST_TIMEOUT || status.is_server_error() {
        RefreshError::transient(message)
    } else if status.is_client_error() {
        RefreshError::terminal(message)
    } else {
        RefreshError::transient(message)
    };
    let error = error.with_status(status.as_u16());
    match value["error"].as_str() {
        Some(code) => error.with_code(code),
        None => error,
    }
}

/// `Retry-After` in seconds (an HTTP date is not worth parsing here: the
/// seed's server sends no `Retry-After` at all).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let seconds = headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(seconds))
}
