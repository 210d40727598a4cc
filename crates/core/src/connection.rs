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

/// Addresses a provider URL must not resolve to in production.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_internal_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal_v4(v4);
            }
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (v6.segments()[0] & 0xfe00) == 0xfc00 // unique local
                || (v6.segments()[0] & 0xffc0) == 0xfe80 // link local
                || v6 == Ipv6Addr::LOCALHOST
        }
    }
}

fn is_internal_v4(v4: Ipv4Addr) -> bool {
    v4.is_loopback()
        || v4.is_private()
        || v4.is_link_local()
        || v4.is_unspecified()
        || v4.is_broadcast()
        || v4.is_multicast()
        || v4.octets()[0] == 0
        || (v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64) // carrier-grade NAT
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
