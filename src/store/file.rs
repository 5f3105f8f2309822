//! [`FileStore`]: tokens that survive a restart, shared by the processes of
//! one host.

mod lock;

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::Value;
use tokio::sync::{oneshot, watch};
use zeroize::Zeroizing;

use super::{Lease, Record, StoreError, TokenStore};

/// Keeps the tokens in a file, so a restarted process resumes with the
/// newest (possibly rotated) refresh token instead of logging in again.
///
/// - Writes are atomic: the record goes to a temporary file in the same
///   directory, is flushed to disk and renamed over the old file, so a
///   crash leaves either the old record or the new one, never a mix. A
///   temporary file a crash left behind (`.<name>.<pid>.<random>.tmp`)
///   is removed by a later write once it is ten minutes old.
/// - On Unix the file is created with mode `0600`: only its owner can read
///   it. Wrap the store in [`Encrypted`] to keep the tokens unreadable
///   even to a backup.
/// - A file that cannot be read as a record is reported as
///   [corrupt](StoreError::is_corrupt) (naming the path, never its
///   content) and is never overwritten: the layer refreshes on its own and
///   the file waits for someone to look at it. So is, on Unix, a file
///   another user could have written (one they own, or one anyone may
///   write): tokens planted there are not adopted.
/// - The processes of one host that keep their tokens in the same file
///   share them as a fleet does through Redis: one refreshes while the
///   others wait for its result, so a rotating refresh token is never
///   presented twice. On Unix, each compare-and-swap and each take or
///   give-back of the lease holds an `flock` on a lock file beside the
///   token file (`.<name>.lock`, mode `0600`, kept). The lease is that
///   file's content, and lapses by the wall clock after its time to live,
///   as a Redis lease does (a step of the clock forward shortens it by as
///   much, a step back lengthens it). A lease also ends with a holder
///   that dies, which lets go of its lock on `.<name>.lease`: the next
///   process to look takes it over, so a process killed while
///   refreshing, or restarted, holds nobody back (unless a holder whose
///   lease lapsed still lives and holds that lock: the next lease then
///   ends by its time only). A watched lease is kept in `.<name>.lease`
///   too: should the lock file be removed under it (by hand, or by a
///   clean-up of old files), the lease is put back in the file made anew,
///   and goes to no second holder. A section whose lock file is removed
///   while it runs writes nothing more (each write checks first, so what
///   is left is the instant between the check and the write), and one
///   waiting for it takes the file made anew. Removing both files while
///   processes run loses the lease. A lock file that is a link, another user's,
///   or writable by anyone is refused as the store being unavailable.
///   Over NFS, where `flock` is emulated with POSIX locks, give the
///   layers of one process clones of one `FileStore`. Off Unix, only the
///   clones of one `FileStore` are coordinated.
/// - The change signal lives in this store and its clones: the layers of
///   another process (or of a store made apart) see a new record when
///   they look at the file (while they wait for the lease holder's
///   result, every [`poll_interval`](TokenStore::poll_interval), and
///   whenever they need a token). Use [`RedisStore`] for processes on
///   several hosts.
///
/// Requires the `file` feature. The file holds JSON:
/// `{"version": 3, "payload": "<base64>"}`.
///
/// ```
/// use tower_token_refresh::store::{FileStore, Record, TokenStore};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let dir = std::env::temp_dir().join(format!("ttr-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// let path = dir.join("tokens.json");
/// # let _ = std::fs::remove_file(&path);
///
/// let store = FileStore::new(&path);
/// assert!(store.load().await.unwrap().is_none());
/// assert!(store.compare_and_swap(None, Record::new(1, b"tokens".to_vec())).await.unwrap());
///
/// // A new process (here: a new store) reads it back.
/// let restarted = FileStore::new(&path);
/// assert_eq!(restarted.load().await.unwrap().unwrap().version(), 1);
///
/// // Another process (here: a store made apart) waits while one holds
/// // the lease.
/// let ttl = std::time::Duration::from_secs(30);
/// let lease = store.try_lease(ttl).await.unwrap().expect("free");
/// if cfg!(unix) {
///     assert!(restarted.try_lease(ttl).await.unwrap().is_none(), "held");
/// }
/// store.release(lease).await.unwrap();
/// assert!(restarted.try_lease(ttl).await.unwrap().is_some(), "free again");
/// # std::fs::remove_dir_all(&dir).unwrap();
/// # }
/// ```
///
/// # Clone
///
/// Clones share the file, the lease and the change signal; a `FileStore`
/// made anew for the same file (in this process or another) shares the
/// file, and on Unix the lease.
///
#[cfg_attr(feature = "encryption", doc = "[`Encrypted`]: crate::store::Encrypted")]
#[cfg_attr(
    not(feature = "encryption"),
    doc = "[`Encrypted`]: https://docs.rs/tower-token-refresh/latest/tower_token_refresh/store/struct.Encrypted.html"
)]
#[cfg_attr(feature = "redis", doc = "[`RedisStore`]: crate::store::RedisStore")]
#[cfg_attr(
    not(feature = "redis"),
    doc = "[`RedisStore`]: https://docs.rs/tower-token-refresh/latest/tower_token_refresh/store/struct.RedisStore.html"
)]
#[derive(Clone)]
pub struct FileStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    /// Serializes the critical sections of this store's clones (the lock
    /// file serializes them with everyone else's). Taken by the blocking
    /// task itself: held by the awaiting caller instead, it was released
    /// when a stalled write outlived the caller's timeout, and a second
    /// compare-and-swap could read the version the first was still
    /// replacing.
    sections: Mutex<()>,
    /// The liveness locks of the leases this store holds. A mutex of its
    /// own, held briefly and never while waiting for the lock file: a
    /// release lets go of its lock even while a section is stuck.
    holders: Mutex<lock::Holders>,
    /// Each version this store (or a clone) wrote, for the layers of this
    /// process; the lease is the lock file's, not this process's.
    changes: watch::Sender<u64>,
    /// Whether a token file any user may read was warned of: once per
    /// store, as loads recur.
    warned_readable: AtomicBool,
}

