//! Allocations per request through the layer, against the baselines of the
//! hot-path benchmark (the same variants, from `benches/support`).
//!
//! A counting global allocator sees every allocation; this file is its own
//! test binary, so the allocator affects nothing else. Counts are kept per
//! thread, so the runtime's worker thread (the layer's watcher task) is not
//! mixed in: what is counted is what the caller's request costs.
//!
//! Print the table with `cargo test --test allocations -- --nocapture`.

#[allow(dead_code)] // The benches' runners are not used here.
#[path = "../benches/support/hot_path_variants.rs"]
mod hot_path_variants;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Wake, Waker};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use tower::Service;

use hot_path_variants::{drive, request_with, runtime, settle, with_variant, UseService};

/// Counts allocations (and their bytes) made by the current thread.
struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
    static BYTES: Cell<u64> = const { Cell::new(0) };
}

// `#![forbid(unsafe_code)]` binds the library; a global allocator cannot be
// written without `unsafe impl`, and this one only forwards to `System`.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

fn count(size: usize) {
    // `try_with`: a thread being torn down has no counters left.
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
    let _ = BYTES.try_with(|n| n.set(n.get() + size as u64));
}

fn counters() -> (u64, u64) {
    (ALLOCATIONS.with(Cell::get), BYTES.with(Cell::get))
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const REQUESTS: u64 = 200;

/// Allocations and bytes per request, averaged over `REQUESTS`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct PerRequest {
    allocations: f64,
    bytes: f64,
}

/// How the requests of a measurement are sent.
#[derive(Clone, Copy)]
enum Sending {
    /// `REQUESTS` requests with the body given, one at a time: what
    /// happens between `poll_ready` and dropping the response is counted;
    /// building the request is not.
    OneAtATime,
    /// Rounds of [`BURST`] requests with an empty body, all in flight
    /// before any is answered: counted beyond the box each future is kept
    /// in here (one allocation of the future's size).
    InBursts,
}

/// Requests in flight at once in the burst measurement: more than the 16
/// whose retry copies a thread's spare buffers cover.
const BURST: usize = 64;

/// Measures one variant's allocations per request.
struct Measure<'a> {
    body: Bytes,
    sending: Sending,
    settle: &'a dyn Fn(),
    result: &'a Cell<Option<PerRequest>>,
}

impl UseService<Full<Bytes>> for Measure<'_> {
    fn with<S>(self, mut service: S)
    where
        S: Service<Request<Full<Bytes>>> + Clone + Send,
        S::Error: std::fmt::Debug,
    {
        let waker = Waker::from(Arc::new(NoopWaker));
        let mut cx = Context::from_waker(&waker);
        let (rounds, per_round) = match self.sending {
            Sending::OneAtATime => (REQUESTS, 1),
            Sending::InBursts => (4, BURST),
        };
        let mut round = |service: &mut S| match self.sending {
            Sending::OneAtATime => {
                let request = request_with(Full::new(self.body.clone()));
                let before = counters();
                drive(service, request, &mut cx);
                let after = counters();
                (after.0 - before.0, after.1 - before.1)
            }
            Sending::InBursts => burst(service, &mut cx),
        };
        // Lazily built state (the thread's copy of the header, the watcher
        // task, a thread's spare buffers) is set up by the first round, not
        // counted.
        round(&mut service);
        (self.settle)();
        let (mut allocations, mut bytes) = (0, 0);
        for _ in 0..rounds {
            let (a, b) = round(&mut service);
            allocations += a;
            bytes += b;
        }
        let requests = (rounds * per_round as u64) as f64;
        self.result.set(Some(PerRequest {
            allocations: allocations as f64 / requests,
            bytes: bytes as f64 / requests,
        }));
    }
}

