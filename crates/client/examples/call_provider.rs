//! Calls a provider API with a token from tokenvend, the way a calling service would:
//! the token comes from memory (pushed by WatchToken), and a 401 from the provider is
//! reported so that every caller gets a new token.
//!
//! ```sh
//! TOKENVEND_URL=http://127.0.0.1:50051 TOKENVEND_API_KEY=tvk_… \
//!   cargo run -p tokenvend-client --example call_provider -- acme enode https://enode-api.production.enode.io/vehicles
//! ```

use std::time::Duration;

use tokenvend_client::{Config, TokenSource};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [tenant, provider, url] = args.as_slice() else {
        return Err("usage: call_provider TENANT PROVIDER URL".into());
    };
    let source = TokenSource::new(Config {
        endpoints: vec![std::env::var("TOKENVEND_URL").unwrap_or("http://127.0.0.1:50051".into())],
        api_key: std::env::var("TOKENVEND_API_KEY").ok(),
        min_ttl: Duration::from_secs(60),
    })?;
    // Keep the handle: its token() is a read of memory once the stream has delivered.
    let tokens = source.handle(tenant, provider, "");
    let http = reqwest::Client::new();
    for attempt in 0..2 {
        let token = tokens.token().await?;
        let response = http
            .get(url)
            .bearer_auth(token.access_token())
            .send()
            .await?;
        if response.status() == reqwest::StatusCode::UNAUTHORIZED && attempt == 0 {
            // The provider says the token is dead (eDRV: `jwt expired`): report it, retry once.
            tokens.invalidate(token.access_token()).await?;
            continue;
        }
        println!("{} {}", response.status(), response.text().await?);
        return Ok(());
    }
    Err("the provider refused a fresh token too".into())
}
