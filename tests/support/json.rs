//! JSON responses, with errors in the NestJS shape the seed documents:
//! `{"statusCode": 401, "message": "…", "error": "Unauthorized"}`.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::CONTENT_TYPE;
use hyper::{Response, StatusCode};
use serde_json::{json, Value};

use super::server::ResBody;

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
