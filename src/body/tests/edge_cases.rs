//! Empty bodies, failing bodies, passthrough bodies.

use super::*;

#[tokio::test]
async fn empty_source_body_becomes_an_empty_replay_body() {
    let mut body = ReplayBody::try_new(TestBody::empty(), CAP).expect("empty");
    // Nothing was allocated for the recording.
    assert!(matches!(body.inner, Inner::Empty));
    assert!(body.is_end_stream());
    assert_eq!(hint(&body), (0, Some(0)));
    assert!(!body.is_capped());

    let mut retry = body.try_clone().expect("replayable");
    assert!(matches!(retry.inner, Inner::Empty));
    assert!(retry.is_end_stream());
    assert_eq!(hint(&retry), (0, Some(0)));

    // TestBody panics if polled after its end: it was not polled at all.
    assert!(body.frame().await.is_none());
    assert!(retry.frame().await.is_none());
    assert!(body.is_end_stream());
}

#[tokio::test]
async fn empty_body_with_a_zero_cap_is_replayable() {
    for body in [
        ReplayBody::try_new(Full::new(Bytes::new()), 0).expect("empty"),
        ReplayBody::<Full<Bytes>>::empty(),
    ] {
        assert!(matches!(body.inner, Inner::Empty));
        let retry = body.try_clone().expect("replayable");
        assert!(!retry.is_capped());
        assert_eq!(body.collect().await.unwrap().to_bytes(), "");
        assert_eq!(retry.collect().await.unwrap().to_bytes(), "");
    }
    let body = ReplayBody::try_new(Empty::<Bytes>::new(), 0).expect("empty");
    assert!(matches!(body.inner, Inner::Empty));
}

#[tokio::test]
async fn body_that_is_empty_but_does_not_say_so_is_replayed_empty() {
    // The source only finds out it is empty when polled.
    let (tx, body) = TestBody::channel();
    drop(tx);
    let mut original = ReplayBody::try_new(body, CAP).unwrap();
    assert!(!original.is_end_stream());
    assert!(original.frame().await.is_none());
    assert!(original.is_end_stream());
    assert_eq!(hint(&original), (0, Some(0)));

    let mut retry = original.try_clone().expect("replayable");
    drop(original);
    assert!(retry.frame().await.is_none());
    assert!(retry.is_end_stream());
}

// === errors ===

#[tokio::test]
async fn error_from_the_source_is_returned_and_a_later_clone_does_not_end_cleanly() {
    let mut original = replay(vec![data("abc"), Item::Error("boom")]);
    assert_eq!(next_data(&mut original).await, "abc");
    let error = next_error(&mut original).await;
    assert_eq!(error.downcast_ref::<TestError>(), Some(&TestError("boom")));
    assert!(!original.is_end_stream());

    let mut retry = original.try_clone().expect("replayable");
    drop(original);
    assert_eq!(next_data(&mut retry).await, "abc", "what was read replays");
    let error = next_error(&mut retry).await;
    assert!(error.downcast_ref::<OriginalFailed>().is_some(), "{error}");
    assert!(!is_capped_error(&error));
    assert!(!retry.is_end_stream());

    let third = retry.try_clone().expect("replayable");
    drop(retry);
    assert!(third.collect().await.is_err(), "never a clean end");
}

#[tokio::test]
async fn clone_made_before_an_error_yields_the_error_not_a_clean_end() {
    // The first attempt stops reading before the failure: the retry meets
    // the source's own error.
    let (tx, body) = TestBody::channel();
    let mut original = ReplayBody::try_new(body, CAP).unwrap();
    let mut retry = original.try_clone().expect("replayable");
    tx.data("abc");
    assert_eq!(next_data(&mut original).await, "abc");
    drop(original);
    tx.error("broken pipe");

    assert_eq!(next_data(&mut retry).await, "abc");
    let error = next_error(&mut retry).await;
    assert_eq!(
        error.downcast_ref::<TestError>(),
        Some(&TestError("broken pipe"))
    );
}

// === passthrough ===

#[tokio::test]
async fn passthrough_body_is_not_replayable_and_forwards_frames() {
    let body = TestBody::new(vec![
        data("abc"),
        data("de"),
        Item::Trailers(trailers("x-t", "1")),
    ]);
    let mut body = ReplayBody::passthrough(body);
    assert!(body.try_clone().is_none());
    assert!(body.is_capped());
    assert_eq!(hint(&body), (5, Some(5)));
    assert!(!body.is_end_stream());

    assert_eq!(next_data(&mut body).await, "abc");
    assert_eq!(hint(&body), (2, Some(2)));
    assert_eq!(
        read_all(&mut body).await.unwrap(),
        vec![Ev::data("de"), Ev::Trailers(trailers("x-t", "1"))]
    );
    assert!(body.is_end_stream());
    assert!(body.try_clone().is_none());

    let mut failing = ReplayBody::passthrough(TestBody::new(vec![Item::Error("nope")]));
    let error = next_error(&mut failing).await;
    assert_eq!(error.downcast_ref::<TestError>(), Some(&TestError("nope")));
}

#[test]
fn debug_output_names_the_kind() {
    let body = replay(vec![data("abc")]);
    assert!(format!("{body:?}").contains(r#"kind: "replay""#));
    let body = ReplayBody::passthrough(TestBody::new(vec![data("abc")]));
    assert!(format!("{body:?}").contains(r#"kind: "passthrough""#));
    let body = ReplayBody::<Empty<Bytes>>::empty();
    assert!(format!("{body:?}").contains(r#"kind: "empty""#));
}

/// The body travels inside every request and is copied each time the
/// request moves: a bodiless request wrapped for replay must stay within
/// 256 bytes, the size up to which glibc's AVX `memcpy` copies without a
/// loop (hot-path and throughput benches, counted by callgrind).
#[test]
fn a_wrapped_empty_body_keeps_a_bodiless_request_within_256_bytes() {
    use std::mem::size_of;
    assert_eq!(size_of::<ReplayBody<Empty<Bytes>>>(), 24);
    assert!(size_of::<http::Request<ReplayBody<Empty<Bytes>>>>() <= 256);
}
