//! An OAuth 2.0 token endpoint implementing RFC 6749 strictly.
//!
//! `POST /oauth/token`, `application/x-www-form-urlencoded` (§3.2):
//!
//! - `grant_type=refresh_token&refresh_token=…[&scope=…]` (§6). The
//!   refresh token must have been issued to the authenticated client, and
//!   `scope` must not exceed the scope originally granted (omitted: the
//!   original). With rotation (on by default) the answer carries a new
//!   refresh token of the same family and the presented one is spent;
//!   without, no refresh token comes back and the presented one stays
//!   usable.
//! - `grant_type=client_credentials[&scope=…]` (§4.4): confidential clients
//!   only; no refresh token.
//!
//! Each [`RegisteredClient`] authenticates by exactly one method (§2.3.1):
//! `client_secret_basic` (`Authorization: Basic`, id and secret each
//! form-urlencoded before base64), `client_secret_post` (`client_id` and
//! `client_secret` in the body) or none (a public client sends `client_id`
//! alone). Another method than the registered one is `invalid_client`; two
//! at once (Basic and `client_secret`) is `invalid_request`.
//!
//! Answers:
//!
//! - `200 {access_token, token_type: "Bearer", expires_in, refresh_token?,
//!   scope?}` with `Cache-Control: no-store` and `Pragma: no-cache` (§5.1).
//! - `400 {error, error_description}` (§5.2): `invalid_request` (another
//!   content type, a missing or repeated parameter, two authentication
//!   methods), `invalid_grant`, `unauthorized_client`,
//!   `unsupported_grant_type`, `invalid_scope`.
//! - `401 {error: "invalid_client", error_description}`, with
//!   `WWW-Authenticate: Basic` when the client used the `Authorization`
//!   header (§5.2).
//! - Another method → `405` with `Allow: POST`; another path → `404`; both
//!   with an `invalid_request` body.
//!
//! Reuse detection: presenting a refresh token that was already rotated
//! revokes its whole family — every refresh token of it and every access
//! token issued from it — and is answered `invalid_grant` (the OAuth 2.0
//! Security BCP, RFC 9700 §4.14.2). Old access tokens otherwise stay valid
//! until they expire.
//!
//! Our choices where RFC 6749 leaves room: every client names itself
//! (`client_id` for a public client; no identification at all is
//! `invalid_client`); a `client_id` parameter beside Basic must name the
//! same client; an `Authorization` header that is not Basic is
//! `invalid_client`. The authorization code grant (§4.1) is not
//! implemented: [`OAuth2Server::authorize`] stands in for it and hands out
//! a family's first tokens.

mod client_auth;
mod form;
mod grants;
mod scope;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;

use super::faults::{Failure, Faults, InjectFaults};
use super::json;
use super::server::{ResBody, Server};
use super::tokens::{Grant, Issuer, TokenStore};
use scope::Scope;

pub use client_auth::RegisteredClient;

const TOKEN_PATH: &str = "/oauth/token";

/// A running token endpoint; stops when dropped.
pub struct OAuth2Server {
    server: Server,
    state: Arc<State>,
}

/// Configures an [`OAuth2Server`]: no clients, access tokens living one
/// hour, refresh tokens rotating, a token store of its own.
pub struct OAuth2Builder {
    clients: Vec<RegisteredClient>,
    lifetime: Duration,
    rotate: bool,
    tokens: TokenStore,
}

/// The first tokens of a family, as a completed authorization would give
/// them.
#[derive(Debug, Clone)]
pub struct Authorized {
    /// Valid for the configured token lifetime.
    pub access_token: String,
    /// The family's first refresh token.
    pub refresh_token: String,
}

/// What the token endpoint has seen so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OAuth2Stats {
    /// `POST /oauth/token` requests, whatever their outcome.
    pub token_calls: u64,
    /// `refresh_token` grants answered `200`.
    pub refreshed: u64,
    /// `client_credentials` grants answered `200`.
    pub client_credentials: u64,
    /// `invalid_grant` answers (reuse included).
    pub invalid_grant: u64,
    /// `invalid_client` answers.
    pub invalid_client: u64,
    /// Other `400` answers: `invalid_request`, `invalid_scope`,
    /// `unauthorized_client`, `unsupported_grant_type`.
    pub other_errors: u64,
    /// Rotated refresh tokens presented again; each revoked a family.
    pub reuse_detected: u64,
    /// Refresh requests answered with an armed [`Failure`].
    pub injected: u64,
}

