//! A herd: 10,000 requests waiting for one refresh, with no HTTP below the
//! layer, so that what the layer's path for a waiting request costs the
//! process can be told apart from what a client costs (the storm bench's
//! figures hold both).
//!
//! Two bursts, alternating from round to round, each of `HERD_REQUESTS`
//! requests (default 10,000) that arrive at once (they wait at a gate
//! that opens once all are waiting at it) on a runtime of two workers,
//! through one layer over a service that answers at once:
//!
//! - `waiting`: the layer has no token yet; every request waits for one
//!   refresh, which answers after 20 ms.
//! - `parked`: the token is there; every request first sleeps until 20 ms
//!   after the gate opened, then goes through the layer: the same herd
//!   released by timers, the floor for `waiting`.
//!
//! Per burst: the process's CPU time from the gate's opening to the last
//! answer, and the wall-clock time. Printed per round, then each figure's
//! median, and the median over rounds of the per-request difference of CPU
//! time (`waiting` minus `parked`): what waiting for a refresh costs a
//! request in the layer beyond sleeping on a timer.
//!
//! `cargo bench --bench herd`

#[path = "support/cpu.rs"]
mod cpu;
#[path = "support/env.rs"]
mod env;

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Empty;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_token_refresh::{refresh_fn, RefreshError, ReplayBody, TokenRefreshLayer, TokenSet};

const REFRESH_TAKES: Duration = Duration::from_millis(20);

#[derive(Clone, Copy, PartialEq)]
enum Herd {
    Waiting,
    Parked,
}

fn main() {
    let requests = env::number("HERD_REQUESTS", 10_000);
    let rounds = env::number("HERD_ROUNDS", 15);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut runs: Vec<Round> = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let order = if round % 2 == 0 {
            [Herd::Waiting, Herd::Parked]
        } else {
            [Herd::Parked, Herd::Waiting]
        };
        let mut measured = [Measured::default(); 2];
        for herd in order {
            measured[herd as usize] = runtime.block_on(burst(herd, requests));
        }
        let [waiting, parked] = measured;
        println!(
            "herd round={round}: waiting_cpu_ms={:.2} parked_cpu_ms={:.2} waiting_wall_ms={:.2} parked_wall_ms={:.2}",
            ms(waiting.cpu),
            ms(parked.cpu),
            ms(waiting.wall),
            ms(parked.wall),
        );
        runs.push(Round { waiting, parked });
    }
    let median_of = |figure: fn(&Round) -> f64| {
        let mut values: Vec<f64> = runs.iter().map(figure).collect();
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let cpu_over = median_of(|r| ms(r.waiting.cpu) - ms(r.parked.cpu));
    println!(
        "herd: requests={requests} rounds={rounds} waiting_cpu_ms={:.2} parked_cpu_ms={:.2} waiting_wall_ms={:.2} parked_wall_ms={:.2} waiting_over_parked_cpu_us_per_request={:.3}",
        median_of(|r| ms(r.waiting.cpu)),
        median_of(|r| ms(r.parked.cpu)),
        median_of(|r| ms(r.waiting.wall)),
        median_of(|r| ms(r.parked.wall)),
        cpu_over * 1e3 / requests as f64,
    );
}

/// What one herd cost: the process's CPU time and the wall-clock time from
/// the gate's opening to the last answer.
#[derive(Clone, Copy, Default)]
struct Measured {
    cpu: Duration,
    wall: Duration,
}

/// One round: a herd of each kind.
struct Round {
    waiting: Measured,
    parked: Measured,
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// One herd of `n` requests.
async fn burst(herd: Herd, n: usize) -> Measured {
    let refresher = refresh_fn(|_| async {
        tokio::time::sleep(REFRESH_TAKES).await;
        Ok::<_, RefreshError>(TokenSet::new("fresh").with_expires_in(Duration::from_secs(3600)))
    });
    let mut builder = TokenRefreshLayer::builder(refresher);
    if herd == Herd::Parked {
        builder = builder
            .initial_tokens(TokenSet::new("fresh").with_expires_in(Duration::from_secs(3600)));
    }
    let layer = builder.build();
    let handle = layer.handle();
    let client = ServiceBuilder::new()
        .layer(layer)
        .service(Answering::default());
    let (open, gate) = tokio::sync::watch::channel(None::<Instant>);
    let at_the_gate = Arc::new(tokio::sync::Semaphore::new(0));
    let mut requests = JoinSet::new();
    for _ in 0..n {
        let client = client.clone();
        let mut gate = gate.clone();
        let at_the_gate = Arc::clone(&at_the_gate);
        requests.spawn(async move {
            at_the_gate.add_permits(1);
            let opened = *gate.wait_for(Option::is_some).await.expect("gate kept");
            if herd == Herd::Parked {
                tokio::time::sleep_until(opened.expect("open") + REFRESH_TAKES).await;
            }
            let request = Request::get("https://api.example.com/v1/items")
                .body(Empty::<Bytes>::new())
                .expect("valid request");
            let response = client.oneshot(request).await.expect("answered");
            assert_eq!(response.status(), 200);
        });
    }
    // Opened once every task is at the gate.
    let all = u32::try_from(n).expect("a herd's size fits a u32");
    at_the_gate.acquire_many(all).await.expect("kept").forget();
    let cpu_before = cpu::process_cpu();
    let opened = Instant::now();
    open.send_replace(Some(opened));
    while let Some(done) = requests.join_next().await {
        done.expect("request task");
    }
    let wall = opened.elapsed();
    let cpu = cpu::process_cpu().saturating_sub(cpu_before);
    // Found in review: nothing checked that the waiting herd waited. A
    // request that reached the layer after the token came would have gone
    // straight through.
    let waited = if herd == Herd::Waiting { n as u64 } else { 0 };
    assert_eq!(
        handle.stats().waited,
        waited,
        "every waiting request waited"
    );
    Measured { cpu, wall }
}

/// Answers at once, and clones as a hyper-util client does: it holds one,
/// which it never calls. The layer clones its inner service where it must
/// (a request that waits lets go of the instance polled ready for it), and
/// a client's clone writes half a dozen reference counts every thread
/// shares: a herd of requests pays for those too.
#[derive(Clone)]
struct Answering {
    _client: Client<HttpConnector, ReplayBody<Empty<Bytes>>>,
}

impl Default for Answering {
    fn default() -> Self {
        Self {
            _client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }
}

impl Service<Request<ReplayBody<Empty<Bytes>>>> for Answering {
    type Response = Response<Empty<Bytes>>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<ReplayBody<Empty<Bytes>>>) -> Self::Future {
        drop(request);
        std::future::ready(Ok(Response::new(Empty::new())))
    }
}
