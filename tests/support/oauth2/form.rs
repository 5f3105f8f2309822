//! Form-urlencoded bodies and credentials: the token request body (RFC
//! 6749 §3.2, with §3.1's rules) and the components of HTTP Basic client
//! credentials (§2.3.1).

use std::collections::HashMap;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::Request;

use super::super::server::content_type_is;
use super::Rejection;

/// The parameters of a token request.
pub(super) struct Form(HashMap<String, String>);

impl Form {
    /// Reads an `application/x-www-form-urlencoded` body.
    pub(super) async fn read(request: Request<Incoming>) -> Result<Self, Rejection> {
        if !content_type_is(request.headers(), "application/x-www-form-urlencoded") {
            return Err(Rejection::invalid_request(
                "Content-Type must be application/x-www-form-urlencoded",
            ));
        }
        let bytes = match request.into_body().collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(_) => return Err(Rejection::invalid_request("unreadable body")),
        };
        let mut params = HashMap::new();
        for (name, value) in form_urlencoded::parse(&bytes) {
            // §3.1: "Request and response parameters MUST NOT be included
            // more than once", and §5.2 names a repeated parameter as an
            // `invalid_request`.
            if params
                .insert(name.to_string(), value.into_owned())
                .is_some()
            {
                return Err(Rejection::invalid_request(format!(
                    "parameter {name} is repeated"
                )));
            }
        }
        Ok(Self(params))
    }

    /// The value of `name`. §3.1: "Parameters sent without a value MUST be
    /// treated as if they were omitted from the request."
    pub(super) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
}

/// Decodes one form-urlencoded component the way the body parser does:
/// `+` is a space, `%XX` a byte, and anything else (a stray `%` included)
/// stands for itself. Unlike parsing it as a form, a raw `=` or `&` in the
/// component stays in it.
pub(super) fn decode_component(component: &str) -> String {
    let bytes = component.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if bytes
                .get(i + 1..i + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) =>
            {
                decoded.push(hex(bytes[i + 1]) << 4 | hex(bytes[i + 2]));
                i += 3;
                continue;
            }
            b'+' => decoded.push(b' '),
            byte => decoded.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

/// The value of one ASCII hex digit.
fn hex(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        _ => digit - b'A' + 10,
    }
}