/// One round of [`Sending::InBursts`]: its allocations and bytes.
fn burst<S>(service: &mut S, cx: &mut Context<'_>) -> (u64, u64)
where
    S: Service<Request<Full<Bytes>>>,
{
    let requests: Vec<_> = (0..BURST)
        .map(|_| request_with(Full::new(Bytes::new())))
        .collect();
    let mut futures = Vec::with_capacity(BURST);
    let before = counters();
    for request in requests {
        assert!(service.poll_ready(cx).is_ready());
        futures.push(Box::pin(service.call(request)));
    }
    for future in &mut futures {
        assert!(future.as_mut().poll(cx).is_ready(), "answered at once");
    }
    drop(futures);
    let after = counters();
    let boxes = (BURST, BURST * std::mem::size_of::<S::Future>());
    (
        after.0 - before.0 - boxes.0 as u64,
        after.1 - before.1 - boxes.1 as u64,
    )
}

struct NoopWaker;

impl Wake for NoopWaker {
    fn wake(self: Arc<Self>) {}
}

const VARIANTS: [&str; 7] = [
    "bare",
    "static_header",
    "static_header_with_head_copy",
    "rwlock",
    "mutex",
    "token_refresh",
    "token_refresh_no_retry",
];

/// Each variant's allocations per request, its requests sent as `sending`
/// says.
fn measure_all(body: &Bytes, sending: Sending) -> Vec<(&'static str, PerRequest)> {
    let runtime = runtime();
    let _entered = runtime.enter();
    let settle = || settle(&runtime);
    VARIANTS
        .iter()
        .map(|&name| {
            let result = Cell::new(None);
            let measure = Measure {
                body: body.clone(),
                sending,
                settle: &settle,
                result: &result,
            };
            with_variant(name, measure);
            (name, result.get().expect("measured"))
        })
        .collect()
}

fn print(title: &str, rows: &[(&str, PerRequest)]) {
    println!("{title}");
    println!("{:<32} {:>12} {:>10}", "variant", "allocations", "bytes");
    for (name, per) in rows {
        println!("{name:<32} {:>12.2} {:>10.1}", per.allocations, per.bytes);
    }
}

fn find(rows: &[(&str, PerRequest)], name: &str) -> PerRequest {
    rows.iter().find(|(n, _)| *n == name).expect("variant").1
}

// One test, so that nothing else runs on other threads while counting (the
// counters are per thread anyway) and the table prints in one piece.
#[test]
fn a_fresh_token_request_allocates_no_more_than_the_baselines() {
    let empty = measure_all(&Bytes::new(), Sending::OneAtATime);
    print("empty body, allocations and bytes per request:", &empty);
    let kib = measure_all(&Bytes::from(vec![b'x'; 1024]), Sending::OneAtATime);
    print("1 KiB body (read by the inner service):", &kib);
    let burst = measure_all(&Bytes::new(), Sending::InBursts);
    print(
        &format!("{BURST} requests in flight at once, empty body:"),
        &burst,
    );

    let ours = find(&empty, "token_refresh");
    let floor = find(&empty, "static_header_with_head_copy");
    assert!(
        ours.allocations <= floor.allocations && ours.bytes <= floor.bytes,
        "retry on: {ours:?} allocates more than the head-copy floor {floor:?}"
    );
    // Its headers are packed into a buffer inside the response future, so
    // with retry on it allocates no more than a static header either.
    let limit = find(&empty, "static_header");
    assert!(
        ours.allocations <= limit.allocations && ours.bytes <= limit.bytes,
        "retry on: {ours:?} allocates more than AddAuthorization {limit:?}"
    );
    let ours = find(&empty, "token_refresh_no_retry");
    assert!(
        ours.allocations <= limit.allocations && ours.bytes <= limit.bytes,
        "retry off: {ours:?} allocates more than AddAuthorization {limit:?}"
    );
    // Retry off never records a body, whatever its size.
    let ours = find(&kib, "token_refresh_no_retry");
    let limit = find(&kib, "static_header");
    assert!(
        ours.allocations <= limit.allocations && ours.bytes <= limit.bytes,
        "retry off, 1 KiB: {ours:?} allocates more than AddAuthorization {limit:?}"
    );
    // Past the spare buffers a thread keeps for the retry copies (as
    // futures finished on another thread leave it), two allocations a
    // request: still under the head-copy floor.
    let ours = find(&burst, "token_refresh");
    let floor = find(&burst, "static_header_with_head_copy");
    assert!(
        ours.allocations <= 2.0 && ours.allocations < floor.allocations,
        "retry on, {BURST} in flight: {ours:?}, against the floor's {floor:?}"
    );
    // Retry on keeps the body for a replay: its shared state and its
    // recording up front. A body of one frame is recorded inline, its
    // chunk referring to the body's bytes rather than copying them.
    let ours = find(&kib, "token_refresh");
    assert!(
        ours.allocations <= 2.0 && ours.bytes < 1024.0,
        "retry on, 1 KiB: {ours:?}, more than the replay's two allocations, or a copy of the body"
    );
}
