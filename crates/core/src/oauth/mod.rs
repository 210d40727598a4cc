//! Talking to providers' token endpoints. Our own client on reqwest: the `oauth2` crate
//! rejects what real providers send (string `expires_in`, 200 with `error`, HTML bodies).

mod error;
pub mod pkce;
mod response;
mod token_client;

pub use error::ProviderError;
pub use response::{TokenResponse, parse_token_response};
pub use token_client::{
    ClientCredentials, Grant, TokenClient, TokenClientConfig, TokenRequest, basic_auth,
};
