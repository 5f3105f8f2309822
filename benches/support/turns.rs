//! What the two loopback throughput benches (`throughput`, over hyper-util,
//! and `grpc_throughput`, over tonic) share: their runtime, the size and
//! length of a turn, and the median they report.

use std::time::Duration;

/// Tasks sending back to back through the client being measured.
pub const WORKERS: usize = 16;

/// How long each client's turn lasts.
pub const TURN: Duration = Duration::from_millis(500);

/// Two worker threads, as on the machine the figures come from; or one
/// thread, for a repeatable schedule, when counting instructions.
pub fn runtime(counting: bool) -> tokio::runtime::Runtime {
    let mut builder = if counting {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(2);
        builder
    };
    builder.enable_all().build().expect("runtime")
}

/// The middle of `values`, which it sorts.
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
