//! `WatchToken`: one stream per watcher, fed by `tokenvend_core::watch::TokenWatch`.
//!
//! Besides the tokens, the stream carries the call's own checks: the caller is checked
//! again whenever keys or permissions change (and every minute, for keys that expire), and
//! the stream ends with `UNAVAILABLE` when this replica starts draining, so its clients
//! reconnect to another replica while the token they hold is still valid. The stream holds
//! one token at a time: a slow reader delays its own next message, nothing piles up.

use std::{pin::Pin, sync::Arc, time::Duration};

use futures::Stream;
use tokenvend_core::{
    access::{Authorizer, Credential},
    audit::Auditor,
    cache::CachedToken,
    watch::TokenWatch,
};
use tokenvend_proto::v1::GetTokenResponse;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::status;
use crate::{auth::Caller, metrics::Metrics};

pub type WatchStream = Pin<Box<dyn Stream<Item = Result<GetTokenResponse, Status>> + Send>>;

/// How often an open stream checks its caller again without being told of a change (an
/// API key's expiry announces nothing).
const RECHECK_EVERY: Duration = Duration::from_secs(60);

/// What every stream shares.
#[derive(Clone)]
pub struct WatchDeps {
    pub authorizer: Arc<Authorizer>,
    /// Cancelled when the replica starts draining.
    pub stop: CancellationToken,
}

pub(crate) struct Watcher {
    pub watch: TokenWatch,
    pub first: Option<Arc<CachedToken>>,
    pub caller: Caller,
    pub credential: Credential,
    pub tenant: String,
    pub provider: String,
    pub subject: String,
    pub deps: WatchDeps,
    pub auditor: Auditor,
    pub metrics: Option<Arc<Metrics>>,
    pub answer: fn(&CachedToken) -> GetTokenResponse,
}

enum Woke {
    Stop,
    /// Keys or permissions changed (false: no more changes will come).
    Access(bool),
    Token(tokenvend_core::Result<Arc<CachedToken>>),
}

/// Counts the stream as open while it lives.
struct Open(Option<Arc<Metrics>>);

impl Drop for Open {
    fn drop(&mut self) {
        if let Some(m) = &self.0 {
            m.watch_closed();
        }
    }
}

impl Watcher {
    pub fn into_stream(self) -> WatchStream {
        if let Some(m) = &self.metrics {
            m.watch_opened();
        }
        let open = Open(self.metrics.clone());
        let access = self.deps.authorizer.changes();
        guarded(futures::stream::unfold(
            Some((self, access, open)),
            |state| async move {
                let (mut this, mut access, open) = state?;
                match this.next(&mut access).await {
                    Ok(message) => Some((Ok(message), Some((this, access, open)))),
                    // The status ends the stream: nothing after it.
                    Err(status) => Some((Err(status), None)),
                }
            },
        ))
    }

    async fn next(
        &mut self,
        access: &mut tokio::sync::watch::Receiver<u64>,
    ) -> Result<GetTokenResponse, Status> {
        if let Some(token) = self.first.take() {
            return Ok((self.answer)(&token));
        }
        loop {
            let stop = self.deps.stop.clone();
            let woke = tokio::select! {
                biased;
                () = stop.cancelled() => Woke::Stop,
                changed = access.changed() => Woke::Access(changed.is_ok()),
                () = tokio::time::sleep(RECHECK_EVERY) => Woke::Access(true),
                token = self.watch.next() => Woke::Token(token),
            };
            match woke {
                Woke::Stop => {
                    return Err(Status::unavailable(
                        "this replica is shutting down: reconnect (another replica answers; the token already received stays valid)",
                    ));
                }
                // The authorizer is gone: the server is going away too.
                Woke::Access(false) => {
                    return Err(Status::unavailable(
                        "this replica is shutting down: reconnect",
                    ));
                }
                Woke::Access(true) => self.recheck()?,
                Woke::Token(token) => {
                    let token = token.map_err(status)?;
                    if let Some(m) = &self.metrics {
                        m.watch_pushed();
                    }
                    return Ok((self.answer)(&token));
                }
            }
        }
    }

    /// The caller as the decision stands now: revoked or expired key → UNAUTHENTICATED,
    /// removed permission → PERMISSION_DENIED (audited, like any refusal).
    fn recheck(&self) -> Result<(), Status> {
        let principal = self
            .deps
            .authorizer
            .recheck(&self.credential)
            .map_err(status)?;
        let caller = Caller {
            principal,
            peer: self.caller.peer,
        };
        caller.may_get_token(
            &self.auditor,
            "WatchToken",
            &self.tenant,
            &self.provider,
            &self.subject,
        )
    }
}

/// A panic while a stream is polled happens outside the call's future, where the panic layer
/// cannot see it: here it ends that one stream with the panic layer's `INTERNAL`, not the
/// HTTP/2 stream with a reset.
fn guarded<S>(stream: S) -> WatchStream
where
    S: Stream<Item = Result<GetTokenResponse, Status>> + Send + 'static,
{
    use futures::StreamExt;
    Box::pin(
        std::panic::AssertUnwindSafe(stream)
            .catch_unwind()
            .scan(false, |ended, item| {
                if *ended {
                    return std::future::ready(None);
                }
                std::future::ready(Some(match item {
                    Ok(message) => message,
                    Err(_) => {
                        *ended = true;
                        tracing::error!("a WatchToken stream panicked; it ends with INTERNAL");
                        Err(Status::internal(crate::panic::GRPC_MESSAGE))
                    }
                }))
            }),
    )
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    #[tokio::test]
    async fn a_panicking_stream_ends_with_internal() {
        let items = futures::stream::iter(0..3).map(|i| {
            if i == 1 {
                panic!("a bug in the watch path");
            }
            Ok(GetTokenResponse::default())
        });
        let got: Vec<_> = guarded(items).collect().await;
        assert_eq!(got.len(), 2, "the first message, then the end");
        assert!(got[0].is_ok());
        let end = got[1].as_ref().unwrap_err();
        assert_eq!(end.code(), tonic::Code::Internal);
        assert_eq!(end.message(), crate::panic::GRPC_MESSAGE);
    }
}