impl FileStore {
    /// A store kept at `path`; nothing is read or created until first use.
    /// A relative `path` is taken from the current directory now: a
    /// process that changes directory later keeps the same file (and the
    /// same lock files as the other processes).
    ///
    /// ```
    /// use tower_token_refresh::store::{FileStore, Record, TokenStore};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let dir = std::env::temp_dir().join(format!("ttr-doc-new-{}", std::process::id()));
    /// # let _ = std::fs::remove_dir_all(&dir);
    /// std::fs::create_dir_all(&dir).unwrap();
    /// let store = FileStore::new(dir.join("tokens"));
    /// assert!(store.load().await.unwrap().is_none(), "nothing created yet");
    /// assert!(store.compare_and_swap(None, Record::new(1, b"v1".to_vec())).await.unwrap());
    /// assert_eq!(store.load().await.unwrap().unwrap().payload(), b"v1");
    /// std::fs::remove_dir_all(&dir).unwrap();
    /// # }
    /// ```
    pub fn new(path: impl AsRef<Path>) -> Self {
        Self {
            inner: Arc::new(Inner {
                path: std::path::absolute(path.as_ref())
                    .unwrap_or_else(|_| path.as_ref().to_path_buf()),
                sections: Mutex::default(),
                holders: Mutex::default(),
                changes: watch::Sender::new(0),
                warned_readable: AtomicBool::new(false),
            }),
        }
    }

    /// Where the tokens are kept: the path given, made absolute.
    ///
    /// ```
    /// use std::path::Path;
    /// use tower_token_refresh::store::FileStore;
    ///
    /// let store = FileStore::new("/var/lib/app/tokens");
    /// assert_eq!(store.path(), Path::new("/var/lib/app/tokens"));
    ///
    /// let here = FileStore::new("tokens.json");
    /// let cwd = std::env::current_dir().unwrap();
    /// assert_eq!(here.path(), cwd.join("tokens.json"));
    /// ```
    pub fn path(&self) -> &Path {
        &self.inner.path
    }
}

impl TokenStore for FileStore {
    fn load(&self) -> impl Future<Output = Result<Option<Record>, StoreError>> + Send {
        // A process that only adopts never enters a section: its lapsed
        // liveness locks end here. Never waited for on a runtime worker (a
        // section may hold the list while it writes the lock file): the
        // next load prunes them.
        if let Ok(mut holders) = self.inner.holders.try_lock() {
            holders.prune(SystemTime::now());
        }
        let inner = Arc::clone(&self.inner);
        async move {
            let path = inner.path.clone();
            // Through `followed`, as a write goes: found in review, a load
            // followed a link another user planted to a file of this
            // user's (another service's tokens), adopted them, and sent
            // them here.
            let found = blocking(move || read(&followed(&path)?)).await?;
            // Logged here, on the caller's task, where its span is.
            if let Some(mode) = found.readable_by_others {
                inner.warn_readable_by_others(mode);
            }
            Ok(found.record)
        }
    }

    async fn compare_and_swap(
        &self,
        expected: Option<u64>,
        record: Record,
    ) -> Result<bool, StoreError> {
        let inner = Arc::clone(&self.inner);
        blocking(move || {
            let section = inner.section()?;
            // The file the lock guards, links followed once for both.
            let target = section.locked.target();
            if read(target)?.record.as_ref().map(Record::version) != expected {
                return Ok(false);
            }
            // Not if the section ended under it (its lock file removed).
            write_unless(target, &record, || section.locked.ensure_current())?;
            // Announced by the write itself, in order: the caller may have
            // stopped waiting (its refresh timeout), and the record is
            // there all the same.
            inner.changes.send_replace(record.version());
            Ok(true)
        })
        .await
    }

    async fn try_lease(&self, ttl: Duration) -> Result<Option<Lease>, StoreError> {
        let (deliver, received) = oneshot::channel();
        let mut delivery = Delivery {
            received,
            inner: Arc::clone(&self.inner),
        };
        let inner = Arc::clone(&self.inner);
        blocking(move || {
            let section = inner.section()?;
            // A caller that stopped waiting (its refresh timeout) gets no
            // lease: nobody would give it back, and every process would
            // wait for it to lapse.
            if deliver.is_closed() {
                return Ok(());
            }
            let taken = section
                .locked
                .try_lease(ttl, SystemTime::now(), &mut inner.holders())?;
            if let Err(Some(lease)) = deliver.send(taken) {
                inner.holders().forget(&lease);
                let _ = section.locked.release(&lease);
            }
            Ok(())
        })
        .await?;
        // The task has ended, so the section is over and whatever it took
        // is here.
        delivery.received.try_recv().map_err(|_| {
            StoreError::unavailable("the file task ended without handing over the lease")
        })
    }

