//! A clone waits while the original holds the body, and is woken.

use super::*;

#[test]
fn clone_polled_while_the_original_holds_the_body_waits_and_is_woken_on_drop() {
    let (tx, body) = TestBody::channel();
    let mut original = ReplayBody::try_new(body, CAP).unwrap();
    let mut retry = original.try_clone().expect("replayable");
    let (original_wakes, original_waker) = counting_waker();
    let (retry_wakes, retry_waker) = counting_waker();

    assert!(poll_with(&mut retry, &retry_waker).is_pending());
    tx.data("abc");
    match poll_with(&mut original, &original_waker) {
        Poll::Ready(Some(Ok(frame))) => assert_eq!(to_ev(frame), Ev::data("abc")),
        other => panic!("expected data, got {other:?}"),
    }
    // Still held: the retry keeps waiting, and nothing woke it.
    assert!(poll_with(&mut retry, &retry_waker).is_pending());
    assert_eq!(retry_wakes.count(), 0);

    drop(original);
    assert_eq!(
        retry_wakes.count(),
        1,
        "dropping the original wakes the clone"
    );
    assert_eq!(original_wakes.count(), 0);

    match poll_with(&mut retry, &retry_waker) {
        Poll::Ready(Some(Ok(frame))) => assert_eq!(to_ev(frame), Ev::data("abc")),
        other => panic!("expected the replayed data, got {other:?}"),
    }
    // Now the retry reads the original body itself, and is woken by it.
    assert!(poll_with(&mut retry, &retry_waker).is_pending());
    tx.data("def");
    assert_eq!(retry_wakes.count(), 2, "the source body wakes the clone");
    match poll_with(&mut retry, &retry_waker) {
        Poll::Ready(Some(Ok(frame))) => assert_eq!(to_ev(frame), Ev::data("def")),
        other => panic!("expected data, got {other:?}"),
    }
    drop(tx);
    assert!(matches!(
        poll_with(&mut retry, &retry_waker),
        Poll::Ready(None)
    ));
}

#[test]
fn clone_is_woken_when_an_unread_original_is_dropped() {
    let original = replay(vec![data("abc")]);
    let mut retry = original.try_clone().expect("replayable");
    let (wakes, waker) = counting_waker();

    assert!(poll_with(&mut retry, &waker).is_pending());
    drop(original);
    assert_eq!(wakes.count(), 1);
    match poll_with(&mut retry, &waker) {
        Poll::Ready(Some(Ok(frame))) => assert_eq!(to_ev(frame), Ev::data("abc")),
        other => panic!("expected data, got {other:?}"),
    }
}

#[test]
fn every_waiting_clone_is_eventually_woken() {
    let original = replay(vec![data("abc")]);
    let mut first = original.try_clone().expect("replayable");
    let mut second = original.try_clone().expect("replayable");
    let (first_wakes, first_waker) = counting_waker();
    let (second_wakes, second_waker) = counting_waker();

    assert!(poll_with(&mut first, &first_waker).is_pending());
    assert!(poll_with(&mut second, &second_waker).is_pending());
    drop(original);
    assert!(second_wakes.count() >= 1);

    // The second clone takes the body, reads it all, and lets it go.
    match poll_with(&mut second, &second_waker) {
        Poll::Ready(Some(Ok(frame))) => assert_eq!(to_ev(frame), Ev::data("abc")),
        other => panic!("expected data, got {other:?}"),
    }
    assert!(matches!(
        poll_with(&mut second, &second_waker),
        Poll::Ready(None)
    ));
    drop(second);

    // The first clone has not been polled since it was told to wait: it
    // must have been woken, or its task would hang forever.
    assert!(
        first_wakes.count() >= 1,
        "a waiting clone was never woken (lost wakeup)"
    );
    match poll_with(&mut first, &first_waker) {
        Poll::Ready(Some(Ok(frame))) => assert_eq!(to_ev(frame), Ev::data("abc")),
        other => panic!("expected data, got {other:?}"),
    }
}

#[test]
fn pending_source_body_is_pending_for_the_reader_and_wakes_it() {
    let (tx, body) = TestBody::channel();
    let mut original = ReplayBody::try_new(body, CAP).unwrap();
    let (wakes, waker) = counting_waker();

    assert!(poll_with(&mut original, &waker).is_pending());
    assert_eq!(wakes.count(), 0);
    tx.data("abc");
    assert_eq!(wakes.count(), 1);
    match poll_with(&mut original, &waker) {
        Poll::Ready(Some(Ok(frame))) => assert_eq!(to_ev(frame), Ev::data("abc")),
        other => panic!("expected data, got {other:?}"),
    }
}

/// A waker that, when woken, asks a clone of the body whether it can be
/// replayed: as an executor that polls a woken task at once would.
struct AsksAgain(std::sync::Mutex<ReplayBody<TestBody>>);

impl std::task::Wake for AsksAgain {
    fn wake(self: std::sync::Arc<Self>) {
        let (_count, plain) = counting_waker();
        let probe = self.0.lock().unwrap();
        let _ = probe.poll_replayable(&mut Context::from_waker(&plain));
    }
}

/// Found in review: waiting clones were woken under the body's slot lock,
/// so a waker that ran into the same body again deadlocked. It happened
/// both where the reader lets go of the body and where it passes the cap.
#[test]
fn clones_are_woken_outside_the_bodys_lock() {
    for cap in [CAP, 2] {
        let (tx, body) = TestBody::channel();
        let mut original = ReplayBody::try_new(body, cap).unwrap();
        let mut retry = original.try_clone().expect("replayable");
        let probe = original.try_clone().expect("replayable");
        let asks_again = Waker::from(std::sync::Arc::new(AsksAgain(probe.into())));
        assert!(poll_with(&mut retry, &asks_again).is_pending());
        let read_on = crate::test_support::finishes(move || {
            // Past a cap of 2 here: the reader wakes the waiting clones.
            tx.data("abc");
            let (_count, plain) = counting_waker();
            let _ = poll_with(&mut original, &plain);
            drop(original);
        });
        assert!(read_on, "deadlocked waking a clone (cap {cap})");
    }
}
