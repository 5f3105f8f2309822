//! A TCP front for a fixture server that a test switches between
//! forwarding and misbehaving, to inject faults below HTTP: refusing
//! connections, accepting and never answering (a black hole), resetting
//! them, or answering with raw bytes of the test's choosing (truncated,
//! not JSON, huge, late).
//!
//! Every switch closes the connections already open, so a pooled
//! connection cannot carry a client past the fault. Accepted connections
//! are logged with their time: a client that opens one connection per
//! call (no pooling) can have its calls counted and spaced here, at the
//! server side.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// Raw HTTP/1.1 response bytes, made afresh for each connection.
pub type Respond = Arc<dyn Fn() -> Vec<u8> + Send + Sync>;

/// What the front does with each connection.
#[derive(Clone)]
pub enum Mode {
    /// Relays bytes to and from the server behind.
    Forward,
    /// No listener on the port (which stays the front's): connecting is
    /// refused.
    Refuse,
    /// Accepts, reads everything, never answers.
    BlackHole,
    /// Accepts, waits for the request, and resets the connection.
    Reset,
    /// Reads one request, waits `delay`, writes the bytes and closes.
    Answer { respond: Respond, delay: Duration },
}

impl Mode {
    /// [`Mode::Answer`] with no delay.
    pub fn answer(respond: impl Fn() -> Vec<u8> + Send + Sync + 'static) -> Self {
        Self::Answer {
            respond: Arc::new(respond),
            delay: Duration::ZERO,
        }
    }
}

/// A running front; stops, with its connections, when dropped.
pub struct Front {
    addr: SocketAddr,
    upstream: SocketAddr,
    accepted: Arc<Mutex<Vec<Instant>>>,
    accept: Mutex<Option<JoinHandle<()>>>,
    /// Bound to the front's port, never listening, for as long as the front
    /// runs. A connection to a port with no listener is refused even so,
    /// but the kernel gives the port to no one who asks for a free one:
    /// while refusing, the front keeps its port from a test running beside
    /// it, which would otherwise get connections meant for the front, or
    /// keep it from listening again.
    _reserved: TcpSocket,
}

impl Front {
    /// Forwards a loopback port to `upstream` (`http://127.0.0.1:port`).
    pub async fn start(upstream: &str) -> Self {
        let upstream = upstream
            .trim_start_matches("http://")
            .parse()
            .expect("an http://ip:port base URL");
        let reserved = reuse_addr_socket();
        reserved
            .bind("127.0.0.1:0".parse().unwrap())
            .expect("bind a free loopback port");
        let addr = reserved.local_addr().expect("local address");
        let listener = listen(addr);
        let front = Self {
            addr,
            upstream,
            accepted: Arc::default(),
            accept: Mutex::new(None),
            _reserved: reserved,
        };
        front.serve(listener, Mode::Forward);
        front
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Switches to `mode`, closing every open connection first.
    pub async fn set(&self, mode: Mode) {
        let running = self.accept.lock().unwrap().take();
        if let Some(accept) = running {
            accept.abort();
            // The listener must be gone before the port is bound again.
            let _ = accept.await;
        }
        if !matches!(mode, Mode::Refuse) {
            self.serve(listen(self.addr), mode);
        }
    }

    /// When each connection was accepted, in order.
    pub fn accepted(&self) -> Vec<Instant> {
        self.accepted.lock().unwrap().clone()
    }

    fn serve(&self, listener: TcpListener, mode: Mode) {
        let accepted = Arc::clone(&self.accepted);
        let upstream = self.upstream;
        let task = tokio::spawn(async move {
            // Owned here, so aborting the accept task closes them all.
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted_now = listener.accept() => match accepted_now {
                        Ok((stream, _)) => {
                            accepted.lock().unwrap().push(Instant::now());
                            connections.spawn(handle(stream, mode.clone(), upstream));
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                    },
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        *self.accept.lock().unwrap() = Some(task);
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        if let Some(accept) = self.accept.lock().unwrap().take() {
            accept.abort();
        }
    }
}

/// A socket with `SO_REUSEADDR`: on Linux, sockets that all set it may be
/// bound to one port as long as at most one listens.
fn reuse_addr_socket() -> TcpSocket {
    let socket = TcpSocket::new_v4().expect("a socket");
    socket.set_reuseaddr(true).expect("SO_REUSEADDR");
    socket
}

/// Listens on `addr`, the front's port (held by its reserved socket).
fn listen(addr: SocketAddr) -> TcpListener {
    let socket = reuse_addr_socket();
    socket.bind(addr).expect("bind the front's port");
    socket.listen(128).expect("listen")
}

async fn handle(mut stream: TcpStream, mode: Mode, upstream: SocketAddr) {
    match mode {
        Mode::Forward => {
            if let Ok(mut server) = TcpStream::connect(upstream).await {
                let _ = tokio::io::copy_bidirectional(&mut stream, &mut server).await;
            }
        }
        // Having no listener is what refuses; connections accepted before
        // the switch are closed with the one there was.
        Mode::Refuse => {}
        Mode::BlackHole => {
            let _ = tokio::io::copy(&mut stream, &mut tokio::io::sink()).await;
            std::future::pending::<()>().await;
        }
        Mode::Reset => {
            // Closing a socket with unread data makes the kernel send RST.
            let _ = stream.readable().await;
            drop(stream);
        }
        Mode::Answer { respond, delay } => {
            if read_request(&mut stream).await.is_none() {
                return;
            }
            tokio::time::sleep(delay).await;
            // The client may hang up part way (a body over its limit).
            let _ = stream.write_all(&respond()).await;
            let _ = stream.shutdown().await;
        }
    }
}

/// Reads one request's head and its `Content-Length` body.
async fn read_request(stream: &mut TcpStream) -> Option<()> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    let mut body = buffer.len() - head_end;
    while body < length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body += n;
    }
    Some(())
}

/// `HTTP/1.1 <status>` with `content_type` and `body`, closing the
/// connection; `Content-Length` says `declared` bytes (the body's length
/// unless a test wants it cut short).
pub fn response(status: u16, content_type: &str, body: &[u8], declared: usize) -> Vec<u8> {
    let mut bytes = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\n\
         content-length: {declared}\r\nconnection: close\r\n\r\n"
    )
    .into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// A complete `200` JSON answer.
pub fn json_ok(body: &serde_json::Value) -> Vec<u8> {
    let body = body.to_string();
    response(200, "application/json", body.as_bytes(), body.len())
}
