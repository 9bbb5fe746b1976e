//! The one in-flight primitive: whoever claims a key first leads the work
//! for it; everyone who claims it meanwhile follows, watching the state the
//! leader publishes. Blob fills, manifest fetches and tag resolutions all
//! coalesce through it.
//!
//! Contracts:
//! - The leader is a guard. However it ends (done, failed, panicked,
//!   dropped), its key is freed and its watch sender is dropped, so a
//!   follower never hangs: it sees the leader's last state, or
//!   [`Interrupted`] if that state was not final.
//! - Work that must not depend on any client runs in a task of its own
//!   ([`InFlight::run`], or [`Leader`] moved into `tokio::spawn`): a client
//!   that disconnects drops only its receiver.
//! - Entries live only while their work runs: the map is bounded by the
//!   work under way, never by what clients asked for.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// The leader went away before publishing a final state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the fetch ended unexpectedly")]
pub struct Interrupted;

pub struct InFlight<K, S> {
    map: Mutex<HashMap<K, Entry<S>>>,
    next_id: AtomicU64,
}

struct Entry<S> {
    id: u64,
    rx: watch::Receiver<S>,
}

pub enum Claim<K: Eq + Hash, S> {
    /// Nobody was working on the key: this caller leads.
    Leader(Leader<K, S>),
    /// Someone is: watch their state.
    Follower(watch::Receiver<S>),
}

/// The right and duty to do the work for a key. Dropping it frees the key.
pub struct Leader<K: Eq + Hash, S> {
    flights: Arc<InFlight<K, S>>,
    key: K,
    id: u64,
    tx: watch::Sender<S>,
}

impl<K, S> Default for InFlight<K, S> {
    fn default() -> Self {
        InFlight {
            map: Mutex::default(),
            next_id: AtomicU64::new(0),
        }
    }
}

impl<K, S> InFlight<K, S>
where
    K: Eq + Hash + Clone,
{
    /// Follows the work under way for `key` if `joinable` accepts its current
    /// state (a failed leader still cleaning up is not worth joining), else
    /// leads new work starting in state `init`.
    pub fn claim(
        self: &Arc<Self>,
        key: K,
        init: impl FnOnce() -> S,
        joinable: impl Fn(&S) -> bool,
    ) -> Claim<K, S> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = map.get(&key) {
            if joinable(&e.rx.borrow()) {
                return Claim::Follower(e.rx.clone());
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = watch::channel(init());
        map.insert(key.clone(), Entry { id, rx });
        Claim::Leader(Leader {
            flights: self.clone(),
            key,
            id,
            tx,
        })
    }

    /// The state of the work under way for `key`, if any, without joining it.
    pub fn peek(&self, key: &K) -> Option<watch::Receiver<S>> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(key).map(|e| e.rx.clone())
    }

    /// Keys with work under way.
    pub fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<K: Eq + Hash, S> Leader<K, S> {
    /// Changes the state every follower sees.
    pub fn publish(&self, f: impl FnOnce(&mut S)) {
        self.tx.send_modify(f);
    }

    /// A receiver of this leader's state (for the leader's own client).
    pub fn subscribe(&self) -> watch::Receiver<S> {
        self.tx.subscribe()
    }

    pub fn key(&self) -> &K {
        &self.key
    }
}

impl<K: Eq + Hash, S> Drop for Leader<K, S> {
    fn drop(&mut self) {
        let mut map = self.flights.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(&self.key).is_some_and(|e| e.id == self.id) {
            map.remove(&self.key);
        }
    }
}

/// The state of work that ends in one shared result.
pub type Shared<T, E> = Option<Result<T, E>>;

impl<K, T, E> InFlight<K, Shared<T, E>>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    T: Clone + Send + Sync + 'static,
    E: Clone + From<Interrupted> + Send + Sync + 'static,
{
    /// Runs `work` for `key` in a task of its own unless work for it is under
    /// way, and waits for the shared result. Returns whether this call
    /// followed another's work. A failure is shared with the followers that
    /// were waiting, but never joined by later callers: they start afresh.
    pub async fn run<F, Fut>(self: &Arc<Self>, key: K, work: F) -> (Result<T, E>, bool)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        let (rx, followed) = match self.claim(key, || None, |s| !matches!(s, Some(Err(_)))) {
            Claim::Follower(rx) => (rx, true),
            Claim::Leader(leader) => {
                let rx = leader.subscribe();
                let fut = work();
                tokio::spawn(async move {
                    let out = fut.await;
                    leader.publish(|s| *s = Some(out));
                });
                (rx, false)
            }
        };
        (wait(rx).await, followed)
    }
}