    async fn release(&self, lease: Lease) -> Result<(), StoreError> {
        let inner = Arc::clone(&self.inner);
        blocking(move || inner.give_back(&lease)).await
    }

    fn subscribe(&self) -> Option<watch::Receiver<u64>> {
        Some(self.inner.changes.subscribe())
    }
}

impl Inner {
    /// Enters a critical section on the file: this store's clones wait on
    /// the mutex, everyone else on the lock file, each for at most
    /// [`lock::WAIT_AT_MOST`] in all. Lapsed liveness locks end first.
    fn section(&self) -> Result<Section<'_>, StoreError> {
        self.holders().prune(SystemTime::now());
        let give_up = std::time::Instant::now() + lock::WAIT_AT_MOST;
        let serial = lock::poll_until(give_up, || match self.sections.try_lock() {
            Ok(serial) => Some(serial),
            // Guards no data.
            Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        })
        .ok_or_else(|| {
            StoreError::unavailable(format!(
                "another section on {} has taken {:?}",
                self.path.display(),
                lock::WAIT_AT_MOST
            ))
        })?;
        let locked = lock::Locked::take(followed(&self.path)?, give_up)?;
        Ok(Section {
            locked,
            _serial: serial,
        })
    }

    fn holders(&self) -> MutexGuard<'_, lock::Holders> {
        // Plain data, always left consistent.
        self.holders.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Gives `lease` back: its liveness lock first, which nothing can keep
    /// from ending it, then the lock file's line, if still its.
    fn give_back(&self, lease: &Lease) -> Result<(), StoreError> {
        self.holders().forget(lease);
        self.section()?.locked.release(lease)
    }
}

/// A critical section on the token file, ended on drop.
struct Section<'a> {
    // Dropped first: the lock file is unlocked before this store's next
    // clone may go for it.
    locked: lock::Locked,
    _serial: MutexGuard<'a, ()>,
}

/// Where a lease taken on the blocking pool reaches its caller. Dropped
/// with a lease still in it (the caller gone, as its refresh timeout cut
/// it off, after the lease was sent), it gives the lease back: nobody
/// else would, and every process would wait for it to lapse.
struct Delivery {
    received: oneshot::Receiver<Option<Lease>>,
    inner: Arc<Inner>,
}

impl Drop for Delivery {
    fn drop(&mut self) {
        // Closed first: a lease sent from now on is given back by its
        // task; one sent before is here.
        self.received.close();
        let Ok(Some(lease)) = self.received.try_recv() else {
            return;
        };
        let inner = Arc::clone(&self.inner);
        // Without a runtime, it lapses at its time to live.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn_blocking(move || inner.give_back(&lease));
        }
    }
}

impl fmt::Debug for FileStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileStore")
            .field("path", &self.inner.path)
            .finish()
    }
}

/// File work runs on tokio's blocking pool, never on a runtime worker.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|join| {
            Err(StoreError::unavailable("the file task failed").with_source(join))
        })
}

/// The store cannot `doing` the file at `path`, for `error`.
fn unavailable(doing: &str, path: &Path, error: io::Error) -> StoreError {
    StoreError::unavailable(format!("cannot {doing} {}", path.display())).with_source(error)
}

/// The largest token file read: a record is a token set, a few kilobytes
/// at most. Past this the file is not one.
const LARGEST_FILE: u64 = 1 << 20;

/// What a load found.
struct Found {
    record: Option<Record>,
    /// The file's mode, if any user may read it.
    readable_by_others: Option<u32>,
}

impl Inner {
    /// A token file any user may read is read, as the process's own, but
    /// said so once: found in review, one copied under umask 022 (or by an
    /// installer) stayed 0644 as long as this process only adopted, and
    /// any local user could read the refresh token. A write replaces it
    /// with a file of mode 0600.
    fn warn_readable_by_others(&self, mode: u32) {
        if !self.warned_readable.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                path = %self.path.display(),
                mode = format!("{mode:04o}"),
                "the token file may be read by any user: chmod 600 it"
            );
        }
    }
}

