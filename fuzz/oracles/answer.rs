//! A refresh endpoint's answer, as every dialect reads it: status, headers
//! and body in, `Result<TokenSet, RefreshError>` out, through the same code
//! a refresh runs (body cap included).
//!
//! The input is text, so seeds stay readable (see `fuzz/seeds/answer`):
//!
//! ```text
//! <dialect> <status> [<body cap> [<chunk size>]]
//! <Header-Name>: <value>
//!
//! <body>
//! ```
//!
//! An unknown dialect is picked from its name's bytes; a missing or invalid
//! status is 200; the cap defaults to 64 KiB; a chunk size of 0 (the
//! default) sends the body as one frame. A blank line right after the
//! first line means no headers; without a blank line at all, everything
//! after the first line is the body.
//!
//! Properties: no panic; a `2xx` body longer than the cap never gives
//! tokens; tokens only come from a `2xx` and are never empty; a `2xx`
//! without usable tokens is a transient error, or a terminal one when it
//! names a token type other than Bearer; a failure
//! status gives an error of its class carrying that status, whatever the
//! length of its body; a `429` waits what its `Retry-After` asks for, or
//! without one what the dialect's documented limit implies; a `503` with a
//! `Retry-After` is a rate limit too; no error's `Display` or `Debug`
//! quotes a token from the answer, nor the secret the request carried
//! (`__fuzz::SENT_SECRET`), which a failure's JSON body echoes in every
//! string (its encoded forms are left to the unit tests and the fuzzer).
//!
//! Shared by the fuzz target (`fuzz/fuzz_targets/answer.rs`) and
//! `tests/fuzz_seeds.rs`, which replays the committed seeds through
//! [`check`] on every test run, so these properties cannot drift from the
//! code unnoticed.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{Response, StatusCode};
use serde_json::Value;
use tower_token_refresh::http::{__fuzz, DEFAULT_BODY_LIMIT};
use tower_token_refresh::{FailureClass, RefreshError, TokenSet};

/// Replaces the tokens of a successful answer, to see whether an error
/// quotes them. Nothing the crate prints looks like it.
const CANARY: &str = "\u{2603}leaked-token\u{2603}";

struct Input<'a> {
    dialect: &'static str,
    status: StatusCode,
    cap: usize,
    chunk: usize,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: &'a [u8],
}

/// Runs one input and panics if a property does not hold.
pub fn check(data: &[u8]) {
    let _ = checked(data);
}

/// [`check`], then the input's status and what it decoded to. The
/// properties leave a `2xx` free to give tokens or a transient error (an
/// answer may not decode); `tests/fuzz_seeds.rs` holds each committed
/// success seed to the one it must give.
pub fn checked(data: &[u8]) -> (StatusCode, Result<TokenSet, RefreshError>) {
    let input = Input::parse(data);
    let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let result = input.run(input.body, now);
    check_result(&input, input.body, &result, now);
    if let Some(body) = with_canaries(&input) {
        if let Err(error) = input.run(&body, now) {
            let shown = format!("{error} {error:?}");
            assert!(!shown.contains(CANARY), "a token leaked: {shown}");
        }
    }
    if let Some(body) = echoing_the_secret(&input) {
        let result = input.run(&body, now);
        check_result(&input, &body, &result, now);
        assert_no_sent_secret(&result);
    }
    assert_no_sent_secret(&result);
    (input.status, result)
}

fn assert_no_sent_secret(result: &Result<TokenSet, RefreshError>) {
    if let Err(error) = result {
        let shown = format!("{error} {error:?}");
        assert!(
            !shown.contains(__fuzz::SENT_SECRET),
            "the sent secret leaked: {shown}"
        );
    }
}

/// The answer's JSON body with every string in it echoing the secret the
/// request carried, as a server quoting the request back would (a
/// success's too: one that cannot be used is quoted as a failure is).
fn echoing_the_secret(input: &Input<'_>) -> Option<Vec<u8>> {
    fn echo(value: &mut Value) {
        match value {
            Value::String(text) => *text = format!("{text} {} {text}", __fuzz::SENT_SECRET),
            Value::Array(items) => items.iter_mut().for_each(echo),
            Value::Object(fields) => fields.values_mut().for_each(echo),
            _ => {}
        }
    }
    let mut json: Value = serde_json::from_slice(input.body).ok()?;
    echo(&mut json);
    serde_json::to_vec(&json).ok()
}

