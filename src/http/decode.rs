//! Reading a successful answer into a [`TokenSet`], following a
//! [`ResponseShape`].
//!
//! Rules every dialect follows: unknown fields are ignored; `expires_in` is
//! a number or a numeric string of seconds; without it, a JWT access
//! token's `exp` is used; a `token_type` other than Bearer is refused for
//! good (terminal: the issuer will answer the same way again, and each
//! call would spend a refresh token); any other answer that does not decode
//! is a transient failure. Error messages name the field, never its value:
//! the value may be a token.

use std::time::{Duration, SystemTime};

use serde_json::Value;

use super::dialect::ResponseShape;
use super::jwt;
use crate::{RefreshError, Secret, TokenSet};

/// The token set in `body`, a `2xx` answer's bytes.
pub(crate) fn tokens(
    shape: &ResponseShape,
    body: &[u8],
    now: SystemTime,
) -> Result<TokenSet, RefreshError> {
    let json: Value =
        json_of(body).map_err(|e| undecodable("the answer is not JSON").with_source(e))?;
    // An answer whose success flag says it failed issued nothing: a
    // refresh token in it is not taken for a new one (found in review: it
    // was, and replaced the one presented, still live).
    if let Some(pointer) = &shape.success {
        if json.pointer(pointer) != Some(&Value::Bool(true)) {
            return Err(undecodable(format!("`{}` is not true", field(pointer))));
        }
    }
    let refresh_token = match &shape.refresh_token {
        // An empty string means "no new one", as an absent field does.
        Some(pointer) => string_at(&json, pointer)?.filter(|r| !r.is_empty()),
        None => None,
    };
    // A successful answer is refused below for what it lacks; a new
    // refresh token in it stays with the error, as the issuer has spent
    // the one presented.
    checked(shape, &json, now, refresh_token).map_err(|error| match refresh_token {
        Some(token) => error.with_replacement(Secret::new(token)),
        None => error,
    })
}

/// `body` as JSON, after a UTF-8 byte order mark if it starts with one:
/// RFC 8259 forbids sending one but lets a parser ignore it, and some
/// servers send one. Found in review: read as not JSON, every answer of
/// such a server was a transient failure, and the token never refreshed.
pub(super) fn json_of(body: &[u8]) -> serde_json::Result<Value> {
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    serde_json::from_slice(body)
}

/// The token set in `json`, a successful answer with `refresh_token` in it.
fn checked(
    shape: &ResponseShape,
    json: &Value,
    now: SystemTime,
    refresh_token: Option<&str>,
) -> Result<TokenSet, RefreshError> {
    let access_token = string_at(json, &shape.access_token)?
        .ok_or_else(|| undecodable(format!("no `{}` string", field(&shape.access_token))))?;
    if access_token.is_empty() {
        return Err(undecodable(format!(
            "`{}` is empty",
            field(&shape.access_token)
        )));
    }
    if let Some(pointer) = &shape.token_type {
        if let Some(kind) = string_at(json, pointer)? {
            // Terminal, not transient: an issuer that hands out another
            // kind of token (`DPoP`, `MAC`) does so for this client's
            // registration, not for a passing fault. Found in review:
            // transient, it was asked again after every backoff, each call
            // spending a refresh token for a token that could not be sent.
            if !kind.eq_ignore_ascii_case("bearer") {
                return Err(RefreshError::terminal(format!(
                    "unusable refresh answer: `{}` is not Bearer; only bearer tokens can be sent",
                    field(pointer)
                )));
            }
        }
    }
    let expires_in = match &shape.expires_in {
        Some(pointer) => match json.pointer(pointer) {
            None | Some(Value::Null) => None,
            Some(value) => Some(seconds(value).ok_or_else(|| {
                undecodable(format!(
                    "`{}` is not a non-negative number of seconds",
                    field(pointer)
                ))
            })?),
        },
        None => None,
    }
    .or_else(|| jwt::expires_in(access_token, now));

    let mut tokens = TokenSet::new(access_token);
    if let Some(refresh) = refresh_token {
        tokens = tokens.with_refresh_token(refresh);
    }
    if let Some(expires_in) = expires_in {
        tokens = tokens.with_expires_in(expires_in);
    }
    for (name, pointer) in &shape.keep {
        if let Some(value) = json.pointer(pointer).and_then(plain_text) {
            tokens = tokens.with_extra(name.as_str(), value);
        }
    }
    Ok(tokens)
}

