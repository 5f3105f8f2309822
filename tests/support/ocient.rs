//! An Ocient SQL node's token endpoints, as seed 003 documents
//! `POST /v1/token_refresh`.
//!
//! - `POST /v1/token_refresh` with `Authorization: Bearer <access token>`
//!   and `Content-Type: application/json`, both required, and an optional
//!   body `{"database"}`: the request body is not required, so an empty
//!   one is fine, and `database` defaults to `system`. Answer: `200
//!   {access_token, username, database, expires_in, status: {reason:
//!   "Token refreshed successfully", sql_state: "00000", vendor_code: 0}}`.
//! - The presented token must be "a valid access token still within its
//!   refresh lifetime configured on the server": issued here, not revoked,
//!   and younger than the refresh lifetime (by default the token lifetime,
//!   so an expired token cannot be refreshed; configure a longer one to
//!   allow that).
//! - The presented token stays valid until its own expiry: the seed tells
//!   clients to replace it, not that the server revokes it. A server
//!   built with [`OcientBuilder::revoke_presented_on_refresh`] revokes it,
//!   which the seed does not rule out either.
//! - Another method → `405` with `Allow: POST`; another path → `404`.
//!
//! Our assumptions, as the seed documents neither:
//!
//! - Errors are the success shape's `status` object alone, `{status:
//!   {reason, sql_state, vendor_code}}`, with the SQLSTATE class of the
//!   cause — `28000` (`401`: a missing, unknown, revoked or expired token;
//!   a bad login), `22023` (`400`: content type or body), `0A000` (`404`,
//!   `405`), `53000` (`429`), `58000` (`5xx`), `HY000` otherwise — and
//!   `vendor_code` the negated HTTP status.
//! - `POST /v1/login` takes `{"username", "password", "database"?}`
//!   (`application/json`) and answers the success shape with reason
//!   "Login successful".

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, AUTHORIZATION};
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use serde_json::{json, Map, Value};
use tokio::time::Instant;

use super::faults::{Failure, Faults, InjectFaults};
use super::json::{self, BodyError};
use super::server::{ResBody, Server};
use super::tokens::{Grant, Issuer, TokenStore};

const LOGIN: &str = "/v1/login";
const REFRESH: &str = "/v1/token_refresh";
const DEFAULT_DATABASE: &str = "system";

/// A running Ocient token server; stops when dropped.
pub struct OcientServer {
    server: Server,
    state: Arc<State>,
}

/// Configures an [`OcientServer`]: no users, tokens living one hour (the
/// seed's example) and refreshable as long as they live, a token store of
/// its own.
pub struct OcientBuilder {
    users: HashMap<String, String>,
    lifetime: Duration,
    refresh_lifetime: Option<Duration>,
    tokens: TokenStore,
    revoke_presented: bool,
}

/// What the server has seen so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OcientStats {
    /// `POST /v1/login` requests that succeeded.
    pub logins: u64,
    /// `POST /v1/token_refresh` requests, whatever their outcome.
    pub refresh_calls: u64,
    /// Refresh requests answered `200`.
    pub refreshed: u64,
    /// Requests answered `400`.
    pub bad_requests: u64,
    /// Requests answered `401`.
    pub unauthorized: u64,
    /// Refresh requests answered with an armed [`Failure`].
    pub injected: u64,
}

struct State {
    tokens: TokenStore,
    /// Username → password.
    users: HashMap<String, String>,
    lifetime: Duration,
    refresh_lifetime: Duration,
    /// Whether a refresh revokes the token it was presented.
    revoke_presented: bool,
    /// Who each of our grants (one per login) belongs to.
    sessions: Mutex<HashMap<Grant, String>>,
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
    injected: AtomicU64,
}

