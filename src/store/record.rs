//! What a store keeps: a versioned record and a lease.

use std::fmt;

use zeroize::Zeroize;

/// One version of the shared tokens, as a store keeps it.
///
/// The payload is opaque to the store: the layer's encoding of the tokens,
/// sealed when the store is wrapped in
/// [`Encrypted`]. Unsealed it holds credentials,
/// so it is wiped from memory on drop and never printed.
///
/// ```
/// use tower_token_refresh::store::Record;
///
/// let record = Record::new(3, b"secret".to_vec());
/// assert_eq!(record.version(), 3);
/// assert_eq!(record.payload(), b"secret");
/// // Neither the text nor its bytes (b's' is 115) are printed.
/// assert_eq!(format!("{record:?}"), "Record { version: 3, payload_len: 6 }");
/// ```
///
#[cfg_attr(feature = "encryption", doc = "[`Encrypted`]: crate::store::Encrypted")]
#[cfg_attr(
    not(feature = "encryption"),
    doc = "[`Encrypted`]: https://docs.rs/tower-token-refresh/latest/tower_token_refresh/store/struct.Encrypted.html"
)]
#[derive(Clone, PartialEq, Eq)]
pub struct Record {
    version: u64,
    payload: Vec<u8>,
}

impl Record {
    /// A record of `payload` at `version`.
    ///
    /// ```
    /// use tower_token_refresh::store::Record;
    ///
    /// let first = Record::new(1, b"tokens".to_vec());
    /// assert_eq!(first.version(), 1);
    /// ```
    pub fn new(version: u64, payload: Vec<u8>) -> Self {
        Self { version, payload }
    }

    /// Versions start at 1 and grow with each stored refresh: usually by
    /// one, by more after a store that lost its data (see
    /// [`TokenStore::compare_and_swap`](crate::store::TokenStore::compare_and_swap)).
    ///
    /// ```
    /// use tower_token_refresh::store::Record;
    ///
    /// let stored = Record::new(4, Vec::new());
    /// let next = Record::new(stored.version() + 1, b"newer".to_vec());
    /// assert_eq!(next.version(), 5);
    /// ```
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The encoded (possibly sealed) tokens.
    ///
    /// ```
    /// use tower_token_refresh::store::Record;
    ///
    /// let record = Record::new(1, vec![1, 2, 3]);
    /// assert_eq!(record.payload(), [1, 2, 3]);
    /// ```
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        self.payload.zeroize();
    }
}

impl fmt::Debug for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Record")
            .field("version", &self.version)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

/// Proof of holding a store's refresh lease, handed back to release it.
///
/// The owner is a random identity of the holder, so a holder whose lease
/// lapsed cannot release the lease someone else took since.
///
/// ```
/// use tower_token_refresh::store::Lease;
///
/// let lease = Lease::new("replica-7f3a");
/// assert_eq!(lease.owner(), "replica-7f3a");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    owner: Box<str>,
}

impl Lease {
    /// A lease held by `owner`.
    ///
    /// ```
    /// use tower_token_refresh::store::Lease;
    ///
    /// assert_eq!(Lease::new(String::from("worker-2")), Lease::new("worker-2"));
    /// ```
    pub fn new(owner: impl Into<String>) -> Self {
        Self {
            owner: owner.into().into_boxed_str(),
        }
    }

    /// Who holds it.
    ///
    /// ```
    /// use tower_token_refresh::store::Lease;
    ///
    /// assert_eq!(Lease::new("worker-2").owner(), "worker-2");
    /// ```
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// A fresh random owner identity: 128 bits, hex.
    pub(crate) fn random_owner() -> String {
        format!("{:032x}", fastrand::u128(..))
    }

    /// A fresh lease of this process, for a store others can read: its
    /// owner, `{pid}-{128 random bits in hex}`, says which process holds it.
    #[cfg(any(feature = "file", feature = "redis"))]
    pub(crate) fn of_this_process() -> Self {
        Self::new(format!("{}-{}", std::process::id(), Self::random_owner()))
    }
}
