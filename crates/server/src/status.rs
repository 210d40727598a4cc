//! The one place where domain errors become gRPC statuses (docs/architecture.md "Errors →
//! statuses"; the table callers see is README "API and errors").
//! The match is exhaustive without a wildcard: a new error variant is a compile error here
//! until someone decides its status. Internal errors are logged with context and answered
//! with a generic message; nothing here ever formats a secret.

use std::{collections::HashMap, time::Duration};

use tokenvend_core::{Error, oauth::ProviderError, store::StoreError};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

const DOMAIN: &str = "tokenvend";

/// OAuth error codes (RFC 6749 §5.2 and common extensions) surfaced as their own reason.
const KNOWN_OAUTH_CODES: &[&str] = &[
    "invalid_request",
    "invalid_client",
    "invalid_grant",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_scope",
    "access_denied",
    "invalid_target",
];

fn rich(code: Code, message: String, reason: &str, metadata: HashMap<String, String>) -> Status {
    Status::with_error_details(
        code,
        message,
        ErrorDetails::with_error_info(reason, DOMAIN, metadata),
    )
}

pub fn to_status(err: &Error) -> Status {
    let none = HashMap::new;
    match err.root() {
        Error::InvalidInput(e) => {
            let mut details = ErrorDetails::with_bad_request_violation(e.field, e.reason.clone());
            details.set_error_info(
                "INVALID_ARGUMENT",
                DOMAIN,
                [("field".to_owned(), e.field.to_owned())],
            );
            Status::with_error_details(Code::InvalidArgument, e.to_string(), details)
        }
        e @ Error::TenantNotFound(_) => {
            rich(Code::NotFound, e.to_string(), "TENANT_NOT_FOUND", none())
        }
        e @ Error::ConnectionNotFound { .. } => rich(
            Code::NotFound,
            e.to_string(),
            "CONNECTION_NOT_FOUND",
            none(),
        ),
        e @ Error::GrantNotFound { .. } => {
            rich(Code::NotFound, e.to_string(), "GRANT_NOT_FOUND", none())
        }
        e @ Error::Unauthenticated(_) => rich(
            Code::Unauthenticated,
            e.to_string(),
            "UNAUTHENTICATED",
            none(),
        ),
        e @ Error::PermissionDenied(_) => rich(
            Code::PermissionDenied,
            e.to_string(),
            "PERMISSION_DENIED",
            none(),
        ),
        e @ Error::PrincipalNotFound(_) => {
            rich(Code::NotFound, e.to_string(), "PRINCIPAL_NOT_FOUND", none())
        }
        e @ Error::ApiKeyNotFound(_) => {
            rich(Code::NotFound, e.to_string(), "API_KEY_NOT_FOUND", none())
        }
        e @ Error::PermissionNotFound { .. } => rich(
            Code::NotFound,
            e.to_string(),
            "PERMISSION_NOT_FOUND",
            none(),
        ),
        e @ Error::PrincipalExists(_) => {
            rich(Code::AlreadyExists, e.to_string(), "ALREADY_EXISTS", none())
        }
        e @ Error::TenantExists(_) => {
            rich(Code::AlreadyExists, e.to_string(), "ALREADY_EXISTS", none())
        }
        e @ Error::MissingCredential { .. } => rich(
            Code::FailedPrecondition,
            e.to_string(),
            "MISSING_CREDENTIAL",
            none(),
        ),
        e @ Error::ConnectionInvalid { .. } => rich(
            Code::FailedPrecondition,
            e.to_string(),
            "CONNECTION_INVALID",
            none(),
        ),
        e @ Error::MinTtlUnsatisfiable { .. } => rich(
            Code::FailedPrecondition,
            e.to_string(),
            "MIN_TTL_UNSATISFIABLE",
            none(),
        ),
        e @ Error::DeadlineExceeded(_) => Status::new(Code::DeadlineExceeded, e.to_string()),
        Error::Provider(p) => provider_status(p, p.to_string()),
        e @ Error::RevocationFailed { source, .. } => provider_status(source, e.to_string()),
        e @ Error::SecretRejected(source) => provider_status(source, e.to_string()),
        e @ Error::ReauthorizationRequired { .. } => rich(
            Code::FailedPrecondition,
            e.to_string(),
            "REAUTHORIZATION_REQUIRED",
            none(),
        ),
        e @ Error::RateLimited { retry_after, .. } => {
            let mut details = ErrorDetails::with_retry_info(Some(*retry_after));
            details.set_error_info("RATE_LIMITED", DOMAIN, HashMap::new());
            Status::with_error_details(Code::ResourceExhausted, e.to_string(), details)
        }
        e @ Error::Aborted(_) => rich(Code::Aborted, e.to_string(), "CONCURRENT_CHANGE", none()),
        Error::Internal(detail) => {
            tracing::error!(error = %detail, "internal error");
            Status::new(
                Code::Internal,
                "internal error (details in the server logs); retrying is safe",
            )
        }
        Error::Store(s) => store_status(err, s),
        Error::Crypto(c) => {
            tracing::error!(error = %c, "encryption failure");
            Status::new(
                Code::Internal,
                "internal error: a stored secret could not be decrypted or encrypted (see server logs)",
            )
        }
        Error::Shared(_) => unreachable!("root() looks through Shared"),
    }
}

