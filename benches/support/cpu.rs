//! The process's CPU time, for benches that compare what bursts of work
//! cost the whole process.

use std::time::Duration;

/// CPU time the process's threads have run so far (Linux: the first field
/// of each thread's `schedstat`, in nanoseconds); `None` elsewhere. Where
/// servers run in the bench's process too, a burst's CPU time is
/// everything its requests cost, client and servers alike.
pub fn process_cpu() -> Option<Duration> {
    let mut total = 0u64;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        total += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(Duration::from_nanos(total))
}
