//! Who may call tokenvend, and for what: principals (one per calling service or operator),
//! their API keys, their permissions on (tenant, provider) pairs, and the in-memory
//! decision every call is checked against before anything is looked up.

mod admin;
mod decision;
pub mod keys;

pub use admin::{Callers, CreatedKey, NewPrincipal};
pub use decision::{Authorizer, BOOTSTRAP, Credential, Principal};
