//! The controller: wiring, [`reconcile`], [`error_policy`] and the
//! [`Context`] they share. This module and [`crate::sts`] are the only places
//! with effects; every decision is made by the pure modules.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::{FutureExt, StreamExt, future::BoxFuture};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::{
    ByteString,
    api::{
        core::v1::Secret,
        events::v1::{Event as K8sEvent, EventSeries},
    },
    apimachinery::pkg::apis::meta::v1::{Condition, MicroTime, ObjectMeta, Time},
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, PartialObjectMeta, Patch, PatchParams, PostParams, Preconditions},
    runtime::{
        Controller, WatchStreamExt, controller::Action, events::EventType, predicates, reflector, reflector::ObjectRef,
        watcher,
    },
};
use serde_json::json;
use tracing::{debug, info, warn};

use crate::{
    Error, Result,
    api::{AssumedRole, AssumedRoleStatus, RefreshBefore},
    events,
    metrics::Metrics,
    schedule::{self, Adjustment, Refresh},
    secret::{self, Observed},
    sts::{AssumeRoleRequest, AssumedSession, Credentials, Sts, StsError},
};

/// Field manager for every write the operator makes.
pub const FIELD_MANAGER: &str = "assumed-role-operator";
/// Name of the Secret, in the operator's namespace, that holds the key for
/// the data HMAC.
pub const HMAC_KEY_SECRET: &str = "assumed-role-operator-hmac-key";
/// Restores of one set of credentials before the operator concludes that
/// another writer is fighting it and stops.
pub const MAX_RESTORES: u32 = 3;

/// The condition type that says whether the Secret is good to use.
pub const READY: &str = "Ready";
/// The condition type that says a refresh setting was adjusted.
pub const REFRESH_ADJUSTED: &str = "RefreshAdjusted";

/// Shared by every reconcile.
pub struct Context {
    /// The Kubernetes client.
    pub client: Client,
    /// The STS client.
    pub sts: Arc<dyn Sts>,
    /// Publishes Events.
    pub events: EventPublisher,
    /// Key of the data HMAC.
    pub hmac_key: Vec<u8>,
    /// Metrics, shared with the admin server.
    pub metrics: Arc<Metrics>,
    /// The latest credentials per AssumedRole UID, so that a deleted or
    /// edited Secret can be restored without calling STS.
    held: Mutex<HashMap<String, Held>>,
    /// The caches of owned Secrets' metadata, one per watched scope, filled
    /// by [`run`].
    owned_secrets: Mutex<Vec<reflector::Store<PartialObjectMeta<Secret>>>>,
}

#[derive(Clone)]
struct Held {
    creds: Credentials,
    issued: Timestamp,
    spec_hash: String,
    assumed_role_arn: Option<String>,
    source_identity: Option<String>,
    /// The Secret these credentials are meant for.
    secret_name: String,
    /// Whether they reached that Secret. A minted set whose write failed is
    /// held too, so that the retry writes it instead of calling STS again.
    written: bool,
    /// Restores of this set into this Secret after another writer changed
    /// or deleted it.
    restores: u32,
}

impl Context {
    /// Builds a context.
    pub fn new(
        client: Client,
        sts: Arc<dyn Sts>,
        hmac_key: Vec<u8>,
        metrics: Arc<Metrics>,
        instance: Option<String>,
    ) -> Self {
        Self {
            events: EventPublisher::new(client.clone(), instance),
            client,
            sts,
            hmac_key,
            metrics,
            held: Mutex::default(),
            owned_secrets: Mutex::default(),
        }
    }

    /// Names of the Secrets in `namespace` that the AssumedRole `uid`
    /// controls, other than `current`: left behind by a rename.
    fn stale_secrets(&self, namespace: &str, uid: &str, current: &str) -> Vec<(String, Option<String>)> {
        let Ok(stores) = self.owned_secrets.lock() else {
            return Vec::new();
        };
        stores
            .iter()
            .flat_map(|store| store.state())
            .filter(|s| s.metadata.namespace.as_deref() == Some(namespace) && s.name_any() != current)
            .filter(|s| {
                s.owner_references()
                    .iter()
                    .any(|o| o.controller == Some(true) && o.uid == uid && o.kind == "AssumedRole")
            })
            .map(|s| (s.name_any(), s.metadata.uid.clone()))
            .collect()
    }

    fn held(&self, uid: &str) -> Option<Held> {
        self.held.lock().ok().and_then(|h| h.get(uid).cloned())
    }

    fn hold(&self, uid: &str, held: Held) {
        if let Ok(mut map) = self.held.lock() {
            map.insert(uid.to_string(), held);
        }
    }
}

/// Reads the HMAC key from its Secret in `namespace`, creating it with a
/// random key on first start.
pub async fn load_hmac_key(client: Client, namespace: &str) -> Result<Vec<u8>> {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    let err = |source| Error::HmacKey {
        name: HMAC_KEY_SECRET.into(),
        source,
    };
    for _ in 0..3 {
        if let Some(secret) = api.get_opt(HMAC_KEY_SECRET).await.map_err(err)?
            && let Some(key) = secret.data.and_then(|mut d| d.remove("key"))
            && key.0.len() >= 32
        {
            return Ok(key.0);
        }
        let mut key = vec![0u8; 32];
        getrandom::fill(&mut key).map_err(|_| Error::MissingMetadata("random source"))?;
        let secret = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(HMAC_KEY_SECRET.into()),
                labels: Some([(secret::MANAGED_BY_LABEL.into(), secret::MANAGED_BY.into())].into()),
                ..Default::default()
            },
            data: Some([("key".to_string(), ByteString(key.clone()))].into()),
            ..Default::default()
        };
        match api.create(&PostParams::default(), &secret).await {
            Ok(_) => return Ok(key),
            // Another replica created it first: read theirs.
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => return Err(err(e)),
        }
    }
    Err(Error::MissingMetadata("HMAC key after three attempts"))
}

