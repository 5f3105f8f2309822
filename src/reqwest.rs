//! A [`reqwest_middleware`] adapter: the layer's token, refresh and retry
//! for `reqwest` clients.
//!
//! [`TokenRefreshMiddleware`] drives the token manager of the
//! [`TokenRefreshLayer`] it is made from, so a reqwest client and every
//! tower stack built from that layer share one token, one single-flight
//! refresh and one set of [`Stats`](crate::Stats). It behaves as the layer
//! does: a fresh token is read without a lock; a stale one is sent while one
//! background refresh runs; an expired one makes the request wait for the
//! refresh; a rejection (the layer's classifier decides) joins or starts one
//! refresh and retries once, or just retries if the token was already
//! replaced; `min_refresh_interval`, backoff, rate limits and terminal
//! failures apply alike. The layer's transport rules hold too: plain
//! `http://` only to loopback unless allowed, the origin allow-list, and a
//! request that already carries `Authorization` passes through untouched.
//!
//! What reqwest changes:
//!
//! - A rejected request is retried from [`reqwest::Request::try_clone`]. A
//!   body held in memory (bytes, a string, JSON, a form) is sent again as
//!   it was; a streaming body (`Body::wrap_stream`, `Body::wrap`, and a
//!   `multipart` form, which reqwest streams however small) cannot be
//!   cloned, so the original rejection is returned. The refresh still runs,
//!   and the next request gets the new token. The layer's replay cap does
//!   not apply: a clonable body is already in memory.
//! - reqwest adds the client's `default_headers` after every middleware
//!   has run, and only where the request has no such header: a default
//!   `Authorization` is invisible here, so the token takes its place. Set
//!   an `Authorization` of your own on the request to have it pass through.
//! - reqwest follows redirects itself. A rejection from another origin
//!   than the request's is returned as it is, neither refreshed nor
//!   retried: it is not about the token, which reqwest drops on a hop that
//!   changes host, port or scheme. (reqwest 0.13 rebuilds each hop from
//!   the request's headers and drops them only on such a hop, so a second
//!   hop within the other origin carries the token again: build the
//!   client with [`same_origin_redirects`], or with redirects off,
//!   `reqwest::redirect::Policy::none()`, where a redirect may lead
//!   elsewhere.) A request that is not idempotent (a `POST`) rejected after
//!   a redirect is not retried: it may have taken effect at an earlier
//!   hop. The refresh still runs. A response tells only the URL it came
//!   from, so two chains look like none: one back to the request's own URL
//!   (a `POST` answered `303 See Other` with its own URL, then the `GET`
//!   rejected), whose `POST` is sent again; and one that leaves the origin
//!   and comes back, whose last hop carries no token and whose rejection
//!   is taken for the token's. Where either can happen, build the client
//!   with redirects off (the second is also ruled out by
//!   [`same_origin_redirects`]).
//! - reqwest sends through the proxies its environment names
//!   (`HTTP_PROXY`, `HTTPS_PROXY`), loopback destinations included unless
//!   `NO_PROXY` exempts them. The plain-http rule judges the request's
//!   URL, so a plain-http request to loopback goes to such a proxy with
//!   its token, in clear: exempt loopback with `NO_PROXY`, or build the
//!   client with [`reqwest::ClientBuilder::no_proxy`], where that matters.
//! - A request's own timeout ([`reqwest::RequestBuilder::timeout`]) covers
//!   everything the middleware does for it: waiting for a token, the
//!   first attempt, waiting for the refresh after a rejection and the
//!   retry, each attempt sent with what is left of it. reqwest applies it
//!   per attempt only, so without this a request could take the wait for a
//!   refresh and then its whole timeout twice over. Past it the request
//!   fails with an [`Error`] whose [`is_timeout`](Error::is_timeout) is
//!   true (or reqwest's own timeout error, if an attempt ran it out). That
//!   error is a [`reqwest_middleware::Error::Middleware`], whose own
//!   `is_timeout` is false: ask [`token_error`] instead. A timeout set on
//!   the client ([`reqwest::ClientBuilder::timeout`]) is not visible to
//!   middleware and still applies per attempt.
//! - A request that cannot get a token fails with
//!   [`reqwest_middleware::Error::Middleware`] holding this crate's
//!   [`Error`]; [`token_error`] gets it back.
//! - Add the middleware last (the last `.with`). One added after it sees
//!   the request later: a change it makes to the URL (a rewrite to another
//!   host) escapes the origin allow-list and the plain-http rule, which
//!   were checked before it, and every rejection then looks like another
//!   origin's, never refreshed.
//! - [`TokenRefreshMiddleware::handle`] (the token handle) takes the name
//!   of [`Middleware::handle`]: a middleware wrapping this one calls
//!   `Middleware::handle(&inner, request, extensions, next)`.
//!
//! ```
//! use std::time::Duration;
//! use http::{HeaderMap, StatusCode};
//! use reqwest_middleware::ClientBuilder;
//! use tower_token_refresh::reqwest::TokenRefreshMiddleware;
//! use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! // An API on loopback that only accepts the refreshed token, and echoes
//! // the body it gets.
//! let app = axum::Router::new().route("/", axum::routing::post(
//!     |headers: HeaderMap, body: String| async move {
//!         match headers["authorization"] == "Bearer new" {
//!             true => (StatusCode::OK, body),
//!             false => (StatusCode::UNAUTHORIZED, String::new()),
//!         }
//!     },
//! ));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
//! let url = format!("http://{}/", listener.local_addr().unwrap());
//! tokio::spawn(async move { axum::serve(listener, app).await });
//!
//! let layer = TokenRefreshLayer::builder(refresh_fn(|_ctx| async {
//!         Ok::<_, RefreshError>(TokenSet::new("new").with_expires_in(Duration::from_secs(3600)))
//!     }))
//!     .initial_tokens(TokenSet::new("old"))
//!     .build();
//! let handle = layer.handle();
//! // Redirects stay within the request's origin: reqwest's default policy
//! // would carry the token on from the second hop of another (below).
//! let reqwest = reqwest::Client::builder()
//!     .redirect(tower_token_refresh::reqwest::same_origin_redirects())
//!     .build()
//!     .unwrap();
//! let client = ClientBuilder::new(reqwest)
//!     .with(TokenRefreshMiddleware::new(&layer))
//!     .build();
//!
//! // Sent with "old", rejected, refreshed once, retried with "new" and the
//! // same body.
//! let response = client.post(&url).body("payload").send().await.unwrap();
//! assert_eq!(response.status(), StatusCode::OK);
//! assert_eq!(response.text().await.unwrap(), "payload");
//! assert_eq!((handle.stats().refreshes, handle.stats().retries), (1, 1));
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use ::reqwest::header::AUTHORIZATION;
use ::reqwest::{Request, Response, Url};
use http::{Extensions, Uri};
use reqwest_middleware::{Middleware, Next};
use tokio::time::Instant;

