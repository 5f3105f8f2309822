//! Token stores: one token shared by many processes, or kept across restarts.
//!
//! Without a store every process refreshes on its own. With rotating refresh
//! tokens that is worse than wasteful: two replicas presenting the same
//! refresh token look like a stolen token to the identity server, which then
//! revokes the whole family and every replica with it. With a store, the
//! refresh flight of each process (still one per process) follows one
//! protocol:
//!
//! 1. Load the stored record. If its version is newer than the one this
//!    process holds and its token is still usable, adopt it: no refresh.
//! 2. Otherwise take the store's lease. Whoever holds it loads once more
//!    (someone may have finished just before), refreshes from the newest
//!    stored refresh token, stores the result as the next version with a
//!    compare-and-swap, and releases the lease.
//! 3. Everyone else waits for the store to announce a new version (or polls
//!    for one), then adopts it. A lease left by a crashed holder expires, and
//!    the next process to take it completes the refresh.
//!
//! A refresh token rejected for good (`invalid_grant`) sends the flight back
//! to the store before any login: a sibling may have rotated it meanwhile.
//!
//! Tokens set by hand ([`Builder::initial_tokens`](crate::Builder::initial_tokens),
//! [`TokenHandle::set_tokens`](crate::TokenHandle::set_tokens)) stay in this
//! process until its next refresh stores its result; a version a sibling
//! stores replaces them at the next refresh or announcement. A refresh
//! they overtook still stores what it got (it spent the stored refresh
//! token), but that version, and one such a refresh adopted, are this
//! process's own, never adopted back over them.
//!
//! A store that fails or does not answer within the refresh timeout never
//! fails a request: the process logs a warning, and requests go on with any
//! token still valid. While that token is good for more than three refresh
//! timeouts before its mandatory window (one more for a login source, one
//! more for an `on_refresh` hook),
//! the refresh is put off and the store asked again after a backoff (never
//! later than that): a refresh the fleet does not know of may
//! present the refresh token a lease holder presents at the same time. A
//! token that must be replaced (that close to its mandatory window,
//! rejected, or missing) is refreshed on its own at once, as it would be without a
//! store, and so is a forced refresh, unless the flight has seen another
//! process holding the refresh lease: then it waits for that process's
//! tokens, polling on, as long as the lease may last. The process then offers the new
//! tokens to the store from a task of their own (compare-and-swap over the
//! version it found there, so never over a newer one; into the store as
//! its first record if it has lost its data meanwhile, as a Redis restarted
//! without persistence has): a source that
//! rotates refresh tokens has spent the one the store may still hold. So
//! does a process that refreshed under the lease and then failed to write;
//! it keeps the lease until the offer has settled (within the lease's time
//! to live), trying a failed offer again for up to a refresh timeout, so
//! that no other process refreshes from the spent token meanwhile. Tokens the layer refuses (an access token already expired,
//! or not a header value) are offered too if they rotated the refresh
//! token: no request can use them, but theirs is the live refresh token.
//! An offer whose write timed out may still reach the store later (Redis
//! runs a command its client stopped waiting for): a record carrying a
//! refresh token the process has since spent is never adopted by it, and
//! it replaces that record with its own tokens when it next sees it with
//! no write of its own pending.
//!
//! Stores hold opaque bytes: the layer encodes the tokens (with an absolute
//! expiry, so any process can read it) and, wrapped in
//! [`Encrypted`], seals them, so a store only keeps
//! versioned records, a lease and a change signal. The stores here:
//!
//! - [`MemoryStore`]: one process, any number of layers (tests, or several
//!   clients sharing one credential).
//! - [`FileStore`] (feature `file`): the processes of one host (on Unix),
//!   and across restarts.
//! - [`RedisStore`] (feature `redis`): a fleet of processes.
//!
//! ```
//! use std::time::Duration;
//! use tower_token_refresh::{refresh_fn, store::MemoryStore, RefreshError, TokenRefreshLayer, TokenSet};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let store = MemoryStore::new();
//! let source = || refresh_fn(|_| async {
//!     Ok::<_, RefreshError>(TokenSet::new("shared").with_expires_in(Duration::from_secs(600)))
//! });
//! let first = TokenRefreshLayer::builder(source()).store(store.clone()).build();
//! let second = TokenRefreshLayer::builder(source()).store(store.clone()).build();
//!
//! first.handle().force_refresh().await.unwrap();
//! // The store announced the new version; the second layer adopted it
//! // instead of refreshing.
//! # for _ in 0..10 { tokio::task::yield_now().await; }
//! assert_eq!(first.handle().stats().refresh_successes, 1);
//! assert_eq!(second.handle().stats().adopted, 1);
//! assert_eq!(second.handle().stats().refreshes, 0);
//! assert_eq!(second.handle().tokens().unwrap().access_token().expose(), "shared");
//! # }
//! ```
// Items behind a feature are linked to docs.rs when it is off, so the docs
// of every build resolve their links.
#![cfg_attr(feature = "encryption", doc = "[`Encrypted`]: crate::store::Encrypted")]
#![cfg_attr(
    not(feature = "encryption"),
    doc = "[`Encrypted`]: https://docs.rs/tower-token-refresh/latest/tower_token_refresh/store/struct.Encrypted.html"
)]
#![cfg_attr(feature = "file", doc = "[`FileStore`]: crate::store::FileStore")]
#![cfg_attr(
    not(feature = "file"),
    doc = "[`FileStore`]: https://docs.rs/tower-token-refresh/latest/tower_token_refresh/store/struct.FileStore.html"
)]
#![cfg_attr(feature = "redis", doc = "[`RedisStore`]: crate::store::RedisStore")]
#![cfg_attr(
    not(feature = "redis"),
    doc = "[`RedisStore`]: https://docs.rs/tower-token-refresh/latest/tower_token_refresh/store/struct.RedisStore.html"
)]

