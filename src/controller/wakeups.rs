//! When each AssumedRole wants to be reconciled again if nothing changes
//! before: its refresh time, or the end of its backoff.
//!
//! Kept here rather than in the controller's scheduler, which holds every
//! pending request twice (in its queue and in its map), each with a
//! reference carrying four owned strings: 0.5 KiB per AssumedRole, most of
//! its memory after the caches. Here an entry is a shared namespace, the
//! name and a deadline. What falls due is handed to the controller as a
//! trigger, as a watch event would be.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap, HashSet},
    sync::{Arc, Mutex},
};

use futures::Stream;
use kube::runtime::reflector::ObjectRef;
use tokio::{sync::mpsc, time::Instant};

use crate::api::AssumedRole;

/// Namespace (its text shared by every AssumedRole in it) and name.
type Key = (Arc<str>, Arc<str>);

/// The deadlines of every AssumedRole of every watched scope.
#[derive(Default)]
pub struct Wakeups {
    inner: Mutex<Inner>,
    /// Wakes [`Wakeups::run`] when a deadline came earlier than those it
    /// waits for.
    sooner: tokio::sync::Notify,
}

#[derive(Default)]
struct Inner {
    /// The one deadline of each AssumedRole.
    due: HashMap<Key, Instant>,
    /// The same deadlines in order, with those replaced since left in until
    /// they come up (they are skipped then): a replacement costs no search.
    queue: BinaryHeap<Reverse<(Instant, Key)>>,
    namespaces: HashSet<Arc<str>>,
    /// Where what falls due goes: the controller of each scope (`None` for
    /// every namespace).
    scopes: Vec<(Option<String>, mpsc::UnboundedSender<ObjectRef<AssumedRole>>)>,
}

impl Inner {
    fn key(&mut self, namespace: &str, name: &str) -> Key {
        let namespace = match self.namespaces.get(namespace) {
            Some(shared) => shared.clone(),
            None => {
                let shared: Arc<str> = namespace.into();
                self.namespaces.insert(shared.clone());
                shared
            }
        };
        (namespace, name.into())
    }

    /// Takes what is due at `now`; returns it and the next deadline.
    fn take_due(&mut self, now: Instant) -> (Vec<Key>, Option<Instant>) {
        let mut due = Vec::new();
        while let Some(Reverse((at, _))) = self.queue.peek() {
            if *at > now {
                return (due, Some(*at));
            }
            let Some(Reverse((at, key))) = self.queue.pop() else {
                break;
            };
            // Only the deadline still in force: a replaced one is dropped.
            if self.due.get(&key) == Some(&at) {
                self.due.remove(&key);
                due.push(key);
            }
        }
        (due, None)
    }
}

impl Wakeups {
    /// Sets when the AssumedRole `namespace/name` is next reconciled if
    /// nothing changes before, replacing what was set; `None` for only on a
    /// change.
    pub fn set(&self, namespace: &str, name: &str, at: Option<Instant>) {
        let Ok(mut inner) = self.inner.lock() else { return };
        let key = inner.key(namespace, name);
        let Some(at) = at else {
            inner.due.remove(&key);
            return;
        };
        if inner.due.insert(key.clone(), at) == Some(at) {
            return;
        }
        let sooner = inner.queue.peek().is_none_or(|Reverse((first, _))| at < *first);
        inner.queue.push(Reverse((at, key)));
        // Replaced deadlines wait in the queue until they come up; when they
        // are a fifth of it, the queue is built again from the map (a
        // rebuild per quarter of the live ones set anew).
        if inner.queue.len() > inner.due.len() + inner.due.len() / 4 + 64 {
            let live: Vec<_> = inner.due.iter().map(|(k, at)| Reverse((*at, k.clone()))).collect();
            inner.queue = BinaryHeap::from(live);
        }
        drop(inner);
        if sooner {
            self.sooner.notify_one();
        }
    }

