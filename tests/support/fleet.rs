//! Replicas in separate OS processes, for `tests/fleet.rs` and
//! `examples/fleet.rs`.
//!
//! The parent starts the servers (an OAuth2 token endpoint with rotation
//! and reuse detection, an API accepting its tokens, and `redis-server`)
//! and spawns its own executable once per replica, with `TTR_FLEET_ROLE`
//! set and the replica's settings in the environment. Each replica wraps
//! a hyper-util client in `TokenRefreshLayer` (the `oauth2` preset, a
//! `client_credentials` login, and a `RedisStore` or `FileStore`), sends
//! requests from several tasks until its run time is up, and prints one
//! JSON line with what it counted.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tower_token_refresh::http::HttpRefresher;
use tower_token_refresh::store::{Encrypted, FileStore, RedisStore, StoreKey, TokenStore};
use tower_token_refresh::{Builder, RefreshWindow, Stats, TokenRefreshLayer, TokenSet};

use super::client::{authed_client, get, send};

/// Set in a replica's environment; its value is the replica's name.
pub const ROLE: &str = "TTR_FLEET_ROLE";

/// The OAuth2 client every replica authenticates as.
pub const CLIENT_ID: &str = "fleet";
/// Its secret.
pub const CLIENT_SECRET: &str = "fleet-secret";

/// What a replica is told.
#[derive(Debug, Clone, Default)]
pub struct ReplicaConfig {
    /// The OAuth2 token endpoint.
    pub token_url: String,
    /// Where requests go.
    pub api_url: String,
    /// `redis://…`, for a `RedisStore`.
    pub redis_url: Option<String>,
    /// Key prefix in Redis.
    pub prefix: String,
    /// A token file, for a `FileStore` (instead of Redis).
    pub file: Option<String>,
    /// Base64 of a 32-byte key sealing the stored tokens.
    pub key: Option<String>,
    /// The tokens every replica is deployed with, if any:
    /// access, refresh, lifetime.
    pub initial: Option<(String, String, Duration)>,
    /// How long to send requests.
    pub run_for: Duration,
    /// Tasks sending requests.
    pub workers: usize,
    /// The layer's refresh timeout.
    pub refresh_timeout: Duration,
    /// The advisory and mandatory windows, as fractions of a lifetime.
    pub windows: (f64, f64),
    /// Whether to log in with `client_credentials` when the refresh token
    /// is rejected.
    pub login: bool,
}

impl ReplicaConfig {
    fn to_env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("TTR_FLEET_TOKEN_URL", self.token_url.clone()),
            ("TTR_FLEET_API_URL", self.api_url.clone()),
            ("TTR_FLEET_PREFIX", self.prefix.clone()),
            ("TTR_FLEET_RUN_MS", millis(self.run_for)),
            ("TTR_FLEET_WORKERS", self.workers.to_string()),
            ("TTR_FLEET_REFRESH_TIMEOUT_MS", millis(self.refresh_timeout)),
            ("TTR_FLEET_ADVISORY", self.windows.0.to_string()),
            ("TTR_FLEET_MANDATORY", self.windows.1.to_string()),
            ("TTR_FLEET_LOGIN", self.login.to_string()),
        ];
        let optional = [
            ("TTR_FLEET_REDIS", self.redis_url.clone()),
            ("TTR_FLEET_FILE", self.file.clone()),
            ("TTR_FLEET_KEY", self.key.clone()),
        ];
        env.extend(optional.into_iter().filter_map(|(k, v)| Some((k, v?))));
        if let Some((access, refresh, lifetime)) = &self.initial {
            env.push(("TTR_FLEET_ACCESS", access.clone()));
            env.push(("TTR_FLEET_REFRESH", refresh.clone()));
            env.push(("TTR_FLEET_LIFETIME_MS", millis(*lifetime)));
        }
        env
    }

    fn from_env() -> Self {
        let vars: HashMap<String, String> = std::env::vars().collect();
        let text = |name: &str| vars.get(name).cloned();
        let duration =
            |name: &str| Duration::from_millis(text(name).map_or(0, |v| v.parse().unwrap()));
        let initial = text("TTR_FLEET_ACCESS").map(|access| {
            let refresh = text("TTR_FLEET_REFRESH").expect("a refresh token");
            (access, refresh, duration("TTR_FLEET_LIFETIME_MS"))
        });
        Self {
            token_url: text("TTR_FLEET_TOKEN_URL").expect("a token URL"),
            api_url: text("TTR_FLEET_API_URL").expect("an API URL"),
            redis_url: text("TTR_FLEET_REDIS"),
            prefix: text("TTR_FLEET_PREFIX").unwrap_or_default(),
            file: text("TTR_FLEET_FILE"),
            key: text("TTR_FLEET_KEY"),
            initial,
            run_for: duration("TTR_FLEET_RUN_MS"),
            workers: text("TTR_FLEET_WORKERS").map_or(1, |v| v.parse().unwrap()),
            refresh_timeout: duration("TTR_FLEET_REFRESH_TIMEOUT_MS"),
            windows: (
                text("TTR_FLEET_ADVISORY")
                    .expect("windows")
                    .parse()
                    .unwrap(),
                text("TTR_FLEET_MANDATORY")
                    .expect("windows")
                    .parse()
                    .unwrap(),
            ),
            login: text("TTR_FLEET_LOGIN").as_deref() == Some("true"),
        }
    }
}

