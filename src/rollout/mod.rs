//! Restarts for consumers that read credentials once: a Deployment,
//! StatefulSet or DaemonSet annotated with the AssumedRoles it uses is
//! rolled out once per new set of credentials, by a patch of one pod
//! template annotation ([`decide`] says when, pure; this module watches and
//! patches).
//!
//! Workloads are watched by metadata only, and only the annotated ones are
//! kept; AssumedRoles by their status, of which only the current set's
//! expiration and issue time are kept. Patches go out at a bounded rate,
//! from the leader only.

pub mod decide;

use std::{collections::HashMap, sync::Arc, time::Instant};

use futures::{StreamExt as _, stream::BoxStream};
use jiff::Timestamp;
use k8s_openapi::api::{
    apps::v1::{DaemonSet, Deployment, StatefulSet},
    core::v1::ObjectReference,
};
use kube::{
    Api, Client, Resource,
    api::{PartialObjectMeta, Patch, PatchParams},
    runtime::{WatchStreamExt as _, watcher},
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use kube::runtime::events::EventType;

use crate::{api::AssumedRole, budget::Bucket, controller::Context};
use decide::{GENERATION_ANNOTATION, RESTART_ANNOTATION, Set, Verdict};

/// The kinds of workload that can be rolled out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// apps/v1 Deployment.
    Deployment,
    /// apps/v1 StatefulSet.
    StatefulSet,
    /// apps/v1 DaemonSet.
    DaemonSet,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Deployment => "Deployment",
            Self::StatefulSet => "StatefulSet",
            Self::DaemonSet => "DaemonSet",
        }
    }
}

/// Settings of the rollout loop.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Namespaces watched; all when empty.
    pub namespaces: Vec<String>,
    /// Rollouts per second, at most, across every workload.
    pub rate: f64,
    /// Rollouts that may start at once before the rate applies.
    pub burst: u32,
}

/// An annotated workload, as kept.
#[derive(Debug, Clone)]
struct Workload {
    roles: Vec<String>,
    rolled: Option<String>,
    created: Timestamp,
    uid: Option<String>,
    /// Its `metadata.generation`: a watch event older than the operator's
    /// own last patch does not undo what that patch wrote.
    generation: i64,
}

type Key = (Kind, String, String);

/// One event of any watch.
enum Seen {
    /// A workload as kept (`None`: not annotated, or gone).
    Workload(Key, Option<Workload>),
    /// An AssumedRole's current set (`None`: none, or it is gone).
    Role(String, String, Option<Set>),
}

/// The metadata of a workload, whatever its kind.
type WorkloadMeta = kube::core::ObjectMeta;

