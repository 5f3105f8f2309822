//! Each thread's own copy of the current token's header.
//!
//! Every request clones the header it sends, and cloning a header value
//! writes its reference count. With one value shared by every thread, that
//! count's cache line moves between cores on each request: two threads
//! sending through one layer scaled no better than with a lock (see the
//! two-thread hot-path bench). Each thread therefore clones from a copy of
//! its own, made once per token generation.
//!
//! The copy is also the hot path's way to the token: it keeps the
//! snapshot's [`Marks`], which tell whether it is still current and fresh,
//! so a request for a fresh token does not load the snapshot at all. That
//! serves every clone of a service alike: a service cloned for each
//! request (`client.clone().oneshot(request)`) had no cache of its own to
//! revalidate, and loaded the snapshot from the `ArcSwap` each time.

use std::cell::RefCell;
use std::sync::{Arc, Weak};

use http::HeaderValue;

use super::snapshot::Marks;
use super::{Credential, Shared, Snapshot};

/// Token states (layers) a thread keeps copies for. Past this, requests
/// through further layers load the snapshot and clone its shared value,
/// as if there were no copies: evicting one instead would make two copies
/// churn on every request once a thread uses more layers than this in
/// turn.
const STATES_PER_THREAD: usize = 8;

thread_local! {
    static COPIES: RefCell<Vec<HeaderCopy>> = const { RefCell::new(Vec::new()) };
}

/// One token state's header, as of one generation, on this thread.
struct HeaderCopy {
    /// The state's address, to find the copy by. The `Weak` below keeps
    /// the allocation, so the address is not reused while the copy exists.
    /// Kept beside it because `Weak::as_ptr` checks for a dangling `Weak`
    /// on every look: finding the copy through it cost a request 9
    /// instructions more (`scripts/count-instructions.sh`).
    key: usize,
    /// Whether the state still exists: copies of dropped ones are removed
    /// when this thread next makes a copy (see [`has_room`]), or exits.
    state: Weak<Shared>,
    generation: u64,
    marks: Marks,
    header: HeaderValue,
}

/// The hot path: a clone of this thread's copy of the header of `shared`'s
/// current token, if the copy's marks vouch for it (see
/// [`Marks::vouch`]). `None` sends the caller the long way: loading the
/// snapshot, which also makes or renews the copy.
#[inline]
pub(super) fn vouched(shared: &Arc<Shared>) -> Option<Credential> {
    let key = Arc::as_ptr(shared) as usize;
    COPIES
        .try_with(|copies| {
            let copies = copies.borrow();
            let copy = copies.iter().find(|copy| copy.key == key)?;
            copy.marks.vouch(&shared.timer_started).then(|| Credential {
                header: copy.header.clone(),
                generation: copy.generation,
            })
        })
        .ok()
        .flatten()
}

/// A clone of `snapshot`'s header (the current token of `shared`) from this
/// thread's copy, made if the thread has none for this generation.
#[inline]
pub(super) fn header(shared: &Arc<Shared>, snapshot: &Snapshot) -> Option<HeaderValue> {
    let key = Arc::as_ptr(shared) as usize;
    let found = COPIES.try_with(|copies| {
        let copies = copies.borrow();
        let copy = copies.iter().find(|copy| copy.key == key)?;
        (copy.generation == snapshot.generation).then(|| copy.header.clone())
    });
    match found {
        Ok(Some(header)) => Some(header),
        _ => make(shared, snapshot, key),
    }
}

/// Copies the snapshot's header into a value of this thread's own and keeps
/// it for the next requests.
#[cold]
#[inline(never)]
fn make(shared: &Arc<Shared>, snapshot: &Snapshot, key: usize) -> Option<HeaderValue> {
    let original = snapshot.header.as_ref()?;
    // `false` also while the thread's locals are being destroyed.
    let room = COPIES.try_with(|copies| has_room(&mut copies.borrow_mut(), key));
    if room != Ok(true) {
        return Some(original.clone());
    }
    let Ok(mut header) = HeaderValue::from_bytes(original.as_bytes()) else {
        // Unreachable (a valid value's bytes are valid); the shared value
        // serves just as well.
        return Some(original.clone());
    };
    header.set_sensitive(original.is_sensitive());
    let copy = HeaderCopy {
        key,
        state: Arc::downgrade(shared),
        generation: snapshot.generation,
        marks: snapshot.marks(),
        header: header.clone(),
    };
    let _ = COPIES.try_with(|copies| keep(&mut copies.borrow_mut(), copy));
    Some(header)
}

/// Whether a copy for the state at `key` may be kept: one exists (of an
/// older generation) or there is room. Copies for dropped states are
/// removed first: their tokens have no business staying in memory.
fn has_room(copies: &mut Vec<HeaderCopy>, key: usize) -> bool {
    copies.retain(|kept| kept.state.strong_count() > 0);
    copies.len() < STATES_PER_THREAD || copies.iter().any(|kept| kept.key == key)
}

/// Replaces the copy for the same state, or adds one.
fn keep(copies: &mut Vec<HeaderCopy>, copy: HeaderCopy) {
    copies.retain(|kept| kept.key != copy.key);
    copies.push(copy);
}

