//! Which outbound URLs tokenvend may call: the SSRF guard. Production refuses plain http and
//! any address that is not public unicast, both when a connection is put and when the
//! provider's host name is resolved for a call.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use url::Url;

use crate::input::InvalidInput;

/// Which outbound URLs are acceptable. Production refuses plain http and loopback/private
/// addresses, so a connection cannot be pointed at internal services (SSRF).
#[derive(Clone, Copy, Debug, Default)]
pub struct EndpointPolicy {
    pub allow_insecure: bool,
}

impl EndpointPolicy {
    pub fn check(&self, field: &'static str, raw: &str) -> Result<Url, InvalidInput> {
        let url = Url::parse(raw)
            .map_err(|e| InvalidInput::new(field, format!("is not a valid absolute URL ({e})")))?;
        match url.scheme() {
            "https" => {}
            "http" if self.allow_insecure => {}
            "http" => {
                return Err(InvalidInput::new(
                    field,
                    "must use https (http is allowed only with TOKENVEND_ALLOW_INSECURE_ENDPOINTS=true)",
                ));
            }
            other => {
                return Err(InvalidInput::new(
                    field,
                    format!("scheme {other:?} is not allowed; use https"),
                ));
            }
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(InvalidInput::new(
                field,
                "must not carry credentials in the URL; use client_id/client_secret",
            ));
        }
        if url.fragment().is_some() {
            return Err(InvalidInput::new(field, "must not have a #fragment"));
        }
        let internal = match url.host() {
            None => return Err(InvalidInput::new(field, "must have a host")),
            Some(url::Host::Ipv4(ip)) => is_internal(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => is_internal(IpAddr::V6(ip)),
            Some(url::Host::Domain(d)) => {
                let d = d.trim_end_matches('.').to_ascii_lowercase();
                d == "localhost" || d.ends_with(".localhost")
            }
        };
        if internal && !self.allow_insecure {
            return Err(InvalidInput::new(
                field,
                "points at a loopback, private or link-local address; allowed only with TOKENVEND_ALLOW_INSECURE_ENDPOINTS=true",
            ));
        }
        Ok(url)
    }
}

/// Addresses a provider URL must not resolve to in production: anything that is not public
/// unicast on the internet (RFC 6890 special-purpose ranges), so a connection cannot be
/// aimed at loopback, the private network, cloud metadata (169.254.169.254) or ranges
/// a local gateway may route.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_internal_v4(v4),
        IpAddr::V6(v6) => is_internal_v6(v6),
    }
}

/// IPv4 special-purpose ranges (RFC 6890 and its updates).
const INTERNAL_V4: &[(Ipv4Addr, u8)] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 8),       // "this network"
    (Ipv4Addr::new(10, 0, 0, 0), 8),      // private
    (Ipv4Addr::new(100, 64, 0, 0), 10),   // carrier-grade NAT
    (Ipv4Addr::new(127, 0, 0, 0), 8),     // loopback
    (Ipv4Addr::new(169, 254, 0, 0), 16),  // link-local (cloud metadata)
    (Ipv4Addr::new(172, 16, 0, 0), 12),   // private
    (Ipv4Addr::new(192, 0, 0, 0), 24),    // IETF protocol assignments
    (Ipv4Addr::new(192, 0, 2, 0), 24),    // documentation (TEST-NET-1)
    (Ipv4Addr::new(192, 168, 0, 0), 16),  // private
    (Ipv4Addr::new(198, 18, 0, 0), 15),   // benchmarking
    (Ipv4Addr::new(198, 51, 100, 0), 24), // documentation (TEST-NET-2)
    (Ipv4Addr::new(203, 0, 113, 0), 24),  // documentation (TEST-NET-3)
    (Ipv4Addr::new(224, 0, 0, 0), 4),     // multicast
    (Ipv4Addr::new(240, 0, 0, 0), 4),     // reserved, and the broadcast address
];

/// Special-purpose ranges inside IPv6 global unicast (2000::/3). 6to4 (2002::/16) is not
/// here: it is judged by the IPv4 address it embeds.
const INTERNAL_V6_GLOBAL: &[(Ipv6Addr, u8)] = &[
    (Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 32), // Teredo: its IPv4 is obfuscated
    (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32), // documentation
    (Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0), 20), // documentation (RFC 9637)
];

