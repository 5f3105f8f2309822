//! [`Encrypted`]: tokens sealed at rest, whatever the store.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use tokio::sync::watch;
use zeroize::Zeroize;

use super::{Lease, Record, StoreError, TokenStore};

/// Marks a sealed payload, and its format.
const MAGIC: &[u8; 4] = b"TTR1";
const NONCE_LEN: usize = 24;

/// A 256-bit key that seals stored tokens; wiped from memory on drop and
/// never printed.
///
/// ```
/// use tower_token_refresh::store::StoreKey;
///
/// let key = StoreKey::from_base64("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap();
/// assert_eq!(format!("{key:?}"), "StoreKey(..)");
/// assert!(StoreKey::from_base64("too short").is_err());
/// ```
pub struct StoreKey([u8; 32]);

impl StoreKey {
    /// A key from 32 bytes (for instance from a secret manager).
    ///
    /// ```
    /// use tower_token_refresh::store::StoreKey;
    ///
    /// let key = StoreKey::from_bytes([42; 32]);
    /// assert_eq!(format!("{key:?}"), "StoreKey(..)");
    /// ```
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// A key from standard base64 of 32 bytes (`openssl rand -base64 32`).
    ///
    /// ```
    /// use tower_token_refresh::store::StoreKey;
    ///
    /// assert!(StoreKey::from_base64("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=").is_ok());
    /// assert!(StoreKey::from_base64("AAAA").unwrap_err().is_corrupt());
    /// ```
    pub fn from_base64(encoded: &str) -> Result<Self, StoreError> {
        use base64::Engine;
        let mut bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|_| StoreError::corrupt("the store key is not valid base64"))?;
        let key = <[u8; 32]>::try_from(bytes.as_slice())
            .map(Self)
            .map_err(|_| StoreError::corrupt("the store key must be 32 bytes"));
        bytes.zeroize();
        key
    }
}

impl Drop for StoreKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StoreKey(..)")
    }
}

/// Wraps a store so that what it keeps is sealed with XChaCha20-Poly1305:
/// a Redis dump, a backup or a token file then hands out no credential.
///
/// Each record gets a random 192-bit nonce, and its version is
/// authenticated with it, so a sealed record cannot be replayed under
/// another version. A record that is not sealed, or not with this key (and
/// [context](Encrypted::bound_to)), is [corrupt](StoreError::is_corrupt):
/// the layer refreshes without it and never overwrites it. Requires the
/// `encryption` feature.
///
/// To change the key without a moment when processes cannot read what
/// others stored, roll it out in three deploys, each finished before the
/// next starts: first every process seals with the old key and
/// [also opens](Encrypted::also_open_with) with the new one; then every
/// process seals with the new key and also opens with the old one; then,
/// once the stored record has been written again under the new key, the
/// old key goes. Nothing re-seals a record that is only read: the next
/// refresh stores one, so before the third deploy let a refresh happen
/// after the second has finished (wait a token lifetime, or call
/// [`TokenHandle::force_refresh`](crate::TokenHandle::force_refresh) in
/// one process). At each step, every record a process may meet then opens
/// under its keys. A record that opens under none of them (a key changed
/// in one deploy, or the old key dropped before a refresh) leaves every
/// process refreshing on its own, never overwriting it, until it is
/// deleted (the file, or Redis's `{prefix}:tokens`); with an issuer that
/// rotates refresh tokens, those processes present refresh tokens the
/// first of them spent, which are refused (see
/// [`TokenStore`](crate::store::TokenStore)).
///
/// When one key seals several stores (one secret shared by several
/// services, each with its own Redis prefix), give each its own context
/// with [`bound_to`](Encrypted::bound_to): otherwise a record copied from
/// one store into another opens there, and the second service would use
/// the first one's tokens.
///
/// ```
/// use tower_token_refresh::store::{Encrypted, MemoryStore, Record, StoreKey, TokenStore};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let inner = MemoryStore::new();
/// let store = Encrypted::new(inner.clone(), StoreKey::from_bytes([7; 32]));
/// store.compare_and_swap(None, Record::new(1, b"secret tokens".to_vec())).await.unwrap();
///
/// // The inner store only ever sees the sealed form.
/// let sealed = inner.load().await.unwrap().unwrap();
/// assert!(!sealed.payload().windows(6).any(|w| w == b"secret"));
/// assert_eq!(store.load().await.unwrap().unwrap().payload(), b"secret tokens");
///
/// // Another key cannot open it.
/// let other = Encrypted::new(inner, StoreKey::from_bytes([8; 32]));
/// assert!(other.load().await.unwrap_err().is_corrupt());
/// # }
/// ```
#[derive(Clone)]
pub struct Encrypted<S> {
    inner: S,
    /// Seals, and opens first.
    cipher: XChaCha20Poly1305,
    /// Open only: see [`Encrypted::also_open_with`].
    also_open: Vec<XChaCha20Poly1305>,
    /// Authenticated with every record: see [`Encrypted::bound_to`].
    context: Box<[u8]>,
}

