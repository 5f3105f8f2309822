//! `poll_replayable`: may a retry use this body?

use super::*;

fn replayable_now<B>(body: &ReplayBody<B>, waker: &Waker) -> Poll<bool> {
    body.poll_replayable(&mut Context::from_waker(waker))
}

#[test]
fn replayability_is_pending_while_the_original_reads_within_the_cap_and_true_once_released() {
    let (tx, body) = TestBody::channel();
    let mut original = ReplayBody::try_new(body, CAP).unwrap();
    let retry = original.try_clone().unwrap();
    let (wakes, waker) = counting_waker();

    assert_eq!(replayable_now(&retry, &waker), Poll::Pending);
    tx.data("abc");
    assert!(poll_with(&mut original, &waker).is_ready());
    assert_eq!(replayable_now(&retry, &waker), Poll::Pending);

    drop(original);
    assert!(
        wakes.count() >= 1,
        "releasing the body wakes the waiting retry"
    );
    assert_eq!(replayable_now(&retry, &waker), Poll::Ready(true));
}

#[test]
fn replayability_turns_false_as_soon_as_the_original_outgrows_the_cap() {
    let (tx, body) = TestBody::channel();
    let mut original = ReplayBody::try_new(body, 4).unwrap();
    let retry = original.try_clone().unwrap();
    let (retry_wakes, retry_waker) = counting_waker();
    let (_, original_waker) = counting_waker();

    tx.data("abcd");
    assert!(poll_with(&mut original, &original_waker).is_ready());
    assert_eq!(replayable_now(&retry, &retry_waker), Poll::Pending);

    tx.data("e");
    assert!(poll_with(&mut original, &original_waker).is_ready());
    assert_eq!(
        retry_wakes.count(),
        1,
        "capping wakes the waiting retry at once"
    );
    assert_eq!(replayable_now(&retry, &retry_waker), Poll::Ready(false));
}

#[test]
fn empty_bodies_are_always_replayable_and_passthrough_never() {
    let (_, waker) = counting_waker();
    let empty = ReplayBody::try_new(TestBody::new(vec![]), CAP).unwrap();
    assert_eq!(replayable_now(&empty, &waker), Poll::Ready(true));
    let (_tx, body) = TestBody::channel();
    assert_eq!(
        replayable_now(&ReplayBody::passthrough(body), &waker),
        Poll::Ready(false)
    );
}