fn is_internal_v4(v4: Ipv4Addr) -> bool {
    let ip = u32::from(v4);
    INTERNAL_V4
        .iter()
        .any(|&(net, len)| (ip ^ u32::from(net)) >> (32 - len) == 0)
}

fn is_internal_v6(v6: Ipv6Addr) -> bool {
    let ip = u128::from(v6);
    let within = |net: Ipv6Addr, len: u8| (ip ^ u128::from(net)) >> (128 - len) == 0;
    // Forms that carry an IPv4 address which the host or a gateway on the way translates
    // to are judged by that address: `::ffff:10.0.0.1` or `64:ff9b::a00:1` reach 10.0.0.1.
    // IPv4-compatible `::a.b.c.d` (deprecated) too; `::` and `::1` embed 0.0.0.0 and
    // 0.0.0.1, which are internal.
    let embedded = if within(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96) // IPv4-mapped
        || within(Ipv6Addr::UNSPECIFIED, 96) // IPv4-compatible
        || within(Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96)
    // NAT64
    {
        Some(ip as u32)
    } else if within(Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16) {
        Some((ip >> 80) as u32) // 6to4: 2002:AABB:CCDD::/48 carries AA.BB.CC.DD
    } else {
        None
    };
    if let Some(v4) = embedded {
        return is_internal_v4(Ipv4Addr::from(v4));
    }
    // Only global unicast (2000::/3) is routed on the internet: loopback, unique local
    // (fc00::/7), link-local (fe80::/10), site-local, multicast (ff00::/8), discard-only
    // (100::/64) and local-use NAT64 (64:ff9b:1::/48) all fall outside it.
    !within(Ipv6Addr::new(0x2000, 0, 0, 0, 0, 0, 0, 0), 3)
        || INTERNAL_V6_GLOBAL
            .iter()
            .any(|&(net, len)| within(net, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Production's policy (the default): https and public addresses only.
    fn strict() -> EndpointPolicy {
        EndpointPolicy::default()
    }

    #[test]
    fn endpoint_policy() {
        assert!(
            strict()
                .check("token_url", "https://auth.example.com/oauth/token")
                .is_ok()
        );
        for bad in [
            "http://auth.example.com/token",
            "https://127.0.0.1/token",
            "https://localhost:8443/token",
            "https://10.1.2.3/token",
            "https://192.168.0.1/token",
            "https://169.254.169.254/latest",
            "https://[::1]/token",
            "https://[fd00::1]/token",
            "https://[::ffff:10.0.0.1]/token",
            "https://user:pw@auth.example.com/token",
            "https://auth.example.com/token#x",
            "ftp://auth.example.com/token",
            "not a url",
            "/relative",
        ] {
            let err = strict().check("token_url", bad).unwrap_err();
            assert_eq!(err.field, "token_url", "{bad}");
        }
        let dev = EndpointPolicy {
            allow_insecure: true,
        };
        assert!(
            dev.check("token_url", "http://127.0.0.1:9999/token")
                .is_ok()
        );
        // credentials in the URL are refused even in development
        assert!(
            dev.check("token_url", "http://u:p@127.0.0.1/token")
                .is_err()
        );
    }

    /// Each range with an address inside it and one just outside, then public addresses
    /// that must stay reachable.
    #[test]
    fn internal_addresses() {
        let internal = [
            // (inside, just outside or another edge, whether that one is internal, range)
            ("0.255.255.255", "1.0.0.0", false, "0.0.0.0/8"),
            ("10.255.255.255", "11.0.0.0", false, "10.0.0.0/8"),
            ("100.64.0.0", "100.63.255.255", false, "100.64.0.0/10"),
            ("100.127.255.255", "100.128.0.0", false, "100.64.0.0/10"),
            ("127.0.0.1", "128.0.0.0", false, "127.0.0.0/8"),
            ("169.254.169.254", "169.255.0.0", false, "169.254.0.0/16"),
            ("172.31.255.255", "172.32.0.0", false, "172.16.0.0/12"),
            ("192.0.0.8", "192.0.1.0", false, "192.0.0.0/24"),
            ("192.0.2.1", "192.0.3.0", false, "192.0.2.0/24"),
            ("192.168.0.1", "192.169.0.0", false, "192.168.0.0/16"),
            ("198.18.0.1", "198.17.255.255", false, "198.18.0.0/15"),
            ("198.19.255.255", "198.20.0.0", false, "198.18.0.0/15"),
            ("198.51.100.7", "198.51.101.0", false, "198.51.100.0/24"),
            ("203.0.113.9", "203.0.114.0", false, "203.0.113.0/24"),
            (
                "224.0.0.1",
                "223.255.255.255",
                false,
                "224.0.0.0/4 multicast",
            ),
            (
                "239.255.255.255",
                "240.0.0.0",
                true,
                "224.0.0.0/4, then reserved",
            ),
            (
                "255.255.255.255",
                "223.255.255.255",
                false,
                "240.0.0.0/4 and broadcast",
            ),
            ("::1", "::2", true, "loopback; ::2 embeds 0.0.0.2"),
            (
                "::",
                "::808:808",
                false,
                "unspecified; ::8.8.8.8 is IPv4-compatible",
            ),
            (
                "::a00:1",
                "::1:0:0",
                true,
                "::/96 by its IPv4; ::1:0:0 is outside 2000::/3",
            ),
            ("::ffff:10.0.0.1", "::ffff:8.8.8.8", false, "IPv4-mapped"),
            (
                "64:ff9b::a00:1",
                "64:ff9b::808:808",
                false,
                "NAT64 by its IPv4",
            ),
            (
                "64:ff9b::7f00:1",
                "64:ff9b::1:0:0",
                true,
                "NAT64; beyond /96 not global",
            ),
            (
                "64:ff9b:1::808:808",
                "64:ff9b:2::808:808",
                true,
                "local-use NAT64, not global",
            ),
            (
                "2002:a00:1::1",
                "2002:808:808::1",
                false,
                "6to4 by its IPv4 (bits 16..48)",
            ),
            (
                "2002:c0a8:101::",
                "2003::1",
                false,
                "6to4 of 192.168.1.1; 2003:: is global",
            ),
            ("2001::1", "2001:1::1", false, "Teredo 2001::/32"),
            (
                "2001:0:ffff:ffff::",
                "2000:ffff:ffff:ffff::",
                false,
                "Teredo upper edge",
            ),
            (
                "2001:db8::1",
                "2001:db9::1",
                false,
                "documentation 2001:db8::/32",
            ),
            (
                "3fff:fff::1",
                "3fff:1000::1",
                false,
                "documentation 3fff::/20",
            ),
            (
                "fc00::1",
                "fbff:ffff::1",
                true,
                "unique local; fbff:: is not global",
            ),
            ("fdff::1", "fe00::1", true, "unique local fc00::/7"),
            (
                "fe80::1",
                "fec0::1",
                true,
                "link-local; site-local is not global either",
            ),
            ("ff02::1", "ff0e::1", true, "multicast ff00::/8"),
            (
                "100::1",
                "1fff:ffff::1",
                true,
                "discard-only; below 2000::/3",
            ),
        ];
        for (inside, edge, edge_internal, range) in internal {
            let ip: IpAddr = inside.parse().unwrap();
            assert!(is_internal(ip), "{inside} is in {range}");
            let ip: IpAddr = edge.parse().unwrap();
            assert_eq!(is_internal(ip), edge_internal, "{edge} next to {range}");
        }
        for public in [
            "8.8.8.8",
            "1.1.1.1",
            "93.184.216.34",
            "100.128.0.1",
            "172.15.255.255",
            "192.0.3.1",
            "223.255.255.254",
            "2606:4700::1111",
            "2a00:1450:4001:80b::200e",
            "2001:4860:4860::8888",
            "2002:808:808::1",
            "64:ff9b::101:101",
            "::ffff:1.1.1.1",
        ] {
            let ip: IpAddr = public.parse().unwrap();
            assert!(!is_internal(ip), "{public} is public");
        }
    }
}
