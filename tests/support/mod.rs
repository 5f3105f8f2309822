//! Loopback test fixtures shared by the integration tests and the
//! quickstart example (which includes this module with `#[path]`).
//!
//! - [`identity`]: a Cognito-style identity server implementing seed 002
//!   (`POST /api/auth/refresh-token`, 5 refreshes per minute per IP) plus
//!   the `POST /api/auth/login` the refresh tokens come from.
//! - [`oauth2`], [`dynamosql`], [`ocient`]: the other refresh dialects'
//!   servers — an RFC 6749 token endpoint with refresh-token rotation and
//!   reuse detection, and the seed 000 and 003 APIs — each with failures a
//!   test can inject ([`faults`]). `tests/servers` checks them against
//!   their documents.
//! - [`api`]: a resource server that accepts only current access tokens,
//!   from any of those servers ([`tokens::Issuer`]).
//! - [`cognito`]: logs in to the identity server, and hands out the
//!   library's `cognito` preset as the refresh source.
//! - [`client`]: a hyper-util client wrapped in `TokenRefreshLayer`.
//! - `redirects`: two origins, one redirecting to the other.
//! - `front`: a TCP front that forwards to a fixture server or injects a
//!   fault below HTTP (refused, black-holed, reset, raw answers).
//! - `jwt`: unsigned JWTs with a chosen `exp`.
//!
//! Items only the tests use are `#[cfg(test)]`: integration tests are built
//! with `--cfg test`, examples are not, so neither build sees dead code.
//! The dialect servers (and [`faults`]) are `allow(dead_code)` instead:
//! tests and examples alike include them, each using its own subset.

pub mod api;
pub mod body;
pub mod client;
pub mod cognito;
#[allow(dead_code)]
pub mod dynamosql;
#[allow(dead_code)]
pub mod faults;
/// Replicas in OS processes sharing one token (tests/fleet.rs, examples/fleet.rs).
#[cfg(all(feature = "redis", feature = "file", feature = "encryption"))]
#[allow(dead_code)]
pub mod fleet;
#[cfg(test)]
#[allow(dead_code)]
pub mod front;
#[cfg(test)]
pub mod gate;
pub mod identity;
pub mod json;
#[cfg(test)]
#[allow(dead_code)]
pub mod jwt;
#[cfg(test)]
#[allow(dead_code)]
pub mod logs;
#[allow(dead_code)]
pub mod oauth2;
#[allow(dead_code)]
pub mod ocient;
pub mod rate_limit;
#[cfg(test)]
#[allow(dead_code)]
pub mod redirects;
#[allow(dead_code)]
pub mod redis;
pub mod server;
pub mod tokens;

pub use api::ApiServer;
pub use client::{authed_client, get, post, send, AuthedClient};
pub use cognito::CognitoClient;
pub use identity::{IdentityServer, DEMO_PASSWORD, DEMO_USER};

/// No test may take longer than this: a hang fails the test instead of
/// stalling the run.
#[cfg(test)]
pub const TEST_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Runs `test`, failing it once it has taken [`TEST_LIMIT`].
///
/// Only for tests on the real clock: on tokio's paused clock the timeout is
/// a timer the clock jumps to as soon as the runtime waits for I/O.
#[cfg(test)]
pub async fn bounded<F: std::future::Future>(test: F) -> F::Output {
    tokio::time::timeout(TEST_LIMIT, test)
        .await
        .expect("test timed out")
}