/// Why an attempt failed, in the terms the status and Events use.
#[derive(Debug)]
struct Failure {
    reason: &'static str,
    message: String,
    /// Retry after the backoff; otherwise wait for a change.
    retry: bool,
}

impl From<StsError> for Failure {
    fn from(e: StsError) -> Self {
        Self {
            reason: e.reason(),
            message: e.to_string(),
            retry: true,
        }
    }
}

/// Brings one AssumedRole's Secret and status in line with its spec.
pub async fn reconcile(ar: Arc<AssumedRole>, ctx: Arc<Context>) -> Result<Action> {
    let started = std::time::Instant::now();
    let result = reconcile_once(&ar, &ctx).await;
    ctx.metrics.reconcile_duration.observe(started.elapsed().as_secs_f64());
    let label = result.as_ref().map_or_else(Error::category, |_| "success");
    ctx.metrics
        .reconciles
        .get_or_create(&crate::metrics::ResultLabels { result: label })
        .inc();
    result
}

async fn reconcile_once(ar: &Arc<AssumedRole>, ctx: &Arc<Context>) -> Result<Action> {
    let now = Timestamp::now();
    let namespace = ar.namespace().ok_or(Error::MissingMetadata("namespace"))?;
    let uid = ar.uid().ok_or(Error::MissingMetadata("uid"))?;
    let status = ar.status.clone().unwrap_or_default();
    let spec_changed = status.observed_generation != ar.metadata.generation;

    if ar.spec.suspend {
        let failure = Failure {
            reason: "Suspended",
            message: "refresh is suspended; the Secret is left as it is".into(),
            retry: false,
        };
        return fail(ar, ctx, failure, now, false).await;
    }
    let setting = match ar.spec.validate().and_then(|()| ar.spec.refresh_before()) {
        Ok(setting) => setting,
        Err(invalid) => {
            let failure = Failure {
                reason: "InvalidSpec",
                message: invalid.to_string(),
                retry: false,
            };
            return fail(ar, ctx, failure, now, true).await;
        }
    };

    // A failing AssumedRole waits out its backoff, even across restarts,
    // unless its spec changed or it failed on a Secret conflict: that one
    // is over as soon as the other Secret is gone, and a watch says when.
    if status.consecutive_failures > 0
        && !spec_changed
        && !lost_a_conflict(&status)
        && let Some(last) = status.last_failure_time.as_ref().map(|t| t.0)
    {
        let expires = status.expiration_time.as_ref().map(|t| t.0);
        let retry_at = schedule::retry_at(&uid, status.consecutive_failures, last, expires);
        if now < retry_at {
            debug!(wait = %retry_at.duration_since(now), "waiting out the backoff");
            return Ok(requeue_at(retry_at, now));
        }
    }

    let request = AssumeRoleRequest::for_resource(ar);
    let hash = secret::spec_hash(&request);
    let name = ar.secret_name();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let existing = secrets.get_opt(&name).await.map_err(|source| Error::GetSecret {
        name: name.clone(),
        source,
    })?;

    match secret::observe(ar, existing.as_ref(), &ctx.hmac_key) {
        Observed::Foreign => {
            let failure = Failure {
                reason: "SecretConflict",
                message: format!(
                    "Secret {name} exists and is not controlled by this AssumedRole; it is left untouched. \
                     Delete it or set spec.secret.name to another name"
                ),
                retry: true,
            };
            return fail(ar, ctx, failure, now, true).await;
        }
        Observed::Owned(owned) if owned.intact && owned.spec_hash.as_deref() == Some(hash.as_str()) => {
            if let (Some(issued), Some(expires), Some(creds)) = (
                owned.issued,
                owned.expiration,
                existing.as_ref().and_then(secret::credentials_from),
            ) {
                let refresh = refresh_for(&uid, issued, expires, setting);
                if now < refresh.at {
                    debug!(name = %ar.name_any(), refresh = %refresh.at, "Secret is valid and not due; no STS call");
                    // What this process learned when it minted these
                    // credentials beats the status in the cache, which can
                    // lag behind our own last write.
                    let previous = ctx.held(&uid).filter(|p| p.issued == issued);
                    let held = Held {
                        creds,
                        issued,
                        spec_hash: hash.clone(),
                        assumed_role_arn: previous
                            .as_ref()
                            .map_or_else(|| status.assumed_role_arn.clone(), |p| p.assumed_role_arn.clone()),
                        source_identity: previous
                            .as_ref()
                            .map_or_else(|| status.source_identity.clone(), |p| p.source_identity.clone()),
                        secret_name: name.clone(),
                        written: true,
                        restores: previous.filter(|p| p.secret_name == name).map_or(0, |p| p.restores),
                    };
                    if owned.layout_hash.as_deref() != Some(secret::layout_hash(ar).as_str()) {
                        // Labels, annotations, mount path or profile changed:
                        // rewrite the Secret around the same credentials.
                        apply_secret(ar, ctx, &held, "layout").await?;
                        publish(
                            ctx,
                            ar,
                            EventType::Normal,
                            "SecretUpdated",
                            format!("updated Secret {name} without new credentials"),
                        )
                        .await;
                    }
                    ctx.hold(&uid, held.clone());
                    remove_stale_secrets(ar, ctx, &namespace, &uid, &name).await;
                    return succeed(ar, ctx, &held, refresh, now, None).await;
                }
            }
        }
        Observed::Owned(_) | Observed::Missing => {
            if let Some(mut held) = ctx.held(&uid).filter(|h| h.spec_hash == hash) {
                let refresh = refresh_for(&uid, held.issued, held.creds.expiration, setting);
                if now < refresh.at {
                    // Only a Secret that already held this set and lost it
                    // to another writer counts as a restore; a first write
                    // that failed, or a new Secret name, does not.
                    let kind = if held.secret_name != name {
                        held.secret_name = name.clone();
                        held.restores = 0;
                        "layout"
                    } else if !held.written {
                        "refresh"
                    } else {
                        "restore"
                    };
                    if kind == "restore" && held.restores >= MAX_RESTORES {
                        let failure = Failure {
                            reason: "SecretContested",
                            message: format!(
                                "Secret {name} was changed by another writer {} times; the operator stopped restoring it \
                                 and will write new credentials at the next refresh",
                                held.restores
                            ),
                            retry: false,
                        };
                        fail(ar, ctx, failure, now, false).await?;
                        return Ok(requeue_at(refresh.at, now));
                    }
                    apply_secret(ar, ctx, &held, kind).await?;
                    if kind == "restore" {
                        held.restores += 1;
                    }
                    held.written = true;
                    ctx.hold(&uid, held.clone());
                    remove_stale_secrets(ar, ctx, &namespace, &uid, &name).await;
                    let (reason, note, refreshed) = match kind {
                        "restore" => {
                            info!(secret = %name, restores = held.restores, "restored the Secret from held credentials");
                            (
                                "SecretRestored",
                                format!("restored Secret {name} without calling STS"),
                                None,
                            )
                        }
                        "layout" => (
                            "SecretUpdated",
                            format!("wrote the current credentials to Secret {name} without calling STS"),
                            None,
                        ),
                        _ => (
                            "CredentialsRefreshed",
                            format!("wrote new credentials to Secret {name}"),
                            Some(held.issued),
                        ),
                    };
                    publish(ctx, ar, EventType::Normal, reason, note).await;
                    return succeed(ar, ctx, &held, refresh, now, refreshed).await;
                }
            }
        }
    }

    mint(ar, ctx, &uid, request, hash, setting, now).await
}

