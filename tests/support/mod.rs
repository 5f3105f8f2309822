//! Loopback test fixtures shared by the integration tests and the
//! quickstart example (which includes this module with `#[path]`).
//!
//! - [`identity`]: a Cognito-style identity server implementing seed 002
//!   (`POST /api/auth/refresh-token`, 5 refreshes per minute per IP) plus
//!   the `POST /api/auth/login` the refresh tokens come from.
//! - [`api`]: a resource server that accepts only current access tokens.
//! - [`cognito`]: the small client that talks to the identity server and
//!   maps its answers to [`RefreshError`](tower_token_refresh::RefreshError)
//!   classes.
//! - [`client`]: a hyper-util client wrapped in `TokenRefreshLayer`.
//!
//! Items only the tests use are `#[cfg(test)]`: integration tests are built
//! with `--cfg test`, examples are not, so neither build sees dead code.

pub mod api;
pub mod body;
pub mod client;
pub mod cognito;
#[cfg(test)]
pub mod gate;
pub mod identity;
pub mod json;
pub mod rate_limit;
pub mod server;
pub mod tokens;

pub use api::ApiServer;
pub use client::{authed_client, get, post, send, AuthedClient};
pub use cognito::CognitoClient;
pub use identity::{IdentityServer, DEMO_PASSWORD, DEMO_USER};
