//! [`RedisStore`]: one token shared by a fleet of processes, through Redis.
//!
//! The key layout, the connection behaviour and what happens while Redis is
//! down are documented on the type.

use std::fmt;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubSink, PubSubStream};
use ::redis::{Client, RedisError, RedisResult, Script, Value};
use futures_core::Stream;
use tokio::sync::{oneshot, watch};
use zeroize::Zeroizing;

use super::{Lease, Record, StoreError, TokenStore};

/// How long a connection attempt or a command may take by default.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

/// How often the change feed tries again to subscribe after losing Redis.
const FEED_RETRY: Duration = Duration::from_secs(1);

/// How often the change feed checks that its idle connection still works.
///
/// A subscription only reads, so without a check a connection cut off
/// without a reset (a host that vanished, a dropped NAT entry) would look
/// quiet forever and the processes would fall back to polling for good.
const FEED_HEALTH_CHECK: Duration = Duration::from_secs(15);

/// Redis refuses expiries that overflow its clock; no lease needs more than
/// this (about 49 days).
const MAX_LEASE_MS: u64 = u32::MAX as u64;

/// `KEYS[1]`: the tokens hash. `ARGV`: the expected version (empty: none
/// stored yet), the new version, the payload, the events channel.
///
/// One script, so the check, the write and the announcement are atomic: no
/// other command runs between them. A key holding anything where no record
/// is expected, or a version without its payload, is no record to swap
/// over: `load` reports both as corrupt, and a corrupt record is never
/// overwritten (found in review: a payload whose version was removed was).
static COMPARE_AND_SWAP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local stored = redis.call('HGET', KEYS[1], 'version')
if ARGV[1] == '' then
  if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
elseif stored ~= ARGV[1] or redis.call('HEXISTS', KEYS[1], 'payload') == 0 then
  return 0
end
redis.call('HSET', KEYS[1], 'version', ARGV[2], 'payload', ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[2])
return 1
",
    )
});

/// `KEYS[1]`: the lease. `ARGV`: the new owner, the time to live in ms.
/// Answers 1 when the lease was taken, 0 when someone holds it, and -1
/// when the key existed but never lapsed: it lapses now.
///
/// Every lease this store writes lapses by itself. A key without a time to
/// live (set by hand, or made persistent), of whatever kind, would answer
/// "held" to `SET … NX` forever, and every refresh in the fleet would wait
/// for it and fail. Reported as a store failure instead, it would switch
/// the fleet's coordination off for good: each process would refresh on
/// its own, from the same refresh token. Given a lease's time to live, it
/// is a holder like any other, waited for once. (The write comes after a
/// read of the clock: fine with script effects replication, the default
/// since Redis 5, and on Redis 4, where `PTTL` is not a random command.)
static TAKE_LEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 1
end
if redis.call('PTTL', KEYS[1]) == -1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return -1
end
return 0
",
    )
});

/// `KEYS[1]`: the lease. `ARGV[1]`: the owner giving it back.
///
/// A plain `DEL` could remove a lease that lapsed and was taken by another
/// process meanwhile; comparing first, atomically, cannot.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
",
    )
});