/// Whether the last failure recorded in `status` was a Secret conflict.
fn lost_a_conflict(status: &AssumedRoleStatus) -> bool {
    status
        .conditions
        .iter()
        .any(|c| c.type_ == READY && c.reason == "SecretConflict")
}

/// The refresh time of credentials issued to the AssumedRole `uid`, with the
/// jitter seeded from the UID and the issue time.
fn refresh_for(uid: &str, issued: Timestamp, expires: Timestamp, setting: RefreshBefore) -> Refresh {
    schedule::refresh_time(issued, expires, setting, schedule::jitter_seed(uid, issued))
}

/// Assumes the role, writes the Secret in one apply, then status and one Event.
async fn mint(
    ar: &AssumedRole,
    ctx: &Context,
    uid: &str,
    request: AssumeRoleRequest,
    hash: String,
    setting: RefreshBefore,
    now: Timestamp,
) -> Result<Action> {
    debug!(role = %request.role_arn, session = %request.role_session_name, "assuming role");
    let outcome = ctx.sts.assume_role(&request).await;
    ctx.metrics
        .sts_call(outcome.as_ref().map_or_else(StsError::reason, |_| "success"));
    let AssumedSession {
        credentials,
        assumed_role_arn,
        source_identity,
    } = match outcome {
        Ok(session) => session,
        Err(e) => {
            warn!(reason = e.reason(), error = %e, "AssumeRole failed; the Secret is left as it is");
            return fail(ar, ctx, e.into(), now, true).await;
        }
    };
    let issued = schedule::whole_second(now);
    let mut held = Held {
        creds: credentials,
        issued,
        spec_hash: hash,
        assumed_role_arn,
        source_identity,
        secret_name: ar.secret_name(),
        written: false,
        restores: 0,
    };
    // Held before the write: if the write fails, the retry writes this set
    // rather than calling STS again.
    ctx.hold(uid, held.clone());
    apply_secret(ar, ctx, &held, "refresh").await?;
    held.written = true;
    ctx.hold(uid, held.clone());
    if let Some(namespace) = ar.namespace() {
        remove_stale_secrets(ar, ctx, &namespace, uid, &held.secret_name).await;
    }
    let refresh = refresh_for(uid, issued, held.creds.expiration, setting);
    info!(
        secret = %ar.secret_name(),
        expires = %held.creds.expiration,
        refresh = %refresh.at,
        "wrote new credentials"
    );
    publish(
        ctx,
        ar,
        EventType::Normal,
        "CredentialsRefreshed",
        format!("wrote new credentials to Secret {}", ar.secret_name()),
    )
    .await;
    succeed(ar, ctx, &held, refresh, now, Some(issued)).await
}