use crate::classify::{ClassifyRejection, Unauthorized};
use crate::error::ErrorKind;
use crate::manager::{later, timer_at, Credential, Decision, Newest};
use crate::service::drain::Drain;
use crate::service::Core;
use crate::{Error, TokenHandle, TokenRefreshLayer};

/// A [`Middleware`] that adds `Authorization: Bearer …` to requests, keeps
/// the token current and retries a rejected request once.
///
/// Made from a [`TokenRefreshLayer`] (with [`TokenRefreshMiddleware::new`]
/// or [`TokenRefreshLayer::reqwest_middleware`]), whose token state and
/// settings it shares. See the [module docs](self) for what differs from the
/// tower layer.
///
/// ```
/// use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
/// use tower_token_refresh::reqwest::TokenRefreshMiddleware;
/// use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};
///
/// fn client(layer: &TokenRefreshLayer) -> ClientWithMiddleware {
///     // Redirects kept within the request's origin: on reqwest's default
///     // policy, a second hop within another origin carries the token.
///     let reqwest = reqwest::Client::builder()
///         .redirect(tower_token_refresh::reqwest::same_origin_redirects())
///         .build()
///         .unwrap();
///     // The last `.with`: middleware added after it would change the
///     // request after its origin was checked.
///     ClientBuilder::new(reqwest)
///         .with(TokenRefreshMiddleware::new(layer))
///         .build()
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// # use tokio::io::{AsyncReadExt, AsyncWriteExt};
/// # // An API on loopback that answers with the Authorization it got.
/// # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
/// # let url = format!("http://{}/items", listener.local_addr().unwrap());
/// # tokio::spawn(async move {
/// #     let (mut socket, _) = listener.accept().await.unwrap();
/// #     let mut request = vec![0; 4096];
/// #     let read = socket.read(&mut request).await.unwrap();
/// #     let request = String::from_utf8_lossy(&request[..read]).into_owned();
/// #     let auth = request.lines().find_map(|line| {
/// #         let (name, value) = line.split_once(": ")?;
/// #         name.eq_ignore_ascii_case("authorization").then_some(value)
/// #     }).unwrap_or("");
/// #     let answer = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{auth}", auth.len());
/// #     socket.write_all(answer.as_bytes()).await.unwrap();
/// # });
/// let layer = TokenRefreshLayer::builder(refresh_fn(|_| async {
///         Ok::<_, RefreshError>(TokenSet::new("access"))
///     }))
///     .build();
/// let response = client(&layer).get(url).send().await.unwrap();
/// assert_eq!(response.text().await.unwrap(), "Bearer access");
/// # }
/// ```
///
/// # Clone
///
/// Clones share the token state.
pub struct TokenRefreshMiddleware<C = Unauthorized> {
    core: Arc<Core<C>>,
}

