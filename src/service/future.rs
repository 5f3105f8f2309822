//! [`ResponseFuture`]: send, classify, refresh, retry once.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::request::Parts;
use http::{Extensions, Method, Request, Response, Version};
use http_body::Body;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use super::drain::Drain;
use super::headers::HeadersCopy;
use super::shared::Shared;
use super::uri_copy::UriCopy;
use super::Core;
use crate::body::ReplayBody;
use crate::classify::ClassifyRejection;
use crate::manager::{later, timer_at, Credential, Decision, Flight, Newest, Waiting};
use crate::{BoxError, Error};

/// What a retry needs: a copy of the request head, a replaying body and,
/// once the retry is due, an instance of the inner service (the last
/// retry's on this lane, or a clone; polled ready before the retry). A
/// request held before its first send is kept here whole, and sent once
/// its token has come through an instance taken the same way.
///
/// The service is boxed: it is only there on the slow paths, and inline
/// it would make every response future as large as a client (304 bytes
/// for hyper-util's), copied each time the future moves. An instance is
/// boxed only while it is not ready: most services are always ready, and
/// a send then costs no allocation for it.
pub(crate) struct RetryCopy<S, B> {
    service: Option<Box<S>>,
    head: Head,
    body: ReplayBody<B>,
}

/// The parts of a request head, held as plain fields: `http::request::Parts`
/// cannot be built directly, and building it through `Request::new` then
/// overwriting each default cost a drop of every default on each request.
struct Head {
    method: Method,
    uri: UriCopy,
    version: Version,
    headers: HeadersCopy,
    extensions: Extensions,
}

impl<S: Clone, B> RetryCopy<S, B> {
    /// `None` when the body cannot be replayed (retry off, or over the cap
    /// before sending): then nothing is copied at all. Otherwise `inner`,
    /// the service about to send the request, is kept in `shared` if no
    /// instance is yet: the retry will be sent through a clone of it. Made
    /// before the request's `Authorization` is set.
    ///
    /// Takes the request in parts: rebuilt from them only at the inner
    /// call, the request is copied once fewer per request than when its
    /// body was first mapped into a new request (callgrind, hot-path
    /// bench: 21 instructions).
    #[inline]
    pub(crate) fn of<C>(
        parts: &Parts,
        body: &ReplayBody<B>,
        shared: &Shared<S, C>,
        inner: &S,
    ) -> Option<Self> {
        let body = body.try_clone()?;
        shared.remember(inner);
        Some(Self {
            service: None,
            head: Head {
                method: parts.method.clone(),
                uri: UriCopy::of(&parts.uri),
                version: parts.version,
                headers: HeadersCopy::of(&parts.headers),
                extensions: parts.extensions.clone(),
            },
            body,
        })
    }
}

impl<S, B> RetryCopy<S, B> {
    /// Holds on to a request not sent yet (waiting for its first token).
    fn keep(parts: Parts, body: ReplayBody<B>) -> Self {
        let Parts {
            method,
            uri,
            version,
            headers,
            extensions,
            ..
        } = parts;
        Self {
            service: None,
            head: Head {
                method,
                uri: UriCopy::Whole(Box::new(uri)),
                version,
                headers: HeadersCopy::Map(Box::new(headers)),
                extensions,
            },
            body,
        }
    }

    /// Unpacks the copied URI and headers, once a retry is planned. `None`
    /// if they no longer parse: then there is no retry.
    fn unpacked(mut self) -> Option<Self> {
        self.head.uri = UriCopy::Whole(Box::new(self.head.uri.into_uri()?));
        self.head.headers = HeadersCopy::Map(Box::new(self.head.headers.into_map()?));
        Some(self)
    }

    /// The request to send, in parts and without its `Authorization`
    /// header: a caller copies it for a retry first, so the copy never
    /// holds the token.
    fn into_parts(self) -> (Parts, ReplayBody<B>) {
        let Head {
            method,
            uri,
            version,
            headers,
            extensions,
        } = self.head;
        let (UriCopy::Whole(uri), HeadersCopy::Map(headers)) = (uri, headers) else {
            unreachable!("kept whole while acquiring, unpacked once rejected")
        };
        // `Parts` cannot be built directly; a bodiless request gives one.
        let (mut parts, ()) = Request::new(()).into_parts();
        parts.method = method;
        parts.uri = *uri;
        parts.version = version;
        parts.headers = *headers;
        parts.extensions = extensions;
        (parts, self.body)
    }

