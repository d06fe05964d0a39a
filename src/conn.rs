//! Facts about where a request comes from, computed once per request below
//! both the HTTP layer and authentication: the direct peer, the client's
//! address after trusted-proxy resolution, and what TLS established. The
//! server builds a [`ClientInfo`] for every request; rate limits, the
//! failed-login throttle, audit records and access logs all read the same
//! value, so they can never disagree about who is asking.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// An address range, `10.0.0.0/8`, or a single address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let net: IpAddr = addr.parse().map_err(|_| format!("{s:?} is not an address or CIDR range"))?;
        if let IpAddr::V6(v6) = net {
            if v6.to_ipv4_mapped().is_some() {
                return Err(format!("{s:?}: write IPv4 ranges in IPv4 form"));
            }
        }
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(|| format!("{s:?}: bad prefix"))?,
            None => max,
        };
        Ok(Cidr { net, prefix })
    }
}

/// IPv4-mapped IPv6 addresses compare as the IPv4 address they carry.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (canonical(self.net), canonical(ip)) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let m = if self.prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(self.prefix)) };
                (u32::from(n) & m) == (u32::from(a) & m)
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let m = if self.prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(self.prefix)) };
                (u128::from(n) & m) == (u128::from(a) & m)
            }
            _ => false,
        }
    }
}

/// The proxies whose `X-Forwarded-For` / `Forwarded` headers are believed
/// (`server.trusted_proxies`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<Cidr>);

impl TrustedProxies {
    /// Parse `server.trusted_proxies`; the error names the bad entry.
    pub fn parse(entries: &[String]) -> Result<TrustedProxies, String> {
        entries.iter().map(|e| e.parse()).collect::<Result<_, _>>().map(TrustedProxies)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }

    /// The client's address. From an untrusted peer: the peer. From a
    /// trusted proxy: the forwarding chain (`X-Forwarded-For`, else
    /// `Forwarded: for=`) read from the right, skipping trusted hops; the
    /// first untrusted hop is the client. An entry that is not an address
    /// (garbage, `unknown`, an obfuscated identifier) ends the walk at the
    /// proxy itself: whoever wrote it cannot be told apart from whoever
    /// wrote the entries left of it, so those are never promoted. A chain
    /// of trusted hops only names its leftmost one.
    pub fn client_address(&self, peer: IpAddr, headers: &http::HeaderMap) -> IpAddr {
        if !self.contains(peer) {
            return peer;
        }
        let chain = match forwarded_chain(headers) {
            Some(chain) => chain,
            None => return peer,
        };
        let mut leftmost = peer;
        for hop in chain.iter().rev() {
            match hop {
                None => return peer,
                Some(ip) if self.contains(*ip) => leftmost = *ip,
                Some(ip) => return *ip,
            }
        }
        leftmost
    }
}

/// The hops of the forwarding chain, left to right, `None` for an entry that
/// is not an address. `None` overall when no forwarding header is present.
fn forwarded_chain(headers: &http::HeaderMap) -> Option<Vec<Option<IpAddr>>> {
    let xff: Vec<_> = headers.get_all("x-forwarded-for").iter().collect();
    if !xff.is_empty() {
        let mut chain = Vec::new();
        for value in xff {
            match value.to_str() {
                Ok(text) => chain.extend(text.split(',').map(|hop| parse_hop(hop.trim()))),
                Err(_) => chain.push(None),
            }
        }
        return Some(chain);
    }
    let fwd: Vec<_> = headers.get_all(http::header::FORWARDED).iter().collect();
    if fwd.is_empty() {
        return None;
    }
    let mut chain = Vec::new();
    for value in fwd {
        let Ok(text) = value.to_str() else {
            chain.push(None);
            continue;
        };
        for element in text.split(',') {
            let node = element.split(';').find_map(|pair| {
                let (k, v) = pair.trim().split_once('=')?;
                k.trim().eq_ignore_ascii_case("for").then(|| v.trim().trim_matches('"'))
            });
            chain.push(node.and_then(parse_hop));
        }
    }
    Some(chain)
}

