//! `size_hint` and `is_end_stream` at each step.

use super::*;

#[tokio::test]
async fn size_hint_and_is_end_stream_track_the_original() {
    let mut original = replay(vec![data("abc"), data("defg"), data("hi")]);
    assert_eq!(hint(&original), (9, Some(9)));
    assert!(!original.is_end_stream());

    assert_eq!(next_data(&mut original).await, "abc");
    assert_eq!(hint(&original), (6, Some(6)));
    assert!(!original.is_end_stream());

    assert_eq!(next_data(&mut original).await, "defg");
    assert_eq!(hint(&original), (2, Some(2)));
    assert!(!original.is_end_stream());

    assert_eq!(next_data(&mut original).await, "hi");
    assert_eq!(hint(&original), (0, Some(0)));
    assert!(original.is_end_stream(), "the source body says it is over");

    assert!(original.frame().await.is_none());
    assert_eq!(hint(&original), (0, Some(0)));
    assert!(original.is_end_stream());
}

#[tokio::test]
async fn size_hint_and_is_end_stream_track_a_replaying_clone() {
    let mut original = replay(vec![data("abc"), data("defg"), data("hi")]);
    read_all(&mut original).await.unwrap();
    let mut retry = original.try_clone().expect("replayable");
    assert_eq!(hint(&retry), (9, Some(9)));
    assert!(!retry.is_end_stream(), "9 bytes to replay");
    drop(original);
    assert_eq!(hint(&retry), (9, Some(9)));
    assert!(!retry.is_end_stream());

    assert_eq!(next_data(&mut retry).await, "abc");
    assert_eq!(hint(&retry), (6, Some(6)));
    assert!(!retry.is_end_stream());

    assert_eq!(next_data(&mut retry).await, "defg");
    assert_eq!(hint(&retry), (2, Some(2)));
    assert!(!retry.is_end_stream());

    assert_eq!(next_data(&mut retry).await, "hi");
    assert_eq!(hint(&retry), (0, Some(0)));
    assert!(retry.is_end_stream());
    assert!(retry.frame().await.is_none());
}

#[tokio::test]
async fn is_end_stream_of_a_replaying_clone_waits_for_the_trailers() {
    let mut original = replay(vec![data("abc"), Item::Trailers(trailers("x-t", "1"))]);
    assert_eq!(hint(&original), (3, Some(3)));
    read_all(&mut original).await.unwrap();
    assert_eq!(hint(&original), (0, Some(0)));
    assert!(original.is_end_stream());

    let mut retry = original.try_clone().expect("replayable");
    drop(original);
    assert_eq!(next_data(&mut retry).await, "abc");
    assert_eq!(hint(&retry), (0, Some(0)), "no data left");
    assert!(!retry.is_end_stream(), "the trailers are left");
    let frame = retry.frame().await.unwrap().unwrap();
    assert_eq!(frame.into_trailers().unwrap(), trailers("x-t", "1"));
    assert!(retry.is_end_stream());
}

#[tokio::test]
async fn size_hint_of_a_clone_continuing_a_partial_read_is_exact() {
    let mut original = replay(vec![data("abc"), data("def"), data("gh")]);
    assert_eq!(next_data(&mut original).await, "abc");
    assert_eq!(next_data(&mut original).await, "def");
    assert_eq!(hint(&original), (2, Some(2)));
    let mut retry = original.try_clone().expect("replayable");
    drop(original);

    assert_eq!(hint(&retry), (8, Some(8)), "initial hint until it reads");
    assert_eq!(next_data(&mut retry).await, "abc");
    // 3 recorded bytes to replay + 2 left in the source.
    assert_eq!(hint(&retry), (5, Some(5)));
    assert!(!retry.is_end_stream());
    assert_eq!(next_data(&mut retry).await, "def");
    assert_eq!(hint(&retry), (2, Some(2)));
    assert!(!retry.is_end_stream());
    assert_eq!(next_data(&mut retry).await, "gh");
    assert_eq!(hint(&retry), (0, Some(0)));
    assert!(retry.is_end_stream());
}

#[tokio::test]
async fn size_hint_stays_inexact_when_the_source_hint_is_inexact() {
    let (tx, body) = TestBody::channel();
    let mut original = ReplayBody::try_new(body, CAP).unwrap();
    assert_eq!(hint(&original), (0, None));
    tx.data("abc");
    tx.data("de");
    assert_eq!(next_data(&mut original).await, "abc");
    assert_eq!(next_data(&mut original).await, "de");
    assert_eq!(hint(&original), (0, None));
    assert!(!original.is_end_stream());

    let mut retry = original.try_clone().expect("replayable");
    drop(original);
    assert_eq!(next_data(&mut retry).await, "abc");
    assert_eq!(hint(&retry), (2, None), "at least the recorded bytes");
    assert!(!retry.is_end_stream());
}

#[tokio::test]
async fn size_hint_does_not_overflow_with_an_unbounded_source_upper_bound() {
    let mut unbounded = SizeHint::new();
    unbounded.set_upper(u64::MAX);
    let body = TestBody::new(vec![data("abc"), data("def")]).with_fixed_hint(unbounded);
    let mut original = ReplayBody::try_new(body, CAP).unwrap();
    assert_eq!(next_data(&mut original).await, "abc");
    assert_eq!(next_data(&mut original).await, "def");
    let mut retry = original.try_clone().expect("replayable");
    drop(original);

    assert_eq!(next_data(&mut retry).await, "abc");
    // 3 bytes to replay on top of a source that may send u64::MAX more.
    let (lower, upper) = hint(&retry);
    assert_eq!(lower, 3);
    assert!(upper.is_none_or(|upper| upper >= 3), "{upper:?}");
}
