//! Refresh storms on real loopback servers: what a burst of requests pays
//! when the token runs out under it.
//!
//! - `expired`: 10,000 requests arrive at once with an expired token.
//! - `revoked`: 10,000 requests are in flight at the API server when it
//!   revokes their token; every one is rejected and retried.
//!
//! Each storm must cost exactly one refresh call at the identity server and
//! no failed request (asserted). Reported per storm, as p50/p99/max:
//!
//! - *added*: the storm's latency minus that of the same burst with a
//!   fresh token, percentile by percentile. Target: p99 added ≤ one
//!   refresh round trip (measured inside the refresher) + 1 ms.
//! - *outside the client*: each request's whole time minus the time its
//!   attempts spent in the HTTP client (measured by a timing service inside
//!   the layer): the waiting and scheduling around the sends, without the
//!   sends themselves, which for the revoked storm are two per request.
//!
//! Each storm also runs a *floor*: what the same storm costs with no token
//! logic at all, so that what the layer adds beyond it (`over_floor`) can
//! be told from what 10,000 requests waiting for one refresh cost on this
//! machine anyway. For the expired storm, the fresh-token burst with each
//! request first sleeping until one refresh round trip (the storm's) after
//! the burst began. For the revoked storm, the held burst with each
//! request first sent with a token the API rejects (an explicit
//! `Authorization`, which the layer passes through untouched), then, once
//! rejected, sent again with the fresh token one refresh round trip after
//! the release.
//!
//! The identity server is the Cognito-style fixture of `tests/support`
//! (HTTP/1), with a simulated 50 ms network delay before each refresh so
//! that the whole burst arrives while the refresh runs. The API server is
//! local to this file: HTTP/2 on one connection, so all 10,000 requests can
//! be in flight at once without 10,000 sockets (`ulimit -n`), and it can
//! hold requests until they have all arrived.
//!
//! `cargo bench --bench storm`

#[allow(dead_code, unused_imports)] // Only the identity server and its client are used.
#[path = "../tests/support/mod.rs"]
mod support;

#[path = "support/env.rs"]
mod env;
#[path = "support/storm.rs"]
mod storm_support;

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::header::{HeaderValue, AUTHORIZATION};
use http_body_util::BodyExt;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower::ServiceExt;
use tower_token_refresh::{refresh_fn, Refresh, TokenRefreshLayer, TokenSet};

use storm_support::{h2_client, percentile, AttemptTime, HoldingApi, RefreshLog, Timed};
use support::{CognitoClient, IdentityServer, DEMO_PASSWORD, DEMO_USER};

/// Requests per storm; `STORM_REQUESTS` overrides it (to see how the
/// added latency grows with the burst).
fn requests() -> usize {
    env::number("STORM_REQUESTS", 10_000)
}
const IDP_DELAY: Duration = Duration::from_millis(50);

#[derive(Clone, Copy, PartialEq)]
enum Storm {
    Expired,
    Revoked,
}

impl Storm {
    fn name(self) -> &'static str {
        match self {
            Storm::Expired => "expired",
            Storm::Revoked => "revoked",
        }
    }
}