impl<S: TokenStore> Encrypted<S> {
    /// Seals everything `inner` keeps with `key`.
    ///
    /// ```
    /// use tower_token_refresh::store::{Encrypted, MemoryStore, Record, StoreKey, TokenStore};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let inner = MemoryStore::new();
    /// let sealed = Encrypted::new(inner.clone(), StoreKey::from_bytes([7; 32]));
    /// sealed.compare_and_swap(None, Record::new(1, b"tokens".to_vec())).await.unwrap();
    /// // What the inner store keeps is not the payload.
    /// assert_ne!(inner.load().await.unwrap().unwrap().payload(), b"tokens");
    /// assert_eq!(sealed.load().await.unwrap().unwrap().payload(), b"tokens");
    /// # }
    /// ```
    pub fn new(inner: S, key: StoreKey) -> Self {
        Self {
            inner,
            cipher: XChaCha20Poly1305::new(&key.0.into()),
            also_open: Vec::new(),
            context: Box::default(),
        }
    }

    /// Opens records sealed with `key` too, while still sealing with the
    /// key given to [`new`](Encrypted::new): for changing keys without a
    /// moment when processes cannot read what others stored (the steps
    /// are on [`Encrypted`]). Keys are tried in the order given, after the
    /// sealing key; each is under the same [context](Encrypted::bound_to).
    ///
    /// ```
    /// use tower_token_refresh::store::{Encrypted, MemoryStore, Record, StoreKey, TokenStore};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let inner = MemoryStore::new();
    /// let (old, new) = (|| StoreKey::from_bytes([1; 32]), || StoreKey::from_bytes([2; 32]));
    /// let before = Encrypted::new(inner.clone(), old());
    /// before.compare_and_swap(None, Record::new(1, b"tokens".to_vec())).await.unwrap();
    ///
    /// // Sealing with the new key, opening with the old one too.
    /// let during = Encrypted::new(inner.clone(), new()).also_open_with(old());
    /// assert_eq!(during.load().await.unwrap().unwrap().payload(), b"tokens");
    /// during.compare_and_swap(Some(1), Record::new(2, b"newer".to_vec())).await.unwrap();
    ///
    /// // What it stored opens with the new key alone, not with the old one.
    /// let after = Encrypted::new(inner.clone(), new());
    /// assert_eq!(after.load().await.unwrap().unwrap().payload(), b"newer");
    /// assert!(before.load().await.unwrap_err().is_corrupt());
    /// # }
    /// ```
    pub fn also_open_with(mut self, key: StoreKey) -> Self {
        self.also_open.push(XChaCha20Poly1305::new(&key.0.into()));
        self
    }

    /// Binds every record to `context`, a name for what the store holds
    /// (the service, the Redis prefix, the credential): authenticated with
    /// each record, it must match for the record to open. A record copied
    /// in from a store sealed with the same key under another context (or
    /// none) is [corrupt](StoreError::is_corrupt), not adopted. Without
    /// it, records carry no context, as before it existed.
    ///
    /// Adding or changing the context of a store in use is a change of
    /// key that [`also_open_with`](Encrypted::also_open_with) cannot
    /// bridge (every key opens under this one context): the record already
    /// there no longer opens, so deploy the change, then delete the record
    /// at once (see [`Encrypted`] for what happens until it is gone).
    ///
    /// ```
    /// use tower_token_refresh::store::{Encrypted, MemoryStore, Record, StoreKey, TokenStore};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let (billing, reports) = (MemoryStore::new(), MemoryStore::new());
    /// let key = || StoreKey::from_bytes([7; 32]);
    /// let sealed = Encrypted::new(billing.clone(), key()).bound_to("billing");
    /// sealed.compare_and_swap(None, Record::new(1, b"billing's tokens".to_vec())).await.unwrap();
    ///
    /// // Copied into the other service's store, the record does not open there.
    /// let copied = billing.load().await.unwrap().unwrap();
    /// reports.compare_and_swap(None, copied).await.unwrap();
    /// let other = Encrypted::new(reports, key()).bound_to("reports");
    /// assert!(other.load().await.unwrap_err().is_corrupt());
    /// # }
    /// ```
    pub fn bound_to(mut self, context: impl AsRef<[u8]>) -> Self {
        self.context = context.as_ref().into();
        self
    }

