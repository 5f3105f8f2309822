//! The client side of the Cognito-style identity server: the login that
//! hands out the first tokens, and the library's `cognito` preset for
//! refreshes.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::CONTENT_TYPE;
use hyper::{Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tower_token_refresh::http::HttpRefresher;
use tower_token_refresh::{RefreshError, TokenSet};

/// The un-layered hyper-util client the identity server is called with:
/// refresh calls never pass through the token layer.
pub type IdpClient = Client<HttpConnector, Full<Bytes>>;

/// Talks to an [`IdentityServer`](super::IdentityServer).
#[derive(Clone)]
pub struct CognitoClient {
    http: IdpClient,
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

    /// The refresh source: `POST /api/auth/refresh-token` through the
    /// library's `cognito` preset.
    pub fn refresher(&self) -> HttpRefresher<IdpClient> {
        let url = format!("{}/api/auth/refresh-token", self.base_url);
        HttpRefresher::cognito(url, self.http.clone())
    }

    /// `POST /api/auth/login`: the first tokens, refresh token included.
    pub async fn login(&self, username: &str, password: &str) -> Result<TokenSet, RefreshError> {
        let body = json!({ "username": username, "password": password });
        let request = Request::post(format!("{}/api/auth/login", self.base_url))
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("valid request");
        let response =
            self.http.request(request).await.map_err(|e| {
                RefreshError::transient("identity server unreachable").with_source(e)
            })?;
        let status = response.status();
        let bytes = response.into_body().collect().await.map_err(|e| {
            RefreshError::transient("identity server response cut short").with_source(e)
        })?;
        let value: Value = serde_json::from_slice(&bytes.to_bytes()).unwrap_or(Value::Null);
        if status != StatusCode::OK {
            let message = value["message"].as_str().unwrap_or("login refused");
            return Err(RefreshError::terminal(message).with_status(status.as_u16()));
        }
        let undecodable = || RefreshError::transient("undecodable login answer");
        let access = value["accessToken"].as_str().ok_or_else(undecodable)?;
        let refresh = value["refreshToken"].as_str().ok_or_else(undecodable)?;
        let expires_in = value["expiresIn"].as_u64().ok_or_else(undecodable)?;
        Ok(TokenSet::new(access)
            .with_refresh_token(refresh)
            .with_expires_in(Duration::from_secs(expires_in)))
    }
}