    /// The deadline set for `namespace/name`.
    #[cfg(test)]
    pub fn get(&self, namespace: &str, name: &str) -> Option<Instant> {
        let inner = self.inner.lock().ok()?;
        inner
            .due
            .iter()
            .find(|((ns, n), _)| &**ns == namespace && &**n == name)
            .map(|(_, at)| *at)
    }

    /// How many AssumedRoles have a deadline.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.inner.lock().map(|i| i.due.len()).unwrap_or_default()
    }

    /// Whether none has.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The AssumedRoles of `scope` (`None` for every namespace) as they
    /// fall due.
    pub fn subscribe(&self, scope: Option<String>) -> impl Stream<Item = ObjectRef<AssumedRole>> + use<> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        if let Ok(mut inner) = self.inner.lock() {
            inner.scopes.push((scope, tx));
        }
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }

    /// Hands each AssumedRole to its scope's controller when it falls due,
    /// until `shutdown`.
    pub async fn run(&self, shutdown: tokio_util::sync::CancellationToken) {
        loop {
            let next = {
                let Ok(mut inner) = self.inner.lock() else { return };
                let (due, next) = inner.take_due(Instant::now());
                for (namespace, name) in due {
                    let reference = ObjectRef::new(&name).within(&namespace);
                    for (scope, tx) in &inner.scopes {
                        if scope.as_deref().is_none_or(|s| s == &*namespace) {
                            let _ = tx.send(reference.clone());
                        }
                    }
                }
                next
            };
            let sleep = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.sooner.notified() => {}
                () = sleep => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::StreamExt;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn each_assumed_role_falls_due_once_at_its_last_deadline_to_its_own_scope() {
        let wakeups = Arc::new(Wakeups::default());
        let mut all = wakeups.subscribe(None);
        let mut team = wakeups.subscribe(Some("team".into()));
        let token = tokio_util::sync::CancellationToken::new();
        let running = tokio::spawn({
            let (wakeups, token) = (wakeups.clone(), token.clone());
            async move { wakeups.run(token).await }
        });
        let start = Instant::now();
        let secs = |s| Some(start + Duration::from_secs(s));
        wakeups.set("team", "a", secs(60));
        wakeups.set("team", "a", secs(30)); // sooner: replaces
        wakeups.set("other", "b", secs(10));
        wakeups.set("team", "c", secs(20));
        wakeups.set("team", "c", None); // only on a change now
        wakeups.set("team", "d", secs(40));
        wakeups.set("team", "d", secs(50)); // later: replaces too
        assert_eq!(wakeups.len(), 3);

        let first = all.next().await.expect("b");
        assert_eq!(
            (first.name.as_str(), Instant::now() - start),
            ("b", Duration::from_secs(10))
        );
        let second = all.next().await.expect("a");
        assert_eq!(
            (second.name.as_str(), Instant::now() - start),
            ("a", Duration::from_secs(30))
        );
        assert_eq!(
            team.next().await.map(|r| r.name),
            Some("a".to_string()),
            "b is not team's"
        );
        let third = all.next().await.expect("d");
        assert_eq!(
            (third.name.as_str(), Instant::now() - start),
            ("d", Duration::from_secs(50))
        );
        assert_eq!(team.next().await.map(|r| r.name), Some("d".to_string()));
        assert!(wakeups.is_empty(), "what fell due is gone");
        // Nothing else comes: not a, c or d again.
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert!(futures::poll!(all.next()).is_pending());
        token.cancel();
        running.await.expect("run");
    }

    #[test]
    fn replaced_deadlines_do_not_pile_up() {
        let wakeups = Wakeups::default();
        let start = Instant::now();
        for i in 0..10_000u64 {
            wakeups.set("team", "a", Some(start + Duration::from_secs(i)));
        }
        let inner = wakeups.inner.lock().expect("lock");
        assert_eq!(inner.due.len(), 1);
        assert!(inner.queue.len() <= 66, "{}", inner.queue.len());
    }
}