impl<C> TokenRefreshMiddleware<C> {
    /// A middleware sharing `layer`'s token, refresh, statistics and
    /// settings (classifier, reactive retry, transport rules).
    ///
    /// ```
    /// # use tower_token_refresh::{refresh_fn, RefreshError, TokenSet};
    /// use tower_token_refresh::reqwest::TokenRefreshMiddleware;
    /// use tower_token_refresh::TokenRefreshLayer;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// # let source = refresh_fn(|_| async { Ok::<_, RefreshError>(TokenSet::new("t")) });
    /// let layer = TokenRefreshLayer::builder(source).build();
    /// let reqwest = reqwest::Client::builder()
    ///     .redirect(tower_token_refresh::reqwest::same_origin_redirects())
    ///     .build()
    ///     .unwrap();
    /// let client = reqwest_middleware::ClientBuilder::new(reqwest)
    ///     .with(TokenRefreshMiddleware::new(&layer))
    ///     .build();
    /// // Nothing listens there: the token is fetched, then the send fails.
    /// assert!(client.get("http://127.0.0.1:1/").send().await.is_err());
    /// // The layer (and the tower services made from it) saw that refresh.
    /// assert_eq!(layer.handle().stats().refreshes, 1);
    /// assert_eq!(layer.handle().tokens().unwrap().access_token().expose(), "t");
    /// # }
    /// ```
    pub fn new(layer: &TokenRefreshLayer<C>) -> Self {
        Self {
            core: Arc::clone(&layer.core),
        }
    }

    /// A handle on the shared token state.
    ///
    /// ```
    /// # use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};
    /// # let source = refresh_fn(|_| async { Ok::<_, RefreshError>(TokenSet::new("t")) });
    /// let layer = TokenRefreshLayer::builder(source).build();
    /// let middleware = layer.reqwest_middleware();
    /// // The middleware's handle and the layer's see one token state.
    /// middleware.handle().set_tokens(TokenSet::new("set")).unwrap();
    /// assert_eq!(layer.handle().tokens().unwrap().access_token().expose(), "set");
    /// ```
    pub fn handle(&self) -> TokenHandle {
        TokenHandle::new(self.core.manager.clone())
    }
}

