//! The token registry the token-issuing servers write and the API server
//! reads.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// Issued access and refresh tokens. Clones share the registry.
#[derive(Clone, Default)]
pub struct TokenStore {
    inner: Arc<Mutex<Registry>>,
}

/// A server that issues tokens into a [`TokenStore`]: the API server
/// accepts the access tokens of any of them.
pub trait Issuer {
    /// The registry this server issues into.
    fn token_store(&self) -> TokenStore;
}

#[derive(Default)]
struct Registry {
    access: HashMap<String, Access>,
    /// Refresh token → revoked.
    refresh: HashMap<String, bool>,
}

struct Access {
    expires_at: Instant,
    revoked: bool,
}

impl TokenStore {
    /// A new, long-lived refresh token (Cognito does not rotate them).
    pub fn issue_refresh_token(&self) -> String {
        let token = unique("rt");
        self.lock().refresh.insert(token.clone(), false);
        token
    }

    /// Whether `token` was issued here and not revoked.
    pub fn refresh_token_is_valid(&self, token: &str) -> bool {
        self.lock().refresh.get(token) == Some(&false)
    }

    /// A new access token valid for `lifetime` from now.
    pub fn issue_access_token(&self, lifetime: Duration) -> String {
        let token = unique("at");
        let expires_at = Instant::now() + lifetime;
        self.lock().access.insert(
            token.clone(),
            Access {
                expires_at,
                revoked: false,
            },
        );
        token
    }

    /// Whether `token` was issued here, is not revoked and has not expired.
    pub fn access_token_is_valid(&self, token: &str) -> bool {
        let now = Instant::now();
        self.lock()
            .access
            .get(token)
            .is_some_and(|a| !a.revoked && now < a.expires_at)
    }

    /// Revokes every access token issued so far; returns how many were
    /// still valid.
    pub fn revoke_access_tokens(&self) -> usize {
        let now = Instant::now();
        let mut registry = self.lock();
        let mut live = 0;
        for access in registry.access.values_mut() {
            if !access.revoked && now < access.expires_at {
                live += 1;
            }
            access.revoked = true;
        }
        live
    }

    /// Revokes every refresh token issued so far.
    #[cfg(test)]
    pub fn revoke_refresh_tokens(&self) {
        for revoked in self.lock().refresh.values_mut() {
            *revoked = true;
        }
    }

    /// When each access token issued so far expires, earliest first (which
    /// is issue order, as every token gets the same lifetime).
    #[cfg(test)]
    pub fn access_token_expiries(&self) -> Vec<Instant> {
        let mut expiries: Vec<_> = self.lock().access.values().map(|a| a.expires_at).collect();
        expiries.sort();
        expiries
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.inner.lock().unwrap()
    }
}

/// A unique, unguessable-looking token: a counter mixed with a randomly
/// keyed hash of the process id and the time.
fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let hash = RandomState::new().hash_one((n, std::process::id(), std::time::SystemTime::now()));
    format!("{prefix}.{hash:016x}.{n:x}")
}
