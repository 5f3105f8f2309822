//! [`HeadersCopy`]: a request's headers, kept for a retry that seldom runs.

use http::header::{HeaderMap, HeaderName, HeaderValue};

use super::room::Room;

/// Bytes before each packed name and value: flags, name length (`u16`),
/// value length (`u32`).
const PREFIX: usize = 7;

/// The one flag: the value is marked sensitive.
const SENSITIVE: u8 = 1;

/// The headers a retry sends again.
///
/// Cloning a `HeaderMap` allocates its index and its entry table, and every
/// value made from a `&str` or a `String` allocates again the first time it
/// is cloned (its unique `Bytes` becomes shared): four allocations for a
/// request with two such headers, on every request, for a retry that most
/// requests never make. Packed, a request's headers are copied as bytes
/// into one buffer, a thread's recycled [`Room`] up to [`ROOM`](super::room::ROOM) bytes, and
/// parsed back only when a retry runs.
pub(crate) enum HeadersCopy {
    /// Names and values as bytes, in the map's iteration order.
    Packed(PackedHeaders),
    /// The map itself: a request held before its first send, or one whose
    /// headers do not fit the packed lengths. Boxed: inline, it made every
    /// response future 16 bytes larger, and a request through the layer
    /// 23 instructions longer (callgrind, hot-path bench); a box is only
    /// made on the slow paths, which allocate anyway.
    Map(Box<HeaderMap>),
}

impl HeadersCopy {
    /// Copies `headers`, packed when every length fits.
    #[inline]
    pub(crate) fn of(headers: &HeaderMap) -> Self {
        match PackedHeaders::pack(headers) {
            Some(packed) => Self::Packed(packed),
            None => Self::Map(Box::new(headers.clone())),
        }
    }

    /// Turns the copy into a map, unpacking it if needed. `None` if a packed
    /// value no longer parses, which only a value built with
    /// `HeaderValue::from_maybe_shared_unchecked` from invalid bytes can do:
    /// such a request is not retried, as if its body could not be replayed.
    pub(crate) fn into_map(self) -> Option<HeaderMap> {
        match self {
            Self::Packed(packed) => packed.unpack(),
            Self::Map(map) => Some(*map),
        }
    }
}

/// Each entry: flags, name length, value length, name, value.
pub(crate) struct PackedHeaders {
    bytes: Buffer,
    /// Distinct names: what the unpacked map is sized for.
    names: usize,
}

/// The packed bytes: in a recycled [`Room`] up to [`ROOM`](super::room::ROOM), else on the
/// heap, sized once. Written with one copy per name and per value (a `SmallVec`'s
/// `extend_from_slice` is an insert at the end, which also moved the
/// empty tail: a `memmove` call per copy).
enum Buffer {
    Room { len: u16, bytes: Room },
    Heap(Box<[u8]>),
}

impl Buffer {
    fn as_slice(&self) -> &[u8] {
        match self {
            Self::Room { len, bytes } => &bytes[..usize::from(*len)],
            Self::Heap(bytes) => bytes,
        }
    }
}

impl PackedHeaders {
    /// `None` if a name or value is too long for its length field.
    ///
    /// One pass over the map for headers that fit a room: iterating a
    /// `HeaderMap` is not free, and most requests' headers fit.
    #[inline]
    fn pack(headers: &HeaderMap) -> Option<Self> {
        let mut bytes = Room::take();
        let mut len = 0;
        for (name, value) in headers {
            match write_entry(&mut bytes[len..], name, value) {
                Some(written) => len += written,
                None => return Self::pack_on_heap(headers),
            }
        }
        Some(Self {
            bytes: Buffer::Room {
                len: len as u16,
                bytes,
            },
            names: headers.keys_len(),
        })
    }

    /// Headers past a room's size: sized first, so the buffer is
    /// allocated once.
    #[cold]
    #[inline(never)]
    fn pack_on_heap(headers: &HeaderMap) -> Option<Self> {
        let mut size = 0;
        for (name, value) in headers {
            let name_len = u16::try_from(name.as_str().len()).ok()?;
            let value_len = u32::try_from(value.len()).ok()?;
            size += PREFIX + usize::from(name_len) + value_len as usize;
        }
        let mut bytes = vec![0; size].into_boxed_slice();
        let mut len = 0;
        for (name, value) in headers {
            len += write_entry(&mut bytes[len..], name, value)?;
        }
        Some(Self {
            bytes: Buffer::Heap(bytes),
            names: headers.keys_len(),
        })
    }

    /// `None` if a value no longer parses. The map is sized by distinct
    /// names, as the original was, and built with the fallible calls: the
    /// original held these entries, but a panic here would lose the request.
    fn unpack(self) -> Option<HeaderMap> {
        let mut map = HeaderMap::try_with_capacity(self.names).ok()?;
        let mut rest = self.bytes.as_slice();
        while let Some((prefix, tail)) = rest.split_first_chunk::<PREFIX>() {
            let [flags, n0, n1, v0, v1, v2, v3] = *prefix;
            let name_len = usize::from(u16::from_le_bytes([n0, n1]));
            let value_len = u32::from_le_bytes([v0, v1, v2, v3]) as usize;
            let (name, tail) = tail.split_at(name_len);
            let (value, tail) = tail.split_at(value_len);
            let mut value = HeaderValue::from_bytes(value).ok()?;
            value.set_sensitive(flags & SENSITIVE != 0);
            map.try_append(HeaderName::from_bytes(name).ok()?, value)
                .ok()?;
            rest = tail;
        }
        Some(map)
    }
}