fn main() {
    // `cargo bench` passes `--bench`; a filter selects one storm.
    let filter = std::env::args().skip(1).find(|a| !a.starts_with("--"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    for storm in [Storm::Expired, Storm::Revoked] {
        if filter.as_deref().is_some_and(|f| !storm.name().contains(f)) {
            continue;
        }
        runtime.block_on(run(storm));
    }
}

type Layered = tower_token_refresh::TokenRefresh<Timed<storm_support::H2Client>>;

async fn run(storm: Storm) {
    let identity = IdentityServer::builder()
        .rate_limit(1000, Duration::from_secs(60))
        .start()
        .await;
    let api = HoldingApi::start(identity.tokens(), 2 * requests() as u32).await;
    let cognito = CognitoClient::new(identity.base_url());
    let login = cognito
        .login(DEMO_USER, DEMO_PASSWORD)
        .await
        .expect("login");
    let log = RefreshLog::default();
    let url = api.url("/v1/items");
    let layered = |lifetime: Duration| {
        let (preset, log) = (Arc::new(cognito.refresher()), log.clone());
        let refresher = refresh_fn(move |ctx| {
            let (preset, log) = (Arc::clone(&preset), log.clone());
            async move {
                let started = Instant::now();
                tokio::time::sleep(IDP_DELAY).await;
                let result = preset.refresh(ctx).await;
                log.record(started.elapsed());
                result
            }
        });
        let access = login.access_token().expose();
        let refresh = login.refresh_token().expect("refresh token").expose();
        let layer = TokenRefreshLayer::builder(refresher)
            .initial_tokens(
                TokenSet::new(access)
                    .with_refresh_token(refresh)
                    .with_expires_in(lifetime),
            )
            .build();
        let handle = layer.handle();
        let client = tower::ServiceBuilder::new()
            .layer(layer)
            .service(Timed::new(h2_client()));
        (client, handle)
    };
    let hold = storm == Storm::Revoked;

    // The same burst with a token that stays fresh: what the storm adds to.
    let (client, _) = layered(Duration::from_secs(3600));
    warm_up(&client, &url).await;
    let baseline = burst(&client, &url, &api, hold, Mode::Plain, || {}).await;
    assert_eq!(baseline.failures, 0, "every baseline request succeeds");

    // The storm: the expired one starts from a token that runs out first.
    let lifetime = match storm {
        Storm::Expired => Duration::from_millis(300),
        Storm::Revoked => Duration::from_secs(3600),
    };
    let (client, handle) = layered(lifetime);
    warm_up(&client, &url).await;
    if storm == Storm::Expired {
        tokio::time::sleep(lifetime + Duration::from_millis(50)).await;
    }
    let refreshes_before = identity.stats().refresh_calls;
    let outcome = burst(&client, &url, &api, hold, Mode::Plain, || {
        identity.tokens().revoke_access_tokens();
    })
    .await;
    let refresh_calls = identity.stats().refresh_calls - refreshes_before;
    let stats = handle.stats();
    let rtt = log.last().expect("one refresh ran");
    let floor = {
        let (client, _) = layered(Duration::from_secs(3600));
        warm_up(&client, &url).await;
        let mode = match storm {
            Storm::Expired => Mode::ParkedFor(rtt),
            Storm::Revoked => Mode::RejectedThenAfter(rtt),
        };
        let floor = burst(&client, &url, &api, hold, mode, || {}).await;
        assert_eq!(
            floor.failures, 0,
            "every floor request succeeds; the first failure: {:?}",
            floor.first_failure
        );
        floor
    };

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let (p50, p99, max) = outcome.percentiles();
    let (b50, b99, bmax) = baseline.percentiles();
    let added = |storm: Duration, base: Duration| ms(storm) - ms(base);
    let (o50, o99, omax) = outcome.outside_client();
    println!(
        "storm {}: requests={} failures={} refresh_calls={refresh_calls} waited={} \
         retries={} rtt_ms={:.2} baseline_p50_ms={:.2} baseline_p99_ms={:.2} \
         baseline_max_ms={:.2} storm_p50_ms={:.2} storm_p99_ms={:.2} storm_max_ms={:.2} \
         added_p50_ms={:.2} added_p99_ms={:.2} added_max_ms={:.2} \
         outside_client_p50_ms={:.2} outside_client_p99_ms={:.2} outside_client_max_ms={:.2} \
         target_p99_ms={:.2} target_met={}{}",
        storm.name(),
        requests(),
        outcome.failures,
        stats.waited,
        stats.retries,
        ms(rtt),
        ms(b50),
        ms(b99),
        ms(bmax),
        ms(p50),
        ms(p99),
        ms(max),
        added(p50, b50),
        added(p99, b99),
        added(max, bmax),
        ms(o50),
        ms(o99),
        ms(omax),
        ms(rtt) + 1.0,
        added(p99, b99) <= ms(rtt) + 1.0,
        {
            let (f50, f99, fmax) = floor.percentiles();
            format!(
                " floor_added_p50_ms={:.2} floor_added_p99_ms={:.2} floor_added_max_ms={:.2} \
                 over_floor_p99_ms={:.2}",
                added(f50, b50),
                added(f99, b99),
                added(fmax, bmax),
                added(p99, b99) - added(f99, b99),
            )
        },
    );
    assert_eq!(
        outcome.failures, 0,
        "every request succeeds; the first failure: {:?}",
        outcome.first_failure
    );
    assert_eq!(refresh_calls, 1, "one refresh call at the identity server");
    assert_eq!(stats.refreshes, 1, "one refresh by the layer");
}

/// One request opens the HTTP/2 connection before the burst.
async fn warm_up(client: &Layered, url: &str) {
    let response = client.clone().oneshot(storm_support::get(url, None)).await;
    assert_eq!(response.expect("warm-up").status(), 200);
}

/// Reads a response's body to its end, as a client does. Dropping it
/// unread resets the stream (HTTP/2 `CANCEL`); past the client's small
/// memory of reset streams, the server's frames still arriving for them
/// count as errors, and after 1,024 of those the client's HTTP/2 layer
/// closes the connection ("too_many_internal_resets"), failing every
/// request still on it. Timed after the latency, which ends at the
/// response head.
async fn read_to_end(response: http::Response<hyper::body::Incoming>) -> Option<String> {
    match response.into_body().collect().await {
        Ok(_) => None,
        Err(error) => Some(error_chain(&error)),
    }
}

/// An error and its sources, one line.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text += &format!(": {cause}");
        source = cause.source();
    }
    text
}

