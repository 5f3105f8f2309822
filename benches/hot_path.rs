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
//! Run with `cargo bench --bench hot_path`; compare ratios from one run.

mod support;

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};

use support::hot_path_variants::{run_variant, VARIANTS};

fn hot_path(c: &mut Criterion) {
    // As in real use, the layer lives on a tokio runtime, whose watcher task
    // marks tokens stale on time so fresh-token requests read no clock.
    // Multi-thread, as a hyper client's runtime usually is: there the
    // layer's watcher task vouches for fresh tokens.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_time()
        .build()
        .expect("runtime");
    let _entered = runtime.enter();
    let settle = || runtime.block_on(tokio::time::sleep(Duration::from_millis(5)));
    let mut group = c.benchmark_group("hot_path");
    for name in VARIANTS {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let started = std::time::Instant::now();
                run_variant(name, iters as usize, settle);
                started.elapsed()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