/// A provider's answer as a status; `message` may add our context to the provider's.
fn provider_status(p: &ProviderError, message: String) -> Status {
    match p {
        ProviderError::OAuth { status, code, .. } => {
            let reason = if KNOWN_OAUTH_CODES.contains(&code.as_str()) {
                code.to_ascii_uppercase()
            } else {
                "PROVIDER_ERROR".to_owned()
            };
            let metadata = HashMap::from([
                ("oauth_error".to_owned(), code.clone()),
                ("http_status".to_owned(), status.to_string()),
            ]);
            rich(Code::FailedPrecondition, message, &reason, metadata)
        }
        ProviderError::Rejected { status } | ProviderError::Refused { status } => rich(
            Code::FailedPrecondition,
            message,
            "PROVIDER_REJECTED",
            HashMap::from([("http_status".to_owned(), status.to_string())]),
        ),
        ProviderError::BadResponse { .. } => rich(
            Code::FailedPrecondition,
            message,
            "PROVIDER_BAD_RESPONSE",
            HashMap::new(),
        ),
        ProviderError::Unavailable { retry_after, .. } => {
            let mut details =
                ErrorDetails::with_retry_info(Some(retry_after.unwrap_or(Duration::from_secs(1))));
            details.set_error_info("PROVIDER_UNAVAILABLE", DOMAIN, HashMap::new());
            Status::with_error_details(Code::Unavailable, message, details)
        }
    }
}

/// Store outcomes that are domain conditions keep their meaning (and a message); only a
/// real database failure is UNAVAILABLE, and only that is logged at error level.
fn store_status(err: &Error, s: &StoreError) -> Status {
    match s {
        StoreError::Conflict => rich(
            Code::Aborted,
            "the record was changed concurrently by another request; nothing was changed, retry"
                .into(),
            "CONCURRENT_CHANGE",
            HashMap::new(),
        ),
        StoreError::AlreadyExists => rich(
            Code::AlreadyExists,
            "a record with this name already exists".into(),
            "ALREADY_EXISTS",
            HashMap::new(),
        ),
        StoreError::MissingParent => rich(
            Code::NotFound,
            "the tenant or connection this refers to was deleted meanwhile".into(),
            "PARENT_NOT_FOUND",
            HashMap::new(),
        ),
        StoreError::Corrupt(_) => {
            tracing::error!(error = %err, "corrupt data in the store");
            Status::new(
                Code::Internal,
                "internal error: a stored record could not be read (details in the server logs)",
            )
        }
        StoreError::Database(_) => {
            tracing::error!(error = %err, "storage failure");
            let mut details = ErrorDetails::with_retry_info(Some(Duration::from_secs(1)));
            details.set_error_info("STORAGE_UNAVAILABLE", DOMAIN, HashMap::new());
            Status::with_error_details(
                Code::Unavailable,
                "the token store is unavailable; retry later (details in the server logs)",
                details,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (issue 8.7): every store outcome became UNAVAILABLE STORAGE_UNAVAILABLE.
    #[test]
    fn store_outcomes_keep_their_meaning() {
        let cases = [
            (StoreError::Conflict, Code::Aborted),
            (StoreError::AlreadyExists, Code::AlreadyExists),
            (StoreError::MissingParent, Code::NotFound),
            (StoreError::Corrupt("x".into()), Code::Internal),
            (StoreError::Database("down".into()), Code::Unavailable),
        ];
        for (e, code) in cases {
            let status = to_status(&Error::Store(e));
            assert_eq!(status.code(), code, "{}", status.message());
            assert!(!status.message().is_empty());
        }
        let s = to_status(&Error::Aborted("the grant was revoked during the refresh"));
        assert_eq!(s.code(), Code::Aborted);
        assert!(s.message().contains("revoked"), "{}", s.message());
        let s = to_status(&Error::Internal("secret detail".into()));
        assert_eq!(s.code(), Code::Internal);
        assert!(!s.message().contains("secret detail"));
    }
}
