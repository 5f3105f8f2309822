//! Runs one hot-path variant a fixed number of times, for instruction counts
//! under callgrind (repeatable on a noisy machine, unlike wall-clock time):
//! see `scripts/count-instructions.sh`.
//!
//! `cargo bench --bench hot_path_count -- VARIANT N`

mod support;

use std::time::Duration;

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let (Some(variant), Some(n)) = (args.next(), args.next()) else {
        let variants = support::hot_path_variants::VARIANTS.join(", ");
        eprintln!("usage: hot_path_count VARIANT N, VARIANT one of {variants}");
        std::process::exit(2);
    };
    let n: usize = n.parse().expect("N is a number");
    // Multi-thread, as a hyper client's runtime usually is: there the
    // layer's watcher task vouches for fresh tokens.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_time()
        .build()
        .expect("runtime");
    let _entered = runtime.enter();
    let settle = || runtime.block_on(tokio::time::sleep(Duration::from_millis(5)));
    support::hot_path_variants::run_variant(&variant, n, settle);
}
