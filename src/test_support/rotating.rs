//! [`Rotating`]: an identity server in miniature for fleet tests, where
//! several layers share a token store and must never present a refresh
//! token another has already spent.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tower::ServiceBuilder;

use super::Api;
use crate::store::{MemoryStore, TokenStore};
use crate::{refresh_fn, Refresh, RefreshContext, RefreshError, TokenRefreshLayer, TokenSet};

/// The lifetime of the access tokens a default [`Rotating`] issues.
pub(crate) const LIFETIME: Duration = Duration::from_secs(100);

/// An identity server in miniature: rotates refresh tokens, refuses a spent
/// one (`invalid_grant`) and counts what it saw.
#[derive(Clone)]
pub(crate) struct Rotating {
    pub(crate) api: Api,
    pub(crate) state: Arc<Mutex<RotatingState>>,
    /// How long each refresh call takes.
    pub(crate) delay: Duration,
    /// The lifetime of the access tokens issued.
    pub(crate) lifetime: Duration,
    /// What a refresh call answers, made from the tokens issued for it
    /// (a login's answer is never changed).
    pub(crate) answers: fn(TokenSet) -> TokenSet,
}

impl Default for Rotating {
    fn default() -> Self {
        Self {
            api: Api::default(),
            state: Arc::default(),
            delay: Duration::ZERO,
            lifetime: LIFETIME,
            answers: std::convert::identity,
        }
    }
}

#[derive(Default)]
pub(crate) struct RotatingState {
    live_refresh_token: u64,
    refreshes: usize,
    spent_presented: usize,
    logins: usize,
}

impl Rotating {
    /// An identity server whose refresh calls each take `delay`.
    pub(crate) fn taking(delay: Duration) -> Self {
        Self {
            delay,
            ..Self::default()
        }
    }

    pub(crate) fn source(&self) -> impl Refresh {
        let this = self.clone();
        refresh_fn(move |ctx: RefreshContext| {
            let this = this.clone();
            let presented = ctx.refresh_token().map(|t| t.expose().to_owned());
            async move {
                tokio::time::sleep(this.delay).await;
                let mut state = this.state.lock().unwrap();
                let Some(presented) = presented else {
                    state.logins += 1;
                    return Ok(this.issue(&mut state));
                };
                if presented != format!("rt-{}", state.live_refresh_token) {
                    state.spent_presented += 1;
                    return Err(RefreshError::terminal("invalid_grant").with_status(400));
                }
                state.refreshes += 1;
                Ok((this.answers)(this.issue(&mut state)))
            }
        })
    }

    pub(crate) fn issue(&self, state: &mut RotatingState) -> TokenSet {
        state.live_refresh_token += 1;
        let n = state.live_refresh_token;
        self.api.accept(&format!("at-{n}"));
        self.tokens(n)
    }

    /// The tokens this identity server issues as its `n`th.
    pub(crate) fn tokens(&self, n: u64) -> TokenSet {
        TokenSet::new(format!("at-{n}"))
            .with_refresh_token(format!("rt-{n}"))
            .with_expires_in(self.lifetime)
    }

    /// Revokes every access token issued so far, as after a sign-out
    /// elsewhere.
    pub(crate) fn revoke_all(&self) {
        let issued = self.state.lock().unwrap().live_refresh_token;
        for n in 0..=issued {
            self.api.revoke(&format!("at-{n}"));
        }
    }

    pub(crate) fn counts(&self) -> (usize, usize, usize) {
        let state = self.state.lock().unwrap();
        (state.logins, state.refreshes, state.spent_presented)
    }

    /// A layer on `store` refreshing from this identity server.
    pub(crate) fn layer_on(&self, store: impl TokenStore) -> TokenRefreshLayer {
        TokenRefreshLayer::builder(self.source())
            .store(store)
            .build()
    }

    /// The stored record's version, once it is checked to hold the refresh
    /// token this identity server would accept now.
    pub(crate) async fn stored_live_version(&self, store: &MemoryStore) -> u64 {
        let stored = store.load().await.unwrap().unwrap();
        let now = std::time::SystemTime::now();
        let decoded = crate::store::decode(stored.payload(), now).unwrap();
        let live = self.state.lock().unwrap().live_refresh_token;
        assert_eq!(
            decoded.tokens.refresh_token().unwrap().expose(),
            format!("rt-{live}"),
            "the store holds the issuer's live refresh token"
        );
        stored.version()
    }

    /// A layer on `store`, set up by `configure`, and a client sending to
    /// this identity server's API through it.
    pub(crate) fn layered(
        &self,
        store: &MemoryStore,
        configure: impl FnOnce(crate::Builder) -> crate::Builder,
    ) -> (TokenRefreshLayer, crate::TokenRefresh<Api>) {
        let builder = TokenRefreshLayer::builder(self.source()).store(store.clone());
        let layer = configure(builder).build();
        let client = ServiceBuilder::new()
            .layer(layer.clone())
            .service(self.api.clone());
        (layer, client)
    }
}