async fn apply_secret(ar: &AssumedRole, ctx: &Context, held: &Held, kind: &'static str) -> Result<()> {
    let name = ar.secret_name();
    let owner = ar.controller_owner_ref(&()).ok_or(Error::MissingMetadata("uid"))?;
    let namespace = ar.namespace().ok_or(Error::MissingMetadata("namespace"))?;
    let desired = secret::render_secret(ar, owner, &held.creds, held.issued, &held.spec_hash, &ctx.hmac_key);
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&desired),
    )
    .await
    .map_err(|source| Error::ApplySecret { name, source })?;
    ctx.metrics.secret_write(kind);
    Ok(())
}

/// Deletes the Secrets this AssumedRole controls under other names than
/// `current`, once `current` holds its credentials: what a rename of
/// `spec.secret.name` left behind would otherwise keep credentials that are
/// never refreshed. A failure is logged and retried at the next write.
async fn remove_stale_secrets(ar: &AssumedRole, ctx: &Context, namespace: &str, uid: &str, current: &str) {
    let stale = ctx.stale_secrets(namespace, uid, current);
    if stale.is_empty() {
        return;
    }
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    for (name, secret_uid) in stale {
        // Only the object that was seen: never one created since under the
        // same name.
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: secret_uid,
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(&name, &params).await {
            Ok(_) => {
                info!(secret = %name, current = %current, "deleted a Secret left behind by a rename");
                publish(
                    ctx,
                    ar,
                    EventType::Normal,
                    "SecretRemoved",
                    format!("deleted Secret {name}: the credentials now live in Secret {current}"),
                )
                .await;
            }
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(e) => warn!(secret = %name, error = %crate::api_message(&e), "could not delete a stale Secret"),
        }
    }
}

/// Writes a Ready status for `held` and requeues at the refresh time.
async fn succeed(
    ar: &AssumedRole,
    ctx: &Context,
    held: &Held,
    refresh: Refresh,
    now: Timestamp,
    refreshed_at: Option<Timestamp>,
) -> Result<Action> {
    let old = ar.status.clone().unwrap_or_default();
    let message = format!(
        "Secret {} holds credentials valid until {}; next refresh at {}",
        ar.secret_name(),
        held.creds.expiration,
        refresh.at
    );
    let mut conditions = vec![condition(&old, ar, READY, "True", "CredentialsReady", &message, now)];
    if let Some(adjustment) = refresh.adjustment {
        let (reason, text) = match adjustment {
            Adjustment::ClampedToFloor => (
                "ClampedToFloor",
                "the refresh setting would refresh later than 5 minutes before expiry; refreshing 5 minutes before",
            ),
            Adjustment::FellBackToDefault => (
                "FellBackToDefault",
                "the refresh setting is longer than the lifetime STS granted; refreshing when a third of it remains",
            ),
        };
        conditions.push(condition(&old, ar, REFRESH_ADJUSTED, "True", reason, text, now));
    }
    let status = AssumedRoleStatus {
        conditions,
        expiration_time: Some(Time(held.creds.expiration)),
        refresh_time: Some(Time(refresh.at)),
        last_refresh_time: refreshed_at.map(Time).or(old.last_refresh_time.clone()),
        last_failure_time: old.last_failure_time.clone(),
        consecutive_failures: 0,
        assumed_role_arn: held.assumed_role_arn.clone(),
        source_identity: held.source_identity.clone(),
        observed_generation: ar.metadata.generation,
    };
    patch_status(ar, ctx, status).await?;
    Ok(requeue_at(refresh.at, now))
}

/// Records a failure: `Ready=False`, a Warning Event, the failure count, and
/// a retry after the backoff. The Secret is never touched here.
async fn fail(ar: &AssumedRole, ctx: &Context, failure: Failure, now: Timestamp, count: bool) -> Result<Action> {
    let old = ar.status.clone().unwrap_or_default();
    let same = old.observed_generation == ar.metadata.generation
        && old
            .conditions
            .iter()
            .any(|c| c.type_ == READY && c.reason == failure.reason && c.message == failure.message);
    if same && !failure.retry {
        // Nothing new to say, and nothing to retry.
        return Ok(Action::await_change());
    }
    let failures = if count {
        old.consecutive_failures.saturating_add(1)
    } else {
        old.consecutive_failures
    };
    let mut status = old.clone();
    status.conditions = vec![condition(
        &old,
        ar,
        READY,
        "False",
        failure.reason,
        &failure.message,
        now,
    )];
    status.observed_generation = ar.metadata.generation;
    let failed_at = schedule::whole_second(now);
    if count {
        status.consecutive_failures = failures;
        status.last_failure_time = Some(Time(failed_at));
    }
    // The credentials in the Secret may still be good: keep expiration in
    // status, but there is no planned refresh while failing.
    status.refresh_time = None;
    publish(ctx, ar, EventType::Warning, failure.reason, failure.message.clone()).await;
    patch_status(ar, ctx, status).await?;
    if !failure.retry {
        return Ok(Action::await_change());
    }
    let expires = old.expiration_time.map(|t| t.0);
    let retry = schedule::retry_at(&ar.uid().unwrap_or_default(), failures, failed_at, expires);
    info!(reason = failure.reason, failures, retry_at = %retry, "attempt failed");
    Ok(requeue_at(retry, now))
}

fn condition(
    old: &AssumedRoleStatus,
    ar: &AssumedRole,
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: Timestamp,
) -> Condition {
    // Keep the transition time while the status stays the same.
    let last_transition_time = old
        .conditions
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or(Time(now), |c| c.last_transition_time.clone());
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: ar.metadata.generation,
        last_transition_time,
    }
}

