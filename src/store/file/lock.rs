//! The lock files beside a token file: what makes a [`FileStore`]'s
//! compare-and-swap and lease atomic across the processes of one host.
//!
//! - `.<name>.lock` is locked with `flock` for each short critical section
//!   (a compare-and-swap, taking or giving back the lease). A process that
//!   dies inside one loses the lock with its descriptor.
//! - The lease is that file's content: `<owner> <lapses at, in ms since
//!   the Unix epoch> <liveness>`, its owner `{pid}-{random}` (which
//!   process holds it). It lapses on its own by the wall clock (the one
//!   clock every process of a host shares), so a holder that hangs holds
//!   the others back no longer than its time to live, as in Redis.
//! - A *watched* lease also ends with its holder: the holder keeps
//!   `.<name>.lease` locked for as long as it holds the lease, and the
//!   lease names that file (`<device>:<inode>`). A taker that can lock
//!   the same file finds the holder gone (killed mid-refresh, or
//!   restarted), and takes the lease over at once instead of waiting out
//!   a time to live that may be minutes long. A lease is unwatched (`0`)
//!   where that lock cannot be had: off Unix, or while a holder whose
//!   lease lapsed still lives and keeps it. The holder of a watched lease
//!   writes it into `.<name>.lease` too: should `.<name>.lock` be removed
//!   under a live lease (by hand, or by a clean-up of old files), a taker
//!   finds it there, and the lease goes to no second holder meanwhile.
//!   Removing both files loses it.
//! - A section checks, before each write it makes, that `.<name>.lock`
//!   still names the file it locked: removed under it, another process may
//!   have locked the one made anew, so the section writes nothing more.
//!   One that waited for a lock file removed meanwhile opens the new one.
//!
//! `flock` locks an open file description: two opens of a file exclude
//! each other even in one process, which is what lets two stores made
//! apart for one file coordinate. Where `flock` is emulated with POSIX
//! locks (NFS on Linux), locks of one process never exclude each other:
//! processes are still told apart, and a store's clones by its mutex and
//! its own list of leases, but not two stores made apart in one process.
//! Off Unix, nothing is locked: the sections are serialized among the
//! clones of one store only.
//!
//! [`FileStore`]: super::FileStore

use std::fs::{self, File};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use super::{not_own, private_options, unavailable};
use crate::store::codec::unix_millis;
use crate::store::{Lease, StoreError};

/// How long a critical section waits for another one to end. Each takes a
/// read and a write of a few hundred bytes (synced for a record); past this the holder is
/// stuck (a stopped process, a hung disk), and the operation fails as the
/// store being unavailable, which the layer outlives. Polled against, so
/// that no thread waits longer.
pub(super) const WAIT_AT_MOST: Duration = Duration::from_secs(5);