/// Runs until `shutdown`: watches, decides, patches.
pub async fn run(ctx: Arc<Context>, settings: Settings, shutdown: CancellationToken) {
    let scopes: Vec<Option<String>> = if settings.namespaces.is_empty() {
        vec![None]
    } else {
        settings.namespaces.iter().cloned().map(Some).collect()
    };
    let mut streams: Vec<BoxStream<'static, Seen>> = Vec::new();
    for scope in &scopes {
        streams.push(workloads::<Deployment>(&ctx.client, scope, Kind::Deployment));
        streams.push(workloads::<StatefulSet>(&ctx.client, scope, Kind::StatefulSet));
        streams.push(workloads::<DaemonSet>(&ctx.client, scope, Kind::DaemonSet));
        let roles: Api<AssumedRole> = match scope {
            Some(ns) => Api::namespaced(ctx.client.clone(), ns),
            None => Api::all(ctx.client.clone()),
        };
        streams.push(
            watcher(roles, watcher::Config::default().any_semantic())
                .default_backoff()
                .filter_map(|e| {
                    std::future::ready(match e {
                        Ok(watcher::Event::Apply(ar) | watcher::Event::InitApply(ar)) => {
                            Some(role_seen(&ar, current_set(&ar)))
                        }
                        Ok(watcher::Event::Delete(ar)) => Some(role_seen(&ar, None)),
                        _ => None,
                    })
                })
                .boxed(),
        );
    }
    let mut events = futures::stream::select_all(streams);
    let mut workloads: HashMap<Key, Workload> = HashMap::new();
    let mut sets: HashMap<(String, String), Set> = HashMap::new();
    let mut bucket = Bucket::new(settings.rate, settings.burst, Instant::now());
    let mut leading = ctx.leading.clone();
    let leader_elected = leading.has_changed().is_ok();
    loop {
        let mut due: Vec<Key> = Vec::new();
        tokio::select! {
            seen = events.next() => match seen {
                Some(Seen::Workload(key, workload)) => match workload {
                    Some(mut workload) => {
                        if let Some(known) = workloads.get(&key)
                            && known.generation > workload.generation
                        {
                            workload.rolled = known.rolled.clone();
                            workload.generation = known.generation;
                        }
                        workloads.insert(key.clone(), workload);
                        due.push(key);
                    }
                    None => {
                        workloads.remove(&key);
                    }
                },
                Some(Seen::Role(namespace, name, set)) => {
                    let key = (namespace, name);
                    if sets.get(&key).copied() != set {
                        match set {
                            Some(set) => sets.insert(key.clone(), set),
                            None => sets.remove(&key),
                        };
                        due.extend(
                            workloads
                                .iter()
                                .filter(|((_, ns, _), w)| *ns == key.0 && w.roles.contains(&key.1))
                                .map(|(k, _)| k.clone()),
                        );
                    }
                }
                None => return,
            },
            // Without leader election nobody sends: this replica always leads.
            Ok(()) = leading.changed(), if leader_elected => {
                due.extend(workloads.keys().cloned());
            }
            () = shutdown.cancelled() => return,
        }
        if !*leading.borrow() {
            continue;
        }
        for key in due {
            let Some(workload) = workloads.get(&key) else {
                continue;
            };
            let (kind, namespace, name) = &key;
            let current: Vec<(String, Option<Set>)> = workload
                .roles
                .iter()
                .map(|r| (r.clone(), sets.get(&(namespace.clone(), r.clone())).copied()))
                .collect();
            let verdict = decide::decide(workload.rolled.as_deref(), workload.created, &current);
            debug!(kind = kind.as_str(), namespace, name, ?verdict, "judged a workload");
            let Verdict::Roll(generation) = verdict else {
                continue;
            };
            // At a bounded rate: a wave of refreshes never becomes a wave of
            // rollouts all at once.
            loop {
                match bucket.take(false, Instant::now()) {
                    Ok(()) => break,
                    Err(wait) => tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = shutdown.cancelled() => return,
                    },
                }
            }
            match roll(&ctx.client, *kind, namespace, name, &generation).await {
                Ok(patched) => {
                    info!(
                        kind = kind.as_str(),
                        namespace, name, generation, "rolled out for new credentials"
                    );
                    ctx.metrics.rollout(kind.as_str());
                    let uid = workload.uid.clone();
                    if let Some(w) = workloads.get_mut(&key) {
                        w.rolled = Some(generation.clone());
                        w.generation = patched;
                    }
                    let regarding = ObjectReference {
                        api_version: Some("apps/v1".into()),
                        kind: Some(kind.as_str().into()),
                        namespace: Some(namespace.clone()),
                        name: Some(name.clone()),
                        uid,
                        ..ObjectReference::default()
                    };
                    let note = format!("Restarting its pods for the new credentials of {generation}");
                    if let Err(e) = ctx
                        .events
                        .publish_regarding(
                            regarding,
                            EventType::Normal,
                            "CredentialsRollout",
                            &note,
                            ctx.clock.now(),
                        )
                        .await
                    {
                        warn!(kind = kind.as_str(), namespace, name, error = %crate::api_message(&e), "cannot publish the rollout Event");
                    }
                }
                Err(kube::Error::Api(status)) if status.code == 404 => {
                    workloads.remove(&key);
                }
                Err(e) => {
                    warn!(kind = kind.as_str(), namespace, name, error = %crate::api_message(&e), "cannot roll out");
                }
            }
        }
    }
}

