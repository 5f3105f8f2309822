//! Scopes (RFC 6749 §3.3): case-sensitive tokens of printable ASCII other
//! than `"` and `\`, separated by single spaces, order irrelevant.

use std::fmt;

/// A set of scope tokens, in the order first given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Scope(Vec<String>);

impl Scope {
    /// Parses a `scope` value; `None` if it breaks the §3.3 syntax. The
    /// empty string is the empty scope (as a form parameter it never gets
    /// here: an empty parameter counts as omitted).
    pub(super) fn parse(value: &str) -> Option<Self> {
        let mut tokens: Vec<String> = Vec::new();
        if value.is_empty() {
            return Some(Self(tokens));
        }
        for token in value.split(' ') {
            // `split(' ')` yields an empty token for a leading, trailing or
            // doubled space: all outside the grammar.
            let valid = !token.is_empty()
                && token
                    .bytes()
                    .all(|b| matches!(b, 0x21 | 0x23..=0x5b | 0x5d..=0x7e));
            if !valid {
                return None;
            }
            if !tokens.iter().any(|t| t == token) {
                tokens.push(token.to_owned());
            }
        }
        Some(Self(tokens))
    }

    /// Whether every token here is also in `other`.
    pub(super) fn is_subset_of(&self, other: &Scope) -> bool {
        self.0.iter().all(|token| other.0.contains(token))
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(" "))
    }
}
