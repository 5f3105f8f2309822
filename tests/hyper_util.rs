//! The layer over `hyper_util::client::legacy::Client`, HTTP/1.1 and
//! HTTP/2 (h2c, prior knowledge), against the loopback identity and API
//! servers: the `ReplayBody` request type fits the client's body bounds,
//! bursts survive a revocation with one refresh, and over HTTP/2 the
//! injected header is never entered into the HPACK tables (checked on the
//! wire, through a recording TCP proxy).

// `pub`: this binary uses a subset of the shared fixtures.
pub mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::Version;
use http_body_util::{BodyExt, Full};
use hyper::header::AUTHORIZATION;
use hyper::Request;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower::{ServiceBuilder, ServiceExt};
use tower_http::follow_redirect::FollowRedirectLayer;
use tower_token_refresh::{
    refresh_fn, RefreshError, ReplayBody, TokenHandle, TokenRefresh, TokenRefreshLayer, TokenSet,
};

use support::body::{full, ReqBody};
use support::bounded;
use support::redirects::Redirects;
use support::{get, post, ApiServer, CognitoClient, IdentityServer, DEMO_PASSWORD, DEMO_USER};

type Layered = TokenRefresh<Client<HttpConnector, ReplayBody<ReqBody>>>;

/// A hyper-util client speaking `version` only, wrapped in a layer that
/// refreshes through the identity server; starts with a fresh login.
async fn layered(identity: &IdentityServer, version: Version) -> (TokenHandle, Layered) {
    let cognito = CognitoClient::new(identity.base_url());
    let login = cognito
        .login(DEMO_USER, DEMO_PASSWORD)
        .await
        .expect("login");
    let layer = TokenRefreshLayer::builder(cognito.refresher())
        .initial_tokens(login)
        // The revocation comes milliseconds after the login.
        .min_refresh_interval(Duration::ZERO)
        .build();
    let mut client = Client::builder(TokioExecutor::new());
    client.http2_only(version == Version::HTTP_2);
    let handle = layer.handle();
    let service = ServiceBuilder::new()
        .layer(layer)
        .service(client.build_http());
    (handle, service)
}

