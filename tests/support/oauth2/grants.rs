//! The token request (RFC 6749 §3.2) and its two grants: `refresh_token`
//! (§6) and `client_credentials` (§4.4), answered as §5.1 says.

use std::sync::atomic::Ordering;

use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CACHE_CONTROL, PRAGMA};
use hyper::{Request, Response, StatusCode};
use serde_json::json;

use super::super::json;
use super::super::server::ResBody;
use super::super::tokens::{Redemption, RefreshState};
use super::client_auth::{authenticate, RegisteredClient};
use super::form::Form;
use super::scope::Scope;
use super::{Rejection, State};

/// Answers one token request: a `200`, an injected failure, or the
/// [`Rejection`] to answer with.
pub(super) async fn token(
    state: &State,
    request: Request<Incoming>,
) -> Result<Response<ResBody>, Rejection> {
    let authorization = request.headers().get(AUTHORIZATION).cloned();
    let form = Form::read(request).await?;
    let Some(grant_type) = form.get("grant_type") else {
        return Err(Rejection::invalid_request("grant_type is missing"));
    };
    let client = || authenticate(&state.clients, authorization.as_ref(), &form);
    if grant_type != "refresh_token" {
        let client = client()?;
        return match grant_type {
            "client_credentials" => client_credentials(state, client, &form),
            _ => Err(Rejection::new(
                "unsupported_grant_type",
                format!("grant_type {grant_type} is not supported"),
            )),
        };
    }
    state
        .faults
        .answer(
            &state.counters.injected,
            |failure| Ok(state.injected(failure)),
            async { client().and_then(|client| refresh(state, client, &form)) },
        )
        .await
}

/// §6: a new access token for a refresh token issued to `client`.
fn refresh(
    state: &State,
    client: &RegisteredClient,
    form: &Form,
) -> Result<Response<ResBody>, Rejection> {
    let Some(token) = form.get("refresh_token") else {
        return Err(Rejection::invalid_request("refresh_token is missing"));
    };
    let invalid_grant = |description: &str| Rejection::new("invalid_grant", description);
    let Some((grant, standing)) = state.tokens.refresh_token(token) else {
        return Err(invalid_grant("unknown refresh token"));
    };
    // The store may be shared with other servers: their refresh tokens are
    // not grants of ours.
    let Some(granted) = state.granted(grant) else {
        return Err(invalid_grant("unknown refresh token"));
    };
    // §6: "ensure that the refresh token was issued to the authenticated
    // client". Someone else's token is refused without touching its family.
    if granted.client_id != client.id() {
        return Err(invalid_grant("refresh token was issued to another client"));
    }
    // A spent or revoked token goes straight to redemption, which detects
    // reuse: the scope it asks for no longer matters.
    let scope = match form.get("scope") {
        Some(requested) if standing == RefreshState::Live => {
            let requested = Scope::parse(requested)
                .ok_or_else(|| Rejection::new("invalid_scope", "malformed scope"))?;
            if !requested.is_subset_of(&granted.scope) {
                return Err(Rejection::new(
                    "invalid_scope",
                    "scope exceeds the one originally granted",
                ));
            }
            requested
        }
        _ => granted.scope,
    };
    // The successor keeps the grant's scope, whatever this access token
    // narrows it to: §6 requires a new refresh token's scope to be identical
    // to the old one's.
    match state.tokens.redeem_refresh_token(token, state.rotate) {
        Redemption::Redeemed { successor } => {
            state.counters.refreshed.fetch_add(1, Ordering::SeqCst);
            let access_token = state.tokens.issue_access_token_in(grant, state.lifetime);
            Ok(success(state, &access_token, successor.as_deref(), &scope))
        }
        Redemption::Reused => {
            state.counters.reuse_detected.fetch_add(1, Ordering::SeqCst);
            Err(invalid_grant(
                "refresh token was already used; its token family is revoked",
            ))
        }
        Redemption::Invalid => Err(invalid_grant("refresh token is revoked")),
    }
}

/// §4.4: an access token for the client itself; no refresh token
/// (§4.4.3: "A refresh token SHOULD NOT be included").
fn client_credentials(
    state: &State,
    client: &RegisteredClient,
    form: &Form,
) -> Result<Response<ResBody>, Rejection> {
    // §4.4: "The client credentials grant type MUST only be used by
    // confidential clients."
    if client.is_public() {
        return Err(Rejection::new(
            "unauthorized_client",
            "public clients may not use client_credentials",
        ));
    }
    let scope = match form.get("scope") {
        Some(requested) => {
            let requested = Scope::parse(requested)
                .ok_or_else(|| Rejection::new("invalid_scope", "malformed scope"))?;
            if !requested.is_subset_of(client.allowed_scope()) {
                return Err(Rejection::new(
                    "invalid_scope",
                    "scope exceeds what the client may be granted",
                ));
            }
            requested
        }
        None => client.allowed_scope().clone(),
    };
    state
        .counters
        .client_credentials
        .fetch_add(1, Ordering::SeqCst);
    let access_token = state.tokens.issue_access_token(state.lifetime);
    Ok(success(state, &access_token, None, &scope))
}

/// §5.1: `200 {access_token, token_type, expires_in, refresh_token?,
/// scope?}`, never cached. `scope` is sent whenever it is not empty (§5.1
/// requires it only when it differs from the request's).
fn success(
    state: &State,
    access_token: &str,
    refresh_token: Option<&str>,
    scope: &Scope,
) -> Response<ResBody> {
    let mut body = json!({
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": state.lifetime.as_secs(),
    });
    if let Some(refresh_token) = refresh_token {
        body["refresh_token"] = refresh_token.into();
    }
    if !scope.is_empty() {
        body["scope"] = scope.to_string().into();
    }
    let mut response = json::response(StatusCode::OK, &body);
    let headers = response.headers_mut();
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(PRAGMA, HeaderValue::from_static("no-cache"));
    response
}