/// Runs `attempt` every millisecond until it yields something, or until
/// `give_up`.
pub(super) fn poll_until<T>(give_up: Instant, mut attempt: impl FnMut() -> Option<T>) -> Option<T> {
    loop {
        if let Some(done) = attempt() {
            return Some(done);
        }
        if Instant::now() >= give_up {
            return None;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// `.<name><suffix>` beside the token file at `target` (the file itself,
/// symbolic links followed: every symbolic link to one file shares its
/// locks).
fn beside(target: &Path, suffix: &str) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    target.with_file_name(format!(".{name}{suffix}"))
}

/// The liveness locks of the leases one store holds: each keeps
/// `.<name>.lease` locked until its lease is given back or lapses.
#[derive(Default)]
pub(super) struct Holders(Vec<Holder>);

struct Holder {
    /// The lease, as the lock file holds it (to restore it there).
    held: Held,
    /// Kept open: its lock lasts as long as it does.
    liveness: File,
}

impl Holders {
    /// Lets go of `lease`'s liveness lock: its holder is done with it. The
    /// lease it wrote into the liveness file goes first (best effort): left
    /// there, a taker finding the lock held by someone who does not write
    /// it (an older version of this crate) would restore this lease.
    pub(super) fn forget(&mut self, lease: &Lease) {
        self.0.retain(|holder| {
            let done = &*holder.held.owner == lease.owner();
            if done {
                let _ = holder.liveness.set_len(0);
            }
            !done
        });
    }

    /// Lets go of the liveness locks of leases lapsed by `now`: kept, they
    /// would keep every next lease on the host unwatched.
    pub(super) fn prune(&mut self, now: SystemTime) {
        let now = unix_millis(now);
        self.0.retain(|holder| holder.held.lapses > now);
    }

    fn holds(&self, owner: &str) -> bool {
        self.0.iter().any(|holder| &*holder.held.owner == owner)
    }
}

/// A critical section: the lock file beside `target`, locked until dropped.
pub(super) struct Locked {
    file: File,
    /// Which file `file` is (`<device>:<inode>`), to tell whether the path
    /// still names it.
    identity: String,
    path: PathBuf,
    target: PathBuf,
}

impl Locked {
    /// Opens (creating it, private to this user) and locks the lock file
    /// beside the token file `target`, waiting for another process's
    /// section to end until `give_up`.
    ///
    /// A lock file removed (or replaced) while this waited for it locks
    /// nothing anyone opening the path now would wait for: it is opened
    /// again, as the path names it now.
    pub(super) fn take(mut target: PathBuf, give_up: Instant) -> Result<Self, StoreError> {
        let mut path = beside(&target, ".lock");
        loop {
            let (file, identity) = open_own(&path)?;
            let locked = Self {
                file,
                identity,
                path,
                target,
            };
            if !cfg!(unix) {
                return Ok(locked);
            }
            let taken = poll_until(give_up, || {
                match try_exclusive(&locked.file, &locked.path) {
                    Ok(false) => None,
                    done => Some(done),
                }
            });
            // Given up on, or failed; else locked (`Ok(true)`).
            taken.ok_or_else(|| {
                StoreError::unavailable(format!(
                    "another process (or a store made apart) has held {} for {WAIT_AT_MOST:?}",
                    locked.path.display()
                ))
            })??;
            if locked.ensure_current().is_ok() || Instant::now() >= give_up {
                // Past the wait, its error is the next write's.
                return Ok(locked);
            }
            Self { path, target, .. } = locked;
        }
    }

    /// Whether the path still names the locked file. Removed while this
    /// section holds it (a clean-up of old files), another process opens a
    /// new one and enters a section beside this one: found in review,
    /// both wrote a record (the second over the first, both told it was
    /// stored), or both took the lease. Checked before each write a
    /// section makes, which it then does not make; what is left is the
    /// instant between the check and the write.
    pub(super) fn ensure_current(&self) -> Result<(), StoreError> {
        let now = fs_identity(&self.path);
        if now.as_deref() == Some(&*self.identity) {
            return Ok(());
        }
        Err(StoreError::unavailable(format!(
            "{} was removed or replaced while this process held it: \
             another process may hold its section now",
            self.path.display()
        )))
    }

    /// Takes the lease for `ttl` unless someone holds it at `now`; a
    /// watched lease's liveness lock goes to `holders`.
    pub(super) fn try_lease(
        &self,
        ttl: Duration,
        now: SystemTime,
        holders: &mut Holders,
    ) -> Result<Option<Lease>, StoreError> {
        let now = unix_millis(now);
        let held = self.holder()?.filter(|held| held.lapses > now);
        // This store's liveness locks of leases no longer current (lapsed,
        // or replaced) end here; kept, they would keep every next lease on
        // the host unwatched. With no record at all, only the lapsed ones:
        // a live one's record may have been lost with the lock file.
        let current = held.as_ref().map(|held| &*held.owner);
        holders.0.retain(|holder| match current {
            Some(current) => &*holder.held.owner == current,
            None => holder.held.lapses > now,
        });
        // A clone's own lease lives. Asked before the liveness file is
        // opened at all: where `flock` is emulated with POSIX locks,
        // closing any descriptor of a file ends every lock this process
        // holds on it, the holder's too.
        if held.as_ref().is_some_and(|held| holders.holds(&held.owner)) {
            return Ok(None);
        }
        // So is one whose record was lost with the lock file (removed by
        // hand, or by a clean-up of old files): it is put back, and for the
        // same reason without opening the liveness file. Found in review:
        // the lease went to a second layer on this store, and both
        // refreshed from one refresh token. (Past the `retain` above, with
        // no record, only live ones are left.)
        let own_lost = held.is_none().then(|| holders.0.first()).flatten();
        if let Some(own) = own_lost {
            self.claim(&own.held.line())?;
            return Ok(None);
        }
        let liveness_path = beside(&self.target, ".lease");
        let (liveness, identity) = open_own(&liveness_path)?;
        let watched = match held {
            // Another's lives while its holder keeps the liveness lock on
            // this very file (one removed and made anew says nothing of
            // the holder's), or, unwatched, until it lapses.
            Some(held) => {
                let gone = held.liveness.as_deref() == Some(&*identity)
                    && try_exclusive(&liveness, &liveness_path)?;
                if !gone {
                    return Ok(None);
                }
                true
            }
            None => {
                let free = try_exclusive(&liveness, &liveness_path)?;
                if !free {
                    // Kept by another process's live lease whose record
                    // was lost with the lock file: found in review, it
                    // went to this store too. Its holder wrote it here as
                    // well; it is restored.
                    let live = read_lease(&liveness, &liveness_path)?
                        .filter(|lost| lost.lapses > now)
                        .filter(|lost| lost.liveness.as_deref() == Some(&*identity));
                    if let Some(lost) = live {
                        self.claim(&lost.line())?;
                        return Ok(None);
                    }
                }
                // A holder whose lease lapsed but who lives on keeps the
                // liveness lock: this lease goes unwatched.
                free
            }
        };
        let liveness = watched.then_some((liveness, identity));
        self.take_lease(ttl, now, liveness, holders)
    }

    fn take_lease(
        &self,
        ttl: Duration,
        now: u64,
        liveness: Option<(File, String)>,
        holders: &mut Holders,
    ) -> Result<Option<Lease>, StoreError> {
        let ttl = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let lease = Lease::of_this_process();
        let held = Held {
            owner: lease.owner().into(),
            lapses: now.saturating_add(ttl),
            liveness: liveness
                .as_ref()
                .map(|(_, identity)| identity.as_str().into()),
        };
        let line = held.line();
        self.ensure_current()?;
        if let Some((liveness, _)) = &liveness {
            // Where a taker finds it if the lock file goes.
            let path = beside(&self.target, ".lease");
            overwrite(liveness, &path, &line)?;
        }
        self.replace(&line)?;
        if let Some((liveness, _)) = liveness {
            holders.0.push(Holder { held, liveness });
        }
        Ok(Some(lease))
    }

    /// Gives the lease back if `lease` still holds it.
    pub(super) fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        if self
            .holder()?
            .is_some_and(|held| &*held.owner == lease.owner())
        {
            self.replace("")?;
        }
        Ok(())
    }

    /// The resolved token file this section guards: the one to write.
    pub(super) fn target(&self) -> &Path {
        &self.target
    }

    /// The lease as the lock file has it; `None` for a free lease, or for
    /// content that does not parse (left by a holder that died while
    /// writing it, whose lease ended with it).
    fn holder(&self) -> Result<Option<Held>, StoreError> {
        read_lease(&self.file, &self.path)
    }

    /// Writes a lease line, if the path still names the lock file.
    fn claim(&self, line: &str) -> Result<(), StoreError> {
        self.ensure_current()?;
        self.replace(line)
    }

    /// Replaces the lock file's content.
    fn replace(&self, content: &str) -> Result<(), StoreError> {
        overwrite(&self.file, &self.path, content)
    }
}

/// The lease `file` (at `path`) holds, as [`Locked::holder`] reads it.
fn read_lease(mut file: &File, path: &Path) -> Result<Option<Held>, StoreError> {
    let mut content = String::new();
    file.rewind()
        .and_then(|()| file.read_to_string(&mut content))
        .map_err(|error| unavailable("read", path, error))?;
    let mut fields = content.split_whitespace();
    let (Some(owner), Some(lapses), Some(liveness), None) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Ok(None);
    };
    Ok(lapses.parse().ok().map(|lapses| Held {
        owner: owner.into(),
        lapses,
        liveness: (liveness != "0").then(|| liveness.into()),
    }))
}

