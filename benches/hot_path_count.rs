//! Runs one hot-path variant a fixed number of times, for instruction counts
//! under callgrind (repeatable on a noisy machine, unlike wall-clock time):
//! see `scripts/count-instructions.sh`.
//!
//! `cargo bench --bench hot_path_count -- VARIANT N [THREADS [clone]]`
//! (with THREADS, each of that many threads sends N requests: for quick
//! wall-clock checks of scaling, not for callgrind; with `clone`, each
//! request goes through a clone of the service made for it, as
//! `client.clone().oneshot(request)` does).

mod support;

use support::hot_path_variants::{runtime, settle, Clones};

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let (Some(variant), Some(n)) = (args.next(), args.next()) else {
        let variants = support::hot_path_variants::VARIANTS.join(", ");
        eprintln!("usage: hot_path_count VARIANT N, VARIANT one of {variants}");
        std::process::exit(2);
    };
    let n: usize = n.parse().expect("N is a number");
    let threads: usize = args
        .next()
        .map_or(1, |t| t.parse().expect("THREADS is a number"));
    let clones = match args.next().as_deref() {
        None => Clones::PerThread,
        Some("clone") => Clones::PerRequest,
        Some(other) => panic!("the fourth argument is `clone` or nothing, not {other:?}"),
    };
    let runtime = runtime();
    let _entered = runtime.enter();
    let settle = || settle(&runtime);
    support::hot_path_variants::run_variant(&variant, n, threads, clones, settle);
}
