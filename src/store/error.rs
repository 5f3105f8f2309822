//! [`StoreError`]: a store that failed, and why.

use std::error::Error as StdError;
use std::fmt;

use crate::BoxError;

/// A store operation that failed.
///
/// The layer never fails a request because of one: it logs the error and,
/// while the current token is still good, puts the refresh off and keeps
/// sending that token. It refreshes without the store only once the token
/// must be replaced, or at once when the record is
/// [corrupt](Self::is_corrupt). The message never contains a token.
///
/// ```
/// use tower_token_refresh::store::StoreError;
///
/// let err = StoreError::corrupt("the token file is not valid JSON");
/// assert!(err.is_corrupt());
/// assert_eq!(err.to_string(), "corrupt token store: the token file is not valid JSON");
///
/// let down = StoreError::unavailable("connection refused");
/// assert!(!down.is_corrupt());
/// ```
pub struct StoreError {
    kind: Kind,
    message: String,
    source: Option<BoxError>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Unavailable,
    Corrupt,
}

impl StoreError {
    /// The store could not be reached or did not complete the operation.
    ///
    /// ```
    /// use tower_token_refresh::store::StoreError;
    ///
    /// let err = StoreError::unavailable("redis did not answer");
    /// assert!(!err.is_corrupt());
    /// assert!(err.to_string().contains("redis did not answer"));
    /// ```
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(Kind::Unavailable, message)
    }

    /// The stored data cannot be read: malformed, from another format, or
    /// (for a sealed store) not sealed with this key. The layer never
    /// overwrites a record it cannot read.
    ///
    /// ```
    /// use tower_token_refresh::store::StoreError;
    ///
    /// let err = StoreError::corrupt("the token file is not JSON");
    /// assert!(err.is_corrupt());
    /// ```
    pub fn corrupt(message: impl Into<String>) -> Self {
        Self::new(Kind::Corrupt, message)
    }

    fn new(kind: Kind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// Attaches the underlying error.
    ///
    /// ```
    /// use std::error::Error;
    /// use tower_token_refresh::store::StoreError;
    ///
    /// let io = std::io::Error::other("disk full");
    /// let err = StoreError::unavailable("writing the token file").with_source(io);
    /// assert_eq!(err.source().unwrap().to_string(), "disk full");
    /// ```
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Whether the stored data is unreadable, as opposed to unreachable.
    ///
    /// ```
    /// use tower_token_refresh::store::StoreError;
    ///
    /// assert!(StoreError::corrupt("sealed with another key").is_corrupt());
    /// assert!(!StoreError::unavailable("timed out").is_corrupt());
    /// ```
    pub fn is_corrupt(&self) -> bool {
        self.kind == Kind::Corrupt
    }

    /// Whether the store could not be reached (or took too long), as
    /// opposed to holding unreadable data: the one or the other.
    ///
    /// ```
    /// use tower_token_refresh::store::StoreError;
    ///
    /// assert!(StoreError::unavailable("timed out").is_unavailable());
    /// assert!(!StoreError::corrupt("sealed with another key").is_unavailable());
    /// ```
    pub fn is_unavailable(&self) -> bool {
        self.kind == Kind::Unavailable
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            Kind::Unavailable => write!(f, "token store unavailable: {}", self.message),
            Kind::Corrupt => write!(f, "corrupt token store: {}", self.message),
        }
    }
}

impl fmt::Debug for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreError")
            .field("kind", &self.kind)
            .field("message", &self.message)
            .field("source", &self.source)
            .finish()
    }
}

impl StdError for StoreError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|source| source as &(dyn StdError + 'static))
    }
}
