//! `RedisStore` against a real `redis-server` (one per test, on a free
//! loopback port; see `tests/support/redis.rs`): the store's primitives,
//! its key layout read back with a raw connection, and its behaviour while
//! Redis is down, frozen or restarted.
//!
//! These tests run on the real clock: lease expiry and timeouts happen in
//! Redis and in the kernel, which tokio's paused clock cannot reach. Every
//! wait is bounded. Without `redis-server` each test says so and returns,
//! unless `CI` is set, where a missing server fails it.

#![cfg(feature = "redis")]

// `pub`: this binary uses only the Redis fixture, and the rest of the
// support module is not dead code here.
pub mod support;

use std::collections::{BTreeSet, HashMap};
use std::error::Error as _;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tower_token_refresh::store::{Lease, Record, RedisStore, StoreError, TokenStore};

use support::bounded;
use support::redis::RedisServer;

/// A bound for things that take milliseconds when they work.
const PROMPT: Duration = Duration::from_secs(5);

fn open(server: &RedisServer, prefix: &str) -> RedisStore {
    RedisStore::open(&server.url(), prefix).expect("a valid URL")
}

fn record(version: u64, payload: &[u8]) -> Record {
    Record::new(version, payload.to_vec())
}

/// `store.compare_and_swap(expected, record(version, payload))`, which
/// must not fail.
async fn swap(store: &RedisStore, expected: Option<u64>, version: u64, payload: &[u8]) -> bool {
    store
        .compare_and_swap(expected, record(version, payload))
        .await
        .expect("compare-and-swap answered")
}

/// `store.try_lease(ttl)`, which must not fail.
async fn take_lease(store: &RedisStore, ttl: Duration) -> Option<Lease> {
    store.try_lease(ttl).await.expect("lease answered")
}

/// The owner in `{prefix}:lease`, read with a raw connection.
async fn lease_owner(server: &RedisServer, prefix: &str) -> Option<String> {
    redis::cmd("GET")
        .arg(format!("{prefix}:lease"))
        .query_async(&mut raw(server).await)
        .await
        .unwrap()
}

/// Runs `name` with `args` on a raw connection: keys written by hand.
async fn command(con: &mut MultiplexedConnection, name: &str, args: &[&str]) {
    let _: () = redis::cmd(name).arg(args).query_async(con).await.unwrap();
}