fn millis(duration: Duration) -> String {
    duration.as_millis().to_string()
}

/// Starts this executable as replica `name`, with `args` (what tells the
/// test harness, if any, to do nothing else) and its stdout piped.
pub fn spawn_replica(name: &str, config: &ReplicaConfig, args: &[&str]) -> Child {
    let exe = std::env::current_exe().expect("own executable");
    Command::new(exe)
        .args(args)
        .env(ROLE, name)
        .envs(config.to_env())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("replica started")
}

/// What a replica counted, from its last line of output.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReplicaReport {
    /// Requests answered 200.
    pub ok: u64,
    /// Requests that failed or were answered otherwise.
    pub failed: u64,
    /// The layer's counters.
    pub stats: ReplicaStats,
}

/// The part of [`Stats`] a replica reports.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReplicaStats {
    pub refreshes: u64,
    pub refresh_successes: u64,
    pub refresh_failures: u64,
    pub adopted: u64,
    pub logins: u64,
    pub store_errors: u64,
}

/// Waits for `child` (killing it after `limit`: a hung replica fails the
/// run instead of stalling it) and reads its report; `None` if it died
/// without one.
pub fn report(mut child: Child, limit: Duration) -> Option<ReplicaReport> {
    let deadline = std::time::Instant::now() + limit;
    while child.try_wait().expect("replica polled").is_none() {
        if std::time::Instant::now() >= deadline {
            eprintln!("replica {} overran {limit:?}; killed", child.id());
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().expect("replica waited for");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().rev().find(|l| l.starts_with('{'))?;
    let value: Value = serde_json::from_str(line).ok()?;
    let n = |key: &str| value[key].as_u64().unwrap_or(0);
    Some(ReplicaReport {
        ok: n("ok"),
        failed: n("failed"),
        stats: ReplicaStats {
            refreshes: n("refreshes"),
            refresh_successes: n("refresh_successes"),
            refresh_failures: n("refresh_failures"),
            adopted: n("adopted"),
            logins: n("logins"),
            store_errors: n("store_errors"),
        },
    })
}

/// The replica's whole life: build the layer, send requests, report.
pub fn run_replica() {
    let config = ReplicaConfig::from_env();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let report = runtime.block_on(replica(config));
    println!("{report}");
}

type RefreshClient = Client<HttpConnector, Full<Bytes>>;

async fn replica(config: ReplicaConfig) -> Value {
    let http = || -> RefreshClient { Client::builder(TokioExecutor::new()).build_http() };
    let refresher = HttpRefresher::oauth2(config.token_url.as_str(), http())
        .client_id(CLIENT_ID)
        .client_secret(CLIENT_SECRET);
    let mut builder = TokenRefreshLayer::builder(refresher)
        .refresh_timeout(config.refresh_timeout)
        .advisory_window(RefreshWindow::fraction(config.windows.0))
        .mandatory_window(RefreshWindow::fraction(config.windows.1));
    if config.login {
        let login = HttpRefresher::client_credentials(config.token_url.as_str(), http())
            .client_id(CLIENT_ID)
            .client_secret(CLIENT_SECRET);
        builder = builder.login(login);
    }
    if let Some((access, refresh, lifetime)) = &config.initial {
        builder = builder.initial_tokens(
            TokenSet::new(access.as_str())
                .with_refresh_token(refresh.as_str())
                .with_expires_in(*lifetime),
        );
    }
    let layer = with_store(builder, &config).build();
    let handle = layer.handle();
    let client = authed_client(layer);

    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let until = tokio::time::Instant::now() + config.run_for;
    let workers: Vec<_> = (0..config.workers)
        .map(|_| {
            let (client, ok, failed) = (client.clone(), Arc::clone(&ok), Arc::clone(&failed));
            let url = config.api_url.clone();
            tokio::spawn(async move {
                while tokio::time::Instant::now() < until {
                    match send(&client, get(&url)).await {
                        Ok(response) if response.status().is_success() => &ok,
                        Ok(response) => {
                            eprintln!("replica: status {}", response.status());
                            &failed
                        }
                        Err(error) => {
                            eprintln!("replica: {error}");
                            &failed
                        }
                    }
                    .fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("worker finished");
    }
    let stats: Stats = handle.stats();
    json!({
        "ok": ok.load(Ordering::Relaxed),
        "failed": failed.load(Ordering::Relaxed),
        "refreshes": stats.refreshes,
        "refresh_successes": stats.refresh_successes,
        "refresh_failures": stats.refresh_failures,
        "adopted": stats.adopted,
        "logins": stats.logins,
        "store_errors": stats.store_errors,
    })
}

fn with_store(builder: Builder, config: &ReplicaConfig) -> Builder {
    let key = config
        .key
        .as_deref()
        .map(|key| StoreKey::from_base64(key).expect("a valid store key"));
    if let Some(url) = &config.redis_url {
        let store = RedisStore::open(url, config.prefix.as_str()).expect("a Redis URL");
        sealed(builder, store, key)
    } else if let Some(path) = &config.file {
        sealed(builder, FileStore::new(path), key)
    } else {
        builder
    }
}

/// `store`, sealed with `key` if there is one.
fn sealed<S: TokenStore>(builder: Builder, store: S, key: Option<StoreKey>) -> Builder {
    match key {
        Some(key) => builder.store(Encrypted::new(store, key)),
        None => builder.store(store),
    }
}

/// Where replicas share their tokens: a `redis-server` of their own, or a
/// token file (`tokens.json`) in a fresh temporary directory, removed on
/// drop.
pub enum SharedStore {
    Redis(super::redis::RedisServer),
    File { dir: std::path::PathBuf },
}

impl SharedStore {
    /// A `redis-server` of its own; `None` if it is not installed.
    pub fn redis() -> Option<Self> {
        super::redis::RedisServer::start().map(Self::Redis)
    }

    /// A token file in a new directory named after `name`.
    pub fn file(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("ttr-fleet-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temporary directory");
        Self::File { dir }
    }

    /// The token file, for a file store.
    pub fn path(&self) -> Option<std::path::PathBuf> {
        match self {
            Self::Redis(_) => None,
            Self::File { dir } => Some(dir.join("tokens.json")),
        }
    }

    /// `config`, pointed at this store.
    pub fn configure(&self, config: ReplicaConfig) -> ReplicaConfig {
        match self {
            Self::Redis(redis) => ReplicaConfig {
                redis_url: Some(redis.url()),
                ..config
            },
            Self::File { .. } => ReplicaConfig {
                file: self.path().map(|path| path.to_string_lossy().into_owned()),
                ..config
            },
        }
    }

    /// The lease's owner (`{pid}-…`), if someone holds it (in Redis, under
    /// `prefix`).
    pub fn lease_owner(&self, prefix: &str) -> Option<String> {
        match self {
            Self::Redis(redis) => {
                let client = redis::Client::open(redis.url()).expect("url");
                let mut conn = client.get_connection().expect("connection");
                redis::cmd("GET")
                    .arg(format!("{prefix}:lease"))
                    .query(&mut conn)
                    .expect("GET lease")
            }
            Self::File { dir } => {
                let line = std::fs::read_to_string(dir.join(".tokens.json.lock")).ok()?;
                line.split_whitespace().next().map(str::to_owned)
            }
        }
    }

    /// What it is, for a person.
    pub fn describe(&self) -> String {
        match (self, self.path()) {
            (Self::Redis(redis), _) => format!("Redis at {}", redis.url()),
            (Self::File { .. }, path) => format!("the token file {}", path.unwrap().display()),
        }
    }
}

impl Drop for SharedStore {
    fn drop(&mut self) {
        if let Self::File { dir } = self {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
