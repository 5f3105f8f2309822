//! Two loopback origins for redirect tests. The API's `/away` redirects to
//! the other origin's `/denied`, which rejects every request and notes the
//! `Authorization` it got; its `/here` redirects within the API to
//! `/check`, which accepts only `Bearer fresh`.

use std::sync::{Arc, Mutex};

use axum::extract::Request;
use axum::routing::get;
use http::header::{AUTHORIZATION, LOCATION};
use http::StatusCode;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The token [`Redirects`]'s `/check` accepts.
pub const ACCEPTED: &str = "Bearer fresh";

pub struct Redirects {
    api: String,
    elsewhere: String,
    elsewhere_saw: Arc<Mutex<Vec<Option<String>>>>,
    tasks: [JoinHandle<()>; 2],
}

impl Redirects {
    pub async fn start() -> Self {
        let elsewhere_saw: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
        let saw = Arc::clone(&elsewhere_saw);
        let elsewhere = axum::Router::new().route(
            "/denied",
            get(move |request: Request| async move {
                let auth = request.headers().get(AUTHORIZATION);
                let auth = auth.map(|v| v.to_str().expect("ASCII").to_owned());
                saw.lock().unwrap().push(auth);
                StatusCode::UNAUTHORIZED
            }),
        );
        let (elsewhere, elsewhere_task) = serve(elsewhere).await;
        let redirect = |to: String| move || async move { (StatusCode::FOUND, [(LOCATION, to)]) };
        let api = axum::Router::new()
            .route("/away", get(redirect(format!("{elsewhere}/denied"))))
            .route("/here", get(redirect("/check".to_owned())))
            .route(
                "/check",
                get(|request: Request| async move {
                    match request.headers().get(AUTHORIZATION) {
                        Some(auth) if auth == ACCEPTED => StatusCode::OK,
                        _ => StatusCode::UNAUTHORIZED,
                    }
                }),
            );
        let (api, api_task) = serve(api).await;
        Self {
            api,
            elsewhere,
            elsewhere_saw,
            tasks: [elsewhere_task, api_task],
        }
    }

    /// `path` on the API's origin.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.api)
    }

    /// The API's origin, `http://127.0.0.1:port`.
    pub fn api_origin(&self) -> &str {
        &self.api
    }

    /// The other origin.
    pub fn elsewhere_origin(&self) -> &str {
        &self.elsewhere
    }

    /// The `Authorization` of each request the other origin got.
    pub fn elsewhere_saw(&self) -> Vec<Option<String>> {
        self.elsewhere_saw.lock().unwrap().clone()
    }
}

impl Drop for Redirects {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Serves `app` on `127.0.0.1:0`; its origin, and the task to abort.
async fn serve(app: axum::Router) -> (String, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let origin = format!("http://{}", listener.local_addr().expect("addr"));
    let serve = tokio::spawn(async move {
        axum::serve(listener, app).await.expect("serve");
    });
    (origin, serve)
}