/// One hop: `192.0.2.1`, `192.0.2.1:8080`, `2001:db8::1`, `[2001:db8::1]`
/// or `[2001:db8::1]:8080`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Some(rest) = hop.strip_prefix('[') {
        let (inner, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(|p| p.parse::<u16>().is_ok())) {
            return None;
        }
        return inner.parse::<std::net::Ipv6Addr>().ok().map(|v6| canonical(IpAddr::V6(v6)));
    }
    hop.parse::<std::net::SocketAddrV4>().ok().map(|s| IpAddr::V4(*s.ip()))
}

/// What the connection established, set once per connection by the server.
#[derive(Debug, Clone)]
pub struct Connection {
    pub peer: SocketAddr,
    pub tls: bool,
    /// The verified leaf certificate (DER) the client presented, if any.
    pub client_certificate: Option<Arc<Vec<u8>>>,
}

/// Who a request comes from: computed once per request, passed down as a
/// value.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    /// The direct peer of the connection (a proxy, when there is one).
    pub peer: SocketAddr,
    /// The client's address after trusted-proxy resolution.
    pub address: IpAddr,
    /// The request arrived over TLS.
    pub tls: bool,
    /// The verified leaf certificate (DER) the client presented, if any.
    pub client_certificate: Option<Arc<Vec<u8>>>,
}

impl ClientInfo {
    pub fn resolve(connection: &Connection, headers: &http::HeaderMap, proxies: &TrustedProxies) -> ClientInfo {
        ClientInfo {
            peer: connection.peer,
            address: proxies.client_address(connection.peer.ip(), headers),
            tls: connection.tls,
            client_certificate: connection.client_certificate.clone(),
        }
    }

    /// Whether the direct peer is a trusted proxy (whose trace context,
    /// say, may be believed).
    pub fn peer_is_trusted(&self, proxies: &TrustedProxies) -> bool {
        proxies.contains(self.peer.ip())
    }