    /// The wrapped store.
    ///
    /// ```
    /// use tower_token_refresh::store::{Encrypted, MemoryStore, StoreKey};
    ///
    /// let sealed = Encrypted::new(MemoryStore::new(), StoreKey::from_bytes([7; 32]));
    /// let _inner: &MemoryStore = sealed.get_ref();
    /// ```
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    fn seal(&self, record: &Record) -> Result<Record, StoreError> {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let aad = associated_data(record.version(), &self.context);
        let sealed = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: record.payload(),
                    aad: &aad,
                },
            )
            .map_err(|_| StoreError::unavailable("the tokens could not be sealed"))?;
        let mut payload = Vec::with_capacity(MAGIC.len() + NONCE_LEN + sealed.len());
        payload.extend_from_slice(MAGIC);
        payload.extend_from_slice(&nonce);
        payload.extend_from_slice(&sealed);
        Ok(Record::new(record.version(), payload))
    }

    fn open(&self, record: &Record) -> Result<Record, StoreError> {
        let sealed = record
            .payload()
            .strip_prefix(MAGIC)
            .filter(|rest| rest.len() >= NONCE_LEN)
            .ok_or_else(|| StoreError::corrupt("the stored tokens are not sealed"))?;
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let aad = associated_data(record.version(), &self.context);
        let opened = |cipher: &XChaCha20Poly1305| {
            let payload = Payload {
                msg: ciphertext,
                aad: &aad,
            };
            cipher.decrypt(XNonce::from_slice(nonce), payload).ok()
        };
        let plain = std::iter::once(&self.cipher)
            .chain(&self.also_open)
            .find_map(opened)
            .ok_or_else(|| {
                StoreError::corrupt(
                    "the stored tokens cannot be opened with this store's keys, or were altered",
                )
            })?;
        Ok(Record::new(record.version(), plain))
    }
}

/// The format's name, the version and the context. Only the last part
/// varies in length, so no two inputs give one string; without a context
/// it is what records were sealed with before contexts existed.
fn associated_data(version: u64, context: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(30 + context.len());
    aad.extend_from_slice(b"tower-token-refresh/v1");
    aad.extend_from_slice(&version.to_be_bytes());
    aad.extend_from_slice(context);
    aad
}

impl<S: TokenStore> TokenStore for Encrypted<S> {
    async fn load(&self) -> Result<Option<Record>, StoreError> {
        match self.inner.load().await? {
            Some(record) => self.open(&record).map(Some),
            None => Ok(None),
        }
    }

    fn compare_and_swap(
        &self,
        expected: Option<u64>,
        record: Record,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        let sealed = self.seal(&record);
        drop(record);
        async move { self.inner.compare_and_swap(expected, sealed?).await }
    }

    fn try_lease(
        &self,
        ttl: Duration,
    ) -> impl Future<Output = Result<Option<Lease>, StoreError>> + Send {
        self.inner.try_lease(ttl)
    }

    fn release(&self, lease: Lease) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.inner.release(lease)
    }

    fn subscribe(&self) -> Option<watch::Receiver<u64>> {
        self.inner.subscribe()
    }

    fn poll_interval(&self) -> Duration {
        self.inner.poll_interval()
    }
}

