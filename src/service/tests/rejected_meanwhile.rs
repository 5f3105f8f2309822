//! A request that holds a token while it waits to be sent (a retry held
//! for its body, or for its service) and learns only at sending time that
//! another request's answer has rejected that token: it waits for the
//! refresh that rejection started, instead of being sent to be rejected.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use tokio::sync::Notify;
use tower::{Service, ServiceBuilder, ServiceExt};

use crate::test_support::{get, post, settle, TestBody};
use crate::{refresh_fn, BoxError, RefreshError, ReplayBody, TokenRefreshLayer, TokenSet};

type Kept = Arc<Mutex<Vec<Request<ReplayBody<TestBody>>>>>;

/// An API accepting only `Bearer fresh`. It notes every `Authorization`,
/// and keeps the first request it rejects (so its body is not released,
/// and its retry waits) until `kept` is cleared.
fn api(
    seen: &Arc<Mutex<Vec<String>>>,
    kept: &Kept,
) -> impl Service<
    Request<ReplayBody<TestBody>>,
    Response = Response<TestBody>,
    Error = std::convert::Infallible,
    Future = impl Send,
> + Clone
       + Send {
    let (seen, kept) = (Arc::clone(seen), Arc::clone(kept));
    let mut kept_one = false;
    tower::service_fn(move |req: Request<ReplayBody<TestBody>>| {
        let auth = req.headers()["authorization"].to_str().unwrap().to_owned();
        let status = if auth == "Bearer fresh" {
            StatusCode::OK
        } else {
            if !std::mem::replace(&mut kept_one, true) {
                kept.lock().unwrap().push(req);
            }
            StatusCode::UNAUTHORIZED
        };
        seen.lock().unwrap().push(auth);
        let response = Response::builder().status(status).body(TestBody::default());
        async move { Ok(response.unwrap()) }
    })
}

/// A layer starting with the token "first", whose refreshes give "fresh"
/// once the returned `Notify` is notified.
fn layer_refreshing_on_notice() -> (TokenRefreshLayer, Arc<Notify>) {
    let refreshed = Arc::new(Notify::new());
    let notice = Arc::clone(&refreshed);
    let source = refresh_fn(move |_| {
        let notice = Arc::clone(&notice);
        async move {
            notice.notified().await;
            Ok::<_, RefreshError>(TokenSet::new("fresh"))
        }
    });
    let layer = TokenRefreshLayer::builder(source)
        .initial_tokens(TokenSet::new("first"))
        .build();
    (layer, refreshed)
}

#[tokio::test(start_paused = true)]
async fn a_retry_whose_token_was_rejected_while_it_waited_waits_for_the_refresh() {
    let (seen, kept) = (Arc::default(), Kept::default());
    let (layer, refreshed) = layer_refreshing_on_notice();
    let handle = layer.handle();
    let client = ServiceBuilder::new()
        .layer(layer)
        .service(api(&seen, &kept));

    // R1 goes out with "first"; "second" replaces it before R1's answer is
    // read, so R1's rejection plans a retry with "second", no refresh. The
    // API keeps R1's body: the retry waits for it.
    let mut r1_client = client.clone();
    let r1 = r1_client.ready().await.unwrap().call(post("one"));
    handle.set_tokens(TokenSet::new("second")).unwrap();
    let r1 = tokio::spawn(status_of(r1));
    settle().await;
    assert_eq!(kept.lock().unwrap().len(), 1, "R1 rejected, its body kept");

    // R2 goes out with "second" and is rejected: "second" is marked, and a
    // refresh starts (held until `refreshed`).
    let r2 = tokio::spawn(status_of(client.clone().oneshot(get())));
    settle().await;

    // R1's body is released: its retry is due, with a token known to be
    // rejected. It waits for the refresh instead of going out.
    kept.lock().unwrap().clear();
    settle().await;
    assert_eq!(*seen.lock().unwrap(), ["Bearer first", "Bearer second"]);

    refreshed.notify_one();
    assert_eq!(r1.await.unwrap().unwrap(), StatusCode::OK);
    assert_eq!(r2.await.unwrap().unwrap(), StatusCode::OK);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen[2..], ["Bearer fresh", "Bearer fresh"]);
    let stats = handle.stats();
    assert_eq!((stats.refreshes, stats.retries), (1, 2));
}

async fn status_of<F>(response: F) -> Result<StatusCode, BoxError>
where
    F: std::future::Future<Output = Result<Response<TestBody>, BoxError>>,
{
    Ok(response.await?.status())
}

/// The same, for a retry waiting for a service that had no capacity: what
/// its service was granted while it waited (here, the one permit of a
/// `ConcurrencyLimit`) is let go when it goes back to wait for the token,
/// so that other requests, and a refresh sent through the same service,
/// are not held up by a request that cannot be sent anyway.
#[tokio::test(start_paused = true)]
async fn a_retry_going_back_to_wait_lets_go_of_what_its_service_was_granted() {
    use tower::limit::ConcurrencyLimit;

    let (seen, kept) = (Arc::default(), Kept::default());
    let released = Arc::new(Notify::new());
    let (layer, refreshed) = layer_refreshing_on_notice();
    let handle = layer.handle();
    // One request at a time, and one that holds its permit until released.
    let held_api = {
        let (api, released) = (api(&seen, &kept), Arc::clone(&released));
        tower::service_fn(move |req: Request<ReplayBody<TestBody>>| {
            let hold = req.headers().contains_key("x-hold");
            let (answer, released) = (api.clone().oneshot(req), Arc::clone(&released));
            async move {
                if hold {
                    released.notified().await;
                }
                answer.await
            }
        })
    };
    let limited = ServiceBuilder::new()
        .layer(&layer)
        .service(ConcurrencyLimit::new(held_api, 1));
    // A second client of the same token state, without the limit.
    let unlimited = ServiceBuilder::new()
        .layer(&layer)
        .service(api(&seen, &kept));

    // R1 goes out with "first" and is rejected once "second" has replaced
    // it; meanwhile X (its own Authorization, so passed through) queues for
    // the permit and takes it as R1's first attempt ends: R1's retry waits
    // for capacity.
    let mut r1_client = limited.clone();
    let r1 = r1_client.ready().await.unwrap().call(get());
    handle.set_tokens(TokenSet::new("second")).unwrap();
    let mut x = get();
    x.headers_mut()
        .insert("authorization", "Bearer fresh".parse().unwrap());
    x.headers_mut().insert("x-hold", "1".parse().unwrap());
    let x = tokio::spawn(status_of(limited.clone().oneshot(x)));
    settle().await;
    let r1 = tokio::spawn(status_of(r1));
    settle().await;

    // R2 rejects "second" through the other client: a refresh starts.
    let r2 = tokio::spawn(status_of(unlimited.oneshot(get())));
    settle().await;
    // X ends: its permit goes to R1's waiting service, and R1, due with a
    // rejected token, goes back to wait for the refresh.
    released.notify_one();
    assert_eq!(x.await.unwrap().unwrap(), StatusCode::OK);
    settle().await;

    // The permit is free for others while R1 waits.
    let mut other = limited.clone();
    let ready = tokio::time::timeout(Duration::from_secs(1), other.ready()).await;
    assert!(
        ready.is_ok(),
        "the permit is still held by the waiting retry"
    );
    drop(other);

    refreshed.notify_one();
    assert_eq!(r1.await.unwrap().unwrap(), StatusCode::OK);
    assert_eq!(r2.await.unwrap().unwrap(), StatusCode::OK);
    let seen = seen.lock().unwrap().clone();
    assert!(!seen[2..].contains(&"Bearer second".to_owned()), "{seen:?}");
}
