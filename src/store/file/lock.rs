//! The lock file beside a token file: what makes a [`FileStore`]'s
//! compare-and-swap and lease atomic across the processes of one host.
//!
//! `.<name>.lock` is locked with `flock` for each short critical section
//! (a compare-and-swap, taking or giving back the lease). A process that
//! dies inside one loses the lock with its descriptor, so a crash never
//! leaves the file locked. The lease itself is the lock file's content,
//! `<owner> <lapses at, in ms since the Unix epoch>`: it lapses on its own,
//! as a Redis lease does, and a holder that hangs without dying holds the
//! others back no longer than its time to live. Leases lapse by the wall
//! clock, the one clock every process of a host shares.
//!
//! Without `flock` (off Unix) the sections are serialized among the clones
//! of one store only.
//!
//! [`FileStore`]: super::FileStore

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::refuse_foreign;
use crate::store::{Lease, StoreError};

/// How long a critical section waits for another process's to end. Each
/// takes a read and a synced write of a few hundred bytes; past this the
/// holder is stuck (a stopped process), and the operation fails as the
/// store being unavailable, which the layer outlives.
const WAIT_AT_MOST: Duration = Duration::from_secs(5);

/// The lock file guarding the token file at `path` (the file itself, links
/// followed: every link to one file shares one lock).
pub(super) fn beside(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.lock"))
}

/// The lock file, locked until dropped.
pub(super) struct Locked {
    file: File,
    path: PathBuf,
}

impl Locked {
    /// Opens (creating it, private to this user) and locks the lock file
    /// at `path`, waiting for another process's section to end.
    pub(super) fn take(path: PathBuf) -> Result<Self, StoreError> {
        let file = open(&path).map_err(|error| unavailable("open", &path, error))?;
        let metadata = file
            .metadata()
            .map_err(|error| unavailable("open", &path, error))?;
        // A lock file another user could write could hold a lease that
        // never lapses: not trusted, as a token file of theirs is not.
        refuse_foreign(&path, &metadata)?;
        exclusive(&file, &path)?;
        Ok(Self { file, path })
    }

    /// Takes the lease for `ttl` unless someone holds it at `now`.
    pub(super) fn try_lease(
        &self,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<Option<Lease>, StoreError> {
        let now = millis_since_epoch(now);
        if self.holder()?.is_some_and(|(_, lapses)| lapses > now) {
            return Ok(None);
        }
        let ttl = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let lease = Lease::new(Lease::random_owner());
        self.replace(&format!("{} {}\n", lease.owner(), now.saturating_add(ttl)))?;
        Ok(Some(lease))
    }

    /// Gives the lease back if `lease` still holds it.
    pub(super) fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        if self
            .holder()?
            .is_some_and(|(owner, _)| owner == lease.owner())
        {
            self.replace("")?;
        }
        Ok(())
    }

    /// The lease's holder and when it lapses; `None` for a free lease, or
    /// for content that does not parse (only a holder that died while
    /// writing leaves that, and its lease ends with it).
    fn holder(&self) -> Result<Option<(String, u64)>, StoreError> {
        let (mut file, mut content) = (&self.file, String::new());
        file.rewind()
            .and_then(|()| file.read_to_string(&mut content))
            .map_err(|error| unavailable("read", &self.path, error))?;
        let parsed = content
            .trim_end()
            .rsplit_once(' ')
            .and_then(|(owner, lapses)| Some((owner.to_owned(), lapses.parse::<u64>().ok()?)));
        Ok(parsed)
    }

    /// Replaces the lock file's content. Not synced: a lease need not
    /// outlive the machine.
    fn replace(&self, content: &str) -> Result<(), StoreError> {
        let mut file = &self.file;
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(content.as_bytes()))
            .map_err(|error| unavailable("write", &self.path, error))
    }
}