/// The string at `pointer`: `Ok(None)` when absent or null, an error when
/// it is something other than a string.
fn string_at<'a>(json: &'a Value, pointer: &str) -> Result<Option<&'a str>, RefreshError> {
    match json.pointer(pointer) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(undecodable(format!("`{}` is not a string", field(pointer)))),
    }
}

/// Seconds from a JSON number or a numeric string (`3600`, `"3600"`,
/// `3600.5`). Negative, non-finite or non-numeric values are `None`; values
/// too large for a `Duration` saturate.
pub(crate) fn seconds(value: &Value) -> Option<Duration> {
    let number = match value {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    // `"inf"` and `"Infinity"` parse: a lifetime no clock reaches is not
    // one, and would keep a token from ever being refreshed ahead of time.
    if !number.is_finite() || number < 0.0 {
        return None;
    }
    Some(Duration::try_from_secs_f64(number).unwrap_or(Duration::MAX))
}

/// A scalar as text: strings as they are, numbers and booleans printed.
pub(crate) fn plain_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The last segment of a pointer, for messages.
fn field(pointer: &str) -> &str {
    pointer.rsplit('/').next().unwrap_or(pointer)
}

fn undecodable(what: impl Into<String>) -> RefreshError {
    RefreshError::transient(format!("undecodable refresh answer: {}", what.into()))
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use serde_json::json;

    use super::*;
    use crate::http::dialect::Dialect;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    fn decode(dialect: Dialect, body: Value) -> Result<TokenSet, RefreshError> {
        tokens(&dialect.response, body.to_string().as_bytes(), now())
    }

    #[test]
    fn oauth2_answer_with_rotation_and_scope() {
        let tokens = decode(
            Dialect::oauth2(),
            json!({"access_token": "a", "token_type": "bearer", "expires_in": 3600,
                   "refresh_token": "r2", "scope": "read", "unknown": [1, 2]}),
        )
        .unwrap();
        assert_eq!(tokens.access_token().expose(), "a");
        assert_eq!(tokens.refresh_token().unwrap().expose(), "r2");
        assert_eq!(tokens.expires_in(), Some(Duration::from_secs(3600)));
        assert_eq!(tokens.extra("scope"), Some("read"));
    }

    #[test]
    fn an_answer_after_a_byte_order_mark_is_read() {
        let body = json!({"access_token": "a", "token_type": "Bearer", "expires_in": 60});
        let with_mark = [b"\xEF\xBB\xBF".as_slice(), body.to_string().as_bytes()].concat();
        let tokens = tokens(&Dialect::oauth2().response, &with_mark, now()).unwrap();
        assert_eq!(tokens.access_token().expose(), "a");
        assert_eq!(tokens.expires_in(), Some(Duration::from_secs(60)));
    }

    /// An answer refused for what it lacks keeps the new refresh token in
    /// it for the error; one whose success flag says it failed has none.
    #[test]
    fn a_refresh_token_in_an_answer_that_says_it_failed_is_not_taken() {
        let shape = |dialect: Dialect| ResponseShape {
            success: Some("/ok".into()),
            refresh_token: Some("/renew".into()),
            ..dialect.response
        };
        let refused = |body: Value| {
            let mut error = tokens(
                &shape(Dialect::custom()),
                body.to_string().as_bytes(),
                now(),
            )
            .unwrap_err();
            error.take_replacement().map(|r| r.expose().to_owned())
        };
        assert_eq!(refused(json!({"ok": false, "renew": "r2"})), None);
        assert_eq!(
            refused(json!({"ok": true, "renew": "r2"})),
            Some("r2".to_owned()),
            "no access token: refused, the new refresh token kept"
        );
    }

    #[test]
    fn dynamosql_envelope_and_its_success_flag() {
        let ok = json!({"success": true, "data": {"accessToken": "a", "expiresIn": 60, "tokenType": "Bearer"}});
        let tokens = decode(Dialect::dynamosql(), ok).unwrap();
        assert_eq!(tokens.expires_in(), Some(Duration::from_secs(60)));
        assert!(tokens.refresh_token().is_none());
        let not_ok = json!({"success": false, "data": {"accessToken": "a"}});
        let err = decode(Dialect::dynamosql(), not_ok).unwrap_err();
        assert!(err.is_transient());
        assert!(err.to_string().contains("`success` is not true"), "{err}");
    }

    #[test]
    fn cognito_and_ocient_keep_their_extra_fields() {
        let cognito = decode(
            Dialect::cognito(),
            json!({"accessToken": "a", "refreshToken": "r", "expiresIn": 3600, "requiresPasswordChange": false}),
        )
        .unwrap();
        assert_eq!(cognito.extra("requiresPasswordChange"), Some("false"));
        let ocient = decode(
            Dialect::ocient(),
            json!({"access_token": "a", "username": "jdoe", "database": "retail", "expires_in": 3600,
                   "status": {"reason": "Token refreshed successfully", "sql_state": "00000", "vendor_code": 0}}),
        )
        .unwrap();
        assert_eq!(ocient.extra("username"), Some("jdoe"));
        assert_eq!(ocient.extra("database"), Some("retail"));
    }

    #[test]
    fn expires_in_may_be_a_numeric_string() {
        let tokens = decode(
            Dialect::oauth2(),
            json!({"access_token": "a", "expires_in": " 120 "}),
        )
        .unwrap();
        assert_eq!(tokens.expires_in(), Some(Duration::from_secs(120)));
        let err = decode(
            Dialect::oauth2(),
            json!({"access_token": "a", "expires_in": "soon"}),
        )
        .unwrap_err();
        assert!(err.to_string().contains("expires_in"), "{err}");
        let err = decode(
            Dialect::oauth2(),
            json!({"access_token": "a", "expires_in": -5}),
        )
        .unwrap_err();
        assert!(err.is_transient());
    }

    #[test]
    fn without_expires_in_a_jwt_exp_is_used() {
        let jwt = jwt::token_with_claims(&json!({"exp": 1_700_000_300}));
        let tokens = decode(Dialect::cognito(), json!({"accessToken": jwt})).unwrap();
        assert_eq!(tokens.expires_in(), Some(Duration::from_secs(300)));
        let opaque = decode(Dialect::cognito(), json!({"accessToken": "opaque"})).unwrap();
        assert_eq!(opaque.expires_in(), None);
        // A `null` lifetime is no lifetime, as an absent one is.
        let null = decode(
            Dialect::oauth2(),
            json!({"access_token": jwt, "expires_in": null}),
        );
        assert_eq!(null.unwrap().expires_in(), Some(Duration::from_secs(300)));
        let null = decode(
            Dialect::oauth2(),
            json!({"access_token": "a", "expires_in": null}),
        );
        assert_eq!(null.unwrap().expires_in(), None);
    }

    /// Found in review: the refusal quoted the server's `token_type`,
    /// which these messages never do with a value (it may be a token).
    #[test]
    fn a_token_type_other_than_bearer_is_refused_without_echoing_it() {
        let err = decode(
            Dialect::oauth2(),
            json!({"access_token": "a", "token_type": "mac secret-value"}),
        )
        .unwrap_err();
        assert!(err.is_terminal(), "the issuer would answer the same again");
        assert!(
            err.to_string().contains("`token_type` is not Bearer"),
            "{err}"
        );
        assert!(
            !format!("{err} {err:?}").contains("secret-value"),
            "{err:?}"
        );
    }

    #[test]
    fn missing_or_mistyped_fields_never_echo_the_value() {
        for body in [
            json!({"token": "secret-value"}),
            json!({"access_token": ["secret-value"]}),
            json!({"access_token": ""}),
            json!({"access_token": "a", "refresh_token": 42}),
        ] {
            let err = decode(Dialect::oauth2(), body).unwrap_err();
            assert!(err.is_transient());
            assert!(
                !format!("{err} {err:?}").contains("secret-value"),
                "{err:?}"
            );
        }
        let err = tokens(&Dialect::oauth2().response, b"<html>secret-value", now()).unwrap_err();
        assert!(
            !format!("{err} {err:?}").contains("secret-value"),
            "{err:?}"
        );
    }

    #[test]
    fn seconds_accepts_numbers_and_numeric_strings_only() {
        assert_eq!(seconds(&json!(1.5)), Some(Duration::from_millis(1500)));
        assert_eq!(seconds(&json!("0")), Some(Duration::ZERO));
        assert_eq!(seconds(&json!(1e300)), Some(Duration::MAX));
        assert_eq!(seconds(&json!("NaN")), None);
        // Found in review: the first three parsed as an endless lifetime.
        for endless in ["inf", "Infinity", "1e400", "-inf"] {
            assert_eq!(seconds(&json!(endless)), None, "{endless}");
        }
        assert_eq!(seconds(&json!(true)), None);
        assert_eq!(seconds(&json!("-1")), None);
    }
}
