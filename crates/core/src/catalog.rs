//! The provider catalog: templates are data (URLs with `{param}` placeholders, the client
//! auth method, defaults), not code paths, so adding a provider adds an entry here only.

use std::collections::BTreeMap;

use crate::{connection::ClientAuth, error::InvalidInput};

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
    pub client_auth: ClientAuth,
    pub scopes: &'static [&'static str],
    pub audience: Option<&'static str>,
    pub extra_params: &'static [(&'static str, &'static str)],
    pub default_expires_in_secs: u64,
}

/// Every template. `generic` is any RFC 6749 provider: the operator gives the URLs.
pub static TEMPLATES: &[Template] = &[Template {
    name: "generic",
    description: "Any RFC 6749 token endpoint; token_url is required, client auth defaults to Basic",
    params: &[],
    token_url: None,
    authorize_url: None,
    revocation_url: None,
    client_auth: ClientAuth::Basic,
    scopes: &[],
    audience: None,
    extra_params: &[],
    default_expires_in_secs: 3600,
}];

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
