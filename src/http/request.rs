//! Building the refresh request from a [`RequestShape`] and the tokens in
//! use.

use std::borrow::Cow;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Request, Uri};
use serde_json::{Map, Value};

use super::credential::{BodyFormat, ClientAuthMethod, Placement, TokenKind};
use super::dialect::{Client, FieldValue, RequestShape};
use super::endpoint;
use super::failure::SentSecrets;
use crate::manager::BEARER;
use crate::{RefreshContext, RefreshError};

const FORM: &str = "application/x-www-form-urlencoded";
const JSON: &str = "application/json";

/// The secrets a refresh with `shape` and `ctx` to `uri` may send,
/// whichever it sends: the tokens in use, secret body fields, the client
/// secret (and the Basic
/// credentials made from it), and what the endpoint's URI may carry
/// ([`endpoint::secrets`]). A server's error text quoting one of them has
/// it redacted.
pub(crate) fn secrets<'a>(
    shape: &'a RequestShape,
    uri: Option<&'a Uri>,
    ctx: &'a RefreshContext,
) -> SentSecrets {
    let tokens = [ctx.refresh_token(), ctx.access_token()];
    let fixed = shape.fields.iter().filter_map(|(_, value)| match value {
        FieldValue::Secret(secret) => Some(secret),
        FieldValue::Plain(_) => None,
    });
    let mut secrets: Vec<Cow<'a, str>> = tokens
        .into_iter()
        .flatten()
        .chain(fixed)
        .map(|secret| Cow::Borrowed(secret.expose()))
        .collect();
    if let Some((client, secret)) = shape
        .client
        .as_ref()
        .and_then(|client| Some((client, client.secret.as_ref()?)))
    {
        secrets.push(Cow::Borrowed(secret.expose()));
        let basic = basic_auth(client, secret);
        let credentials = basic.trim_start_matches("Basic ");
        secrets.push(Cow::Owned(credentials.trim_end_matches('=').to_owned()));
    }
    if let Some(uri) = uri {
        secrets.extend(endpoint::secrets(uri));
    }
    SentSecrets::new(secrets)
}