/// Writes one entry at the start of `out` and returns its length, or
/// `None` if it does not fit. The caller has checked that the lengths fit
/// their fields, or `out` is too short for any that would not.
#[inline]
fn write_entry(out: &mut [u8], name: &HeaderName, value: &HeaderValue) -> Option<usize> {
    let name = name.as_str().as_bytes();
    let value_bytes = value.as_bytes();
    let len = PREFIX + name.len() + value_bytes.len();
    let out = out.get_mut(..len)?;
    let flags = if value.is_sensitive() { SENSITIVE } else { 0 };
    let [n0, n1] = (name.len() as u16).to_le_bytes();
    let [v0, v1, v2, v3] = (value_bytes.len() as u32).to_le_bytes();
    let (prefix, rest) = out.split_at_mut(PREFIX);
    prefix.copy_from_slice(&[flags, n0, n1, v0, v1, v2, v3]);
    let (name_out, value_out) = rest.split_at_mut(name.len());
    name_out.copy_from_slice(name);
    value_out.copy_from_slice(value_bytes);
    Some(len)
}

#[cfg(test)]
mod tests {
    use super::super::room::ROOM;
    use super::*;
    use http::header::{ACCEPT, SET_COOKIE, USER_AGENT};
    use proptest::prelude::*;

    fn round_trip(headers: &HeaderMap) -> HeaderMap {
        HeadersCopy::of(headers)
            .into_map()
            .expect("valid headers unpack")
    }

    /// Every value of every name, in iteration order, with its flag.
    fn listed(headers: &HeaderMap) -> Vec<(String, Vec<u8>, bool)> {
        headers
            .iter()
            .map(|(name, value)| {
                let value_bytes = value.as_bytes().to_vec();
                (name.to_string(), value_bytes, value.is_sensitive())
            })
            .collect()
    }

    #[test]
    fn standard_custom_repeated_and_sensitive_headers_come_back_as_they_were() {
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        headers.append(SET_COOKIE, HeaderValue::from_static("a=1"));
        headers.insert(
            "x-trace",
            HeaderValue::from_bytes(b"caf\xc3\xa9\t1").unwrap(),
        );
        headers.append(SET_COOKIE, HeaderValue::from_static("b=2"));
        let mut secret = HeaderValue::from_static("s3cr3t");
        secret.set_sensitive(true);
        headers.insert("x-api-key", secret);
        headers.insert(USER_AGENT, HeaderValue::from_static(""));

        assert!(matches!(HeadersCopy::of(&headers), HeadersCopy::Packed(_)));
        let back = round_trip(&headers);
        assert_eq!(listed(&back), listed(&headers));
        assert!(back["x-api-key"].is_sensitive());
        assert!(!back[ACCEPT].is_sensitive());
    }

    #[test]
    fn the_benchmark_request_headers_fit_a_room() {
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        headers.insert(USER_AGENT, HeaderValue::from_static("bench/1.0"));
        let HeadersCopy::Packed(packed) = HeadersCopy::of(&headers) else {
            panic!("packed");
        };
        let len = packed.bytes.as_slice().len();
        assert!(matches!(packed.bytes, Buffer::Room { .. }), "{len} bytes");
    }

    #[test]
    fn headers_past_a_rooms_size_are_packed_on_the_heap() {
        let mut headers = HeaderMap::new();
        let long = "v".repeat(4 * ROOM);
        headers.insert("x-long", HeaderValue::from_str(&long).unwrap());
        headers.insert(ACCEPT, HeaderValue::from_static("*/*"));
        let HeadersCopy::Packed(packed) = HeadersCopy::of(&headers) else {
            panic!("packed");
        };
        assert!(matches!(packed.bytes, Buffer::Heap(_)));
        assert_eq!(listed(&round_trip(&headers)), listed(&headers));
    }

    #[test]
    fn no_headers_is_an_empty_map() {
        assert!(round_trip(&HeaderMap::new()).is_empty());
    }

    #[test]
    fn a_value_that_no_longer_parses_makes_the_copy_unusable() {
        // Only `from_maybe_shared_unchecked` can build such a value; the
        // packed form is forged here to the same effect.
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static("ok"));
        let HeadersCopy::Packed(mut packed) = HeadersCopy::of(&headers) else {
            panic!("packed");
        };
        let Buffer::Room { len, bytes } = &mut packed.bytes else {
            panic!("in a room");
        };
        bytes[usize::from(*len) - 1] = b'\n';
        assert!(HeadersCopy::Packed(packed).into_map().is_none());
    }

    fn header_name() -> impl Strategy<Value = HeaderName> {
        prop_oneof![
            Just(ACCEPT),
            Just(SET_COOKIE),
            Just(USER_AGENT),
            "[a-z0-9-]{1,40}".prop_map(|name| HeaderName::try_from(name).unwrap()),
        ]
    }

    fn header_value() -> impl Strategy<Value = HeaderValue> {
        (
            proptest::collection::vec(
                prop_oneof![Just(b'\t'), 0x20u8..0x7f, 0x80u8..=0xff],
                0..300,
            ),
            any::<bool>(),
        )
            .prop_map(|(bytes, sensitive)| {
                let mut value = HeaderValue::from_bytes(&bytes).unwrap();
                value.set_sensitive(sensitive);
                value
            })
    }

    proptest! {
        #[test]
        fn any_header_map_comes_back_as_it_was(
            entries in proptest::collection::vec((header_name(), header_value()), 0..12),
            removed in proptest::option::of(header_name()),
        ) {
            let mut headers = HeaderMap::new();
            for (name, value) in entries {
                headers.append(name, value);
            }
            // Removing reorders the map's entries: the copy follows.
            if let Some(name) = removed {
                headers.remove(name);
            }
            prop_assert_eq!(listed(&round_trip(&headers)), listed(&headers));
        }
    }
}