fn open(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

/// Locks `file` against every other descriptor of it, in this process or
/// another, waiting at most [`WAIT_AT_MOST`]. Polled rather than blocked
/// on: a blocking `flock` could hold its thread forever.
#[cfg(unix)]
fn exclusive(file: &File, path: &Path) -> Result<(), StoreError> {
    use rustix::fs::{flock, FlockOperation};
    use rustix::io::Errno;
    let give_up = std::time::Instant::now() + WAIT_AT_MOST;
    loop {
        match flock(file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(()),
            Err(Errno::WOULDBLOCK | Errno::INTR) if std::time::Instant::now() < give_up => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(Errno::WOULDBLOCK) => {
                return Err(StoreError::unavailable(format!(
                    "another process has held {} for {WAIT_AT_MOST:?}",
                    path.display()
                )))
            }
            Err(errno) => return Err(unavailable("lock", path, errno.into())),
        }
    }
}

#[cfg(not(unix))]
fn exclusive(_: &File, _: &Path) -> Result<(), StoreError> {
    Ok(())
}

fn millis_since_epoch(time: SystemTime) -> u64 {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

fn unavailable(doing: &str, path: &Path, error: io::Error) -> StoreError {
    StoreError::unavailable(format!("cannot {doing} {}", path.display())).with_source(error)
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::super::tests::TempDir;
    use crate::store::{FileStore, Record, TokenStore};

    use super::*;

    /// Two stores made for one file stand for two processes: each opens
    /// the lock file on its own, as another process would.
    #[tokio::test]
    async fn stores_made_apart_for_one_file_share_its_lease() {
        let dir = TempDir::new();
        let path = dir.0.join("tokens.json");
        let (first, second) = (FileStore::new(&path), FileStore::new(&path));
        let ttl = Duration::from_secs(60);

        let lease = first.try_lease(ttl).await.unwrap().expect("free");
        assert_eq!(
            second.try_lease(ttl).await.unwrap(),
            None,
            "held by the first"
        );
        assert_eq!(
            first.try_lease(ttl).await.unwrap(),
            None,
            "held, even for its holder"
        );
        // Only the holder's own lease gives it back.
        second.release(Lease::new("someone else")).await.unwrap();
        assert_eq!(second.try_lease(ttl).await.unwrap(), None, "still held");
        first.release(lease).await.unwrap();
        let taken = second.try_lease(ttl).await.unwrap();
        assert!(taken.is_some(), "free once given back");
        assert_eq!(dir.entries(), [".tokens.json.lock"], "no token file yet");
    }

    /// A holder that hangs without dying holds the lease no longer than its
    /// time to live; once lapsed, its late release leaves the next
    /// holder's lease alone.
    #[tokio::test]
    async fn a_lease_lapses_after_its_time_to_live_for_every_store_of_the_file() {
        let dir = TempDir::new();
        let path = dir.0.join("tokens.json");
        let (hung, next) = (FileStore::new(&path), FileStore::new(&path));
        let stale = hung
            .try_lease(Duration::from_millis(1))
            .await
            .unwrap()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;

        let ttl = Duration::from_secs(60);
        let held = next.try_lease(ttl).await.unwrap().expect("lapsed");
        hung.release(stale).await.unwrap();
        assert_eq!(
            hung.try_lease(ttl).await.unwrap(),
            None,
            "the next holder's stays"
        );
        next.release(held).await.unwrap();
    }

    /// Only a holder that died while writing leaves content that does not
    /// parse; its lease died with it.
    #[tokio::test]
    async fn a_lock_file_that_does_not_parse_is_a_free_lease() {
        let dir = TempDir::new();
        let path = dir.0.join("tokens.json");
        for torn in ["4f2a", "4f2a 17", "4f2a 9999999999999999999999", "\n"] {
            fs::write(beside(&path), torn).unwrap();
            let lease = FileStore::new(&path)
                .try_lease(Duration::from_secs(60))
                .await
                .unwrap();
            assert!(lease.is_some(), "{torn:?}");
        }
    }

    /// Another process's compare-and-swap holds the lock file (here the
    /// test holds it, then stores a record itself as that process would):
    /// this one waits, then finds the version it expected gone and stores
    /// nothing. Found missing: without the lock file, both read "nothing
    /// stored" and both wrote, the second over the first's refresh.
    #[cfg(unix)]
    #[tokio::test]
    async fn a_compare_and_swap_waits_for_another_processs_section() {
        use rustix::fs::{flock, FlockOperation};
        let dir = TempDir::new();
        let path = dir.0.join("tokens.json");
        let store = FileStore::new(&path);

        let other = open(&beside(&path)).unwrap();
        flock(&other, FlockOperation::LockExclusive).unwrap();
        let swap = tokio::spawn({
            let store = store.clone();
            async move {
                store
                    .compare_and_swap(None, Record::new(1, b"late".to_vec()))
                    .await
            }
        });
        // Long enough for an unguarded swap to have read and written.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!swap.is_finished(), "waits for the other section");
        super::super::write(&path, &Record::new(1, b"first".to_vec())).unwrap();
        drop(other);

        assert!(
            !swap.await.unwrap().unwrap(),
            "the version it expected is gone"
        );
        let stored = store.load().await.unwrap().unwrap();
        assert_eq!(
            stored.payload(),
            b"first",
            "the other process's record stays"
        );
    }

    /// A lock file anyone may write could hold a lease that never lapses:
    /// refused as corrupt, which makes the layer refresh on its own.
    #[cfg(unix)]
    #[tokio::test]
    async fn a_lock_file_anyone_may_write_is_refused_as_corrupt() {
        use std::os::unix::fs::PermissionsExt;
        let dir = TempDir::new();
        let path = dir.0.join("tokens.json");
        fs::write(beside(&path), "").unwrap();
        fs::set_permissions(beside(&path), fs::Permissions::from_mode(0o666)).unwrap();
        let error = FileStore::new(&path)
            .try_lease(Duration::from_secs(60))
            .await
            .unwrap_err();
        assert!(error.is_corrupt(), "{error}");
        assert!(error.to_string().contains(".tokens.json.lock"), "{error}");
    }
}