/// The lease for `ttl`, asked for every few milliseconds until it is
/// free; `failure` if not within `bound`.
async fn lease_within(store: &RedisStore, ttl: Duration, bound: Duration, failure: &str) -> Lease {
    let started = Instant::now();
    loop {
        if let Some(lease) = take_lease(store, ttl).await {
            return lease;
        }
        assert!(started.elapsed() < bound, "{failure}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs `test` against a fresh server, bounded; skips (loudly, unless
/// under CI) without `redis-server`.
async fn with_redis(test: impl AsyncFnOnce(&mut RedisServer)) {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    bounded(test(&mut server)).await;
}

async fn raw(server: &RedisServer) -> MultiplexedConnection {
    redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("a raw connection to the test server")
}

/// How many subscribers `channel` has.
async fn subscribers(server: &RedisServer, channel: &str) -> u64 {
    let (_, subscribers): (String, u64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(channel)
        .query_async(&mut raw(server).await)
        .await
        .unwrap();
    subscribers
}

/// Waits until `channel` has exactly `count` subscribers.
async fn wait_for_subscribers(server: &RedisServer, channel: &str, count: u64) {
    let deadline = Instant::now() + PROMPT;
    loop {
        let subscribers = subscribers(server, channel).await;
        if subscribers == count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{channel} has {subscribers} subscribers, not {count}, after {PROMPT:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits (bounded) for the next signal on `changes`, whatever its value,
/// and marks it seen.
async fn signalled(changes: &mut watch::Receiver<u64>, when: &str) {
    tokio::time::timeout(PROMPT, changes.changed())
        .await
        .unwrap_or_else(|_| panic!("not signalled {when} within {PROMPT:?}"))
        .expect("the change feed is still running");
    changes.borrow_and_update();
}

/// Waits (bounded) until `changes` carries `version`.
async fn announced(changes: &mut watch::Receiver<u64>, version: u64) {
    tokio::time::timeout(PROMPT, changes.wait_for(|seen| *seen == version))
        .await
        .unwrap_or_else(|_| panic!("version {version} not announced within {PROMPT:?}"))
        .expect("the change feed is still running");
}

/// Why a store call failed while Redis was unreachable, as its Redis
/// error tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    /// The connection was refused, reset or closed: the call failed on
    /// that, without waiting out its timeout.
    Gone,
    /// Nothing answered: the store's own timeout ended the call.
    Silent,
}

/// The [`Cause`] in `error`'s Redis error; `None` for any other error.
fn cause(error: &StoreError) -> Option<Cause> {
    let redis = error.source()?.downcast_ref::<redis::RedisError>()?;
    if redis.is_timeout() {
        Some(Cause::Silent)
    } else if redis.is_connection_dropped() {
        Some(Cause::Gone)
    } else {
        None
    }
}

/// Runs a store call that must fail because Redis is unreachable, for
/// `expected` (not by wall-clock time: a loaded machine may take any time
/// to get there). [`PROMPT`] only catches a call that hangs.
async fn fails_fast<T: std::fmt::Debug>(
    what: &str,
    expected: Cause,
    call: impl Future<Output = Result<T, StoreError>>,
) -> StoreError {
    let result = tokio::time::timeout(PROMPT, call)
        .await
        .unwrap_or_else(|_| {
            panic!("{what} hung for {PROMPT:?} while Redis was unreachable: no timeout ended it")
        });
    let error = result.expect_err(what);
    assert!(!error.is_corrupt(), "{what}: {error}");
    assert_eq!(cause(&error), Some(expected), "{what}: {error:?}");
    error
}

/// The error, its sources and its `Debug`, as one text.
fn everything_said(error: &StoreError) -> String {
    let mut text = format!("{error} {error:?}");
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(" {cause} {cause:?}"));
        source = cause.source();
    }
    text
}

/// A TCP relay in front of the server whose open connections can be made
/// to go silent (nothing relayed, nothing closed: a dropped NAT entry, a
/// failover that black-holes the old address) while new connections are
/// relayed as before, and which can drop the server's replies on its open
/// connections while their commands still reach it, or turn new
/// connections away (closed as soon as accepted: a server that is down).
struct Relay {
    port: u16,
    silence: watch::Sender<u64>,
    /// While set, each new connection is closed unrelayed.
    refusing: Arc<AtomicBool>,
    /// How many connections were turned away so far.
    turned_away: watch::Receiver<u64>,
    /// Bumped to lose the replies of the connections open then: each
    /// connection notes the count it was accepted at.
    replies_lost: Arc<AtomicU64>,
    /// Bumped to hold up, by [`HELD_UP`], what the clients of the
    /// connections open then send.
    requests_held: Arc<AtomicU64>,
    /// How many held-up requests reached the server so far.
    held_delivered: watch::Receiver<u64>,
    accept: JoinHandle<()>,
}

/// How long a held-up request takes to reach the server: longer than the
/// store's timeout and its first release, as a segment retransmitted over
/// a lossy network can.
const HELD_UP: Duration = Duration::from_secs(1);

impl Relay {
    async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (silence, silenced) = watch::channel(0);
        let replies_lost = Arc::new(AtomicU64::new(0));
        let losing = Arc::clone(&replies_lost);
        let refusing = Arc::new(AtomicBool::new(false));
        let turning_away = Arc::clone(&refusing);
        let (count_turned_away, turned_away) = watch::channel(0);
        let requests_held = Arc::new(AtomicU64::new(0));
        let holding = Arc::clone(&requests_held);
        let (count_held_delivered, held_delivered) = watch::channel(0);
        let count_held_delivered = Arc::new(count_held_delivered);
        let accept = tokio::spawn(async move {
            // Dropped with this task, closing every connection.
            let mut connections = JoinSet::new();
            loop {
                let (mut client, _) = listener.accept().await.unwrap();
                if turning_away.load(Ordering::SeqCst) {
                    drop(client);
                    count_turned_away.send_modify(|n| *n += 1);
                    continue;
                }
                let mut server = TcpStream::connect(("127.0.0.1", upstream)).await.unwrap();
                let mut silenced = silenced.clone();
                silenced.borrow_and_update();
                let accepted_at = losing.load(Ordering::SeqCst);
                let losing = Arc::clone(&losing);
                let held_at = holding.load(Ordering::SeqCst);
                let holding = Arc::clone(&holding);
                let count_held_delivered = Arc::clone(&count_held_delivered);
                connections.spawn(async move {
                    let (mut from_client, mut to_client) = client.split();
                    let (mut from_server, mut to_server) = server.split();
                    let requests = async {
                        let mut buffer = [0; 4096];
                        loop {
                            let n = from_client.read(&mut buffer).await?;
                            if n == 0 {
                                return Ok::<_, std::io::Error>(());
                            }
                            let held = holding.load(Ordering::SeqCst) != held_at;
                            if held {
                                tokio::time::sleep(HELD_UP).await;
                            }
                            to_server.write_all(&buffer[..n]).await?;
                            if held {
                                count_held_delivered.send_modify(|n| *n += 1);
                            }
                        }
                    };
                    let replies = async {
                        let mut buffer = [0; 4096];
                        loop {
                            let n = from_server.read(&mut buffer).await?;
                            if n == 0 {
                                return Ok::<_, std::io::Error>(());
                            }
                            if losing.load(Ordering::SeqCst) == accepted_at {
                                to_client.write_all(&buffer[..n]).await?;
                            }
                        }
                    };
                    let silent = tokio::select! {
                        _ = requests => false,
                        _ = replies => false,
                        _ = silenced.changed() => true,
                    };
                    if silent {
                        // Keep both ends open and say nothing.
                        std::future::pending::<()>().await;
                    }
                });
            }
        });
        Self {
            port,
            silence,
            refusing,
            turned_away,
            replies_lost,
            requests_held,
            held_delivered,
            accept,
        }
    }

    /// From now on the server's replies on every connection open now are
    /// dropped: their commands still run. New connections are relayed as
    /// before.
    fn lose_replies_on_open_connections(&self) {
        self.replies_lost.fetch_add(1, Ordering::SeqCst);
    }

    /// From now on what the clients of every connection open now send
    /// reaches the server [`HELD_UP`] late. New connections are relayed as
    /// before.
    fn hold_up_requests_on_open_connections(&self) {
        self.requests_held.fetch_add(1, Ordering::SeqCst);
    }

    /// Waits until a held-up request has reached the server.
    async fn wait_held_delivered(&self) {
        let mut count = self.held_delivered.clone();
        count.wait_for(|delivered| *delivered >= 1).await.unwrap();
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Whether new connections are closed as soon as they are accepted
    /// (open ones are left as they are).
    fn refuse_new_connections(&self, refuse: bool) {
        self.refusing.store(refuse, Ordering::SeqCst);
    }

    /// Waits until `n` connections in all have been turned away.
    async fn wait_turned_away(&self, n: u64) {
        let mut count = self.turned_away.clone();
        count.wait_for(|turned| *turned >= n).await.unwrap();
    }

    /// Every connection open now goes silent.
    fn silence_open_connections(&self) {
        self.silence.send_modify(|generation| *generation += 1);
    }
}

/// A store with `timeout` reaching the server through a [`Relay`], with
/// version 1 stored through it.
async fn behind_a_relay(server: &RedisServer, timeout: Duration) -> (Relay, RedisStore) {
    let relay = Relay::start(server.port()).await;
    let store = RedisStore::open(&relay.url(), "app")
        .unwrap()
        .timeout(timeout);
    assert!(swap(&store, None, 1, b"a").await);
    (relay, store)
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

// ---- compare-and-swap and load ----

#[tokio::test]
async fn compare_and_swap_from_nothing_stores_the_first_version() {
    with_redis(async |server| {
        let store = open(server, "app");
        assert_eq!(store.load().await.unwrap(), None);
        assert!(swap(&store, None, 1, b"first").await);
        assert_eq!(store.load().await.unwrap(), Some(record(1, b"first")));
    })
    .await;
}

#[tokio::test]
async fn compare_and_swap_from_nothing_is_refused_once_a_version_is_stored() {
    with_redis(async |server| {
        let first = open(server, "app");
        let second = open(server, "app");
        assert!(swap(&first, None, 1, b"a").await);
        assert!(!swap(&second, None, 1, b"b").await);
        assert_eq!(second.load().await.unwrap(), Some(record(1, b"a")));
    })
    .await;
}

#[tokio::test]
async fn compare_and_swap_with_a_stale_version_is_refused() {
    with_redis(async |server| {
        let store = open(server, "app");
        assert!(swap(&store, None, 1, b"one").await);
        assert!(swap(&store, Some(1), 2, b"two").await);
        // A writer that read version 1 comes too late.
        assert!(!swap(&store, Some(1), 2, b"late").await);
        assert_eq!(store.load().await.unwrap(), Some(record(2, b"two")));
    })
    .await;
}

#[tokio::test]
async fn compare_and_swap_from_a_version_never_stored_is_refused() {
    with_redis(async |server| {
        let store = open(server, "app");
        assert!(swap(&store, None, 3, b"three").await);
        assert!(!swap(&store, Some(2), 4, b"x").await);
        assert!(!swap(&store, Some(4), 5, b"x").await);
        assert!(!swap(&store, Some(30), 31, b"x").await);
        assert_eq!(store.load().await.unwrap(), Some(record(3, b"three")));
    })
    .await;
}

#[tokio::test]
async fn versions_may_grow_by_more_than_one() {
    with_redis(async |server| {
        let store = open(server, "app");
        assert!(swap(&store, None, 1, b"a").await);
        assert!(swap(&store, Some(1), 5, b"b").await);
        assert!(swap(&store, Some(5), u64::MAX, b"c").await);
        assert_eq!(store.load().await.unwrap(), Some(record(u64::MAX, b"c")));
    })
    .await;
}

#[tokio::test]
async fn load_returns_the_payload_bytes_exactly() {
    with_redis(async |server| {
        let store = open(server, "app");
        // Every byte value, zeros, invalid UTF-8, CR LF (the protocol's
        // separator), and a payload far larger than a token set.
        let mut binary: Vec<u8> = (0..=255).collect();
        binary.extend_from_slice(b"\0\0\r\n\xff\xfe\xc3\x28\0");
        let large: Vec<u8> = (0..256 * 1024).map(|_| fastrand::u8(..)).collect();

        let mut version = None;
        for payload in [binary, Vec::new(), large, b"\0".to_vec()] {
            let next = version.map_or(1, |v| v + 1);
            assert!(store
                .compare_and_swap(version, Record::new(next, payload.clone()))
                .await
                .unwrap());
            let loaded = store.load().await.unwrap().expect("a stored record");
            assert_eq!(loaded.version(), next);
            assert_eq!(loaded.payload(), &payload[..], "payload of version {next}");
            version = Some(next);
        }
    })
    .await;
}

#[tokio::test]
async fn concurrent_compare_and_swaps_have_one_winner() {
    with_redis(async |server| {
        // Separate stores: separate connections, as separate processes.
        let mut writers = JoinSet::new();
        for writer in 0..8u8 {
            let store = open(server, "app");
            writers.spawn(async move {
                let swapped = store
                    .compare_and_swap(None, record(1, &[writer]))
                    .await
                    .unwrap();
                (writer, swapped)
            });
        }
        let mut winners = Vec::new();
        while let Some(joined) = writers.join_next().await {
            let (writer, swapped) = joined.unwrap();
            if swapped {
                winners.push(writer);
            }
        }
        assert_eq!(winners.len(), 1, "winners: {winners:?}");
        let stored = open(server, "app").load().await.unwrap();
        assert_eq!(stored, Some(record(1, &[winners[0]])));
    })
    .await;
}

#[tokio::test]
async fn a_record_that_is_not_in_the_documented_form_is_corrupt() {
    with_redis(async |server| {
        let store = open(server, "app");
        let mut con = raw(server).await;
        command(
            &mut con,
            "HSET",
            &["app:tokens", "version", "nine", "payload", "secret-payload"],
        )
        .await;
        let error = store.load().await.unwrap_err();
        assert!(error.is_corrupt(), "{error}");
        assert!(!everything_said(&error).contains("secret-payload"));

        // A number the swap script would never match (it compares the
        // plain form): reported, not read as 5 (found in review).
        for version in ["05", "+5", " 5"] {
            command(&mut con, "HSET", &["app:tokens", "version", version]).await;
            let error = store.load().await.unwrap_err();
            assert!(error.is_corrupt(), "{version:?}: {error}");
        }

        command(&mut con, "HDEL", &["app:tokens", "version"]).await;
        let error = store.load().await.unwrap_err();
        assert!(error.is_corrupt(), "{error}");
        assert!(!everything_said(&error).contains("secret-payload"));
        // Never overwritten, as no record (found in review: it was).
        let swapped = store.compare_and_swap(None, record(1, b"t")).await;
        assert!(!swapped.unwrap(), "a payload alone is no empty store");
        assert!(store.load().await.unwrap_err().is_corrupt());

        // Nor is a version without its payload a record to swap over.
        command(&mut con, "DEL", &["app:tokens"]).await;
        command(&mut con, "HSET", &["app:tokens", "version", "5"]).await;
        assert!(store.load().await.unwrap_err().is_corrupt());
        let swapped = store.compare_and_swap(Some(5), record(6, b"t")).await;
        assert!(!swapped.unwrap(), "a version alone is no record");
        assert!(store.load().await.unwrap_err().is_corrupt());
    })
    .await;
}

/// Found in review: a key of another kind (a string where the record's
/// hash belongs) was reported as Redis being unavailable, so the fleet put
/// its refreshes off as for an outage, and each call reconnected.
#[tokio::test]
async fn a_tokens_key_of_another_kind_is_corrupt_not_unavailable() {
    with_redis(async |server| {
        let store = open(server, "app");
        let mut con = raw(server).await;
        command(&mut con, "SET", &["app:tokens", "secret-string"]).await;
        let error = store.load().await.unwrap_err();
        assert!(error.is_corrupt(), "{error}");
        assert!(!everything_said(&error).contains("secret-string"));
        let swap = store.compare_and_swap(None, record(1, b"t")).await;
        assert!(swap.unwrap_err().is_corrupt(), "never overwritten");
        let kept: String = redis::cmd("GET")
            .arg("app:tokens")
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!(kept, "secret-string");
    })
    .await;
}

// ---- lease ----

#[tokio::test]
async fn lease_is_exclusive() {
    with_redis(async |server| {
        let holder = open(server, "app");
        let other = open(server, "app");
        let lease = take_lease(&holder, Duration::from_secs(10)).await;
        assert!(lease.is_some());
        assert_eq!(take_lease(&holder, Duration::from_secs(10)).await, None);
        assert_eq!(take_lease(&other, Duration::from_secs(10)).await, None);
    })
    .await;
}

#[tokio::test]
async fn concurrent_leases_have_one_holder() {
    with_redis(async |server| {
        let mut takers = JoinSet::new();
        for _ in 0..8 {
            let store = open(server, "app");
            takers.spawn(async move { take_lease(&store, Duration::from_secs(10)).await });
        }
        let mut held = 0;
        while let Some(joined) = takers.join_next().await {
            held += usize::from(joined.unwrap().is_some());
        }
        assert_eq!(held, 1);
    })
    .await;
}

/// A lease is a key Redis expires by its own clock after the time to live
/// asked for: a holder that never releases it (as if it had crashed) keeps
/// the others out only until then.
#[tokio::test]
async fn lease_lapses_after_its_ttl() {
    with_redis(async |server| {
        let crashed = open(server, "app");
        let next = open(server, "app");
        // Connected before the lease is taken, so that reading its time to
        // live is one round trip.
        let mut con = raw(server).await;
        // Long enough for that round trip on a loaded machine, short enough
        // to wait out.
        let ttl = Duration::from_secs(2);
        assert!(take_lease(&crashed, ttl).await.is_some());
        let pttl: i64 = redis::cmd("PTTL")
            .arg("app:lease")
            .query_async(&mut con)
            .await
            .unwrap();
        // -1 would be a lease kept forever, -2 none at all.
        assert!(
            pttl > 0 && u128::try_from(pttl).unwrap() <= ttl.as_millis(),
            "PTTL {pttl} for a {ttl:?} lease"
        );
        assert_eq!(
            take_lease(&next, ttl).await,
            None,
            "held: no one else gets it"
        );

        // Redis frees it at most `ttl` from now; the bound only catches a
        // lease that never lapses.
        let current = lease_within(
            &next,
            Duration::from_secs(60),
            ttl + PROMPT,
            "the lease never lapsed",
        )
        .await;
        // The lapsed lease is the next holder's now, and with a minute left
        // it keeps the other process out in turn.
        let owner = lease_owner(server, "app").await;
        assert_eq!(owner.as_deref(), Some(current.owner()));
        assert_eq!(take_lease(&crashed, ttl).await, None);
    })
    .await;
}

#[tokio::test]
async fn release_by_another_owner_leaves_the_lease() {
    with_redis(async |server| {
        let holder = open(server, "app");
        let other = open(server, "app");
        let lease = take_lease(&holder, Duration::from_secs(10)).await.unwrap();
        other.release(Lease::new("someone-else")).await.unwrap();
        assert_eq!(take_lease(&other, Duration::from_secs(10)).await, None);
        let owner = lease_owner(server, "app").await;
        assert_eq!(owner.as_deref(), Some(lease.owner()));
    })
    .await;
}

#[tokio::test]
async fn release_by_the_owner_frees_the_lease() {
    with_redis(async |server| {
        let holder = open(server, "app");
        let other = open(server, "app");
        let lease = take_lease(&holder, Duration::from_secs(10)).await.unwrap();
        holder.release(lease).await.unwrap();
        let exists: bool = redis::cmd("EXISTS")
            .arg("app:lease")
            .query_async(&mut raw(server).await)
            .await
            .unwrap();
        assert!(!exists);
        assert!(take_lease(&other, Duration::from_secs(10)).await.is_some());
    })
    .await;
}

/// Found in review: a lease key that never lapses (a string set by hand,
/// a key made persistent, a key of another kind) answered "held" to every
/// `SET … NX`, and every refresh in the fleet waited out the lease's time
/// to live and failed, for as long as the key stayed. Such a key is given
/// the lease's time to live: held once, then free.
#[tokio::test]
async fn a_lease_key_that_never_lapses_lapses_like_a_lease() {
    with_redis(async |server| {
        let store = open(server, "app");
        let mut con = raw(server).await;
        command(&mut con, "SET", &["app:lease", "set-by-hand"]).await;
        assert_eq!(take_lease(&store, Duration::from_millis(300)).await, None);
        taken_once_lapsed(&store, server).await;

        command(&mut con, "HSET", &["app:lease", "field", "value"]).await;
        assert_eq!(take_lease(&store, Duration::from_millis(300)).await, None);
        taken_once_lapsed(&store, server).await;
    })
    .await;
}

/// Checks that the lease key now lapses within the 300 ms asked for, and
/// that the lease can be taken then; gives it back.
async fn taken_once_lapsed(store: &RedisStore, server: &RedisServer) {
    let ttl: i64 = redis::cmd("PTTL")
        .arg("app:lease")
        .query_async(&mut raw(server).await)
        .await
        .unwrap();
    // -2: gone already (a slow machine took the 300 ms); -1 would be a
    // key that still never lapses.
    assert!(ttl == -2 || (1..=300).contains(&ttl), "lapses in {ttl} ms");
    let lease = lease_within(
        store,
        Duration::from_secs(10),
        PROMPT,
        "the key never lapsed",
    )
    .await;
    store.release(lease).await.unwrap();
}

#[tokio::test]
async fn releasing_a_lapsed_lease_leaves_the_next_holders_lease() {
    with_redis(async |server| {
        let slow = open(server, "app");
        let next = open(server, "app");
        let stale = take_lease(&slow, Duration::from_millis(100)).await.unwrap();
        let current = lease_within(
            &next,
            Duration::from_secs(10),
            PROMPT,
            "the lease never lapsed",
        )
        .await;
        // The slow holder finishes late and gives back what it thinks it holds.
        slow.release(stale).await.unwrap();
        assert_eq!(take_lease(&slow, Duration::from_secs(10)).await, None);
        let owner = lease_owner(server, "app").await;
        assert_eq!(owner.as_deref(), Some(current.owner()));
    })
    .await;
}

#[tokio::test]
async fn lease_owners_name_the_process_and_never_repeat() {
    with_redis(async |server| {
        let store = open(server, "app");
        let mut owners = BTreeSet::new();
        for _ in 0..5 {
            let lease = take_lease(&store, Duration::from_secs(10)).await.unwrap();
            let (pid, random) = lease.owner().split_once('-').expect("pid-hex");
            assert_eq!(pid, std::process::id().to_string());
            assert_eq!(random.len(), 32, "{}", lease.owner());
            assert!(random.chars().all(|c| c.is_ascii_hexdigit()));
            owners.insert(lease.owner().to_owned());
            store.release(lease).await.unwrap();
        }
        assert_eq!(owners.len(), 5);
    })
    .await;
}

// ---- change feed ----

#[tokio::test]
async fn subscribe_announces_a_version_stored_by_another_store() {
    with_redis(async |server| {
        let listener = open(server, "app");
        let writer = open(server, "app");
        let mut changes = listener.subscribe().expect("a runtime is running");
        wait_for_subscribers(server, "app:events", 1).await;

        assert!(swap(&writer, None, 1, b"a").await);
        announced(&mut changes, 1).await;
        assert!(swap(&writer, Some(1), 7, b"b").await);
        announced(&mut changes, 7).await;
        // A refused swap announces nothing: the next announcement is 8.
        assert!(!swap(&writer, Some(1), 2, b"c").await);
        assert!(swap(&writer, Some(7), 8, b"d").await);
        tokio::time::timeout(PROMPT, changes.changed())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(*changes.borrow_and_update(), 8);
    })
    .await;
}

/// Found in review: a version stored while the feed had no subscription
/// (its connection lost, say in a failover) was announced to no one, and
/// an idle layer's watcher does not poll. Each subscription now nudges the
/// watchers to load the record once.
#[tokio::test]
async fn a_version_stored_while_the_feed_was_down_is_signalled_once_it_is_back() {
    with_redis(async |server| {
        // The feed reaches Redis through a relay that can keep it from
        // subscribing again until the version is stored: otherwise it might
        // come back first (it tries every second) and hear the write.
        let relay = Relay::start(server.port()).await;
        let listener = RedisStore::open(&relay.url(), "app").unwrap();
        let writer = open(server, "app");
        let mut changes = listener.subscribe().expect("a runtime is running");
        wait_for_subscribers(server, "app:events", 1).await;
        signalled(&mut changes, "on subscribing").await;

        relay.refuse_new_connections(true);
        let _: redis::Value = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("pubsub")
            .query_async(&mut raw(server).await)
            .await
            .unwrap();
        wait_for_subscribers(server, "app:events", 0).await;
        assert!(swap(&writer, None, 1, b"a").await);
        // No one heard the announcement, and the feed has not signalled.
        assert!(!changes.has_changed().unwrap(), "signalled while down");

        relay.refuse_new_connections(false);
        // Subscribed again (within a second), the feed signals a change.
        signalled(&mut changes, "after subscribing again").await;
        wait_for_subscribers(server, "app:events", 1).await;
    })
    .await;
}

#[tokio::test]
async fn one_feed_serves_every_clone_and_ends_with_the_last() {
    with_redis(async |server| {
        let store = open(server, "app");
        let clone = store.clone();
        let writer = open(server, "app");
        let _first = store.subscribe().unwrap();
        let _again = store.subscribe().unwrap();
        let mut changes = clone.subscribe().unwrap();
        wait_for_subscribers(server, "app:events", 1).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        wait_for_subscribers(server, "app:events", 1).await;

        drop(store);
        assert!(swap(&writer, None, 1, b"a").await);
        announced(&mut changes, 1).await;

        drop(clone);
        wait_for_subscribers(server, "app:events", 0).await;
        // The receivers learn that nothing will be announced any more.
        let closed = tokio::time::timeout(PROMPT, changes.changed())
            .await
            .unwrap();
        assert!(closed.is_err());
    })
    .await;
}

#[test]
fn subscribe_outside_a_runtime_is_none() {
    let store = RedisStore::open("redis://127.0.0.1:1/", "app").unwrap();
    assert!(store.subscribe().is_none());
}

// ---- key layout and isolation ----

#[tokio::test]
async fn keys_are_laid_out_as_documented() {
    with_redis(async |server| {
        let store = open(server, "layout:app");
        let mut con = raw(server).await;

        // A raw subscriber on the documented channel.
        let client = redis::Client::open(server.url()).unwrap();
        let (ready, subscribed) = std::sync::mpsc::channel();
        let subscriber = std::thread::spawn(move || {
            let mut connection = client.get_connection().unwrap();
            let mut pubsub = connection.as_pubsub();
            pubsub.subscribe("layout:app:events").unwrap();
            pubsub.set_read_timeout(Some(PROMPT)).unwrap();
            ready.send(()).unwrap();
            let message = pubsub.get_message().unwrap();
            (
                message.get_channel_name().to_owned(),
                message.get_payload_bytes().to_vec(),
            )
        });
        subscribed.recv_timeout(PROMPT).unwrap();

        assert!(swap(&store, None, 3, b"\0sealed\xff").await);
        let lease = take_lease(&store, Duration::from_secs(10)).await.unwrap();

        let keys: BTreeSet<String> = redis::cmd("KEYS")
            .arg("*")
            .query_async(&mut con)
            .await
            .unwrap();
        let expected: BTreeSet<String> = ["layout:app:tokens", "layout:app:lease"]
            .map(String::from)
            .into();
        assert_eq!(keys, expected);

        let kind: String = redis::cmd("TYPE")
            .arg("layout:app:tokens")
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!(kind, "hash");
        let fields: HashMap<String, Vec<u8>> = redis::cmd("HGETALL")
            .arg("layout:app:tokens")
            .query_async(&mut con)
            .await
            .unwrap();
        let expected: HashMap<String, Vec<u8>> = [
            ("version".to_owned(), b"3".to_vec()),
            ("payload".to_owned(), b"\0sealed\xff".to_vec()),
        ]
        .into();
        assert_eq!(fields, expected);

        let kind: String = redis::cmd("TYPE")
            .arg("layout:app:lease")
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!(kind, "string");
        let owner: String = redis::cmd("GET")
            .arg("layout:app:lease")
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!(owner, lease.owner());
        let ttl_ms: i64 = redis::cmd("PTTL")
            .arg("layout:app:lease")
            .query_async(&mut con)
            .await
            .unwrap();
        assert!((9_000..=10_000).contains(&ttl_ms), "PTTL {ttl_ms}");

        let (channel, message) = tokio::task::spawn_blocking(move || subscriber.join().unwrap())
            .await
            .unwrap();
        assert_eq!(channel, "layout:app:events");
        assert_eq!(message, b"3");

        // A record written by hand in the documented form is read back.
        let _: () = redis::cmd("HSET")
            .arg("layout:app:tokens")
            .arg("version")
            .arg("9")
            .arg("payload")
            .arg(&b"by hand\0"[..])
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!(store.load().await.unwrap(), Some(record(9, b"by hand\0")));
    })
    .await;
}

#[tokio::test]
async fn stores_with_different_prefixes_do_not_interfere() {
    with_redis(async |server| {
        let a = open(server, "tenant-a");
        let b = open(server, "tenant-b");
        assert!(swap(&a, None, 1, b"a1").await);
        assert!(swap(&b, None, 1, b"b1").await);
        assert!(swap(&b, Some(1), 2, b"b2").await);
        assert_eq!(a.load().await.unwrap(), Some(record(1, b"a1")));
        assert_eq!(b.load().await.unwrap(), Some(record(2, b"b2")));

        assert!(take_lease(&a, Duration::from_secs(10)).await.is_some());
        assert!(take_lease(&b, Duration::from_secs(10)).await.is_some());

        let mut changes = a.subscribe().unwrap();
        wait_for_subscribers(server, "tenant-a:events", 1).await;
        signalled(&mut changes, "on subscribing").await;
        assert!(swap(&b, Some(2), 3, b"b3").await);
        // Loopback pub/sub takes well under a millisecond: 300 ms of silence
        // means tenant-b's announcement did not reach tenant-a.
        let heard = tokio::time::timeout(Duration::from_millis(300), changes.changed()).await;
        assert!(heard.is_err(), "tenant-a heard {}", *changes.borrow());
        assert!(swap(&a, Some(1), 2, b"a2").await);
        announced(&mut changes, 2).await;
    })
    .await;
}

// ---- Redis unreachable ----

#[tokio::test]
async fn every_call_fails_fast_while_redis_is_down() {
    with_redis(async |server| {
        let store = open(server, "app");
        assert!(swap(&store, None, 1, b"secret-payload").await);
        let lease = take_lease(&store, Duration::from_secs(10)).await.unwrap();

        server.stop();
        assert!(!server.is_running());
        // Twice round: first on the connection Redis dropped, then while
        // connecting afresh to a closed port.
        for _ in 0..2 {
            let errors = [
                fails_fast("load", Cause::Gone, store.load()).await,
                fails_fast(
                    "compare_and_swap",
                    Cause::Gone,
                    store.compare_and_swap(Some(1), record(2, b"secret-payload")),
                )
                .await,
                fails_fast(
                    "try_lease",
                    Cause::Gone,
                    store.try_lease(Duration::from_secs(10)),
                )
                .await,
                fails_fast("release", Cause::Gone, store.release(lease.clone())).await,
            ];
            for error in errors {
                let said = everything_said(&error);
                assert!(!said.contains("secret-payload"), "{said}");
                assert!(error.source().is_some(), "no source: {error}");
            }
        }
    })
    .await;
}

#[tokio::test]
async fn every_call_fails_within_the_timeout_while_redis_is_frozen() {
    with_redis(async |server| {
        let store = open(server, "app").timeout(Duration::from_millis(300));
        assert!(swap(&store, None, 1, b"a").await);

        // Connections are accepted by the kernel but nothing answers: the
        // kept connection times out, and so does each new one.
        server.freeze();
        for _ in 0..2 {
            fails_fast("load", Cause::Silent, store.load()).await;
            fails_fast(
                "try_lease",
                Cause::Silent,
                store.try_lease(Duration::from_secs(10)),
            )
            .await;
        }
        server.thaw();
        assert_eq!(store.load().await.unwrap(), Some(record(1, b"a")));
    })
    .await;
}

/// Found in review: a lease whose `SET` ran but whose answer was lost (or
/// came after its caller stopped waiting) stayed in Redis with no holder,
/// keeping every process from the lease for its whole time to live.
#[tokio::test]
async fn a_lease_whose_answer_was_lost_is_released() {
    with_redis(async |server| {
        // The store's timeout, 2 s, is how long the test has to see the
        // lease taken (however loaded the machine), and the release comes
        // that long after the lost answer, well within `PROMPT`.
        let (relay, store) = behind_a_relay(server, Duration::from_secs(2)).await;
        load_the_lease_script(&store).await;
        relay.lose_replies_on_open_connections();
        let error = store.try_lease(Duration::from_secs(60)).await;
        assert!(!error.unwrap_err().is_corrupt());
        // Taken, its answer lost (given back a timeout from now).
        assert!(lease_owner(server, "app").await.is_some());

        let direct = open(server, "app");
        lost_lease_released(&direct).await;
    })
    .await;
}

/// Waits, within [`PROMPT`], until `store` can take the lease a lost reply
/// left behind: its owner released it.
async fn lost_lease_released(store: &RedisStore) {
    let msg = "the lost lease was never released";
    lease_within(store, Duration::from_secs(60), PROMPT, msg).await;
}

/// Takes and gives back a lease, so that Redis has the script that takes
/// one: a lease asked for next runs even if its reply is lost (a script
/// Redis lacks would fail, unseen, before taking anything).
async fn load_the_lease_script(store: &RedisStore) {
    let lease = take_lease(store, Duration::from_secs(10)).await.unwrap();
    store.release(lease).await.unwrap();
}

/// Found in review: the lost lease was released by one attempt, a timeout
/// later; with Redis out of reach a little longer than that, the lease
/// stayed for its whole time to live and kept every process out. The
/// release is tried again until it lands.
#[tokio::test]
async fn a_lease_whose_answer_was_lost_is_released_once_redis_is_back() {
    with_redis(async |server| {
        let (relay, store) = behind_a_relay(server, Duration::from_millis(200)).await;
        load_the_lease_script(&store).await;
        relay.lose_replies_on_open_connections();
        relay.refuse_new_connections(true);
        assert!(store.try_lease(Duration::from_secs(60)).await.is_err());
        // A few release attempts fail before Redis is reachable again: the
        // store tries a new connection for each, turned away.
        relay.wait_turned_away(3).await;
        let direct = open(server, "app");
        assert_eq!(
            take_lease(&direct, Duration::from_secs(60)).await,
            None,
            "taken"
        );
        relay.refuse_new_connections(false);

        lost_lease_released(&direct).await;
    })
    .await;
}

/// Found in review: the release of a lease whose answer never came
/// stopped at its first success, which may have deleted nothing: the lease
/// script, held up on the old connection longer than that, landed after
/// it, and the lease stayed for its whole time to live. It is released
/// again each timeout until it is gone or would have lapsed.
#[tokio::test]
async fn a_lease_whose_request_lands_after_its_release_is_released_too() {
    with_redis(async |server| {
        let (relay, store) = behind_a_relay(server, Duration::from_millis(200)).await;
        load_the_lease_script(&store).await;
        relay.hold_up_requests_on_open_connections();
        // Unanswered within its timeout; released a timeout later, over a
        // new connection, before the script itself lands.
        assert!(store.try_lease(Duration::from_secs(60)).await.is_err());
        relay.wait_held_delivered().await;

        let direct = open(server, "app");
        lost_lease_released(&direct).await;
    })
    .await;
}

#[tokio::test]
async fn a_connection_gone_silent_is_replaced_after_one_timeout() {
    with_redis(async |server| {
        let (relay, store) = behind_a_relay(server, Duration::from_millis(300)).await;

        relay.silence_open_connections();
        // The kept connection never answers again: one call times out, and
        // the next one connects afresh instead of waiting on it forever.
        fails_fast("load", Cause::Silent, store.load()).await;
        assert_eq!(store.load().await.unwrap(), Some(record(1, b"a")));
    })
    .await;
}

/// Found in review: the connection was dropped only when a call failed,
/// so a call cut off first by the caller (the layer's refresh timeout, if
/// set at or below the store's) left a silent connection in use for good.
#[tokio::test]
async fn a_call_cut_off_by_its_caller_gives_up_its_connection() {
    with_redis(async |server| {
        // The store's own timeout (60 s) is far past the bound below (20 s):
        // only a fresh connection answers within it, however loaded the
        // machine.
        let (relay, store) = behind_a_relay(server, Duration::from_secs(60)).await;

        relay.silence_open_connections();
        let cut_off = tokio::time::timeout(Duration::from_millis(200), store.load()).await;
        assert!(cut_off.is_err(), "the silent connection answered");
        let load = tokio::time::timeout(Duration::from_secs(20), store.load()).await;
        assert_eq!(
            load.expect("a fresh connection").unwrap(),
            Some(record(1, b"a"))
        );
    })
    .await;
}

#[tokio::test]
async fn a_store_works_again_after_redis_restarts() {
    with_redis(async |server| {
        let store = open(server, "app");
        let mut changes = store.subscribe().unwrap();
        wait_for_subscribers(server, "app:events", 1).await;
        assert!(open(server, "app")
            .compare_and_swap(None, record(1, b"a"))
            .await
            .unwrap());
        announced(&mut changes, 1).await;

        server.stop();
        fails_fast("load", Cause::Gone, store.load()).await;
        server.restart();

        // The restarted server kept nothing; the store's next call connects
        // to it.
        assert_eq!(store.load().await.unwrap(), None);
        assert!(swap(&store, None, 2, b"b").await);
        assert!(take_lease(&store, Duration::from_secs(10)).await.is_some());
        // The change feed subscribes again on its own, and hears a process
        // that started after the restart.
        wait_for_subscribers(server, "app:events", 1).await;
        assert!(open(server, "app")
            .compare_and_swap(Some(2), record(3, b"c"))
            .await
            .unwrap());
        announced(&mut changes, 3).await;
    })
    .await;
}

#[tokio::test]
async fn a_store_idle_through_a_restart_recovers_by_its_second_call() {
    with_redis(async |server| {
        let store = open(server, "app");
        assert!(swap(&store, None, 1, b"a").await);
        server.restart();
        // The first call may still meet the connection Redis closed.
        let first = store.load().await;
        let second = store.load().await.expect("the second call reconnects");
        assert_eq!(second, None);
        if let Ok(first) = first {
            assert_eq!(first, None);
        }
    })
    .await;
}

#[tokio::test]
async fn a_store_made_while_redis_is_down_connects_once_it_is_up() {
    with_redis(async |server| {
        server.stop();
        // Opening contacts nothing, so it succeeds with Redis down.
        let store = open(server, "app");
        fails_fast("load", Cause::Gone, store.load()).await;
        server.restart();
        assert_eq!(store.load().await.unwrap(), None);
        assert!(swap(&store, None, 1, b"a").await);
    })
    .await;
}

#[test]
fn a_store_outliving_its_runtime_works_in_the_next_one() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    let store = open(&server, "app");
    runtime().block_on(bounded(async {
        assert!(swap(&store, None, 1, b"a").await);
        let _changes = store.subscribe().unwrap();
        wait_for_subscribers(&server, "app:events", 1).await;
    }));
    // The connection and the feed task died with that runtime.
    runtime().block_on(bounded(async {
        wait_for_subscribers(&server, "app:events", 0).await;
        let first = store.load().await;
        assert_eq!(store.load().await.unwrap(), Some(record(1, b"a")));
        if let Ok(first) = first {
            assert_eq!(first, Some(record(1, b"a")));
        }
        let mut changes = store.subscribe().expect("a new feed in this runtime");
        wait_for_subscribers(&server, "app:events", 1).await;
        assert!(open(&server, "app")
            .compare_and_swap(Some(1), record(2, b"b"))
            .await
            .unwrap());
        announced(&mut changes, 2).await;
    }));
}

#[test]
fn opening_checks_only_the_url() {
    assert!(RedisStore::open("redis://127.0.0.1:1/", "app").is_ok());
    let error = RedisStore::open("no scheme here", "app").unwrap_err();
    assert!(!error.is_corrupt());
    assert!(error.source().is_some());

    let store = RedisStore::open("redis://:hunter2@127.0.0.1:1/", "app").unwrap();
    let debug = format!("{store:?}");
    assert!(debug.contains("app"), "{debug}");
    assert!(!debug.contains("hunter2"), "{debug}");
}