/// `n` requests at once, alternating GETs and POSTs with a JSON body; each
/// must be answered `200` over `version`, a POST with its body echoed.
async fn burst(client: &Layered, url: &str, n: usize, version: Version) {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let client = client.clone();
            let body = format!(r#"{{"order":{i}}}"#);
            let request = if i % 2 == 0 {
                post(url, "application/json", full(body.clone()))
            } else {
                get(url)
            };
            tokio::spawn(async move {
                let response = client.oneshot(request).await.expect("answered");
                assert_eq!(response.status(), 200, "request {i}");
                assert_eq!(response.version(), version, "request {i}");
                let echoed = response.into_body().collect().await.unwrap().to_bytes();
                if i % 2 == 0 {
                    assert_eq!(echoed, body.as_bytes(), "request {i}: body replayed intact");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("request task panicked");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_and_http2_bursts_survive_a_revocation_with_one_refresh() {
    bounded(async {
        for version in [Version::HTTP_11, Version::HTTP_2] {
            let identity = IdentityServer::builder().start().await;
            let api = ApiServer::start(&identity).await;
            let (handle, client) = layered(&identity, version).await;
            let url = api.url("/v1/orders");

            burst(&client, &url, 200, version).await;
            assert_eq!(api.revoke_current(), 1);
            burst(&client, &url, 200, version).await;

            assert_eq!(identity.stats().refresh_calls, 1, "{version:?}");
            let stats = handle.stats();
            let api = api.stats();
            assert_eq!(stats.refreshes, 1, "{version:?}");
            assert_eq!(stats.rejections, api.unauthorized, "{version:?}");
            assert_eq!(stats.retries, api.unauthorized, "{version:?}");
            assert!(
                api.unauthorized >= 1,
                "{version:?}: the revocation was noticed"
            );
            assert_eq!(api.ok, 400, "{version:?}");
        }
    })
    .await;
}

/// A TCP proxy to `upstream` that records what clients send.
async fn recording_proxy(upstream: SocketAddr) -> (SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sent = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&sent);
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = TcpStream::connect(upstream).await.unwrap();
            let (mut from_client, mut to_client) = client.into_split();
            let (mut from_server, mut to_server) = server.into_split();
            let record = Arc::clone(&record);
            tokio::spawn(async move {
                let mut buf = vec![0; 16 * 1024];
                while let Ok(n @ 1..) = from_client.read(&mut buf).await {
                    record.lock().unwrap().extend_from_slice(&buf[..n]);
                    if to_server.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
            });
        }
    });
    (addr, sent)
}

/// The HPACK header blocks of the HEADERS frames (with their
/// CONTINUATIONs) in a client's HTTP/2 byte stream (RFC 9113 §6.2, §6.10).
fn header_blocks(stream: &[u8]) -> Vec<Vec<u8>> {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    assert!(stream.starts_with(PREFACE), "an h2c prior-knowledge stream");
    let mut rest = &stream[PREFACE.len()..];
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    while rest.len() >= 9 {
        let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
        let (kind, flags) = (rest[3], rest[4]);
        let Some(payload) = rest.get(9..9 + len) else {
            break; // the recording ended mid-frame
        };
        match kind {
            0x1 => {
                let pad = if flags & 0x08 != 0 {
                    payload[0] as usize
                } else {
                    0
                };
                let start = usize::from(flags & 0x08 != 0) + if flags & 0x20 != 0 { 5 } else { 0 };
                blocks.push(payload[start..payload.len() - pad].to_vec());
            }
            0x9 => blocks
                .last_mut()
                .expect("after HEADERS")
                .extend_from_slice(payload),
            _ => {}
        }
        rest = &rest[9 + len..];
    }
    blocks
}

/// `authorization` (static table index 23) as a literal never indexed
/// (RFC 7541 §6.2.3): `0001` + 4-bit prefix 15, then 23 - 15 = 8.
const NEVER_INDEXED_AUTHORIZATION: [u8; 2] = [0x1F, 0x08];

/// `authorization` as a literal without indexing (RFC 7541 §6.2.2): `0000`
/// and the 4-bit prefix 15, then 8. The h2 encoder sends this for a value
/// not marked sensitive: it keeps `authorization` values out of its own
/// dynamic table (as nghttp2 does), but nothing tells an intermediary to.
const WITHOUT_INDEXING_AUTHORIZATION: [u8; 2] = [0x0F, 0x08];

fn never_indexed(block: &[u8]) -> bool {
    block.windows(2).any(|w| w == NEVER_INDEXED_AUTHORIZATION)
}

/// The value literals (length prefix and Huffman bytes, RFC 7541 §5.2)
/// that follow `representation` in `block`: one for each field sent so,
/// and perhaps a few spurious ones where the two bytes occur by chance.
fn literals_after(block: &[u8], representation: [u8; 2]) -> Vec<Vec<u8>> {
    (0..block.len().saturating_sub(1))
        .filter(|&at| block[at..at + 2] == representation)
        .filter_map(|at| {
            let literal = &block[at + 2..];
            // A 7-bit prefix integer: 127 means more bytes follow.
            let mut length = usize::from(*literal.first()? & 0x7F);
            let mut head = 1;
            if length == 0x7F {
                let mut shift = 0;
                loop {
                    let byte = *literal.get(head)?;
                    head += 1;
                    length += usize::from(byte & 0x7F) << shift;
                    shift += 7;
                    if byte & 0x80 == 0 {
                        break;
                    }
                }
            }
            literal.get(..head + length).map(<[u8]>::to_vec)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http2_the_injected_header_is_never_indexed_by_hpack() {
    bounded(async {
        let identity = IdentityServer::builder().start().await;
        let api = ApiServer::start(&identity).await;
        let api_addr: SocketAddr = api.url("").trim_start_matches("http://").parse().unwrap();

        // Through the layer: every request's header block carries the token
        // as a never-indexed literal, so no HPACK table ever holds it.
        let (proxy, sent) = recording_proxy(api_addr).await;
        let (handle, client) = layered(&identity, Version::HTTP_2).await;
        let url = format!("http://{proxy}/v1/orders");
        for _ in 0..10 {
            let response = client.clone().oneshot(get(&url)).await.unwrap();
            assert_eq!(response.status(), 200);
        }
        let blocks = header_blocks(&sent.lock().unwrap());
        assert_eq!(blocks.len(), 10);
        assert!(blocks.iter().all(|b| never_indexed(b)), "{blocks:02x?}");
        let injected = literals_after(&blocks[0], NEVER_INDEXED_AUTHORIZATION);

        // Control: the same header, with the same token, set by hand and
        // not marked sensitive, goes out as the encoder sends any
        // `authorization`: a literal without indexing, carrying the very
        // bytes the layer sent, with only the never-indexed bit unset.
        let (proxy, sent) = recording_proxy(api_addr).await;
        let plain: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build_http();
        let token = handle.tokens().expect("the login's tokens");
        for _ in 0..10 {
            let request = Request::get(format!("http://{proxy}/v1/orders"))
                .header(
                    AUTHORIZATION,
                    format!("Bearer {}", token.access_token().expose()),
                )
                .body(Full::default())
                .unwrap();
            assert_eq!(plain.request(request).await.unwrap().status(), 200);
        }
        let blocks = header_blocks(&sent.lock().unwrap());
        assert_eq!(blocks.len(), 10);
        assert!(blocks.iter().all(|b| !never_indexed(b)), "{blocks:02x?}");
        for block in &blocks {
            let sent = literals_after(block, WITHOUT_INDEXING_AUTHORIZATION);
            assert!(
                sent.iter().any(|literal| injected.contains(literal)),
                "no `authorization` with the token, without indexing: {block:02x?}"
            );
        }
    })
    .await;
}

/// Over HTTP/1.1, a rejected request's retry goes out on the connection
/// that carried the rejection: the layer lets go of the rejection before
/// the retry, and a body of a few KiB has arrived with its head, so the
/// client can put the connection back in its pool. (A rejection body too
/// large to have arrived by then is dropped unread, and the client closes
/// that connection: 300 KB did, here.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http1_the_retry_reuses_the_connection_that_carried_the_rejection() {
    bounded(async {
        let peers = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&peers);
        let api = support::server::Server::start(move |request: Request<_>, peer| {
            seen.lock().unwrap().push(peer);
            let accepted = request.headers()[AUTHORIZATION] == "Bearer new";
            async move {
                let (status, body) = if accepted {
                    (200, "{\"ok\":true}".to_owned())
                } else {
                    // A body of some size, as error pages often are.
                    (401, format!("{{\"error\":\"{}\"}}", "x".repeat(4000)))
                };
                hyper::Response::builder()
                    .status(status)
                    .body(Full::new(Bytes::from(body)))
                    .unwrap()
            }
        })
        .await;
        // The client's connection task puts the connection back in the
        // pool once the rejection is let go; the refresh gives it time to,
        // as the reqwest twin does (a margin for a loaded machine, not a
        // measurement).
        let refresher = refresh_fn(|_| async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok::<_, RefreshError>(TokenSet::new("new"))
        });
        let layer = TokenRefreshLayer::builder(refresher)
            .initial_tokens(TokenSet::new("old"))
            .build();
        let handle = layer.handle();
        let client: Layered = ServiceBuilder::new()
            .layer(layer)
            .service(Client::builder(TokioExecutor::new()).build_http());

        let url = format!("{}/v1/items", api.base_url());
        let response = client.oneshot(get(&url)).await.expect("answered");

        assert_eq!(response.status(), 200);
        assert_eq!(handle.stats().retries, 1);
        let peers = peers.lock().unwrap().clone();
        assert_eq!(peers.len(), 2, "the request and its retry");
        assert_eq!(peers[0], peers[1], "one connection for both");
    })
    .await;
}

/// The stack the layer's docs advise for following redirects: tower-http's
/// `FollowRedirect` above the layer, so that each hop goes through it, and
/// `allowed_origins` naming the API, so that a hop elsewhere gets no token
/// and its answer is not the token's business. Without the allow-list the
/// other origin gets the token (the control).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_followed_above_the_layer_take_the_token_only_to_allowed_origins() {
    bounded(async {
        let servers = Redirects::start().await;
        let client = |allowed: Option<&str>| {
            let builder = TokenRefreshLayer::builder(refresh_fn(|_| async {
                Ok::<_, RefreshError>(TokenSet::new("fresh"))
            }))
            .initial_tokens(TokenSet::new("stale"));
            let layer = match allowed {
                Some(origin) => builder.allowed_origins([origin.parse().expect("an origin")]),
                None => builder,
            }
            .build();
            let stack = ServiceBuilder::new()
                .layer(FollowRedirectLayer::new())
                .layer(layer.clone())
                .service(Client::builder(TokioExecutor::new()).build_http());
            (layer.handle(), stack)
        };
        let get = |path: &str| {
            let request = Request::get(servers.url(path));
            request.body(Full::<Bytes>::default()).expect("request")
        };

        let api_origin = servers.api_origin();
        let (handle, api_only) = client(Some(&api_origin));
        let response = api_only.clone().oneshot(get("/away")).await.unwrap();
        assert_eq!(response.status(), 401);
        assert_eq!(servers.elsewhere_saw(), vec![None]);
        let stats = handle.stats();
        assert_eq!(
            (stats.rejections, stats.refreshes, stats.retries),
            (0, 0, 0)
        );
        // Within the API the token goes along, and its rejection is acted on.
        let response = api_only.oneshot(get("/here")).await.unwrap();
        assert_eq!(response.status(), 200);
        let stats = handle.stats();
        assert_eq!(
            (stats.rejections, stats.refreshes, stats.retries),
            (1, 1, 1)
        );

        // Without the allow-list the other origin gets the token, and its
        // 401 is taken for a rejection: refreshed and retried there too.
        let (handle, everywhere) = client(None);
        let response = everywhere.oneshot(get("/away")).await.unwrap();
        assert_eq!(response.status(), 401);
        let leaked = ["Bearer stale", "Bearer fresh"].map(|t| Some(t.to_owned()));
        assert_eq!(servers.elsewhere_saw()[1..], leaked);
        assert_eq!(handle.stats().refreshes, 1);
    })
    .await;
}