/// Waits for a final result; the leader's disappearance is [`Interrupted`].
pub async fn wait<T: Clone, E: Clone + From<Interrupted>>(
    mut rx: watch::Receiver<Shared<T, E>>,
) -> Result<T, E> {
    loop {
        if let Some(v) = rx.borrow_and_update().as_ref() {
            return v.clone();
        }
        if rx.changed().await.is_err() {
            return Err(Interrupted.into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    #[derive(Debug, Clone, PartialEq)]
    enum E {
        Boom,
        Gone,
    }

    impl From<Interrupted> for E {
        fn from(_: Interrupted) -> E {
            E::Gone
        }
    }

    type Flights = InFlight<&'static str, Shared<u32, E>>;

    #[tokio::test]
    async fn concurrent_claims_run_the_work_once() {
        let flights: Arc<Flights> = Arc::default();
        let runs = Arc::new(AtomicUsize::new(0));
        let mut handles = Vec::new();
        for _ in 0..10 {
            let f = flights.clone();
            let runs = runs.clone();
            handles.push(tokio::spawn(async move {
                f.run("k", || async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok(7)
                })
                .await
            }));
        }
        let mut followed = 0;
        for h in handles {
            let (v, f) = h.await.unwrap();
            assert_eq!(v, Ok(7));
            followed += f as usize;
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(followed, 9);
        assert!(flights.is_empty(), "finished work frees its key");
    }

    #[tokio::test]
    async fn a_panicking_leader_fails_its_followers_and_frees_its_key() {
        let flights: Arc<Flights> = Arc::default();
        let (res, _) = flights
            .run("k", || async {
                if true {
                    panic!("boom");
                }
                Ok(1)
            })
            .await;
        assert_eq!(res, Err(E::Gone));
        let (res, followed) = flights.run("k", || async { Ok(2) }).await;
        assert_eq!((res, followed), (Ok(2), false));
    }

    #[tokio::test]
    async fn a_failure_reaches_the_waiting_followers_but_not_later_callers() {
        let flights: Arc<Flights> = Arc::default();
        let gate = Arc::new(tokio::sync::Notify::new());
        let g = gate.clone();
        let leader = tokio::spawn({
            let f = flights.clone();
            async move {
                f.run("k", || async move {
                    g.notified().await;
                    Err(E::Boom)
                })
                .await
            }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let follower = tokio::spawn({
            let f = flights.clone();
            async move { f.run("k", || async { Ok(9) }).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        gate.notify_one();
        assert_eq!(leader.await.unwrap(), (Err(E::Boom), false));
        assert_eq!(follower.await.unwrap(), (Err(E::Boom), true));
        let (res, followed) = flights.run("k", || async { Ok(3) }).await;
        assert_eq!((res, followed), (Ok(3), false));
    }

    #[tokio::test]
    async fn a_dropped_caller_does_not_cancel_the_work() {
        let flights: Arc<Flights> = Arc::default();
        let done = Arc::new(AtomicUsize::new(0));
        let d = done.clone();
        let f = flights.clone();
        let caller = tokio::spawn(async move {
            f.run("k", || async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                d.fetch_add(1, Ordering::SeqCst);
                Ok(1)
            })
            .await
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        caller.abort();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(done.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_dropped_leader_frees_the_key_and_ends_its_followers() {
        let flights: Arc<InFlight<u8, u32>> = Arc::default();
        let Claim::Leader(leader) = flights.claim(1, || 0, |_| true) else {
            panic!("first claim leads");
        };
        let Claim::Follower(mut rx) = flights.claim(1, || 0, |_| true) else {
            panic!("second claim follows");
        };
        leader.publish(|s| *s = 5);
        drop(leader);
        assert_eq!(*rx.borrow_and_update(), 5);
        assert!(rx.has_changed().is_err(), "the sender is gone");
        assert!(flights.is_empty());
    }
}