/// A store in Redis, shared by every process that uses the same server and
/// key prefix: the fleet refreshes once between them.
///
/// Requires the `redis` feature. Works with a single Redis server (or a
/// primary behind one address), version 4 or newer; not with Redis Cluster.
///
/// # Keys
///
/// With the prefix `billing-api`, the store uses:
///
/// | key | type | content |
/// |---|---|---|
/// | `billing-api:tokens` | hash | `version`: the record's version, in decimal; `payload`: the record's bytes, unchanged |
/// | `billing-api:lease` | string | the refresh lease's owner, `{pid}-{128 random bits in hex}`, written with `SET … NX PX {ttl in ms}` so it lapses on its own |
/// | `billing-api:events` | pub/sub channel | each version stored, in decimal, published in the same script that stores it |
///
/// A compare-and-swap is one Lua script (check `version`, `HSET`, `PUBLISH`),
/// and so are taking the lease (`SET … NX PX`, and on a held key a check that
/// it lapses: a lease key that never does, set by hand or made persistent, is
/// given the lease's time to live, with a warning, so that it keeps the fleet
/// waiting once rather than for ever) and giving it back (delete it only if
/// it still names this owner). A lease asked for whose answer never
/// came (lost with its connection, or past its caller's patience) may have been
/// taken all the same, so it is given back a timeout later (and again until
/// that lands, or the lease would have lapsed) rather than left to lapse; a key
/// of another type where the record belongs is a
/// [corrupt](StoreError::is_corrupt) record. The payload is the layer's
/// encoding of the tokens: wrap the store in
/// [`Encrypted`] so that Redis, its replicas and its
/// dumps hold only sealed bytes. It also keeps them out of this process's
/// memory in the clear beyond the layer's own copies, which are wiped: the
/// Redis client copies each command's arguments and each reply into
/// buffers of its own, which are freed without being wiped.
///
/// # Connections
///
/// Nothing contacts Redis before the first store call, so a process may
/// start while Redis is down. The first call connects; every call after
/// reuses that connection. A call that fails for any reason, or that its
/// caller stops waiting for, drops it, and the next call connects afresh:
/// after Redis restarts (or fails over to a new address), the first call
/// that notices fails and the next one works.
/// Connecting and each command are bounded by the [timeout](Self::timeout),
/// 1 s by default.
///
/// [`subscribe`](TokenStore::subscribe) starts one background task per
/// store (shared by its clones) that holds a separate pub/sub connection,
/// subscribes again every second while Redis is away, and ends when the
/// last clone is dropped. Versions announced while it was disconnected are
/// not replayed: waiting processes [poll](Self::poll_every) meanwhile, and
/// each time the feed subscribes it signals a change without a version of
/// its own, so that every watcher loads the record once.
///
/// # When Redis is unreachable
///
/// Every store call fails within about the timeout (twice it for a call
/// that must connect first: the connection and the command are bounded
/// each) with an
/// [unavailable](StoreError::unavailable) error (never a hang, never a
/// token in the message). The layer then logs a warning and, once its
/// token must be replaced, refreshes on its own, as it would without a
/// store (see the [module docs](crate::store)); a request that a valid
/// local token can serve never fails because of Redis. Once Redis answers again,
/// the processes share their tokens again.
///
/// ```
/// use std::time::Duration;
/// use tower_token_refresh::store::{RedisStore, TokenStore};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// // Nothing is contacted yet: only the URL is checked.
/// let store = RedisStore::open("redis://:hunter2@127.0.0.1:1/", "billing-api")
///     .unwrap()
///     .poll_every(Duration::from_millis(100))
///     .timeout(Duration::from_millis(500));
/// assert!(!format!("{store:?}").contains("hunter2"));
///
/// // Nothing listens on port 1: the call fails fast, and the layer would
/// // put its refresh off while its token is good.
/// let err = store.load().await.unwrap_err();
/// assert!(!err.is_corrupt());
/// # }
/// ```
///
/// Sharing a layer's tokens across processes (built outside a runtime, as
/// here, nothing is contacted; the store connects once the layer runs on a
/// tokio runtime):
///
/// ```
/// use std::time::Duration;
/// use tower_token_refresh::store::RedisStore;
/// use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};
///
/// # fn main() -> Result<(), tower_token_refresh::store::StoreError> {
/// let store = RedisStore::open("redis://redis.internal:6379/", "billing-api")?;
/// let layer = TokenRefreshLayer::builder(refresh_fn(|_| async {
///         Ok::<_, RefreshError>(TokenSet::new("access").with_expires_in(Duration::from_secs(600)))
///     }))
///     .store(store)
///     .build();
/// // Nothing is stored or asked of Redis until the first token is needed.
/// assert_eq!(layer.handle().stats().refreshes, 0);
/// # Ok(())
/// # }
/// ```
///
/// # Clone
///
/// Clones share the connection and the change feed; set the options
/// before cloning.
///
#[cfg_attr(feature = "encryption", doc = "[`Encrypted`]: crate::store::Encrypted")]
#[cfg_attr(
    not(feature = "encryption"),
    doc = "[`Encrypted`]: https://docs.rs/tower-token-refresh/latest/tower_token_refresh/store/struct.Encrypted.html"
)]
#[derive(Clone)]
pub struct RedisStore {
    shared: Arc<Shared>,
    poll_interval: Duration,
    timeout: Duration,
}

