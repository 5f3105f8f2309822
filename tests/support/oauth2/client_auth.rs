//! Client authentication at the token endpoint (RFC 6749 §2.3): which
//! registered client is calling. A client issued a password may always use
//! HTTP Basic (§2.3.1: the server "MUST support" it); the body's
//! `client_secret` only a client registered for it (RFC 7591's
//! `client_secret_post`, which §2.3.1 leaves to the server: "MAY").

use std::collections::HashMap;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hyper::header::HeaderValue;

use super::form::{decode_component, Form};
use super::scope::Scope;
use super::Rejection;

/// A client registered with the server, and how it authenticates.
#[derive(Clone)]
pub struct RegisteredClient {
    id: String,
    method: Method,
    scope: Scope,
}

/// The token endpoint authentication methods, named as in RFC 7591 §2.
#[derive(Clone, PartialEq, Eq)]
enum Method {
    /// `client_secret_basic`: HTTP Basic (§2.3.1).
    SecretBasic(String),
    /// `client_secret_post`: `client_id` and `client_secret` in the body.
    SecretPost(String),
    /// `none`: a public client (§2.1), which sends only `client_id`.
    Public,
}

impl RegisteredClient {
    /// A confidential client sending `Authorization: Basic
    /// base64(urlencode(id) ":" urlencode(secret))`.
    pub fn secret_basic(id: &str, secret: &str) -> Self {
        Self::new(id, Method::SecretBasic(secret.to_owned()))
    }

    /// A confidential client sending `client_id` and `client_secret` as
    /// body parameters.
    pub fn secret_post(id: &str, secret: &str) -> Self {
        Self::new(id, Method::SecretPost(secret.to_owned()))
    }

    /// A public client: `client_id` in the body, no secret.
    pub fn public(id: &str) -> Self {
        Self::new(id, Method::Public)
    }

    /// The scope the client may be granted, space-delimited (none by
    /// default). `client_credentials` grants it all when the request names
    /// no `scope`.
    pub fn scope(mut self, scope: &str) -> Self {
        self.scope = Scope::parse(scope).expect("a valid scope");
        self
    }

    fn new(id: &str, method: Method) -> Self {
        Self {
            id: id.to_owned(),
            method,
            scope: Scope::default(),
        }
    }

    pub(super) fn id(&self) -> &str {
        &self.id
    }

    pub(super) fn is_public(&self) -> bool {
        self.method == Method::Public
    }

    pub(super) fn allowed_scope(&self) -> &Scope {
        &self.scope
    }
}

/// The client `authorization` (the request's `Authorization` header) and
/// the body's `client_id` / `client_secret` authenticate.
pub(super) fn authenticate<'a>(
    clients: &'a HashMap<String, RegisteredClient>,
    authorization: Option<&HeaderValue>,
    form: &Form,
) -> Result<&'a RegisteredClient, Rejection> {
    let (form_id, form_secret) = (form.get("client_id"), form.get("client_secret"));
    let Some(authorization) = authorization else {
        return match (form_id, form_secret) {
            (Some(id), Some(secret)) => {
                registered(clients, id, &Method::SecretPost(secret.to_owned()), false)
            }
            (Some(id), None) => registered(clients, id, &Method::Public, false),
            (None, Some(_)) => Err(Rejection::invalid_request(
                "client_secret without client_id",
            )),
            (None, None) => Err(Rejection::invalid_client(
                "no client authentication included",
                false,
            )),
        };
    };
    // §2.3.1: "The client MUST NOT use more than one authentication method
    // in each request"; §5.2 makes that an `invalid_request`.
    if form_secret.is_some() {
        return Err(Rejection::invalid_request(
            "more than one client authentication method",
        ));
    }
    let Some((id, secret)) = basic(authorization) else {
        return Err(Rejection::invalid_client(
            "the Authorization header does not hold Basic client credentials",
            true,
        ));
    };
    // A `client_id` parameter beside Basic identifies, it does not
    // authenticate; it must name the same client.
    if form_id.is_some_and(|form_id| form_id != id) {
        return Err(Rejection::invalid_request(
            "client_id does not match the Authorization header",
        ));
    }
    clients
        .get(&id)
        .filter(|client| match &client.method {
            Method::SecretBasic(password) | Method::SecretPost(password) => *password == secret,
            Method::Public => false,
        })
        .ok_or_else(|| Rejection::invalid_client("client authentication failed", true))
}

/// The client `id`, if it is registered for exactly `presented`.
fn registered<'a>(
    clients: &'a HashMap<String, RegisteredClient>,
    id: &str,
    presented: &Method,
    challenge: bool,
) -> Result<&'a RegisteredClient, Rejection> {
    clients
        .get(id)
        .filter(|client| client.method == *presented)
        .ok_or_else(|| Rejection::invalid_client("client authentication failed", challenge))
}

/// `Basic base64(urlencode(id) ":" urlencode(secret))` → `(id, secret)`.
/// The first `:` separates them: an encoded id cannot contain one.
fn basic(authorization: &HeaderValue) -> Option<(String, String)> {
    let (scheme, credentials) = authorization.to_str().ok()?.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("Basic") {
        return None;
    }
    let decoded = STANDARD.decode(credentials.trim()).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((decode_component(id), decode_component(secret)))
}