mod codec;
#[cfg(feature = "encryption")]
mod encrypted;
mod error;
#[cfg(feature = "file")]
mod file;
mod local;
mod memory;
mod record;
#[cfg(feature = "redis")]
mod redis;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

#[cfg(feature = "encryption")]
pub use encrypted::{Encrypted, StoreKey};
pub use error::StoreError;
#[cfg(feature = "file")]
pub use file::FileStore;
pub use memory::MemoryStore;
pub use record::{Lease, Record};
#[cfg(feature = "redis")]
pub use redis::RedisStore;

pub(crate) use codec::{decode, encode, Decoded};

/// Where processes (or layers) share their newest tokens.
///
/// A store keeps one versioned [`Record`], a lease and, optionally, a signal
/// telling that a new version was stored. The layer drives the protocol
/// described in the [module docs](self); a store only has to make each
/// operation atomic.
///
/// Every method may fail with a [`StoreError`], and no request fails
/// because of one. When a load or a lease fails while the current token
/// is still good (more than three refresh timeouts before its mandatory
/// window: a store load, the wait for an earlier offer and the refresh
/// itself each take up to one, and so do a login and an `on_refresh` hook
/// when there are any), the
/// refresh is put off and the store
/// asked again after a backoff, and the token keeps being sent; the layer
/// refreshes without the store only once the token must be replaced (or
/// for a forced refresh), or at once when the record is
/// [corrupt](StoreError::is_corrupt). Refreshed tokens whose write failed
/// are kept, and offered to the store in the background. Futures that
/// never finish are cut off at the refresh timeout.
///
/// A corrupt record is never overwritten (it may be another key's, or
/// another version's of this crate, or planted), so while it stays, each
/// process refreshes on its own. With an issuer that rotates refresh
/// tokens, every process but the first then presents a refresh token
/// another one spent: it is refused (and an issuer that detects reuse
/// revokes the whole family, the first process's new tokens included),
/// and a [login source](crate::Builder::login) runs, if there is one. Remove a corrupt
/// record as soon as it is reported (`stats().store_errors`, and a
/// `tracing` warning naming it).
///
/// ```
/// use std::future::Future;
/// use std::sync::{Arc, Mutex};
/// use std::time::Duration;
/// use tower_token_refresh::store::{Lease, Record, StoreError, TokenStore};
///
/// /// A store of one process, with a lease that is always free.
/// #[derive(Clone, Default)]
/// struct Simple(Arc<Mutex<Option<Record>>>);
///
/// impl TokenStore for Simple {
///     fn load(&self) -> impl Future<Output = Result<Option<Record>, StoreError>> + Send {
///         let record = self.0.lock().unwrap().clone();
///         async move { Ok(record) }
///     }
///
///     fn compare_and_swap(&self, expected: Option<u64>, record: Record)
///         -> impl Future<Output = Result<bool, StoreError>> + Send {
///         let mut slot = self.0.lock().unwrap();
///         let swapped = slot.as_ref().map(Record::version) == expected;
///         if swapped {
///             *slot = Some(record);
///         }
///         async move { Ok(swapped) }
///     }
///
///     fn try_lease(&self, _ttl: Duration)
///         -> impl Future<Output = Result<Option<Lease>, StoreError>> + Send {
///         async { Ok(Some(Lease::new("only-one"))) }
///     }
///
///     fn release(&self, _lease: Lease) -> impl Future<Output = Result<(), StoreError>> + Send {
///         async { Ok(()) }
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};
///
/// let store = Simple::default();
/// let layer = TokenRefreshLayer::builder(refresh_fn(|_| async {
///         Ok::<_, RefreshError>(TokenSet::new("access").with_expires_in(Duration::from_secs(60)))
///     }))
///     .store(store.clone())
///     .build();
/// let client = ServiceBuilder::new().layer(layer).service_fn(|_req: http::Request<_>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
/// });
/// client.oneshot(http::Request::new(http_body_util::Empty::<bytes::Bytes>::new())).await.unwrap();
///
/// // The first token, fetched for the first request, was stored for the others.
/// let stored = store.load().await.unwrap().expect("stored");
/// assert_eq!(stored.version(), 1);
/// # }
/// ```
pub trait TokenStore: Send + Sync + 'static {
    /// The newest stored record, if any.
    ///
    /// ```
    /// use tower_token_refresh::store::{MemoryStore, Record, TokenStore};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let store = MemoryStore::new();
    /// assert!(store.load().await.unwrap().is_none());
    /// store.compare_and_swap(None, Record::new(1, b"v1".to_vec())).await.unwrap();
    /// assert_eq!(store.load().await.unwrap().unwrap().version(), 1);
    /// # }
    /// ```
    fn load(&self) -> impl Future<Output = Result<Option<Record>, StoreError>> + Send;

    /// Stores `record` if the stored version is still `expected` (`None`:
    /// nothing stored yet), atomically; `Ok(false)` if another writer came
    /// first. `record.version()` is greater than `expected`: usually
    /// `expected + 1`, more after a store that lost its data (the layers
    /// never reuse a version they knew). Store it as given.
    ///
    /// ```
    /// use tower_token_refresh::store::{MemoryStore, Record, TokenStore};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let store = MemoryStore::new();
    /// assert!(store.compare_and_swap(None, Record::new(1, b"mine".to_vec())).await.unwrap());
    /// // A writer that read nothing before this one stored is turned away.
    /// assert!(!store.compare_and_swap(None, Record::new(1, b"late".to_vec())).await.unwrap());
    /// assert_eq!(store.load().await.unwrap().unwrap().payload(), b"mine");
    /// # }
    /// ```
    fn compare_and_swap(
        &self,
        expected: Option<u64>,
        record: Record,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Takes the refresh lease for `ttl` if nobody holds it. The lease must
    /// lapse on its own after `ttl`, so a holder that crashed cannot block
    /// the others for longer.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_token_refresh::store::{MemoryStore, TokenStore};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let store = MemoryStore::new();
    /// let ttl = Duration::from_secs(10);
    /// let lease = store.try_lease(ttl).await.unwrap().expect("free");
    /// assert!(store.try_lease(ttl).await.unwrap().is_none(), "held");
    /// store.release(lease).await.unwrap();
    /// # }
    /// ```
    fn try_lease(
        &self,
        ttl: Duration,
    ) -> impl Future<Output = Result<Option<Lease>, StoreError>> + Send;

    /// Gives the lease back, if `lease` still holds it (it may have lapsed
    /// and been taken by someone else, whose lease must stay).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_token_refresh::store::{MemoryStore, TokenStore};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let store = MemoryStore::new();
    /// let lease = store.try_lease(Duration::from_secs(10)).await.unwrap().unwrap();
    /// store.release(lease).await.unwrap();
    /// assert!(store.try_lease(Duration::from_secs(10)).await.unwrap().is_some(), "free again");
    /// # }
    /// ```
    fn release(&self, lease: Lease) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// A signal carrying the newest version someone stored, if the store
    /// can announce changes. Without one the layer polls while it waits for
    /// another process's refresh, and adopts a newer record only when it
    /// next needs a token. The layer reads the record on every signal and
    /// not the value, so a store that may have missed changes (a lost
    /// subscription) can signal without a new version. Default: `None`.
    ///
    /// ```
    /// use tower_token_refresh::store::{MemoryStore, Record, TokenStore};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let store = MemoryStore::new();
    /// let mut changes = store.subscribe().expect("a memory store announces changes");
    /// store.compare_and_swap(None, Record::new(1, b"v1".to_vec())).await.unwrap();
    /// changes.changed().await.unwrap();
    /// assert_eq!(*changes.borrow(), 1);
    /// # }
    /// ```
    fn subscribe(&self) -> Option<watch::Receiver<u64>> {
        None
    }

    /// How often to look at the store while another process holds the
    /// lease. Default: 250 ms.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_token_refresh::store::{MemoryStore, TokenStore};
    ///
    /// assert_eq!(MemoryStore::new().poll_interval(), Duration::from_millis(250));
    /// ```
    fn poll_interval(&self) -> Duration {
        Duration::from_millis(250)
    }
}