impl<C> TokenRefreshLayer<C> {
    /// A [`reqwest_middleware`] adapter sharing this layer's token state;
    /// the same as [`TokenRefreshMiddleware::new`].
    ///
    /// ```
    /// # use tower_token_refresh::{refresh_fn, RefreshError, TokenSet};
    /// use tower_token_refresh::TokenRefreshLayer;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// # let source = refresh_fn(|_| async { Ok::<_, RefreshError>(TokenSet::new("t")) });
    /// let layer = TokenRefreshLayer::builder(source).build();
    /// let reqwest = reqwest::Client::builder()
    ///     .redirect(tower_token_refresh::reqwest::same_origin_redirects())
    ///     .build()
    ///     .unwrap();
    /// let client = reqwest_middleware::ClientBuilder::new(reqwest)
    ///     .with(layer.reqwest_middleware())
    ///     .build();
    /// // Nothing listens there: the token is fetched, then the send fails.
    /// assert!(client.get("http://127.0.0.1:1/").send().await.is_err());
    /// assert_eq!(layer.handle().stats().refreshes, 1);
    /// # }
    /// ```
    pub fn reqwest_middleware(&self) -> TokenRefreshMiddleware<C> {
        TokenRefreshMiddleware::new(self)
    }
}

/// A redirect policy that follows redirects within the origin a request was
/// sent to (up to 10 hops) and stops at one to any other origin, returning
/// that redirect as the answer. reqwest drops `Authorization` only on a
/// hop that changes origin, and rebuilds the next hop from the request's
/// headers again: a second hop within another origin would carry the
/// token there.
///
/// ```
/// use tower_token_refresh::reqwest::same_origin_redirects;
/// # use tokio::io::{AsyncReadExt, AsyncWriteExt};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// # // A server that redirects every request to another origin.
/// # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
/// # let api = listener.local_addr().unwrap();
/// # tokio::spawn(async move {
/// #     while let Ok((mut stream, _)) = listener.accept().await {
/// #         let _ = stream.read(&mut [0; 4096]).await;
/// #         let moved = "HTTP/1.1 302 Found\r\nlocation: http://127.0.0.2:1/elsewhere\r\ncontent-length: 0\r\n\r\n";
/// #         let _ = stream.write_all(moved.as_bytes()).await;
/// #     }
/// # });
/// let client = reqwest::Client::builder()
///     .redirect(same_origin_redirects())
///     .build()
///     .unwrap();
/// // `api` answers `302` to http://127.0.0.2:1/elsewhere: another origin,
/// // so the redirect is the answer, and nothing is sent there.
/// let answer = client.get(format!("http://{api}/items")).send().await.unwrap();
/// assert_eq!(answer.status(), 302);
/// assert_eq!(answer.url().as_str(), format!("http://{api}/items"));
/// # }
/// ```
pub fn same_origin_redirects() -> ::reqwest::redirect::Policy {
    /// reqwest's own default limit.
    const MOST_HOPS: usize = 10;
    ::reqwest::redirect::Policy::custom(|attempt| {
        let first = attempt.previous().first().map(Url::origin);
        if attempt.previous().len() > MOST_HOPS {
            attempt.error("too many redirects")
        } else if first == Some(attempt.url().origin()) {
            attempt.follow()
        } else {
            attempt.stop()
        }
    })
}

