//! Several replicas, one token: fleet mode through Redis, or through a
//! token file on one host.
//!
//! Starts its own `redis-server` on a free loopback port (with `--file`:
//! a token file in a new temporary directory instead), an OAuth2 token
//! endpoint that rotates refresh tokens and revokes a whole family when a
//! spent one comes back, and an API accepting its tokens. Then it runs
//! this executable again as 3 replica processes, deployed with the same
//! credential. Each wraps a hyper-util client in `TokenRefreshLayer` with
//! a sealed `RedisStore` (or `FileStore`), and sends requests for 10 s
//! while tokens live 2 s, each refreshed at half its life. At the end it
//! prints the identity server's refresh count beside what one process
//! alone would make: one refresh per token for the whole fleet, and no
//! reuse detected.
//!
//! Run it with `cargo run --example fleet --features redis,file,encryption`
//! (needs `redis-server`: `apt-get install redis-server`), or add
//! `-- --file` to share a token file (on Unix; no Redis needed).

// `pub`: the example uses only part of the shared fixtures.
#[path = "../tests/support/mod.rs"]
pub mod support;

use std::time::Duration;

use base64::Engine;

use support::fleet::{report, run_replica, spawn_replica, ReplicaConfig, SharedStore, ROLE};
use support::fleet::{CLIENT_ID, CLIENT_SECRET};
use support::oauth2::{OAuth2Server, RegisteredClient};
use support::ApiServer;

const REPLICAS: usize = 3;
const LIFETIME: Duration = Duration::from_secs(2);
const RUN_FOR: Duration = Duration::from_secs(10);

fn main() {
    if std::env::var_os(ROLE).is_some() {
        return run_replica();
    }
    let shared = if std::env::args().skip(1).any(|arg| arg == "--file") {
        SharedStore::file("example")
    } else {
        let Some(redis) = SharedStore::redis() else {
            eprintln!(
                "fleet: redis-server is missing (Debian package `redis-server`; or run with --file)"
            );
            std::process::exit(1);
        };
        redis
    };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let failed = runtime.block_on(async {
        let idp = OAuth2Server::builder()
            .client(RegisteredClient::secret_basic(CLIENT_ID, CLIENT_SECRET).scope("read"))
            .token_lifetime(LIFETIME)
            .start()
            .await;
        let api = ApiServer::start(&idp).await;
        let granted = idp.authorize(CLIENT_ID, "read");
        let config = shared.configure(ReplicaConfig {
            token_url: idp.token_url(),
            api_url: api.url("/data"),
            prefix: "fleet-example".into(),
            key: Some(base64::engine::general_purpose::STANDARD.encode([7u8; 32])),
            initial: Some((granted.access_token, granted.refresh_token, LIFETIME)),
            run_for: RUN_FOR,
            workers: 4,
            refresh_timeout: Duration::from_secs(2),
            windows: (0.5, 0.2),
            login: true,
            ..ReplicaConfig::default()
        });
        println!(
            "{REPLICAS} replicas, tokens living {LIFETIME:?}, {RUN_FOR:?} of traffic, sharing {}",
            shared.describe()
        );
        let children: Vec<_> = (0..REPLICAS)
            .map(|i| spawn_replica(&format!("replica-{i}"), &config, &[]))
            .collect();
        let waits: Vec<_> = children
            .into_iter()
            .map(|child| {
                tokio::task::spawn_blocking(move || report(child, RUN_FOR * 4))
            })
            .collect();
        let mut failed = 0;
        for (i, wait) in waits.into_iter().enumerate() {
            match wait.await.expect("report thread") {
                Some(r) => {
                    failed += r.failed;
                    println!(
                        "replica {i}: {} OK, {} failed; refreshed {}, adopted {}, logins {}, store errors {}",
                        r.ok,
                        r.failed,
                        r.stats.refresh_successes,
                        r.stats.adopted,
                        r.stats.logins,
                        r.stats.store_errors
                    );
                }
                None => {
                    failed += 1;
                    println!("replica {i}: died without a report");
                }
            }
        }
        let stats = idp.stats();
        // Each token is refreshed at half its life.
        let one_process = RUN_FOR.as_millis() / (LIFETIME.as_millis() / 2);
        println!(
            "identity server: {} refresh calls ({one_process} expected from one process, \
             {} from {REPLICAS} replicas refreshing on their own); {} reuse detected, {} logins",
            stats.refreshed,
            one_process * REPLICAS as u128,
            stats.reuse_detected,
            stats.client_credentials
        );
        failed + stats.reuse_detected
    });
    // Stopped (or removed) before any exit, which runs no destructors.
    drop(shared);
    if failed > 0 {
        std::process::exit(1);
    }
}