struct State {
    tokens: TokenStore,
    clients: HashMap<String, RegisteredClient>,
    lifetime: Duration,
    rotate: bool,
    /// Our families: to which client each was granted, and the scope.
    grants: Mutex<HashMap<Grant, Granted>>,
    faults: Faults,
    counters: Counters,
}

#[derive(Clone)]
struct Granted {
    client_id: String,
    scope: Scope,
}

#[derive(Default)]
struct Counters {
    token_calls: AtomicU64,
    refreshed: AtomicU64,
    client_credentials: AtomicU64,
    invalid_grant: AtomicU64,
    invalid_client: AtomicU64,
    other_errors: AtomicU64,
    reuse_detected: AtomicU64,
    injected: AtomicU64,
}

/// A §5.2 error answer.
struct Rejection {
    code: &'static str,
    description: String,
    /// Whether to answer `WWW-Authenticate: Basic`: the client tried the
    /// `Authorization` header.
    challenge: bool,
}

impl OAuth2Server {
    pub fn builder() -> OAuth2Builder {
        OAuth2Builder {
            clients: Vec::new(),
            lifetime: Duration::from_secs(3600),
            rotate: true,
            tokens: TokenStore::default(),
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        self.server.base_url()
    }

    /// `http://127.0.0.1:<port>/oauth/token`.
    pub fn token_url(&self) -> String {
        format!("{}{TOKEN_PATH}", self.server.base_url())
    }

    /// The token registry, shared with the API server.
    pub fn tokens(&self) -> TokenStore {
        self.state.tokens.clone()
    }

    /// A new token family for `client_id` with `scope` (space-delimited,
    /// within the client's), as the authorization code grant would start
    /// one.
    pub fn authorize(&self, client_id: &str, scope: &str) -> Authorized {
        let state = &self.state;
        let client = state.clients.get(client_id).expect("a registered client");
        let scope = Scope::parse(scope).expect("a valid scope");
        assert!(scope.is_subset_of(client.allowed_scope()), "scope too wide");
        let grant = state.tokens.new_grant();
        let client_id = client_id.to_owned();
        let granted = Granted { client_id, scope };
        state.grants.lock().unwrap().insert(grant, granted);
        Authorized {
            access_token: state.tokens.issue_access_token_in(grant, state.lifetime),
            refresh_token: state.tokens.issue_refresh_token_in(grant),
        }
    }

    pub fn stats(&self) -> OAuth2Stats {
        let c = &self.state.counters;
        let read = |n: &AtomicU64| n.load(Ordering::SeqCst);
        OAuth2Stats {
            token_calls: read(&c.token_calls),
            refreshed: read(&c.refreshed),
            client_credentials: read(&c.client_credentials),
            invalid_grant: read(&c.invalid_grant),
            invalid_client: read(&c.invalid_client),
            other_errors: read(&c.other_errors),
            reuse_detected: read(&c.reuse_detected),
            injected: read(&c.injected),
        }
    }
}

/// Injected failures take the §5.2 shape: `server_error` for a `500`,
/// `temporarily_unavailable` for other `5xx` and `429`, `invalid_client`
/// for `401`, `invalid_request` otherwise. Only requests that get as far
/// as naming `grant_type=refresh_token` count.
impl InjectFaults for OAuth2Server {
    fn faults(&self) -> &Faults {
        &self.state.faults
    }
}

impl Issuer for OAuth2Server {
    fn token_store(&self) -> TokenStore {
        self.tokens()
    }
}

impl OAuth2Builder {
    /// Registers `client`.
    pub fn client(mut self, client: RegisteredClient) -> Self {
        self.clients.push(client);
        self
    }

    /// How long access tokens live; `expires_in` is the whole number of
    /// seconds.
    pub fn token_lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = lifetime;
        self
    }

    /// Whether each refresh replaces the refresh token (default: yes).
    pub fn rotate_refresh_tokens(mut self, rotate: bool) -> Self {
        self.rotate = rotate;
        self
    }

