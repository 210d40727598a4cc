//! A connection's configuration: what an operator puts, validated once, and what it
//! resolves to after the catalog template's defaults are applied.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use url::Url;

use crate::{catalog, error::InvalidInput};

/// How the client authenticates at the token endpoint (RFC 6749 §2.3.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// The template's choice.
    #[default]
    Unspecified,
    Basic,
    Post,
}

/// Form fields tokenvend sets itself; `extra_params` may not override them.
const RESERVED_PARAMS: &[&str] = &[
    "grant_type",
    "client_id",
    "client_secret",
    "scope",
    "audience",
    "code",
    "code_verifier",
    "redirect_uri",
    "refresh_token",
];

/// The non-secret settings of a connection, as put by the operator (empty = template value).
/// Stored as JSON so new settings do not need a schema migration in two databases.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ConnectionSettings {
    pub template: String,
    pub template_params: BTreeMap<String, String>,
    pub token_url: String,
    pub authorize_url: String,
    pub revocation_url: String,
    pub client_auth: ClientAuth,
    pub client_id: String,
    pub scopes: Vec<String>,
    pub audience: String,
    pub extra_params: BTreeMap<String, String>,
    pub redirect_uri: String,
    /// Lifetime assumed when the provider omits `expires_in`; 0 = the template's.
    pub default_expires_in_secs: i64,
}

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

/// Scope tokens per RFC 6749 §3.3: no spaces, quotes or backslashes (they are joined with
/// spaces on the wire, so a space inside one would smuggle in another).
pub fn check_scopes(scopes: &[String]) -> Result<(), InvalidInput> {
    for s in scopes {
        if s.is_empty()
            || s.len() > 256
            || s.chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '"' || c == '\\')
        {
            return Err(InvalidInput::new(
                "scopes",
                format!(
                    "{s:?} is not a valid scope token (RFC 6749 §3.3: 1-256 characters, no spaces, quotes or backslashes)"
                ),
            ));
        }
    }
    Ok(())
}

/// The connection after applying its template: everything the token client needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Effective {
    pub token_url: Option<Url>,
    pub authorize_url: Option<Url>,
    pub revocation_url: Option<Url>,
    /// For the client-credentials grant.
    pub client_auth: ClientAuth,
    /// For code exchange, refresh and revocation.
    pub user_grant_client_auth: ClientAuth,
    pub client_id: String,
    pub scopes: Vec<String>,
    pub audience: String,
    /// Send `audience` even when empty (eDRV).
    pub always_send_audience: bool,
    pub extra_params: BTreeMap<String, String>,
    pub redirect_uri: Option<Url>,
    pub default_expires_in: Duration,
}

