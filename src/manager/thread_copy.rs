//! Each thread's own copy of the current token's header.
//!
//! Every request clones the header it sends, and cloning a header value
//! writes its reference count. With one value shared by every thread, that
//! count's cache line moves between cores on each request: two threads
//! sending through one layer scaled no better than with a lock (see the
//! two-thread hot-path bench). Each thread therefore clones from a copy of
//! its own, made once per token generation.

use std::cell::RefCell;
use std::sync::{Arc, Weak};

use http::HeaderValue;

use super::{Shared, Snapshot};

/// Token states (layers) a thread keeps copies for. Past this, the oldest
/// copy is dropped, and made again if needed.
const STATES_PER_THREAD: usize = 8;

thread_local! {
    static COPIES: RefCell<Vec<HeaderCopy>> = const { RefCell::new(Vec::new()) };
}

/// One token state's header, as of one generation, on this thread.
struct HeaderCopy {
    /// The state's address, to find the copy by. The `Weak` below keeps
    /// the allocation, so the address is not reused while the copy exists.
    key: usize,
    /// Whether the state still exists: copies of dropped ones are removed.
    state: Weak<Shared>,
    generation: u64,
    header: HeaderValue,
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
        header: header.clone(),
    };
    // Fails only while the thread's locals are being destroyed: the copy
    // then serves this request alone.
    let _ = COPIES.try_with(|copies| keep(&mut copies.borrow_mut(), copy));
    Some(header)
}

/// Replaces the copy for the same state, or adds one. Copies for dropped
/// states go first (their tokens have no business staying in memory), then
/// the oldest, if the thread holds too many.
fn keep(copies: &mut Vec<HeaderCopy>, copy: HeaderCopy) {
    copies.retain(|kept| kept.key != copy.key && kept.state.strong_count() > 0);
    if copies.len() >= STATES_PER_THREAD {
        copies.remove(0);
    }
    copies.push(copy);
}

/// How many copies this thread holds (tests).
#[cfg(test)]
pub(super) fn held() -> usize {
    COPIES.with(|copies| copies.borrow().len())
}