struct Shared {
    client: Client,
    prefix: Box<str>,
    tokens_key: String,
    lease_key: String,
    events_channel: String,
    connection: Mutex<Option<Connection>>,
    /// Names each connection, so a failed call drops only the connection
    /// it used, never a newer one another call made meanwhile.
    connections_made: AtomicU64,
    feed: Mutex<Option<Feed>>,
}

#[derive(Clone)]
struct Connection {
    id: u64,
    manager: ConnectionManager,
}

struct Feed {
    changes: watch::Receiver<u64>,
    /// Dropped with the last store clone, which ends the feed task.
    _stop: oneshot::Sender<()>,
}

impl RedisStore {
    /// A store at the Redis server `url` (`redis://[:password@]host[:port][/db]`),
    /// keeping its keys under `prefix`. Fails only for a URL that cannot be
    /// parsed: nothing is contacted until the first store call.
    ///
    /// ```
    /// use tower_token_refresh::store::RedisStore;
    ///
    /// let store = RedisStore::open("redis://127.0.0.1:6379/", "billing-api").unwrap();
    /// assert_eq!(store.prefix(), "billing-api");
    /// assert!(RedisStore::open("not a url", "billing-api").is_err());
    /// ```
    pub fn open(url: &str, prefix: impl Into<String>) -> Result<Self, StoreError> {
        let client = Client::open(url).map_err(|error| {
            StoreError::unavailable("the Redis URL cannot be parsed").with_source(error)
        })?;
        Ok(Self::new(client, prefix))
    }

