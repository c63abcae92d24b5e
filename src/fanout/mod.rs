//! One role, many namespaces: a cluster-scoped `ClusterAssumedRole` holds a
//! template of an AssumedRole and a namespace selection, and the operator
//! keeps one AssumedRole per selected namespace in step with it, owned by it
//! (so that it goes, with its Secret, when the ClusterAssumedRole does).
//!
//! [`plan`] decides, pure; this module watches (ClusterAssumedRoles, the
//! AssumedRoles they own, and the namespaces through the policy caches) and
//! carries the plan out, from the leader only. Every fanned-out AssumedRole
//! is judged by the AssumedRolePolicies like any other.

pub mod plan;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use futures::StreamExt as _;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{
    Api, CustomResource, KubeSchema, Resource, ResourceExt,
    api::{DeleteParams, Patch, PatchParams},
    runtime::{
        Controller, WatchStreamExt as _,
        controller::Action,
        reflector::{self, ObjectRef},
        watcher,
    },
};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    api::{AssumedRole, AssumedRoleSpec},
    controller::{Context, FIELD_MANAGER},
    policy::NamespaceSelection,
};

/// The label on each AssumedRole a ClusterAssumedRole made: its name.
pub const OWNER_LABEL: &str = "sts.refresh.dev/cluster-assumed-role";

/// The same AssumedRole in every namespace it selects.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "sts.refresh.dev",
    version = "v1alpha1",
    kind = "ClusterAssumedRole",
    shortname = "car",
    status = "ClusterAssumedRoleStatus",
    category = "aws",
    cel,
    printcolumn = r#"{"name":"Role","type":"string","jsonPath":".spec.template.spec.roleArn"}"#,
    printcolumn = r#"{"name":"Namespaces","type":"integer","jsonPath":".status.namespaces"}"#,
    printcolumn = r#"{"name":"Ready","type":"integer","jsonPath":".status.ready"}"#,
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterAssumedRoleSpec {
    /// The namespaces that get an AssumedRole: by name, and/or by label
    /// selector (`{}` selects every namespace).
    pub namespaces: NamespaceSelection,
    /// The AssumedRole each selected namespace gets.
    pub template: AssumedRoleTemplate,
}

/// An AssumedRole, as a template.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AssumedRoleTemplate {
    /// Its name (default: the ClusterAssumedRole's), labels and annotations.
    #[serde(default)]
    pub metadata: TemplateMetadata,
    /// Its spec.
    pub spec: AssumedRoleSpec,
}

/// The metadata a template sets.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TemplateMetadata {
    /// The AssumedRole's name in each namespace; the ClusterAssumedRole's
    /// when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')").message("spec.template.metadata.name must be an object name (lower-case DNS subdomain)"))]
    pub name: Option<String>,
    /// Labels of each AssumedRole.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations of each AssumedRole.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// What a ClusterAssumedRole covers, and how much of it is Ready.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClusterAssumedRoleStatus {
    /// Namespaces selected.
    #[serde(default)]
    pub namespaces: i32,
    /// Of them, those whose AssumedRole is Ready and in step.
    #[serde(default)]
    pub ready: i32,
    /// The namespaces that are not (the first 20 by name), with why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ready: Vec<NamespaceProblem>,
    /// `Ready`: every selected namespace's AssumedRole is Ready.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The generation this status is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// One namespace that is not Ready, and why.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceProblem {
    /// The namespace.
    pub namespace: String,
    /// Its AssumedRole's Ready reason (`PolicyDenied`, ...), `Pending`, or
    /// `Conflict` (an AssumedRole of that name that is not this one's).
    pub reason: String,
    /// In words.
    pub message: String,
}

