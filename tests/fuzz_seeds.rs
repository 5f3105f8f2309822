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

#[test]
fn every_retry_after_seed_keeps_the_retry_after_properties() {
    replay("retry_after", retry_after::check);
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
