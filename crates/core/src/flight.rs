//! In-process single-flight: concurrent misses for one key share one fetch.
//!
//! The fetch runs in its own task, not in the first caller's future: a caller that gives up
//! (deadline, cancelled RPC) only stops waiting, and the others still get the result. The
//! task removes its own entry when done, so a later miss starts a new fetch. Errors are
//! shared with every waiter (`Arc`), not only the first. (`async_singleflight` runs the work
//! in the leader's future and loses the error for followers, hence our own.)

use std::{future::Future, hash::Hash, sync::Arc, time::Duration};

use dashmap::{DashMap, mapref::entry::Entry};
use futures::{
    FutureExt,
    future::{BoxFuture, Shared},
};

type SharedResult<T, E> = Shared<BoxFuture<'static, Result<T, Failure<E>>>>;
/// An in-flight fetch: its id (so a finished task removes only its own entry) and result.
type InFlight<T, E> = (u64, SharedResult<T, E>);

/// How a fetch failed, as every waiter sees it.
#[derive(Debug)]
enum Failure<E> {
    Err(Arc<E>),
    /// The fetch task panicked (a bug). Its waiters get an error value, never the panic.
    Panicked,
}

impl<E> Clone for Failure<E> {
    fn clone(&self) -> Self {
        match self {
            Failure::Err(e) => Failure::Err(e.clone()),
            Failure::Panicked => Failure::Panicked,
        }
    }
}

/// Why a wait ended without a value.
#[derive(Debug)]
pub enum Waited<E> {
    Failed(Arc<E>),
    /// The fetch panicked; its entry is gone, so the next call fetches anew.
    Panicked,
    /// The waiter's own budget ran out; the fetch goes on for the others.
    TimedOut,
}

pub struct SingleFlight<K, T, E> {
    inflight: Arc<DashMap<K, InFlight<T, E>>>,
    next_id: std::sync::atomic::AtomicU64,
}

impl<K, T, E> Default for SingleFlight<K, T, E>
where
    K: Eq + Hash,
{
    fn default() -> Self {
        Self {
            inflight: Arc::new(DashMap::new()),
            next_id: Default::default(),
        }
    }
}

/// Removes a flight's own map entry when its task ends — normally, by panic or by the
/// runtime shutting down. Code after an `.await` would not run on a panic, and an entry
/// left behind would hand every later caller the same dead future.
struct RemoveOnDrop<K: Eq + Hash, T, E> {
    map: Arc<DashMap<K, InFlight<T, E>>>,
    key: K,
    id: u64,
}

impl<K: Eq + Hash, T, E> Drop for RemoveOnDrop<K, T, E> {
    fn drop(&mut self) {
        // Our own entry only: a newer flight may have replaced it.
        self.map
            .remove_if(&self.key, |_, (entry_id, _)| *entry_id == self.id);
    }
}

impl<K, T, E> SingleFlight<K, T, E>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    T: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
{
    pub fn new() -> Self {
        Self::default()
    }