/// Runs the fan-out until `shutdown`, over `scopes` (one namespace each, or
/// `None` for all).
pub async fn run(ctx: Arc<Context>, namespaces: Vec<String>, shutdown: CancellationToken) {
    let api: Api<ClusterAssumedRole> = Api::all(ctx.client.clone());
    // The AssumedRoles ClusterAssumedRoles made, whole: the plan compares
    // them with the template. One cache per namespace served (the RBAC of a
    // namespace-limited install allows no list across the cluster).
    let scopes: Vec<Option<String>> = if namespaces.is_empty() {
        vec![None]
    } else {
        namespaces.iter().cloned().map(Some).collect()
    };
    let mut made = Vec::new();
    let mut streams = Vec::new();
    for scope in scopes {
        let (store, writer) = reflector::store();
        made.push(store);
        let owned_api: Api<AssumedRole> = match scope {
            Some(ns) => Api::namespaced(ctx.client.clone(), &ns),
            None => Api::all(ctx.client.clone()),
        };
        streams.push(
            watcher(owned_api, watcher::Config::default().labels(OWNER_LABEL).any_semantic())
                .default_backoff()
                .modify(|ar| ar.metadata.managed_fields = None)
                .reflect(writer)
                .touched_objects()
                .boxed(),
        );
    }
    let owned = futures::stream::select_all(streams);
    // A namespace's labels changed, or one came: every ClusterAssumedRole
    // looks again (there are few).
    let changes = futures::stream::unfold(ctx.grants.changes(), |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(crate::controller::Change::Namespace(_)) => return Some(((), rx)),
                Ok(_) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return Some(((), rx)),
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    let state = Arc::new(Fanout {
        ctx: ctx.clone(),
        made,
        scopes: namespaces,
    });
    ctx.grants.ready().await;
    // An AssumedRole wakes the ClusterAssumedRole its label names: by name
    // alone, as it is cluster-scoped (mapping by owner reference would give
    // it the AssumedRole's namespace, one reconcile per namespace).
    Controller::new(api, watcher::Config::default().any_semantic())
        .watches_stream(owned, |ar: AssumedRole| {
            ar.labels()
                .get(OWNER_LABEL)
                .map(|name| ObjectRef::<ClusterAssumedRole>::new(name))
        })
        .reconcile_all_on(changes)
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(reconcile, error_policy, state)
        .for_each(|_| std::future::ready(()))
        .await;
}

struct Fanout {
    ctx: Arc<Context>,
    made: Vec<reflector::Store<AssumedRole>>,
    /// The namespaces the operator serves (all when empty).
    scopes: Vec<String>,
}

/// Why a fan-out step failed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct FanoutError(String);

fn error_policy(car: Arc<ClusterAssumedRole>, error: &FanoutError, _: Arc<Fanout>) -> Action {
    warn!(name = %car.name_any(), error = %error, "cannot fan out");
    Action::requeue(Duration::from_secs(30))
}

async fn reconcile(car: Arc<ClusterAssumedRole>, state: Arc<Fanout>) -> Result<Action, FanoutError> {
    let ctx = &state.ctx;
    if !*ctx.leading.borrow() || car.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let uid = car.metadata.uid.clone().unwrap_or_default();
    let name = plan::role_name(&car);
    let namespaces: Vec<(String, BTreeMap<String, String>)> = ctx
        .grants
        .namespaces()
        .into_iter()
        .filter(|(ns, _)| state.scopes.is_empty() || state.scopes.contains(ns))
        .collect();
    let mut present = Vec::new();
    for (ns, _) in &namespaces {
        let key = ObjectRef::new(&name).within(ns);
        let found = state
            .made
            .iter()
            .find_map(|store| store.get(&key))
            .or_else(|| ctx.assumed_role(ns, &name));
        if let Some(ar) = found {
            let owned = ar
                .metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.uid == uid && o.controller == Some(true));
            present.push(plan::Present {
                namespace: ns.clone(),
                owned,
                spec: ar.spec.clone(),
                labels: ar.labels().clone(),
                annotations: ar.annotations().clone(),
                ready: ar
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.iter().find(|c| c.type_ == crate::status::READY))
                    .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone())),
            });
        }
    }
    // Owned AssumedRoles in namespaces the operator no longer lists.
    for ar in state.made.iter().flat_map(|store| store.state()) {
        let ns = ar.namespace().unwrap_or_default();
        let mine = ar.metadata.owner_references.iter().flatten().any(|o| o.uid == uid);
        if mine && ar.name_any() == name && !present.iter().any(|p| p.namespace == ns) {
            present.push(plan::Present {
                namespace: ns,
                owned: true,
                spec: ar.spec.clone(),
                labels: BTreeMap::new(),
                annotations: BTreeMap::new(),
                ready: None,
            });
        }
    }
    let plan = plan::plan(&car, &namespaces, &present, ctx.clock.now());
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let owner = car
        .controller_owner_ref(&())
        .ok_or_else(|| FanoutError("the ClusterAssumedRole has no UID yet".into()))?;
    let mut failures = Vec::new();
    for ns in &plan.apply {
        let mut ar = AssumedRole::new(&name, car.spec.template.spec.clone());
        ar.metadata.namespace = Some(ns.clone());
        ar.metadata.labels = Some(plan::labels_of(&car));
        if !car.spec.template.metadata.annotations.is_empty() {
            ar.metadata.annotations = Some(car.spec.template.metadata.annotations.clone());
        }
        ar.metadata.owner_references = Some(vec![owner.clone()]);
        let api: Api<AssumedRole> = Api::namespaced(ctx.client.clone(), ns);
        match api.patch(&name, &params, &Patch::Apply(&ar)).await {
            Ok(_) => {
                info!(cluster_assumed_role = %car.name_any(), namespace = %ns, name = %name, "wrote a fanned-out AssumedRole")
            }
            Err(e) => failures.push(format!(
                "writing AssumedRole {name} in {ns}: {}",
                crate::api_message(&e)
            )),
        }
    }
    for ns in &plan.delete {
        let api: Api<AssumedRole> = Api::namespaced(ctx.client.clone(), ns);
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {
                info!(cluster_assumed_role = %car.name_any(), namespace = %ns, name = %name, "deleted a fanned-out AssumedRole: its namespace is no longer selected")
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => failures.push(format!(
                "deleting AssumedRole {name} in {ns}: {}",
                crate::api_message(&e)
            )),
        }
    }
    if car.status.as_ref() != Some(&plan.status) {
        let api: Api<ClusterAssumedRole> = Api::all(ctx.client.clone());
        // A merge patch keeps a list it is not given: the list of namespaces
        // not Ready is always given, empty or not.
        let mut status =
            serde_json::to_value(&plan.status).map_err(|e| FanoutError(format!("rendering the status: {e}")))?;
        status["notReady"] = serde_json::json!(plan.status.not_ready);
        let patch = serde_json::json!({"status": status});
        api.patch_status(&car.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| FanoutError(format!("patching the status: {}", crate::api_message(&e))))?;
    }
    if !failures.is_empty() {
        return Err(FanoutError(failures.join("; ")));
    }
    Ok(Action::await_change())
}
