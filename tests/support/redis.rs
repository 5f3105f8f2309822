//! A real `redis-server` on a free loopback port, one per test.
//!
//! [`RedisServer::start`] finds `redis-server` on `PATH` and returns `None`
//! (after saying so loudly on stderr) when it is missing, so a test can
//! skip; under CI (`CI` set) a missing server fails the test instead, since
//! `.ci/run` installs the Debian package `redis-server`.
//!
//! ```ignore
//! let Some(server) = RedisServer::start() else { return };
//! let store = RedisStore::open(&server.url(), "test").unwrap();
//! ```
//!
//! The server keeps nothing on disk (`--save '' --appendonly no`): a
//! [restart](RedisServer::restart) starts empty, like a Redis that lost its
//! data. Talking to it needs no Redis client: readiness is a raw
//! `INFO server` whose `process_id` is the child's, so that another test's
//! server that took the port meanwhile is never mistaken for this one.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// How long a started server may take to answer `PING`.
const READY_LIMIT: Duration = Duration::from_secs(5);

/// A `redis-server` child process, killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    binary: PathBuf,
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl RedisServer {
    /// A new server on a free port, ready to answer; `None` (test skipped)
    /// when `redis-server` is not installed and `CI` is unset.
    ///
    /// # Panics
    ///
    /// When `redis-server` is missing under CI, or does not start.
    pub fn start() -> Option<Self> {
        let binary = find_binary()?;
        // Between freeing the port and the server binding it, another
        // process may take it: the server then exits, and we try another.
        let mut failures = Vec::new();
        for _ in 0..3 {
            let port = free_port();
            let dir = std::env::temp_dir().join(format!(
                "ttr-redis-{}-{port}-{:08x}",
                std::process::id(),
                fastrand::u32(..)
            ));
            fs::create_dir_all(&dir).expect("create the redis-server directory");
            let mut server = Self {
                binary: binary.clone(),
                port,
                dir,
                child: None,
            };
            match server.spawn() {
                Ok(()) => return Some(server),
                Err(failure) => failures.push(failure),
            }
        }
        panic!("redis-server did not start:\n{}", failures.join("\n"));
    }

    /// `redis://127.0.0.1:{port}/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The port the server listens on (again after a restart).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server now (as a crash would: no shutdown, connections
    /// reset) and waits for it to exit. Does nothing if it is stopped.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server if it runs, and starts a new, empty one on the same
    /// port.
    ///
    /// # Panics
    ///
    /// When the new server does not answer within 5 s.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(failure) = self.spawn() {
            panic!(
                "redis-server did not restart on port {}: {failure}",
                self.port
            );
        }
    }

    /// Freezes the server (`SIGSTOP`): the kernel still accepts connections
    /// for it, but nothing answers, as with a hung server or a black-holed
    /// network.
    ///
    /// # Panics
    ///
    /// When the server is stopped or cannot be signalled.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Lets a [frozen](Self::freeze) server run again (`SIGCONT`).
    ///
    /// # Panics
    ///
    /// When the server is stopped or cannot be signalled.
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self
            .child
            .as_ref()
            .expect("redis-server is not running")
            .id();
        let status = Command::new("kill")
            .arg(signal)
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} {pid}: {status}");
    }

    /// Whether the server runs and answers on its port.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => {
                matches!(child.try_wait(), Ok(None)) && answers_as(self.port, child.id())
            }
            None => false,
        }
    }

    /// Starts the child on `self.port` and waits until it answers.
    fn spawn(&mut self) -> Result<(), String> {
        let log_path = self.dir.join("redis.log");
        let log = File::create(&log_path).map_err(|e| format!("creating {log_path:?}: {e}"))?;
        let mut child = Command::new(&self.binary)
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawning {:?}: {e}", self.binary))?;
        let deadline = Instant::now() + READY_LIMIT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "port {}: redis-server exited ({status}):\n{}",
                    self.port,
                    read_log(&log_path)
                ));
            }
            // The port was free a moment ago, but a restart finds it as
            // the last server left it, and a parallel test's server may
            // have taken it since: only this child's answer will do.
            if answers_as(self.port, child.id()) {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "port {}: no answer from pid {} within {READY_LIMIT:?}:\n{}",
                    self.port,
                    child.id(),
                    read_log(&log_path)
                ));
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// `redis-server` on `PATH`, or `None` after a loud message (panics under
/// CI instead).
fn find_binary() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("redis-server"))
            .find(|candidate| candidate.is_file())
    });
    if found.is_none() {
        if std::env::var_os("CI").is_some() {
            panic!(
                "redis-server is not on PATH, but CI is set: .ci/run should have installed \
                 the Debian package `redis-server` (apt-get install redis-server)"
            );
        }
        eprintln!(
            "\n********************************************************************\n\
             SKIPPED: redis-server is not on PATH, so the Redis store tests did\n\
             not run. Install the Debian package `redis-server`:\n\
             \n    apt-get install redis-server\n\
             ********************************************************************\n"
        );
    }
    found
}

/// A loopback port nobody listened on a moment ago.
fn free_port() -> u16 {
    TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .and_then(|listener| listener.local_addr())
        .expect("bind a free loopback port")
        .port()
}

/// Whether the Redis server answering on `port` is the process `pid`, as
/// its `INFO server` reply says.
fn answers_as(port: u16, pid: u32) -> bool {
    server_pid(port) == Some(pid)
}

/// The `process_id` in the `INFO server` reply of whatever answers on
/// `port`; `None` when nothing answers, or not as Redis does.
fn server_pid(port: u16) -> Option<u32> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .ok()?;
    stream.write_all(b"INFO server\r\n").ok()?;
    // A bulk string: `$<length>\r\n<text>\r\n`.
    let mut reply = BufReader::new(stream);
    let mut header = String::new();
    reply.read_line(&mut header).ok()?;
    let length: usize = header.strip_prefix('$')?.trim_end().parse().ok()?;
    let mut text = vec![0; length];
    reply.read_exact(&mut text).ok()?;
    String::from_utf8(text)
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix("process_id:"))?
        .trim()
        .parse()
        .ok()
}

fn read_log(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| format!("(no log: {e})"))
}