impl<'a> Input<'a> {
    fn parse(data: &'a [u8]) -> Self {
        let (line, rest) = split_line(data);
        let line = String::from_utf8_lossy(line);
        let mut words = line.split_ascii_whitespace();
        let name = words.next().unwrap_or("");
        let dialect = __fuzz::DIALECTS
            .into_iter()
            .find(|d| *d == name)
            .unwrap_or_else(|| {
                let pick = name.bytes().map(usize::from).sum::<usize>();
                __fuzz::DIALECTS[pick % __fuzz::DIALECTS.len()]
            });
        let status = words
            .next()
            .and_then(|w| w.parse::<u16>().ok())
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::OK);
        let cap = words
            .next()
            .and_then(|w| w.parse::<usize>().ok())
            .map_or(DEFAULT_BODY_LIMIT, |c| c.min(1 << 20));
        let chunk = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);

        let (head, body) = if let Some(body) = rest.strip_prefix(b"\n") {
            (&rest[..0], body)
        } else {
            match find(rest, b"\n\n") {
                Some(at) => (&rest[..at], &rest[at + 2..]),
                None => (&rest[..0], rest),
            }
        };
        let headers = head
            .split(|b| *b == b'\n')
            .filter_map(|line| {
                let colon = line.iter().position(|b| *b == b':')?;
                let name = HeaderName::from_bytes(&line[..colon]).ok()?;
                let value = HeaderValue::from_bytes(line[colon + 1..].trim_ascii()).ok()?;
                Some((name, value))
            })
            .collect();
        Self {
            dialect,
            status,
            cap,
            chunk,
            headers,
            body,
        }
    }

    fn run(&self, body: &[u8], now: SystemTime) -> Result<TokenSet, RefreshError> {
        let mut head = Response::new(());
        *head.status_mut() = self.status;
        for (name, value) in &self.headers {
            head.headers_mut().append(name.clone(), value.clone());
        }
        let chunks = match self.chunk {
            0 => vec![Bytes::copy_from_slice(body)],
            n => body.chunks(n).map(Bytes::copy_from_slice).collect(),
        };
        __fuzz::answer(self.dialect, self.cap, head, chunks, now)
    }
}

/// Whether `body` names, where `dialect` reads a token's kind, one other
/// than Bearer (in any case), as RFC 6749 §7.1 lets an issuer answer.
fn names_another_token_type(dialect: &str, body: &[u8]) -> bool {
    let pointer = match dialect {
        "oauth2" | "client_credentials" | "custom" => "/token_type",
        "dynamosql" => "/data/tokenType",
        _ => return false,
    };
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    let Ok(json) = serde_json::from_slice::<Value>(body) else {
        return false;
    };
    json.pointer(pointer)
        .and_then(Value::as_str)
        .is_some_and(|kind| !kind.eq_ignore_ascii_case("bearer"))
}