    /// A store using `client` (for options a URL cannot express), keeping
    /// its keys under `prefix`. Nothing is contacted until the first store
    /// call.
    ///
    /// ```
    /// use tower_token_refresh::store::RedisStore;
    ///
    /// let client = redis::Client::open("redis://127.0.0.1:6379/").unwrap();
    /// let store = RedisStore::new(client, "billing-api");
    /// assert_eq!(store.prefix(), "billing-api");
    /// ```
    pub fn new(client: Client, prefix: impl Into<String>) -> Self {
        let prefix = prefix.into();
        Self {
            shared: Arc::new(Shared {
                client,
                tokens_key: format!("{prefix}:tokens"),
                lease_key: format!("{prefix}:lease"),
                events_channel: format!("{prefix}:events"),
                prefix: prefix.into_boxed_str(),
                connection: Mutex::new(None),
                connections_made: AtomicU64::new(0),
                feed: Mutex::new(None),
            }),
            poll_interval: Duration::from_millis(250),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// How often a process waiting for another one's refresh looks at the
    /// store, in case an announcement was missed. Default: 250 ms.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_token_refresh::store::{RedisStore, TokenStore};
    ///
    /// let store = RedisStore::open("redis://127.0.0.1/", "billing-api")
    ///     .unwrap()
    ///     .poll_every(Duration::from_millis(100));
    /// assert_eq!(store.poll_interval(), Duration::from_millis(100));
    /// ```
    pub fn poll_every(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// How long connecting to Redis, and then each command, may take before
    /// the call fails. Default: 1 s. Keep it well under the layer's
    /// [refresh timeout](crate::Builder::refresh_timeout), which cuts every
    /// store call off anyway.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_token_refresh::store::{RedisStore, TokenStore};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
    /// // A server that takes connections and never answers.
    /// let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    /// let url = format!("redis://{}/", silent.local_addr().unwrap());
    /// let store = RedisStore::open(&url, "billing-api")
    ///     .unwrap()
    ///     .timeout(Duration::from_millis(300));
    ///
    /// let started = tokio::time::Instant::now();
    /// assert!(store.load().await.is_err());
    /// assert!(started.elapsed() < Duration::from_secs(1), "not the default second");
    /// # }
    /// ```
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The prefix of this store's keys.
    ///
    /// ```
    /// use tower_token_refresh::store::RedisStore;
    ///
    /// let store = RedisStore::open("redis://127.0.0.1/", "billing-api").unwrap();
    /// assert_eq!(store.prefix(), "billing-api");
    /// ```
    pub fn prefix(&self) -> &str {
        &self.shared.prefix
    }

    /// The connection to use, made now if there is none.
    async fn connection(&self) -> Result<Connection, StoreError> {
        if let Some(connection) = self.shared.connection().clone() {
            return Ok(connection);
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            // One attempt per call: the caller, not a retry loop, decides
            // when to try again, and a call must fail within the timeout.
            .set_number_of_retries(0);
        let manager = ConnectionManager::new_with_config(self.shared.client.clone(), config)
            .await
            .map_err(|error| {
                StoreError::unavailable("cannot connect to Redis").with_source(error)
            })?;
        // Concurrent first calls may each have connected: the first one kept
        // wins, and the others' connections close as they are dropped.
        let mut slot = self.shared.connection();
        let kept = slot.get_or_insert_with(|| Connection {
            id: self.shared.connections_made.fetch_add(1, Ordering::Relaxed),
            manager,
        });
        Ok(kept.clone())
    }

    /// Runs `command` on the connection; on failure drops that connection.
    async fn run<T, F, Fut>(&self, what: &'static str, command: F) -> Result<T, StoreError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let Connection { id, manager } = self.connection().await?;
        // `ConnectionManager` reconnects by itself only when an error says
        // the connection dropped. A connection that went silent (a failover
        // that black-holed the old address, a dropped NAT entry) only times
        // out, call after call; one whose tasks died with their runtime
        // fails the same way each time. A fresh connection on the next call
        // recovers from all of them, and failures are rare enough that
        // reconnecting costs nothing. So is a call its caller cut off
        // first (the layer bounds each store call by its refresh timeout):
        // a silent connection would otherwise stay in use for good.
        let mut unsettled = Unsettled {
            shared: &self.shared,
            id,
            settled: false,
        };
        let result = command(manager).await;
        // A key of another kind answers every call the same way: that is
        // a record that does not read, not Redis failing (and the
        // connection that carried the answer is sound).
        let wrong_type = matches!(&result, Err(error) if is_wrong_type(error));
        unsettled.settled = result.is_ok() || wrong_type;
        result.map_err(|error| store_error(what, error))
    }
}

/// What a failed call (`what`) tells the store's caller. A key of another
/// kind is a record that does not read. A server's other replies are kept
/// by their code alone: in full they can quote the command's arguments,
/// tokens included (found in review: where scripts are disabled, Redis
/// answers `ERR unknown command 'EVALSHA', with args beginning with: …`
/// and the record's start). Any other error (I/O, a timeout) is kept as
/// the cause.
fn store_error(what: &str, error: RedisError) -> StoreError {
    if is_wrong_type(&error) {
        return StoreError::corrupt(format!("{what}: a key holds another kind of value"));
    }
    match error.code() {
        Some(code) => StoreError::unavailable(format!("{what}: Redis answered {code}")),
        None => StoreError::unavailable(what).with_source(error),
    }
}

/// Whether Redis refused a command for a key of another kind: `WRONGTYPE`,
/// or before Redis 7 the `ERR Error running script` that wraps it when the
/// command ran in a script.
fn is_wrong_type(error: &RedisError) -> bool {
    error.code() == Some("WRONGTYPE")
        || (error.code() == Some("ERR") && error.detail().is_some_and(|d| d.contains("WRONGTYPE")))
}

impl RedisStore {
    /// Gives `lease` back if it still holds it: whether it did (and so
    /// deleted it).
    async fn release_counted(&self, lease: &Lease) -> Result<bool, StoreError> {
        let mut invocation = RELEASE.key(&self.shared.lease_key);
        invocation.arg(lease.owner());
        let deleted: i64 = self
            .run(
                "releasing the refresh lease in Redis",
                |mut manager| async move { invocation.invoke_async(&mut manager).await },
            )
            .await?;
        Ok(deleted > 0)
    }
}

/// A lease asked for and not yet answered. The lease script may have run with
/// its reply lost, or come after its caller stopped waiting: then the lease
/// is in Redis with no one knowing they hold it, and every process would
/// wait out its time to live. Dropped unanswered, it releases the lease on
/// a task of its own, one timeout later, and again each timeout until a
/// release deletes it or it would have lapsed anyway: Redis may be out of
/// reach for longer, and a script still on its way over the old connection
/// (held up in the network) may land after a release that found nothing.
/// The release deletes only a lease this owner holds, so it is harmless if
/// the script never ran.
struct Unanswered {
    store: RedisStore,
    lease: Option<Lease>,
    ttl: Duration,
}

impl Drop for Unanswered {
    fn drop(&mut self) {
        let Some(lease) = self.lease.take() else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let store = self.store.clone();
            let ttl = self.ttl;
            runtime.spawn(async move {
                let lapsed = tokio::time::Instant::now() + ttl;
                loop {
                    // After a timeout: a script still on its way over the old
                    // connection lands first (or is lost with it), and the
                    // release goes over a fresh connection.
                    tokio::time::sleep(store.timeout).await;
                    let released = store.release_counted(&lease).await;
                    let over = tokio::time::Instant::now() >= lapsed;
                    match released {
                        Ok(true) => return,
                        // Found in review: stopping at a release that found
                        // nothing left a script that landed later holding
                        // the lease for its whole time to live.
                        Ok(false) if !over => {}
                        Ok(false) => return,
                        // A key of another kind will not turn into a lease.
                        Err(error) if error.is_corrupt() || over => {
                            tracing::debug!(error = %error, "releasing an unanswered lease failed");
                            return;
                        }
                        Err(_) => {}
                    }
                }
            });
        }
    }
}

/// Discards its connection when dropped before its call succeeded: the
/// call failed, or its caller stopped waiting.
struct Unsettled<'a> {
    shared: &'a Shared,
    id: u64,
    settled: bool,
}

impl Drop for Unsettled<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.shared.discard(self.id);
        }
    }
}

