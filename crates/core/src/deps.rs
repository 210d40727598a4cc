//! What the domain services share: the ports and the process-wide pieces, built once by
//! the server and handed to `Vendor`, `Grants` and `Admin`.

use std::sync::Arc;

use crate::{
    cache::TokenCache, clock::Clock, crypto::Envelope, events::Notifier, oauth::TokenClient,
    store::Store,
};

#[derive(Clone)]
pub struct Deps {
    pub store: Arc<dyn Store>,
    pub envelope: Arc<Envelope>,
    pub cache: Arc<TokenCache>,
    pub client: TokenClient,
    pub clock: Arc<dyn Clock>,
    pub notifier: Notifier,
}
