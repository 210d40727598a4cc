//! What can go wrong at a provider. Provider bodies are untrusted: only a scrubbed,
//! truncated `error_description` is ever shown, and never if it echoes a secret.

use std::time::Duration;

/// Serializable so a definitive error can be remembered in the store for every replica.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum ProviderError {
    /// An RFC 6749 §5.2 error body, on a 4xx or (against the RFC) on a 200.
    #[error("the provider rejected the token request: {code}{}", description.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    OAuth {
        status: u16,
        code: String,
        description: Option<String>,
    },
    /// 401/403 without an OAuth error body (DepotFinity answers a bad request with 403).
    #[error(
        "the provider rejected the client credentials (HTTP {status}); check client_id and client_secret"
    )]
    Rejected { status: u16 },
    /// Another 4xx without an OAuth error body: our request or the token URL is wrong.
    #[error(
        "the provider refused the token request with HTTP {status}; check token_url and the connection settings"
    )]
    Refused { status: u16 },
    /// A 2xx (or redirect) that carries no usable token.
    #[error("the provider answered without a usable token: {reason}")]
    BadResponse { reason: String },
    /// 5xx, 429, timeout, connection failure: worth retrying later.
    #[error("the provider is unavailable: {reason}")]
    Unavailable {
        reason: String,
        retry_after: Option<Duration>,
        /// The request provably never reached the provider (connect failure), so even a
        /// non-idempotent grant may be sent again.
        never_sent: bool,
    },
}

impl ProviderError {
    /// The fixed name of this kind of failure (metric label, span attribute, refresh state).
    pub fn class(&self) -> &'static str {
        match self {
            ProviderError::OAuth { .. } => "oauth_error",
            ProviderError::Rejected { .. } => "rejected",
            ProviderError::Refused { .. } => "refused",
            ProviderError::BadResponse { .. } => "bad_response",
            ProviderError::Unavailable { .. } => "unavailable",
        }
    }

    /// Whether a retry may succeed (the request did not get a definitive answer).
    pub fn is_transient(&self) -> bool {
        matches!(self, ProviderError::Unavailable { .. })
    }

    pub fn never_sent(&self) -> bool {
        matches!(
            self,
            ProviderError::Unavailable {
                never_sent: true,
                ..
            }
        )
    }

    /// The OAuth error code, when the provider sent one.
    pub fn oauth_code(&self) -> Option<&str> {
        match self {
            ProviderError::OAuth { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// Makes provider text safe to show: no control characters, bounded length, and
/// any echoed secret replaced.
pub(crate) fn scrub(text: &str, secrets: &[&str]) -> String {
    let mut s: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect();
    for secret in secrets {
        if secret.len() >= 4 && s.contains(secret) {
            s = s.replace(secret, "[redacted]");
        }
    }
    // A secret cut in half by the truncation would survive the replace above.
    for secret in secrets {
        if secret.len() >= 8 {
            for cut in (4..secret.len()).rev() {
                if secret.is_char_boundary(cut) && s.ends_with(&secret[..cut]) {
                    s.truncate(s.len() - cut);
                    s.push_str("[redacted]");
                    break;
                }
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrubs() {
        assert_eq!(
            scrub("bad\nsecret hunter22 x", &["hunter22"]),
            "bad secret [redacted] x"
        );
        let long = format!("{}hunter2hunter2", "a".repeat(195));
        let s = scrub(&long, &["hunter2hunter2"]);
        assert!(!s.contains("hunt"), "{s}");
    }
}