async fn patch_status(ar: &AssumedRole, ctx: &Context, status: AssumedRoleStatus) -> Result<()> {
    if ar.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let api: Api<AssumedRole> = Api::namespaced(ctx.client.clone(), &ar.namespace().unwrap_or_default());
    let patch = json!({
        "apiVersion": AssumedRole::api_version(&()),
        "kind": AssumedRole::kind(&()),
        "status": status,
    });
    api.patch_status(
        &ar.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(Error::PatchStatus)?;
    Ok(())
}

async fn publish(ctx: &Context, ar: &AssumedRole, type_: EventType, reason: &str, note: String) {
    if let Err(e) = ctx.events.publish(ar, type_, reason, &note).await {
        warn!(error = %crate::api_message(&e), "could not publish an Event");
    }
}

/// Folds repeats of an Event into a series for this long, as kube-runtime's
/// recorder does.
const EVENT_SERIES_TTL: SignedDuration = SignedDuration::from_mins(6);

/// Publishes `events.k8s.io/v1` Events about AssumedRoles. Like
/// kube-runtime's `Recorder`, it folds a repeat into the first Event's
/// series; unlike it, it fits the Event's name and note to the API server's
/// limits whatever the object's name and the message (see
/// [`crate::events`]).
pub struct EventPublisher {
    client: Client,
    instance: String,
    series: tokio::sync::Mutex<HashMap<EventKey, K8sEvent>>,
}

/// What makes two Events the same one, repeated: the object (by UID), the
/// reason, the type and the note.
type EventKey = (String, String, &'static str, String);

impl EventPublisher {
    /// A publisher that reports as `instance` (the pod's name), or as the
    /// controller when there is none.
    pub fn new(client: Client, instance: Option<String>) -> Self {
        Self {
            client,
            instance: instance.unwrap_or_else(|| FIELD_MANAGER.into()),
            series: tokio::sync::Mutex::default(),
        }
    }

    /// Publishes one Event regarding `ar`, or counts a repeat of the last one
    /// with the same type and reason.
    pub async fn publish(
        &self,
        ar: &AssumedRole,
        type_: EventType,
        reason: &str,
        note: &str,
    ) -> Result<(), kube::Error> {
        let namespace = ar.namespace().unwrap_or_else(|| "default".into());
        let name = ar.name_any();
        let type_name = match type_ {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        };
        let now = Timestamp::now();
        let key = (
            ar.uid().unwrap_or_default(),
            reason.to_string(),
            type_name,
            events::fit_note(note),
        );
        let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), &namespace);
        // The lock is never held across a call to the API server.
        let repeat = {
            let mut series = self.series.lock().await;
            series.retain(|_, e| {
                let last = e
                    .series
                    .as_ref()
                    .map(|s| s.last_observed_time.0)
                    .or(e.event_time.as_ref().map(|t| t.0));
                last.is_some_and(|t| t + EVENT_SERIES_TTL > now)
            });
            series.get_mut(&key).map(|previous| {
                let count = previous.series.as_ref().map_or(2, |s| s.count + 1);
                previous.series = Some(EventSeries {
                    count,
                    last_observed_time: MicroTime(now),
                });
                (previous.name_any(), json!({"series": previous.series}))
            })
        };
        if let Some((event_name, patch)) = repeat {
            api.patch(&event_name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            return Ok(());
        }
        let event = K8sEvent {
            metadata: ObjectMeta {
                name: Some(events::event_name(&name, now)),
                namespace: Some(namespace),
                ..ObjectMeta::default()
            },
            action: Some("Reconcile".into()),
            reason: Some(reason.into()),
            note: Some(key.3.clone()),
            type_: Some(type_name.into()),
            event_time: Some(MicroTime(now)),
            regarding: Some(ar.object_ref(&())),
            reporting_controller: Some(FIELD_MANAGER.into()),
            reporting_instance: Some(self.instance.clone()),
            ..K8sEvent::default()
        };
        let created = api.create(&PostParams::default(), &event).await?;
        self.series.lock().await.insert(key, created);
        Ok(())
    }
}

fn requeue_at(at: Timestamp, now: Timestamp) -> Action {
    let wait = at.duration_since(now).max(SignedDuration::from_secs(1));
    Action::requeue(Duration::try_from(wait).unwrap_or(Duration::from_secs(1)))
}

/// Decides what to do after `reconcile` returned an error: log it, say so on
/// the object, and retry with backoff.
pub fn error_policy(ar: Arc<AssumedRole>, error: &Error, ctx: Arc<Context>) -> Action {
    warn!(name = %ar.name_any(), namespace = ?ar.namespace(), category = error.category(), error = %error, "reconcile failed");
    // Say so where users look: a Warning Event and the Ready condition. A
    // Forbidden error names the verb and resource that RBAC refused.
    let failure = Failure {
        reason: error.category(),
        message: error.to_string(),
        retry: true,
    };
    let now = Timestamp::now();
    let status = ar.status.clone().unwrap_or_default();
    // The same count and time that `fail` persists, so the requeue and the
    // backoff check agree.
    let failures = status.consecutive_failures.saturating_add(1);
    let expires = status.expiration_time.map(|t| t.0);
    let retry = schedule::retry_at(
        &ar.uid().unwrap_or_default(),
        failures,
        schedule::whole_second(now),
        expires,
    );
    tokio::spawn(async move {
        if let Err(e) = fail(&ar, &ctx, failure, now, true).await {
            warn!(error = %e, "could not report the failure in status");
        }
    });
    requeue_at(retry, now)
}

/// Settings of the controller loop.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Namespaces to watch; all when empty.
    pub namespaces: Vec<String>,
    /// How many AssumedRoles are reconciled at once.
    pub concurrency: u16,
}

