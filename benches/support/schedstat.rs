//! The calling thread's own CPU time, as the Linux scheduler accounts it.
//!
//! On a shared machine a thread can spend part of a timed chunk waiting in
//! the run queue while another process has its core. Wall-clock time
//! counts that wait; the time the thread actually ran does not, so a ratio
//! of CPU times shows what the code costs when other processes come and
//! go. `/proc/thread-self/schedstat` gives both, in nanoseconds, without
//! `unsafe` or a dependency.

use std::time::Duration;

/// Time on a CPU and time waiting in the run queue, since the thread began.
#[derive(Clone, Copy, Debug, Default)]
pub struct SchedStat {
    pub on_cpu: Duration,
    pub waiting: Duration,
}

impl SchedStat {
    /// This thread's figures, or `None` where the kernel does not give
    /// them (not Linux, or scheduler statistics compiled out).
    pub fn now() -> Option<Self> {
        let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
        let mut fields = text.split_ascii_whitespace().map(str::parse::<u64>);
        let on_cpu = fields.next()?.ok()?;
        let waiting = fields.next()?.ok()?;
        Some(Self {
            on_cpu: Duration::from_nanos(on_cpu),
            waiting: Duration::from_nanos(waiting),
        })
    }

    /// What this thread used since `earlier`, read on this thread.
    pub fn since(earlier: Option<Self>) -> Option<Self> {
        let (now, earlier) = (Self::now()?, earlier?);
        Some(Self {
            on_cpu: now.on_cpu.saturating_sub(earlier.on_cpu),
            waiting: now.waiting.saturating_sub(earlier.waiting),
        })
    }

    /// The sum of two threads' figures.
    pub fn plus(self, other: Self) -> Self {
        Self {
            on_cpu: self.on_cpu + other.on_cpu,
            waiting: self.waiting + other.waiting,
        }
    }
}
