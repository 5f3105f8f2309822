//! The hot path: one request with a fresh token through `ServiceBuilder`, a
//! token layer and a no-op inner service, against baselines in the same run.
//!
//! - `bare`: the inner service alone.
//! - `static_header`: tower-http's `AddAuthorization::bearer`, a precomputed
//!   header: the limit for header injection.
//! - `static_header_with_head_copy`: the same plus a copy of the request head
//!   (method, URI, version, headers, extensions) kept until the response: the
//!   floor for any layer able to retry.
//! - `rwlock` / `mutex`: hand-written layers reading a token behind a lock
//!   and formatting the header per request, as most hand-written code does.
//! - `token_refresh`, `token_refresh_no_retry`: this crate with reactive
//!   retry on (the default) and off.
//!
//! Group `hot_path` runs each variant on one thread. Group
//! `hot_path_2_threads` runs it on two threads at once, each with a clone of
//! one service (one layer, one token state): its time is wall-clock time per
//! request over both threads, so `hot_path / hot_path_2_threads` is the
//! scaling (2.0 is perfect on two free cores).
//!
//! Run with `cargo bench --bench hot_path`; compare ratios from one run.

mod support;

use criterion::{criterion_group, criterion_main, Criterion};

use support::hot_path_variants::{run_variant, runtime, settle, Clones, VARIANTS};

fn hot_path(c: &mut Criterion) {
    let runtime = runtime();
    let _entered = runtime.enter();
    for (group, threads) in [("hot_path", 1), ("hot_path_2_threads", 2)] {
        let mut group = c.benchmark_group(group);
        for name in VARIANTS {
            group.bench_function(name, |b| {
                b.iter_custom(|iters| {
                    let settle = || settle(&runtime);
                    // Each thread sent `iters` requests.
                    run_variant(name, iters as usize, threads, Clones::PerThread, settle)
                        / threads as u32
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