fn check_result(
    input: &Input<'_>,
    body: &[u8],
    result: &Result<TokenSet, RefreshError>,
    now: SystemTime,
) {
    // Formatting must not panic either.
    let shown = match result {
        Ok(tokens) => format!("{tokens:?}"),
        Err(error) => format!("{error} {error:?}"),
    };
    let status = input.status;
    let over_cap = body.len() > input.cap;
    match result {
        Ok(tokens) => {
            assert!(!over_cap, "tokens from a body over the cap: {shown}");
            assert!(status.is_success(), "tokens from a {status}");
            assert!(!tokens.access_token().expose().is_empty());
        }
        Err(error) if status.is_success() => {
            // Transient, but for a token of a kind other than Bearer: the
            // issuer would answer the same way again.
            let terminal_allowed = names_another_token_type(input.dialect, body);
            assert!(
                error.is_transient() || (error.is_terminal() && terminal_allowed),
                "an undecodable answer: {shown}"
            );
            if over_cap {
                assert_eq!(error.status(), None, "an oversized answer: {shown}");
            }
        }
        Err(error) => {
            // The status and headers decide the class; an oversized body
            // only loses the server's message.
            assert_eq!(error.status(), Some(status.as_u16()), "{shown}");
            // A date counts from the answer's own `Date`, if it has one.
            let head = head_of(input);
            let date = head.get(http::header::DATE).and_then(|d| d.to_str().ok());
            let clock = date
                .and_then(|d| httpdate::parse_http_date(d).ok())
                .unwrap_or(now);
            let retry_after = __fuzz::retry_after(&head, clock);
            let expected = if status == StatusCode::TOO_MANY_REQUESTS {
                let retry_after = retry_after.or(documented_wait(input.dialect));
                RefreshError::rate_limited(retry_after).class()
            } else if status == StatusCode::SERVICE_UNAVAILABLE && retry_after.is_some() {
                RefreshError::rate_limited(retry_after).class()
            } else if status.is_client_error() && status != StatusCode::REQUEST_TIMEOUT {
                FailureClass::Terminal
            } else {
                FailureClass::Transient
            };
            assert_eq!(error.class(), expected, "{status}: {shown}");
        }
    }
}

/// The wait after a `429` without `Retry-After` that an endpoint's document
/// implies: seed 002's Cognito endpoint allows 5 refreshes a minute, so a
/// `429` says the last minute was full: a minute; the others name no limit.
fn documented_wait(dialect: &str) -> Option<Duration> {
    (dialect == "cognito").then_some(Duration::from_secs(60))
}

fn head_of(input: &Input<'_>) -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    for (name, value) in &input.headers {
        headers.append(name.clone(), value.clone());
    }
    headers
}

/// The body with every token string of the dialect replaced by
/// [`CANARY`], when it is a `2xx` JSON answer within the cap that has one.
fn with_canaries(input: &Input<'_>) -> Option<Vec<u8>> {
    if !input.status.is_success() || input.body.len() > input.cap {
        return None;
    }
    // The fuzzer may learn the canary from this very comparison and put it
    // in a field that is quoted on purpose (`token_type`): not a leak.
    if find(input.body, CANARY.as_bytes()).is_some() {
        return None;
    }
    let mut json: Value = serde_json::from_slice(input.body).ok()?;
    // Every string but what the answer says went wrong may be a token,
    // under whatever name, and what it says may quote one.
    let said = __fuzz::said_pointers(input.dialect);
    let mut others = Vec::new();
    canary_all_but(&mut json, &mut String::new(), &said, &mut others);
    others.retain(|other| !other.trim().is_empty());
    for pointer in &said {
        if let Some(Value::String(text)) = json.pointer_mut(pointer) {
            for other in &others {
                *text = text.replace(other.as_str(), CANARY);
            }
        }
    }
    let replaced = !others.is_empty();
    let body = serde_json::to_vec(&json).ok()?;
    // Only within the cap, or the cap error is all there is to see.
    (replaced && body.len() <= input.cap).then_some(body)
}

/// Puts [`CANARY`] in place of every string in `value` (at `pointer`)
/// but those at a `said` pointer, keeping the strings it replaced.
fn canary_all_but(
    value: &mut Value,
    pointer: &mut String,
    said: &[String],
    others: &mut Vec<String>,
) {
    let mut visit = |key: &str, value: &mut Value, pointer: &mut String| {
        let len = pointer.len();
        pointer.push('/');
        pointer.push_str(&key.replace('~', "~0").replace('/', "~1"));
        canary_all_but(value, pointer, said, others);
        pointer.truncate(len);
    };
    match value {
        Value::String(text) if !said.iter().any(|p| p == pointer) => {
            others.push(std::mem::replace(text, CANARY.to_owned()));
        }
        Value::Object(fields) => {
            for (key, value) in fields.iter_mut() {
                visit(key, value, pointer);
            }
        }
        Value::Array(items) => {
            for (i, value) in items.iter_mut().enumerate() {
                visit(&i.to_string(), value, pointer);
            }
        }
        _ => {}
    }
}

fn split_line(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|b| *b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[]),
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