fn read(path: &Path) -> Result<Found, StoreError> {
    let unreadable = |error| unavailable("read", path, error);
    let mut options = OpenOptions::new();
    options.read(true);
    // Opened without waiting: a FIFO at the path would block the open (and
    // a blocking-pool thread) until a writer came. Nor may a terminal there
    // become this process's. Refused below. Nor is a link followed: the
    // path is the one `followed` resolved, and a link put there since (in
    // a shared directory) would name a file unchecked.
    #[cfg(unix)]
    {
        use rustix::fs::OFlags;
        use std::os::unix::fs::OpenOptionsExt;
        let flags = OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::NOFOLLOW;
        options.custom_flags(flags.bits() as i32);
    }
    let not_a_token_file = || {
        StoreError::corrupt(format!(
            "{} is not a token file (not a regular file of at most {LARGEST_FILE} bytes)",
            path.display()
        ))
    };
    let file = match options.open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            return Ok(Found {
                record: None,
                readable_by_others: None,
            })
        }
        // A socket at the path cannot be opened at all (`ENXIO`): found in
        // review, it was reported as the store being unavailable, a state
        // that passes, rather than as what a FIFO there is.
        Err(_) if fs::metadata(path).is_ok_and(|found| !found.is_file()) => {
            return Err(not_a_token_file())
        }
        Err(error) => return Err(unreadable(error)),
    };
    let metadata = file.metadata().map_err(unreadable)?;
    // Found in review: a FIFO or a device at the path held a thread for
    // good, and a huge file was read whole.
    if !metadata.is_file() || metadata.len() > LARGEST_FILE {
        return Err(not_a_token_file());
    }
    refuse_foreign(path, &metadata)?;
    let readable_by_others = readable_by_others(&metadata);
    let mut file = file.take(LARGEST_FILE);
    // Sized up front, as `fs::read` does: a buffer grown while reading
    // would leave unwiped copies of the tokens behind.
    let mut bytes = Zeroizing::new(Vec::with_capacity(
        usize::try_from(metadata.len())
            .unwrap_or(0)
            .saturating_add(1),
    ));
    file.read_to_end(&mut bytes).map_err(unreadable)?;
    let corrupt = || {
        StoreError::corrupt(format!(
            "{} is not a token file (expected {{\"version\": n, \"payload\": base64}})",
            path.display()
        ))
    };
    let mut value: Value = serde_json::from_slice(&bytes).map_err(|_| corrupt())?;
    // Taken out of the parsed file to be wiped: without `Encrypted`, the
    // payload is the tokens in base64.
    let payload = match value.get_mut("payload").map(Value::take) {
        Some(Value::String(payload)) => Zeroizing::new(payload),
        _ => return Err(corrupt()),
    };
    let version = value
        .get("version")
        .and_then(Value::as_u64)
        .ok_or_else(corrupt)?;
    let payload = STANDARD.decode(payload.as_bytes()).map_err(|_| corrupt())?;
    Ok(Found {
        record: Some(Record::new(version, payload)),
        readable_by_others,
    })
}

/// The file's mode, if any user may read it.
#[cfg(unix)]
fn readable_by_others(metadata: &fs::Metadata) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let mode = metadata.mode() & 0o777;
    (mode & 0o004 != 0).then_some(mode)
}

#[cfg(not(unix))]
fn readable_by_others(_: &fs::Metadata) -> Option<u32> {
    None
}

/// A token file another user could have written is not trusted (see
/// [`not_own`]). Checked on the open file, so a symbolic link is judged by
/// what it points to.
fn refuse_foreign(path: &Path, metadata: &fs::Metadata) -> Result<(), StoreError> {
    match not_own(metadata) {
        Some(why) => Err(StoreError::corrupt(format!(
            "{} {why}: a token file must be this process's alone; remove it \
             (or chmod 600 it, if this process owns it)",
            path.display()
        ))),
        None => Ok(()),
    }
}

/// Why a file is not this process's own, if it is not: another user owns
/// it (put in a shared directory before this process wrote there, to have
/// it use their tokens or their lease), or anyone may write it. Group
/// write is allowed: volumes shared within a Kubernetes pod (`fsGroup`)
/// make files group-writable, and the group is then the pod's.
#[cfg(unix)]
fn not_own(metadata: &fs::Metadata) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let me = rustix::process::geteuid().as_raw();
    not_own_by(metadata.uid(), metadata.mode(), me)
}

/// [`not_own`] for a file `owner` owns with `mode`, to a process running
/// as `me`. Root's files are not trusted, unlike root's links (see
/// [`trusted_link_owner`]): a file root owns was put there for another
/// process than this one.
#[cfg(unix)]
fn not_own_by(owner: u32, mode: u32, me: u32) -> Option<String> {
    if owner != me {
        return Some(format!(
            "belongs to another user (uid {owner}; this process runs as {me})"
        ));
    }
    let mode = mode & 0o777;
    (mode & 0o002 != 0).then(|| format!("may be written by any user (mode {mode:04o})"))
}

#[cfg(not(unix))]
fn not_own(_: &fs::Metadata) -> Option<String> {
    None
}

/// The file `path` names, through any symbolic links: the one a write
/// replaces. Found in review: renamed over, a link (to a file on a
/// persistent volume, say) became a plain file itself, and the file it
/// pointed at kept the old record, read again after a restart with its
/// refresh token long spent. A link whose target does not exist yet names
/// where the file will be; a loop of links is left to fail as a path. A
/// link another user owns is refused, as a file they own is: planted in a
/// shared directory, it would choose where the tokens are written. One
/// root owns is not (an image's link into a data volume, say): root could
/// write the tokens anywhere anyway. Found in review: refused, it left
/// every process of a non-root fleet refreshing on its own.
fn followed(path: &Path) -> Result<PathBuf, StoreError> {
    /// As many links as Linux follows in one path.
    const MOST_LINKS: usize = 40;
    let mut path = path.to_path_buf();
    for _ in 0..MOST_LINKS {
        let Ok(target) = fs::read_link(&path) else {
            break;
        };
        refuse_foreign_link(&path)?;
        // A relative target is relative to the link's own directory; an
        // absolute one replaces the path whole.
        path = match path.parent() {
            Some(dir) => dir.join(target),
            None => target,
        };
    }
    Ok(path)
}