/// Replaces `file`'s content (at `path`). Not synced: a lease need not
/// outlive the machine.
fn overwrite(mut file: &File, path: &Path, content: &str) -> Result<(), StoreError> {
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| file.write_all(content.as_bytes()))
        .map_err(|error| unavailable("write", path, error))
}

/// A lease as the lock file has it.
struct Held {
    owner: Box<str>,
    /// In ms since the Unix epoch.
    lapses: u64,
    /// For a watched lease, which liveness file its holder keeps locked
    /// (`<device>:<inode>`).
    liveness: Option<Box<str>>,
}

impl Held {
    /// The lease as a lock file holds it.
    fn line(&self) -> String {
        let liveness = self.liveness.as_deref().unwrap_or("0");
        format!("{} {} {liveness}\n", self.owner, self.lapses)
    }
}

/// Opens (creating it) a lock file of this user's own, and says which file
/// it is (`<device>:<inode>`; `0` off Unix): never through a symbolic
/// link, never one another user owns or anyone may write, never one with
/// another name (a hard link), never anything but a regular file. Planted
/// in a group-writable directory, such a file could hold a lease that
/// never lapses, or be a file of ours to overwrite. A refused file is
/// reported as the store being unavailable, not corrupt: the layer then
/// puts a refresh off while its token is good instead of refreshing alone
/// at once, which would present a rotating refresh token that other
/// processes present too.
fn open_own(path: &Path) -> Result<(File, String), StoreError> {
    let mut options = private_options();
    options.read(true).write(true).create(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32);
    }
    let opened = options
        .open(path)
        .and_then(|file| Ok((file.metadata()?, file)));
    let (metadata, file) = opened.map_err(|error| unavailable("open", path, error))?;
    if !metadata.is_file() {
        return Err(refused(path, "is not a regular file"));
    }
    if let Some(why) = not_own(&metadata) {
        return Err(refused(path, &why));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if metadata.nlink() != 1 {
            return Err(refused(path, "has other names (hard links)"));
        }
    }
    Ok((file, identity(&metadata)))
}

