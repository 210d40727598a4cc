//! The provider catalog: templates are data (URLs with `{param}` placeholders, the client
//! auth method, defaults), not code paths, so adding a provider adds an entry here only.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::input::InvalidInput;

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

/// A template parameter, e.g. a region that becomes part of a host name.
#[derive(Debug)]
pub struct Param {
    pub name: &'static str,
    pub description: &'static str,
    pub required: bool,
    /// When set, the value must be one of these.
    pub allowed: &'static [&'static str],
}

#[derive(Debug)]
pub struct Template {
    pub name: &'static str,
    pub description: &'static str,
    pub params: &'static [Param],
    pub token_url: Option<&'static str>,
    pub authorize_url: Option<&'static str>,
    pub revocation_url: Option<&'static str>,
    /// Client authentication for the client-credentials grant.
    pub client_auth: ClientAuth,
    /// Client authentication for code exchange, refresh and revocation (ev.energy sends
    /// Basic for client credentials but the id and secret in the body for these).
    pub user_grant_client_auth: ClientAuth,
    pub scopes: &'static [&'static str],
    pub audience: Option<&'static str>,
    /// Send `audience` even when empty (eDRV's documented request always has the field).
    pub always_send_audience: bool,
    pub extra_params: &'static [(&'static str, &'static str)],
    pub default_expires_in_secs: u64,
    /// Connection fields this template needs set explicitly (e.g. eDRV documents no URL).
    pub required_fields: &'static [&'static str],
}

const REGION: Param = Param {
    name: "region",
    description: "DepotFinity region, part of the token host name (e.g. eu)",
    required: true,
    allowed: &[],
};

const ENVIRONMENT: Param = Param {
    name: "environment",
    description: "Enode environment of the client",
    required: true,
    allowed: &["sandbox", "production"],
};

/// Every template. `generic` is any RFC 6749 provider: the operator gives the URLs.
pub static TEMPLATES: &[Template] = &[
    Template {
        name: "generic",
        description: "Any RFC 6749 token endpoint; token_url is required, client auth defaults to Basic",
        params: &[],
        token_url: None,
        authorize_url: None,
        revocation_url: None,
        client_auth: ClientAuth::Basic,
        user_grant_client_auth: ClientAuth::Basic,
        scopes: &[],
        audience: None,
        always_send_audience: false,
        extra_params: &[],
        default_expires_in_secs: 3600,
        required_fields: &[],
    },
    Template {
        name: "edrv",
        description: "eDRV: client_id, client_secret and audience in the form body; 24 h tokens; \
                      the docs give no URL, so token_url is required. Or a static api_key (eDRV's \
                      recommended replacement for OAuth)",
        params: &[],
        token_url: None,
        authorize_url: None,
        revocation_url: None,
        client_auth: ClientAuth::Post,
        user_grant_client_auth: ClientAuth::Post,
        scopes: &[],
        audience: None,
        always_send_audience: true,
        extra_params: &[],
        default_expires_in_secs: 86_400,
        required_fields: &["token_url"],
    },
    Template {
        name: "depotfinity",
        description: "DepotFinity: HTTP Basic, regional token host; a bad request is answered 403",
        params: &[REGION],
        token_url: Some("https://clientapp-auth.{region}.depot.emobility.io/oauth2/token"),
        authorize_url: None,
        revocation_url: None,
        client_auth: ClientAuth::Basic,
        user_grant_client_auth: ClientAuth::Basic,
        scopes: &[],
        audience: None,
        always_send_audience: false,
        extra_params: &[],
        default_expires_in_secs: 86_400,
        required_fields: &[],
    },
    Template {
        name: "evenergy",
        description: "ev.energy: client credentials with Basic; authorization code with PKCE, \
                      refresh and revocation with the client id and secret in the form body; 10 h tokens",
        params: &[],
        token_url: Some("https://api.ev.energy/o/token"),
        authorize_url: Some("https://api.ev.energy/o/authorize/"),
        // The trailing slash is required: without it the endpoint answers 405.
        revocation_url: Some("https://api.ev.energy/o/revoke_token/"),
        client_auth: ClientAuth::Basic,
        user_grant_client_auth: ClientAuth::Post,
        scopes: &[],
        audience: None,
        always_send_audience: false,
        extra_params: &[],
        default_expires_in_secs: 36_000,
        required_fields: &[],
    },
    Template {
        name: "enode",
        description: "Enode: standard client credentials with Basic; sandbox or production; 1 h tokens; \
                      one active client secret (regenerating it invalidates the old one at once)",
        params: &[ENVIRONMENT],
        token_url: Some("https://oauth.{environment}.enode.io/oauth2/token"),
        authorize_url: None,
        revocation_url: None,
        client_auth: ClientAuth::Basic,
        user_grant_client_auth: ClientAuth::Basic,
        scopes: &[],
        audience: None,
        always_send_audience: false,
        extra_params: &[],
        default_expires_in_secs: 3600,
        required_fields: &[],
    },
];

