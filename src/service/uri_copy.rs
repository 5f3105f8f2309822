//! [`UriCopy`]: a request's URI, kept for a retry that seldom runs.

use http::uri::{self, Authority, PathAndQuery, Scheme, Uri};

use super::room::{Room, ROOM};

/// The URI a retry sends to.
///
/// Cloning a `Uri` writes the reference counts of its authority and of its
/// path (the bytes it was parsed from), once to clone and once to drop:
/// four atomic read-modify-writes per request for a retry most requests
/// never make (without them, a request through the layer took about 5%
/// less time in the hot-path bench). Copied as bytes into a thread's
/// recycled [`Room`] instead (when the authority and path together fit its
/// [`ROOM`] bytes; longer URIs are cloned whole), the URI is parsed back
/// only when a retry runs, which then allocates the authority and the
/// path.
pub(crate) enum UriCopy {
    /// The parts as bytes.
    Packed(PackedUri),
    /// The URI itself: a request held before its first send, or one whose
    /// scheme is neither `http` nor `https` or whose parts do not fit.
    /// Boxed: inline, it would make every response future 64 bytes larger
    /// (a `Uri` is 88 bytes, this copy 24).
    Whole(Box<Uri>),
}

impl UriCopy {
    /// Copies `uri`, packed when it fits.
    #[inline]
    pub(crate) fn of(uri: &Uri) -> Self {
        match PackedUri::pack(uri) {
            Some(packed) => Self::Packed(packed),
            None => Self::Whole(Box::new(uri.clone())),
        }
    }

    /// The URI, parsed back if packed. `None` only if a packed part no
    /// longer parses, which a valid URI's parts always do: such a request
    /// is not retried, as if its body could not be replayed.
    pub(crate) fn into_uri(self) -> Option<Uri> {
        match self {
            Self::Packed(packed) => packed.unpack(),
            Self::Whole(uri) => Some(*uri),
        }
    }
}

/// A URI's parts: which are present, the scheme as a tag and the authority
/// and path-and-query one after the other, in a room.
pub(crate) struct PackedUri {
    scheme: Option<Standard>,
    /// `None` without an authority (origin form).
    authority_len: Option<u16>,
    /// `None` without a path (authority form, as a `CONNECT` sends).
    path_len: Option<u16>,
    bytes: Room,
}

/// The schemes a tag stands for; any other is cloned whole.
#[derive(Clone, Copy)]
enum Standard {
    Http,
    Https,
}

impl PackedUri {
    #[inline]
    fn pack(uri: &Uri) -> Option<Self> {
        // Strings compared inline; `Scheme`'s `PartialEq` is a call.
        let scheme = match uri.scheme_str() {
            None => None,
            Some("https") => Some(Standard::Https),
            Some("http") => Some(Standard::Http),
            Some(_) => return None,
        };
        let authority = uri.authority().map_or("", Authority::as_str).as_bytes();
        let path = uri
            .path_and_query()
            .map_or("", PathAndQuery::as_str)
            .as_bytes();
        // Checked before a room is taken: a URI that does not fit takes none.
        if authority.len() + path.len() > ROOM {
            return None;
        }
        let mut bytes = Room::take();
        let (authority_out, rest) = bytes.split_at_mut(authority.len());
        rest[..path.len()].copy_from_slice(path);
        authority_out.copy_from_slice(authority);
        Some(Self {
            scheme,
            authority_len: uri.authority().map(|_| authority.len() as u16),
            path_len: uri.path_and_query().map(|_| path.len() as u16),
            bytes,
        })
    }