/// Runs the controller until `shutdown` is cancelled. `ready` turns true once
/// the watches have synced, and false when the controller stops.
pub async fn run(
    ctx: Arc<Context>,
    settings: Settings,
    ready: Arc<std::sync::atomic::AtomicBool>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let scopes: Vec<Option<String>> = if settings.namespaces.is_empty() {
        vec![None]
    } else {
        settings.namespaces.iter().cloned().map(Some).collect()
    };
    let mut stores = Vec::new();
    let mut ready_stores = Vec::new();
    let mut secret_ready = Vec::new();
    let mut loops: Vec<BoxFuture<'static, ()>> = scopes
        .into_iter()
        .map(|ns| {
            let (roles, secrets): (Api<AssumedRole>, Api<PartialObjectMeta<Secret>>) = match &ns {
                Some(ns) => (
                    Api::namespaced(ctx.client.clone(), ns),
                    Api::namespaced(ctx.client.clone(), ns),
                ),
                None => (Api::all(ctx.client.clone()), Api::all(ctx.client.clone())),
            };
            let (reader, writer) = reflector::store();
            stores.push(reader.clone());
            ready_stores.push(reader.clone());
            // Status writes change no generation: filtering on it keeps the
            // operator's own status patches from waking it up again.
            let roles = watcher(roles, watcher::Config::default().any_semantic())
                .default_backoff()
                .reflect(writer)
                .applied_objects()
                .predicate_filter(predicates::generation, Default::default());
            // Owned Secrets are watched and cached as metadata only, so their
            // payloads never enter the cache.
            let (secret_reader, secret_writer) = reflector::store();
            secret_ready.push(secret_reader.clone());
            if let Ok(mut owned) = ctx.owned_secrets.lock() {
                owned.push(secret_reader);
            }
            let owned = watcher(
                secrets,
                watcher::Config::default().labels(secret::SELECTOR).any_semantic(),
            )
            .default_backoff()
            .reflect(secret_writer)
            .touched_objects()
            .predicate_filter(predicates::resource_version, Default::default());
            let ctx = ctx.clone();
            let token = shutdown.clone();
            let wanting = reader.clone();
            Controller::for_stream(roles, reader)
                // A change to a Secret, or its deletion, wakes its owner and
                // every AssumedRole that names it: one that lost a conflict
                // takes the name over as soon as it is free.
                .watches_stream(owned, move |secret| interested(&wanting, &secret))
                .with_config(kube::runtime::controller::Config::default().concurrency(settings.concurrency))
                .graceful_shutdown_on(async move { token.cancelled_owned().await })
                .run(reconcile, error_policy, ctx)
                .for_each(|result| async move {
                    match result {
                        Ok((obj, _)) => {
                            debug!(name = %obj.name, namespace = ?obj.namespace, "reconciled")
                        }
                        Err(kube::runtime::controller::Error::QueueError(e)) => {
                            warn!(error = %e, "watch failed; retrying")
                        }
                        Err(e) => debug!(error = %e, "reconcile loop error"),
                    }
                })
                .boxed()
        })
        .collect();
    loops.push(prune_held(ctx.clone(), stores, shutdown.clone()).boxed());
    // Ready once every cache holds a first full list.
    let synced_flag = ready.clone();
    let synced_shutdown = shutdown.clone();
    loops.push(
        async move {
            let synced = async {
                for store in &ready_stores {
                    let _ = store.wait_until_ready().await;
                }
                for store in &secret_ready {
                    let _ = store.wait_until_ready().await;
                }
            };
            tokio::select! {
                () = synced => {
                    info!("watches synced");
                    synced_flag.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                () = synced_shutdown.cancelled() => {}
            }
        }
        .boxed(),
    );
    let loops = futures::future::join_all(loops);
    // On shutdown the controller stops taking work and lets the reconciles
    // in flight finish, for at most SHUTDOWN_GRACE. Before the caches have
    // synced nothing is in flight, and kube-runtime would wait for a sync
    // that no longer comes: stop at once.
    let stopped = async {
        shutdown.cancelled().await;
        if ready.load(std::sync::atomic::Ordering::Relaxed) {
            tokio::time::sleep(SHUTDOWN_GRACE).await;
            warn!(grace = ?SHUTDOWN_GRACE, "reconciles still running after the grace period; stopping anyway");
        }
    };
    tokio::select! {
        _ = loops => {}
        () = stopped => {}
    }
    ready.store(false, std::sync::atomic::Ordering::Relaxed);
}

/// How long the reconciles in flight may take to finish after a shutdown
/// begins: less than the chart's `terminationGracePeriodSeconds` (30 s).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(15);

/// The AssumedRoles that a change to `secret` concerns: its controller, and
/// every AssumedRole in its namespace that wants a Secret of its name.
fn interested(
    roles: &reflector::Store<AssumedRole>,
    secret: &PartialObjectMeta<Secret>,
) -> Vec<ObjectRef<AssumedRole>> {
    let name = secret.name_any();
    let namespace = secret.namespace();
    let owner = secret
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true) && o.kind == "AssumedRole")
        .map(|o| o.uid.clone());
    roles
        .state()
        .iter()
        .filter(|ar| ar.namespace() == namespace)
        .filter(|ar| ar.secret_name() == name || (owner.is_some() && ar.uid() == owner))
        .map(|ar| ObjectRef::from_obj(ar.as_ref()))
        .collect()
}