impl OcientServer {
    pub fn builder() -> OcientBuilder {
        OcientBuilder {
            users: HashMap::new(),
            lifetime: Duration::from_secs(3600),
            refresh_lifetime: None,
            tokens: TokenStore::default(),
            revoke_presented: false,
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        self.server.base_url()
    }

    /// `http://127.0.0.1:<port>/v1/login`.
    pub fn login_url(&self) -> String {
        format!("{}{LOGIN}", self.server.base_url())
    }

    /// `http://127.0.0.1:<port>/v1/token_refresh`.
    pub fn refresh_url(&self) -> String {
        format!("{}{REFRESH}", self.server.base_url())
    }

    /// The token registry, shared with the API server.
    pub fn tokens(&self) -> TokenStore {
        self.state.tokens.clone()
    }

    pub fn stats(&self) -> OcientStats {
        let c = &self.state.counters;
        let read = |n: &AtomicU64| n.load(Ordering::SeqCst);
        OcientStats {
            logins: read(&c.logins),
            refresh_calls: read(&c.refresh_calls),
            refreshed: read(&c.refreshed),
            bad_requests: read(&c.bad_requests),
            unauthorized: read(&c.unauthorized),
            injected: read(&c.injected),
        }
    }
}

/// Injected failures are answered as a `status` object.
impl InjectFaults for OcientServer {
    fn faults(&self) -> &Faults {
        &self.state.faults
    }
}

impl Issuer for OcientServer {
    fn token_store(&self) -> TokenStore {
        self.tokens()
    }
}

impl OcientBuilder {
    /// Registers a user.
    pub fn user(mut self, username: &str, password: &str) -> Self {
        self.users.insert(username.to_owned(), password.to_owned());
        self
    }

    /// How long access tokens live; `expires_in` is the whole number of
    /// seconds.
    pub fn token_lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = lifetime;
        self
    }

    /// How long after it was issued a token may still be refreshed
    /// (default: the token lifetime).
    pub fn refresh_lifetime(mut self, refresh_lifetime: Duration) -> Self {
        self.refresh_lifetime = Some(refresh_lifetime);
        self
    }

    /// Revokes the token a refresh presented as it answers with the new
    /// one: requests still in flight with it are then rejected.
    pub fn revoke_presented_on_refresh(mut self) -> Self {
        self.revoke_presented = true;
        self
    }

    /// Issues into `tokens`, so one API server can accept the tokens of
    /// several servers.
    pub fn token_store(mut self, tokens: TokenStore) -> Self {
        self.tokens = tokens;
        self
    }

    pub async fn start(self) -> OcientServer {
        let state = Arc::new(State {
            tokens: self.tokens,
            users: self.users,
            lifetime: self.lifetime,
            refresh_lifetime: self.refresh_lifetime.unwrap_or(self.lifetime),
            revoke_presented: self.revoke_presented,
            sessions: Mutex::default(),
            faults: Faults::default(),
            counters: Counters::default(),
        });
        let shared = Arc::clone(&state);
        let server =
            Server::start(move |request, _peer| handle(Arc::clone(&shared), request)).await;
        OcientServer { server, state }
    }
}

impl State {
    /// A `400` or `401`, counted.
    fn reject(&self, status: StatusCode, reason: &str) -> Response<ResBody> {
        let counter = match status {
            StatusCode::BAD_REQUEST => &self.counters.bad_requests,
            _ => &self.counters.unauthorized,
        };
        counter.fetch_add(1, Ordering::SeqCst);
        error(status, reason)
    }

    /// A new token of `grant`, for `username` on `database`.
    fn issue(
        &self,
        grant: Grant,
        username: &str,
        database: &str,
        reason: &str,
    ) -> Response<ResBody> {
        let access_token = self.tokens.issue_access_token_in(grant, self.lifetime);
        let body = json!({
            "access_token": access_token,
            "username": username,
            "database": database,
            "expires_in": self.lifetime.as_secs(),
            "status": { "reason": reason, "sql_state": "00000", "vendor_code": 0 },
        });
        json::response(StatusCode::OK, &body)
    }

    /// The grant and user of `token`, if it may be refreshed now.
    fn refreshable(&self, token: &str) -> Option<(Grant, String)> {
        let (grant, issued_at) = self.tokens.unrevoked_access_token(token)?;
        // Tokens of other servers sharing the store have no session here.
        let grant = grant?;
        let username = self.sessions.lock().unwrap().get(&grant)?.clone();
        (Instant::now() < issued_at + self.refresh_lifetime).then_some((grant, username))
    }
}

