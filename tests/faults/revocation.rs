//! The API revokes every token mid-stream, again and again: each
//! revocation costs one refresh, and every request still succeeds, retried
//! once with the new token.

use std::time::Duration;

use tokio::time::Instant;

use crate::{assert_all_ok, bounded, traffic, Rig, Settings};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_mid_stream_cost_one_refresh_each_and_every_request_succeeds() {
    bounded(async {
        // Tokens that never turn stale here: every refresh is a reaction
        // to a revocation.
        let hour = Duration::from_secs(3600);
        let rig = Rig::start(Settings {
            lifetime: hour,
            stale_after: hour,
            ..Settings::default()
        })
        .await;
        let revocations = 3;
        let until = Instant::now() + Duration::from_millis(2600);
        // Four streams of requests at once.
        let streams: Vec<_> = (0..4)
            .map(|_| {
                let (client, url, bound) = (rig.client.clone(), rig.url(), rig.request_bound());
                tokio::spawn(async move { traffic(&client, &url, bound, until).await })
            })
            .collect();
        for _ in 0..revocations {
            tokio::time::sleep(Duration::from_millis(700)).await;
            assert!(rig.api.revoke_current() >= 1, "a live token was revoked");
        }
        let mut sent = Vec::new();
        for stream in streams {
            sent.push(stream.await.expect("a stream panicked"));
        }
        for stream in &sent {
            assert_all_ok(stream, "across revocations");
        }

        let oauth = rig.oauth.stats();
        assert_eq!(oauth.refreshed, revocations, "one refresh per revocation");
        assert_eq!(oauth.reuse_detected, 0);
        let api = rig.api.stats();
        let stats = rig.handle.stats();
        assert!(api.unauthorized >= revocations, "{api:?}");
        assert_eq!(stats.rejections, api.unauthorized, "every 401 was seen");
        assert_eq!(stats.retries, api.unauthorized, "each retried once");
        assert_eq!(
            api.ok as usize,
            sent.iter().map(Vec::len).sum::<usize>(),
            "no request needed more than its retry"
        );
        assert_eq!(rig.handle.status().generation(), 1 + revocations);
        eprintln!(
            "revocations: {revocations}, {} rejections, {} refreshes",
            api.unauthorized, oauth.refreshed
        );
    })
    .await;
}
