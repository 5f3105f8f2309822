//! The process's CPU time, for benches that compare what bursts of work
//! cost the whole process.

use std::time::Duration;

/// CPU time the process has run so far, every thread's, those that have
/// exited included (`CLOCK_PROCESS_CPUTIME_ID`). Where servers run in the
/// bench's process too, a burst's CPU time is everything its requests
/// cost, client and servers alike. Read through the clock rather than
/// summed from each thread's `schedstat`: found in review, those lose the
/// time of threads that exit and lag a scheduler tick for threads that
/// are running.
pub fn process_cpu() -> Duration {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    let seconds = u64::try_from(now.tv_sec).expect("CPU time since the process started");
    let nanos = u32::try_from(now.tv_nsec).expect("nanoseconds of a second");
    Duration::new(seconds, nanos)
}
