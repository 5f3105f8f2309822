//! The API revokes every token mid-stream, again and again: each
//! revocation costs one refresh, and every request still succeeds, retried
//! once with the new token.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::{assert_all_ok, bounded, send, wait_until, Rig, Sent, Settings, EVERY};

/// The rig's minimum refresh interval: a token rejected sooner after it
/// came is not refreshed (the rejection is returned as it is), so each
/// revocation waits at least this long after the token it revokes came.
const MIN_REFRESH_INTERVAL: Duration = Duration::from_millis(100);

/// Requests under way, by the generation of the token the layer held when
/// each started.
#[derive(Clone, Default)]
struct InFlight(Arc<Mutex<BTreeMap<u64, usize>>>);

impl InFlight {
    fn start(&self, generation: u64) -> Started {
        *self.0.lock().unwrap().entry(generation).or_default() += 1;
        Started {
            in_flight: self.clone(),
            generation,
        }
    }

    /// Whether a request that started before `generation` is under way.
    fn any_before(&self, generation: u64) -> bool {
        self.0
            .lock()
            .unwrap()
            .range(..generation)
            .any(|(_, &count)| count > 0)
    }
}

/// One request under way; counted off when dropped.
struct Started {
    in_flight: InFlight,
    generation: u64,
}

impl Drop for Started {
    fn drop(&mut self) {
        *self
            .in_flight
            .0
            .lock()
            .unwrap()
            .get_mut(&self.generation)
            .unwrap() -= 1;
    }
}

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
        // No later than the first token came.
        let mut token_came = Instant::now();
        let revocations = 3;
        let stop = Arc::new(AtomicBool::new(false));
        let in_flight = InFlight::default();
        // Four streams of requests at once, each a `GET` every `EVERY`
        // from its own task, until the last revocation is over.
        let streams: Vec<_> = (0..4)
            .map(|_| {
                let (client, url, bound) = (rig.client.clone(), rig.url(), rig.request_bound());
                let (handle, stop, in_flight) =
                    (rig.handle.clone(), Arc::clone(&stop), in_flight.clone());
                tokio::spawn(async move {
                    let mut tasks = Vec::new();
                    while !stop.load(Ordering::SeqCst) {
                        let started = in_flight.start(handle.status().generation());
                        let (client, url) = (client.clone(), url.clone());
                        tasks.push(tokio::spawn(async move {
                            let sent = send(&client, &url, bound).await;
                            drop(started);
                            sent
                        }));
                        tokio::time::sleep(EVERY).await;
                    }
                    let mut sent: Vec<Sent> = Vec::with_capacity(tasks.len());
                    for task in tasks {
                        sent.push(task.await.expect("a request task panicked"));
                    }
                    sent
                })
            })
            .collect();
        for _ in 0..revocations {
            // At least (never only) the interval: a later revocation is as
            // good.
            tokio::time::sleep_until(token_came + MIN_REFRESH_INTERVAL).await;
            let generation = rig.handle.status().generation();
            // A request rejected with the previous token is retried with
            // this one: revoked before that retry arrived, it would fail.
            // So each revocation waits for the requests of the previous
            // token to end.
            wait_until("the previous token's requests ended", || {
                !in_flight.any_before(generation)
            })
            .await;
            assert!(rig.api.revoke_current() >= 1, "a live token was revoked");
            wait_until("a new token after the revocation", || {
                rig.handle.status().generation() > generation
            })
            .await;
            token_came = Instant::now();
        }
        stop.store(true, Ordering::SeqCst);
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