impl Shared {
    fn connection(&self) -> MutexGuard<'_, Option<Connection>> {
        // Plain data, always left consistent: a panic elsewhere must not
        // wedge the store.
        self.connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn feed(&self) -> MutexGuard<'_, Option<Feed>> {
        self.feed.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn discard(&self, id: u64) {
        let mut slot = self.connection();
        if slot.as_ref().is_some_and(|connection| connection.id == id) {
            *slot = None;
        }
    }
}

impl TokenStore for RedisStore {
    fn load(&self) -> impl Future<Output = Result<Option<Record>, StoreError>> + Send {
        let mut command = ::redis::cmd("HMGET");
        command
            .arg(&self.shared.tokens_key)
            .arg("version")
            .arg("payload");
        async move {
            let (version, payload): (Option<Vec<u8>>, Option<Vec<u8>>) = self
                .run(
                    "loading the stored tokens from Redis",
                    |mut manager| async move { command.query_async(&mut manager).await },
                )
                .await?;
            // Wiped on every path that does not hand it over to a record.
            let mut payload = payload.map(Zeroizing::new);
            let key = &self.shared.tokens_key;
            match (version, payload.as_mut()) {
                (None, None) => Ok(None),
                (Some(version), Some(payload)) => {
                    // In the one form the swap script compares with (the
                    // stored string against the decimal the layer sends):
                    // read as a number, "05" or "+5" would make every swap
                    // fail unexplained.
                    let version = std::str::from_utf8(&version)
                        .ok()
                        .and_then(|text| text.parse::<u64>().ok().filter(|n| n.to_string() == text))
                        .ok_or_else(|| {
                            StoreError::corrupt(format!(
                                "the `version` field of the Redis hash `{key}` is not a decimal number in its plain form"
                            ))
                        })?;
                    Ok(Some(Record::new(version, std::mem::take(&mut **payload))))
                }
                _ => Err(StoreError::corrupt(format!(
                    "the Redis hash `{key}` holds only one of `version` and `payload`"
                ))),
            }
        }
    }

