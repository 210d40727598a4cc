//! A connection's configuration: what an operator puts, validated once, and what it
//! resolves to after the catalog template's defaults are applied.

use std::{collections::BTreeMap, time::Duration};

use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use url::Url;

use crate::{
    catalog::{self, ClientAuth},
    endpoint::EndpointPolicy,
    error::{Error, Result},
    ids::ConnectionKey,
    input::InvalidInput,
    oauth::{ClientCredentials, Grant, TokenRequest},
    store::{ConnectionRecord, Store, StoreError},
};

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
    /// Send the W3C `traceparent` of the provider request to the provider (off: providers
    /// are third parties, and a trace id tells them about our internals).
    pub propagate_trace_context: bool,
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
    /// The catalog template's name (`generic` when none): the only provider label metrics
    /// carry.
    pub template: &'static str,
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
    pub propagate_trace_context: bool,
}

impl ConnectionSettings {
    /// The first setting in `new` that changes where or how a stored secret is sent (or,
    /// for a static API key, which provider it belongs to), compared with `self`: the
    /// template and its parameters, the effective token / authorize / revocation URLs, the
    /// client auth methods and the client id. A write-only secret stays with its
    /// destination: repointing a connection must come with the secret again, or a caller
    /// of `PutConnection` could send the stored secret to a server of its choice.
    pub fn destination_change(&self, new: &ConnectionSettings) -> Option<&'static str> {
        let template = |s: &ConnectionSettings| catalog::find(&s.template).map(|t| t.name).ok();
        if template(self) != template(new) {
            return Some("template");
        }
        if self.template_params != new.template_params {
            return Some("template_params");
        }
        // Compared as resolved, whatever the endpoint policy: only the destination counts.
        let any = EndpointPolicy {
            allow_insecure: true,
        };
        let (Ok(old), Ok(next)) = (self.resolve(any), new.resolve(any)) else {
            return Some("token_url");
        };
        [
            ("token_url", old.token_url != next.token_url),
            ("authorize_url", old.authorize_url != next.authorize_url),
            ("revocation_url", old.revocation_url != next.revocation_url),
            (
                "client_auth",
                old.client_auth != next.client_auth
                    || old.user_grant_client_auth != next.user_grant_client_auth,
            ),
            ("client_id", old.client_id != next.client_id),
        ]
        .into_iter()
        .find_map(|(field, changed)| changed.then_some(field))
    }

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
            template: template.name,
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
            propagate_trace_context: self.propagate_trace_context,
        })
    }
}

/// The connection, or which of tenant and connection is missing.
pub(crate) async fn load_connection_of(
    store: &dyn Store,
    key: &ConnectionKey,
) -> Result<ConnectionRecord> {
    match store.get_connection(key).await? {
        Some(c) => Ok(c),
        None => Err(if store.get_tenant(&key.tenant).await?.is_none() {
            Error::TenantNotFound(key.tenant.to_string())
        } else {
            Error::ConnectionNotFound {
                tenant: key.tenant.to_string(),
                provider: key.provider.to_string(),
            }
        }),
    }
}

/// The settings `conn` was stored with (JSON in the row).
pub(crate) fn stored_settings(conn: &ConnectionRecord) -> Result<ConnectionSettings, StoreError> {
    serde_json::from_str(&conn.settings)
        .map_err(|e| StoreError::Corrupt(format!("connection {} settings: {e}", conn.id)))
}

/// The stored settings of `conn` resolved under `policy`: re-checked on every use, so a
/// stricter policy applies to existing connections too.
pub(crate) fn effective_of(conn: &ConnectionRecord, policy: EndpointPolicy) -> Result<Effective> {
    stored_settings(conn)?
        .resolve(policy)
        .map_err(|e| Error::ConnectionInvalid {
            tenant: conn.tenant.to_string(),
            provider: conn.provider.to_string(),
            reason: e.to_string(),
        })
}

/// The connection lacks `what` to do the request at hand.
pub(crate) fn missing(conn: &ConnectionRecord, what: &'static str) -> Error {
    Error::MissingCredential {
        tenant: conn.tenant.to_string(),
        provider: conn.provider.to_string(),
        missing: what,
    }
}

/// The client-credentials request `effective` describes, with `secret`.
pub(crate) fn client_credentials_request<'a>(
    effective: &'a Effective,
    token_url: &'a url::Url,
    secret: &'a SecretString,
) -> TokenRequest<'a> {
    TokenRequest {
        template: effective.template,
        token_url,
        credentials: ClientCredentials {
            auth: effective.client_auth,
            client_id: &effective.client_id,
            client_secret: secret,
        },
        grant: Grant::ClientCredentials,
        scopes: &effective.scopes,
        audience: (effective.always_send_audience || !effective.audience.is_empty())
            .then_some(effective.audience.as_str()),
        extra_params: &effective.extra_params,
        default_expires_in: effective.default_expires_in,
        propagate_trace_context: effective.propagate_trace_context,
    }
}

/// How an end user's grant (code exchange, refresh, revocation) authenticates the client.
pub(crate) fn user_grant_credentials<'a>(
    effective: &'a Effective,
    secret: &'a SecretString,
) -> ClientCredentials<'a> {
    ClientCredentials {
        auth: effective.user_grant_client_auth,
        client_id: &effective.client_id,
        client_secret: secret,
    }
}

/// A token request of an end user's `grant` (code or refresh token) for `scopes`: never an
/// audience, the connection's extra parameters.
pub(crate) fn user_grant_request<'a>(
    effective: &'a Effective,
    token_url: &'a url::Url,
    secret: &'a SecretString,
    grant: Grant<'a>,
    scopes: &'a [String],
) -> TokenRequest<'a> {
    TokenRequest {
        template: effective.template,
        token_url,
        credentials: user_grant_credentials(effective, secret),
        grant,
        scopes,
        audience: None,
        extra_params: &effective.extra_params,
        default_expires_in: effective.default_expires_in,
        propagate_trace_context: effective.propagate_trace_context,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Production's policy (the default): https and public addresses only.
    fn strict() -> EndpointPolicy {
        EndpointPolicy::default()
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
