//! The domain's errors. The server maps each variant to a gRPC status in one place
//! (`server::status`); messages here are written for operators and never carry a secret.

use std::{sync::Arc, time::Duration};

use crate::{crypto::CryptoError, input::InvalidInput, oauth::ProviderError, store::StoreError};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    InvalidInput(#[from] InvalidInput),
    #[error("tenant {0:?} not found")]
    TenantNotFound(String),
    #[error("connection {provider:?} of tenant {tenant:?} not found")]
    ConnectionNotFound { tenant: String, provider: String },
    /// No API key (or certificate) the caller can be recognised by.
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// The caller is known but may not do this. Decided before anything is looked up.
    #[error("{0}")]
    PermissionDenied(&'static str),
    #[error("principal {0:?} not found")]
    PrincipalNotFound(String),
    #[error("principal {0:?} (or its certificate identity) already exists")]
    PrincipalExists(String),
    #[error("API key {0:?} not found")]
    ApiKeyNotFound(String),
    #[error(
        "principal {principal:?} has no permission on provider {provider:?} of tenant {tenant:?}"
    )]
    PermissionNotFound {
        principal: String,
        tenant: String,
        provider: String,
    },
    #[error("tenant {0:?} already exists")]
    TenantExists(String),
    #[error(
        "no authorization-code grant for subject {subject:?} on connection {provider:?} of tenant {tenant:?}"
    )]
    GrantNotFound {
        tenant: String,
        provider: String,
        subject: String,
    },
    /// A stored connection no longer passes validation (e.g. the endpoint policy changed).
    #[error(
        "connection {provider:?} of tenant {tenant:?} is not usable: {reason}; fix it with PutConnection"
    )]
    ConnectionInvalid {
        tenant: String,
        provider: String,
        reason: String,
    },
    /// The connection holds no credential that can obtain a token (e.g. no client secret).
    #[error(
        "connection {provider:?} of tenant {tenant:?} has no {missing}; set it with PutConnection"
    )]
    MissingCredential {
        tenant: String,
        provider: String,
        missing: &'static str,
    },
    #[error(transparent)]
    Provider(#[from] ProviderError),
    /// The end user must authorize again (refresh token refused or never issued).
    #[error(
        "the grant of subject {subject:?} on connection {provider:?} of tenant {tenant:?} needs the end user to authorize again: {detail}; start a new authorization with StartAuthorization"
    )]
    ReauthorizationRequired {
        tenant: String,
        provider: String,
        subject: String,
        detail: &'static str,
    },
    /// Revoking at the provider failed; nothing was deleted.
    #[error(
        "revocation at the provider failed after {revoked} grant(s) were revoked; the rest are kept (retry, or set force to delete locally): {source}"
    )]
    RevocationFailed {
        revoked: usize,
        source: ProviderError,
    },
    /// The new client secret did not obtain a token; the old one stays.
    #[error("the new client secret was not accepted, the old one stays: {0}")]
    SecretRejected(ProviderError),
    /// Our own limit (e.g. invalidation-triggered refreshes per key).
    #[error("{what}; retry in {retry_after:?}")]
    RateLimited {
        what: &'static str,
        retry_after: Duration,
    },
    /// Even a token fetched just now would not live as long as the caller asked.
    #[error(
        "min_ttl_seconds={requested_secs} cannot be met: the provider issues tokens valid for {lifetime_secs} s"
    )]
    MinTtlUnsatisfiable {
        requested_secs: i64,
        lifetime_secs: i64,
    },
    #[error("gave up waiting for the token after {0:?}")]
    DeadlineExceeded(Duration),
    /// A concurrent change won (optimistic concurrency, a grant revoked or re-authorized
    /// during a refresh): nothing was written, and retrying is safe.
    #[error("{0}; nothing was changed, retry")]
    Aborted(&'static str),
    /// A bug or a broken invariant (a panic in a fetch, corrupt stored settings). Logged
    /// with its context; callers see a generic message.
    #[error("internal error: {0}")]
    Internal(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// An error shared by every caller of one single-flight fetch.
    #[error(transparent)]
    Shared(Arc<Error>),
}

impl Error {
    /// Looks through `Shared` so callers can match on the real cause.
    pub fn root(&self) -> &Error {
        match self {
            Error::Shared(inner) => inner.root(),
            other => other,
        }
    }

    /// A short, fixed name for what went wrong — for span attributes, a connection's refresh
    /// state and log lines an operator filters on. Never carries request data.
    pub fn class(&self) -> &'static str {
        match self.root() {
            Error::InvalidInput(_) => "invalid_input",
            Error::TenantNotFound(_)
            | Error::ConnectionNotFound { .. }
            | Error::GrantNotFound { .. }
            | Error::PrincipalNotFound(_)
            | Error::ApiKeyNotFound(_)
            | Error::PermissionNotFound { .. } => "not_found",
            Error::Unauthenticated(_) => "unauthenticated",
            Error::PermissionDenied(_) => "permission_denied",
            Error::PrincipalExists(_) | Error::TenantExists(_) => "already_exists",
            Error::ConnectionInvalid { .. } => "connection_invalid",
            Error::MissingCredential { .. } => "missing_credential",
            Error::Provider(p) => p.class(),
            Error::ReauthorizationRequired { .. } => "reauthorization_required",
            Error::RevocationFailed { .. } => "revocation_failed",
            Error::SecretRejected(_) => "secret_rejected",
            Error::RateLimited { .. } => "rate_limited",
            Error::MinTtlUnsatisfiable { .. } => "min_ttl_unsatisfiable",
            Error::DeadlineExceeded(_) => "deadline_exceeded",
            Error::Aborted(_) => "aborted",
            Error::Internal(_) => "internal",
            Error::Store(_) => "store",
            Error::Crypto(_) => "crypto",
            Error::Shared(_) => unreachable!("root() looks through Shared"),
        }
    }
}

impl Error {
    /// Whether asking again later may succeed: the provider or the store was unavailable,
    /// or a wait or limit ran out. A watch outlives these while its token is valid.
    pub fn is_transient(&self) -> bool {
        match self.root() {
            Error::Provider(p) => p.is_transient(),
            Error::Store(StoreError::Database(_))
            | Error::DeadlineExceeded(_)
            | Error::RateLimited { .. }
            | Error::Aborted(_) => true,
            _ => false,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
