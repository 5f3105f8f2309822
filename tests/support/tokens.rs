//! The token registry the token-issuing servers write and the API server
//! reads.
//!
//! Every refresh token belongs to a [`Grant`]: everything issued from one
//! login or authorization. A grant whose refresh tokens rotate is a token
//! family; revoking it revokes its refresh tokens and the access tokens
//! issued from them.

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

/// One login or authorization, and everything issued from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Grant(u64);

/// Where a refresh token stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshState {
    /// May be redeemed.
    Live,
    /// Already redeemed for a successor: presenting it again is reuse.
    Rotated,
    /// Revoked, with its grant or by the test.
    Revoked,
}

/// What redeeming a refresh token did.
#[derive(Debug)]
pub enum Redemption {
    /// The token was live. With rotation it is now [`RefreshState::Rotated`]
    /// and `successor` is the live token of the same grant.
    Redeemed { successor: Option<String> },
    /// The token had already been rotated: the whole grant is now revoked.
    Reused,
    /// The token is unknown or revoked.
    Invalid,
}

#[derive(Default)]
struct Registry {
    grants: u64,
    access: HashMap<String, Access>,
    refresh: HashMap<String, Refresh>,
}

struct Access {
    grant: Option<Grant>,
    issued_at: Instant,
    expires_at: Instant,
    revoked: bool,
}

struct Refresh {
    grant: Grant,
    state: RefreshState,
}

impl TokenStore {
    /// A new grant, with nothing issued from it yet.
    pub fn new_grant(&self) -> Grant {
        let mut registry = self.lock();
        registry.grants += 1;
        Grant(registry.grants)
    }

    /// A new, long-lived refresh token of a new grant (Cognito does not
    /// rotate them).
    pub fn issue_refresh_token(&self) -> String {
        let grant = self.new_grant();
        self.issue_refresh_token_in(grant)
    }

    /// A new live refresh token of `grant`.
    pub fn issue_refresh_token_in(&self, grant: Grant) -> String {
        let token = unique("rt");
        let state = RefreshState::Live;
        self.lock()
            .refresh
            .insert(token.clone(), Refresh { grant, state });
        token
    }

    /// Whether `token` was issued here and may be redeemed.
    pub fn refresh_token_is_valid(&self, token: &str) -> bool {
        self.refresh_token(token)
            .is_some_and(|(_, state)| state == RefreshState::Live)
    }

    /// The grant and state of `token`, if it was issued here.
    pub fn refresh_token(&self, token: &str) -> Option<(Grant, RefreshState)> {
        self.lock().refresh.get(token).map(|r| (r.grant, r.state))
    }

    /// Redeems `token`, replacing it with a successor if `rotate`.
    ///
    /// One critical section decides and records: of two requests racing
    /// with the same live token, exactly one redeems it, and with rotation
    /// the other is reuse.
    pub fn redeem_refresh_token(&self, token: &str, rotate: bool) -> Redemption {
        let mut registry = self.lock();
        let Some(refresh) = registry.refresh.get_mut(token) else {
            return Redemption::Invalid;
        };
        match refresh.state {
            RefreshState::Revoked => Redemption::Invalid,
            RefreshState::Rotated => {
                let grant = refresh.grant;
                registry.revoke_grant(grant);
                Redemption::Reused
            }
            RefreshState::Live if !rotate => Redemption::Redeemed { successor: None },
            RefreshState::Live => {
                refresh.state = RefreshState::Rotated;
                let grant = refresh.grant;
                let successor = unique("rt");
                let state = RefreshState::Live;
                registry
                    .refresh
                    .insert(successor.clone(), Refresh { grant, state });
                Redemption::Redeemed {
                    successor: Some(successor),
                }
            }
        }
    }

    /// A new access token valid for `lifetime` from now, of no grant.
    pub fn issue_access_token(&self, lifetime: Duration) -> String {
        self.insert_access(None, lifetime)
    }

    /// A new access token of `grant`, valid for `lifetime` from now.
    pub fn issue_access_token_in(&self, grant: Grant, lifetime: Duration) -> String {
        self.insert_access(Some(grant), lifetime)
    }

    /// Whether `token` was issued here, is not revoked and has not expired.
    pub fn access_token_is_valid(&self, token: &str) -> bool {
        let now = Instant::now();
        self.lock()
            .access
            .get(token)
            .is_some_and(|a| !a.revoked && now < a.expires_at)
    }

    /// The grant of `token` and when it was issued, if it was issued here
    /// and not revoked (expired or not).
    pub fn unrevoked_access_token(&self, token: &str) -> Option<(Option<Grant>, Instant)> {
        self.lock()
            .access
            .get(token)
            .filter(|a| !a.revoked)
            .map(|a| (a.grant, a.issued_at))
    }

    /// Revokes `token`, if it was issued here.
    pub fn revoke_access_token(&self, token: &str) {
        if let Some(access) = self.lock().access.get_mut(token) {
            access.revoked = true;
        }
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
        for refresh in self.lock().refresh.values_mut() {
            refresh.state = RefreshState::Revoked;
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

    /// Every access and refresh token issued so far, whatever became of
    /// it: what must never show up in a client's logs or errors.
    #[cfg(test)]
    #[allow(dead_code)] // tests/loopback.rs includes this module privately
    pub fn issued(&self) -> Vec<String> {
        let registry = self.lock();
        let access = registry.access.keys();
        access.chain(registry.refresh.keys()).cloned().collect()
    }

    fn insert_access(&self, grant: Option<Grant>, lifetime: Duration) -> String {
        let token = unique("at");
        let issued_at = Instant::now();
        self.lock().access.insert(
            token.clone(),
            Access {
                grant,
                issued_at,
                expires_at: issued_at + lifetime,
                revoked: false,
            },
        );
        token
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.inner.lock().unwrap()
    }
}

impl Registry {
    /// Revokes `grant`'s refresh tokens and the access tokens issued from
    /// it: after reuse, any of them may be in an attacker's hands.
    fn revoke_grant(&mut self, grant: Grant) {
        for refresh in self.refresh.values_mut().filter(|r| r.grant == grant) {
            refresh.state = RefreshState::Revoked;
        }
        for access in self.access.values_mut() {
            if access.grant == Some(grant) {
                access.revoked = true;
            }
        }
    }
}

/// A unique, unguessable-looking id: a counter mixed with a randomly keyed
/// hash of the process id and the time.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let hash = RandomState::new().hash_one((n, std::process::id(), std::time::SystemTime::now()));
    format!("{prefix}.{hash:016x}.{n:x}")
}
