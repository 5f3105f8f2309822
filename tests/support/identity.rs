//! A Cognito-style identity server, as seed 002 documents it.
//!
//! - `POST /api/auth/login` with `{"username", "password"}` →
//!   `200 {accessToken, refreshToken, expiresIn, requiresPasswordChange}`.
//! - `POST /api/auth/refresh-token` with `{"refreshToken"}` →
//!   `200 {accessToken, refreshToken (the same one), expiresIn,
//!   requiresPasswordChange: false}`; `401` for an unknown or revoked
//!   refresh token; `429` past 5 requests per minute per IP.
//! - A body that is not JSON, or lacks the string fields → `400`; another
//!   method → `405`; another path → `404`. Errors use the NestJS shape
//!   `{statusCode, message, error}`.
//! - Armed faults ([`InjectFaults`]) answer refreshes the limiter admitted,
//!   as an upstream failing behind the rate-limiting middleware would: they
//!   count towards the limit.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::ALLOW;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use tokio::time::Instant;

use super::faults::{Failure, Faults, InjectFaults};
use super::json;
use super::rate_limit::RateLimiter;
use super::server::{ResBody, Server};
use super::tokens::{Issuer, TokenStore};

/// The one user that can log in.
pub const DEMO_USER: &str = "demo@example.com";
/// Their password.
pub const DEMO_PASSWORD: &str = "correct horse battery staple";

const LOGIN: &str = "/api/auth/login";
const REFRESH: &str = "/api/auth/refresh-token";

/// A running identity server; stops when dropped.
pub struct IdentityServer {
    server: Server,
    state: Arc<State>,
}

/// Configures an [`IdentityServer`]; defaults follow the seed: tokens live
/// one hour, 5 refreshes per minute per IP.
pub struct IdentityBuilder {
    lifetime: Duration,
    limit: usize,
    window: Duration,
}

/// What the identity server has seen so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdentityStats {
    /// `POST /api/auth/login` requests that succeeded.
    pub logins: u64,
    /// `POST /api/auth/refresh-token` requests, whatever their outcome.
    pub refresh_calls: u64,
    /// Refresh requests answered `200`.
    pub refreshed: u64,
    /// Requests answered `401`.
    pub unauthorized: u64,
    /// Refresh requests answered `429`.
    pub rate_limited: u64,
    /// Requests answered `400`.
    pub bad_requests: u64,
    /// Refresh requests answered with an armed fault.
    pub injected: u64,
}

struct State {
    tokens: TokenStore,
    lifetime: Duration,
    limiter: RateLimiter,
    faults: Faults,
    counters: Counters,
}

#[derive(Default)]
struct Counters {
    logins: AtomicU64,
    refresh_calls: AtomicU64,
    refreshed: AtomicU64,
    unauthorized: AtomicU64,
    rate_limited: AtomicU64,
    bad_requests: AtomicU64,
    injected: AtomicU64,
}

impl IdentityServer {
    pub fn builder() -> IdentityBuilder {
        IdentityBuilder {
            lifetime: Duration::from_secs(3600),
            limit: 5,
            window: Duration::from_secs(60),
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        self.server.base_url()
    }

    /// The token registry, shared with the API server.
    pub fn tokens(&self) -> TokenStore {
        self.state.tokens.clone()
    }

    pub fn stats(&self) -> IdentityStats {
        let c = &self.state.counters;
        let read = |n: &AtomicU64| n.load(Ordering::SeqCst);
        IdentityStats {
            logins: read(&c.logins),
            refresh_calls: read(&c.refresh_calls),
            refreshed: read(&c.refreshed),
            unauthorized: read(&c.unauthorized),
            rate_limited: read(&c.rate_limited),
            bad_requests: read(&c.bad_requests),
            injected: read(&c.injected),
        }
    }
}

/// Injected failures are answered in the NestJS error shape.
impl InjectFaults for IdentityServer {
    fn faults(&self) -> &Faults {
        &self.state.faults
    }
}

impl Issuer for IdentityServer {
    fn token_store(&self) -> TokenStore {
        self.tokens()
    }
}

impl IdentityBuilder {
    /// How long access tokens live. On the wire `expiresIn` is the whole
    /// number of seconds (rounded down, so clients never overestimate).
    pub fn token_lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = lifetime;
        self
    }

    /// At most `limit` refresh requests per `window` per client IP.
    pub fn rate_limit(mut self, limit: usize, window: Duration) -> Self {
        self.limit = limit;
        self.window = window;
        self
    }

