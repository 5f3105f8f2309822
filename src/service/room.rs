//! [`Room`]: bytes on the heap for a packed copy of a request's URI or
//! headers, recycled through a list of spares kept by each thread.
//!
//! A retry copy packed in place inside the response future was moved with
//! it: written byte by byte as it was packed, then read back in wide loads
//! by each move, which wait for those narrow writes to land (`perf` put 44 %
//! of the layer's `memmove` samples just after its first load). Packed on
//! the heap, the copy stays where it was written and the future holds a
//! pointer. Recycled, the buffers cost no allocation once a thread has sent
//! a request, while its requests' futures are dropped on the thread that
//! sent them and no more rooms are in flight than it keeps spare: the room
//! taken is the one dropped last, so still in the thread's cache.
//!
//! Where that does not hold, a thread allocates: a burst of more requests
//! at once than its spares cover, and every request sent on one thread and
//! finished on another that sends fewer (a `Buffer` above the layer, whose
//! worker sends what its callers finish), two allocations each. The copy
//! inside the future took none; a plain copy of the head (the benches'
//! floor for a layer that can retry) takes four.

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};

/// The bytes in one room: an API request's URI takes about 30
/// (`api.example.com` and `/v1/items?page=2`), a signed or queried one a
/// few hundred; `content-type`, `accept` and `user-agent` with typical
/// values take about 90, a W3C `traceparent` 73 more. A room's size costs
/// nothing per request (it is never cleared), only memory: two rooms per
/// request in flight, and the spares.
pub(crate) const ROOM: usize = 256;
// Packed lengths are `u16`s.
const _: () = assert!(ROOM <= u16::MAX as usize);

/// Spares a thread keeps (8 KiB): two rooms for each of 16 requests in
/// flight. A thread that drops more rooms than it takes frees the rest.
const KEPT: usize = 32;

thread_local! {
    // Boxes, not arrays: each is handed out as it is, to live on in a
    // response future.
    #[allow(clippy::vec_box)]
    static SPARES: RefCell<Vec<Box<[u8; ROOM]>>> = const { RefCell::new(Vec::new()) };
}

/// [`ROOM`] bytes, taken from the thread's spares (or allocated) and given
/// back to the spares of the thread that drops them. Their content is
/// whatever was packed last: a reader knows its own length.
pub(crate) struct Room(Option<Box<[u8; ROOM]>>);

impl Room {
    #[inline]
    pub(crate) fn take() -> Self {
        // `try_with`: a request sent from a thread-local's destructor, after
        // the spares were dropped, gets a room of its own.
        let spare = SPARES.try_with(|spares| spares.borrow_mut().pop());
        Self(Some(
            spare.ok().flatten().unwrap_or_else(|| Box::new([0; ROOM])),
        ))
    }
}

impl Deref for Room {
    type Target = [u8; ROOM];

    #[inline]
    fn deref(&self) -> &Self::Target {
        self.0.as_deref().expect("held until dropped")
    }
}

impl DerefMut for Room {
    #[inline]
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.0.as_deref_mut().expect("held until dropped")
    }
}

impl Drop for Room {
    #[inline]
    fn drop(&mut self) {
        let Some(room) = self.0.take() else { return };
        // Past its destructor, the thread frees the room.
        let _ = SPARES.try_with(|spares| {
            let mut spares = spares.borrow_mut();
            if spares.len() < KEPT {
                spares.push(room);
            } else {
                // Full: this room replaces the last one kept (freed), so
                // the next taken is still the one dropped last.
                spares[KEPT - 1] = room;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(room: &Room) -> *const u8 {
        room.as_ptr()
    }

    fn spares() -> usize {
        SPARES.with(|spares| spares.borrow().len())
    }

    #[test]
    fn a_dropped_room_is_the_next_one_taken() {
        let mut first = Room::take();
        first[..5].copy_from_slice(b"bytes");
        let at = address(&first);
        drop(first);

        let again = Room::take();
        assert_eq!(address(&again), at, "taken from the spares, not allocated");
        // Not cleared: its next user writes before it reads.
        assert_eq!(&again[..5], b"bytes");
    }

    #[test]
    fn a_thread_keeps_only_so_many_spares_the_last_dropped_on_top() {
        let rooms: Vec<Room> = (0..KEPT + 8).map(|_| Room::take()).collect();
        let last = address(rooms.last().unwrap());
        assert_eq!(spares(), 0);
        drop(rooms);
        assert_eq!(spares(), KEPT, "the rest freed");
        assert_eq!(address(&Room::take()), last, "the one dropped last");
    }

    #[test]
    fn a_room_goes_to_the_spares_of_the_thread_that_drops_it() {
        let room = Room::take();
        let at = address(&room) as usize;
        let (kept_there, there) = std::thread::spawn(move || {
            drop(room);
            (spares(), address(&Room::take()) as usize)
        })
        .join()
        .unwrap();
        assert_eq!((kept_there, there), (1, at));
        assert_eq!(spares(), 0, "nothing came back here");
    }
}
