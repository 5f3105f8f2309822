//! Replaying: what the original read, a clone yields again, in order.

use super::*;

#[tokio::test]
async fn original_and_clone_yield_the_same_chunks_in_order() {
    let mut original = replay(vec![data("hello"), data(" "), data("world")]);
    let expected = vec![Ev::data("hello"), Ev::data(" "), Ev::data("world")];

    let mut retry = original.try_clone().expect("replayable");
    assert_eq!(read_all(&mut original).await.unwrap(), expected);
    drop(original);
    assert_eq!(read_all(&mut retry).await.unwrap(), expected);

    // A clone of a clone, and a clone made once everything was read.
    let mut again = retry.try_clone().expect("replayable");
    drop(retry);
    assert_eq!(read_all(&mut again).await.unwrap(), expected);
    let last = again.try_clone().expect("replayable");
    drop(again);
    assert_eq!(last.collect().await.unwrap().to_bytes(), "hello world");
}

#[tokio::test]
async fn clone_made_before_a_partial_read_replays_it_then_reads_the_rest() {
    // The server answered 401 after reading only part of the body.
    let (tx, body) = TestBody::channel();
    let mut original = ReplayBody::try_new(body, CAP).unwrap();
    let mut retry = original.try_clone().expect("replayable");

    tx.data("abc");
    tx.data("def");
    assert_eq!(next_data(&mut original).await, "abc");
    drop(original); // "def" was never read by the first attempt

    tx.data("ghi");
    drop(tx);
    assert_eq!(
        read_all(&mut retry).await.unwrap(),
        vec![Ev::data("abc"), Ev::data("def"), Ev::data("ghi")]
    );

    // What the retry read from the original was recorded too.
    let third = retry.try_clone().expect("replayable");
    drop(retry);
    assert_eq!(third.collect().await.unwrap().to_bytes(), "abcdefghi");
}

#[tokio::test]
async fn clone_made_before_reading_reads_everything_when_the_original_read_nothing() {
    let (tx, body) = TestBody::channel();
    let original = ReplayBody::try_new(body, CAP).unwrap();
    let mut retry = original.try_clone().expect("replayable");
    drop(original);

    tx.data("abc");
    tx.data("def");
    tx.trailers(trailers("x-checksum", "1"));
    drop(tx);
    assert_eq!(
        read_all(&mut retry).await.unwrap(),
        vec![
            Ev::data("abc"),
            Ev::data("def"),
            Ev::Trailers(trailers("x-checksum", "1")),
        ]
    );
}

#[tokio::test]
async fn clone_after_a_full_read_replays_data_then_trailers_exactly_once() {
    let mut original = replay(vec![
        data("abc"),
        data("def"),
        Item::Trailers(trailers("grpc-status", "0")),
    ]);
    let expected = vec![
        Ev::data("abc"),
        Ev::data("def"),
        Ev::Trailers(trailers("grpc-status", "0")),
    ];
    assert_eq!(read_all(&mut original).await.unwrap(), expected);
    assert!(original.frame().await.is_none(), "trailers end the body");

    for _ in 0..2 {
        let mut retry = original.try_clone().expect("replayable");
        drop(original);
        // `read_all` reads to the end: trailers come after the data, once.
        assert_eq!(read_all(&mut retry).await.unwrap(), expected);
        assert!(retry.frame().await.is_none(), "trailers replayed once");
        original = retry;
    }
}

#[tokio::test]
async fn trailers_read_by_a_replaying_clone_are_recorded_for_later_clones() {
    let (tx, body) = TestBody::channel();
    let mut original = ReplayBody::try_new(body, CAP).unwrap();
    tx.data("abc");
    assert_eq!(next_data(&mut original).await, "abc");

    let mut retry = original.try_clone().expect("replayable");
    drop(original);
    tx.trailers(trailers("x-end", "yes"));
    let expected = vec![Ev::data("abc"), Ev::Trailers(trailers("x-end", "yes"))];
    assert_eq!(read_all(&mut retry).await.unwrap(), expected);

    let mut third = retry.try_clone().expect("replayable");
    drop(retry);
    assert_eq!(read_all(&mut third).await.unwrap(), expected);
}

#[tokio::test]
async fn trailers_only_body_is_replayed() {
    let mut original = replay(vec![Item::Trailers(trailers("x-only", "1"))]);
    assert!(!original.is_end_stream(), "trailers are still to come");
    let expected = vec![Ev::Trailers(trailers("x-only", "1"))];
    assert_eq!(read_all(&mut original).await.unwrap(), expected);

    let mut retry = original.try_clone().expect("replayable");
    drop(original);
    assert!(!retry.is_end_stream(), "trailers are still to be replayed");
    assert_eq!(read_all(&mut retry).await.unwrap(), expected);
    assert!(retry.is_end_stream());
}