#[cfg(unix)]
fn refuse_foreign_link(link: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::MetadataExt;
    let Ok(metadata) = fs::symlink_metadata(link) else {
        return Ok(());
    };
    let (owner, me) = (metadata.uid(), rustix::process::geteuid().as_raw());
    if !trusted_link_owner(owner, me) {
        return Err(StoreError::corrupt(format!(
            "{} is a symbolic link another user owns (uid {owner}; this process runs as {me}): \
             a link to the token file must be this process's own or root's; remove it",
            link.display()
        )));
    }
    Ok(())
}

/// Whether a link `owner` owns may name the token file of a process
/// running as `me`: its own, or root's.
#[cfg(unix)]
fn trusted_link_owner(owner: u32, me: u32) -> bool {
    owner == me || owner == 0
}

#[cfg(not(unix))]
fn refuse_foreign_link(_: &Path) -> Result<(), StoreError> {
    Ok(())
}

/// Writes `record` beside `path` (the token file, links already
/// [followed]: the file the section's lock guards), flushes it and renames
/// it into place.
#[cfg(test)]
fn write(path: &Path, record: &Record) -> Result<(), StoreError> {
    write_unless(path, record, || Ok(()))
}

/// [`write`], with a last check before the rename: failed, nothing is
/// replaced.
fn write_unless(
    path: &Path,
    record: &Record,
    check: impl FnOnce() -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let failed = |doing, error| unavailable(doing, path, error);
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let temp = dir.join(format!(
        ".{name}.{}.{:016x}.tmp",
        std::process::id(),
        fastrand::u64(..)
    ));
    let mut contents = Zeroizing::new(Vec::with_capacity(record.payload().len() * 4 / 3 + 64));
    contents
        .extend_from_slice(format!("{{\"version\":{},\"payload\":\"", record.version()).as_bytes());
    // Encoded in place, so the payload has no unwiped copy.
    let start = contents.len();
    let encoded = base64::encoded_len(record.payload().len(), true).unwrap_or(usize::MAX);
    contents.resize(start + encoded, 0);
    STANDARD
        .encode_slice(record.payload(), &mut contents[start..])
        .map_err(|_| StoreError::unavailable("the record is too large to write"))?;
    contents.extend_from_slice(b"\"}\n");
    // Written larger, it could never be read back (nor written over: a
    // file that does not read is not).
    if contents.len() as u64 > LARGEST_FILE {
        return Err(StoreError::unavailable(format!(
            "the record is too large to write (over {LARGEST_FILE} bytes)"
        )));
    }
    let written = create_private(&temp)
        .and_then(|mut file| {
            file.write_all(&contents)?;
            file.sync_all()
        })
        .map_err(|error| failed("write a temporary file beside", error))
        .and_then(|()| check())
        .and_then(|()| fs::rename(&temp, path).map_err(|error| failed("replace", error)));
    if written.is_err() {
        // Never leave a partial record behind.
        let _ = fs::remove_file(&temp);
        return written;
    }
    // Makes the rename itself durable; not possible everywhere.
    if let Ok(dir) = File::open(dir) {
        let _ = dir.sync_all();
    }
    remove_abandoned(dir, &name);
    Ok(())
}

/// How old a temporary file must be to count as abandoned: a write keeps
/// one for as long as it takes to write and sync a few hundred bytes.
const ABANDONED_AFTER: Duration = Duration::from_secs(600);

/// Removes the temporary files of writes that never finished (a process
/// killed between writing one and renaming it): each holds a record, so
/// tokens, and nothing else would ever remove it. Best effort.
fn remove_abandoned(dir: &Path, name: &str) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let prefix = format!(".{name}.");
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let file_name = file_name.to_string_lossy();
        if !file_name.starts_with(&prefix) || !file_name.ends_with(".tmp") {
            continue;
        }
        let abandoned = entry
            .metadata()
            .and_then(|metadata| metadata.modified())
            .ok()
            .and_then(|modified| modified.elapsed().ok())
            .is_some_and(|age| age >= ABANDONED_AFTER);
        if abandoned {
            let _ = fs::remove_file(entry.path());
        }
    }
}

fn create_private(path: &Path) -> io::Result<File> {
    private_options().write(true).create_new(true).open(path)
}

