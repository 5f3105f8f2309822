//! **Not public API.** Entry points for the fuzz targets in `fuzz/`: they
//! run the crate-private answer handling of [`HttpRefresher`] on raw input.
//! Hidden from the documentation, exempt from semver, and subject to change
//! without notice.
//!
//! [`HttpRefresher`]: super::HttpRefresher

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, Response};
use http_body::{Body, Frame};

use super::dialect::Dialect;
use crate::{RefreshError, TokenSet};

/// The name of every preset, as [`answer`] takes it.
pub const DIALECTS: [&str; 6] = [
    "oauth2",
    "client_credentials",
    "dynamosql",
    "cognito",
    "ocient",
    "custom",
];

fn dialect(name: &str) -> Dialect {
    match name {
        "oauth2" => Dialect::oauth2(),
        "client_credentials" => Dialect::client_credentials(),
        "dynamosql" => Dialect::dynamosql(),
        "cognito" => Dialect::cognito(),
        "ocient" => Dialect::ocient(),
        "custom" => Dialect::custom(),
        other => panic!("no dialect named {other:?}; see DIALECTS"),
    }
}

/// The secret [`answer`] tells the answer handling the request carried:
/// no error may quote it, however the server echoes it.
pub const SENT_SECRET: &str = "\u{2603}sent-secret\u{2603}";

/// What `dialect`'s refresher makes of an answer with `head`'s status and
/// headers and a body arriving as `chunks`: the same code a refresh runs
/// once the response head has arrived, body cap included, with `now` as
/// the wall clock (for dates, where the answer has no `Date`), for a
/// request that carried [`SENT_SECRET`].
///
/// # Panics
///
/// If `dialect` is not one of [`DIALECTS`].
pub fn answer(
    dialect_name: &str,
    body_limit: usize,
    head: Response<()>,
    chunks: Vec<Bytes>,
    now: SystemTime,
) -> Result<TokenSet, RefreshError> {
    let dialect = dialect(dialect_name);
    let response = head.map(|()| Chunks(chunks.into()));
    let sent = || super::SentSecrets::new([SENT_SECRET.into()]);
    let mut future = pin!(super::answer(&dialect, body_limit, response, sent, || now));
    let waker = Waker::from(Arc::new(NoWake));
    let polled = future.as_mut().poll(&mut Context::from_waker(&waker));
    match polled {
        Poll::Ready(result) => result,
        Poll::Pending => unreachable!("a body whose frames are all ready never waits"),
    }
}

/// The JSON pointers at which `dialect`'s answers say what went wrong:
/// the only strings of an answer that an error may quote (any other may
/// be a token, under whatever name).
///
/// # Panics
///
/// If `dialect` is not one of [`DIALECTS`].
pub fn said_pointers(dialect_name: &str) -> Vec<String> {
    let errors = dialect(dialect_name).errors;
    errors.pointers().map(str::to_owned).collect()
}

/// The delay a `429` answer's `Retry-After` asks for, read as a refresh
/// reads it (delay-seconds or an HTTP date, relative to `now`).
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    super::failure::retry_after(headers, now)
}

/// A body whose frames are all ready.
struct Chunks(VecDeque<Bytes>);

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.get_mut().0.pop_front().map(|c| Ok(Frame::data(c))))
    }
}

/// Nothing to wake: [`answer`] polls once and never waits.
struct NoWake;

impl Wake for NoWake {
    fn wake(self: Arc<Self>) {}
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    fn ok(body: &str) -> Vec<Bytes> {
        vec![Bytes::copy_from_slice(body.as_bytes())]
    }

    #[test]
    fn every_dialect_reads_its_own_answer() {
        let answers = [
            r#"{"access_token":"a","token_type":"Bearer","expires_in":60}"#,
            r#"{"access_token":"a","token_type":"Bearer","expires_in":60}"#,
            r#"{"success":true,"data":{"accessToken":"a","expiresIn":60,"tokenType":"Bearer"}}"#,
            r#"{"accessToken":"a","refreshToken":"r","expiresIn":60,"requiresPasswordChange":false}"#,
            r#"{"access_token":"a","username":"u","database":"d","expires_in":60}"#,
            r#"{"access_token":"a","expires_in":60}"#,
        ];
        for (name, body) in DIALECTS.into_iter().zip(answers) {
            let tokens = answer(name, 1024, Response::new(()), ok(body), now())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(tokens.access_token().expose(), "a", "{name}");
            assert_eq!(tokens.expires_in(), Some(Duration::from_secs(60)), "{name}");
        }
    }

    #[test]
    fn the_body_cap_applies_across_chunks_and_a_failure_keeps_its_status() {
        let body = r#"{"access_token":"a"}"#;
        let (head, tail) = body.split_at(10);
        let chunks = || vec![Bytes::from(head), Bytes::from(tail)];
        let fits = answer("oauth2", body.len(), Response::new(()), chunks(), now());
        assert!(fits.is_ok(), "{fits:?}");
        let over = answer("oauth2", body.len() - 1, Response::new(()), chunks(), now());
        let err = over.unwrap_err();
        assert!(
            err.is_transient() && err.to_string().contains("larger than"),
            "{err}"
        );
        let mut rejected = Response::new(());
        *rejected.status_mut() = http::StatusCode::BAD_REQUEST;
        let err = answer("oauth2", 4, rejected, chunks(), now()).unwrap_err();
        assert!(
            err.is_terminal(),
            "an oversized failure keeps its status's class: {err}"
        );
    }

    /// A JWT's time left counts from a second past the answer's `Date`
    /// (here an hour behind `now`), from `now` without a `Date` or with one
    /// that does not parse.
    #[test]
    fn a_jwt_exp_counts_from_the_answers_date() {
        let issued = |at: SystemTime| {
            let exp = at.duration_since(UNIX_EPOCH).unwrap().as_secs() + 600;
            let jwt = super::super::jwt::token_with_claims(&serde_json::json!({"exp": exp}));
            ok(&format!(
                r#"{{"accessToken":"{jwt}","requiresPasswordChange":false}}"#
            ))
        };
        let dated = |date: &str| {
            let mut head = Response::new(());
            head.headers_mut()
                .insert(http::header::DATE, date.parse().unwrap());
            head
        };
        let lifetime = |head, body| {
            let tokens = answer("cognito", 1024, head, body, now()).unwrap();
            tokens.expires_in().unwrap()
        };
        let an_hour_behind = now() - Duration::from_secs(3600);
        let date = httpdate::fmt_http_date(an_hour_behind);
        assert_eq!(
            lifetime(dated(&date), issued(an_hour_behind)),
            Duration::from_secs(599)
        );
        assert_eq!(
            lifetime(Response::new(()), issued(now())),
            Duration::from_secs(600)
        );
        assert_eq!(
            lifetime(dated("yesterday"), issued(now())),
            Duration::from_secs(600)
        );
    }

    #[test]
    fn said_pointers_name_the_error_fields() {
        assert_eq!(
            said_pointers("oauth2"),
            ["/error_description", "/error", "/error"]
        );
        assert_eq!(
            said_pointers("dynamosql"),
            ["/error/message", "/error/code", "/error/requestId"]
        );
    }
}