impl<S: TokenStore> TokenStore for Arc<S> {
    fn load(&self) -> impl Future<Output = Result<Option<Record>, StoreError>> + Send {
        (**self).load()
    }

    fn compare_and_swap(
        &self,
        expected: Option<u64>,
        record: Record,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        (**self).compare_and_swap(expected, record)
    }

    fn try_lease(
        &self,
        ttl: Duration,
    ) -> impl Future<Output = Result<Option<Lease>, StoreError>> + Send {
        (**self).try_lease(ttl)
    }

    fn release(&self, lease: Lease) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).release(lease)
    }

    fn subscribe(&self) -> Option<watch::Receiver<u64>> {
        (**self).subscribe()
    }

    fn poll_interval(&self) -> Duration {
        (**self).poll_interval()
    }
}

type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Object-safe form of [`TokenStore`], so the layer's type does not name
/// the store. Boxing happens once per store call, only inside refreshes.
pub(crate) trait DynStore: Send + Sync + 'static {
    fn load_boxed(&self) -> StoreFuture<'_, Option<Record>>;
    fn compare_and_swap_boxed(
        &self,
        expected: Option<u64>,
        record: Record,
    ) -> StoreFuture<'_, bool>;
    fn try_lease_boxed(&self, ttl: Duration) -> StoreFuture<'_, Option<Lease>>;
    fn release_boxed(&self, lease: Lease) -> StoreFuture<'_, ()>;
    fn subscribe_dyn(&self) -> Option<watch::Receiver<u64>>;
    fn poll_interval_dyn(&self) -> Duration;
}

impl<S: TokenStore> DynStore for S {
    fn load_boxed(&self) -> StoreFuture<'_, Option<Record>> {
        Box::pin(self.load())
    }

    fn compare_and_swap_boxed(
        &self,
        expected: Option<u64>,
        record: Record,
    ) -> StoreFuture<'_, bool> {
        Box::pin(self.compare_and_swap(expected, record))
    }

    fn try_lease_boxed(&self, ttl: Duration) -> StoreFuture<'_, Option<Lease>> {
        Box::pin(self.try_lease(ttl))
    }

    fn release_boxed(&self, lease: Lease) -> StoreFuture<'_, ()> {
        Box::pin(self.release(lease))
    }

    fn subscribe_dyn(&self) -> Option<watch::Receiver<u64>> {
        self.subscribe()
    }

    fn poll_interval_dyn(&self) -> Duration {
        self.poll_interval()
    }
}
