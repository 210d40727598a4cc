//! The tokenvend domain. No gRPC and no SQL here: the server maps the wire to these types,
//! the store crate implements the [`store::Store`] port.
//!
//! Start reading at [`vend::Vendor::get_token`].

pub mod access;
pub mod admin;
pub mod audit;
pub mod cache;
pub mod catalog;
pub mod clock;
pub mod config;
pub mod connection;
pub mod crypto;
pub mod deps;
pub mod endpoint;
pub mod error;
pub mod events;
pub mod flight;
pub mod grants;
pub mod ids;
pub mod input;
pub mod oauth;
pub mod observe;
pub mod paging;
pub mod refresh;
pub mod schedule;
pub mod secrets;
pub mod store;
#[cfg(feature = "test-util")]
pub mod testing;
pub mod vend;
pub mod watch;
pub mod watched;

pub use deps::Deps;
pub use error::{Error, Result};
pub use input::InvalidInput;