    fn unpack(self) -> Option<Uri> {
        let authority_len = self.authority_len.map_or(0, usize::from);
        let (authority, rest) = self.bytes.split_at(authority_len);
        let mut parts = uri::Parts::default();
        parts.scheme = self.scheme.map(|scheme| match scheme {
            Standard::Http => Scheme::HTTP,
            Standard::Https => Scheme::HTTPS,
        });
        if self.authority_len.is_some() {
            parts.authority = Some(Authority::try_from(authority).ok()?);
        }
        if let Some(path_len) = self.path_len {
            let path = &rest[..usize::from(path_len)];
            parts.path_and_query = Some(PathAndQuery::try_from(path).ok()?);
        }
        Uri::from_parts(parts).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(uri: &Uri) -> Uri {
        UriCopy::of(uri).into_uri().expect("a valid URI comes back")
    }

    fn is_packed(uri: &str) -> bool {
        matches!(UriCopy::of(&uri.parse().unwrap()), UriCopy::Packed(_))
    }

    #[test]
    fn every_form_of_request_target_comes_back_as_it_was() {
        for uri in [
            "https://api.example.com/v1/items?page=2",
            "http://127.0.0.1:8080/",
            "https://user@example.com",
            "http://[::1]:3000/a%20b?",
            "/v1/items?page=2",
            "/",
            "*",
            "example.com:443",
        ] {
            let parsed: Uri = uri.parse().unwrap();
            let back = round_trip(&parsed);
            assert_eq!(back, parsed, "{uri}");
            assert_eq!(back.to_string(), parsed.to_string(), "{uri}");
            assert_eq!(back.path_and_query(), parsed.path_and_query(), "{uri}");
            assert!(is_packed(uri), "{uri}");
        }
    }

    #[test]
    fn other_schemes_and_long_uris_are_kept_whole() {
        let long = format!("https://example.com/{}", "p".repeat(ROOM));
        for uri in ["ftp://example.com/file", "custom://host/x", long.as_str()] {
            assert!(!is_packed(uri), "{uri}");
            let parsed: Uri = uri.parse().unwrap();
            assert_eq!(round_trip(&parsed).to_string(), parsed.to_string());
        }
        // `example.com` and `/` take 12 bytes: these fill a room, and
        // overflow it by one.
        let fits = format!("https://example.com/{}", "p".repeat(ROOM - 12));
        assert!(is_packed(&fits), "authority and path together fill it");
        let parsed: Uri = fits.parse().unwrap();
        assert_eq!(round_trip(&parsed), parsed);
        let over = format!("https://example.com/{}", "p".repeat(ROOM - 11));
        assert!(!is_packed(&over), "one byte more");
        let parsed: Uri = over.parse().unwrap();
        assert_eq!(round_trip(&parsed), parsed);
    }

    #[test]
    fn a_part_that_no_longer_parses_makes_the_copy_unusable() {
        // A valid URI never packs such bytes; forged here to the same effect.
        let UriCopy::Packed(mut packed) = UriCopy::of(&"http://a/b".parse().unwrap()) else {
            panic!("packed");
        };
        packed.bytes[0] = b' ';
        assert!(UriCopy::Packed(packed).into_uri().is_none());
    }

    proptest! {
        #[test]
        fn any_uri_comes_back_as_it_was(
            scheme in prop_oneof![Just(""), Just("http://"), Just("https://"), Just("HTTPS://")],
            host in "[a-z0-9.-]{1,30}",
            port in proptest::option::of(any::<u16>()),
            path in "(/[a-zA-Z0-9._~%!$&'()*+,;=:@-]{0,12}){0,4}",
            query in proptest::option::of("[a-zA-Z0-9=&%/?._-]{0,20}"),
        ) {
            let authority = match port {
                Some(port) => format!("{host}:{port}"),
                None => host,
            };
            let target = format!(
                "{}{path}{}",
                if scheme.is_empty() { String::new() } else { format!("{scheme}{authority}") },
                query.map(|q| format!("?{q}")).unwrap_or_default(),
            );
            if let Ok(uri) = target.parse::<Uri>() {
                let back = round_trip(&uri);
                prop_assert_eq!(&back, &uri);
                prop_assert_eq!(back.to_string(), uri.to_string());
            }
        }
    }
}
