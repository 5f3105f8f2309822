//! Tokens are wiped before their memory is freed.
//!
//! The library forbids `unsafe`; this test binary needs a little of it to
//! look at memory as it is freed: a global allocator that, for one watched
//! block, records whether the token's bytes were still there. It reads
//! only bytes the token itself initialised, and only before handing the
//! block back to the system allocator. A `Secret` without its wiping
//! `Drop` fails these tests.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Mutex;

use tower_token_refresh::{Secret, TokenSet};

#[global_allocator]
static ALLOCATOR: Watching = Watching;

/// The address of the block to inspect when it is freed (0: none).
static WATCHED: AtomicUsize = AtomicUsize::new(0);
/// How many of its leading bytes the token initialised.
static WATCHED_LEN: AtomicUsize = AtomicUsize::new(0);
/// What was found when it was freed.
static FOUND: AtomicU8 = AtomicU8::new(NOT_FREED);
const NOT_FREED: u8 = 0;
const WIPED: u8 = 1;
const STILL_THERE: u8 = 2;

/// The tests share the watch slot: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

struct Watching;

// SAFETY: every call is forwarded to `System` with the same arguments; the
// only addition reads a block that is still allocated (see `dealloc`).
unsafe impl GlobalAlloc for Watching {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        System.alloc(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let watched = WATCHED.load(Ordering::SeqCst);
        if watched != 0
            && ptr as usize == watched
            && WATCHED
                .compare_exchange(watched, 0, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        {
            let len = WATCHED_LEN.load(Ordering::SeqCst).min(layout.size());
            // SAFETY: `ptr` is a live block of `layout.size()` bytes (it is
            // freed only below), and its first `len` bytes were written by
            // the token the test put there (and maybe overwritten since).
            let bytes = std::slice::from_raw_parts(ptr, len);
            let found = if bytes.iter().all(|b| *b == 0) {
                WIPED
            } else {
                STILL_THERE
            };
            FOUND.store(found, Ordering::SeqCst);
        }
        System.dealloc(ptr, layout)
    }
}

/// Watches the block holding `text`'s bytes until it is freed.
fn watch(text: &str) {
    FOUND.store(NOT_FREED, Ordering::SeqCst);
    WATCHED_LEN.store(text.len(), Ordering::SeqCst);
    WATCHED.store(text.as_ptr() as usize, Ordering::SeqCst);
}

/// What the watched block held when it was freed.
fn found() -> &'static str {
    match FOUND.load(Ordering::SeqCst) {
        WIPED => "wiped",
        STILL_THERE => "still there",
        _ => "not freed",
    }
}

#[test]
fn a_dropped_secret_leaves_zeros_behind() {
    let _one = ONE_AT_A_TIME.lock().unwrap();
    let secret = Secret::new(String::from("at.0123456789abcdef.canary"));
    watch(secret.expose());
    drop(secret);
    assert_eq!(found(), "wiped");
}

#[test]
fn each_clone_is_wiped_on_its_own() {
    let _one = ONE_AT_A_TIME.lock().unwrap();
    let original = Secret::new("rt.0123456789abcdef.canary");
    let copy = original.clone();
    watch(copy.expose());
    drop(copy);
    assert_eq!(found(), "wiped");
    watch(original.expose());
    drop(original);
    assert_eq!(found(), "wiped");
}

#[test]
fn a_string_with_spare_capacity_is_wiped_when_the_secret_copies_it() {
    let _one = ONE_AT_A_TIME.lock().unwrap();
    let mut value = String::with_capacity(64);
    value.push_str("at.spare-capacity.canary");
    watch(&value);
    let secret = Secret::new(value);
    assert_eq!(found(), "wiped", "the buffer given to Secret::new");
    watch(secret.expose());
    drop(secret);
    assert_eq!(found(), "wiped");
}

#[test]
fn a_dropped_token_set_wipes_both_tokens() {
    let _one = ONE_AT_A_TIME.lock().unwrap();
    for which in ["access", "refresh"] {
        let tokens = TokenSet::new(String::from("at.token-set.canary"))
            .with_refresh_token(String::from("rt.token-set.canary"));
        match which {
            "access" => watch(tokens.access_token().expose()),
            _ => watch(tokens.refresh_token().unwrap().expose()),
        }
        drop(tokens);
        assert_eq!(found(), "wiped", "{which} token");
    }
}