/// The workloads of `kind` in `scope`, by metadata.
fn workloads<K>(client: &Client, scope: &Option<String>, kind: Kind) -> BoxStream<'static, Seen>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    // Metadata only: a workload's spec is never read.
    let api: Api<PartialObjectMeta<K>> = match scope {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        .filter_map(move |e| {
            std::future::ready(match e {
                Ok(watcher::Event::Apply(m) | watcher::Event::InitApply(m)) => {
                    Some(Seen::Workload(key_of(kind, &m.metadata), annotated(&m.metadata)))
                }
                Ok(watcher::Event::Delete(m)) => Some(Seen::Workload(key_of(kind, &m.metadata), None)),
                _ => None,
            })
        })
        .boxed()
}

fn key_of(kind: Kind, meta: &WorkloadMeta) -> Key {
    (
        kind,
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// The workload `meta` describes, if it is annotated.
fn annotated(meta: &WorkloadMeta) -> Option<Workload> {
    let annotations = meta.annotations.as_ref()?;
    let roles = decide::roles(annotations.get(RESTART_ANNOTATION)?);
    if roles.is_empty() {
        return None;
    }
    Some(Workload {
        roles,
        rolled: annotations.get(GENERATION_ANNOTATION).cloned(),
        created: meta
            .creation_timestamp
            .as_ref()
            .map(|t| t.0)
            .unwrap_or(Timestamp::UNIX_EPOCH),
        uid: meta.uid.clone(),
        generation: meta.generation.unwrap_or_default(),
    })
}

fn role_seen(ar: &AssumedRole, set: Option<Set>) -> Seen {
    Seen::Role(
        ar.metadata.namespace.clone().unwrap_or_default(),
        ar.metadata.name.clone().unwrap_or_default(),
        set,
    )
}

/// The set of credentials an AssumedRole's Secret holds, by its status:
/// only while it is Ready, so a set that could not be written rolls nothing.
fn current_set(ar: &AssumedRole) -> Option<Set> {
    let status = ar.status.as_ref()?;
    let ready = status
        .conditions
        .iter()
        .any(|c| c.type_ == crate::status::READY && c.status == "True");
    if !ready {
        return None;
    }
    Some(Set {
        expires: status.expiration_time.as_ref()?.0,
        issued: status.last_refresh_time.as_ref()?.0,
    })
}

/// Writes `generation` into the workload's pod template (the rollout) and
/// onto the workload (what the next decision reads), in one patch; the
/// workload's `metadata.generation` after it.
async fn roll(client: &Client, kind: Kind, namespace: &str, name: &str, generation: &str) -> Result<i64, kube::Error> {
    let patch = serde_json::json!({
        "metadata": {"annotations": {GENERATION_ANNOTATION: generation}},
        "spec": {"template": {"metadata": {"annotations": {GENERATION_ANNOTATION: generation}}}},
    });
    let params = PatchParams {
        field_manager: Some(crate::controller::FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    let patch = Patch::Merge(&patch);
    match kind {
        Kind::Deployment => patch_one::<Deployment>(client, namespace, name, &params, &patch).await,
        Kind::StatefulSet => patch_one::<StatefulSet>(client, namespace, name, &params, &patch).await,
        Kind::DaemonSet => patch_one::<DaemonSet>(client, namespace, name, &params, &patch).await,
    }
}

async fn patch_one<K>(
    client: &Client,
    namespace: &str,
    name: &str,
    params: &PatchParams,
    patch: &Patch<&serde_json::Value>,
) -> Result<i64, kube::Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned,
{
    Api::<K>::namespaced(client.clone(), namespace)
        .patch(name, params, patch)
        .await
        .map(|patched| patched.meta().generation.unwrap_or_default())
}
