//! Caller authentication: `authorization: Bearer <api key>` on every TokenService and
//! AdminService call. Reflection and health are mounted without it so grpcurl can discover
//! the API and probes need no key.
//!
//! For now the only key is `TOKENVEND_BOOTSTRAP_ADMIN_KEY`, compared in constant time
//! against its SHA-256 (equal lengths, so the comparison time says nothing about the key).

use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::{Request, Status, service::Interceptor};

#[derive(Clone)]
pub struct ApiKeyAuth {
    bootstrap: Option<Arc<[u8; 32]>>,
}

impl std::fmt::Debug for ApiKeyAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeyAuth").finish_non_exhaustive()
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl ApiKeyAuth {
    pub fn new(bootstrap_key: Option<&str>) -> Self {
        Self {
            bootstrap: bootstrap_key.map(|k| Arc::new(digest(k))),
        }
    }

    fn check(&self, presented: Option<&str>) -> Result<(), Status> {
        let Some(header) = presented else {
            return Err(Status::unauthenticated(
                "missing `authorization: Bearer <api key>` metadata",
            ));
        };
        let Some(key) = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|k| !k.is_empty())
        else {
            return Err(Status::unauthenticated(
                "authorization metadata must be `Bearer <api key>`",
            ));
        };
        match &self.bootstrap {
            Some(expected) if bool::from(digest(key).ct_eq(expected.as_ref())) => Ok(()),
            _ => Err(Status::unauthenticated("unknown API key")),
        }
    }
}

impl Interceptor for ApiKeyAuth {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let header = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        self.check(header)?;
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_keys() {
        let auth = ApiKeyAuth::new(Some("correct-horse-battery"));
        assert!(auth.check(Some("Bearer correct-horse-battery")).is_ok());
        for bad in [
            None,
            Some(""),
            Some("correct-horse-battery"),
            Some("Bearer "),
            Some("Bearer wrong"),
            Some("Basic x"),
        ] {
            let err = auth.check(bad).unwrap_err();
            assert_eq!(err.code(), tonic::Code::Unauthenticated, "{bad:?}");
            assert!(!err.message().contains("correct-horse"), "{bad:?}");
        }
        let none = ApiKeyAuth::new(None);
        assert!(none.check(Some("Bearer anything")).is_err());
    }
}