async fn handle(state: Arc<State>, request: Request<Incoming>) -> Response<ResBody> {
    let path = request.uri().path().to_owned();
    if path != LOGIN && path != REFRESH {
        return error(StatusCode::NOT_FOUND, &format!("No endpoint at {path}"));
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
        .answer(&state.counters.injected, shape, refresh(&state, request))
        .await
}

async fn login(state: &State, request: Request<Incoming>) -> Response<ResBody> {
    let body = match read_body(request).await {
        Ok(body) => body,
        Err(e) => return state.reject(StatusCode::BAD_REQUEST, e.message()),
    };
    let (Some(username), Some(password)) = (body["username"].as_str(), body["password"].as_str())
    else {
        let reason = "username and password are required strings";
        return state.reject(StatusCode::BAD_REQUEST, reason);
    };
    let Some(database) = database(&body) else {
        return state.reject(
            StatusCode::BAD_REQUEST,
            "database must be a non-empty string",
        );
    };
    if state.users.get(username).map(String::as_str) != Some(password) {
        return state.reject(StatusCode::UNAUTHORIZED, "Invalid username or password");
    }
    state.counters.logins.fetch_add(1, Ordering::SeqCst);
    let grant = state.tokens.new_grant();
    let owner = username.to_owned();
    state.sessions.lock().unwrap().insert(grant, owner);
    state.issue(grant, username, database, "Login successful")
}

async fn refresh(state: &State, request: Request<Incoming>) -> Response<ResBody> {
    let Some(token) = bearer(request.headers()).map(str::to_owned) else {
        return state.reject(StatusCode::UNAUTHORIZED, "Missing bearer token");
    };
    let Some((grant, username)) = state.refreshable(&token) else {
        return state.reject(StatusCode::UNAUTHORIZED, "Invalid or expired token");
    };
    let body = match read_body(request).await {
        Ok(body) => body,
        Err(e) => return state.reject(StatusCode::BAD_REQUEST, e.message()),
    };
    let Some(database) = database(&body) else {
        return state.reject(
            StatusCode::BAD_REQUEST,
            "database must be a non-empty string",
        );
    };
    state.counters.refreshed.fetch_add(1, Ordering::SeqCst);
    let answer = state.issue(grant, &username, database, "Token refreshed successfully");
    if state.revoke_presented {
        state.tokens.revoke_access_token(&token);
    }
    answer
}

/// The token of `Authorization: Bearer <token>` (scheme case-insensitive,
/// RFC 9110 §11.1).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let (scheme, token) = headers.get(AUTHORIZATION)?.to_str().ok()?.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("Bearer") && !token.is_empty()).then_some(token)
}

/// A JSON object body, where an empty body (the body is optional) is the
/// empty object. `Content-Type: application/json` is required either way.
async fn read_body(request: Request<Incoming>) -> Result<Value, BodyError> {
    let bytes = json::read_body(request).await?;
    if bytes.is_empty() {
        return Ok(Value::Object(Map::new()));
    }
    json::parse_object(&bytes)
}

/// The body's `database`, `system` when absent; `None` when it is not a
/// non-empty string.
fn database(body: &Value) -> Option<&str> {
    match body.get("database") {
        None => Some(DEFAULT_DATABASE),
        Some(database) => database.as_str().filter(|d| !d.is_empty()),
    }
}

/// `{status: {reason, sql_state, vendor_code}}`.
fn error(status: StatusCode, reason: &str) -> Response<ResBody> {
    let sql_state = match status.as_u16() {
        401 => "28000",
        400 => "22023",
        404 | 405 => "0A000",
        429 => "53000",
        500.. => "58000",
        _ => "HY000",
    };
    let body = json!({
        "status": {
            "reason": reason,
            "sql_state": sql_state,
            "vendor_code": -i64::from(status.as_u16()),
        },
    });
    json::response(status, &body)
}