    /// Drops the service held here (polled, but not ready then): what the
    /// polls may have been granted since (a `Buffer` slot, a concurrency
    /// permit) is let go while the request waits for a token, as a request
    /// held for its first token holds none. The send that follows takes an
    /// instance again.
    fn release_readiness(&mut self) {
        self.service = None;
    }

    /// Polls a service to send through ready: the one held here, which
    /// stays in its box (`None`), or else an instance for retries from
    /// `shared` (`Some`), held here only while it is not ready.
    fn poll_service<C>(
        &mut self,
        shared: &Shared<S, C>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<S>, BoxError>>
    where
        S: Service<Request<ReplayBody<B>>> + Clone,
        S::Error: Into<BoxError>,
    {
        // Polled in its box: taken out and boxed again on each poll, it
        // cost an allocation per poll.
        if let Some(held) = &mut self.service {
            return held.poll_ready(cx).map_ok(|()| None).map_err(Into::into);
        }
        let mut service = shared
            .retry_service()
            .expect("kept by RetryCopy::of or before a request waits");
        match service.poll_ready(cx) {
            Poll::Ready(ready) => Poll::Ready(ready.map(|()| Some(service)).map_err(Into::into)),
            Poll::Pending => {
                self.service = Some(Box::new(service));
                Poll::Pending
            }
        }
    }
}

/// A rejection held until the body is known to be replayable, then read
/// to its end (or only read, before a failed refresh is reported); boxed:
/// a rare path, kept out of the size of every response future. The bound
/// is a timer, so it exists only where a tokio timer does.
struct Settle<R> {
    held: Held<R>,
    next: Option<Next>,
    bound: Option<Pin<Box<Sleep>>>,
}

/// Where a held rejection stands.
enum Held<R> {
    /// Whole while it may still be the answer: the request's body may
    /// turn out not to be replayable.
    Whole(R),
    /// Being read to its end, not the answer: a retry, a refresh or an
    /// error follows.
    Draining(Drain<R>),
    /// Moved out.
    Taken,
}

impl<R> Settle<R> {
    fn boxed<C>(held: Held<R>, next: Next, core: &Core<C>) -> Box<Self> {
        Box::new(Self {
            held,
            next: Some(next),
            bound: timer_at(Self::deadline(core)),
        })
    }

