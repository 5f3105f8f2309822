//! End-to-end throughput over loopback: a hyper-util client with and
//! without the layer (fresh token, reactive retry on), against one HTTP/1
//! server that answers `200` at once.
//!
//! 16 tasks send `GET`s back to back and read each response whole. A third
//! client adds the same header statically (tower-http), to tell what the
//! header costs on the wire from what the layer costs. The clients take
//! turns, half a second each, for several rounds, in reverse order every
//! other round, so that load from elsewhere on the machine hits them alike; the report gives the median
//! requests per second of each and the median of the per-round ratios
//! (target ≥ 0.97).
//!
//! `cargo bench --bench throughput` (`THROUGHPUT_ROUNDS`, default 15).
//!
//! `THROUGHPUT_COUNT=CLIENT:N` (CLIENT one of `without`, `static`, `with`)
//! instead sends N requests one after another through that client and
//! exits: run under callgrind, it tells the CPU cost of the layer per
//! request, apart from the noise of a shared machine.

#[path = "support/env.rs"]
mod env;
#[allow(dead_code)] // Only the server itself is used.
#[path = "../tests/support/server.rs"]
mod server;
#[path = "support/turns.rs"]
mod turns;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_http::auth::AddAuthorizationLayer;
use tower_token_refresh::{refresh_fn, RefreshError, ReplayBody, TokenRefreshLayer, TokenSet};

use turns::{median, TURN, WORKERS};

fn main() {
    let rounds = env::number("THROUGHPUT_ROUNDS", 15);
    let count = std::env::var("THROUGHPUT_COUNT").ok();
    let runtime = turns::runtime(count.is_some());
    runtime.block_on(async {
        let server = server::Server::start(|request: Request<_>, _peer| async move {
            // `/check` answers with the request's `Authorization`, so that
            // each client can be seen to send what it is measured sending.
            let body = match request.uri().path() {
                "/check" => request
                    .headers()
                    .get(AUTHORIZATION)
                    .map_or_else(Bytes::new, |value| Bytes::copy_from_slice(value.as_bytes())),
                _ => Bytes::from_static(b"{\"ok\":true}"),
            };
            Response::new(Full::new(body))
        })
        .await;
        let url = format!("{}/v1/items", server.base_url());
        let check = format!("{}/check", server.base_url());

        let plain: Client<HttpConnector, Empty<Bytes>> =
            Client::builder(TokioExecutor::new()).build_http();
        let layer = TokenRefreshLayer::builder(refresh_fn(|_| async {
            Ok::<_, RefreshError>(TokenSet::new("unused"))
        }))
        .initial_tokens(TokenSet::new("access").with_expires_in(Duration::from_secs(3600)))
        .build();
        let handle = layer.handle();
        let inner: Client<HttpConnector, ReplayBody<Empty<Bytes>>> =
            Client::builder(TokioExecutor::new()).build_http();
        let layered = ServiceBuilder::new().layer(layer).service(inner);

        // The same header, static (tower-http): what the header itself
        // costs on the wire, apart from the layer.
        let static_header = ServiceBuilder::new()
            .layer(AddAuthorizationLayer::bearer("access"))
            .service(plain.clone());

        if let Some(count) = count {
            let (client, n) = count.split_once(':').expect("CLIENT:N");
            let n = n.parse().expect("N is a number");
            match client {
                "without" => sequential(plain, &url, n).await,
                "static" => sequential(static_header, &url, n).await,
                "with" => sequential(layered, &url, n).await,
                other => panic!("unknown client {other}"),
            }
            return;
        }

        assert_eq!(sent_authorization(plain.clone(), &check).await, "");
        assert_eq!(
            sent_authorization(static_header.clone(), &check).await,
            "Bearer access"
        );
        assert_eq!(
            sent_authorization(layered.clone(), &check).await,
            "Bearer access"
        );

        // A first turn each opens the connections; not counted.
        measure(plain.clone(), &url).await;
        measure(static_header.clone(), &url).await;
        measure(layered.clone(), &url).await;
        let (mut without, mut fixed, mut with) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..rounds {
            // Every other round in reverse (A B C, C B A, …): a drift over
            // the round then favours each client as often as it hurts it.
            if round % 2 == 0 {
                without.push(measure(plain.clone(), &url).await);
                fixed.push(measure(static_header.clone(), &url).await);
                with.push(measure(layered.clone(), &url).await);
            } else {
                with.push(measure(layered.clone(), &url).await);
                fixed.push(measure(static_header.clone(), &url).await);
                without.push(measure(plain.clone(), &url).await);
            }
        }
        // Ratios within a round, then their median: load from elsewhere
        // drifts between rounds more than within one.
        let mut ratios: Vec<f64> = with.iter().zip(&without).map(|(w, o)| w / o).collect();
        let mut to_static: Vec<f64> = with.iter().zip(&fixed).map(|(w, f)| w / f).collect();
        let ratio = median(&mut ratios);
        let without = median(&mut without);
        let fixed = median(&mut fixed);
        let with = median(&mut with);
        println!(
            "throughput: workers={WORKERS} rounds={rounds} without_layer_rps={without:.0} \
             static_header_rps={fixed:.0} with_layer_rps={with:.0} ratio={ratio:.3} \
             ratio_to_static_header={:.3} target_met={}",
            median(&mut to_static),
            ratio >= 0.97
        );
        assert_eq!(handle.stats().refreshes, 0, "the token stayed fresh");
    });
}

/// Requests per second through `client` over one turn.
async fn measure<S, B>(client: S, url: &str) -> f64
where
    S: Service<Request<Empty<Bytes>>, Response = Response<B>> + Clone + Send + 'static,
    S::Error: std::fmt::Debug,
    S::Future: Send,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: std::fmt::Debug,
{
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let (client, url) = (client.clone(), url.to_owned());
            let (done, stop) = (Arc::clone(&done), Arc::clone(&stop));
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let request = Request::get(&url).body(Empty::new()).expect("request");
                    let response = client.clone().oneshot(request).await.expect("response");
                    assert_eq!(response.status(), 200);
                    response.into_body().collect().await.expect("body");
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let started = tokio::time::Instant::now();
    tokio::time::sleep(TURN).await;
    let counted = done.load(Ordering::Relaxed);
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.expect("worker");
    }
    counted as f64 / elapsed.as_secs_f64()
}

/// The `Authorization` a request through `client` carries, as the
/// server's `/check` answers it.
async fn sent_authorization<S, B>(client: S, url: &str) -> String
where
    S: Service<Request<Empty<Bytes>>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let request = Request::get(url).body(Empty::new()).expect("request");
    let response = client.oneshot(request).await.expect("response");
    let body = response.into_body().collect().await.expect("body");
    String::from_utf8(body.to_bytes().to_vec()).expect("a header value")
}

/// One warm-up request, then `n` requests one after another.
async fn sequential<S, B>(client: S, url: &str, n: usize)
where
    S: Service<Request<Empty<Bytes>>, Response = Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    for _ in 0..=n {
        let request = Request::get(url).body(Empty::new()).expect("request");
        let response = client.clone().oneshot(request).await.expect("response");
        response.into_body().collect().await.expect("body");
    }
}
