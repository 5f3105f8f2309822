//! The recording cap: streaming goes on, replaying stops.

use super::*;

#[tokio::test]
async fn body_over_the_cap_keeps_streaming_and_a_clone_yields_capped() {
    let body =
        TestBody::new(vec![data("12345"), data("67890"), data("abc")]).with_hint(SizeHint::new());
    let mut original = ReplayBody::try_new(body, 8).expect("unknown length");
    assert!(!original.is_capped());

    assert_eq!(next_data(&mut original).await, "12345");
    assert!(!original.is_capped());
    assert_eq!(next_data(&mut original).await, "67890");
    assert!(original.is_capped(), "10 bytes read with a cap of 8");
    assert_eq!(next_data(&mut original).await, "abc");
    assert!(original.frame().await.is_none());

    let retry = original.try_clone().expect("still a replay body");
    assert!(retry.is_capped(), "the cap is shared between clones");
    drop(original);
    let error = retry.collect().await.expect_err("not a truncated body");
    assert!(is_capped_error(&error), "{error}");
}

#[tokio::test]
async fn clone_made_before_the_cap_was_hit_yields_capped_not_a_truncated_body() {
    let (tx, body) = TestBody::channel();
    let mut original = ReplayBody::try_new(body, 4).unwrap();
    let mut retry = original.try_clone().expect("replayable");

    tx.data("abc");
    tx.data("def");
    tx.data("ghi");
    assert_eq!(next_data(&mut original).await, "abc");
    assert_eq!(next_data(&mut original).await, "def");
    assert!(original.is_capped());
    assert!(retry.is_capped());
    drop(original);
    drop(tx);

    let error = next_error(&mut retry).await;
    assert!(is_capped_error(&error), "{error}");
    // Never a clean (truncated) end either, for any later clone.
    let third = retry.try_clone().expect("still a replay body");
    drop(retry);
    let error = third.collect().await.expect_err("capped");
    assert!(is_capped_error(&error), "{error}");
}

#[tokio::test]
async fn replaying_clone_that_crosses_the_cap_keeps_streaming() {
    let (tx, body) = TestBody::channel();
    let mut original = ReplayBody::try_new(body, 8).unwrap();
    tx.data("12345");
    assert_eq!(next_data(&mut original).await, "12345");
    let mut retry = original.try_clone().expect("replayable");
    drop(original);

    tx.data("67890");
    tx.data("abc");
    drop(tx);
    assert_eq!(
        read_all(&mut retry).await.unwrap(),
        vec![Ev::data("12345"), Ev::data("67890"), Ev::data("abc")]
    );
    assert!(retry.is_capped());

    let third = retry.try_clone().expect("still a replay body");
    drop(retry);
    let error = third.collect().await.expect_err("capped");
    assert!(is_capped_error(&error), "{error}");
}

#[tokio::test]
async fn body_exactly_at_the_cap_is_replayable() {
    let body = TestBody::new(vec![data("12345"), data("67890")]);
    let mut original = ReplayBody::try_new(body, 10).expect("lower bound == cap");
    assert!(!original.is_capped());
    assert_eq!(
        read_all(&mut original).await.unwrap(),
        vec![Ev::data("12345"), Ev::data("67890")]
    );
    assert!(!original.is_capped(), "exactly at the cap is not over it");

    let retry = original.try_clone().expect("replayable");
    drop(original);
    assert_eq!(retry.collect().await.unwrap().to_bytes(), "1234567890");
}

#[tokio::test]
async fn one_byte_over_the_cap_is_capped() {
    let body =
        TestBody::new(vec![data("12345"), data("67890"), data("!")]).with_hint(SizeHint::new());
    let mut original = ReplayBody::try_new(body, 10).unwrap();
    assert_eq!(next_data(&mut original).await, "12345");
    assert_eq!(next_data(&mut original).await, "67890");
    assert!(!original.is_capped());
    assert_eq!(next_data(&mut original).await, "!");
    assert!(original.is_capped());
}

/// Found in review: empty data frames were kept without counting, so a
/// stream of them grew the recording without bound.
#[tokio::test]
async fn empty_frames_count_towards_the_cap() {
    let frames = (0..9).map(|_| data("")).collect();
    let body = TestBody::new(frames).with_hint(SizeHint::new());
    let mut original = ReplayBody::try_new(body, 8).unwrap();
    for _ in 0..8 {
        assert_eq!(next_data(&mut original).await, "");
    }
    assert!(!original.is_capped(), "8 frames with a cap of 8");
    assert_eq!(next_data(&mut original).await, "");
    assert!(original.is_capped(), "9 frames with a cap of 8");
}

#[tokio::test]
async fn size_hint_lower_bound_over_the_cap_is_rejected_with_the_body_back() {
    let body = TestBody::new(vec![data("12345"), data("67890"), data("!")]);
    let rejected = ReplayBody::try_new(body, 10).expect_err("11 bytes > 10");
    // The body is handed back untouched, to be sent as it is.
    assert_eq!(rejected.collect().await.unwrap().to_bytes(), "1234567890!");

    let mut at_least_11 = SizeHint::new();
    at_least_11.set_lower(11);
    let body = TestBody::new(vec![data("12345678901")]).with_hint(at_least_11);
    assert!(ReplayBody::try_new(body, 10).is_err(), "no upper bound");

    // Only the lower bound counts: it may still fit.
    let mut at_most_100 = SizeHint::new();
    at_most_100.set_upper(100);
    let body = TestBody::new(vec![data("12345")]).with_hint(at_most_100);
    let mut body = ReplayBody::try_new(body, 10).expect("lower bound is 0");
    assert_eq!(next_data(&mut body).await, "12345");
    assert!(!body.is_capped());
}
