//! [`Lanes`]: a few copies of [`Shared`], so that threads sending through
//! one layer do not write one reference count.
//!
//! Every response future holds an `Arc<Shared>`, so every request bumps
//! and drops a reference count. With one count for all threads, its cache
//! line moved between cores twice per request: two threads hammering one
//! layer scaled worse than with the `RwLock` bearer layer of the hot-path
//! bench (paired two-thread time 1.67 × the lock's). Now a request uses
//! one of a few copies (lanes), separate allocations with counts of their
//! own, picked by the thread sending it: requests sent on different
//! threads mostly write different counts.
//!
//! The lane is the calling thread's, not one dealt to each clone of the
//! service when it is made: clones made one per request
//! (`client.clone().oneshot(request)`, as tower and tonic users write)
//! were dealt every lane in turn, so each thread wrote every lane's count;
//! with two threads, such a request took 1.3 to 1.9 × as long as one
//! through a long-lived clone, and 1.07 × after the change (process times,
//! `hot_path_count token_refresh 2000000 2 clone` against the same without
//! `clone`).

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use super::shared::Shared;
use super::Core;

/// Lanes per layered service, at most: enough that a handful of threads
/// rarely share one, few enough that the copies stay small. A power of two.
const MAX_LANES: usize = 8;

/// The copies of one layered service's [`Shared`], shared by every clone
/// of the service.
pub(crate) struct Lanes<S, C> {
    all: Arc<LaneList<S, C>>,
}

/// The lanes, by thread number modulo [`MAX_LANES`]: with fewer lanes than
/// that, each lane fills every slot congruent to its index, so that a
/// thread's slot is its number's low bits, with no bounds check nor
/// division. Aligned so that the list's reference count, which every clone
/// of the service writes, is on cache lines of its own, apart from the
/// lanes' addresses that every request reads (x86 fetches lines in pairs:
/// 128 bytes).
#[repr(align(128))]
struct LaneList<S, C> {
    slots: [Arc<Shared<S, C>>; MAX_LANES],
}

impl<S, C> Lanes<S, C> {
    /// One lane per available core (rounded up to a power of two), at most
    /// [`MAX_LANES`].
    pub(crate) fn new(core: Arc<Core<C>>) -> Self {
        Self::with_count(core, lane_count())
    }

    fn with_count(core: Arc<Core<C>>, count: usize) -> Self {
        debug_assert!(count.is_power_of_two() && count <= MAX_LANES);
        let lanes: Vec<_> = (0..count)
            .map(|_| Arc::new(Shared::new(Arc::clone(&core))))
            .collect();
        let slots = std::array::from_fn(|slot| Arc::clone(&lanes[slot % count]));
        Self {
            all: Arc::new(LaneList { slots }),
        }
    }

    /// The calling thread's lane.
    #[inline]
    pub(crate) fn current(&self) -> &Arc<Shared<S, C>> {
        &self.all.slots[thread_number() % MAX_LANES]
    }

    /// What every lane shares; for calls that are not per request.
    pub(crate) fn core(&self) -> &Core<C> {
        &self.all.slots[0].core
    }
}

impl<S, C> Clone for Lanes<S, C> {
    fn clone(&self) -> Self {
        Self {
            all: Arc::clone(&self.all),
        }
    }
}

/// Available cores rounded up to a power of two (so that the slots hold
/// each lane equally often), at most [`MAX_LANES`]; asked once per process
/// (it may read cgroup files).
fn lane_count() -> usize {
    static COUNT: OnceLock<usize> = OnceLock::new();
    *COUNT.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        cores.next_power_of_two().min(MAX_LANES)
    })
}

/// This thread's number, given out in the order threads send their first
/// request through any layer: a runtime's workers often get consecutive
/// numbers, and so different lanes, but a thread of another runtime or of
/// a blocking pool can take a number in between, and two workers then share
/// a lane for their life (as two clones could be dealt one before). A
/// constant-initialized thread local without a destructor is one load.
#[inline]
fn thread_number() -> usize {
    const UNSET: usize = usize::MAX;
    thread_local! {
        static NUMBER: Cell<usize> = const { Cell::new(UNSET) };
    }
    NUMBER.with(|number| match number.get() {
        UNSET => {
            let given = next_thread_number();
            number.set(given);
            given
        }
        given => given,
    })
}

#[cold]
fn next_thread_number() -> usize {
    static THREADS: AtomicUsize = AtomicUsize::new(0);
    // Wraps far past any count of threads; `UNSET` is never given.
    THREADS.fetch_add(1, Ordering::Relaxed) % (usize::MAX >> 1)
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

    /// The lane `lanes` gives on a new thread.
    fn lane_on_a_new_thread(lanes: &Lanes<(), crate::classify::Unauthorized>) -> usize {
        std::thread::scope(|scope| {
            scope
                .spawn(|| Arc::as_ptr(lanes.current()) as usize)
                .join()
                .unwrap()
        })
    }

    #[test]
    fn each_lane_is_an_allocation_of_its_own() {
        let lanes = lanes(4);
        let all = &lanes.all.slots;
        for (i, a) in all[..4].iter().enumerate() {
            for b in &all[i + 1..4] {
                assert!(!Arc::ptr_eq(a, b), "lanes share a reference count");
            }
        }
        for (slot, lane) in all.iter().enumerate() {
            assert!(Arc::ptr_eq(lane, &all[slot % 4]), "slot {slot}");
        }
    }

    #[test]
    fn a_thread_keeps_its_lane_and_new_threads_take_others() {
        let lanes = lanes(4);
        let here = Arc::as_ptr(lanes.current()) as usize;
        assert_eq!(Arc::as_ptr(lanes.current()) as usize, here, "kept");
        // Tests run in parallel and number threads too: of threads started
        // one after the other, some take different lanes.
        let taken: Vec<usize> = (0..8).map(|_| lane_on_a_new_thread(&lanes)).collect();
        let mut distinct = taken.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert!(distinct.len() > 1, "every thread on one lane: {taken:?}");
    }

    #[test]
    fn a_clone_sends_through_the_lane_of_the_thread_using_it() {
        let lanes = lanes(2);
        let here = Arc::as_ptr(lanes.current()) as usize;
        let here_slot = thread_number() % 2;
        // A clone made here and used on another thread, as a service cloned
        // for each worker is: threads are started until one's number falls
        // on the other lane (tests running in parallel take numbers too),
        // so that a clone keeping the lane of the thread that made it would
        // be seen.
        for _ in 0..64 {
            let clone = lanes.clone();
            let (other_lane, used) = std::thread::scope(|scope| {
                scope
                    .spawn(move || {
                        let other_lane = thread_number() % 2 != here_slot;
                        (other_lane, Arc::as_ptr(clone.current()) as usize)
                    })
                    .join()
                    .unwrap()
            });
            if other_lane {
                assert_ne!(
                    used, here,
                    "sent through the lane of the thread that cloned"
                );
                return;
            }
        }
        panic!("64 threads in a row fell on this thread's lane");
    }

    #[test]
    fn a_single_lane_serves_every_thread() {
        let original = lanes(1);
        let there = lane_on_a_new_thread(&original);
        assert_eq!(there, Arc::as_ptr(original.current()) as usize);
    }

    #[test]
    fn the_lane_count_is_a_power_of_two_within_the_bound() {
        let count = lane_count();
        assert!(count.is_power_of_two() && count <= MAX_LANES, "{count}");
    }
}
