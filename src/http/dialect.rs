//! A refresh API described as data: how to ask ([`RequestShape`]), where
//! the answer's fields are ([`ResponseShape`]) and where an error says what
//! went wrong ([`ErrorShape`]). Every preset is one such description, so all
//! of them share one request builder and one decoder.

use std::time::Duration;

use http::Method;

use super::call_budget::RateLimit;
use super::credential::{BodyFormat, ClientAuthMethod, Credential};
use crate::Secret;

/// One refresh API.
#[derive(Debug, Clone)]
pub(crate) struct Dialect {
    /// Shown in logs and errors: `oauth2`, `cognito`, …
    pub(crate) name: &'static str,
    pub(crate) request: RequestShape,
    pub(crate) response: ResponseShape,
    pub(crate) errors: ErrorShape,
    /// The wait after a `429` that names none (no `Retry-After`): what the
    /// endpoint's documented limit implies. `None`: the layer's backoff.
    pub(crate) rate_limit_wait: Option<Duration>,
    /// The endpoint's documented limit, kept on the client's side
    /// ([`call_budget`](super::call_budget)). `None`: no limit known.
    pub(crate) rate_limit: Option<RateLimit>,
}

#[derive(Debug, Clone)]
pub(crate) struct RequestShape {
    pub(crate) method: Method,
    pub(crate) format: BodyFormat,
    pub(crate) credential: Credential,
    /// The OAuth2 `grant_type`, sent first.
    pub(crate) grant_type: Option<&'static str>,
    /// Body fields sent as they are, after the credential (`scope`,
    /// `database`, a static API key), each name once.
    pub(crate) fields: Vec<(String, FieldValue)>,
    /// Body fields sent, unless fixed in `fields`, with the value the
    /// tokens in use keep under the same name ([`TokenSet::extra`]): the
    /// session's own, which the endpoint would otherwise reset.
    ///
    /// [`TokenSet::extra`]: crate::TokenSet::extra
    pub(crate) carried: &'static [&'static str],
    /// The OAuth2 client, if the endpoint authenticates one.
    pub(crate) client: Option<Client>,
}

/// A fixed body field's value.
#[derive(Debug, Clone)]
pub(crate) enum FieldValue {
    Plain(String),
    /// A secret (a static API key): redacted wherever the server quotes it.
    Secret(Secret),
}

impl FieldValue {
    /// The value as sent.
    pub(crate) fn as_str(&self) -> &str {
        match self {
            Self::Plain(value) => value,
            Self::Secret(secret) => secret.expose(),
        }
    }
}

/// An OAuth2 client: public when it has no secret.
#[derive(Debug, Clone)]
pub(crate) struct Client {
    pub(crate) id: String,
    pub(crate) secret: Option<Secret>,
    pub(crate) method: ClientAuthMethod,
}

/// JSON pointers (RFC 6901) to the fields of a successful answer.
#[derive(Debug, Clone)]
pub(crate) struct ResponseShape {
    /// A boolean that must be `true` (an envelope's `success`).
    pub(crate) success: Option<String>,
    pub(crate) access_token: String,
    /// Seconds, as a number or a numeric string. Without it (or when the
    /// field is absent) the access token's JWT `exp` is used, if it has one.
    pub(crate) expires_in: Option<String>,
    pub(crate) refresh_token: Option<String>,
    /// When present in the answer, it must say `Bearer`.
    pub(crate) token_type: Option<String>,
    /// Non-secret fields kept on the token set: `(name, pointer)`.
    pub(crate) keep: Vec<(String, String)>,
}

/// JSON pointers to what an error answer says about itself.
#[derive(Debug, Clone, Default)]
pub(crate) struct ErrorShape {
    /// Tried in order; the first string found is the message.
    pub(crate) message: Vec<String>,
    pub(crate) code: Option<String>,
    pub(crate) request_id: Option<String>,
    /// Further fields appended to the message as `label: value`.
    pub(crate) details: Vec<(String, String)>,
}

impl ErrorShape {
    /// Every pointer at which an answer says what went wrong: the only
    /// strings of an answer that an error may quote.
    pub(crate) fn pointers(&self) -> impl Iterator<Item = &str> {
        self.message
            .iter()
            .chain(&self.code)
            .chain(&self.request_id)
            .chain(self.details.iter().map(|(_, pointer)| pointer))
            .map(String::as_str)
    }
}

/// Seed 002 allows 5 refreshes a minute per IP.
const COGNITO_RATE_LIMIT: RateLimit = RateLimit {
    calls: 5,
    per: Duration::from_secs(60),
};

/// Seed 002's `429` names no wait, and says only that the last minute held
/// more than 5 calls from this IP: only a whole minute without calls is
/// sure to see that minute empty. Found in review: a wait of a minute / 5
/// (12 s) suits a token bucket, which the seed does not describe; against
/// a count of the last minute's calls, refused ones included, each call
/// 12 s apart was refused again and spent the IP's budget for every
/// other process behind it.
pub(crate) const COGNITO_RATE_LIMIT_WAIT: Duration = COGNITO_RATE_LIMIT.per;

fn pointers(list: &[&str]) -> Vec<String> {
    list.iter().map(|p| (*p).to_owned()).collect()
}

fn named(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(name, pointer)| ((*name).to_owned(), (*pointer).to_owned()))
        .collect()
}

impl Dialect {
    /// RFC 6749 §6: `grant_type=refresh_token`, answers per §5.1 and §5.2.
    pub(crate) fn oauth2() -> Self {
        Self {
            name: "oauth2",
            request: RequestShape {
                method: Method::POST,
                format: BodyFormat::Form,
                credential: Credential::field("refresh_token"),
                grant_type: Some("refresh_token"),
                fields: Vec::new(),
                carried: &[],
                client: None,
            },
            response: oauth2_response(),
            errors: oauth2_errors(),
            rate_limit_wait: None,
            rate_limit: None,
        }
    }

