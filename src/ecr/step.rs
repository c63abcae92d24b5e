//! Carries out the image pull Secret's decision for one AssumedRole, after
//! its reconcile: reads the Secret, asks ECR with the AssumedRole's current
//! credentials when a token is due (through the STS budget), writes the
//! Secret in one apply, and reports in `status.imagePullSecret`. A failure
//! never touches the Secret.

use std::time::Instant;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::{api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::Time};
use kube::{
    Api, Resource as _, ResourceExt as _,
    api::{Patch, PatchParams},
    runtime::events::EventType,
};
use serde_json::json;
use tracing::{info, warn};

use super::{Decision, Token};
use crate::{
    api::{AssumedRole, ImagePullSecretStatus},
    controller::Context,
    credentials::Credentials,
    schedule, secret,
};

/// The field manager of `status.imagePullSecret`: the reconcile's own
/// status apply leaves it alone.
pub const STATUS_MANAGER: &str = "assumed-role-operator-ecr";

/// Seconds to wait for credentials that are not written yet.
const NO_CREDENTIALS_WAIT: SignedDuration = SignedDuration::from_secs(30);

/// Brings `ar`'s image pull Secret in line; when to look again (`None`:
/// only on a change).
pub async fn run(ar: &AssumedRole, ctx: &Context, now: Timestamp) -> Option<Timestamp> {
    let Some(spec) = ar.spec.image_pull_secret.as_deref() else {
        clear_status(ar, ctx).await;
        return None;
    };
    let namespace = ar.namespace().unwrap_or_default();
    let uid = ar.uid().unwrap_or_default();
    if spec.name == ar.secret_name() {
        report(
            ar,
            ctx,
            now,
            Err((
                "InvalidSpec",
                format!(
                    "spec.imagePullSecret.name is {}, the credentials Secret's name: give it a name of its own",
                    spec.name
                ),
            )),
        )
        .await;
        return None;
    }
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let found = match secrets.get_opt(&spec.name).await {
        Ok(found) => found,
        Err(e) => {
            let message = format!("reading Secret {}: {}", spec.name, crate::api_message(&e));
            return report(ar, ctx, now, Err(("GetSecret", message))).await;
        }
    };
    let observed = super::observe(found.as_ref(), &uid);
    let urgent = match super::decide(ar, spec, &observed, now) {
        Decision::Wait(at) => {
            if let super::Observed::Owned { issued, expires, .. } = &observed {
                report(ar, ctx, now, Ok((*issued, *expires, at))).await;
            }
            return Some(at);
        }
        Decision::Conflict(message) => {
            report(ar, ctx, now, Err(("SecretConflict", message))).await;
            return None;
        }
        Decision::Write { urgent } => urgent,
    };
    let Some(credentials) = credentials(ar, ctx, now).await else {
        return Some(now + NO_CREDENTIALS_WAIT);
    };
    let ecr = ctx.ecr.clone()?;
    // ECR calls share the STS budget: a rate, urgent first.
    let taken = ctx
        .budget
        .lock()
        .map(|mut b| b.take(urgent, Instant::now()))
        .unwrap_or(Ok(()));
    if let Err(wait) = taken {
        return Some(now + crate::budget::signed(wait));
    }
    let mut tokens: Vec<Token> = Vec::new();
    for (region, registries) in super::by_region(spec) {
        let started = Instant::now();
        let answer = ecr.tokens(&credentials, &region, &registries).await;
        let result = answer.as_ref().map_or_else(reason_of, |_| "success");
        ctx.metrics.ecr_call(result, started.elapsed());
        match answer {
            Ok(given) => tokens.extend(given),
            Err(e) => {
                let message = format!("ECR GetAuthorizationToken in {region}: {e}; the Secret is left as it is");
                return report(ar, ctx, now, Err((result, message))).await;
            }
        }
    }
    let issued = schedule::whole_second(now);
    let desired = super::render(ar, spec, &tokens, issued);
    let params = PatchParams::apply(crate::controller::FIELD_MANAGER).force();
    if let Err(e) = secrets.patch(&spec.name, &params, &Patch::Apply(&desired)).await {
        let message = format!("applying Secret {}: {}", spec.name, crate::api_message(&e));
        return report(ar, ctx, now, Err(("ApplySecret", message))).await;
    }
    let expires = super::expiry(&tokens, issued);
    info!(
        name = %ar.name_any(),
        namespace = %namespace,
        secret = %spec.name,
        registries = spec.registries.len(),
        expires = %expires,
        "wrote the image pull Secret"
    );
    let refresh = super::refresh_at(&uid, issued, expires);
    report(ar, ctx, now, Ok((Some(issued), Some(expires), refresh))).await;
    Some(refresh)
}

/// The reason an ECR failure is reported under (the status, the Event, the
/// metric's result).
fn reason_of(error: &crate::sts::StsError) -> &'static str {
    match error.reason() {
        "AccessDenied" => "ECRAccessDenied",
        "Throttled" => "ECRThrottled",
        "InvalidSpec" => "ECRRejected",
        _ => "ECRUnavailable",
    }
}

