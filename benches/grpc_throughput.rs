//! End-to-end throughput of unary gRPC calls over loopback: a tonic
//! `Channel` with the layer (`tonic::with_token_refresh`, fresh token,
//! reactive retry on) and without it, the same token then added by a tonic
//! interceptor, as code with a fixed token adds it.
//!
//! The server is the tonic one of `tests/grpc`, whose interceptor checks
//! every call's token. 16 tasks call `Unary` back to back through clients
//! written as tonic-build generates them, each client on its own channel
//! (one HTTP/2 connection). The clients take turns, half a second each,
//! for several rounds, in reverse order every other round, as in
//! `benches/throughput.rs`; the report gives the median calls per second
//! of each and the median of the per-round ratios.
//!
//! `cargo bench --features tonic --bench grpc_throughput`
//! (`THROUGHPUT_ROUNDS`, default 15).
//!
//! `GRPC_COUNT=CLIENT:N` (CLIENT one of `without`, `with`) instead makes N
//! calls one after another through that client and exits: run under
//! callgrind, it tells the CPU cost of the layer per call, apart from the
//! noise of a shared machine.

#[path = "support/env.rs"]
mod env;
#[allow(dead_code, unused_imports)] // Only the identity server's tokens are used.
#[path = "../tests/support/mod.rs"]
mod support;
#[path = "support/turns.rs"]
mod turns;

#[allow(dead_code)] // Only `unary` is called.
#[path = "../tests/grpc/client.rs"]
mod client;
#[allow(dead_code)] // Only the server and its `Unary` are used.
#[path = "../tests/grpc/server.rs"]
mod server;
#[allow(dead_code)] // Only the codec is used.
#[path = "../tests/grpc/wire.rs"]
mod wire;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body::Body;
use tonic::metadata::{Ascii, MetadataKey, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::Status;
use tower_token_refresh::classify::Grpc;
use tower_token_refresh::tonic::with_token_refresh;
use tower_token_refresh::{refresh_fn, BoxError, RefreshError, TokenRefreshLayer, TokenSet};

use client::EchoClient;
use server::GrpcServer;
use support::IdentityServer;

use turns::{median, TURN, WORKERS};

fn main() {
    let rounds = env::number("THROUGHPUT_ROUNDS", 15);
    let count = std::env::var("GRPC_COUNT").ok();
    let runtime = turns::runtime(count.is_some());
    runtime.block_on(async {
        let identity = IdentityServer::builder().start().await;
        let server = GrpcServer::start(&identity).await;
        let token = identity
            .tokens()
            .issue_access_token(Duration::from_secs(3600));

        let layer = TokenRefreshLayer::builder(refresh_fn(|_| async {
            Ok::<_, RefreshError>(TokenSet::new("unused"))
        }))
        .classifier(Grpc)
        .initial_tokens(TokenSet::new(token.as_str()).with_expires_in(Duration::from_secs(3600)))
        .build();
        let handle = layer.handle();
        let with = EchoClient::new(with_token_refresh(server.connect().await, &layer));
        let bearer = format!("Bearer {token}").parse().expect("a metadata value");
        let without = EchoClient::new(InterceptedService::new(
            server.connect().await,
            StaticToken(MetadataKey::from_static("authorization"), bearer),
        ));

        if let Some(count) = count {
            let (client, n) = count.split_once(':').expect("CLIENT:N");
            let n = n.parse().expect("N is a number");
            match client {
                "without" => sequential(without, n).await,
                "with" => sequential(with, n).await,
                other => panic!("unknown client {other}"),
            }
            return;
        }

        // A first turn each opens the streams' windows; not counted.
        measure(&without).await;
        measure(&with).await;
        let (mut without_cps, mut with_cps) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            // Every other round in reverse: a drift over the round then
            // favours each client as often as it hurts it.
            if round % 2 == 0 {
                without_cps.push(measure(&without).await);
                with_cps.push(measure(&with).await);
            } else {
                with_cps.push(measure(&with).await);
                without_cps.push(measure(&without).await);
            }
        }
        let mut ratios: Vec<f64> = with_cps
            .iter()
            .zip(&without_cps)
            .map(|(w, o)| w / o)
            .collect();
        println!(
            "grpc_throughput: workers={WORKERS} rounds={rounds} without_layer_cps={:.0} \
             with_layer_cps={:.0} ratio={:.3}",
            median(&mut without_cps),
            median(&mut with_cps),
            median(&mut ratios),
        );
        assert_eq!(handle.stats().refreshes, 0, "the token stayed fresh");
        assert_eq!(handle.stats().rejections, 0, "every call was accepted");
    });
}

/// A fixed token, added to every call as a tonic interceptor adds it.
#[derive(Clone)]
struct StaticToken(MetadataKey<Ascii>, MetadataValue<Ascii>);

impl Interceptor for StaticToken {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        // By a key made once, not a name parsed at each call, as the layer
        // names its headers.
        request.metadata_mut().insert(&self.0, self.1.clone());
        Ok(request)
    }
}

/// Calls per second through `client` over one turn.
async fn measure<T>(client: &EchoClient<T>) -> f64
where
    T: tonic::client::GrpcService<tonic::body::Body> + Clone + Send + 'static,
    T::Error: Into<BoxError>,
    T::Future: Send,
    T::ResponseBody: Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as Body>::Error: Into<BoxError> + Send,
{
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let mut client = client.clone();
            let (done, stop) = (Arc::clone(&done), Arc::clone(&stop));
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let answer = client.unary(Bytes::from_static(b"ping")).await;
                    answer.expect("answered");
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

/// One warm-up call, then `n` calls one after another.
async fn sequential<T>(mut client: EchoClient<T>, n: usize)
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<BoxError>,
    T::ResponseBody: Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as Body>::Error: Into<BoxError> + Send,
{
    for _ in 0..=n {
        let answer = client.unary(Bytes::from_static(b"ping")).await;
        answer.expect("answered");
    }
}
