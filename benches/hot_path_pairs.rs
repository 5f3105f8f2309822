//! The hot path's ratios, measured so that the machine's drift cancels out.
//!
//! On a shared virtual machine the speed of the same code drifts by up to
//! 1.5× over tens of seconds, and criterion measures one variant after
//! another: a ratio of two of its medians, taken seconds apart, carries
//! that drift. Here the two variants of a pair run in alternating chunks of
//! a few milliseconds (A B B A …, so a steady drift hits both alike), and
//! the ratio is the median over rounds of A's time over B's in the same
//! round. Scaling pairs one variant on one thread with itself on two;
//! `clone` lines pair a variant sent through a clone made per request
//! (`client.clone().oneshot(request)`) with itself sent through each
//! thread's own clone, both on two threads.
//!
//! `cargo bench --bench hot_path_pairs` prints one line per pair, read by
//! `scripts/performance.py`. `PAIRS_ROUNDS` (default 41) and `PAIRS_CHUNK`
//! (requests per thread per chunk, default 20000) tune it. Absolute times
//! come from the criterion bench `hot_path`.

#[path = "support/env.rs"]
mod env;
mod support;

use support::hot_path_variants::{run_variant, runtime, settle, Clones};

/// Compared in each thread count: (variant, baseline).
const PAIRS: [(&str, &str); 10] = [
    ("token_refresh", "static_header_with_head_copy"),
    ("token_refresh", "rwlock"),
    ("token_refresh", "mutex"),
    ("token_refresh_no_retry", "static_header"),
    ("token_refresh_no_retry", "static_header_with_head_copy"),
    ("token_refresh_no_retry", "rwlock"),
    ("token_refresh_no_retry", "mutex"),
    ("static_header_with_head_copy", "static_header"),
    ("rwlock", "static_header"),
    ("mutex", "static_header"),
];

fn main() {
    // An argument (other than cargo's `--bench`) keeps only the lines that
    // name it, e.g. `cargo bench --bench hot_path_pairs -- token_refresh`.
    let only = std::env::args().skip(1).find(|arg| arg != "--bench");
    let wanted = |label: &str| only.as_deref().is_none_or(|only| label.contains(only));
    let rounds = env::number("PAIRS_ROUNDS", 41);
    let chunk = env::number("PAIRS_CHUNK", 20_000);
    let runtime = runtime();
    let _entered = runtime.enter();
    // Wall-clock time per request of `name` on `threads` threads.
    let per_request_through = |name: &str, threads: usize, clones: Clones| {
        let elapsed = run_variant(name, chunk, threads, clones, || settle(&runtime));
        elapsed.as_secs_f64() / (chunk * threads) as f64
    };
    let per_request =
        |name: &str, threads: usize| per_request_through(name, threads, Clones::PerThread);
    for threads in [1, 2] {
        for (variant, baseline) in PAIRS {
            let label = format!("pair threads={threads} variant={variant} baseline={baseline}");
            if !wanted(&label) {
                continue;
            }
            let ratios = paired(
                rounds,
                || per_request(variant, threads),
                || per_request(baseline, threads),
            );
            print_line(&label, ratios, chunk);
        }
    }
    // Each variant against itself, `a` over `b`.
    let each_variant = |kind: &str, a: &dyn Fn(&str) -> f64, b: &dyn Fn(&str) -> f64| {
        for variant in support::hot_path_variants::VARIANTS {
            let label = format!("{kind} variant={variant}");
            if wanted(&label) {
                print_line(&label, paired(rounds, || a(variant), || b(variant)), chunk);
            }
        }
    };
    each_variant("scaling", &|v| per_request(v, 1), &|v| per_request(v, 2));
    each_variant(
        "clone threads=2",
        &|v| per_request_through(v, 2, Clones::PerRequest),
        &|v| per_request(v, 2),
    );
}

/// A's time over B's, `rounds` times, running A first in even rounds and
/// B first in odd ones.
fn paired(rounds: usize, a: impl Fn() -> f64, b: impl Fn() -> f64) -> Vec<f64> {
    (0..rounds)
        .map(|round| {
            if round % 2 == 0 {
                let a = a();
                a / b()
            } else {
                let b = b();
                a() / b
            }
        })
        .collect()
}

fn print_line(label: &str, mut ratios: Vec<f64>, chunk: usize) {
    ratios.sort_by(f64::total_cmp);
    let at = |q: f64| ratios[((ratios.len() - 1) as f64 * q).round() as usize];
    println!(
        "{label} median={:.4} q1={:.4} q3={:.4} rounds={} chunk={chunk}",
        at(0.5),
        at(0.25),
        at(0.75),
        ratios.len()
    );
}
