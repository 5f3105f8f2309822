//! DynamoSQL's authentication endpoints, as seed 000 documents them.
//!
//! - `POST /v1/auth/refresh` with `{"refreshToken"}` → `200 {"success":
//!   true, "data": {accessToken, expiresIn, tokenType: "Bearer"}}`: a new
//!   access token and, as the seed says, "No new refresh token is issued".
//! - Errors use the envelope the seed says all errors follow: `{"success":
//!   false, "error": {message, code, requestId}}`. `400` for missing or
//!   invalid body fields (a body that is not a JSON object, or not
//!   declared `application/json`, included); `401` for an invalid or
//!   expired refresh token; `429` past the rate limit, which is off by
//!   default (the seed documents the status, not a limit).
//! - Another method → `405` with `Allow: POST`; another path → `404`; both
//!   in the envelope.
//!
//! Our assumptions, as the seed does not document them:
//!
//! - `POST /v1/auth/token`, where the seed says tokens come from "your API
//!   client credentials", takes `{"clientId", "clientSecret"}` and answers
//!   the same envelope with `data: {accessToken, expiresIn, tokenType,
//!   refreshToken}`; unknown credentials are a `401`.
//! - `code` is the status's reason phrase in upper snake case
//!   (`BAD_REQUEST`, `UNAUTHORIZED`, `TOO_MANY_REQUESTS`, …) and
//!   `requestId` is unique per request.
//! - Refresh tokens do not expire; revoked ones are refused. A `429` comes
//!   without `Retry-After` unless a test injects one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use tokio::time::Instant;

use super::faults::{Failure, Faults, InjectFaults};
use super::json;
use super::rate_limit::RateLimiter;
use super::server::{ResBody, Server};
use super::tokens::{unique, Issuer, TokenStore};

const LOGIN: &str = "/v1/auth/token";
const REFRESH: &str = "/v1/auth/refresh";

/// A running DynamoSQL auth server; stops when dropped.
pub struct DynamoSqlServer {
    server: Server,
    state: Arc<State>,
}

/// Configures a [`DynamoSqlServer`]: no API clients, access tokens living
/// one hour (the seed's example), no rate limit, a token store of its own.
pub struct DynamoSqlBuilder {
    clients: HashMap<String, String>,
    lifetime: Duration,
    limit: Option<(usize, Duration)>,
    tokens: TokenStore,
}

/// What the server has seen so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DynamoSqlStats {
    /// `POST /v1/auth/token` requests that succeeded.
    pub logins: u64,
    /// `POST /v1/auth/refresh` requests, whatever their outcome.
    pub refresh_calls: u64,
    /// Refresh requests answered `200`.
    pub refreshed: u64,
    /// Requests answered `400`.
    pub bad_requests: u64,
    /// Requests answered `401`.
    pub unauthorized: u64,
    /// Refresh requests the rate limit answered `429`.
    pub rate_limited: u64,
    /// Refresh requests answered with an armed [`Failure`].
    pub injected: u64,
}

struct State {
    tokens: TokenStore,
    /// Client id → secret.
    clients: HashMap<String, String>,
    lifetime: Duration,
    limiter: Option<RateLimiter>,
    faults: Faults,
    counters: Counters,
}

#[derive(Default)]
struct Counters {
    logins: AtomicU64,
    refresh_calls: AtomicU64,
    refreshed: AtomicU64,
    bad_requests: AtomicU64,
    unauthorized: AtomicU64,
    rate_limited: AtomicU64,
    injected: AtomicU64,
}

impl DynamoSqlServer {
    pub fn builder() -> DynamoSqlBuilder {
        DynamoSqlBuilder {
            clients: HashMap::new(),
            lifetime: Duration::from_secs(3600),
            limit: None,
            tokens: TokenStore::default(),
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        self.server.base_url()
    }

    /// `http://127.0.0.1:<port>/v1/auth/token`.
    pub fn token_url(&self) -> String {
        format!("{}{LOGIN}", self.server.base_url())
    }

    /// `http://127.0.0.1:<port>/v1/auth/refresh`.
    pub fn refresh_url(&self) -> String {
        format!("{}{REFRESH}", self.server.base_url())
    }

    /// The token registry, shared with the API server.
    pub fn tokens(&self) -> TokenStore {
        self.state.tokens.clone()
    }

    pub fn stats(&self) -> DynamoSqlStats {
        let c = &self.state.counters;
        let read = |n: &AtomicU64| n.load(Ordering::SeqCst);
        DynamoSqlStats {
            logins: read(&c.logins),
            refresh_calls: read(&c.refresh_calls),
            refreshed: read(&c.refreshed),
            bad_requests: read(&c.bad_requests),
            unauthorized: read(&c.unauthorized),
            rate_limited: read(&c.rate_limited),
            injected: read(&c.injected),
        }
    }
}

/// Injected failures are answered in the envelope.
impl InjectFaults for DynamoSqlServer {
    fn faults(&self) -> &Faults {
        &self.state.faults
    }
}

impl Issuer for DynamoSqlServer {
    fn token_store(&self) -> TokenStore {
        self.tokens()
    }
}

impl DynamoSqlBuilder {
    /// Registers an API client.
    pub fn client(mut self, id: &str, secret: &str) -> Self {
        self.clients.insert(id.to_owned(), secret.to_owned());
        self
    }

