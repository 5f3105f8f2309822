//! Which requests may carry the token: transport and origin rules.

use std::net::IpAddr;

use http::header::{HeaderMap, HOST};
use http::uri::{Authority, Scheme, Uri};

/// Where a request may be sent with the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Origin {
    scheme: Option<Scheme>,
    host: String,
    port: Option<u16>,
}

impl Origin {
    /// The origin `uri` names; `None` without a host, or with port 0:
    /// such an origin matches no request.
    pub(crate) fn of(uri: &Uri) -> Option<Self> {
        if uri.port_u16() == Some(0) {
            return None;
        }
        Some(Self {
            scheme: uri.scheme().cloned(),
            host: without_root_dot(uri.host()?).to_ascii_lowercase(),
            // "https://host" means port 443, not any port.
            port: effective_port(uri),
        })
    }

    /// Whether `uri`, given as an allowed origin, has a path or query,
    /// which is ignored: its whole origin gets the token.
    pub(crate) fn has_path_or_query(uri: &Uri) -> bool {
        !matches!(uri.path(), "" | "/") || uri.query().is_some()
    }

    fn matches(&self, uri: &Uri) -> bool {
        let Some(host) = uri.host() else {
            return false;
        };
        if !same_host(host, &self.host) {
            return false;
        }
        if let Some(scheme) = &self.scheme {
            if uri.scheme() != Some(scheme) {
                return false;
            }
        }
        match (self.port, &self.scheme) {
            (Some(port), _) => effective_port(uri) == Some(port),
            // A bare host: every scheme and port, as the builder says.
            (None, None) => true,
            // A scheme without a default port, and no port given: only
            // requests without one either. Found in review: any port
            // matched, where the builder says an origin without a port
            // means its scheme's default.
            (None, Some(_)) => effective_port(uri).is_none(),
        }
    }
}

/// `host` without the dot of a fully qualified name.
fn without_root_dot(host: &str) -> &str {
    host.strip_suffix('.').unwrap_or(host)
}

/// Whether `a` and `b` name one host: case aside, and `api.example.com.`
/// (fully qualified) is `api.example.com`.
fn same_host(a: &str, b: &str) -> bool {
    without_root_dot(a).eq_ignore_ascii_case(without_root_dot(b))
}

fn effective_port(uri: &Uri) -> Option<u16> {
    uri.port_u16().or_else(|| default_port(uri.scheme_str()?))
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "https" | "wss" => Some(443),
        "http" | "ws" => Some(80),
        _ => None,
    }
}

/// The per-layer rules, decided once per request before anything else.
#[derive(Debug, Clone, Default)]
pub(crate) struct TransportRules {
    pub(crate) allow_insecure: bool,
    pub(crate) origins: Option<Vec<Origin>>,
}

impl TransportRules {
    /// Whether the token may be added to a request for `uri` with
    /// `headers`: its origin is allowed, and a `Host` header it carries
    /// names the same origin. Requests to other origins pass through
    /// untouched. One test of the list for a layer without one: the hot
    /// path.
    #[inline]
    pub(crate) fn allows(&self, uri: &Uri, headers: &HeaderMap) -> bool {
        match &self.origins {
            None => true,
            Some(origins) => {
                origins.iter().any(|o| o.matches(uri)) && host_header_agrees(uri, headers)
            }
        }
    }

    /// Whether `uri`'s origin is allowed, whatever its headers.
    #[cfg(test)]
    fn origin_allowed(&self, uri: &Uri) -> bool {
        self.allows(uri, &HeaderMap::new())
    }

    /// Whether sending the token could expose it on the wire: an explicit
    /// scheme other than `https` (`http://`, or one spelled otherwise) to a
    /// host that is not loopback.
    ///
    /// Only the exact `https` counts: a URI built with the scheme `"HTTPS"`
    /// holds it as spelled (only a parsed URI string is lowercased), and
    /// connectors choose TLS by comparing with `https`, so such a request
    /// would go out in clear. A URI with neither scheme nor authority (a
    /// path handed to a connection, as tonic does) names no transport and
    /// is not refused, nor is `unix` naming a socket path as hyperlocal
    /// does (its host the path in hex), which never leaves the host. Any
    /// other `unix` URI is refused: a connector that does not insist on
    /// `http` (hyper-util's, under a TLS wrapper) reaches
    /// `unix://api.example.com/` over TCP, in clear. An authority without
    /// a scheme (a `CONNECT` request's target) is judged as hyper-util's
    /// client sends it: over TLS to port 443 only (found in review: such a
    /// target to port 80 got the token in clear).
    #[inline]
    pub(crate) fn is_insecure(&self, uri: &Uri) -> bool {
        !self.allow_insecure
            // String compares, inlined; `Scheme`'s `PartialEq` is a call.
            && match uri.scheme_str() {
                Some(scheme) => {
                    scheme != "https" && !(scheme == "unix" && names_a_socket_path(uri))
                }
                None => uri.authority().is_some() && uri.port_u16() != Some(443),
            }
            && !is_loopback_authority(uri)
    }
}

