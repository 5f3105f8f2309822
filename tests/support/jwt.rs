//! Unsigned JWTs, as an identity server's answer might carry: the layer
//! reads their `exp` (without verifying anything) when an answer has no
//! `expires_in`.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Value};

/// An unsigned JWT whose `exp` is `at` (whole seconds).
pub fn expiring_at(at: SystemTime) -> String {
    let exp = at.duration_since(UNIX_EPOCH).unwrap().as_secs();
    let part = |v: Value| URL_SAFE_NO_PAD.encode(v.to_string());
    format!(
        "{}.{}.c2lnbmF0dXJl",
        part(json!({"alg": "RS256", "typ": "JWT"})),
        part(json!({"sub": "svc", "exp": exp}))
    )
}