/// The request to send, or a terminal error when the tokens in use cannot
/// make one (no refresh token to refresh with: a login is needed).
pub(crate) fn build(
    shape: &RequestShape,
    uri: &Uri,
    ctx: &RefreshContext,
) -> Result<Request<Bytes>, RefreshError> {
    let mut fields: Vec<(&str, &str)> = Vec::with_capacity(shape.fields.len() + 4);
    if let Some(grant_type) = shape.grant_type {
        fields.push(("grant_type", grant_type));
    }
    let mut bearer = None;
    match &shape.credential.placement {
        Placement::Omitted => {}
        placement => {
            let token = match shape.credential.token {
                TokenKind::Refresh => ctx.refresh_token(),
                TokenKind::Access => ctx.access_token(),
            }
            .ok_or_else(|| missing_credential(shape.credential.token))?;
            match placement {
                Placement::Field(name) => fields.push((name.as_str(), token.expose())),
                _ => bearer = Some(format!("{BEARER}{}", token.expose())),
            }
        }
    }
    fields.extend(
        shape
            .fields
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str())),
    );
    let kept = |name: &&'static str| {
        let fixed = shape.fields.iter().any(|(fixed, _)| fixed == name);
        let value = ctx.current().and_then(|tokens| tokens.extra(name));
        // An empty name is none (the server would refuse it).
        value
            .filter(|value| !fixed && !value.is_empty())
            .map(|value| (*name, value))
    };
    fields.extend(shape.carried.iter().filter_map(kept));
    let mut basic = None;
    if let Some(client) = &shape.client {
        if client.id.is_empty() && client.secret.is_some() {
            // Sent, it authenticates nobody; the server's 401 would not
            // say why.
            return Err(RefreshError::terminal(
                "a client secret is set without a client id (client_id)",
            ));
        }
        match (&client.secret, client.method) {
            (Some(secret), ClientAuthMethod::Basic) => basic = Some(basic_auth(client, secret)),
            (Some(secret), ClientAuthMethod::Post) => {
                fields.push(("client_id", &client.id));
                fields.push(("client_secret", secret.expose()));
            }
            // Only a client's method set: no client to name. Found in
            // review: an empty `client_id` went out, which a server that
            // needs none may refuse as an unknown client.
            (None, _) if client.id.is_empty() => {}
            // A public client only identifies itself (RFC 6749 §3.2.1).
            (None, _) => fields.push(("client_id", &client.id)),
        }
    }
    if bearer.is_some() && basic.is_some() {
        // Sending one of the two would fail at the server, for a reason no
        // answer names.
        return Err(RefreshError::terminal(
            "the credential and the client's Basic authentication both need the \
             Authorization header; send the client's in the body \
             (ClientAuthMethod::Post)",
        ));
    }

    // `field()` and `secret_field()` keep fixed fields unique, and the refresh's own fields are;
    // a name twice is one of each. In JSON the last one won, silently (the
    // refresh token itself could be replaced); in a form both went out.
    if let Some((name, _)) = fields
        .iter()
        .enumerate()
        .find_map(|(i, (name, _))| fields[..i].iter().find(|(seen, _)| seen == name))
    {
        return Err(RefreshError::terminal(format!(
            "the fixed body field `{name}` is one the refresh sets itself \
             (grant type, credential or client)"
        )));
    }

    let mut request = Request::builder()
        .method(shape.method.clone())
        .uri(uri.clone())
        .header(ACCEPT, JSON);
    let body = match shape.format {
        BodyFormat::Form => {
            request = request.header(CONTENT_TYPE, FORM);
            form_urlencoded::Serializer::new(String::new())
                .extend_pairs(fields)
                .finish()
        }
        BodyFormat::Json => {
            request = request.header(CONTENT_TYPE, JSON);
            let object: Map<String, Value> = fields
                .into_iter()
                .map(|(name, value)| (name.to_owned(), Value::from(value)))
                .collect();
            Value::Object(object).to_string()
        }
    };
    let mut request = request.body(Bytes::from(body)).map_err(|e| {
        RefreshError::terminal("the refresh request could not be built").with_source(e)
    })?;
    if let Some(value) = bearer.or(basic) {
        // From bytes, as the layer's own header: an access token past ASCII
        // (the Ocient preset's) is taken whatever the http release.
        let mut value = HeaderValue::try_from(value.into_bytes()).map_err(|_| {
            RefreshError::terminal("the credential cannot be sent in an Authorization header")
        })?;
        value.set_sensitive(true);
        request.headers_mut().insert(AUTHORIZATION, value);
    }
    Ok(request)
}

fn missing_credential(kind: TokenKind) -> RefreshError {
    RefreshError::terminal(match kind {
        TokenKind::Refresh => "there is no refresh token to refresh with",
        TokenKind::Access => "there is no access token to refresh with",
    })
}