/// Options that create a file only its owner may read or write (mode
/// `0600` on Unix).
fn private_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::logs::Logs;

    /// A fresh directory under the system's temporary one, removed on drop.
    pub(super) struct TempDir(pub(super) PathBuf);

    impl TempDir {
        pub(super) fn new() -> Self {
            let dir = std::env::temp_dir().join(format!(
                "ttr-file-store-{}-{:016x}",
                std::process::id(),
                fastrand::u64(..)
            ));
            fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        pub(super) fn entries(&self) -> Vec<String> {
            let mut names: Vec<_> = fs::read_dir(&self.0)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[tokio::test]
    async fn swaps_only_from_the_expected_version_and_leaves_no_temporary_file() {
        let dir = TempDir::new();
        let store = FileStore::new(dir.0.join("tokens.json"));
        let mut changes = store.subscribe().unwrap();
        assert!(store
            .compare_and_swap(None, Record::new(1, vec![0, 1, 2, 255]))
            .await
            .unwrap());
        assert!(!store
            .compare_and_swap(None, Record::new(1, b"late".to_vec()))
            .await
            .unwrap());
        assert!(!store
            .compare_and_swap(Some(7), Record::new(8, b"wrong".to_vec()))
            .await
            .unwrap());
        assert!(store
            .compare_and_swap(Some(1), Record::new(2, b"second".to_vec()))
            .await
            .unwrap());
        assert_eq!(*changes.borrow_and_update(), 2);
        let stored = FileStore::new(store.path()).load().await.unwrap().unwrap();
        assert_eq!((stored.version(), stored.payload()), (2, &b"second"[..]));
        assert_eq!(dir.entries(), [".tokens.json.lock", "tokens.json"]);
    }

    /// Found in review: the caller announced the new version once the
    /// write came back, so a caller that stopped waiting (the layer's
    /// refresh timeout) left a stored version unannounced.
    #[tokio::test]
    #[allow(
        clippy::await_holding_lock,
        reason = "the lock stands for another write in progress: held on purpose while the caller waits"
    )]
    async fn a_write_whose_caller_stopped_waiting_is_still_announced() {
        let dir = TempDir::new();
        let store = FileStore::new(dir.0.join("tokens.json"));
        let mut changes = store.subscribe().unwrap();
        // Another write holds the file: this one waits for it.
        let other = store.inner.sections.lock().unwrap();
        let swap = store.compare_and_swap(None, Record::new(1, b"first".to_vec()));
        // Polled until the write has started (for 50 ms), then dropped.
        let started = tokio::time::timeout(Duration::from_millis(50), swap).await;
        assert!(started.is_err(), "the write waits for the other");
        drop(other);
        tokio::time::timeout(Duration::from_secs(10), changes.changed())
            .await
            .expect("announced")
            .unwrap();
        assert_eq!(*changes.borrow(), 1);
    }

    /// A token file reached through a symbolic link (to a persistent
    /// volume) is written where the link points, and the link stays; a
    /// link another user owns is refused, its target never written nor
    /// read.
    #[cfg(unix)]
    #[tokio::test]
    async fn a_write_through_a_symbolic_link_replaces_the_file_it_names() {
        let (volume, app) = (TempDir::new(), TempDir::new());
        let target = volume.0.join("tokens.json");
        let link = app.0.join("tokens.json");
        // Relative, as an image may ship it, and dangling until the first write.
        let relative = Path::new("..")
            .join(volume.0.file_name().unwrap())
            .join("tokens.json");
        std::os::unix::fs::symlink(&relative, &link).unwrap();

        let store = FileStore::new(&link);
        for (expected, version) in [(None, 1), (Some(1), 2)] {
            let record = Record::new(version, vec![7; 8]);
            assert!(store.compare_and_swap(expected, record).await.unwrap());
        }
        assert!(fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        let stored = FileStore::new(&target).load().await.unwrap().unwrap();
        assert_eq!(stored.version(), 2);
        assert_eq!(
            app.entries(),
            ["tokens.json"],
            "nothing written beside the link"
        );

        // Only root can give a link to another user; CI runs as root.
        if rustix::process::geteuid().is_root() {
            let planted = app.0.join("planted.json");
            let chosen = volume.0.join("chosen.json");
            std::os::unix::fs::symlink(&chosen, &planted).unwrap();
            std::os::unix::fs::lchown(&planted, Some(65534), None).unwrap();
            let store = FileStore::new(&planted);
            let err = store
                .compare_and_swap(None, Record::new(1, vec![7; 8]))
                .await
                .unwrap_err();
            assert!(err.is_corrupt(), "{err}");
            assert!(err.to_string().contains("another user owns"), "{err}");
            assert!(
                !chosen.exists(),
                "written where another user's link pointed"
            );

            // Pointing at this user's own token file (another service's),
            // whose tokens a load must not adopt.
            let planted = app.0.join("planted-to-read.json");
            std::os::unix::fs::symlink(&target, &planted).unwrap();
            std::os::unix::fs::lchown(&planted, Some(65534), None).unwrap();
            let err = FileStore::new(&planted).load().await.unwrap_err();
            assert!(err.is_corrupt(), "{err}");
            assert!(err.to_string().contains("another user owns"), "{err}");
        }
    }

    /// The path a load reads is the one `followed` resolved: a link put
    /// there since (a race in a shared directory) is not followed.
    #[cfg(unix)]
    #[tokio::test]
    async fn a_link_put_at_the_resolved_path_is_not_followed() {
        let dir = TempDir::new();
        let path = dir.0.join("tokens.json");
        let store = FileStore::new(&path);
        assert!(store
            .compare_and_swap(None, Record::new(1, b"tokens".to_vec()))
            .await
            .unwrap());
        let raced = dir.0.join("raced.json");
        std::os::unix::fs::symlink(&path, &raced).unwrap();
        assert!(read(&path).unwrap().record.is_some());
        let err = read(&raced).map(|found| found.record).unwrap_err();
        assert!(!err.is_corrupt(), "{err}");
    }

    /// A token file any user may read (copied under umask 022, say) is
    /// read, and warned of once per store; one its group may read is not
    /// warned of (a Kubernetes `fsGroup` volume).
    #[cfg(unix)]
    #[tokio::test]
    async fn a_token_file_any_user_may_read_is_read_and_warned_of_once() {
        use std::os::unix::fs::PermissionsExt;

        let (logs, _logging) = Logs::capture();
        let warnings = || logs.lines_with("may be read by any user");

        let dir = TempDir::new();
        let path = dir.0.join("tokens.json");
        let store = FileStore::new(&path);
        assert!(store
            .compare_and_swap(None, Record::new(1, b"tokens".to_vec()))
            .await
            .unwrap());
        store.load().await.unwrap().unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        store.load().await.unwrap().unwrap();
        assert!(warnings().is_empty(), "{:?}", warnings());

        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        for _ in 0..3 {
            let record = store.load().await.unwrap().unwrap();
            assert_eq!(record.payload(), b"tokens");
        }
        let warned = warnings();
        assert_eq!(warned.len(), 1, "once per store: {warned:?}");
        assert!(
            warned[0].contains("0644") && warned[0].contains("chmod 600"),
            "{warned:?}"
        );
        assert!(warned[0].contains(&*path.to_string_lossy()), "{warned:?}");
    }

    /// Found in review: a FIFO at the token file's path blocked each load,
    /// and a blocking-pool thread, until a writer came; a huge file was
    /// read whole. Both are refused at once as not token files, and a
    /// record too large to read back is not written.
    #[cfg(unix)]
    #[tokio::test]
    async fn a_fifo_a_socket_or_a_huge_file_at_the_path_is_refused_at_once() {
        let dir = TempDir::new();
        let fifo = dir.0.join("tokens.json");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.expect("mkfifo runs").success());
        let store = FileStore::new(&fifo);
        let loaded = tokio::time::timeout(Duration::from_secs(10), store.load()).await;
        let Ok(loaded) = loaded else {
            // Lets the blocked open through, so that the runtime can end.
            use std::os::unix::fs::OpenOptionsExt;
            let mut writer = OpenOptions::new();
            writer.write(true);
            writer.custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32);
            let _writer = writer.open(&fifo);
            panic!("the load blocked on a FIFO");
        };
        let err = loaded.unwrap_err();
        assert!(err.is_corrupt(), "{err}");

        // A socket cannot even be opened.
        let socket = dir.0.join("socket.json");
        let _listening = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let err = FileStore::new(&socket).load().await.unwrap_err();
        assert!(err.is_corrupt(), "{err}");

        let huge = dir.0.join("huge.json");
        let size = usize::try_from(LARGEST_FILE).unwrap() + 1;
        fs::write(&huge, vec![b' '; size]).unwrap();
        let err = FileStore::new(&huge).load().await.unwrap_err();
        assert!(
            err.to_string().contains("not a regular file of at most"),
            "{err}"
        );

        // Nor is one written that could not be read back.
        let big = dir.0.join("big.json");
        let record = Record::new(1, vec![7; usize::try_from(LARGEST_FILE).unwrap()]);
        let err = FileStore::new(&big)
            .compare_and_swap(None, record)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("too large to write"), "{err}");
        assert!(!big.exists());
    }

    /// A token or lock file is this process's own: its user's, and not
    /// writable by everyone (its group may write it). Root's is not, unlike
    /// root's link to one.
    #[cfg(unix)]
    #[test]
    fn a_file_is_its_own_users_and_not_writable_by_everyone() {
        assert_eq!(not_own_by(1000, 0o600, 1000), None);
        assert_eq!(not_own_by(1000, 0o660, 1000), None, "group write allowed");
        assert!(not_own_by(1000, 0o666, 1000).unwrap().contains("any user"));
        assert!(not_own_by(0, 0o600, 1000).unwrap().contains("another user"));
        assert!(not_own_by(65534, 0o600, 0)
            .unwrap()
            .contains("another user"));
    }

    /// A link to the token file is trusted from this process's user and
    /// from root (the owner of an image's links), from no one else.
    #[cfg(unix)]
    #[test]
    fn a_link_is_trusted_from_its_own_user_and_from_root_only() {
        assert!(trusted_link_owner(1000, 1000));
        assert!(trusted_link_owner(0, 1000));
        assert!(trusted_link_owner(0, 0));
        assert!(!trusted_link_owner(65534, 1000));
        assert!(!trusted_link_owner(1000, 0));
    }

    /// Found in review: a process killed between writing its temporary
    /// file and renaming it left a file holding a record behind for good.
    /// The next write removes such files once they are old enough to be
    /// nobody's write in progress, and nothing else.
    #[tokio::test]
    async fn a_write_removes_temporary_files_abandoned_by_earlier_writes() {
        let dir = TempDir::new();
        let store = FileStore::new(dir.0.join("tokens.json"));
        let left = |name: &str, age: Duration| {
            let file = File::create(dir.0.join(name)).unwrap();
            file.set_modified(std::time::SystemTime::now() - age)
                .unwrap();
        };
        let hour = Duration::from_secs(3600);
        left(".tokens.json.4242.00000000000000aa.tmp", hour);
        left(".tokens.json.4243.00000000000000bb.tmp", Duration::ZERO);
        left(".other.json.4242.00000000000000cc.tmp", hour);
        assert!(store
            .compare_and_swap(None, Record::new(1, b"first".to_vec()))
            .await
            .unwrap());
        assert_eq!(
            dir.entries(),
            [
                ".other.json.4242.00000000000000cc.tmp",
                ".tokens.json.4243.00000000000000bb.tmp",
                ".tokens.json.lock",
                "tokens.json"
            ]
        );
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn the_file_is_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = TempDir::new();
        let store = FileStore::new(dir.0.join("tokens.json"));
        store
            .compare_and_swap(None, Record::new(1, b"t".to_vec()))
            .await
            .unwrap();
        let mode = fs::metadata(store.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    /// Found in review: the file was read whoever could write it. In a
    /// shared directory another user could put tokens of their own there
    /// first, and this process would adopt them.
    #[tokio::test]
    async fn a_file_another_user_could_have_written_is_refused_as_corrupt() {
        use std::os::unix::fs::PermissionsExt;
        let dir = TempDir::new();
        let path = dir.0.join("tokens.json");
        let store = FileStore::new(&path);
        store
            .compare_and_swap(None, Record::new(1, b"planted".to_vec()))
            .await
            .unwrap();
        let link = dir.0.join("link.json");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let loaded = |path: &Path| {
            let store = FileStore::new(path);
            async move { store.load().await }
        };
        for mode in [0o602, 0o666, 0o777] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            for read_through in [&path, &link] {
                let err = loaded(read_through).await.unwrap_err();
                assert!(err.is_corrupt(), "{mode:o}: {err}");
                assert!(
                    err.to_string().contains(&format!("mode 0{mode:o}")),
                    "{err}"
                );
                assert!(!err.to_string().contains("cGxhbnRlZA"), "{err}");
            }
            let swap = store
                .compare_and_swap(Some(1), Record::new(2, b"new".to_vec()))
                .await;
            assert!(swap.unwrap_err().is_corrupt(), "never overwritten");
        }
        // The process's own file, readable or writable by its group (a
        // Kubernetes `fsGroup` volume) or readable by others: read.
        for mode in [0o600, 0o660, 0o640, 0o644] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            for read_through in [&path, &link] {
                let record = loaded(read_through).await.unwrap().unwrap();
                assert_eq!(record.payload(), b"planted", "{mode:o}");
            }
        }

        // A file another user owns: made so here when running as root,
        // else one of root's.
        let foreign = if rustix::process::geteuid().is_root() {
            std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
            path.clone()
        } else {
            let link = dir.0.join("roots.json");
            std::os::unix::fs::symlink("/etc/passwd", &link).unwrap();
            link
        };
        let err = loaded(&foreign).await.unwrap_err();
        assert!(err.is_corrupt(), "{err}");
        assert!(err.to_string().contains("belongs to another user"), "{err}");
    }

    #[tokio::test]
    async fn a_corrupt_file_is_reported_by_path_and_never_overwritten() {
        let dir = TempDir::new();
        let path = dir.0.join("tokens.json");
        for garbage in [
            &b"{\"version\":1,\"payload\":\"secret-value"[..],
            b"{\"version\":\"one\",\"payload\":\"\"}",
            b"{\"version\":1,\"payload\":\"not base64!\"}",
        ] {
            fs::write(&path, garbage).unwrap();
            let store = FileStore::new(&path);
            let err = store.load().await.unwrap_err();
            assert!(err.is_corrupt(), "{err}");
            assert!(err.to_string().contains("tokens.json"), "{err}");
            assert!(!err.to_string().contains("secret-value"), "{err}");
            let swap = store
                .compare_and_swap(Some(1), Record::new(2, b"new".to_vec()))
                .await;
            assert!(swap.unwrap_err().is_corrupt());
            assert_eq!(fs::read(&path).unwrap(), garbage);
        }
    }

    /// A write whose rename fails (here over a directory in the token
    /// file's place) removes its temporary file and changes nothing.
    #[test]
    fn a_failed_write_leaves_no_temporary_file() {
        let dir = TempDir::new();
        let taken = dir.0.join("tokens.json");
        fs::create_dir_all(taken.join("in-the-way")).unwrap();
        let err = write(&taken, &Record::new(1, b"new".to_vec())).unwrap_err();
        assert!(!err.is_corrupt());
        assert!(err.to_string().contains("cannot replace"), "{err}");
        assert_eq!(dir.entries(), ["tokens.json"]);
    }

    /// A token file in a directory that does not exist: every swap fails,
    /// naming the path, and the file's neighbours are untouched.
    #[tokio::test]
    async fn a_token_file_in_a_missing_directory_fails_naming_it() {
        let dir = TempDir::new();
        let path = dir.0.join("tokens.json");
        let store = FileStore::new(&path);
        store
            .compare_and_swap(None, Record::new(1, b"old".to_vec()))
            .await
            .unwrap();
        let blocked = FileStore::new(dir.0.join("missing").join("tokens.json"));
        let err = blocked
            .compare_and_swap(None, Record::new(1, b"new".to_vec()))
            .await
            .unwrap_err();
        assert!(!err.is_corrupt());
        assert!(err.to_string().contains("missing"), "{err}");
        assert_eq!(store.load().await.unwrap().unwrap().payload(), b"old");
        assert_eq!(dir.entries(), [".tokens.json.lock", "tokens.json"]);
    }
}