    /// Issues into `tokens`, so one API server can accept the tokens of
    /// several servers.
    pub fn token_store(mut self, tokens: TokenStore) -> Self {
        self.tokens = tokens;
        self
    }

    pub async fn start(self) -> OAuth2Server {
        let clients = self
            .clients
            .into_iter()
            .map(|client| (client.id().to_owned(), client))
            .collect();
        let state = Arc::new(State {
            tokens: self.tokens,
            clients,
            lifetime: self.lifetime,
            rotate: self.rotate,
            grants: Mutex::default(),
            faults: Faults::default(),
            counters: Counters::default(),
        });
        let shared = Arc::clone(&state);
        let server =
            Server::start(move |request, _peer| handle(Arc::clone(&shared), request)).await;
        OAuth2Server { server, state }
    }
}

impl State {
    fn granted(&self, grant: Grant) -> Option<Granted> {
        self.grants.lock().unwrap().get(&grant).cloned()
    }

    /// `failure` in the §5.2 shape. §5.2 names no code for a `429` or a
    /// `5xx`; these are the ones §4.1.2.1 defines for the authorization
    /// endpoint, which identity servers send from their token endpoints
    /// too. The layer classes the answer by its status either way.
    fn injected(&self, failure: &Failure) -> Response<ResBody> {
        let status = failure.status();
        let code = match status {
            StatusCode::INTERNAL_SERVER_ERROR => "server_error",
            StatusCode::TOO_MANY_REQUESTS => "temporarily_unavailable",
            s if s.is_server_error() => "temporarily_unavailable",
            StatusCode::UNAUTHORIZED => "invalid_client",
            _ => "invalid_request",
        };
        let description = status.canonical_reason().unwrap_or("injected failure");
        failure.respond(error(status, code, description))
    }
}

impl Rejection {
    fn new(code: &'static str, description: impl Into<String>) -> Self {
        Self {
            code,
            description: description.into(),
            challenge: false,
        }
    }

    fn invalid_request(description: impl Into<String>) -> Self {
        Self::new("invalid_request", description)
    }

    fn invalid_client(description: &str, challenge: bool) -> Self {
        Self {
            challenge,
            ..Self::new("invalid_client", description)
        }
    }

    fn into_response(self) -> Response<ResBody> {
        let status = if self.code == "invalid_client" {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::BAD_REQUEST
        };
        let mut response = error(status, self.code, &self.description);
        if self.challenge {
            let challenge = HeaderValue::from_static(r#"Basic realm="oauth""#);
            response.headers_mut().insert(WWW_AUTHENTICATE, challenge);
        }
        response
    }
}

async fn handle(state: Arc<State>, request: Request<Incoming>) -> Response<ResBody> {
    if request.uri().path() != TOKEN_PATH {
        let description = format!("no endpoint at {}", request.uri().path());
        return error(StatusCode::NOT_FOUND, "invalid_request", &description);
    }
    if request.method() != Method::POST {
        let description = "the token endpoint takes POST only";
        let mut response = error(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request",
            description,
        );
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("POST"));
        return response;
    }
    let counters = &state.counters;
    counters.token_calls.fetch_add(1, Ordering::SeqCst);
    match grants::token(&state, request).await {
        Ok(response) => response,
        Err(rejection) => {
            let counter = match rejection.code {
                "invalid_grant" => &counters.invalid_grant,
                "invalid_client" => &counters.invalid_client,
                _ => &counters.other_errors,
            };
            counter.fetch_add(1, Ordering::SeqCst);
            rejection.into_response()
        }
    }
}

/// `{error, error_description}` (§5.2). The description may quote what
/// the client sent; §5.2 allows it only `%x20-21 / %x23-5B / %x5D-7E`, so
/// any other character is sent as `?`.
fn error(status: StatusCode, code: &str, description: &str) -> Response<ResBody> {
    let allowed = |c: char| matches!(c, '\x20'..='\x21' | '\x23'..='\x5b' | '\x5d'..='\x7e');
    let description: String = description
        .chars()
        .map(|c| if allowed(c) { c } else { '?' })
        .collect();
    json::response(
        status,
        &json!({ "error": code, "error_description": description }),
    )
}