/// Whether a `Host` header the caller set names the origin `uri` names (or
/// there is none). Over HTTP/1 a client sends the caller's `Host`, and a
/// front end that routes by it (a CDN, an ingress) would hand the token to
/// whichever backend the header names, past the allow-list (found in
/// review). Only asked with an allow-list: without one every origin gets
/// the token anyway. Two `Host` headers, or one that is not an authority,
/// never agree.
fn host_header_agrees(uri: &Uri, headers: &HeaderMap) -> bool {
    let mut hosts = headers.get_all(HOST).iter();
    match (hosts.next(), hosts.next()) {
        (None, _) => true,
        (Some(host), None) => names_the_origin_of(host.as_bytes(), uri),
        (Some(_), Some(_)) => false,
    }
}

/// Whether `host` (a `Host` header's value) names the host and port `uri`
/// does, the port defaulting to the scheme's.
fn names_the_origin_of(host: &[u8], uri: &Uri) -> bool {
    if host.contains(&b'@') {
        return false;
    }
    // The usual case, the URI's own authority, decided without parsing:
    // `Authority::try_from` copies the bytes (an allocation a request).
    if uri
        .authority()
        .is_some_and(|own| own.as_str().as_bytes().eq_ignore_ascii_case(host))
    {
        return true;
    }
    let (Ok(named), Some(target)) = (Authority::try_from(host), uri.host()) else {
        return false;
    };
    let port = named
        .port_u16()
        .or_else(|| uri.scheme_str().and_then(default_port));
    same_host(named.host(), target) && port == effective_port(uri)
}

/// Whether `uri` names a socket path as hyperlocal writes it
/// (`unix://2f746d702f736f636b:0/`): the path's bytes in hex as the host,
/// and port 0. Hex alone is not enough: `db`, `cafe` and `3232235777`
/// (192.168.1.1 to `inet_aton`) are hosts too, and a TCP connection to
/// port 0 fails instead of carrying the token.
fn names_a_socket_path(uri: &Uri) -> bool {
    uri.port_u16() == Some(0)
        && uri.host().is_some_and(|host| {
            !host.is_empty() && host.len() % 2 == 0 && host.bytes().all(|b| b.is_ascii_hexdigit())
        })
}

/// Whether `uri` names a loopback host. The usual `127.0.0.1:port` is told
/// from the authority's text at once: `Uri::host` scans it from both ends
/// and cost more than the rest of a plain-http loopback request's checks.
/// Only an authority without userinfo (no `@`) is read that way; anything
/// else goes through `Uri::host` and a full parse.
fn is_loopback_authority(uri: &Uri) -> bool {
    let Some(authority) = uri.authority() else {
        return false;
    };
    let text = authority.as_str().as_bytes();
    // `127.0.0.1` with at most a port: no scan at all. Digits only after
    // the colon, so there is no userinfo (`127.0.0.1:80@evil.example`).
    if let Some(rest) = text.strip_prefix(b"127.0.0.1") {
        match rest.split_first() {
            None => return true,
            Some((b':', port)) if port.iter().all(u8::is_ascii_digit) => return true,
            Some(_) => {}
        }
    }
    // Byte scans: `str` searches with a `char` pattern cost several times
    // more on strings this short.
    if !text.contains(&b'@') {
        let end = match text.first() {
            Some(b'[') => text
                .iter()
                .position(|&b| b == b']')
                .map_or(text.len(), |e| e + 1),
            _ => text.iter().position(|&b| b == b':').unwrap_or(text.len()),
        };
        let host = &text[..end];
        if host == b"127.0.0.1" || host == b"[::1]" {
            return true;
        }
    }
    uri.host().is_some_and(is_loopback)
}