    /// How long access tokens live; `expiresIn` is the whole number of
    /// seconds.
    pub fn token_lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = lifetime;
        self
    }

    /// At most `limit` refresh requests per `window` per client IP.
    pub fn rate_limit(mut self, limit: usize, window: Duration) -> Self {
        self.limit = Some((limit, window));
        self
    }

    /// Issues into `tokens`, so one API server can accept the tokens of
    /// several servers.
    pub fn token_store(mut self, tokens: TokenStore) -> Self {
        self.tokens = tokens;
        self
    }

    pub async fn start(self) -> DynamoSqlServer {
        let state = Arc::new(State {
            tokens: self.tokens,
            clients: self.clients,
            lifetime: self.lifetime,
            limiter: self
                .limit
                .map(|(limit, window)| RateLimiter::new(limit, window)),
            faults: Faults::default(),
            counters: Counters::default(),
        });
        let shared = Arc::clone(&state);
        let server =
            Server::start(move |request, peer| handle(Arc::clone(&shared), request, peer)).await;
        DynamoSqlServer { server, state }
    }
}

impl State {
    /// A `400`, `401` or `429` in the envelope, counted.
    fn reject(&self, status: StatusCode, message: &str) -> Response<ResBody> {
        let counter = match status {
            StatusCode::BAD_REQUEST => &self.counters.bad_requests,
            StatusCode::UNAUTHORIZED => &self.counters.unauthorized,
            _ => &self.counters.rate_limited,
        };
        counter.fetch_add(1, Ordering::SeqCst);
        error(status, message)
    }

    /// The request's JSON object, or the `400` to answer with.
    async fn read_object(&self, request: Request<Incoming>) -> Result<Value, Response<ResBody>> {
        json::read_object(request)
            .await
            .map_err(|e| self.reject(StatusCode::BAD_REQUEST, e.message()))
    }
}

async fn handle(
    state: Arc<State>,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> Response<ResBody> {
    let path = request.uri().path().to_owned();
    if path != LOGIN && path != REFRESH {
        return error(StatusCode::NOT_FOUND, &format!("No route for {path}"));
    }
    if request.method() != Method::POST {
        let mut response = error(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("POST"));
        return response;
    }
    if path == LOGIN {
        return login(&state, request).await;
    }
    state.counters.refresh_calls.fetch_add(1, Ordering::SeqCst);
    let shape = |failure: &Failure| {
        let status = failure.status();
        failure.respond(error(status, status.canonical_reason().unwrap_or("Error")))
    };
    state
        .faults
        .answer(
            &state.counters.injected,
            shape,
            refresh(&state, request, peer),
        )
        .await
}

async fn login(state: &State, request: Request<Incoming>) -> Response<ResBody> {
    let body = match state.read_object(request).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let (Some(id), Some(secret)) = (body["clientId"].as_str(), body["clientSecret"].as_str())
    else {
        let message = "clientId and clientSecret are required strings";
        return state.reject(StatusCode::BAD_REQUEST, message);
    };
    if state.clients.get(id).map(String::as_str) != Some(secret) {
        return state.reject(StatusCode::UNAUTHORIZED, "Invalid client credentials");
    }
    state.counters.logins.fetch_add(1, Ordering::SeqCst);
    let refresh_token = state.tokens.issue_refresh_token();
    let mut data = access_data(state);
    data["refreshToken"] = refresh_token.into();
    success(data)
}

async fn refresh(state: &State, request: Request<Incoming>, peer: SocketAddr) -> Response<ResBody> {
    // The limiter comes first, as a rate-limiting middleware would: every
    // request counts, valid or not.
    let admitted = state
        .limiter
        .as_ref()
        .is_none_or(|limiter| limiter.admit(peer.ip(), Instant::now()));
    if !admitted {
        return state.reject(StatusCode::TOO_MANY_REQUESTS, "Too many requests");
    }
    let body = match state.read_object(request).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let Some(refresh_token) = body["refreshToken"].as_str() else {
        return state.reject(StatusCode::BAD_REQUEST, "refreshToken is a required string");
    };
    if !state.tokens.refresh_token_is_valid(refresh_token) {
        let message = "Invalid or expired refresh token";
        return state.reject(StatusCode::UNAUTHORIZED, message);
    }
    state.counters.refreshed.fetch_add(1, Ordering::SeqCst);
    success(access_data(state))
}

/// `{accessToken, expiresIn, tokenType}` for a new access token.
fn access_data(state: &State) -> Value {
    json!({
        "accessToken": state.tokens.issue_access_token(state.lifetime),
        "expiresIn": state.lifetime.as_secs(),
        "tokenType": "Bearer",
    })
}

fn success(data: Value) -> Response<ResBody> {
    json::response(StatusCode::OK, &json!({ "success": true, "data": data }))
}

/// `{"success": false, "error": {message, code, requestId}}`.
fn error(status: StatusCode, message: &str) -> Response<ResBody> {
    let code = status
        .canonical_reason()
        .unwrap_or("ERROR")
        .to_ascii_uppercase()
        .replace([' ', '-'], "_");
    json::response(
        status,
        &json!({
            "success": false,
            "error": { "message": message, "code": code, "requestId": unique("req") },
        }),
    )
}
