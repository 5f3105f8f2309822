//! The dialect servers of `tests/support` against their documents: RFC
//! 6749 for `oauth2` (client authentication in `oauth2_clients`), seed 000
//! for `dynamosql`, seed 003 for `ocient`, and seed 002's rate limit
//! (`rate_limit`).
//! Raw requests through a plain hyper-util client, no token layer: what
//! these tests pin down is what the library's refreshers will meet.

// `pub`: this binary uses the dialect servers and the API server only, and
// the layered-client helpers the other binaries use are not dead code here.
#[path = "../support/mod.rs"]
pub mod support;

mod dynamosql;
mod oauth2;
mod oauth2_clients;
mod ocient;
mod rate_limit;

// The test modules take these with `use super::*`.
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{
    HeaderName, ALLOW, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, PRAGMA, RETRY_AFTER,
    WWW_AUTHENTICATE,
};
use hyper::{HeaderMap, Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

use support::bounded;
use support::dynamosql::DynamoSqlServer;
use support::faults::{Failure, InjectFaults};
use support::oauth2::{OAuth2Server, RegisteredClient};
use support::ocient::OcientServer;
use support::tokens::TokenStore;
use support::ApiServer;

/// An answer, its body parsed as JSON (`Null` if it is not JSON).
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

/// A raw request, built by [`call`] and sent with [`Call::send`].
struct Call {
    method: Method,
    url: String,
    headers: Vec<(HeaderName, String)>,
    body: String,
}

fn call(method: Method, url: &str) -> Call {
    Call {
        method,
        url: url.to_owned(),
        headers: Vec::new(),
        body: String::new(),
    }
}

impl Call {
    fn header(mut self, name: HeaderName, value: &str) -> Self {
        self.headers.push((name, value.to_owned()));
        self
    }

    fn body(mut self, body: impl Into<String>) -> Self {
        self.body = body.into();
        self
    }

    /// `Content-Type: application/json` and `value`.
    fn json(self, value: &Value) -> Self {
        self.header(CONTENT_TYPE, "application/json")
            .body(value.to_string())
    }

    /// `Content-Type: application/x-www-form-urlencoded` and `params`.
    fn form(self, params: &[(&str, &str)]) -> Self {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params)
            .finish();
        self.header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body)
    }

    fn bearer(self, token: &str) -> Self {
        self.header(AUTHORIZATION, &format!("Bearer {token}"))
    }

    async fn send(self) -> Answer {
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let mut request = Request::builder().method(self.method).uri(self.url);
        for (name, value) in self.headers {
            request = request.header(name, value);
        }
        let request = request.body(Full::new(Bytes::from(self.body))).unwrap();
        let response = client.request(request).await.expect("fixture answers");
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.expect("body").to_bytes();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    }
}

/// `GET` on the API server with `token`: its status.
async fn api_status(api: &ApiServer, token: &str) -> StatusCode {
    call(Method::GET, &api.url("/v1/items"))
        .bearer(token)
        .send()
        .await
        .status
}

fn header(answer: &Answer, name: HeaderName) -> Option<&str> {
    answer.headers.get(name).and_then(|v| v.to_str().ok())
}

/// One API server behind three dialects: each issues into the same store.
#[tokio::test]
async fn one_api_server_accepts_the_tokens_of_servers_sharing_a_store() {
    bounded(async {
        let store = TokenStore::default();
        let oauth = OAuth2Server::builder()
            .client(RegisteredClient::public("cli"))
            .token_store(store.clone())
            .start()
            .await;
        let dynamo = DynamoSqlServer::builder()
            .client("id", "secret")
            .token_store(store.clone())
            .start()
            .await;
        let ocient = OcientServer::builder()
            .user("u", "p")
            .token_store(store.clone())
            .start()
            .await;
        let api = ApiServer::start(&oauth).await;

        let oauth_token = oauth.authorize("cli", "").access_token;
        let dynamo_token = call(Method::POST, &dynamo.token_url())
            .json(&json!({ "clientId": "id", "clientSecret": "secret" }))
            .send()
            .await
            .body["data"]["accessToken"]
            .clone();
        let ocient_token = call(Method::POST, &ocient.login_url())
            .json(&json!({ "username": "u", "password": "p" }))
            .send()
            .await
            .body["access_token"]
            .clone();
        for token in [
            oauth_token.as_str(),
            dynamo_token.as_str().unwrap(),
            ocient_token.as_str().unwrap(),
        ] {
            assert_eq!(api_status(&api, token).await, StatusCode::OK, "{token}");
        }
        // A token of one server is no credential at another.
        let answer = call(Method::POST, &ocient.refresh_url())
            .bearer(dynamo_token.as_str().unwrap())
            .json(&json!({}))
            .send()
            .await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
        assert_eq!(store.revoke_access_tokens(), 3);
    })
    .await;
}
