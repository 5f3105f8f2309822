//! The fuzz targets' committed seeds (`fuzz/seeds/<target>`), replayed
//! through the targets' own property checks (`fuzz/oracles/<target>.rs`) on
//! every test run. Fuzzing needs cargo-fuzz and a few minutes
//! (`scripts/fuzz.sh`); this keeps the properties and the code from
//! drifting apart in between: each change to how an answer is classified
//! must come with the matching change to the property it breaks.

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