pub(crate) fn is_loopback(host: &str) -> bool {
    // The usual spellings first: parsing an address costs more than the
    // rest of the layer's work on a plain-http loopback request.
    if host == "127.0.0.1" || host == "[::1]" || host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    // Loopback too: an IPv4 loopback address mapped into IPv6
    // (`[::ffff:127.0.0.1]`). Not the fully qualified `localhost.`, which a
    // resolver may send to DNS instead of answering from the hosts file.
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse::<IpAddr>()
        .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(s: &str) -> Uri {
        s.parse().unwrap()
    }

    /// Rules allowing only `origins` (plain http refused).
    fn listing(origins: &[&str]) -> TransportRules {
        let origins = origins.iter().map(|o| Origin::of(&uri(o)).unwrap());
        TransportRules {
            allow_insecure: false,
            origins: Some(origins.collect()),
        }
    }

    #[test]
    fn an_origin_matches_with_or_without_the_root_dot() {
        for (allowed, sent) in [
            ("https://api.example.com.", "https://api.example.com/x"),
            ("https://api.example.com", "https://API.example.com./x"),
        ] {
            let origin = Origin::of(&uri(allowed)).unwrap();
            assert!(origin.matches(&uri(sent)), "{allowed} {sent}");
        }
        let origin = Origin::of(&uri("https://api.example.com")).unwrap();
        assert!(!origin.matches(&uri("https://api.example.co/x")));
    }

    #[test]
    fn an_allowed_origin_that_does_not_do_what_it_seems_is_told_apart() {
        for nothing in ["/v1", "https://api.example.com:0"] {
            assert_eq!(Origin::of(&uri(nothing)), None, "{nothing}");
        }
        for whole in ["https://api.example.com", "https://api.example.com:8443/"] {
            assert!(!Origin::has_path_or_query(&uri(whole)), "{whole}");
        }
        for part in [
            "https://gw.example.com/team-a/",
            "https://api.example.com/?key=k",
        ] {
            assert!(Origin::has_path_or_query(&uri(part)), "{part}");
        }
    }

    #[test]
    fn plain_http_is_refused_except_to_loopback() {
        let rules = TransportRules::default();
        assert!(rules.is_insecure(&uri("http://api.example.com/x")));
        assert!(!rules.is_insecure(&uri("https://api.example.com/x")));
        for ok in [
            "http://127.0.0.1:8080/",
            "http://127.9.9.9/",
            "http://localhost/",
            "http://[::1]:80/",
            "http://[::ffff:127.0.0.1]:80/",
        ] {
            assert!(!rules.is_insecure(&uri(ok)), "{ok}");
        }
        assert!(rules.is_insecure(&uri("http://[::ffff:10.0.0.1]/")));
        assert!(
            rules.is_insecure(&uri("http://localhost./")),
            "may go to DNS"
        );
        // Userinfo is not the host, however it looks.
        assert!(rules.is_insecure(&uri("http://127.0.0.1:80@evil.example.com/")));
        assert!(rules.is_insecure(&uri("http://127.0.0.1@evil.example.com:80/")));
        assert!(rules.is_insecure(&uri("http://127.0.0.1.evil.example.com/")));
        assert!(rules.is_insecure(&uri("http://127.0.0.10.example.com:80/")));
        assert!(!rules.is_insecure(&uri("http://127.0.0.1/")));
        assert!(!rules.is_insecure(&uri("http://127.0.0.1:/")));
        assert!(!rules.is_insecure(&uri("http://user@127.0.0.1:80/")));
        // No scheme (e.g. a relative URI handed to a connection) is not "explicit http".
        assert!(!rules.is_insecure(&uri("/path")));
        // An authority without a scheme (a `CONNECT` target) goes out as
        // hyper-util's client sends it: over TLS to port 443 only.
        assert!(rules.is_insecure(&uri("api.example.com:80")));
        assert!(rules.is_insecure(&uri("api.example.com")));
        assert!(rules.is_insecure(&uri("api.example.com:8443")));
        assert!(!rules.is_insecure(&uri("api.example.com:443")));
        assert!(!rules.is_insecure(&uri("127.0.0.1:8080")));
        // A scheme is what it is spelled: only `https` is sent over TLS.
        let built = |scheme: &str, host: &str| {
            Uri::builder()
                .scheme(scheme)
                .authority(host)
                .path_and_query("/")
                .build()
                .unwrap()
        };
        for scheme in ["HTTPS", "Https", "HTTP", "ws", "wss", "h2c"] {
            // Since http 1.6 a scheme built as "HTTPS" is `https` (what
            // connectors choose TLS by); before, it kept its spelling and
            // went out in clear. Either way the rule follows the scheme held.
            let remote = built(scheme, "api.example.com");
            let tls = remote.scheme_str() == Some("https");
            assert_eq!(rules.is_insecure(&remote), !tls, "{scheme}");
            assert!(
                !rules.is_insecure(&built(scheme, "127.0.0.1:80")),
                "{scheme}"
            );
        }
        assert!(!rules.is_insecure(&built("https", "api.example.com")));
        // A Unix domain socket, as hyperlocal addresses one; not a host
        // by name under the same scheme, which a connector that does not
        // enforce `http` reaches over TCP.
        assert!(!rules.is_insecure(&built("unix", "2f746d702f736f636b:0")));
        assert!(rules.is_insecure(&built("unix", "api.example.com")));
        assert!(rules.is_insecure(&built("unix", "10.0.0.7:80")));
        assert!(rules.is_insecure(&built("unix", "abc:0")), "half a byte");
        // Hex, but hosts: a service name, and a number `inet_aton` reads
        // as 192.168.1.1.
        assert!(rules.is_insecure(&built("unix", "db")));
        assert!(rules.is_insecure(&built("unix", "cafe:5432")));
        assert!(rules.is_insecure(&built("unix", "3232235777:80")));
        assert!(rules.is_insecure(&uri("HTTP://api.example.com/")));
        assert!(!rules.is_insecure(&uri("HTTPS://api.example.com/")));
        let permissive = TransportRules {
            allow_insecure: true,
            ..TransportRules::default()
        };
        assert!(!permissive.is_insecure(&uri("http://api.example.com/x")));
    }

    proptest::proptest! {
        /// The shortcuts on the authority's text agree with reading the
        /// host the long way, whatever the authority.
        #[test]
        fn loopback_shortcuts_agree_with_the_parsed_host(
            userinfo in proptest::option::of("(127\\.0\\.0\\.1(:[0-9]{0,3})?|[a-z0-9.:]{0,8})"),
            host in "(127\\.0\\.0\\.1|\\[::1\\]|localhost|127\\.[0-9]{1,3}\\.0\\.1|[a-z0-9.]{1,12})[a-z0-9.]{0,4}",
            port in proptest::option::of("[0-9]{0,5}"),
        ) {
            let userinfo = userinfo.map(|u| format!("{u}@")).unwrap_or_default();
            let port = port.map(|p| format!(":{p}")).unwrap_or_default();
            let Ok(uri) = format!("http://{userinfo}{host}{port}/").parse::<Uri>() else {
                return Ok(());
            };
            let parsed = uri.host().is_some_and(is_loopback);
            proptest::prop_assert_eq!(is_loopback_authority(&uri), parsed, "{}", uri);
        }
    }

    #[test]
    fn origin_allow_list_matches_scheme_host_and_default_port() {
        let rules = listing(&["https://api.example.com", "http://127.0.0.1:9000"]);
        assert!(rules.origin_allowed(&uri("https://API.example.com/v1")));
        assert!(rules.origin_allowed(&uri("https://api.example.com:443/v1")));
        assert!(!rules.origin_allowed(&uri("http://api.example.com/v1")));
        assert!(!rules.origin_allowed(&uri("https://evil.example.com/v1")));
        assert!(rules.origin_allowed(&uri("http://127.0.0.1:9000/")));
        assert!(!rules.origin_allowed(&uri("http://127.0.0.1:9001/")));
        assert!(!rules.origin_allowed(&uri("https://api.example.com:8443/v1")));
        assert!(!rules.origin_allowed(&uri("/relative")));
        assert!(Origin::of(&uri("/relative")).is_none());

        // A bare host, as the builder's doc says: any scheme, any port.
        let bare = listing(&["api.example.com"]);
        for allowed in ["https://api.example.com/", "http://api.example.com:8080/"] {
            assert!(bare.origin_allowed(&uri(allowed)), "{allowed}");
        }
        assert!(!bare.origin_allowed(&uri("https://other.example.com/")));

        // Without a port, a scheme's default port; for a scheme without
        // one, requests that give none either.
        let defaults = listing(&["wss://api.example.com", "h2c://internal.example.com"]);
        assert!(defaults.origin_allowed(&uri("wss://api.example.com/")));
        assert!(defaults.origin_allowed(&uri("wss://api.example.com:443/")));
        assert!(!defaults.origin_allowed(&uri("wss://api.example.com:9443/")));
        assert!(defaults.origin_allowed(&uri("h2c://internal.example.com/")));
        assert!(!defaults.origin_allowed(&uri("h2c://internal.example.com:8080/")));
    }

    #[test]
    fn a_host_header_naming_another_origin_is_told_apart() {
        let listed = listing(&["https://api.example.com"]);
        let target = uri("https://api.example.com/v1");
        let with_hosts = |hosts: &[&str]| {
            let mut headers = HeaderMap::new();
            for host in hosts {
                headers.append(HOST, host.parse().unwrap());
            }
            headers
        };
        for agrees in [
            &[][..],
            &["api.example.com"],
            &["API.example.com."],
            &["api.example.com:443"],
        ] {
            let headers = with_hosts(agrees);
            assert!(listed.allows(&target, &headers), "{agrees:?}");
        }
        for differs in [
            &["tenant-b.example.net"][..],
            &["api.example.com:8443"],
            &["user@api.example.com"],
            &["api.example.com/x"],
            &["api.example.com", "api.example.com"],
        ] {
            let headers = with_hosts(differs);
            assert!(!listed.allows(&target, &headers), "{differs:?}");
        }
        // Without an allow-list every origin gets the token: nothing to check.
        let unlisted = TransportRules::default();
        let other = with_hosts(&["tenant-b.example.net"]);
        assert!(unlisted.allows(&target, &other));
    }
}