impl<S: fmt::Debug> fmt::Debug for Encrypted<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Encrypted")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    fn store() -> (MemoryStore, Encrypted<MemoryStore>) {
        let inner = MemoryStore::new();
        (
            inner.clone(),
            Encrypted::new(inner, StoreKey::from_bytes([3; 32])),
        )
    }

    #[tokio::test]
    async fn a_record_moved_to_another_version_does_not_open() {
        let (inner, store) = store();
        store
            .compare_and_swap(None, Record::new(1, b"tokens".to_vec()))
            .await
            .unwrap();
        let sealed = inner.load().await.unwrap().unwrap();
        // An attacker with write access replays the sealed bytes as version 2.
        let moved = Record::new(2, sealed.payload().to_vec());
        assert!(inner.compare_and_swap(Some(1), moved).await.unwrap());
        assert!(store.load().await.unwrap_err().is_corrupt());
    }

    /// Found in review: nothing tied a record to the store it was sealed
    /// for, so with one key shared by two services a record copied from
    /// one store into the other opened there.
    #[tokio::test]
    async fn a_record_copied_to_a_store_of_another_context_does_not_open() {
        let key = || StoreKey::from_bytes([3; 32]);
        let (a, b) = (MemoryStore::new(), MemoryStore::new());
        let sealed_a = Encrypted::new(a.clone(), key()).bound_to("service-a");
        sealed_a
            .compare_and_swap(None, Record::new(5, b"a's tokens".to_vec()))
            .await
            .unwrap();
        let copied = a.load().await.unwrap().unwrap();
        assert!(b.compare_and_swap(None, copied).await.unwrap());

        let as_b = Encrypted::new(b.clone(), key()).bound_to("service-b");
        assert!(as_b.load().await.unwrap_err().is_corrupt());
        let unbound = Encrypted::new(b.clone(), key());
        assert!(unbound.load().await.unwrap_err().is_corrupt());
        let as_a = Encrypted::new(b, key()).bound_to("service-a");
        assert_eq!(as_a.load().await.unwrap().unwrap().payload(), b"a's tokens");
    }

    /// Records sealed before contexts existed still open without one.
    #[tokio::test]
    async fn a_record_sealed_without_a_context_opens_as_before() {
        let cipher = XChaCha20Poly1305::new(&[3; 32].into());
        let nonce = XNonce::from([9; NONCE_LEN]);
        let mut aad = b"tower-token-refresh/v1".to_vec();
        aad.extend_from_slice(&4u64.to_be_bytes());
        let payload = Payload {
            msg: b"old tokens".as_slice(),
            aad: &aad,
        };
        let sealed = [
            MAGIC.as_slice(),
            &nonce,
            &cipher.encrypt(&nonce, payload).unwrap(),
        ]
        .concat();
        let (inner, store) = store();
        inner
            .compare_and_swap(None, Record::new(4, sealed))
            .await
            .unwrap();
        assert_eq!(
            store.load().await.unwrap().unwrap().payload(),
            b"old tokens"
        );
    }

    #[tokio::test]
    async fn tampered_and_unsealed_records_are_corrupt() {
        let (inner, store) = store();
        store
            .compare_and_swap(None, Record::new(1, b"tokens".to_vec()))
            .await
            .unwrap();
        let mut bytes = inner.load().await.unwrap().unwrap().payload().to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        inner
            .compare_and_swap(Some(1), Record::new(2, bytes))
            .await
            .unwrap();
        assert!(store.load().await.unwrap_err().is_corrupt());

        inner
            .compare_and_swap(Some(2), Record::new(3, b"{\"plain\":1}".to_vec()))
            .await
            .unwrap();
        let err = store.load().await.unwrap_err();
        assert!(err.to_string().contains("not sealed"), "{err}");
    }

    /// One store per layer, as the other stores are used: a clone seals
    /// and opens as the original does, with every key it was given.
    #[tokio::test]
    async fn a_clone_keeps_the_keys_and_the_context() {
        let inner = MemoryStore::new();
        let old = Encrypted::new(inner.clone(), StoreKey::from_bytes([1; 32])).bound_to("api");
        old.compare_and_swap(None, Record::new(1, b"old".to_vec()))
            .await
            .unwrap();
        let store = Encrypted::new(inner, StoreKey::from_bytes([2; 32]))
            .also_open_with(StoreKey::from_bytes([1; 32]))
            .bound_to("api");
        let clone = store.clone();
        assert_eq!(clone.load().await.unwrap().unwrap().payload(), b"old");
        clone
            .compare_and_swap(Some(1), Record::new(2, b"new".to_vec()))
            .await
            .unwrap();
        assert_eq!(store.load().await.unwrap().unwrap().payload(), b"new");
        assert!(
            old.load().await.unwrap_err().is_corrupt(),
            "sealed with the new key"
        );
    }

    #[tokio::test]
    async fn two_seals_of_one_record_differ() {
        let (inner, store) = store();
        store
            .compare_and_swap(None, Record::new(1, b"same".to_vec()))
            .await
            .unwrap();
        let first = inner.load().await.unwrap().unwrap().payload().to_vec();
        store
            .compare_and_swap(Some(1), Record::new(2, b"same".to_vec()))
            .await
            .unwrap();
        let second = inner.load().await.unwrap().unwrap().payload().to_vec();
        assert_ne!(first[4..28], second[4..28], "nonces must not repeat");
    }
}