/// Which file `metadata` describes: `<device>:<inode>`, `0` off Unix.
fn identity(metadata: &fs::Metadata) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        format!("{}:{}", metadata.dev(), metadata.ino())
    }
    #[cfg(not(unix))]
    {
        let _ = metadata;
        String::from("0")
    }
}

/// Which file `path` names now, links not followed; `None` if none.
fn fs_identity(path: &Path) -> Option<String> {
    fs::symlink_metadata(path)
        .ok()
        .map(|metadata| identity(&metadata))
}

fn refused(path: &Path, why: &str) -> StoreError {
    StoreError::unavailable(format!(
        "{} {why}: the token file's lock file must be this process's own; remove it",
        path.display()
    ))
}

/// Locks `file` against every other descriptor of it, in this process or
/// another, if no one holds it; `Ok(false)` if someone does (and always
/// off Unix, where nothing is locked: a lease is never watched there).
#[cfg(unix)]
fn try_exclusive(file: &File, path: &Path) -> Result<bool, StoreError> {
    use rustix::fs::{flock, FlockOperation};
    use rustix::io::Errno;
    match flock(file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(true),
        Err(Errno::WOULDBLOCK | Errno::INTR) => Ok(false),
        Err(errno) => Err(unavailable("lock", path, errno.into())),
    }
}