/// The AssumedRole's current credentials: those this process holds for its
/// Secret, or those its Secret holds (when intact and unexpired).
async fn credentials(ar: &AssumedRole, ctx: &Context, now: Timestamp) -> Option<Credentials> {
    let uid = ar.uid().unwrap_or_default();
    let name = ar.secret_name();
    let good = |c: &Credentials| c.expiration.duration_since(now) > SignedDuration::from_secs(60);
    if let Some(held) = ctx.memory.held(&uid)
        && held.written
        && held.secret_name == name
        && good(&held.creds)
    {
        return Some(held.creds);
    }
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ar.namespace().unwrap_or_default());
    let found = api.get_opt(&name).await.ok()??;
    if secret::controller_uid(&found) != Some(uid.as_str()) {
        return None;
    }
    match secret::observe_owned(&found, &ctx.hmac_key) {
        secret::Observed::Owned(o) if o.intact => secret::credentials_from(&found).filter(good),
        _ => None,
    }
}

/// What the Secret holds, when it is right: when its tokens were given and
/// expire, and when the next are due.
type Served = (Option<Timestamp>, Option<Timestamp>, Timestamp);

/// Writes `status.imagePullSecret`: Ready with the token's times, or not
/// with a reason (a Warning Event when that is new). On failure, when to
/// try again: a backoff that leaves three tries before the token expires.
async fn report(
    ar: &AssumedRole,
    ctx: &Context,
    now: Timestamp,
    outcome: Result<Served, (&'static str, String)>,
) -> Option<Timestamp> {
    let old = ar.status.as_ref().and_then(|s| s.image_pull_secret.as_deref()).cloned();
    let (status, next) = match outcome {
        Ok((issued, expires, refresh)) => (
            ImagePullSecretStatus {
                ready: "True".into(),
                reason: "TokenReady".into(),
                message: "the image pull Secret holds unexpired ECR tokens".into(),
                expiration_time: expires.map(Time),
                refresh_time: Some(Time(refresh)),
                last_refresh_time: issued.map(Time),
                consecutive_failures: 0,
                last_failure_time: old.as_ref().and_then(|o| o.last_failure_time.clone()),
            },
            None,
        ),
        Err((reason, message)) => {
            let failures = old.as_ref().map_or(0, |o| o.consecutive_failures).saturating_add(1);
            let expires = old.as_ref().and_then(|o| o.expiration_time.as_ref().map(|t| t.0));
            let seed = schedule::jitter_seed(&ar.uid().unwrap_or_default(), now);
            let retry = now + schedule::backoff(failures.unsigned_abs(), now, expires, seed);
            let transition = old.as_ref().is_none_or(|o| o.reason != reason);
            if transition {
                warn!(name = %ar.name_any(), namespace = ?ar.namespace(), reason, message = %message, "image pull Secret not refreshed");
                if let Err(e) = ctx.events.publish(ar, EventType::Warning, reason, &message, now).await {
                    warn!(error = %crate::api_message(&e), "could not publish an Event");
                }
            }
            (
                ImagePullSecretStatus {
                    ready: if expires.is_some_and(|e| e > now) {
                        "True"
                    } else {
                        "False"
                    }
                    .into(),
                    reason: reason.into(),
                    message,
                    expiration_time: expires.map(Time),
                    refresh_time: old.as_ref().and_then(|o| o.refresh_time.clone()),
                    last_refresh_time: old.as_ref().and_then(|o| o.last_refresh_time.clone()),
                    consecutive_failures: failures,
                    last_failure_time: Some(Time(now)),
                },
                Some(retry),
            )
        }
    };
    if old.as_ref() != Some(&status) {
        let api: Api<AssumedRole> = Api::namespaced(ctx.client.clone(), &ar.namespace().unwrap_or_default());
        let patch = json!({
            "apiVersion": AssumedRole::api_version(&()),
            "kind": AssumedRole::kind(&()),
            "status": {"imagePullSecret": status},
        });
        if let Err(e) = api
            .patch_status(
                &ar.name_any(),
                &PatchParams::apply(STATUS_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await
        {
            warn!(name = %ar.name_any(), error = %crate::api_message(&e), "could not write status.imagePullSecret");
        }
    }
    next
}

/// Removes `status.imagePullSecret` once the spec no longer asks for one.
async fn clear_status(ar: &AssumedRole, ctx: &Context) {
    if ar.status.as_ref().and_then(|s| s.image_pull_secret.as_ref()).is_none() {
        return;
    }
    let api: Api<AssumedRole> = Api::namespaced(ctx.client.clone(), &ar.namespace().unwrap_or_default());
    let patch = json!({
        "apiVersion": AssumedRole::api_version(&()),
        "kind": AssumedRole::kind(&()),
        "status": {},
    });
    if let Err(e) = api
        .patch_status(
            &ar.name_any(),
            &PatchParams::apply(STATUS_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
    {
        warn!(name = %ar.name_any(), error = %crate::api_message(&e), "could not clear status.imagePullSecret");
    }
}