    /// A request that came through no listener (in-process tests): an
    /// unspecified address, no TLS.
    pub fn unknown() -> ClientInfo {
        ClientInfo {
            peer: SocketAddr::from(([0, 0, 0, 0], 0)),
            address: IpAddr::from([0, 0, 0, 0]),
            tls: false,
            client_certificate: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains(ip("10.1.2.3")));
        assert!(!c.contains(ip("11.0.0.1")));
        assert!(c.contains(ip("::ffff:10.9.9.9")));
        let one: Cidr = "127.0.0.1".parse().unwrap();
        assert!(one.contains(ip("127.0.0.1")) && !one.contains(ip("127.0.0.2")));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("8.8.8.8")));
        for bad in ["10.0.0.0/33", "nope", "1.2.3.4/x", "::/129", "::ffff:10.0.0.0/104"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        let err = TrustedProxies::parse(&["10.0.0.0/8".into(), "bogus".into()]).unwrap_err();
        assert!(err.contains("bogus"), "{err}");
    }

    /// One row: the peer, the headers, the client address expected.
    fn check(peer: &str, pairs: &[(&str, &str)], want: &str) {
        let proxies = TrustedProxies::parse(&["10.0.0.0/24".into(), "127.0.0.1".into()]).unwrap();
        assert_eq!(proxies.client_address(ip(peer), &headers(pairs)), ip(want), "{peer} {pairs:?}");
    }

    #[test]
    fn forwarded_addresses_only_from_trusted_proxies() {
        // An untrusted peer's headers are ignored.
        check("203.0.113.9", &[("x-forwarded-for", "1.2.3.4")], "203.0.113.9");
        // Behind the trusted proxy: the nearest untrusted hop.
        check("10.0.0.5", &[("x-forwarded-for", "1.2.3.4, 198.51.100.7, 10.0.0.9")], "198.51.100.7");
        check("10.0.0.5", &[("x-forwarded-for", "1.2.3.4"), ("x-forwarded-for", "198.51.100.7")], "198.51.100.7");
        check("10.0.0.5", &[("forwarded", "for=\"[2001:db8::1]:4711\";proto=https")], "2001:db8::1");
        check("10.0.0.5", &[("forwarded", "for=192.0.2.60:1234")], "192.0.2.60");
        check("10.0.0.5", &[("forwarded", "for=192.0.2.1, for=192.0.2.60;by=10.0.0.5")], "192.0.2.60");
        check("10.0.0.5", &[("x-forwarded-for", "192.0.2.1:5555")], "192.0.2.1");
        check("10.0.0.5", &[("x-forwarded-for", "[2001:db8::2]:80")], "2001:db8::2");
        check("10.0.0.5", &[("x-forwarded-for", "::ffff:192.0.2.3")], "192.0.2.3");
        // No header: the proxy itself.
        check("127.0.0.1", &[], "127.0.0.1");
        // Only trusted hops: the leftmost.
        check("10.0.0.5", &[("x-forwarded-for", "10.0.0.7, 10.0.0.8")], "10.0.0.7");
    }

    #[test]
    fn malformed_entries_never_promote_the_entry_to_their_left() {
        for bad in ["junk", "", "unknown", "1.2.3.4, junk", "1.2.3.4,", "1.2.3.4, 999.1.1.1", "1.2.3.4, [::1"] {
            check("10.0.0.5", &[("x-forwarded-for", bad)], "10.0.0.5");
        }
        // Garbage behind a trusted hop is still garbage.
        check("10.0.0.5", &[("x-forwarded-for", "1.2.3.4, junk, 10.0.0.9")], "10.0.0.5");
        // A malformed entry left of the client does not matter.
        check("10.0.0.5", &[("x-forwarded-for", "junk, 198.51.100.7")], "198.51.100.7");
        for bad in ["for=unknown", "for=_hidden", "proto=https", "for=\"[::1\"", "for=1.2.3.4, by=10.0.0.1"] {
            check("10.0.0.5", &[("forwarded", bad)], "10.0.0.5");
        }
        let mut h = http::HeaderMap::new();
        h.insert("x-forwarded-for", http::HeaderValue::from_bytes(b"1.2.3.4\xff").unwrap());
        let proxies = TrustedProxies::parse(&["10.0.0.5".into()]).unwrap();
        assert_eq!(proxies.client_address(ip("10.0.0.5"), &h), ip("10.0.0.5"));
    }

    proptest! {
        /// Whatever a client writes into the header, the answer is the peer,
        /// a trusted hop, or an address the client wrote in the rightmost
        /// untrusted position; and a client behind an untrusted peer never
        /// moves its own address.
        #[test]
        fn resolution_is_bounded_by_what_the_proxy_vouches_for(
            hops in proptest::collection::vec(prop_oneof![
                "[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}",
                Just("10.0.0.9".to_owned()),
                "[a-z_ :\\[\\]]{0,6}",
            ], 0..6),
        ) {
            let proxies = TrustedProxies::parse(&["10.0.0.0/24".into()]).unwrap();
            let value = hops.join(", ");
            let Ok(hv) = http::HeaderValue::from_str(&value) else { return Ok(()) };
            let mut h = http::HeaderMap::new();
            h.insert("x-forwarded-for", hv);
            let outsider = ip("203.0.113.9");
            prop_assert_eq!(proxies.client_address(outsider, &h), outsider);
            let got = proxies.client_address(ip("10.0.0.5"), &h);
            // The expected answer, computed the plain way.
            let mut want = ip("10.0.0.5");
            let parsed: Vec<Option<IpAddr>> = value.split(',').map(|x| parse_hop(x.trim())).collect();
            let mut leftmost = None;
            let mut done = false;
            for hop in parsed.iter().rev() {
                match hop {
                    None => { done = true; break; }
                    Some(a) if proxies.contains(*a) => leftmost = Some(*a),
                    Some(a) => { want = *a; done = true; leftmost = None; break; }
                }
            }
            if !done {
                if let Some(l) = leftmost { want = l; }
            }
            prop_assert_eq!(got, want);
        }
    }
}