    fn compare_and_swap(
        &self,
        expected: Option<u64>,
        record: Record,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        let mut invocation = COMPARE_AND_SWAP.key(&self.shared.tokens_key);
        invocation
            .arg(
                expected
                    .map(|version| version.to_string())
                    .unwrap_or_default(),
            )
            .arg(record.version())
            .arg(record.payload())
            .arg(&self.shared.events_channel);
        async move {
            let swapped: i64 = self
                .run("storing the tokens in Redis", |mut manager| async move {
                    invocation.invoke_async(&mut manager).await
                })
                .await?;
            Ok(swapped == 1)
        }
    }

    fn try_lease(
        &self,
        ttl: Duration,
    ) -> impl Future<Output = Result<Option<Lease>, StoreError>> + Send {
        let lease = Lease::of_this_process();
        let ttl_ms = u64::try_from(ttl.as_millis())
            .unwrap_or(u64::MAX)
            .clamp(1, MAX_LEASE_MS);
        let mut invocation = TAKE_LEASE.key(&self.shared.lease_key);
        invocation.arg(lease.owner()).arg(ttl_ms);
        let mut unanswered = Unanswered {
            store: self.clone(),
            lease: Some(lease),
            ttl: Duration::from_millis(ttl_ms),
        };
        async move {
            let answer: i64 = self
                .run(
                    "taking the refresh lease in Redis",
                    |mut manager| async move { invocation.invoke_async(&mut manager).await },
                )
                .await?;
            let lease = unanswered.lease.take().expect("taken once, here");
            if answer == -1 {
                tracing::warn!(
                    key = %self.shared.lease_key,
                    "the refresh lease key had no time to live, so no process could take the lease; \
                     it now lapses like a lease (something other than this store wrote or changed it)"
                );
            }
            Ok((answer == 1).then_some(lease))
        }
    }

    async fn release(&self, lease: Lease) -> Result<(), StoreError> {
        self.release_counted(&lease).await.map(drop)
    }

    /// The versions announced on `{prefix}:events`, fed by one background
    /// task per store. `None` outside a Tokio runtime.
    fn subscribe(&self) -> Option<watch::Receiver<u64>> {
        let mut feed = self.shared.feed();
        if let Some(feed) = feed.as_ref() {
            // The task dies with the runtime it was spawned on, closing its
            // sender; a store used from a new runtime starts a new one.
            if feed.changes.has_changed().is_ok() {
                return Some(feed.changes.clone());
            }
        }
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let (sender, changes) = watch::channel(0);
        let (stop, stopped) = oneshot::channel();
        runtime.spawn(run_feed(
            self.shared.client.clone(),
            self.shared.events_channel.clone(),
            sender,
            stopped,
            self.timeout,
        ));
        *feed = Some(Feed {
            changes: changes.clone(),
            _stop: stop,
        });
        Some(changes)
    }

    fn poll_interval(&self) -> Duration {
        self.poll_interval
    }
}

/// Feeds `changes` from the events channel until `stop` fires (or its
/// sender is dropped), subscribing again whenever the connection is lost.
async fn run_feed(
    client: Client,
    channel: String,
    changes: watch::Sender<u64>,
    mut stop: oneshot::Receiver<()>,
    timeout: Duration,
) {
    loop {
        let subscribed = tokio::select! {
            _ = &mut stop => return,
            subscribed = subscribe_to(&client, &channel, timeout) => subscribed,
        };
        match subscribed {
            Ok((sink, messages)) => {
                tracing::debug!(channel = %channel, "subscribed to token changes in Redis");
                // What was stored while no subscription stood was announced
                // to no one here: a signal without a version of its own has
                // every watcher load the record once.
                changes.send_modify(|_| {});
                let lost = tokio::select! {
                    _ = &mut stop => return,
                    lost = forward(sink, messages, &changes, timeout) => lost,
                };
                tracing::warn!(
                    error = %lost,
                    channel = %channel,
                    "lost the Redis subscription to token changes; subscribing again every second, polling meanwhile"
                );
            }
            Err(error) => tracing::debug!(
                error = %error,
                channel = %channel,
                "cannot subscribe to token changes in Redis"
            ),
        }
        tokio::select! {
            _ = &mut stop => return,
            () = tokio::time::sleep(FEED_RETRY) => {}
        }
    }
}

