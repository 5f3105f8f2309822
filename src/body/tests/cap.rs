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
/// stream of them grew the recording without bound. Frames beyond
/// `cap / 64` (at least 64) cap the recording, empty or not.
#[tokio::test]
async fn empty_frames_count_towards_the_cap() {
    let frames = (0..101).map(|_| data("")).collect();
    let body = TestBody::new(frames).with_hint(SizeHint::new());
    let mut original = ReplayBody::try_new(body, 6400).unwrap();
    for _ in 0..100 {
        assert_eq!(next_data(&mut original).await, "");
    }
    assert!(!original.is_capped(), "100 frames with a cap of 6400 bytes");
    assert_eq!(next_data(&mut original).await, "");
    assert!(original.is_capped(), "101 frames with a cap of 6400 bytes");
}

/// Found in review: with one frame allowed per byte of the cap, a body of
/// 65,536 one-byte frames was kept whole under the default cap: 64 KiB of
/// data in 32 bytes of log slot per frame and more (2 MiB at least).
#[tokio::test]
async fn a_body_in_tiny_frames_is_capped_by_its_frame_count_not_its_bytes() {
    let frames = (0..2000).map(|_| data("x")).collect();
    let body = TestBody::new(frames).with_hint(SizeHint::new());
    let mut original = ReplayBody::try_new(body, crate::body::DEFAULT_REPLAY_CAP).unwrap();
    let retry = original.try_clone().expect("replayable");
    for _ in 0..crate::body::DEFAULT_REPLAY_CAP / 64 {
        assert_eq!(next_data(&mut original).await, "x");
    }
    assert!(!retry.is_capped(), "1,024 frames with the default cap");
    assert_eq!(next_data(&mut original).await, "x");
    assert!(
        retry.is_capped(),
        "1,025 one-byte frames: far under the cap in bytes"
    );

    // The reader streams on; a retry would need what was dropped.
    let rest = original.collect().await.unwrap().to_bytes();
    assert_eq!(rest.len(), 2000 - crate::body::DEFAULT_REPLAY_CAP / 64 - 1);
    let error = retry.collect().await.expect_err("not a truncated body");
    assert!(is_capped_error(&error), "{error}");
}

/// A small cap still records a body in a few frames.
#[tokio::test]
async fn a_small_cap_still_allows_a_few_frames() {
    let frames = (0..64)
        .map(|_| data(""))
        .chain([data("12345678")])
        .collect();
    let body = TestBody::new(frames).with_hint(SizeHint::new());
    let original = ReplayBody::try_new(body, 8).unwrap();
    let retry = original.try_clone().expect("replayable");
    let mut original = original;
    for _ in 0..64 {
        assert_eq!(next_data(&mut original).await, "");
    }
    assert!(!retry.is_capped(), "64 frames whatever the cap");
    assert_eq!(next_data(&mut original).await, "12345678");
    assert!(retry.is_capped(), "the 65th frame");
}

/// Found in review: once the layer's retry clone was gone (the response
/// accepted), the transport could go on streaming the body for the whole
/// life of the stream, every frame recorded for a retry that could no
/// longer happen.
#[tokio::test]
async fn the_layers_recording_stops_once_no_clone_is_left() {
    let (tx, body) = TestBody::channel();
    let mut sent = ReplayBody::try_new_for_retry(body, CAP).unwrap();
    let retry = sent.try_clone().expect("replayable");
    tx.data("kept for the retry");
    assert_eq!(next_data(&mut sent).await, "kept for the retry");
    assert!(!sent.is_capped());

    drop(retry); // the response was accepted
    tx.data("read on for nobody");
    assert_eq!(next_data(&mut sent).await, "read on for nobody");
    assert!(sent.is_capped(), "recording stopped once no clone is left");
    drop(tx);
    assert!(sent.frame().await.is_none(), "the body still ends cleanly");

    // A body wrapped by anyone else may be cloned after it was read.
    let body = TestBody::new(vec![data("abc")]).with_hint(SizeHint::new());
    let mut alone = ReplayBody::try_new(body, CAP).unwrap();
    assert_eq!(next_data(&mut alone).await, "abc");
    let later = alone.try_clone().expect("replayable");
    drop(alone);
    assert_eq!(later.collect().await.unwrap().to_bytes(), "abc");
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
