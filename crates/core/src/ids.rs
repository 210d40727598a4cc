//! Names parsed once at the boundary, so the rest of the code never re-validates them.

use std::fmt;

/// Ids are short: up to 24 bytes are kept inline, so building or cloning a key (the handler
/// does it on every call, the cache and its schedule hold one per token) allocates nothing.
use compact_str::CompactString;

use crate::input::InvalidInput;

/// A slug: `[a-z0-9][a-z0-9-]{0,62}`. Used for tenants and providers because it is safe in
/// URLs, log lines, metric labels and SQL keys alike, and cannot be confused by case.
fn parse_slug(field: &'static str, value: &str) -> Result<CompactString, InvalidInput> {
    let bytes = value.as_bytes();
    let valid = !bytes.is_empty()
        && bytes.len() <= 63
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
    if valid {
        Ok(CompactString::new(value))
    } else if value.is_empty() {
        Err(InvalidInput::new(field, "is required"))
    } else {
        Err(InvalidInput::new(
            field,
            "must match [a-z0-9][a-z0-9-]{0,62} (lower-case letters, digits and '-', at most 63)",
        ))
    }
}

macro_rules! slug_type {
    ($(#[$doc:meta])* $name:ident, $field:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(CompactString);

        impl $name {
            /// Parses a slug; the error names the field.
            pub fn parse(value: impl AsRef<str>) -> Result<Self, InvalidInput> {
                parse_slug($field, value.as_ref()).map(Self)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }
    };
}

slug_type!(
    /// A tenant's slug, e.g. `acme`.
    TenantId,
    "tenant"
);
slug_type!(
    /// A connection's provider slug within a tenant, e.g. `enode`.
    ProviderId,
    "provider"
);

slug_type!(
    /// A calling service (or operator) that authenticates with API keys, e.g. `billing`.
    PrincipalId,
    "principal"
);

/// The end user of an authorization-code grant; `""` means the connection's own client
/// credentials. Stored NOT NULL so (connection, subject) stays a unique key in both databases.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Subject(CompactString);

impl Subject {
    pub fn parse(value: impl AsRef<str>) -> Result<Self, InvalidInput> {
        let value = value.as_ref();
        if value.len() > 255 {
            return Err(InvalidInput::new("subject", "must be at most 255 bytes"));
        }
        if value.chars().any(char::is_control) {
            return Err(InvalidInput::new(
                "subject",
                "must not contain control characters",
            ));
        }
        Ok(Self(CompactString::new(value)))
    }

    /// The client-credentials (no end user) subject.
    pub fn client() -> Self {
        Self(CompactString::default())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_client(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// A connection: one provider of one tenant.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ConnectionKey {
    pub tenant: TenantId,
    pub provider: ProviderId,
}

/// What a token is cached under. The connection version is not part of the key: the cache
/// tracks versions per connection instead (see `cache`), so a lookup needs no store read.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TokenKey {
    pub tenant: TenantId,
    pub provider: ProviderId,
    pub subject: Subject,
}

impl TokenKey {
    pub fn connection(&self) -> ConnectionKey {
        ConnectionKey {
            tenant: self.tenant.clone(),
            provider: self.provider.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs() {
        for ok in ["a", "acme", "0", "a-b-c", &"a".repeat(63)] {
            assert!(TenantId::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "A", "a_b", "a.b", "ä", &"a".repeat(64), "a b"] {
            let err = TenantId::parse(bad).unwrap_err();
            assert_eq!(err.field, "tenant", "{bad}");
        }
        assert_eq!(ProviderId::parse("").unwrap_err().field, "provider");
    }

    #[test]
    fn subjects() {
        assert!(Subject::parse("user@example.com").unwrap().as_str() == "user@example.com");
        assert!(Subject::parse("a\nb").is_err());
        assert!(Subject::parse("x".repeat(256)).is_err());
        assert!(Subject::client().is_client());
    }
}
