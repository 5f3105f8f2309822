//! The resource server: accepts a request only with a current access token
//! from the token server it shares a [`TokenStore`] with (any [`Issuer`]:
//! the Cognito-style identity server or a dialect server).
//!
//! - `GET` any path → `200 {"ok": true}`; `POST` any path → `200` echoing
//!   the request body; other methods → `405`.
//! - A missing, unknown, expired or revoked token → `401` with
//!   `WWW-Authenticate: Bearer error="invalid_token"`, decided from the
//!   headers alone: the request body is *not read* before answering (it is
//!   drained afterwards so the connection stays usable), which is what
//!   forces a client to replay the body on its retry.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Incoming};
use hyper::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;

use super::json;
use super::server::{ResBody, Server};
use super::tokens::{Issuer, TokenStore};

/// A running API server; stops when dropped.
pub struct ApiServer {
    server: Server,
    state: Arc<State>,
}

/// What the API server has seen so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiStats {
    /// Requests received (each attempt counts).
    pub requests: u64,
    /// Requests answered `200`.
    pub ok: u64,
    /// Requests answered `401`.
    pub unauthorized: u64,
    /// `401`s sent while the request still had an unread, non-empty body.
    pub rejected_before_body: u64,
}

struct State {
    tokens: TokenStore,
    #[cfg(test)]
    gate: super::gate::Gate,
    requests: AtomicU64,
    ok: AtomicU64,
    unauthorized: AtomicU64,
    rejected_before_body: AtomicU64,
}

impl ApiServer {
    /// Starts an API server accepting the access tokens `issuer` issues.
    pub async fn start(issuer: &impl Issuer) -> Self {
        let state = Arc::new(State {
            tokens: issuer.token_store(),
            #[cfg(test)]
            gate: super::gate::Gate::default(),
            requests: AtomicU64::new(0),
            ok: AtomicU64::new(0),
            unauthorized: AtomicU64::new(0),
            rejected_before_body: AtomicU64::new(0),
        });
        let shared = Arc::clone(&state);
        let server =
            Server::start(move |request, _peer| handle(Arc::clone(&shared), request)).await;
        Self { server, state }
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.base_url())
    }

    /// Revokes every access token issued so far (as after a password change
    /// or a sign-out elsewhere); returns how many were still valid.
    pub fn revoke_current(&self) -> usize {
        self.state.tokens.revoke_access_tokens()
    }

    /// Holds the next `n` requests, before their token is checked, until
    /// the returned [`Hold`](super::gate::Hold) is released or dropped.
    #[cfg(test)]
    pub fn hold_next(&self, n: usize) -> super::gate::Hold {
        self.state.gate.hold_next(n)
    }

    pub fn stats(&self) -> ApiStats {
        let read = |n: &AtomicU64| n.load(Ordering::SeqCst);
        ApiStats {
            requests: read(&self.state.requests),
            ok: read(&self.state.ok),
            unauthorized: read(&self.state.unauthorized),
            rejected_before_body: read(&self.state.rejected_before_body),
        }
    }
}

async fn handle(state: Arc<State>, request: Request<Incoming>) -> Response<ResBody> {
    state.requests.fetch_add(1, Ordering::SeqCst);
    #[cfg(test)]
    state.gate.pass().await;

    let method = request.method().clone();
    if method != Method::GET && method != Method::POST {
        return json::error(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
    }
    let token = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if !token.is_some_and(|t| state.tokens.access_token_is_valid(t)) {
        return reject(&state, request.into_body());
    }

    let response = if method == Method::GET {
        json::response(StatusCode::OK, &json!({ "ok": true }))
    } else {
        match request.into_body().collect().await {
            Ok(body) => Response::new(Full::new(body.to_bytes())),
            Err(_) => json::error(StatusCode::BAD_REQUEST, "Unreadable body"),
        }
    };
    if response.status() == StatusCode::OK {
        state.ok.fetch_add(1, Ordering::SeqCst);
    }
    response
}

/// `401` without looking at the body; the body is drained in the
/// background so the client can finish sending and reuse the connection.
fn reject(state: &State, body: Incoming) -> Response<ResBody> {
    state.unauthorized.fetch_add(1, Ordering::SeqCst);
    if !body.is_end_stream() {
        state.rejected_before_body.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            let _ = body.collect().await;
        });
    }
    let mut response = json::error(StatusCode::UNAUTHORIZED, "Unauthorized");
    response.headers_mut().insert(
        WWW_AUTHENTICATE,
        r#"Bearer error="invalid_token""#.parse().unwrap(),
    );
    response
}
