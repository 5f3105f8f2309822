//! A request that holds a token while it waits to be sent (a retry held
//! for its body, or for its service) and learns only at sending time that
//! another request's answer has rejected that token: it waits for the
//! refresh that rejection started, instead of being sent to be rejected.

use std::sync::{Arc, Mutex};

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

#[tokio::test(start_paused = true)]
async fn a_retry_whose_token_was_rejected_while_it_waited_waits_for_the_refresh() {
    let (seen, kept) = (Arc::default(), Kept::default());
    let refreshed = Arc::new(Notify::new());
    let source = refresh_fn({
        let refreshed = Arc::clone(&refreshed);
        move |_| {
            let refreshed = Arc::clone(&refreshed);
            async move {
                refreshed.notified().await;
                Ok::<_, RefreshError>(TokenSet::new("fresh"))
            }
        }
    });
    let layer = TokenRefreshLayer::builder(source)
        .initial_tokens(TokenSet::new("first"))
        .build();
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