    /// How long each of a rejection's waits may take from now: for the
    /// transport to let go of the body, then to read the rejection.
    fn deadline<C>(core: &Core<C>) -> Instant {
        later(Instant::now(), core.manager.refresh_timeout())
    }
}

/// What to do once a rejection has been read.
enum Next {
    Retry(Credential),
    Refresh(Flight),
    /// No refresh can run: the failure's typed error.
    Fail(Error),
}

pin_project! {
    #[project = StateProj]
    enum State<F, R> {
        // Waiting for a token before the first send.
        Acquiring { waiting: Waiting },
        // First send in flight.
        Sent { #[pin] fut: F },
        // Rejected, retry planned: holds the rejection until the first
        // attempt has released the body (or it outgrew the cap, or the
        // bound passed), so that an unreplayable body still gets the
        // original response back rather than a broken retry. Also reads a
        // rejection before a failed refresh's error is returned.
        Settling { settle: Box<Settle<R>> },
        // Rejected: waiting for the refresh the rejection joined or started.
        Refreshing { waiting: Waiting },
        // Have a token for the first send; waiting for the service to be
        // ready. Its own variant, not a flag in `Ready`: the flag changed
        // the enum's layout, and the common case paid for it (callgrind,
        // hot-path bench: 17 to 19 instructions per request).
        FirstReady { credential: Option<Credential> },
        // Have a token for the retry; waiting for the service to be ready.
        Ready { credential: Option<Credential> },
        // The one retry in flight; its response is returned as it is.
        Retried { #[pin] fut: F },
        // Not ours to touch (explicit Authorization, foreign origin).
        Passthrough { #[pin] fut: F },
        Failed { error: Option<Error> },
    }
}

/// The state of a response future sending through `S` with a body `B`.
type StateFor<S, B> = State<
    <S as Service<Request<ReplayBody<B>>>>::Future,
    <S as Service<Request<ReplayBody<B>>>>::Response,
>;

pin_project! {
    /// The response future of [`TokenRefresh`](crate::TokenRefresh).
    ///
    /// ```
    /// use std::convert::Infallible;
    /// use bytes::Bytes;
    /// use http::{Request, Response, StatusCode};
    /// use http_body_util::{Empty, Full};
    /// use tower::{Layer, Service, ServiceExt};
    /// use tower_token_refresh::future::ResponseFuture;
    /// use tower_token_refresh::{refresh_fn, RefreshError, ReplayBody, TokenRefreshLayer, TokenSet};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let api = tower::service_fn(|req: Request<ReplayBody<Full<Bytes>>>| async move {
    ///     // Only the refreshed token is accepted: "t1" is rejected, the
    ///     // layer refreshes and retries, and the caller sees the retry.
    ///     let status = if req.headers()["authorization"] == "Bearer t2" {
    ///         StatusCode::OK
    ///     } else {
    ///         StatusCode::UNAUTHORIZED
    ///     };
    ///     let response = Response::builder().status(status).body(Empty::<Bytes>::new());
    ///     Ok::<_, Infallible>(response.unwrap())
    /// });
    /// let source = refresh_fn(|_| async { Ok::<_, RefreshError>(TokenSet::new("t2")) });
    /// let layer = TokenRefreshLayer::builder(source)
    ///     .initial_tokens(TokenSet::new("t1"))
    ///     .build();
    /// let mut client = layer.layer(api);
    /// let request = Request::new(Full::new(Bytes::from("body")));
    /// let future: ResponseFuture<_, _, _> = client.ready().await.unwrap().call(request);
    /// assert_eq!(future.await.unwrap().status(), StatusCode::OK);
    /// assert_eq!(layer.handle().stats().retries, 1);
    /// # }
    /// ```
    #[must_use = "futures do nothing unless polled"]
    pub struct ResponseFuture<S, B, C>
    where
        S: Service<Request<ReplayBody<B>>>,
    {
        #[pin]
        state: State<S::Future, S::Response>,
        // The request to send once a token arrives (Acquiring), or the copy
        // kept for the retry (Sent and later).
        pending: Option<RetryCopy<S, B>>,
        generation: u64,
        shared: Option<Arc<Shared<S, C>>>,
    }
}

impl<S, B, C> ResponseFuture<S, B, C>
where
    S: Service<Request<ReplayBody<B>>>,
{
    pub(crate) fn passthrough(fut: S::Future) -> Self {
        Self::with_state(State::Passthrough { fut }, None, 0, None)
    }

    pub(crate) fn failed(error: Error) -> Self {
        Self::with_state(State::Failed { error: Some(error) }, None, 0, None)
    }

    #[inline(always)]
    pub(crate) fn sent(
        fut: S::Future,
        generation: u64,
        retry: Option<RetryCopy<S, B>>,
        shared: Arc<Shared<S, C>>,
    ) -> Self {
        // Built in place, not through `with_state`: the future is large
        // (it holds the retry copy), and every move of it is a `memcpy`.
        // Matched so that `None` (retry off) writes the tag alone: moved
        // as one value, the option was copied whole, with the space of the
        // copy it did not hold (272 bytes in the hot-path bench when this
        // was measured, before the packed bytes moved to rooms; callgrind
        // there, retry off: 4064 → 4014 instructions per request, retry on
        // 4543 → 4548).
        match retry {
            None => Self {
                state: State::Sent { fut },
                pending: None,
                generation,
                shared: Some(shared),
            },
            Some(retry) => Self {
                state: State::Sent { fut },
                pending: Some(retry),
                generation,
                shared: Some(shared),
            },
        }
    }

    pub(crate) fn acquiring(head: Parts, body: ReplayBody<B>, shared: Arc<Shared<S, C>>) -> Self {
        let pending = RetryCopy::keep(head, body);
        let state = State::Acquiring {
            waiting: Waiting::undecided(),
        };
        Self::with_state(state, Some(pending), 0, Some(shared))
    }

    fn with_state(
        state: State<S::Future, S::Response>,
        pending: Option<RetryCopy<S, B>>,
        generation: u64,
        shared: Option<Arc<Shared<S, C>>>,
    ) -> Self {
        Self {
            state,
            pending,
            generation,
            shared,
        }
    }
}

impl<S, B, C, ResBody> Future for ResponseFuture<S, B, C>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<ResBody>> + Clone,
    S::Error: Into<BoxError>,
    C: ClassifyRejection,
    ResBody: Body,
{
    type Output = Result<Response<ResBody>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // A request that is not rejected only ever polls `Sent` (or
        // `Passthrough`): those are handled here, and every other state out
        // of line. Polled in the one loop over all states, the common case
        // paid for setting up the other states' fields: 90 instructions per
        // request in this function, 51 now (callgrind, hot-path bench).
        let this = self.as_mut().project();
        let fut = match this.state.project() {
            StateProj::Sent { fut } => fut,
            StateProj::Passthrough { fut } => return fut.poll(cx).map_err(Into::into),
            _ => return self.poll_steps(cx),
        };
        let answer = ready!(fut.poll(cx));
        let core = &this.shared.as_ref().expect("set for managed requests").core;
        let accepted = match &answer {
            Ok(response) => !core
                .classifier
                .is_rejection(response.status(), response.headers()),
            // No retry follows an error either (found in review: the body
            // went on being recorded after one).
            Err(_) => true,
        };
        if accepted {
            // No retry can follow: the copy's body clone would otherwise
            // go on recording what the transport reads, for as long as a
            // caller keeps this finished future. Only the body is let go:
            // dropping the whole copy here cost 10 instructions per
            // request more (callgrind, hot-path bench).
            if let Some(copy) = this.pending {
                copy.body.stop_sharing();
            }
            return Poll::Ready(answer.map_err(Into::into));
        }
        let response = answer.map_err(Into::into)?;
        match self.as_mut().rejected(response, cx) {
            Some(answer) => Poll::Ready(Ok(answer)),
            None => self.poll_steps(cx),
        }
    }
}

impl<S, B, C, ResBody> ResponseFuture<S, B, C>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<ResBody>> + Clone,
    S::Error: Into<BoxError>,
    C: ClassifyRejection,
    ResBody: Body,
{
    /// The first attempt was rejected: returns the rejection when it is the
    /// answer, or `None` once the state has moved on towards the retry.
    #[cold]
    #[inline(never)]
    fn rejected(
        self: Pin<&mut Self>,
        response: Response<ResBody>,
        cx: &mut Context<'_>,
    ) -> Option<Response<ResBody>> {
        let mut this = self.project();
        let core = &this.shared.as_ref().expect("set for managed requests").core;
        let decision = core.manager.rejected(*this.generation);
        // The refresh (if the decision started one) runs on its own; without
        // a replayable copy the rejection is the answer, and the next
        // request gets the new token. So too when no refresh can run (a
        // failure blocks it): a request that could not have been retried
        // gets the server's answer, not the failure's error, which only
        // stands in for a retry that cannot happen (below). The failure
        // is the handle's `status()` to read, and the next request's error.
        let Some(retry) = this.pending.take().filter(|r| !r.body.is_capped()) else {
            return Some(response);
        };
        let next = match decision {
            // The token is too young to refresh: the rejection is the
            // answer, as when no retry is possible.
            Decision::GiveUp => return Some(response),
            // No refresh can run now (a failure blocks it): the failure's
            // typed error, as for a request that waited for the refresh
            // that failed, and for the requests after it.
            // The rejection is read first, as before a retry: the failure
            // is no reason to close the connection it came on.
            Decision::Fail(error) => {
                this.state
                    .set(drained_then(response, Next::Fail(error), core, cx));
                return None;
            }
            Decision::Use(credential) => Next::Retry(credential),
            Decision::Wait(flight) => Next::Refresh(flight),
        };
        // Parsed only now that a retry is planned.
        let Some(retry) = retry.unpacked() else {
            return Some(response);
        };
        // Usually the first attempt has released the body by now (or never
        // had one): decide at once, without a timer.
        let state = match retry.body.poll_replayable(cx) {
            Poll::Ready(false) => return Some(response),
            Poll::Ready(true) => drained_then(response, next, core, cx),
            Poll::Pending => State::Settling {
                settle: Settle::boxed(Held::Whole(response), next, core),
            },
        };
        *this.pending = Some(retry);
        this.state.set(state);
        None
    }

    /// Every state but the common ones, which `poll` handles itself.
    #[inline(never)]
    fn poll_steps(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Response<ResBody>, BoxError>> {
        let polled = self.as_mut().step(cx);
        if let Poll::Ready(Err(_)) = &polled {
            // An error ends the request: the request kept for a send (its
            // body, and with it the caller's source of it) is let go now,
            // not whenever the caller drops this finished future. Found in
            // review: a proxied upload's sender never saw its receiver go.
            *self.project().pending = None;
        }
        polled
    }

    /// One pass of [`poll_steps`](Self::poll_steps), up to a result or a
    /// wait.
    fn step(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Response<ResBody>, BoxError>> {
        loop {
            let mut this = self.as_mut().project();
            match this.state.as_mut().project() {
                // Reached once the first token has arrived.
                StateProj::Sent { .. } | StateProj::Passthrough { .. } => return self.poll(cx),
                StateProj::Failed { error } => {
                    let error = error.take().expect("polled after completion");
                    return Poll::Ready(Err(error.into()));
                }
                StateProj::Acquiring { waiting } => {
                    let shared = this.shared.as_ref().expect("set for managed requests");
                    let credential = ready!(shared.core.manager.poll_waiting(waiting, cx))?;
                    this.state.set(State::FirstReady {
                        credential: Some(credential),
                    });
                }
                StateProj::Settling { settle } => {
                    let Settle { held, next, bound } = &mut **settle;
                    if let Held::Whole(_) = held {
                        let retry = this.pending.as_ref().expect("retry copy kept");
                        let replayable = match retry.body.poll_replayable(cx) {
                            Poll::Ready(replayable) => replayable,
                            Poll::Pending => match bound {
                                Some(bound) => {
                                    ready!(bound.as_mut().poll(cx));
                                    false
                                }
                                // No timer to bound the wait (a runtime
                                // without timers): the first attempt may
                                // hold the body for ever (a duplex body
                                // whose producer waits for this very
                                // response), so the rejection is the
                                // answer now.
                                None => false,
                            },
                        };
                        let Held::Whole(rejection) = std::mem::replace(held, Held::Taken) else {
                            unreachable!("held whole: checked above")
                        };
                        if !replayable {
                            *this.pending = None;
                            return Poll::Ready(Ok(rejection));
                        }
                        *held = Held::Draining(Drain::new(rejection));
                        // Reading the rejection has a bound of its own.
                        // Found in review: sharing the wait's, a body held
                        // for most of it left the rejection dropped unread
                        // (an HTTP/2 stream reset, an HTTP/1 connection
                        // closed).
                        if let Some(bound) = bound {
                            let core =
                                &this.shared.as_ref().expect("set for managed requests").core;
                            bound.as_mut().reset(Settle::<()>::deadline(core));
                        }
                    }
                    if let Held::Draining(drain) = held {
                        // Past the bound, dropped unread: what follows
                        // waits no longer. Without a timer for a bound, not
                        // waited for at all: a body that never ends must
                        // not hold the request.
                        if let (Poll::Pending, Some(bound)) = (drain.poll(cx), bound) {
                            ready!(bound.as_mut().poll(cx));
                        }
                    }
                    // Dropped before waiting: frees the connection.
                    *held = Held::Taken;
                    let core = &this.shared.as_ref().expect("set for managed requests").core;
                    let next = next.take().expect("next step kept while settling");
                    this.state.set(settled(next, core));
                }
                StateProj::Refreshing { waiting } => {
                    let core = &this.shared.as_ref().expect("set for managed requests").core;
                    let credential = ready!(core.manager.poll_waiting(waiting, cx))?;
                    this.state.set(State::Ready {
                        credential: Some(credential),
                    });
                }
                StateProj::Ready { credential } => {
                    let next = Self::send_when_ready(
                        this.pending,
                        this.shared,
                        this.generation,
                        credential,
                        false,
                        cx,
                    );
                    this.state.set(ready!(next)?);
                }
                StateProj::FirstReady { credential } => {
                    let next = Self::send_when_ready(
                        this.pending,
                        this.shared,
                        this.generation,
                        credential,
                        true,
                        cx,
                    );
                    this.state.set(ready!(next)?);
                }
                StateProj::Retried { fut } => {
                    let response = ready!(fut.poll(cx)).map_err(Into::into)?;
                    let core = &this.shared.as_ref().expect("set for managed requests").core;
                    if core
                        .classifier
                        .is_rejection(response.status(), response.headers())
                    {
                        // Counted, not acted on: acting could start a second
                        // refresh for one request (the refresh-loop pitfall).
                        // The next request meets the token's state afresh.
                        core.manager.count_rejection();
                    }
                    return Poll::Ready(Ok(response));
                }
            }
        }
    }

    /// Sends the request once its service is ready: the first send (with
    /// the retry copy taken first) or the retry. Returns the next state.
    fn send_when_ready(
        pending: &mut Option<RetryCopy<S, B>>,
        shared: &Option<Arc<Shared<S, C>>>,
        generation: &mut u64,
        credential: &mut Option<Credential>,
        first: bool,
        cx: &mut Context<'_>,
    ) -> Poll<Result<StateFor<S, B>, BoxError>> {
        let shared = shared.as_ref().expect("set for managed requests");
        let manager = &shared.core.manager;
        // Decided before readiness is taken. A request going back to wait
        // (its token rejected meanwhile by another request's answer) lets
        // go of what its service was granted while polled before.
        let request = pending.as_mut().expect("request kept");
        let held = credential.take().expect("credential set before readiness");
        let current = match manager.newest(held) {
            Newest::Send(current) => current,
            Newest::Wait(flight) => {
                request.release_readiness();
                let waiting = manager.waiting(flight);
                return Poll::Ready(Ok(if first {
                    State::Acquiring { waiting }
                } else {
                    State::Refreshing { waiting }
                }));
            }
            Newest::Fail(error) => {
                *pending = None;
                return Poll::Ready(Err(error.into()));
            }
        };
        let mut unboxed = match request.poll_service(shared, cx) {
            Poll::Ready(service) => service?,
            Poll::Pending => {
                *credential = Some(current);
                return Poll::Pending;
            }
        };
        let credential = current;
        let mut request = pending.take().expect("request kept");
        let mut held = request.service.take();
        let service = match &mut unboxed {
            Some(service) => service,
            None => held.as_deref_mut().expect("left boxed by poll_service"),
        };
        let (mut parts, body) = request.into_parts();
        if first {
            *pending = RetryCopy::of(&parts, &body, shared, service);
        } else {
            manager.count_retry();
        }
        *generation = credential.authorize(&mut parts.headers);
        let fut = service.call(Request::from_parts(parts, body));
        // The instance, called, serves the next send on this lane: it
        // holds no readiness now, as a called instance holds none.
        if let Some(service) = unboxed.or_else(|| held.map(|boxed| *boxed)) {
            shared.give_back(service);
        }
        Poll::Ready(Ok(if first {
            State::Sent { fut }
        } else {
            State::Retried { fut }
        }))
    }
}

/// The step after a rejection that is not the answer: `next` once its
/// body has been read. Its body usually came with its head: then it is
/// read at once, without the settle box or its timer.
fn drained_then<F, R: Body, C>(
    rejection: R,
    next: Next,
    core: &Core<C>,
    cx: &mut Context<'_>,
) -> State<F, R> {
    // An empty body (or one already read): nothing to drain.
    if rejection.is_end_stream() {
        return settled(next, core);
    }
    let mut drain = Drain::new(rejection);
    match drain.poll(cx) {
        Poll::Ready(()) => settled(next, core),
        Poll::Pending => State::Settling {
            settle: Settle::boxed(Held::Draining(drain), next, core),
        },
    }
}

/// The step after a rejection has been read (or given up on).
fn settled<F, R, C>(next: Next, core: &Core<C>) -> State<F, R> {
    match next {
        Next::Fail(error) => State::Failed { error: Some(error) },
        Next::Retry(credential) => State::Ready {
            credential: Some(credential),
        },
        Next::Refresh(flight) => State::Refreshing {
            waiting: core.manager.waiting(flight),
        },
    }
}

impl<S, B, C> fmt::Debug for ResponseFuture<S, B, C>
where
    S: Service<Request<ReplayBody<B>>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("generation", &self.generation)
            .field("will_retry", &self.pending.is_some())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod size_tests {
    use std::mem::size_of;

    use bytes::Bytes;
    use http_body_util::Full;

    use super::*;

    type Inner = tower::util::BoxCloneService<
        Request<ReplayBody<Full<Bytes>>>,
        Response<Full<Bytes>>,
        BoxError,
    >;

    /// The copies kept for a retry stay small: the response future holds
    /// them and is moved whole. Sizes with the `http` in `Cargo.lock` (a
    /// `Uri` is 88 bytes there, a `HeaderMap` 48); the packed bytes live in
    /// rooms.
    #[test]
    fn the_retry_copy_keeps_the_response_future_small() {
        assert_eq!(size_of::<UriCopy>(), 24, "a tag, lengths and a room");
        assert_eq!(
            size_of::<HeadersCopy>(),
            32,
            "a room, its length, the names"
        );
        assert_eq!(size_of::<RetryCopy<Inner, Full<Bytes>>>(), 144);
    }
}