pub fn find(name: &str) -> Result<&'static Template, InvalidInput> {
    let name = if name.is_empty() { "generic" } else { name };
    TEMPLATES.iter().find(|t| t.name == name).ok_or_else(|| {
        let known: Vec<_> = TEMPLATES.iter().map(|t| t.name).collect();
        InvalidInput::new(
            "template",
            format!("unknown template {name:?}; known: {}", known.join(", ")),
        )
    })
}

/// A value that goes into a host name or path: it must not be able to change where the
/// credentials go (no dots, slashes, `@` or ports), hence the narrow alphabet.
fn valid_param_value(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 63
        && v.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl Template {
    /// Checks the operator's parameters against this template; returns them for expansion.
    pub fn check_params<'a>(
        &self,
        given: &'a BTreeMap<String, String>,
    ) -> Result<&'a BTreeMap<String, String>, InvalidInput> {
        for (k, v) in given {
            let Some(p) = self.params.iter().find(|p| p.name == k) else {
                let known: Vec<_> = self.params.iter().map(|p| p.name).collect();
                return Err(InvalidInput::new(
                    "template_params",
                    format!(
                        "template {:?} has no parameter {k:?} (it takes: {})",
                        self.name,
                        if known.is_empty() {
                            "none".to_owned()
                        } else {
                            known.join(", ")
                        }
                    ),
                ));
            };
            if !valid_param_value(v) {
                return Err(InvalidInput::new(
                    "template_params",
                    format!("{k} must match ^[a-z0-9-]{{1,63}}$"),
                ));
            }
            if !p.allowed.is_empty() && !p.allowed.contains(&v.as_str()) {
                return Err(InvalidInput::new(
                    "template_params",
                    format!("{k} must be one of: {}", p.allowed.join(", ")),
                ));
            }
        }
        if let Some(p) = self
            .params
            .iter()
            .find(|p| p.required && !given.contains_key(p.name))
        {
            return Err(InvalidInput::new(
                "template_params",
                format!(
                    "template {:?} requires parameter {:?} ({})",
                    self.name, p.name, p.description
                ),
            ));
        }
        Ok(given)
    }
}

/// Replaces `{name}` placeholders with checked parameter values.
pub fn expand(template: &str, params: &BTreeMap<String, String>) -> String {
    let mut out = template.to_owned();
    for (k, v) in params {
        out = out.replace(&format!("{{{k}}}"), v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn parameters_are_checked() {
        let depot = find("depotfinity").unwrap();
        let p = params(&[("region", "eu")]);
        assert_eq!(
            expand(depot.token_url.unwrap(), depot.check_params(&p).unwrap()),
            "https://clientapp-auth.eu.depot.emobility.io/oauth2/token"
        );
        // A region that would move the credentials to another host is refused.
        for bad in [
            "eu.evil.com",
            "evil.com/x",
            "eu@evil",
            "EU",
            "",
            "eu:443",
            &"a".repeat(64),
        ] {
            let err = depot.check_params(&params(&[("region", bad)])).unwrap_err();
            assert_eq!(err.field, "template_params", "{bad}");
        }
        assert!(
            depot
                .check_params(&params(&[]))
                .unwrap_err()
                .reason
                .contains("requires parameter \"region\"")
        );
        assert!(
            depot
                .check_params(&params(&[("region", "eu"), ("colour", "x")]))
                .unwrap_err()
                .reason
                .contains("no parameter \"colour\"")
        );

        let enode = find("enode").unwrap();
        assert!(
            enode
                .check_params(&params(&[("environment", "sandbox")]))
                .is_ok()
        );
        assert!(
            enode
                .check_params(&params(&[("environment", "staging")]))
                .unwrap_err()
                .reason
                .contains("one of: sandbox, production")
        );
        assert_eq!(find("").unwrap().name, "generic");
        assert!(
            find("nope")
                .unwrap_err()
                .reason
                .contains("known: generic, edrv, depotfinity, evenergy, enode")
        );
    }
}