    /// RFC 6749 §4.4: `grant_type=client_credentials`, the client alone.
    pub(crate) fn client_credentials() -> Self {
        Self {
            name: "client_credentials",
            request: RequestShape {
                credential: Credential::none(),
                grant_type: Some("client_credentials"),
                ..Self::oauth2().request
            },
            ..Self::oauth2()
        }
    }

    /// Seed 000: `POST /v1/auth/refresh` `{"refreshToken"}`, answered with
    /// the `{success, data: {accessToken, expiresIn, tokenType}}` envelope
    /// and errors as `{success: false, error: {message, code, requestId}}`.
    pub(crate) fn dynamosql() -> Self {
        Self {
            name: "dynamosql",
            request: json_request(Credential::field("refreshToken")),
            response: ResponseShape {
                success: Some("/success".into()),
                access_token: "/data/accessToken".into(),
                expires_in: Some("/data/expiresIn".into()),
                // "No new refresh token is issued."
                refresh_token: None,
                token_type: Some("/data/tokenType".into()),
                keep: Vec::new(),
            },
            errors: ErrorShape {
                message: pointers(&["/error/message"]),
                code: Some("/error/code".into()),
                request_id: Some("/error/requestId".into()),
                details: Vec::new(),
            },
            rate_limit_wait: None,
            rate_limit: None,
        }
    }

    /// Seed 002: `POST /api/auth/refresh-token` `{"refreshToken"}`,
    /// answered flat with `{accessToken, refreshToken, expiresIn,
    /// requiresPasswordChange}`; errors as `{statusCode, message, error}`.
    pub(crate) fn cognito() -> Self {
        Self {
            name: "cognito",
            request: json_request(Credential::field("refreshToken")),
            response: ResponseShape {
                success: None,
                access_token: "/accessToken".into(),
                expires_in: Some("/expiresIn".into()),
                refresh_token: Some("/refreshToken".into()),
                token_type: None,
                keep: named(&[("requiresPasswordChange", "/requiresPasswordChange")]),
            },
            errors: ErrorShape {
                message: pointers(&["/message"]),
                code: Some("/error".into()),
                request_id: None,
                details: Vec::new(),
            },
            rate_limit_wait: Some(COGNITO_RATE_LIMIT_WAIT),
            rate_limit: Some(COGNITO_RATE_LIMIT),
        }
    }

    /// Seed 003: `POST /v1/token_refresh` with `Authorization: Bearer
    /// <current access token>` and an optional `{"database"}`, answered
    /// with `{access_token, username, database, expires_in, status: {reason,
    /// sql_state, vendor_code}}`.
    pub(crate) fn ocient() -> Self {
        Self {
            name: "ocient",
            // Without a database named, the endpoint moves the session to
            // `system`: the one the session is in, kept from the login or
            // the last answer, is named unless one is set.
            request: RequestShape {
                carried: &["database"],
                ..json_request(Credential::bearer_header().with_access_token())
            },
            response: ResponseShape {
                success: None,
                access_token: "/access_token".into(),
                expires_in: Some("/expires_in".into()),
                refresh_token: None,
                token_type: None,
                keep: named(&[("username", "/username"), ("database", "/database")]),
            },
            errors: ErrorShape {
                message: pointers(&["/status/reason", "/message", "/error"]),
                code: Some("/status/sql_state".into()),
                request_id: None,
                details: named(&[("vendor code", "/status/vendor_code")]),
            },
            rate_limit_wait: None,
            rate_limit: None,
        }
    }

    /// A starting point for other APIs: a JSON body with the refresh token
    /// in `refresh_token`, and an OAuth2-shaped answer.
    pub(crate) fn custom() -> Self {
        Self {
            name: "custom",
            request: json_request(Credential::field("refresh_token")),
            response: oauth2_response(),
            errors: ErrorShape {
                message: pointers(&["/error_description", "/message", "/error/message", "/error"]),
                code: Some("/code".into()),
                request_id: None,
                details: Vec::new(),
            },
            rate_limit_wait: None,
            rate_limit: None,
        }
    }
}

fn json_request(credential: Credential) -> RequestShape {
    RequestShape {
        method: Method::POST,
        format: BodyFormat::Json,
        credential,
        grant_type: None,
        fields: Vec::new(),
        carried: &[],
        client: None,
    }
}

/// RFC 6749 §5.1.
fn oauth2_response() -> ResponseShape {
    ResponseShape {
        success: None,
        access_token: "/access_token".into(),
        expires_in: Some("/expires_in".into()),
        refresh_token: Some("/refresh_token".into()),
        token_type: Some("/token_type".into()),
        keep: named(&[("scope", "/scope")]),
    }
}

/// RFC 6749 §5.2: `{error, error_description, error_uri}`.
fn oauth2_errors() -> ErrorShape {
    ErrorShape {
        message: pointers(&["/error_description", "/error"]),
        code: Some("/error".into()),
        request_id: None,
        details: Vec::new(),
    }
}

/// A JSON pointer from what a user wrote: a pointer as it is, or a bare
/// top-level field name, escaped per RFC 6901.
pub(crate) fn pointer(path: &str) -> String {
    if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{}", path.replace('~', "~0").replace('/', "~1"))
    }
}

#[cfg(test)]
mod tests {
    use super::pointer;

    #[test]
    fn pointers_and_bare_names_both_address_fields() {
        assert_eq!(pointer("/data/accessToken"), "/data/accessToken");
        assert_eq!(pointer("access_token"), "/access_token");
        assert_eq!(pointer("a~b"), "/a~0b");
    }
}