/// How often a missing CRD is looked for again.
const CRD_RECHECK: Duration = Duration::from_secs(5);

/// Checks that the AssumedRole CRD is installed and readable in every scope,
/// and while it is not, says so at error level and checks again every few
/// seconds. Returns false when `shutdown` came first.
pub async fn wait_for_crd(
    client: &Client,
    namespaces: &[String],
    shutdown: &tokio_util::sync::CancellationToken,
) -> bool {
    let apis: Vec<Api<AssumedRole>> = if namespaces.is_empty() {
        vec![Api::all(client.clone())]
    } else {
        namespaces
            .iter()
            .map(|ns| Api::namespaced(client.clone(), ns))
            .collect()
    };
    let crd = format!("{}.{}", AssumedRole::plural(&()), AssumedRole::group(&()));
    let mut said = None;
    loop {
        let mut problem = None;
        for api in &apis {
            match api.list_metadata(&kube::api::ListParams::default().limit(1)).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {
                    problem = Some(format!(
                        "the CustomResourceDefinition {crd} is not installed; install it with `kubectl apply -f crds/` \
                         (or the chart's crds/), and the operator starts serving at once"
                    ));
                    break;
                }
                Err(e) => {
                    problem = Some(format!("cannot list AssumedRoles: {}", crate::api_message(&e)));
                    break;
                }
            }
        }
        let Some(problem) = problem else {
            if said.is_some() {
                info!(crd = %crd, "the CustomResourceDefinition is installed");
            }
            return true;
        };
        if said.as_ref() != Some(&problem) {
            tracing::error!("{problem}");
            said = Some(problem);
        }
        tokio::select! {
            () = shutdown.cancelled() => return false,
            () = tokio::time::sleep(CRD_RECHECK) => {}
        }
    }
}

/// How often credentials held for deleted AssumedRoles are dropped.
const PRUNE_INTERVAL: Duration = Duration::from_secs(300);