    /// Joins the fetch for `key`, starting it with `make` if none is running, and waits for
    /// it at most `wait`.
    pub async fn run<F, Fut>(&self, key: K, wait: Duration, make: F) -> Result<T, Waited<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        let shared = match self.inflight.entry(key.clone()) {
            Entry::Occupied(e) => e.get().1.clone(),
            Entry::Vacant(v) => {
                let id = self
                    .next_id
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let fut = make();
                let guard = RemoveOnDrop {
                    map: self.inflight.clone(),
                    key: key.clone(),
                    id,
                };
                let handle = tokio::spawn(async move {
                    let _guard = guard;
                    fut.await.map_err(Arc::new)
                });
                let shared: SharedResult<T, E> = async move {
                    match handle.await {
                        Ok(r) => r.map_err(Failure::Err),
                        Err(join) => {
                            if join.is_panic() {
                                tracing::error!(
                                    "a token fetch panicked (a bug); its callers get INTERNAL and the next call fetches anew"
                                );
                            }
                            Err(Failure::Panicked)
                        }
                    }
                }
                .boxed()
                .shared();
                v.insert((id, shared.clone()));
                shared
            }
        };
        match tokio::time::timeout(wait, shared).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(Failure::Err(e))) => Err(Waited::Failed(e)),
            Ok(Err(Failure::Panicked)) => Err(Waited::Panicked),
            Err(_) => Err(Waited::TimedOut),
        }
    }

    /// Whether a fetch for `key` is running (a new caller would join it).
    pub fn is_running(&self, key: &K) -> bool {
        self.inflight.contains_key(key)
    }

    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::sync::Notify;

    use super::*;

    #[tokio::test]
    async fn concurrent_callers_share_one_fetch() {
        let sf: Arc<SingleFlight<&str, u32, String>> = Arc::new(SingleFlight::new());
        let calls = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(Notify::new());
        let mut tasks = Vec::new();
        for _ in 0..100 {
            let (sf, calls, gate) = (sf.clone(), calls.clone(), gate.clone());
            tasks.push(tokio::spawn(async move {
                sf.run("k", Duration::from_secs(30), || async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    gate.notified().await;
                    Ok(7)
                })
                .await
            }));
        }
        // every caller has joined once the single fetch is waiting on the gate
        while sf.in_flight() == 0 || calls.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        gate.notify_one();
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), 7);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(sf.in_flight(), 0, "the task removes its entry");
    }

    #[tokio::test]
    async fn errors_reach_every_waiter() {
        let sf: Arc<SingleFlight<&str, u32, String>> = Arc::new(SingleFlight::new());
        let gate = Arc::new(Notify::new());
        let g = gate.clone();
        let first = {
            let sf = sf.clone();
            tokio::spawn(async move {
                sf.run("k", Duration::from_secs(30), || async move {
                    g.notified().await;
                    Err("boom".to_owned())
                })
                .await
            })
        };
        while sf.in_flight() == 0 {
            tokio::task::yield_now().await;
        }
        let second = {
            let sf = sf.clone();
            tokio::spawn(async move {
                sf.run("k", Duration::from_secs(30), || async { Ok(1) })
                    .await
            })
        };
        tokio::task::yield_now().await;
        gate.notify_one();
        for r in [first.await.unwrap(), second.await.unwrap()] {
            match r {
                Err(Waited::Failed(e)) => assert_eq!(*e, "boom"),
                other => panic!("{other:?}"),
            }
        }
    }

    /// Regression (issue 8.1): a panicking fetch left its entry behind, and every later
    /// caller joined the dead future.
    #[tokio::test]
    async fn a_panicking_fetch_fails_its_callers_and_is_forgotten() {
        let sf: Arc<SingleFlight<&str, u32, String>> = Arc::new(SingleFlight::new());
        let r = sf
            .run("k", Duration::from_secs(30), || async {
                if true {
                    panic!("bug in a fetch");
                }
                Ok(1)
            })
            .await;
        assert!(matches!(r, Err(Waited::Panicked)), "{r:?}");
        assert_eq!(sf.in_flight(), 0, "the entry is removed by the drop guard");
        let again = sf
            .run("k", Duration::from_secs(30), || async { Ok(2) })
            .await;
        assert_eq!(again.unwrap(), 2, "the next call fetches anew");
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_giving_up_does_not_cancel_the_fetch() {
        let sf: Arc<SingleFlight<&str, u32, String>> = Arc::new(SingleFlight::new());
        let gate = Arc::new(Notify::new());
        let done = Arc::new(AtomicUsize::new(0));
        let (g, d) = (gate.clone(), done.clone());
        // the first caller starts the fetch and times out
        let impatient = sf
            .run("k", Duration::from_millis(10), || async move {
                g.notified().await;
                d.fetch_add(1, Ordering::SeqCst);
                Ok(5)
            })
            .await;
        assert!(matches!(impatient, Err(Waited::TimedOut)));
        assert_eq!(sf.in_flight(), 1, "the fetch is still running");
        // a second caller joins the same fetch, which then completes for it
        let patient = {
            let sf = sf.clone();
            tokio::spawn(async move {
                sf.run("k", Duration::from_secs(60), || async { Ok(99) })
                    .await
            })
        };
        tokio::task::yield_now().await;
        gate.notify_one();
        assert_eq!(patient.await.unwrap().unwrap(), 5);
        assert_eq!(done.load(Ordering::SeqCst), 1);
    }
}