/// This crate's [`Error`] inside a [`reqwest_middleware::Error`], if that is
/// what it holds: why a request could not get a token (re-authentication
/// required, a failed refresh, plain `http://` refused).
///
/// ```
/// use tower_token_refresh::reqwest::token_error;
/// use tower_token_refresh::{refresh_fn, RefreshError, TokenRefreshLayer, TokenSet};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let layer = TokenRefreshLayer::builder(refresh_fn(|_| async {
///         Ok::<_, RefreshError>(TokenSet::new("access"))
///     }))
///     .build();
/// let reqwest = reqwest::Client::builder()
///     .redirect(tower_token_refresh::reqwest::same_origin_redirects())
///     .build()
///     .unwrap();
/// let client = reqwest_middleware::ClientBuilder::new(reqwest)
///     .with(layer.reqwest_middleware())
///     .build();
///
/// // Plain http:// to another host: the token is refused before anything
/// // is sent, and the error says why.
/// let error = client.get("http://api.example.com/items").send().await.unwrap_err();
/// let refused = match token_error(&error) {
///     Some(e) if e.is_reauth_required() => unreachable!("sign in again"),
///     Some(e) => e.is_insecure_transport(),
///     None => unreachable!("a transport error: {error}"),
/// };
/// assert!(refused);
/// assert_eq!(layer.handle().stats().refreshes, 0);
/// # }
/// ```
pub fn token_error(error: &reqwest_middleware::Error) -> Option<&Error> {
    match error {
        reqwest_middleware::Error::Middleware(error) => error.downcast_ref::<Error>(),
        reqwest_middleware::Error::Reqwest(_) => None,
    }
}

impl<C: ClassifyRejection> TokenRefreshMiddleware<C> {
    /// The tower service's `call` and response future in one `async fn`:
    /// the same manager calls in the same order.
    async fn send(
        &self,
        mut request: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        let core = &*self.core;
        let origin = match origin(request.url()) {
            Some(origin) if !request.headers().contains_key(AUTHORIZATION) => origin,
            // Not ours to touch: an explicit Authorization, or a URL
            // without a host, which no transport rule can vouch for.
            _ => return next.run(request, extensions).await,
        };
        if !core.rules.allows(&origin, request.headers()) {
            return next.run(request, extensions).await;
        }
        if core.rules.is_insecure(&origin) {
            return Err(into_middleware(Error::new(ErrorKind::InsecureTransport)));
        }
        // The caller's timeout, counted from here: reqwest counts it anew
        // for each attempt, from when the attempt starts.
        let deadline = request
            .timeout()
            .map(|timeout| later(Instant::now(), *timeout));
        let credential = match core.manager.ready() {
            Some(credential) => credential,
            None => within(deadline, core.manager.clone().acquire()).await?,
        };
        limit_to(&mut request, deadline)?;
        // Copied before the header goes in: the retry gets its own token.
        let retry = if core.reactive_retry {
            request.try_clone()
        } else {
            None
        };
        let generation = credential.authorize(request.headers_mut());
        let response = next.clone().run(request, extensions).await?;
        if !answered_by(&response, &origin)
            || !core
                .classifier
                .is_rejection(response.status(), response.headers())
        {
            return Ok(response);
        }
        let decision = core.manager.rejected(generation);
        // The refresh (if the decision started one) runs in its own task;
        // without a clone of the request the rejection is the answer, and
        // the next request gets the new token. So it is after a redirect,
        // for a request that is not idempotent: the rejection came from a
        // later hop, and the request may have taken effect at an earlier
        // one (a POST answered `303 See Other`, then a `GET` of the result
        // rejected); sent again, it would take effect twice.
        let redirected =
            |retry: &Request| without_fragment(response.url()) != without_fragment(retry.url());
        let Some(mut retry) =
            retry.filter(|retry| retry.method().is_idempotent() || !redirected(retry))
        else {
            return Ok(response);
        };
        let wait_for = |flight| within(deadline, core.manager.clone().wait(flight));
        let drain_bound = deadline.map_or(core.manager.refresh_timeout(), |deadline| {
            left_until(deadline).min(core.manager.refresh_timeout())
        });
        let credential = match decision {
            // The token is too young to refresh: the rejection is the
            // answer, as in the tower layer.
            Decision::GiveUp => return Ok(response),
            // No refresh can run now: the failure's typed error, as for a
            // request that waited for the refresh that failed. The
            // rejection is read first, as below: the failure is no reason
            // to close the connection it came on.
            Decision::Fail(error) => {
                drain(response, drain_bound).await;
                return Err(into_middleware(error));
            }
            // The rejection is read and released before retrying or
            // waiting: it frees the connection.
            Decision::Use(credential) => {
                drain(response, drain_bound).await;
                credential
            }
            Decision::Wait(flight) => {
                drain(response, drain_bound).await;
                wait_for(flight).await?
            }
        };
        let credential = match core.manager.newest(credential) {
            Newest::Send(credential) => credential,
            // Rejected meanwhile by another request's answer: its refresh
            // is waited for, as after this request's own rejection, or the
            // failure that blocks it returned.
            Newest::Wait(flight) => wait_for(flight).await?,
            Newest::Fail(error) => return Err(into_middleware(error)),
        };
        limit_to(&mut retry, deadline)?;
        core.manager.count_retry();
        credential.authorize(retry.headers_mut());
        let response = next.run(retry, extensions).await?;
        if answered_by(&response, &origin)
            && core
                .classifier
                .is_rejection(response.status(), response.headers())
        {
            // Counted, not acted on: acting could start a second refresh for
            // one request (the refresh-loop pitfall).
            core.manager.count_rejection();
        }
        Ok(response)
    }
}