/// Why a subscription ended, or never started.
enum Lost {
    Redis(RedisError),
    TimedOut(&'static str),
    Closed,
}

impl fmt::Display for Lost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Redis(error) => error.fmt(f),
            Self::TimedOut(what) => write!(f, "{what} timed out"),
            Self::Closed => f.write_str("the connection was closed"),
        }
    }
}

/// A new pub/sub connection subscribed to `channel`.
async fn subscribe_to(
    client: &Client,
    channel: &str,
    timeout: Duration,
) -> Result<(PubSubSink, PubSubStream), Lost> {
    // Unlike the command connection, a pub/sub connection has no timeouts
    // of its own.
    let (mut sink, messages) = tokio::time::timeout(timeout, client.get_async_pubsub())
        .await
        .map_err(|_| Lost::TimedOut("connecting"))?
        .map_err(Lost::Redis)?
        .split();
    tokio::time::timeout(timeout, sink.subscribe(channel))
        .await
        .map_err(|_| Lost::TimedOut("subscribing"))?
        .map_err(Lost::Redis)?;
    Ok((sink, messages))
}

/// Forwards every announced version to `changes` until the connection
/// fails.
async fn forward(
    mut sink: PubSubSink,
    mut messages: PubSubStream,
    changes: &watch::Sender<u64>,
    timeout: Duration,
) -> Lost {
    loop {
        tokio::select! {
            message = next(&mut messages) => {
                let Some(message) = message else {
                    return Lost::Closed;
                };
                let version = std::str::from_utf8(message.get_payload_bytes())
                    .ok()
                    .and_then(|text| text.parse().ok());
                match version {
                    Some(version) => {
                        changes.send_replace(version);
                    }
                    None => tracing::debug!("ignored a token change that is not a version number"),
                }
            }
            () = tokio::time::sleep(FEED_HEALTH_CHECK) => {
                match tokio::time::timeout(timeout, sink.ping::<Value>()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(error)) => return Lost::Redis(error),
                    Err(_) => return Lost::TimedOut("the health check"),
                }
            }
        }
    }
}

async fn next(messages: &mut PubSubStream) -> Option<::redis::Msg> {
    poll_fn(|cx| Pin::new(&mut *messages).poll_next(cx)).await
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not the client: its connection info holds the password.
        f.debug_struct("RedisStore")
            .field("prefix", &self.shared.prefix)
            .field("connected", &self.shared.connection().is_some())
            .field("subscribed", &self.shared.feed().is_some())
            .field("poll_interval", &self.poll_interval)
            .field("timeout", &self.timeout)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error a client makes of the server's error `reply`.
    fn server_error(reply: &str) -> RedisError {
        match ::redis::parse_redis_value(format!("-{reply}\r\n").as_bytes()) {
            Ok(value) => value.extract_error().expect_err("an error reply"),
            Err(error) => error,
        }
    }

    #[test]
    fn a_reply_quoting_the_commands_arguments_is_kept_by_its_code_alone() {
        let reply = "ERR unknown command 'EVALSHA', with args beginning with: \
                     'abc123' '1' 'app:tokens' '4' '5' '{\"access_token\":\"at-secret";
        let error = store_error("storing the tokens in Redis", server_error(reply));
        let shown = format!("{error} {error:?}");
        assert!(!shown.contains("at-secret"), "{shown}");
        assert!(shown.contains("Redis answered ERR"), "{shown}");
        assert!(std::error::Error::source(&error).is_none());
    }

    #[test]
    fn a_key_of_another_kind_is_told_apart_whichever_redis_reports_it() {
        let wrong = "WRONGTYPE Operation against a key holding the wrong kind of value";
        assert!(is_wrong_type(&server_error(wrong)));
        // Redis 6 and earlier wrap it when the command ran in a script.
        let scripted =
            format!("ERR Error running script (call to f_0a1b): @user_script:1: {wrong}");
        assert!(is_wrong_type(&server_error(&scripted)));
        for other in [
            "ERR unknown command 'HGETALL'",
            "LOADING Redis is loading the dataset in memory",
            "NOSCRIPT No matching script",
        ] {
            assert!(!is_wrong_type(&server_error(other)), "{other}");
        }
    }
}