/// How many copies this thread holds (tests).
#[cfg(test)]
pub(super) fn held() -> usize {
    COPIES.with(|copies| copies.borrow().len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};

    fn layer(token: &str) -> TokenRefreshLayer {
        let source = refresh_fn(|_| async { Ok::<_, RefreshError>(TokenSet::new("unused")) });
        TokenRefreshLayer::builder(source)
            .initial_tokens(TokenSet::new(token))
            .build()
    }

    /// The header a fresh-token request through `layer` is sent with.
    fn sent(layer: &TokenRefreshLayer) -> HeaderValue {
        let manager = &layer.core.manager;
        let credential = manager.ready();
        credential.expect("a fresh token").header
    }

    fn address(header: &HeaderValue) -> *const u8 {
        header.as_bytes().as_ptr()
    }

    #[tokio::test]
    async fn each_thread_sends_its_own_copy_of_the_header_and_keeps_reusing_it() {
        let layer = layer("a");
        let first = sent(&layer);
        let again = sent(&layer);
        let shared = layer.core.manager.shared.snapshot.load();
        let original = shared.header.as_ref().unwrap();

        assert_eq!(first, "Bearer a");
        assert!(first.is_sensitive());
        assert_eq!(address(&first), address(&again), "one copy per thread");
        assert_ne!(address(&first), address(original), "not the shared value");
        let elsewhere = std::thread::scope(|scope| {
            let other = scope.spawn(|| {
                let header = sent(&layer);
                (header.clone(), address(&header) as usize)
            });
            other.join().unwrap()
        });
        assert_eq!(elsewhere.0, "Bearer a");
        assert_ne!(
            elsewhere.1,
            address(&first) as usize,
            "another thread's own copy"
        );
    }

    #[tokio::test]
    async fn a_new_token_replaces_the_threads_copy() {
        let layer = layer("a");
        assert_eq!(sent(&layer), "Bearer a");
        layer.core.manager.set_tokens(TokenSet::new("b")).unwrap();

        assert_eq!(sent(&layer), "Bearer b");
        assert_eq!(held(), 1);
    }

    #[tokio::test]
    async fn copies_for_dropped_layers_are_removed_and_the_count_is_bounded() {
        let dropped = layer("gone");
        sent(&dropped);
        drop(dropped);
        let kept = layer("kept");
        sent(&kept);
        assert_eq!(held(), 1, "the dropped layer's copy went");

        let many: Vec<_> = (1..STATES_PER_THREAD + 2)
            .map(|i| layer(&format!("t{i}")))
            .collect();
        for (i, layer) in many.iter().enumerate() {
            assert_eq!(sent(layer), format!("Bearer t{}", i + 1).as_str());
        }
        assert_eq!(held(), STATES_PER_THREAD);

        // Past the bound, the shared value is sent and no copy is evicted.
        let last = many.last().unwrap();
        let shared = last.core.manager.shared.snapshot.load();
        let original = shared.header.as_ref().unwrap();
        assert_eq!(address(&sent(last)), address(original));
        assert_eq!(sent(&kept), "Bearer kept");
        let kept_copy = sent(&kept);
        assert_eq!(address(&kept_copy), address(&sent(&kept)), "still kept");

        // A dropped layer makes room for the next one.
        drop(kept);
        assert_ne!(address(&sent(last)), address(original), "copied now");
        assert_eq!(held(), STATES_PER_THREAD);
    }

    /// Found in review: a request through a thread's layers past the
    /// copies it keeps loads the snapshot, and took the watcher's word for
    /// its token without the clock read that bounds a copy's trust (one
    /// request in `CLOCK_EVERY`): a watcher that never ran again without
    /// dying (its runtime's workers stuck) had such requests send its
    /// token past expiry, every one of them.
    #[tokio::test(start_paused = true)]
    async fn past_the_copies_a_thread_keeps_the_watchers_word_is_checked_by_the_clock() {
        let others: Vec<_> = (0..STATES_PER_THREAD)
            .map(|i| layer(&format!("o{i}")))
            .collect();
        for other in &others {
            sent(other);
        }
        let lifetime = std::time::Duration::from_secs(100);
        // Built off the runtime, so that no watcher starts: one that never
        // runs again is what the test is about. Its promise is made here by
        // hand, as a watcher on a runtime that keeps its timers makes it.
        let target = std::thread::spawn(move || {
            let source = refresh_fn(|_| async { Ok::<_, RefreshError>(TokenSet::new("unused")) });
            TokenRefreshLayer::builder(source)
                .initial_tokens(TokenSet::new("t").with_expires_in(lifetime))
                .build()
        })
        .join()
        .unwrap();
        let manager = &target.core.manager;
        let snapshot = manager.shared.snapshot.load();
        snapshot.watch(tokio::time::Instant::now(), true);
        let sent = manager.ready().expect("fresh: sent").header;
        let original = snapshot.header.as_ref().unwrap();
        assert_eq!(
            address(&sent),
            address(original),
            "the shared value: no copy"
        );

        tokio::time::advance(lifetime + std::time::Duration::from_secs(20)).await;
        assert!(
            manager.ready().is_none(),
            "expired, the watcher silent: not sent"
        );
        assert!(!snapshot.kept_fresh(), "its word withdrawn");
    }
}