impl ConnectionSettings {
    /// Validates the settings and resolves them against their template. Called on every
    /// `PutConnection` (so bad input is refused before anything is written) and when a
    /// token is fetched (so a stored connection is re-checked under the current policy).
    pub fn resolve(&self, policy: EndpointPolicy) -> Result<Effective, InvalidInput> {
        let template = catalog::find(&self.template)?;
        let params = template.check_params(&self.template_params)?;
        let pick = |field: &'static str, explicit: &str, default: Option<String>| {
            let raw = if explicit.is_empty() {
                default.unwrap_or_default()
            } else {
                explicit.to_owned()
            };
            if raw.is_empty() {
                Ok(None)
            } else {
                policy.check(field, &raw).map(Some)
            }
        };
        let token_url = pick(
            "token_url",
            &self.token_url,
            template.token_url.map(|t| catalog::expand(t, params)),
        )?;
        let authorize_url = pick(
            "authorize_url",
            &self.authorize_url,
            template.authorize_url.map(|t| catalog::expand(t, params)),
        )?;
        let revocation_url = pick(
            "revocation_url",
            &self.revocation_url,
            template.revocation_url.map(|t| catalog::expand(t, params)),
        )?;
        let redirect_uri = if self.redirect_uri.is_empty() {
            None
        } else {
            // Browsers are sent here, never credentials: any http(s) URL the operator owns.
            let u = Url::parse(&self.redirect_uri).map_err(|e| {
                InvalidInput::new("redirect_uri", format!("is not a valid absolute URL ({e})"))
            })?;
            if !matches!(u.scheme(), "https" | "http") || u.fragment().is_some() {
                return Err(InvalidInput::new(
                    "redirect_uri",
                    "must be an http(s) URL without a #fragment",
                ));
            }
            Some(u)
        };
        check_scopes(&self.scopes)?;
        for (k, v) in &self.extra_params {
            if k.is_empty() || k.len() > 128 || v.len() > 2048 {
                return Err(InvalidInput::new(
                    "extra_params",
                    "keys must be 1-128 bytes and values at most 2048 bytes",
                ));
            }
            if RESERVED_PARAMS.contains(&k.as_str()) {
                return Err(InvalidInput::new(
                    "extra_params",
                    format!("{k:?} is set by tokenvend itself; use the dedicated field"),
                ));
            }
        }
        if self.client_id.len() > 1024 || self.client_id.chars().any(char::is_control) {
            return Err(InvalidInput::new(
                "client_id",
                "must be at most 1024 bytes without control characters",
            ));
        }
        if self.default_expires_in_secs < 0 || self.default_expires_in_secs > 366 * 86_400 {
            return Err(InvalidInput::new(
                "default_expires_in_seconds",
                "must be between 1 and 31622400 (366 days), or 0 for the template default",
            ));
        }
        let scopes = if self.scopes.is_empty() {
            template.scopes.iter().map(|s| (*s).to_owned()).collect()
        } else {
            self.scopes.clone()
        };
        let mut extra_params: BTreeMap<String, String> = template
            .extra_params
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        extra_params.extend(self.extra_params.clone());
        Ok(Effective {
            token_url,
            authorize_url,
            revocation_url,
            // An explicit method applies to every request kind; the template may differ per kind.
            client_auth: match self.client_auth {
                ClientAuth::Unspecified => template.client_auth,
                explicit => explicit,
            },
            user_grant_client_auth: match self.client_auth {
                ClientAuth::Unspecified => template.user_grant_client_auth,
                explicit => explicit,
            },
            always_send_audience: template.always_send_audience,
            redirect_uri,
            client_id: self.client_id.clone(),
            scopes,
            audience: if self.audience.is_empty() {
                template.audience.unwrap_or_default().to_owned()
            } else {
                self.audience.clone()
            },
            extra_params,
            default_expires_in: Duration::from_secs(if self.default_expires_in_secs > 0 {
                self.default_expires_in_secs as u64
            } else {
                template.default_expires_in_secs
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strict() -> EndpointPolicy {
        EndpointPolicy {
            allow_insecure: false,
        }
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

    #[test]
    fn resolve_generic() {
        let s = ConnectionSettings {
            template: "generic".into(),
            token_url: "https://auth.example.com/token".into(),
            client_id: "id".into(),
            scopes: vec!["read".into(), "write".into()],
            ..Default::default()
        };
        let e = s.resolve(strict()).unwrap();
        assert_eq!(e.client_auth, ClientAuth::Basic);
        assert_eq!(
            e.token_url.unwrap().as_str(),
            "https://auth.example.com/token"
        );
        assert_eq!(e.default_expires_in, Duration::from_secs(3600));

        let reserved = ConnectionSettings {
            extra_params: [("client_secret".to_owned(), "x".to_owned())].into(),
            ..s.clone()
        };
        assert_eq!(
            reserved.resolve(strict()).unwrap_err().field,
            "extra_params"
        );
        let bad_scope = ConnectionSettings {
            scopes: vec!["a b".into()],
            ..s.clone()
        };
        assert_eq!(bad_scope.resolve(strict()).unwrap_err().field, "scopes");
        let unknown = ConnectionSettings {
            template: "nope".into(),
            ..s
        };
        assert_eq!(unknown.resolve(strict()).unwrap_err().field, "template");
    }
}