/// Drops held credentials of AssumedRoles that are gone, so memory follows
/// the number of live objects. Deletions reach no reconcile: ownerReferences
/// and the garbage collector clean up the Secret, and this cleans up memory.
async fn prune_held(
    ctx: Arc<Context>,
    stores: Vec<reflector::Store<AssumedRole>>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(PRUNE_INTERVAL);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let live: std::collections::HashSet<String> = stores
            .iter()
            .flat_map(|s| s.state())
            .filter_map(|ar| ar.uid())
            .collect();
        if let Ok(mut held) = ctx.held.lock() {
            let before = held.len();
            held.retain(|uid, _| live.contains(uid));
            if held.len() < before {
                debug!(
                    dropped = before - held.len(),
                    "dropped credentials of deleted AssumedRoles"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration as StdDuration;

    use http::StatusCode;
    use jiff::SignedDuration;

    use super::*;
    use crate::fixtures::{self, FakeSts};

    /// Runs `reconcile` beside the mocked API server's `scenario`, and fails
    /// if the scenario is not done within a second.
    async fn run<S>(
        ar: AssumedRole,
        sts: Arc<FakeSts>,
        scenario: impl FnOnce(fixtures::ApiServer) -> S,
    ) -> Result<Action>
    where
        S: std::future::Future<Output = fixtures::ApiServer> + Send + 'static,
    {
        let (ctx, server) = fixtures::context(sts);
        let scenario = tokio::spawn(scenario(server));
        let result = reconcile(Arc::new(ar), ctx).await;
        let server = tokio::time::timeout(StdDuration::from_secs(1), scenario)
            .await
            .expect("the scenario did not finish: a call is missing")
            .expect("the scenario panicked");
        server.expect_no_more().await;
        result
    }

    #[tokio::test]
    async fn a_valid_secret_costs_no_sts_call_and_waits_for_the_refresh_time() {
        let ar = AssumedRole::test();
        let secret = fixtures::owned_secret(&ar, SignedDuration::from_mins(1), SignedDuration::from_hours(1));
        let sts = FakeSts::granting();
        let action = run(ar, sts.clone(), |mut api| async move {
            api.get_secret(Some(&secret)).await;
            let status = api.patch_status().await;
            assert_eq!(status["conditions"][0]["status"], "True");
            assert_eq!(status["conditions"][0]["reason"], "CredentialsReady");
            api
        })
        .await
        .expect("reconcile");
        assert_eq!(sts.calls(), 0);
        // Refresh when a third of the hour remains: 39 minutes from now, less
        // at most 6 minutes of jitter.
        let debug = format!("{action:?}");
        let wait = action_seconds(&debug);
        assert!((33.0 * 60.0..=39.0 * 60.0).contains(&wait), "{debug}");
    }

    /// The requeue delay of an Action, in seconds, from its Debug form.
    fn action_seconds(debug: &str) -> f64 {
        let number: String = debug
            .split("Some(")
            .nth(1)
            .unwrap_or_default()
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        number.parse().unwrap_or_default()
    }

    #[tokio::test]
    async fn a_missing_secret_is_minted_applied_then_reported() {
        let sts = FakeSts::granting();
        run(AssumedRole::test(), sts.clone(), |mut api| async move {
            api.get_secret(None).await;
            let applied = api.apply_secret(StatusCode::OK).await;
            assert_eq!(applied["metadata"]["ownerReferences"][0]["controller"], true);
            assert!(applied["data"]["credential_process.json"].is_string());
            let event = api.create_event().await;
            assert_eq!(event["reason"], "CredentialsRefreshed");
            let status = api.patch_status().await;
            assert_eq!(
                status["assumedRoleArn"],
                "arn:aws:sts::123456789012:assumed-role/reader/billing.reader"
            );
            api
        })
        .await
        .expect("reconcile");
        assert_eq!(sts.calls(), 1);
    }

    #[tokio::test]
    async fn an_sts_failure_never_touches_the_secret() {
        let ar = AssumedRole::test();
        // Issued 50 minutes ago for an hour: due.
        let secret = fixtures::owned_secret(&ar, SignedDuration::from_mins(50), SignedDuration::from_hours(1));
        let sts = FakeSts::failing(StsError::Throttled("Rate exceeded".into()));
        run(ar, sts.clone(), |mut api| async move {
            api.get_secret(Some(&secret)).await;
            let event = api.create_event().await;
            assert_eq!(
                (event["type"].as_str(), event["reason"].as_str()),
                (Some("Warning"), Some("Throttled"))
            );
            let status = api.patch_status().await;
            assert_eq!(status["conditions"][0]["reason"], "Throttled");
            assert_eq!(status["consecutiveFailures"], 1);
            assert!(status["lastFailureTime"].is_string());
            api
        })
        .await
        .expect("reconcile");
        assert_eq!(sts.calls(), 1);
    }

    #[tokio::test]
    async fn a_failure_requeues_exactly_when_its_persisted_backoff_ends() {
        let sts = FakeSts::failing(StsError::Unavailable("connection reset".into()));
        let (written_tx, written_rx) = std::sync::mpsc::channel();
        // Five failures, the last an hour ago: due for a try, and the sixth
        // failure backs off up to 160 s, so two unrelated jitters would
        // hardly ever land within a second of each other.
        let failing = AssumedRoleStatus {
            consecutive_failures: 5,
            last_failure_time: Some(Time(Timestamp::now() - SignedDuration::from_hours(1))),
            observed_generation: Some(1),
            ..AssumedRoleStatus::default()
        };
        let first = run(
            AssumedRole::test().with_status(failing),
            sts.clone(),
            |mut api| async move {
                api.get_secret(None).await;
                api.create_event().await;
                let _ = written_tx.send(api.patch_status().await);
                api
            },
        )
        .await
        .expect("reconcile");
        let status: AssumedRoleStatus = serde_json::from_value(written_rx.recv().expect("status")).expect("status");
        assert!(status.last_failure_time.is_some());
        assert_eq!(status.consecutive_failures, 6);

        // Woken at once (by a Secret event, say): the gate holds it back to
        // the same instant, without a call.
        let second = run(AssumedRole::test().with_status(status), sts.clone(), |api| async move {
            api
        })
        .await
        .expect("reconcile");
        assert_eq!(sts.calls(), 1);
        let (a, b) = (
            action_seconds(&format!("{first:?}")),
            action_seconds(&format!("{second:?}")),
        );
        assert!(
            (a - b).abs() < 0.25,
            "the requeue ({a} s) and the backoff check ({b} s) disagree"
        );
    }

    #[tokio::test]
    async fn a_failed_secret_write_is_an_error_with_a_category() {
        let sts = FakeSts::granting();
        let result = run(AssumedRole::test(), sts, |mut api| async move {
            api.get_secret(None).await;
            api.apply_secret(StatusCode::INTERNAL_SERVER_ERROR).await;
            api
        })
        .await;
        let err = result.expect_err("a failed write");
        assert_eq!(err.category(), "ApplySecret");
        assert!(err.to_string().contains("etcd is unhappy"), "{err}");
    }

    fn failing_status(generation: i64) -> AssumedRoleStatus {
        AssumedRoleStatus {
            consecutive_failures: 3,
            last_failure_time: Some(Time(Timestamp::now())),
            observed_generation: Some(generation),
            ..AssumedRoleStatus::default()
        }
    }

    #[tokio::test]
    async fn a_backoff_in_status_defers_the_retry_without_any_call() {
        let sts = FakeSts::granting();
        let ar = AssumedRole::test().with_status(failing_status(1));
        let action = run(ar, sts.clone(), |api| async move { api }).await.expect("reconcile");
        assert_eq!(sts.calls(), 0);
        // The third retry waits at most 20 s (5 s doubled twice).
        let debug = format!("{action:?}");
        assert!(debug.contains("Some(") && action_seconds(&debug) <= 20.0, "{debug}");
    }

    #[tokio::test]
    async fn a_spec_change_skips_the_backoff() {
        let sts = FakeSts::granting();
        let ar = AssumedRole::test().with_generation(2).with_status(failing_status(1));
        run(ar, sts.clone(), |mut api| async move {
            api.get_secret(None).await;
            api.apply_secret(StatusCode::OK).await;
            api.create_event().await;
            let status = api.patch_status().await;
            assert!(status["consecutiveFailures"].is_null(), "a success resets the count");
            assert_eq!(status["observedGeneration"], 2);
            api
        })
        .await
        .expect("reconcile");
        assert_eq!(sts.calls(), 1);
    }
}