#[cfg(not(unix))]
fn try_exclusive(_: &File, _: &Path) -> Result<bool, StoreError> {
    Ok(false)
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::sync::Arc;

    use super::super::tests::TempDir;
    use crate::store::{FileStore, Record, TokenStore};

    use super::*;

    const TTL: Duration = Duration::from_secs(60);

    /// A time to live that is over as soon as the lease is taken: a lease
    /// that lapsed, without waiting for it (leases lapse by the wall
    /// clock, which tokio's paused clock does not move).
    const LAPSED: Duration = Duration::ZERO;

    /// A fresh directory, its `tokens.json`, and `N` stores made apart for
    /// it: each opens the lock files on its own, as a process of its own
    /// would.
    fn stores_apart<const N: usize>() -> (TempDir, PathBuf, [FileStore; N]) {
        let dir = TempDir::new();
        let path = dir.0.join("tokens.json");
        let stores = std::array::from_fn(|_| FileStore::new(&path));
        (dir, path, stores)
    }

    /// Two stores made apart for one file stand for two processes.
    #[tokio::test]
    async fn stores_made_apart_for_one_file_share_its_lease() {
        let (dir, _, [first, second]) = stores_apart();

        let lease = taken_by(&first, &second).await;
        assert_eq!(
            first.try_lease(TTL).await.unwrap(),
            None,
            "held, even for its holder"
        );
        // Only the holder's own lease gives it back.
        second.release(Lease::new("someone else")).await.unwrap();
        assert_eq!(second.try_lease(TTL).await.unwrap(), None, "still held");
        first.release(lease).await.unwrap();
        assert!(
            second.try_lease(TTL).await.unwrap().is_some(),
            "free once given back"
        );
        let entries = dir.entries();
        assert_eq!(
            entries,
            [".tokens.json.lease", ".tokens.json.lock"],
            "no token file yet"
        );
    }

    /// A holder that dies lets go of its descriptors, and with them of the
    /// lease, however long its time to live: here its store is dropped,
    /// which closes them as the process's end would.
    #[tokio::test]
    async fn a_lease_whose_holder_is_gone_is_taken_over_at_once() {
        let (_dir, _, [holder, next]) = stores_apart();
        let _lease = taken_by(&holder, &next).await;
        drop(holder);
        assert!(
            next.try_lease(TTL).await.unwrap().is_some(),
            "its holder is gone"
        );
    }

    /// A lock file removed while its lease is held (by hand, or by a
    /// clean-up of old files) does not hand the lease to a second holder,
    /// whichever section comes first, nor to another layer on the holder's
    /// own store: the lease is taken again only once its holder lets go.
    /// Found in review: the next store made the file anew, found no lease
    /// in it, and took one, and both refreshed from one refresh token.
    #[tokio::test]
    async fn a_lease_whose_lock_file_was_removed_is_not_taken_while_its_holder_keeps_it() {
        let (_dir, path, [holder, next]) = stores_apart();
        let lease = taken_by(&holder, &next).await;
        let lock_file = beside(&path, ".lock");

        fs::remove_file(&lock_file).unwrap();
        let written = next.compare_and_swap(None, Record::new(1, b"t".to_vec()));
        assert!(written.await.unwrap(), "a section of another kind first");
        assert_eq!(next.try_lease(TTL).await.unwrap(), None, "held still");
        fs::remove_file(&lock_file).unwrap();
        assert_eq!(
            holder.clone().try_lease(TTL).await.unwrap(),
            None,
            "held for the holder's own store too"
        );
        assert_eq!(next.try_lease(TTL).await.unwrap(), None, "and again");

        holder.release(lease).await.unwrap();
        let kept = fs::read_to_string(beside(&path, ".lease")).unwrap();
        assert_eq!(kept, "", "given back, it is gone from the liveness file");
        assert!(
            next.try_lease(TTL).await.unwrap().is_some(),
            "taken once its holder let go"
        );
    }

    /// Found in review: a lock file removed while a section held it let
    /// another process into a section beside it, and both wrote (the
    /// second record over the first, both told it was stored) or both took
    /// the lease. The first section's writes are refused now; the other's
    /// go ahead.
    #[tokio::test]
    async fn a_section_whose_lock_file_was_removed_under_it_writes_nothing() {
        let (_dir, path, [_, other]) = stores_apart::<2>();
        let far = Instant::now() + WAIT_AT_MOST;
        let held = Locked::take(path.clone(), far).unwrap();
        assert!(held.ensure_current().is_ok());

        fs::remove_file(beside(&path, ".lock")).unwrap();
        let theirs = Record::new(1, b"theirs".to_vec());
        assert!(other.compare_and_swap(None, theirs).await.unwrap());

        let ours = Record::new(1, b"ours".to_vec());
        let check = || held.ensure_current();
        let refused = super::super::write_unless(held.target(), &ours, check);
        assert!(refused
            .unwrap_err()
            .to_string()
            .contains("removed or replaced"));
        let lease = held.try_lease(TTL, SystemTime::now(), &mut Holders::default());
        assert!(lease.is_err(), "no lease taken in an ended section");
        let stored = other.load().await.unwrap().unwrap();
        assert_eq!(stored.payload(), b"theirs", "not written over");
        drop(held);
        assert!(other.try_lease(TTL).await.unwrap().is_some());
    }

    /// A section that waited for a lock file removed meanwhile takes the
    /// one the path names now, where the next process will wait for it.
    #[test]
    fn a_section_that_waited_for_a_removed_lock_file_takes_the_new_one() {
        let (_dir, path, _) = stores_apart::<0>();
        let lock_file = beside(&path, ".lock");
        let far = Instant::now() + WAIT_AT_MOST;
        let first = Locked::take(path.clone(), far).unwrap();
        let waiter = std::thread::spawn({
            let path = path.clone();
            move || Locked::take(path, far).unwrap()
        });
        // The waiter has opened the old lock file and waits for it.
        std::thread::sleep(Duration::from_millis(100));
        fs::remove_file(&lock_file).unwrap();
        drop(first);

        let second = waiter.join().unwrap();
        assert!(
            second.ensure_current().is_ok(),
            "holds the file the path names"
        );
        let third = Locked::take(path, Instant::now() + Duration::from_millis(200));
        assert!(third.is_err(), "the next one waits for it");
    }

    /// A lease sent to a caller that was gone before it took it (cut off
    /// by its refresh timeout) is given back, for the next taker.
    #[tokio::test]
    async fn a_lease_delivered_to_a_caller_gone_is_given_back() {
        let (_dir, _, [store, other]) = stores_apart();
        let lease = taken_by(&store, &other).await;
        let (deliver, received) = tokio::sync::oneshot::channel();
        deliver.send(Some(lease)).unwrap();
        let inner = Arc::clone(&store.inner);
        drop(super::super::Delivery { received, inner });
        settled(&store).await;
        assert!(other.try_lease(TTL).await.unwrap().is_some(), "given back");
    }

    /// A release lets go of the lease's liveness lock at once, even while
    /// a clone's section holds the store (stuck on a hung disk, say): the
    /// lease ends for the next taker long before that section gives up.
    #[tokio::test]
    #[allow(
        clippy::await_holding_lock,
        reason = "the lock stands for a clone's stuck section: held on purpose while the release runs"
    )]
    async fn a_release_ends_the_lease_while_a_section_is_stuck() {
        let (_dir, _, [holder, next]) = stores_apart();
        let lease = holder.try_lease(TTL).await.unwrap().expect("free");
        let stuck = holder.inner.sections.lock().unwrap();
        let releasing = tokio::spawn({
            let holder = holder.clone();
            async move { holder.release(lease).await }
        });
        let deadline = Instant::now() + WAIT_AT_MOST / 2;
        while next.try_lease(TTL).await.unwrap().is_none() {
            assert!(Instant::now() < deadline, "the lease outlived its release");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(stuck);
        releasing.await.unwrap().unwrap();
    }

    /// A store that only reads the file after its lease lapsed lets go of
    /// the lapsed lease's liveness lock: the next lease, another store's,
    /// is watched.
    #[tokio::test]
    async fn a_load_ends_the_liveness_lock_of_a_lapsed_lease() {
        let (_dir, path, [reader, next]) = stores_apart();
        let _lapsed = reader.try_lease(LAPSED).await.unwrap();
        assert_eq!(reader.load().await.unwrap(), None);
        let held = next.try_lease(TTL).await.unwrap().expect("lapsed");
        let line = fs::read_to_string(beside(&path, ".lock")).unwrap();
        assert!(line.starts_with(held.owner()), "{line}");
        assert!(!line.ends_with(" 0\n"), "watched: {line}");
    }

    /// `holder` takes the lease, which `other` then finds held.
    async fn taken_by(holder: &FileStore, other: &FileStore) -> Lease {
        let lease = holder.try_lease(TTL).await.unwrap().expect("free");
        assert_eq!(other.try_lease(TTL).await.unwrap(), None, "held");
        lease
    }

    /// Waits until no task holds `store`'s state any more.
    async fn settled(store: &FileStore) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Arc::strong_count(&store.inner) > 1 {
            assert!(
                Instant::now() < deadline,
                "a task never let go of the store"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A holder that hangs without dying holds the lease no longer than its
    /// time to live. Its liveness lock is still held, so the next lease is
    /// unwatched: it ends by its time to live only. Once lapsed, the hung
    /// holder's late release leaves the next holder's lease alone.
    #[tokio::test]
    async fn a_lease_lapses_after_its_time_to_live_for_every_store_of_the_file() {
        let (_dir, path, [hung, next, third]) = stores_apart();
        let stale = hung.try_lease(LAPSED).await.unwrap().unwrap();

        let held = next.try_lease(TTL).await.unwrap().expect("lapsed");
        let line = fs::read_to_string(beside(&path, ".lock")).unwrap();
        assert!(line.starts_with(held.owner()), "{line}");
        assert!(line.ends_with(" 0\n"), "unwatched: {line}");
        assert_eq!(
            third.try_lease(TTL).await.unwrap(),
            None,
            "unwatched, yet held"
        );
        hung.release(stale).await.unwrap();
        assert_eq!(
            hung.try_lease(TTL).await.unwrap(),
            None,
            "the next holder's stays"
        );
        next.release(held).await.unwrap();
        assert!(third.try_lease(TTL).await.unwrap().is_some());
    }

    /// What the lock file may hold, as no store of this process wrote it.
    #[tokio::test]
    async fn what_the_lock_file_holds_decides_the_lease() {
        let (_dir, path, []) = stores_apart();
        let (_, liveness) = open_own(&beside(&path, ".lease")).unwrap();
        let later = unix_millis(SystemTime::now()) + 60_000;
        let cases = [
            // Torn by a holder that died while writing it.
            ("4f2a", true),
            ("4f2a 1", true),
            ("4f2a soon 0", true),
            ("4f2a 1 0 more", true),
            ("\n", true),
            // Lapsed.
            ("4f2a 17 0", true),
            // Watched, and nobody keeps the liveness lock: the holder died.
            (&*format!("4f2a {later} {liveness}"), cfg!(unix)),
            // Watched through a liveness file since removed and made anew:
            // nothing is known of the holder.
            (&*format!("4f2a {later} 1:1"), false),
            // Unwatched: held until it lapses.
            (&*format!("4f2a {later} 0"), false),
        ];
        for (content, free) in cases {
            write_own(&beside(&path, ".lock"), content);
            let lease = FileStore::new(&path).try_lease(TTL).await.unwrap();
            assert_eq!(lease.is_some(), free, "{content:?}");
        }
    }

    /// Writes `content` to `path`, private to this user whatever the umask.
    fn write_own(path: &Path, content: &str) {
        fs::write(path, content).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
        }
    }

    /// A release that cannot reach the lock file (refused here, stuck
    /// elsewhere) still lets go of the lease's liveness lock: the lease
    /// ends as its holder's would, for the next taker to take over.
    #[cfg(unix)]
    #[tokio::test]
    async fn a_release_that_fails_still_ends_the_lease() {
        use std::os::unix::fs::PermissionsExt;
        let (_dir, path, [holder, next]) = stores_apart();
        let lease = holder.try_lease(TTL).await.unwrap().expect("free");
        let lock_path = beside(&path, ".lock");
        let anyones = fs::Permissions::from_mode(0o666);
        fs::set_permissions(&lock_path, anyones).unwrap();
        assert!(
            holder.release(lease).await.is_err(),
            "the lock file is refused"
        );

        fs::set_permissions(&lock_path, fs::Permissions::from_mode(0o600)).unwrap();
        let line = fs::read_to_string(&lock_path).unwrap();
        assert!(
            !line.ends_with(" 0\n") && !line.is_empty(),
            "still held, watched: {line}"
        );
        assert!(next.try_lease(TTL).await.unwrap().is_some(), "taken over");
    }

    /// A caller that stopped waiting (its refresh timeout) while another
    /// section held the file takes no lease when the section ends: nobody
    /// would give it back.
    #[tokio::test]
    #[allow(
        clippy::await_holding_lock,
        reason = "the lock stands for another section in progress: held on purpose while the caller waits"
    )]
    async fn a_lease_is_not_taken_for_a_caller_that_stopped_waiting() {
        let (dir, path, [store]) = stores_apart();
        let other_section = store.inner.sections.lock().unwrap();
        let gave_up = tokio::time::timeout(Duration::from_millis(50), store.try_lease(TTL)).await;
        assert!(gave_up.is_err(), "waited for the other section");
        drop(other_section);
        // The abandoned task lets go of the store once done.
        settled(&store).await;
        // Never taken, rather than taken and given back: only a lease
        // taken makes its liveness file.
        assert!(
            !dir.0.join(".tokens.json.lease").exists(),
            "a lease was taken"
        );
        let other = FileStore::new(&path);
        assert!(
            other.try_lease(TTL).await.unwrap().is_some(),
            "no lease was left"
        );
    }

    /// Another process's compare-and-swap holds the lock file (here the
    /// test holds it, and stores a record itself as that process would):
    /// this one waits, then finds the version it expected gone and stores
    /// nothing. Without the lock file, both read "nothing stored" and both
    /// wrote, the second over the first's refresh. That the swap waits is
    /// seen in the process's open files, not guessed from a delay.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_compare_and_swap_waits_for_another_processs_section() {
        use rustix::fs::{flock, FlockOperation};
        let (_dir, path, [store]) = stores_apart();

        let lock_path = beside(&path, ".lock");
        let (other, _) = open_own(&lock_path).unwrap();
        flock(&other, FlockOperation::LockExclusive).unwrap();
        let swap = tokio::spawn({
            let store = store.clone();
            async move {
                store
                    .compare_and_swap(None, Record::new(1, b"late".to_vec()))
                    .await
            }
        });
        let lock_path = fs::canonicalize(&lock_path).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while descriptors_of(&lock_path) < 2 {
            assert!(
                Instant::now() < deadline,
                "the swap never opened the lock file"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The other process's record, written while it holds the lock.
        write_own(&path, "{\"version\":1,\"payload\":\"Zmlyc3Q=\"}");
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

    /// How many of this process's open descriptors name `path`.
    #[cfg(target_os = "linux")]
    fn descriptors_of(path: &Path) -> usize {
        let open = fs::read_dir("/proc/self/fd").unwrap().flatten();
        open.filter(|fd| fs::read_link(fd.path()).is_ok_and(|target| target == path))
            .count()
    }

    /// A lock file anyone may write could hold a lease that never lapses,
    /// and one reached through a symbolic link could be a file of ours to
    /// overwrite: both refused as the store being unavailable (not
    /// corrupt, which would make the layer refresh alone at once), the
    /// link's target untouched.
    #[cfg(unix)]
    #[tokio::test]
    async fn a_lock_file_not_this_process_own_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let (dir, path, []) = stores_apart();
        let lock_path = beside(&path, ".lock");
        write_own(&lock_path, "");
        fs::set_permissions(&lock_path, fs::Permissions::from_mode(0o666)).unwrap();
        let error = FileStore::new(&path).try_lease(TTL).await.unwrap_err();
        assert!(!error.is_corrupt(), "{error}");
        assert!(error.to_string().contains(".tokens.json.lock"), "{error}");
        assert!(error.to_string().contains("any user"), "{error}");

        let precious = dir.0.join("precious");
        write_own(&precious, "keep");
        type Link = fn(&Path, &Path) -> std::io::Result<()>;
        let links: [(Link, &str); 2] = [
            (
                |target, link| std::os::unix::fs::symlink(target, link),
                "open",
            ),
            (|target, link| fs::hard_link(target, link), "hard links"),
        ];
        for (link, named) in links {
            fs::remove_file(&lock_path).unwrap();
            link(&precious, &lock_path).unwrap();
            let error = FileStore::new(&path).try_lease(TTL).await.unwrap_err();
            assert!(!error.is_corrupt(), "{error}");
            assert!(error.to_string().contains(named), "{error}");
            assert_eq!(fs::read_to_string(&precious).unwrap(), "keep");
        }
    }
}