/// What a burst's requests saw.
struct Outcome {
    failures: usize,
    /// What the first failed request saw.
    first_failure: Option<String>,
    /// Each request's whole latency, sorted.
    totals: Vec<Duration>,
    /// Each request's latency outside the HTTP client, sorted.
    outside: Vec<Duration>,
}

impl Outcome {
    fn percentiles(&self) -> (Duration, Duration, Duration) {
        quantiles(&self.totals)
    }

    fn outside_client(&self) -> (Duration, Duration, Duration) {
        quantiles(&self.outside)
    }
}

fn quantiles(sorted: &[Duration]) -> (Duration, Duration, Duration) {
    let max = *sorted.last().expect("requests");
    (percentile(sorted, 0.5), percentile(sorted, 0.99), max)
}

/// How each request of a burst goes out.
#[derive(Clone, Copy)]
enum Mode {
    /// Through the layer, as it is.
    Plain,
    /// Parked until this long after the burst began, then sent (the
    /// expired storm's floor).
    ParkedFor(Duration),
    /// Sent with an explicit `Authorization` the API rejects, then, once
    /// rejected, sent again through the layer this long after the release
    /// (the revoked storm's floor).
    RejectedThenAfter(Duration),
}

/// Sends `requests()` requests at once, each as `mode` says (its whole
/// time counts). With `hold`, the API server parks them until all have
/// arrived, `between` runs, and they are released.
async fn burst(
    client: &Layered,
    url: &str,
    api: &HoldingApi,
    hold: bool,
    mode: Mode,
    between: impl FnOnce(),
) -> Outcome {
    if hold {
        api.hold();
    }
    let began = Instant::now();
    let released_at = Arc::new(OnceLock::new());
    let n = requests();
    let mut requests = JoinSet::new();
    for _ in 0..n {
        let client = client.clone();
        let url = url.to_owned();
        let released_at = Arc::clone(&released_at);
        requests.spawn(async move {
            let attempts = AttemptTime::default();
            let request = storm_support::get(&url, Some(attempts.clone()));
            let started = Instant::now();
            let response = match mode {
                Mode::Plain => client.oneshot(request).await,
                Mode::ParkedFor(wait) => {
                    tokio::time::sleep_until(began + wait).await;
                    client.oneshot(request).await
                }
                Mode::RejectedThenAfter(wait) => {
                    let mut first = storm_support::get(&url, Some(attempts.clone()));
                    let rejected = HeaderValue::from_static("Bearer rejected");
                    first.headers_mut().insert(AUTHORIZATION, rejected);
                    match client.clone().oneshot(first).await {
                        Ok(r) if r.status() == 401 => {
                            let _ = read_to_end(r).await;
                            let released = *released_at.get().expect("answered after the release");
                            tokio::time::sleep_until(released + wait).await;
                            client.oneshot(request).await
                        }
                        Ok(r) => Err(format!("first attempt answered {}", r.status()).into()),
                        Err(error) => Err(error),
                    }
                }
            };
            let total = started.elapsed();
            let failure = match response {
                Ok(r) if r.status() == 200 => read_to_end(r).await,
                Ok(r) => Some(format!("status {}", r.status())),
                Err(error) => Some(error_chain(&*error)),
            };
            let in_client = Duration::from_nanos(attempts.0.load(Ordering::Relaxed));
            (failure, total, total.saturating_sub(in_client))
        });
    }
    if hold {
        api.wait_for_held(n).await;
        between();
        let _ = released_at.set(Instant::now());
        api.release();
    }
    let mut outcome = Outcome {
        failures: 0,
        first_failure: None,
        totals: Vec::with_capacity(n),
        outside: Vec::with_capacity(n),
    };
    while let Some(result) = requests.join_next().await {
        let (failure, total, outside) = result.expect("request task");
        if let Some(failure) = failure {
            outcome.failures += 1;
            outcome.first_failure.get_or_insert(failure);
        }
        outcome.totals.push(total);
        outcome.outside.push(outside);
    }
    outcome.totals.sort();
    outcome.outside.sort();
    outcome
}