/// `wait` for a token, given up at `deadline` (the request's own timeout).
async fn within(
    deadline: Option<Instant>,
    wait: impl Future<Output = Result<Credential, Error>>,
) -> reqwest_middleware::Result<Credential> {
    let waited = match deadline {
        Some(deadline) => tokio::time::timeout_at(deadline, wait)
            .await
            .unwrap_or_else(|_| Err(Error::new(ErrorKind::DeadlineElapsed))),
        None => wait.await,
    };
    waited.map_err(into_middleware)
}

/// Gives `request` what is left until `deadline` as its timeout, or fails
/// it if nothing is left.
fn limit_to(request: &mut Request, deadline: Option<Instant>) -> reqwest_middleware::Result<()> {
    let Some(deadline) = deadline else {
        return Ok(());
    };
    let left = left_until(deadline);
    if left.is_zero() {
        return Err(into_middleware(Error::new(ErrorKind::DeadlineElapsed)));
    }
    *request.timeout_mut() = Some(left);
    Ok(())
}

/// What is left from now until `deadline`.
fn left_until(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// Reads a rejection's body to its end with the tower layer's [`Drain`]
/// (for no longer than `bound`) before dropping it. Dropped unread, a
/// response closes its HTTP/1.1 connection, so the retry needs a new one,
/// and resets its HTTP/2 stream, which past h2's limit closes the whole
/// connection with every request on it. Usually the body came with its
/// head: then it is read at the first poll, without a timer.
async fn drain(response: Response, bound: Duration) {
    let mut drain = Drain::new(::http::Response::from(response).into_body());
    let read_at_once = std::future::poll_fn(|cx| Poll::Ready(drain.poll(cx).is_ready())).await;
    if read_at_once {
        return;
    }
    let rest = std::future::poll_fn(|cx| drain.poll(cx));
    // On a runtime without timers no bound can be set: not waited for at
    // all, as in the tower layer, since a body that never ends must not
    // hold the request (nor panic in the caller's task).
    if let Some(bound) = timer_at(later(Instant::now(), bound)) {
        tokio::select! {
            () = rest => {}
            () = bound => {}
        }
    }
}

impl<C: ClassifyRejection> Middleware for TokenRefreshMiddleware<C> {
    // The signature `#[async_trait]` gives the trait's `async fn handle`,
    // written out so that the crate does not depend on async-trait.
    fn handle<'life0, 'life1, 'life2, 'async_trait>(
        &'life0 self,
        req: Request,
        extensions: &'life1 mut Extensions,
        next: Next<'life2>,
    ) -> Pin<Box<dyn Future<Output = reqwest_middleware::Result<Response>> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(self.send(req, extensions, next))
    }
}

fn into_middleware(error: Error) -> reqwest_middleware::Error {
    reqwest_middleware::Error::middleware(error)
}

