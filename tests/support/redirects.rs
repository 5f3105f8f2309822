//! Two loopback origins for redirect tests, on the fixtures' [`Server`].
//! The API's `/away` redirects to the other origin's `/denied`, which
//! rejects every request and notes the `Authorization` it got; its `/here`
//! redirects within the API to `/check`, which accepts only `Bearer fresh`;
//! its `/create` counts a creation, whatever the token, and answers `303`
//! to `/check`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use http::header::{AUTHORIZATION, LOCATION};
use http::{Response, StatusCode};

use super::server::{ResBody, Server};

pub struct Redirects {
    api: Server,
    elsewhere_saw: Arc<Mutex<Vec<Option<String>>>>,
    created: Arc<AtomicUsize>,
    // Kept running for the API's redirects.
    _elsewhere: Server,
}

impl Redirects {
    pub async fn start() -> Self {
        let elsewhere_saw: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
        let saw = Arc::clone(&elsewhere_saw);
        let elsewhere = Server::start(move |request, _peer| {
            let auth = request.headers().get(AUTHORIZATION);
            let auth = auth.map(|v| v.to_str().expect("ASCII").to_owned());
            saw.lock().unwrap().push(auth);
            async { answer(StatusCode::UNAUTHORIZED, None) }
        })
        .await;
        let denied = format!("{}/denied", elsewhere.base_url());
        let created: Arc<AtomicUsize> = Arc::default();
        let creations = Arc::clone(&created);
        let api = Server::start(move |request, _peer| {
            let response = match request.uri().path() {
                "/away" => answer(StatusCode::FOUND, Some(&denied)),
                "/here" => answer(StatusCode::FOUND, Some("/check")),
                "/create" => {
                    creations.fetch_add(1, Ordering::SeqCst);
                    answer(StatusCode::SEE_OTHER, Some("/check"))
                }
                _ => match request.headers().get(AUTHORIZATION) {
                    Some(auth) if auth == "Bearer fresh" => answer(StatusCode::OK, None),
                    _ => answer(StatusCode::UNAUTHORIZED, None),
                },
            };
            async { response }
        })
        .await;
        Self {
            api,
            elsewhere_saw,
            created,
            _elsewhere: elsewhere,
        }
    }

    /// `path` on the API's origin.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.api.base_url())
    }

    /// The API's origin, `http://127.0.0.1:port`.
    pub fn api_origin(&self) -> String {
        self.api.base_url()
    }

    /// How many requests `/create` got.
    pub fn created(&self) -> usize {
        self.created.load(Ordering::SeqCst)
    }

    /// The `Authorization` of each request the other origin got.
    pub fn elsewhere_saw(&self) -> Vec<Option<String>> {
        self.elsewhere_saw.lock().unwrap().clone()
    }
}

/// An empty answer with `status`, redirecting to `location` if given.
fn answer(status: StatusCode, location: Option<&str>) -> Response<ResBody> {
    let mut response = Response::builder().status(status);
    if let Some(location) = location {
        response = response.header(LOCATION, location);
    }
    response.body(ResBody::default()).expect("a valid response")
}
