//! The fuzz targets' committed seeds (`fuzz/seeds/<target>`), replayed
//! through the targets' own property checks (`fuzz/oracles/<target>.rs`) on
//! every test run. Fuzzing needs cargo-fuzz and a few minutes
//! (`scripts/fuzz.sh`); this keeps the properties and the code from
//! drifting apart in between: each change to how an answer is classified
//! must come with the matching change to the property it breaks. A
//! proptest also runs the answer properties over generated answers.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

#[path = "../fuzz/oracles/answer.rs"]
mod answer;
#[path = "../fuzz/oracles/retry_after.rs"]
mod retry_after;

/// Every seed of `target`, by name.
fn seeds(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(target);
    let mut seeds: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("a seed").path();
            let data = std::fs::read(&path).expect("a readable seed");
            (path, data)
        })
        .collect();
    seeds.sort();
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    seeds
}

/// Runs every seed of `target` through `check`, and fails naming each seed
/// whose properties do not hold.
fn replay(target: &str, check: fn(&[u8])) {
    let failed: Vec<String> = seeds(target)
        .into_iter()
        .filter_map(|(path, data)| {
            let outcome = catch_unwind(AssertUnwindSafe(|| check(&data)));
            outcome.err().map(|_| path.display().to_string())
        })
        .collect();
    assert!(failed.is_empty(), "properties broken by: {failed:?}");
}

#[test]
fn every_answer_seed_keeps_the_answer_properties() {
    replay("answer", answer::check);
}

