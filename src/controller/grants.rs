//! The caches that the policy decision reads (every `AssumedRolePolicy`,
//! every namespace's labels) and the watches that fill them. A change to a
//! policy, or to a namespace's labels, tells every controller loop which
//! AssumedRoles to judge again: all of them for a policy (it may have
//! stopped covering a namespace), those of the namespace for a label.

use std::{collections::BTreeMap, sync::Arc, sync::Mutex};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client, ResourceExt,
    api::PartialObjectMeta,
    runtime::{
        WatchStreamExt, predicates,
        reflector::{self, ObjectRef, Store, store::Writer},
        watcher,
    },
};
use tokio::sync::{broadcast, watch};
use tracing::debug;

use crate::{api::AssumedRole, policy::AssumedRolePolicy};

/// What changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A policy: judge every AssumedRole again.
    Policy,
    /// The labels of this namespace: judge its AssumedRoles again.
    Namespace(String),
}

type Writers = (Writer<AssumedRolePolicy>, Writer<PartialObjectMeta<Namespace>>);

/// The policies and namespace labels, cached.
pub struct Grants {
    policies: Store<AssumedRolePolicy>,
    namespaces: Store<PartialObjectMeta<Namespace>>,
    writers: Mutex<Option<Writers>>,
    changed: broadcast::Sender<Change>,
    /// Whether each watch delivered a first full list. Told by the watch
    /// events themselves rather than by `Store::wait_until_ready`, whose
    /// future wakes only the last of several tasks that wait on it.
    policies_synced: watch::Sender<bool>,
    namespaces_synced: watch::Sender<bool>,
}

impl Default for Grants {
    fn default() -> Self {
        let (policies, policy_writer) = reflector::store();
        let (namespaces, namespace_writer) = reflector::store();
        Self {
            policies,
            namespaces,
            writers: Mutex::new(Some((policy_writer, namespace_writer))),
            changed: broadcast::channel(1024).0,
            policies_synced: watch::channel(false).0,
            namespaces_synced: watch::channel(false).0,
        }
    }
}

impl Grants {
    /// Every AssumedRolePolicy.
    pub fn policies(&self) -> Vec<Arc<AssumedRolePolicy>> {
        self.policies.state()
    }

    /// The labels of `namespace`, or `None` when the cache has not seen it.
    pub fn labels(&self, namespace: &str) -> Option<BTreeMap<String, String>> {
        self.namespaces
            .get(&ObjectRef::new(namespace))
            .map(|ns| ns.labels().clone())
    }

    /// Every namespace that is not being deleted, with its labels.
    pub fn namespaces(&self) -> Vec<(String, BTreeMap<String, String>)> {
        self.namespaces
            .state()
            .iter()
            .filter(|ns| ns.metadata.deletion_timestamp.is_none())
            .map(|ns| (ns.name_any(), ns.labels().clone()))
            .collect()
    }

    /// Tells of each change of a policy or of a namespace's labels.
    pub fn changes(&self) -> broadcast::Receiver<Change> {
        self.changed.subscribe()
    }

    /// Waits until both caches hold a first full list: until then every
    /// AssumedRole would look denied. Any number of tasks may wait.
    pub async fn ready(&self) {
        let _ = self.policies_synced.subscribe().wait_for(|synced| *synced).await;
        let _ = self.namespaces_synced.subscribe().wait_for(|synced| *synced).await;
    }

    /// The AssumedRoles of `roles` to judge again, as changes arrive.
    pub fn triggers(&self, roles: reflector::Store<AssumedRole>) -> impl Stream<Item = ObjectRef<AssumedRole>> + use<> {
        let changes = futures::stream::unfold(self.changed.subscribe(), |mut rx| async move {
            match rx.recv().await {
                Ok(change) => Some((change, rx)),
                // Missed changes: judge everything.
                Err(broadcast::error::RecvError::Lagged(_)) => Some((Change::Policy, rx)),
                Err(broadcast::error::RecvError::Closed) => None,
            }
        });
        changes.flat_map(move |change| {
            let refs: Vec<ObjectRef<AssumedRole>> = roles
                .state()
                .iter()
                .filter(|ar| match &change {
                    Change::Policy => true,
                    Change::Namespace(ns) => ar.namespace().as_deref() == Some(ns.as_str()),
                })
                .map(|ar| ObjectRef::from_obj(ar.as_ref()))
                .collect();
            futures::stream::iter(refs)
        })
    }

    /// Watches policies and namespaces until the stream ends (never, short
    /// of the process stopping), filling the caches and announcing changes.
    /// Runs once: a second call returns at once.
    pub async fn watch(&self, client: Client) {
        let Some((policy_writer, namespace_writer)) = self.writers.lock().ok().and_then(|mut w| w.take()) else {
            return;
        };
        let policies_synced = self.policies_synced.clone();
        let namespaces_synced = self.namespaces_synced.clone();
        let policies = watcher(
            Api::<AssumedRolePolicy>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff()
        .reflect(policy_writer)
        .inspect(move |event| synced_on(event, &policies_synced))
        .touched_objects()
        .filter_map(|p| async move { p.ok().map(|p| (Change::Policy, p.name_any())) })
        .boxed();
        let namespaces = watcher(
            Api::<PartialObjectMeta<Namespace>>::all(client),
            watcher::Config::default().any_semantic(),
        )
        .default_backoff()
        // Names and labels are all the decision reads.
        .modify(|ns| {
            ns.metadata.managed_fields = None;
            ns.metadata.annotations = None;
        })
        .reflect(namespace_writer)
        .inspect(move |event| synced_on(event, &namespaces_synced))
        .touched_objects()
        .predicate_filter(predicates::labels, Default::default())
        .filter_map(|ns| async move { ns.ok().map(|ns| (Change::Namespace(ns.name_any()), ns.name_any())) })
        .boxed();
        let mut changes = futures::stream::select(policies, namespaces);
        while let Some((change, name)) = changes.next().await {
            debug!(?change, %name, "judging AssumedRoles again");
            let _ = self.changed.send(change);
        }
    }

    /// Fills the caches with `policies` and the namespaces `labels`, as the
    /// watches would, and marks them synced.
    #[cfg(test)]
    pub fn fill(&self, policies: &[Arc<AssumedRolePolicy>], labels: &[(&str, BTreeMap<String, String>)]) {
        let Some((mut policy_writer, mut namespace_writer)) = self.writers.lock().ok().and_then(|mut w| w.take())
        else {
            return;
        };
        for p in policies {
            policy_writer.apply_watcher_event(&watcher::Event::InitApply(p.as_ref().clone()));
        }
        policy_writer.apply_watcher_event(&watcher::Event::InitDone);
        for (name, labels) in labels {
            let mut ns = PartialObjectMeta::<Namespace>::default();
            ns.metadata.name = Some((*name).to_string());
            ns.metadata.labels = Some(labels.clone());
            namespace_writer.apply_watcher_event(&watcher::Event::InitApply(ns));
        }
        namespace_writer.apply_watcher_event(&watcher::Event::InitDone);
        self.policies_synced.send_replace(true);
        self.namespaces_synced.send_replace(true);
    }
}

/// Marks `synced` once a watch delivered its first full list.
pub(super) fn synced_on<K>(event: &Result<watcher::Event<K>, watcher::Error>, synced: &watch::Sender<bool>) {
    if matches!(event, Ok(watcher::Event::InitDone)) {
        synced.send_replace(true);
    }
}
