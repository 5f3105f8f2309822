//! JSON request bodies, and JSON responses with errors in the NestJS shape
//! seed 002 documents: `{"statusCode": 401, "message": "…", "error":
//! "Unauthorized"}`.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value};

use super::server::{content_type_is, ResBody};

/// Why a request body is not the JSON object an endpoint takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    /// The `Content-Type` is missing or not `application/json`.
    ContentType,
    /// The body could not be read to its end.
    Unreadable,
    /// The body is not a JSON object.
    NotAnObject,
}

impl BodyError {
    /// What to tell the client.
    pub fn message(self) -> &'static str {
        match self {
            Self::ContentType => "Content-Type must be application/json",
            Self::Unreadable => "Unreadable body",
            Self::NotAnObject => "Body must be a JSON object",
        }
    }
}

/// The whole body of a request declared `application/json` (parameters
/// such as `charset` allowed), not yet parsed.
pub async fn read_body(request: Request<Incoming>) -> Result<Bytes, BodyError> {
    if !content_type_is(request.headers(), "application/json") {
        return Err(BodyError::ContentType);
    }
    match request.into_body().collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(_) => Err(BodyError::Unreadable),
    }
}

/// `bytes` as a JSON object.
pub fn parse_object(bytes: &[u8]) -> Result<Value, BodyError> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(value) if value.is_object() => Ok(value),
        _ => Err(BodyError::NotAnObject),
    }
}

/// The request's body as a JSON object.
pub async fn read_object(request: Request<Incoming>) -> Result<Value, BodyError> {
    parse_object(&read_body(request).await?)
}

/// `status` with `value` as an `application/json` body.
pub fn response(status: StatusCode, value: &Value) -> Response<ResBody> {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/json; charset=utf-8")
        .body(Full::new(Bytes::from(value.to_string())))
        .expect("valid response")
}

/// An error response: `{statusCode, message, error}`, where `error` is the
/// status's reason phrase ("Unauthorized", "Too Many Requests", …).
pub fn error(status: StatusCode, message: &str) -> Response<ResBody> {
    response(
        status,
        &json!({
            "statusCode": status.as_u16(),
            "message": message,
            "error": status.canonical_reason().unwrap_or("Error"),
        }),
    )
}
