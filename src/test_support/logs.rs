//! What `tracing` writes on the test's thread, for tests of log lines.

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use tracing::subscriber::DefaultGuard;

/// Every line logged on this thread (and by tasks of a current-thread
/// runtime driven on it) while its guard lives, at INFO level and above.
#[derive(Clone, Default)]
pub(crate) struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    /// Captures from now until the guard is dropped.
    pub(crate) fn capture() -> (Self, DefaultGuard) {
        let logs = Logs::default();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer({
                let logs = logs.clone();
                move || logs.clone()
            })
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    /// The lines captured so far that contain `text`.
    pub(crate) fn lines_with(&self, text: &str) -> Vec<String> {
        let captured = self.0.lock().unwrap();
        String::from_utf8_lossy(&captured)
            .lines()
            .filter(|line| line.contains(text))
            .map(str::to_owned)
            .collect()
    }
}

impl Write for Logs {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