/// What a committed `2xx` answer seed must decode to.
#[derive(Debug, Clone, Copy)]
enum Decodes {
    /// Tokens, with this access token.
    To(&'static str),
    /// A transient error whose message says this: the answer is
    /// malformed, refused, or over the cap.
    Not(&'static str),
}

/// Every committed `2xx` answer seed, by file name, with what it must
/// decode to. The properties let a `2xx` give tokens or a transient error,
/// so without this a decoding that failed on every answer would pass.
const SUCCESS_SEEDS: [(&str, Decodes); 12] = [
    (
        "client-credentials-rfc6749-4.4.3",
        Decodes::To("2YotnFZFEjr1zCsicMWpAA"),
    ),
    (
        "cognito-jwt-exp",
        Decodes::To(
            "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJqZG9lIiwiZXhwIjoxNzAwMDAwMzAwfQ.c2lnbmF0dXJl",
        ),
    ),
    ("cognito-ok", Decodes::To("eyJraWQiOiJxYz...")),
    ("custom-ok", Decodes::To("a2")),
    ("dynamosql-not-success", Decodes::Not("`success` is not true")),
    (
        "dynamosql-ok",
        Decodes::To(
            "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJqZG9lIiwiZXhwIjoxNzAwMDAwMzAwfQ.c2lnbmF0dXJl",
        ),
    ),
    ("oauth2-bearer-rotated", Decodes::To("2YotnFZFEjr1zCsicMWpAA")),
    ("oauth2-expires-in-string", Decodes::To("a")),
    ("oauth2-over-cap", Decodes::Not("larger than 32 bytes")),
    // RFC 6749's example names `token_type` "example": not a bearer token.
    ("oauth2-rfc6749-5.1", Decodes::Not("`token_type` is not Bearer")),
    ("ocient-ok", Decodes::To("eyJhb...")),
    (
        "custom-camel-case-token-quoted",
        Decodes::Not("no `access_token` string"),
    ),
];

#[test]
fn every_success_seed_decodes_to_what_it_must() {
    let mut wrong = Vec::new();
    let mut listed: Vec<&str> = SUCCESS_SEEDS.iter().map(|(name, _)| *name).collect();
    for (path, data) in seeds("answer") {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let (status, result) = answer::checked(&data);
        let expected = SUCCESS_SEEDS.iter().find(|(seed, _)| *seed == name);
        listed.retain(|seed| *seed != name);
        let Some(&(_, expected)) = expected else {
            if status.is_success() {
                wrong.push(format!("{name}: a {status} seed not in SUCCESS_SEEDS"));
            }
            continue;
        };
        let decoded = match (expected, &result) {
            (Decodes::To(token), Ok(tokens)) => tokens.access_token().expose() == token,
            (Decodes::Not(reason), Err(error)) => error.to_string().contains(reason),
            _ => false,
        };
        if !status.is_success() || !decoded {
            wrong.push(format!("{name} ({status}): {expected:?}, not {result:?}"));
        }
    }
    wrong.extend(listed.iter().map(|seed| format!("{seed}: no such seed")));
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn every_retry_after_seed_keeps_the_retry_after_properties() {
    replay("retry_after", retry_after::check);
}

/// The oracle lets go of bytes that are no header value (they never reach
/// a refresh): a committed seed that is none would check nothing.
#[test]
fn every_retry_after_seed_is_a_header_value_the_oracle_checks() {
    replay("retry_after", |data| assert!(retry_after::checked(data)));
}

/// Between fuzzing runs, the same properties over generated answers: every
/// dialect, the statuses the classes turn on, `Retry-After` in each form,
/// and bodies that are the dialect's JSON, almost JSON, or noise, under
/// caps and chunkings that cut them anywhere.
mod generated {
    use proptest::prelude::*;
    use tower_token_refresh::http::__fuzz::DIALECTS;

    const STATUSES: [u16; 14] = [
        200, 201, 204, 302, 400, 401, 403, 404, 408, 429, 500, 502, 503, 504,
    ];

    fn retry_after() -> impl Strategy<Value = Option<String>> {
        prop_oneof![
            Just(None),
            (0u64..100_000).prop_map(|s| Some(s.to_string())),
            Just(Some("Wed, 21 Oct 2015 07:28:00 GMT".to_owned())),
            Just(Some("Fri, 31 Dec 9999 23:59:59 GMT".to_owned())),
            "[ -~]{0,12}".prop_map(Some),
        ]
    }

    fn body() -> impl Strategy<Value = Vec<u8>> {
        let token = "[A-Za-z0-9._-]{0,24}";
        prop_oneof![
            (token, token, 0i64..100_000).prop_map(|(a, r, e)| format!(
                r#"{{"access_token":"{a}","refresh_token":"{r}","token_type":"Bearer","expires_in":{e}}}"#
            )
            .into_bytes()),
            (token, 0i64..100_000).prop_map(|(a, e)| format!(
                r#"{{"success":true,"data":{{"accessToken":"{a}","expiresIn":{e},"tokenType":"Bearer"}}}}"#
            )
            .into_bytes()),
            (token, token).prop_map(|(a, r)| format!(
                r#"{{"accessToken":"{a}","refreshToken":"{r}","expiresIn":3600}}"#
            )
            .into_bytes()),
            "[a-z_]{0,16}".prop_map(|code| format!(
                r#"{{"error":"{code}","error_description":"no","message":"no"}}"#
            )
            .into_bytes()),
            proptest::collection::vec(any::<u8>(), 0..256),
        ]
    }

    /// The text form `fuzz/oracles/answer.rs` parses.
    fn input(
        dialect: &str,
        status: u16,
        cap: usize,
        chunk: usize,
        retry_after: Option<String>,
        body: &[u8],
    ) -> Vec<u8> {
        let mut data = format!("{dialect} {status} {cap} {chunk}\n").into_bytes();
        if let Some(value) = retry_after {
            data.extend_from_slice(format!("Retry-After: {value}\n").as_bytes());
        }
        data.extend_from_slice(b"\n");
        data.extend_from_slice(body);
        data
    }

    proptest! {
        #[test]
        fn every_generated_answer_keeps_the_answer_properties(
            dialect in proptest::sample::select(DIALECTS.to_vec()),
            status in proptest::sample::select(STATUSES.to_vec()),
            cap in prop_oneof![Just(65_536usize), 0usize..300],
            chunk in 0usize..40,
            retry_after in retry_after(),
            body in body(),
        ) {
            super::answer::check(&input(dialect, status, cap, chunk, retry_after, &body));
        }
    }
}