    pub async fn start(self) -> IdentityServer {
        let state = Arc::new(State {
            tokens: TokenStore::default(),
            lifetime: self.lifetime,
            limiter: RateLimiter::new(self.limit, self.window),
            faults: Faults::default(),
            counters: Counters::default(),
        });
        let shared = Arc::clone(&state);
        let server =
            Server::start(move |request, peer| handle(Arc::clone(&shared), request, peer)).await;
        IdentityServer { server, state }
    }
}

async fn handle(
    state: Arc<State>,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> Response<ResBody> {
    let path = request.uri().path().to_owned();
    if path != LOGIN && path != REFRESH {
        let message = format!("Cannot {} {path}", request.method());
        return json::error(StatusCode::NOT_FOUND, &message);
    }
    if request.method() != Method::POST {
        let mut response = json::error(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
        response
            .headers_mut()
            .insert(ALLOW, "POST".parse().unwrap());
        return response;
    }
    let counters = &state.counters;
    let response = if path == LOGIN {
        login(&state, request).await
    } else {
        counters.refresh_calls.fetch_add(1, Ordering::SeqCst);
        refresh(&state, request, peer).await
    };
    let counter = match response.status() {
        StatusCode::BAD_REQUEST => Some(&counters.bad_requests),
        StatusCode::UNAUTHORIZED => Some(&counters.unauthorized),
        StatusCode::TOO_MANY_REQUESTS => Some(&counters.rate_limited),
        _ => None,
    };
    if let Some(counter) = counter {
        counter.fetch_add(1, Ordering::SeqCst);
    }
    response
}

async fn login(state: &State, request: Request<Incoming>) -> Response<ResBody> {
    let body = match read_json(request).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let (Some(username), Some(password)) = (body["username"].as_str(), body["password"].as_str())
    else {
        return json::error(
            StatusCode::BAD_REQUEST,
            "username and password must be strings",
        );
    };
    if username != DEMO_USER || password != DEMO_PASSWORD {
        return json::error(StatusCode::UNAUTHORIZED, "Invalid username or password");
    }
    state.counters.logins.fetch_add(1, Ordering::SeqCst);
    let refresh_token = state.tokens.issue_refresh_token();
    tokens_response(state, &refresh_token)
}

async fn refresh(state: &State, request: Request<Incoming>, peer: SocketAddr) -> Response<ResBody> {
    // The limiter comes first, as a rate-limiting middleware would: every
    // request counts, valid or not.
    if !state.limiter.admit(peer.ip(), Instant::now()) {
        return json::error(StatusCode::TOO_MANY_REQUESTS, "Too many requests");
    }
    let shape = |failure: &Failure| {
        let status = failure.status();
        failure.respond(json::error(
            status,
            status.canonical_reason().unwrap_or("Error"),
        ))
    };
    state
        .faults
        .answer(
            &state.counters.injected,
            shape,
            refresh_admitted(state, request),
        )
        .await
}

/// A refresh the limiter admitted and no fault answered.
async fn refresh_admitted(state: &State, request: Request<Incoming>) -> Response<ResBody> {
    let body = match read_json(request).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let Some(refresh_token) = body["refreshToken"].as_str() else {
        return json::error(StatusCode::BAD_REQUEST, "refreshToken must be a string");
    };
    if !state.tokens.refresh_token_is_valid(refresh_token) {
        return json::error(StatusCode::UNAUTHORIZED, "Invalid or expired refresh token");
    }
    state.counters.refreshed.fetch_add(1, Ordering::SeqCst);
    tokens_response(state, refresh_token)
}

/// A new access token next to `refresh_token` (which Cognito never rotates).
fn tokens_response(state: &State, refresh_token: &str) -> Response<ResBody> {
    let access_token = state.tokens.issue_access_token(state.lifetime);
    json::response(
        StatusCode::OK,
        &json!({
            "accessToken": access_token,
            "refreshToken": refresh_token,
            "expiresIn": state.lifetime.as_secs(),
            "requiresPasswordChange": false,
        }),
    )
}

/// The request's JSON object, or the `400` to answer with.
async fn read_json(request: Request<Incoming>) -> Result<Value, Response<ResBody>> {
    json::read_object(request)
        .await
        .map_err(|e| json::error(StatusCode::BAD_REQUEST, e.message()))
}