/// Whether `response` came from `origin`, where the token was sent. reqwest
/// follows redirects itself; a rejection from another origin is not about
/// the token (reqwest drops `Authorization` on a hop that changes host,
/// port or scheme), and taken for one, every request through such a
/// redirect would refresh a good token and retry in vain. A chain that
/// leaves the origin and comes back to it ends without the token too, and
/// that last answer is still taken for the token's: the response does not
/// tell the chain.
fn answered_by(response: &Response, origin: &Uri) -> bool {
    let url = response.url();
    // `origin` was made from a `Url` too: the same lowercase host, and no
    // port where it is the scheme's default. Compared field by field, with
    // no `Uri` built per response.
    (Some(url.scheme()), url.host_str(), url.port())
        == (origin.scheme_str(), origin.host(), origin.port_u16())
}

/// `url` without its `#fragment`, which is never sent: a response's URL
/// has none (reqwest rebuilds it from the `http::Uri` it sent, which keeps
/// no fragment), so compared whole, a request to a URL with one always
/// looked redirected (found in review).
fn without_fragment(url: &Url) -> &str {
    let whole = url.as_str();
    match url.fragment() {
        Some(fragment) => &whole[..whole.len() - fragment.len() - 1],
        None => whole,
    }
}

/// The origin of `url` as the `http::Uri` the layer's transport rules read,
/// or `None` for a URL without a host. Without the userinfo, which may be
/// a credential: the rules read only the host and port, and a value kept
/// by the middleware holds no secret it does not need (found in review).
fn origin(url: &Url) -> Option<Uri> {
    if !url.has_host() {
        return None;
    }
    let authority = url.authority();
    let host_and_port = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host_and_port)| host_and_port);
    Uri::builder()
        .scheme(url.scheme())
        .authority(host_and_port)
        .path_and_query("/")
        .build()
        .ok()
}

impl<C> Clone for TokenRefreshMiddleware<C> {
    fn clone(&self) -> Self {
        Self {
            core: Arc::clone(&self.core),
        }
    }
}

impl<C> fmt::Debug for TokenRefreshMiddleware<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenRefreshMiddleware")
            .field("manager", &self.core.manager)
            .field("reactive_retry", &self.core.reactive_retry)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin_of(url: &str) -> Option<Uri> {
        origin(&Url::parse(url).unwrap())
    }

    #[test]
    fn origin_keeps_scheme_host_and_explicit_port() {
        let uri = origin_of("https://user:pw@API.example.com:8443/v1?q=1#f").unwrap();
        assert_eq!(uri.scheme_str(), Some("https"));
        assert_eq!(uri.host(), Some("api.example.com"));
        assert_eq!(uri.port_u16(), Some(8443));
        assert_eq!(
            uri.authority().unwrap(),
            "api.example.com:8443",
            "no userinfo"
        );
        // The scheme's default port is implied, as the transport rules expect.
        assert_eq!(
            origin_of("https://h.example:443/").unwrap().port_u16(),
            None
        );
        let v6 = origin_of("http://[::1]:9000/").unwrap();
        assert_eq!((v6.host(), v6.port_u16()), (Some("[::1]"), Some(9000)));
    }

    #[test]
    fn without_timers_a_rejection_body_still_arriving_is_not_waited_for() {
        crate::test_support::runtime_without_timers().block_on(async {
            // Its sender stays open: the body never ends.
            let (_tx, body) = crate::test_support::body::TestBody::channel();
            let rejection = ::http::Response::new(reqwest::Body::wrap(body));
            let drained = tokio::spawn(drain(rejection.into(), Duration::from_secs(60)));
            crate::test_support::settle().await;
            assert!(drained.is_finished(), "waited for a body that never ends");
            drained.await.expect("the drain does not panic");
        });
    }

    #[test]
    fn url_without_host_has_no_origin() {
        assert!(origin_of("data:text/plain,hi").is_none());
        assert!(origin_of("file:///etc/hosts").is_none());
    }
}