/// `Basic base64(urlencode(id) ":" urlencode(secret))`: RFC 6749 §2.3.1
/// form-encodes both before joining them, so a `:` in the id survives.
fn basic_auth(client: &Client, secret: &crate::Secret) -> String {
    let encode = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let pair = format!("{}:{}", encode(&client.id), encode(secret.expose()));
    format!("Basic {}", STANDARD.encode(pair))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::http::credential::Credential;
    use crate::http::dialect::Dialect;
    use crate::{RefreshReason, Secret, TokenSet};

    fn ctx(tokens: TokenSet) -> RefreshContext {
        RefreshContext::new(RefreshReason::Proactive, Some(Arc::new(tokens)))
    }

    fn body(request: &Request<Bytes>) -> &str {
        std::str::from_utf8(request.body()).unwrap()
    }

    fn uri() -> Uri {
        Uri::from_static("https://idp.example/token")
    }

    #[test]
    fn oauth2_basic_form_encodes_id_and_secret_before_base64() {
        let mut shape = Dialect::oauth2().request;
        shape.client = Some(Client {
            id: "my app:1".into(),
            secret: Some(Secret::new("p+ss/w%rd")),
            method: ClientAuthMethod::Basic,
        });
        let request = build(
            &shape,
            &uri(),
            &ctx(TokenSet::new("a").with_refresh_token("r 1")),
        )
        .unwrap();
        let auth = request.headers()[AUTHORIZATION].clone();
        assert!(auth.is_sensitive());
        let encoded = auth.to_str().unwrap().strip_prefix("Basic ").unwrap();
        let decoded = String::from_utf8(STANDARD.decode(encoded).unwrap()).unwrap();
        assert_eq!(decoded, "my+app%3A1:p%2Bss%2Fw%25rd");
        assert_eq!(body(&request), "grant_type=refresh_token&refresh_token=r+1");
        assert_eq!(request.headers()[CONTENT_TYPE], FORM);
    }

    #[test]
    fn oauth2_post_and_public_clients_go_in_the_body() {
        let mut shape = Dialect::oauth2().request;
        shape.client = Some(Client {
            id: "app".into(),
            secret: Some(Secret::new("s")),
            method: ClientAuthMethod::Post,
        });
        let tokens = TokenSet::new("a").with_refresh_token("r");
        let request = build(&shape, &uri(), &ctx(tokens.clone())).unwrap();
        assert!(request.headers().get(AUTHORIZATION).is_none());
        assert_eq!(
            body(&request),
            "grant_type=refresh_token&refresh_token=r&client_id=app&client_secret=s"
        );
        shape.client.as_mut().unwrap().secret = None;
        let request = build(&shape, &uri(), &ctx(tokens)).unwrap();
        assert_eq!(
            body(&request),
            "grant_type=refresh_token&refresh_token=r&client_id=app"
        );
    }

    #[test]
    fn json_dialects_send_the_refresh_token_as_a_string_field() {
        let shape = Dialect::cognito().request;
        let request = build(
            &shape,
            &uri(),
            &ctx(TokenSet::new("a").with_refresh_token("r\"1")),
        )
        .unwrap();
        let sent: Value = serde_json::from_slice(request.body()).unwrap();
        assert_eq!(sent, serde_json::json!({ "refreshToken": "r\"1" }));
        assert_eq!(request.headers()[CONTENT_TYPE], JSON);
        assert_eq!(request.method(), http::Method::POST);
    }

    #[test]
    fn ocient_sends_the_access_token_as_a_sensitive_bearer_header() {
        let mut shape = Dialect::ocient().request;
        let request = build(&shape, &uri(), &ctx(TokenSet::new("current"))).unwrap();
        let auth = &request.headers()[AUTHORIZATION];
        assert_eq!(auth, "Bearer current");
        assert!(auth.is_sensitive());
        assert_eq!(body(&request), "{}");
        // A token past ASCII goes out as the layer sends it (http 1.6 made
        // a `String` header visible ASCII only).
        let request = build(&shape, &uri(), &ctx(TokenSet::new("cürrent"))).unwrap();
        assert_eq!(
            request.headers()[AUTHORIZATION].as_bytes(),
            "Bearer cürrent".as_bytes()
        );
        // The session's database, kept on the tokens, unless one is set.
        let in_session = TokenSet::new("current").with_extra("database", "sales");
        let request = build(&shape, &uri(), &ctx(in_session.clone())).unwrap();
        assert_eq!(body(&request), r#"{"database":"sales"}"#);
        let blank = TokenSet::new("current").with_extra("database", "");
        let request = build(&shape, &uri(), &ctx(blank)).unwrap();
        assert_eq!(body(&request), "{}", "an empty name is none");
        shape
            .fields
            .push(("database".into(), FieldValue::Plain("retail".into())));
        for tokens in [TokenSet::new("current"), in_session] {
            let request = build(&shape, &uri(), &ctx(tokens)).unwrap();
            assert_eq!(body(&request), r#"{"database":"retail"}"#);
        }
    }

    #[test]
    fn a_missing_credential_is_terminal_so_a_login_can_follow() {
        let shape = Dialect::oauth2().request;
        let err = build(&shape, &uri(), &ctx(TokenSet::new("a"))).unwrap_err();
        assert!(err.is_terminal());
        let none = RefreshContext::new(RefreshReason::Initial, None);
        let shape = RequestShape {
            credential: Credential::bearer_header().with_access_token(),
            ..shape
        };
        assert!(build(&shape, &uri(), &none).unwrap_err().is_terminal());
    }

    #[test]
    fn a_token_that_is_no_header_value_is_refused() {
        let shape = Dialect::ocient().request;
        let err = build(&shape, &uri(), &ctx(TokenSet::new("bad\ntoken"))).unwrap_err();
        assert!(!err.to_string().contains("bad"), "{err}");
    }
}
