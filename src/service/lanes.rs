//! [`Lanes`]: a few copies of [`Shared`], so that threads sending through
//! one layer do not write one reference count.
//!
//! Every response future holds an `Arc<Shared>`, so every request bumps
//! and drops a reference count. With one count for all threads, its cache
//! line moved between cores twice per request: two threads hammering one
//! layer scaled worse than with the `RwLock` bearer layer of the hot-path
//! bench (paired two-thread time 1.67 × the lock's). Now each clone of the
//! service uses one of a few copies (lanes), separate allocations with
//! counts of their own, dealt in turn as clones are made: clones used on
//! different threads mostly write different counts.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use super::shared::Shared;
use super::Core;

/// Lanes per layered service, at most: enough that a handful of threads
/// rarely share one, few enough that the copies stay small.
const MAX_LANES: usize = 8;

/// The copies of one layered service's [`Shared`], and the one a
/// [`TokenRefresh`](super::TokenRefresh) (each clone of it) uses.
pub(crate) struct Lanes<S, C> {
    all: Arc<[Arc<Shared<S, C>>]>,
    /// This clone's lane, dealt when it was made: a request reads a field,
    /// where looking up the thread's lane would cost every request a
    /// thread-local read and an index.
    mine: usize,
}

impl<S, C> Lanes<S, C> {
    /// One lane per available core, at most [`MAX_LANES`].
    pub(crate) fn new(core: Arc<Core<C>>) -> Self {
        Self::with_count(core, lane_count())
    }

    fn with_count(core: Arc<Core<C>>, count: usize) -> Self {
        let all: Arc<[_]> = (0..count.max(1))
            .map(|_| Arc::new(Shared::new(Arc::clone(&core))))
            .collect();
        let mine = deal() % all.len();
        Self { all, mine }
    }

    /// This clone's lane.
    #[inline]
    pub(crate) fn current(&self) -> &Arc<Shared<S, C>> {
        &self.all[self.mine]
    }

    /// What every lane shares; for calls that are not per request.
    pub(crate) fn core(&self) -> &Core<C> {
        &self.current().core
    }
}

/// A clone takes the next lane dealt by the thread cloning: clones made
/// one after the other (one per worker thread, or per task) spread over
/// the lanes.
impl<S, C> Clone for Lanes<S, C> {
    fn clone(&self) -> Self {
        Self {
            all: Arc::clone(&self.all),
            mine: deal() % self.all.len(),
        }
    }
}

/// Available cores, at most [`MAX_LANES`]; asked once per process (it may
/// read cgroup files).
pub(super) fn lane_count() -> usize {
    static COUNT: OnceLock<usize> = OnceLock::new();
    *COUNT.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        cores.min(MAX_LANES)
    })
}

/// The next lane number this thread deals. Each thread deals in turn from
/// its own starting point (given out in the order threads first deal), so
/// dealing writes nothing another thread reads.
fn deal() -> usize {
    static THREADS: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static NEXT: Cell<Option<usize>> = const { Cell::new(None) };
    }
    NEXT.with(|next| {
        let lane = next
            .get()
            .unwrap_or_else(|| THREADS.fetch_add(1, Ordering::Relaxed));
        next.set(Some(lane.wrapping_add(1)));
        lane
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};

    fn lanes(count: usize) -> Lanes<(), crate::classify::Unauthorized> {
        let source = refresh_fn(|_| async { Ok::<_, RefreshError>(TokenSet::new("unused")) });
        let layer = TokenRefreshLayer::builder(source).build();
        Lanes::with_count(Arc::clone(&layer.core), count)
    }

    #[test]
    fn each_lane_is_an_allocation_of_its_own() {
        let lanes = lanes(4);
        for (i, a) in lanes.all.iter().enumerate() {
            for b in &lanes.all[i + 1..] {
                assert!(!Arc::ptr_eq(a, b), "lanes share a reference count");
            }
        }
    }

    #[test]
    fn clones_made_one_after_the_other_take_every_lane_in_turn() {
        let original = lanes(4);
        let clones: Vec<_> = (0..8).map(|_| original.clone()).collect();
        let taken: Vec<usize> = clones.iter().map(|clone| clone.mine).collect();
        for (i, pair) in taken.windows(2).enumerate() {
            assert_eq!(
                pair[1],
                (pair[0] + 1) % 4,
                "clone {i} and the next: {taken:?}"
            );
        }
        for clone in &clones {
            let expected = &original.all[clone.mine];
            assert!(Arc::ptr_eq(clone.current(), expected));
        }
    }

    #[test]
    fn threads_deal_from_different_starting_points() {
        let here = deal();
        assert_eq!(deal(), here.wrapping_add(1), "a thread deals in turn");
        let starts: Vec<usize> = std::thread::scope(|scope| {
            let spawned: Vec<_> = (0..4).map(|_| scope.spawn(deal)).collect();
            spawned.into_iter().map(|t| t.join().unwrap()).collect()
        });
        let mut distinct = starts.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), 4, "threads start alike: {starts:?}");
    }

    #[test]
    fn a_single_lane_serves_every_clone() {
        let original = lanes(1);
        let clone = std::thread::scope(|scope| scope.spawn(|| original.clone()).join().unwrap());
        assert!(Arc::ptr_eq(original.current(), clone.current()));
    }
}
