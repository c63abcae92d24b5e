//! The executor: carries out the plan that [`plan::decide`] returns, and
//! ends every reconcile in one report (status, memory, an Event on a
//! transition). Every effect of a reconcile is made here.

use std::time::Duration;

use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::api::{
    authentication::v1::{TokenRequest, TokenRequestSpec},
    core::v1::{Secret, ServiceAccount},
};
use kube::{
    Api, Resource,
    api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions},
    runtime::events::EventType,
};
use serde_json::json;
use tracing::{debug, info, warn};

use super::{Context, FIELD_MANAGER, Next};
use crate::{
    Error, Result,
    api::{AssumedRole, AssumedRoleStatus},
    budget,
    outcome::{Failure, Reason, Retry},
    plan::{self, Facts, Held, Plan, Remembered, SecretView, Serving, Target},
    schedule::{self, Refresh},
    secret, source,
    status::{self, Report},
    sts::{AssumedSession, Signer, StsError},
};

/// Decides, carries the plan out, and reports; returns the requeue and the
/// reason the reconcile ended with.
pub(super) async fn execute(ar: &AssumedRole, ctx: &Context, target: &Target, now: Timestamp) -> (Next, Reason) {
    let held = ctx.memory.held(&target.uid);
    let memory = ctx.memory.failures(&target.uid);
    let policies = ctx.grants.policies();
    let labels = ctx.grants.labels(&target.namespace);
    let mut view = None;
    let mut source_key = None;
    let mut stale_holding: Option<Vec<String>> = None;
    // At most three rounds: the second one with the Secret read, the third
    // (a denied AssumedRole only) with the Secrets a rename left behind.
    for _ in 0..3 {
        let facts = Facts {
            ar,
            target,
            held: held.as_ref(),
            memory: memory.as_ref(),
            secret: view.as_ref(),
            api_seen: ctx.api_seen(),
            sts_seen: ctx.sts_seen(),
            session_tags: ctx.session_tags,
            token_audience: &ctx.token_audience,
            source_key: source_key.as_deref(),
            stale_holding: stale_holding.as_deref(),
            enabled_sources: &ctx.enabled_sources,
            policies: &policies,
            namespace_labels: labels.as_ref(),
            now,
        };
        match plan::decide(&facts) {
            Plan::ReadSecret => {
                // Static keys of `spec.source.secretRef` are part of what the
                // credentials were minted from: new keys mean new credentials.
                if ar.spec.source.secret_ref.is_some() {
                    source_key = static_keys(ar, ctx, target).await.ok().and_then(|signer| match signer {
                        Signer::Keys { access_key_id, .. } => {
                            Some(source::key_fingerprint(&ctx.hmac_key, &access_key_id))
                        }
                        _ => None,
                    });
                }
                // The Secret as the owned-Secret watch delivered it, when it
                // agrees with what this process holds: no GET.
                if let Some(seen) = ctx.seen_secret(&target.uid, &target.secret_name).await {
                    view = Some(seen);
                    continue;
                }
                let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &target.namespace);
                let answer = bounded(api.get_opt(&target.secret_name)).await;
                ctx.api_answered(!matches!(&answer, Err(e) if unreachable(e)));
                match answer {
                    Ok(secret) => view = Some(SecretView::of(ar, secret.as_ref(), &ctx.hmac_key)),
                    Err(source) => {
                        let error = Error::GetSecret {
                            name: target.secret_name.clone(),
                            source,
                        };
                        return failed(ar, ctx, target, Failure::from(&error), None, now).await;
                    }
                }
            }
            Plan::FindStale => {
                // From what the owned-Secret watch delivered for this
                // AssumedRole: no call.
                stale_holding = Some(
                    ctx.stale_secrets(&target.uid, &target.secret_name)
                        .into_iter()
                        .filter(|stale| stale.holds_credentials)
                        .map(|stale| stale.name)
                        .collect(),
                );
            }
            Plan::Wait { until } => {
                debug!(name = %target.name, wait = %until.duration_since(now), "waiting out the backoff");
                return (Next::At(until), Reason::BackingOff);
            }
            Plan::Fail { failure, serving } => return failed(ar, ctx, target, failure, serving, now).await,
            Plan::Revoke { failure, secrets } => {
                // The held set goes too: a grant that returns gets new
                // credentials, not the ones handed out before.
                ctx.memory.forget(&target.uid);
                for name in &secrets {
                    warn!(name = %target.name, namespace = %target.namespace, secret = %name, "grant revoked; removing the credentials from the Secret");
                    if let Err(error) = apply_revoked(ar, ctx, target, name).await {
                        return failed(ar, ctx, target, Failure::from(&error), None, now).await;
                    }
                    ctx.metrics.secret_write("revoke");
                }
                return failed(ar, ctx, target, failure, None, now).await;
            }
            Plan::Keep { held, refresh, rewrite } => {
                debug!(name = %target.name, refresh = %refresh.at, "Secret is valid and not due; no STS call");
                let written = if rewrite {
                    Some((
                        Reason::SecretUpdated,
                        format!("updated Secret {} without new credentials", target.secret_name),
                    ))
                } else {
                    None
                };
                let serving = Serving {
                    expires: held.creds.expiration,
                };
                return write_and_report(ar, ctx, target, held, refresh, written, Some(serving), None, now).await;
            }
            Plan::Write { held, refresh, reason } => {
                let note = match reason {
                    Reason::SecretRestored => {
                        info!(secret = %target.secret_name, restores = held.restores, "restoring the Secret from held credentials");
                        format!("restored Secret {} without calling STS", target.secret_name)
                    }
                    Reason::SecretUpdated => format!(
                        "wrote the current credentials to Secret {} without calling STS",
                        target.secret_name
                    ),
                    _ => format!("wrote new credentials to Secret {}", target.secret_name),
                };
                let refreshed_at = (reason == Reason::CredentialsRefreshed).then_some(held.issued);
                return write_and_report(
                    ar,
                    ctx,
                    target,
                    held,
                    refresh,
                    Some((reason, note)),
                    None,
                    refreshed_at,
                    now,
                )
                .await;
            }
            Plan::Mint {
                request,
                spec_hash,
                setting,
                serving,
            } => {
                let signer = match signer_for(ar, ctx, target, now).await {
                    Ok(signer) => signer,
                    Err(failure) => return failed(ar, ctx, target, failure, serving, now).await,
                };
                // The STS budget: urgent calls wait for a token, routine
                // refreshes are put off and free their reconcile slot.
                let urgent = budget::urgent(serving.map(|s| s.expires), now);
                let waiting = std::time::Instant::now();
                loop {
                    let taken = match ctx.budget.lock() {
                        Ok(mut bucket) => bucket.take(urgent, std::time::Instant::now()),
                        Err(_) => Ok(()),
                    };
                    match taken {
                        Ok(()) => break,
                        Err(wait) if urgent => tokio::time::sleep(wait.min(budget::MAX_WAIT)).await,
                        Err(wait) => {
                            ctx.metrics.sts_budget_deferrals.inc();
                            debug!(name = %target.name, wait = ?wait, "refresh put off by the STS budget");
                            return (Next::At(now + budget::signed(wait)), Reason::BackingOff);
                        }
                    }
                }
                ctx.metrics.sts_budget_wait.observe(waiting.elapsed().as_secs_f64());
                // A replica that stopped leading while this reconcile ran
                // (its Lease could not be renewed in time) calls STS no
                // more: the new leader does.
                if !*ctx.leading.borrow() {
                    debug!(name = %target.name, "no longer leading; leaving the refresh to the new leader");
                    return (Next::Change, Reason::BackingOff);
                }
                debug!(role = %request.role_arn, session = %request.role_session_name, source = ?signer, "assuming role");
                let minted_with = match (&ar.spec.source.secret_ref, &signer) {
                    (Some(_), Signer::Keys { access_key_id, .. }) => {
                        Some(source::key_fingerprint(&ctx.hmac_key, access_key_id))
                    }
                    _ => None,
                };
                let calling = std::time::Instant::now();
                let outcome = ctx.sts.assume_role(&request, &signer).await;
                ctx.metrics.sts_call(
                    outcome.as_ref().map_or_else(|e| e.reason(), |_| "success"),
                    calling.elapsed(),
                );
                let answered = outcome.as_ref().map_or_else(StsError::sts_answered, |_| Some(true));
                if let Ok(mut bucket) = ctx.budget.lock() {
                    if let Err(StsError::Throttled(_)) = &outcome {
                        bucket.throttled(std::time::Instant::now());
                        warn!(
                            rate = bucket.rate(),
                            "STS throttled a call; slowing every STS call down"
                        );
                    } else if answered == Some(true) {
                        bucket.answered();
                    }
                    ctx.metrics.sts_budget_rate.set(bucket.rate());
                }
                if let Some(answered) = answered {
                    ctx.sts_answered(answered);
                }
                let AssumedSession {
                    credentials,
                    assumed_role_arn,
                    source_identity,
                } = match outcome {
                    Ok(session) => session,
                    Err(e) => return failed(ar, ctx, target, Failure::from(e), serving, now).await,
                };
                let issued = schedule::whole_second(now);
                let refresh = plan::refresh_for(&target.uid, issued, credentials.expiration, setting);
                let held = Held {
                    creds: credentials,
                    issued,
                    spec_hash: spec_hash.into(),
                    assumed_role_arn,
                    source_identity,
                    secret_name: target.secret_name.clone(),
                    written: false,
                    restores: 0,
                    source_key: minted_with.map(secret::Hash::from),
                };
                // Held before the write: if the write fails, the retry
                // writes this set rather than calling STS again.
                ctx.memory.hold(&target.uid, held.clone());
                ctx.test_pauses
                    .pause(ctx.test_pauses.after_sts, "after the STS answer")
                    .await;
                let note = format!("wrote new credentials to Secret {}", target.secret_name);
                let written = Some((Reason::CredentialsRefreshed, note));
                return write_and_report(ar, ctx, target, held, refresh, written, serving, Some(issued), now).await;
            }
        }
    }
    // The last round always has the Secret and the stale ones.
    (Next::At(now), Reason::GetSecret)
}

/// The identity that assumes the role, as `spec.source` says: the
/// operator's own, a ServiceAccount's token, static keys from a Secret, or
/// another AssumedRole's credentials. A failure names the field.
async fn signer_for(ar: &AssumedRole, ctx: &Context, target: &Target, now: Timestamp) -> Result<Signer, Failure> {
    let spec = &ar.spec.source;
    if let Some(name) = &spec.service_account_name {
        let audience = spec.audience.clone().unwrap_or_else(|| ctx.token_audience.clone());
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec![audience],
                expiration_seconds: Some(source::TOKEN_SECONDS),
                bound_object_ref: None,
            },
            ..TokenRequest::default()
        };
        let api: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), &target.namespace);
        let answer = bounded(api.create_token_request(name, &PostParams::default(), &request)).await;
        ctx.api_answered(!matches!(&answer, Err(e) if unreachable(e)));
        return match answer {
            Ok(TokenRequest {
                status: Some(status), ..
            }) if !status.token.is_empty() => Ok(Signer::WebIdentity(status.token)),
            Ok(_) => Err(Failure::new(
                Reason::SourceUnavailable,
                format!("the API server issued no token for ServiceAccount {name} (spec.source.serviceAccountName)"),
            )),
            Err(source) => Err(Failure::from(&Error::RequestToken {
                name: name.clone(),
                source,
            })),
        };
    }
    if spec.secret_ref.is_some() {
        return static_keys(ar, ctx, target).await;
    }
    if let Some(upstream) = &spec.assumed_role_ref {
        return chained_keys(ar, ctx, target, &upstream.name, now).await;
    }
    Ok(Signer::Operator)
}

/// The static keys in the Secret that `spec.source.secretRef` names.
async fn static_keys(ar: &AssumedRole, ctx: &Context, target: &Target) -> Result<Signer, Failure> {
    let Some(reference) = &ar.spec.source.secret_ref else {
        return Ok(Signer::Operator);
    };
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &target.namespace);
    let what = format!("Secret {} (spec.source.secretRef)", reference.name);
    let secret = match bounded(api.get_opt(&reference.name)).await {
        Ok(Some(secret)) => secret,
        Ok(None) => {
            return Err(Failure::new(
                Reason::SourceUnavailable,
                format!("{what} does not exist in namespace {}", target.namespace),
            ));
        }
        Err(source) => return Err(Failure::from(&Error::GetSource { what, source })),
    };
    source::keys_from(
        &reference.name,
        secret.data.as_ref(),
        reference.access_key_id_key(),
        reference.secret_access_key_key(),
    )
    .map_err(|message| Failure::new(Reason::SourceUnavailable, message))
}

/// The credentials of the AssumedRole `upstream` of the same namespace,
/// read from its Secret (checked as its own reconcile checks it), for role
/// chaining. A loop of references is refused.
async fn chained_keys(
    ar: &AssumedRole,
    ctx: &Context,
    target: &Target,
    upstream: &str,
    now: Timestamp,
) -> Result<Signer, Failure> {
    let namespace = target.namespace.clone();
    let peers: Vec<Arc<AssumedRole>> = (0..source::MAX_CHAIN)
        .scan(Some(upstream.to_string()), |next, _| {
            let found = next.take().and_then(|name| ctx.assumed_role(&namespace, &name));
            *next = found
                .as_ref()
                .and_then(|a| a.spec.source.assumed_role_ref.as_ref())
                .map(|r| r.name.clone());
            found.map(Some)
        })
        .flatten()
        .collect();
    let lookup = |name: &str| {
        peers
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some(name))
            .map(Arc::as_ref)
    };
    if let Some(path) = source::cycle(ar, lookup) {
        return Err(Failure::new(
            Reason::SourceCycle,
            format!(
                "spec.source.assumedRoleRef leads back to where it started ({}); role chaining needs a chain that ends \
                 with an AssumedRole whose source is not another AssumedRole",
                path.join(" -> ")
            ),
        ));
    }
    let what = format!("AssumedRole {upstream} (spec.source.assumedRoleRef)");
    let Some(other) = lookup(upstream) else {
        return Err(Failure::new(
            Reason::SourceUnavailable,
            format!("{what} does not exist in namespace {namespace}"),
        ));
    };
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let secret = bounded(api.get_opt(&other.secret_name())).await.map_err(|source| {
        Failure::from(&Error::GetSource {
            what: what.clone(),
            source,
        })
    })?;
    let view = SecretView::of(other, secret.as_ref(), &ctx.hmac_key);
    match view.credentials {
        // STS refuses keys that expire while it answers: keep a minute.
        Some(creds) if now + jiff::SignedDuration::from_secs(60) < creds.expiration => Ok(Signer::Keys {
            access_key_id: creds.access_key_id,
            secret_access_key: creds.secret_access_key,
            session_token: Some(creds.session_token),
        }),
        _ => Err(Failure::new(
            Reason::SourceUnavailable,
            format!("{what} has no valid credentials in its Secret yet; retrying once it has"),
        )),
    }
}

/// Writes the Secret when `written` names why (then removes Secrets left
/// behind by a rename), holds the credentials, and reports success.
#[allow(clippy::too_many_arguments)]
async fn write_and_report(
    ar: &AssumedRole,
    ctx: &Context,
    target: &Target,
    mut held: Held,
    refresh: Refresh,
    written: Option<(Reason, String)>,
    serving_if_write_fails: Option<Serving>,
    refreshed_at: Option<Timestamp>,
    now: Timestamp,
) -> (Next, Reason) {
    if let Some((reason, _)) = &written {
        if let Err(error) = apply_secret(ar, ctx, target, &held).await {
            return failed(ar, ctx, target, Failure::from(&error), serving_if_write_fails, now).await;
        }
        ctx.metrics.secret_write(match reason {
            Reason::SecretRestored => "restore",
            Reason::SecretUpdated => "layout",
            _ => "refresh",
        });
        if *reason == Reason::CredentialsRefreshed {
            info!(secret = %target.secret_name, expires = %held.creds.expiration, refresh = %refresh.at, "wrote new credentials");
            ctx.test_pauses
                .pause(ctx.test_pauses.after_secret_write, "after the Secret write")
                .await;
        }
    }
    held.written = true;
    ctx.memory.hold(&target.uid, held.clone());
    ctx.memory.set_failures(&target.uid, None);
    // A rename always ends in a write under the new name: only then can a
    // Secret be left behind, so a reconcile that writes nothing skips the
    // scan of the cache.
    if written.is_some() {
        remove_stale_secrets(ar, ctx, target).await;
    }
    let old = ar.status.clone().unwrap_or_default();
    let report = Report::Serving {
        held: &held,
        refresh,
        refreshed_at,
        clamped_from: source::duration(ar.spec.duration_seconds(), &ar.spec.source).1,
    };
    let new = status::next(&old, target.generation, &target.secret_name, report, now);
    if let Some((reason, note)) = &written {
        publish(ctx, ar, EventType::Normal, *reason, note).await;
    }
    let reason = written.map_or(Reason::CredentialsReady, |(r, _)| r);
    if let Err(error) = patch_status(ar, ctx, target, &old, new).await {
        // The Secret is right; only the status lags. Retry after a backoff.
        return failed(
            ar,
            ctx,
            target,
            Failure::from(&error),
            Some(Serving {
                expires: held.creds.expiration,
            }),
            now,
        )
        .await;
    }
    (Next::At(refresh.at), reason)
}

/// How long one call to the API server may take within a reconcile. The API
/// server holds a request while etcd is away; a reconcile must not hold its
/// slot (of `--concurrency`) that long.
pub const API_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// `call`, or a timeout error after [`API_CALL_TIMEOUT`].
pub(super) async fn bounded<T>(
    call: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, kube::Error> {
    match tokio::time::timeout(API_CALL_TIMEOUT, call).await {
        Ok(result) => result,
        Err(_) => Err(kube::Error::Service(
            format!("no answer from the API server within {} s", API_CALL_TIMEOUT.as_secs()).into(),
        )),
    }
}

/// Whether `error` says that the API server could not be reached or could
/// not answer (as opposed to an answer that refuses).
fn unreachable(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(status) => status.code >= 500 || status.code == 429,
        _ => true,
    }
}

/// Records a failure: memory, status and, on a transition, a Warning Event.
/// The Secret is never touched here.
async fn failed(
    ar: &AssumedRole,
    ctx: &Context,
    target: &Target,
    failure: Failure,
    serving: Option<Serving>,
    now: Timestamp,
) -> (Next, Reason) {
    let reason = failure.reason;
    let old = ar.status.clone().unwrap_or_default();
    let remembered = ctx.memory.failures(&target.uid);
    let previous = plan::failures(&old, remembered.as_ref(), target.generation);
    let counts = reason.is_failure();
    let failed_at = schedule::whole_second(now);
    let failures = match (counts, previous) {
        (true, Some((n, _, _))) => n.saturating_add(1),
        (true, None) => 1,
        (false, Some((n, _, _))) => n,
        (false, None) => 0,
    };
    let expires = ctx
        .memory
        .held(&target.uid)
        .map(|h| h.creds.expiration)
        .or(old.expiration_time.as_ref().map(|t| t.0));
    let retry_at =
        (reason.retry() == Retry::Backoff).then(|| schedule::retry_at(&target.uid, failures, failed_at, expires));
    // One line per attempt, which is one per backoff step.
    warn!(
        name = %target.name,
        namespace = %target.namespace,
        reason = %reason,
        failures,
        retry_at = ?retry_at.map(|t| t.to_string()),
        "{}",
        failure.message
    );
    // The same failure as last time, which could not be reported then (the
    // API server is unreachable): don't knock again until something changes.
    // Or any failure to reach the API server after one that could not be
    // reported: a refresh that failed to write its Secret, then a retry that
    // failed to read it, are the same outage.
    let unreported_before = remembered.as_ref().is_some_and(|m| {
        m.unreported
            && m.generation == target.generation
            && (m.reason == reason || (m.reason.is_api_failure() && reason.is_api_failure()))
    });
    // A status that could not be written is not reported by writing the
    // status again.
    let mut unreported = unreported_before || reason == Reason::PatchStatus;
    if !unreported {
        let report = Report::Failed {
            failure: &failure,
            serving,
            failures,
            failed_at: counts.then_some(failed_at),
            retry_at,
        };
        let new = status::next(&old, target.generation, &target.secret_name, report, now);
        let transition = status::is_transition(&old, &new);
        // The status first: when the API server refuses it, it would refuse
        // the Event too, and one line says so.
        unreported = match patch_status(ar, ctx, target, &old, new).await {
            Ok(()) => false,
            Err(error) => {
                warn!(name = %target.name, error = %error, "could not report the failure in status");
                true
            }
        };
        if transition && !unreported {
            publish(ctx, ar, EventType::Warning, reason, &failure.message).await;
        }
    }
    if counts {
        ctx.memory.set_failures(
            &target.uid,
            Some(Remembered {
                failures,
                last: failed_at,
                reason,
                generation: target.generation,
                unreported,
            }),
        );
    }
    let action = match reason.retry() {
        Retry::Backoff => retry_at.map_or(Next::Change, Next::At),
        // A contested Secret gets new credentials at the next refresh.
        Retry::Never if reason == Reason::SecretContested => ctx
            .memory
            .held(&target.uid)
            .and_then(|h| {
                let setting = ar.spec.refresh_before().ok()?;
                Some(plan::refresh_for(&target.uid, h.issued, h.creds.expiration, setting).at)
            })
            .map_or(Next::Change, Next::At),
        _ => Next::Change,
    };
    (action, reason)
}

async fn apply_secret(ar: &AssumedRole, ctx: &Context, target: &Target, held: &Held) -> Result<()> {
    let owner = ar.controller_owner_ref(&()).ok_or(Error::MissingMetadata("uid"))?;
    let desired = secret::render_secret(
        ar,
        owner,
        &held.creds,
        held.issued,
        &held.spec_hash.to_string(),
        held.source_key.as_ref().map(ToString::to_string).as_deref(),
        &ctx.hmac_key,
    );
    apply(ctx, target, &desired).await
}

/// Writes the owned Secret `name` without its credentials (see
/// [`secret::render_revoked`]).
async fn apply_revoked(ar: &AssumedRole, ctx: &Context, target: &Target, name: &str) -> Result<()> {
    let owner = ar.controller_owner_ref(&()).ok_or(Error::MissingMetadata("uid"))?;
    let mut desired = secret::render_revoked(ar, owner, &ctx.hmac_key);
    desired.metadata.name = Some(name.to_string());
    apply_named(ctx, &target.namespace, name, &desired).await
}

/// Server-side applies `desired` as the Secret: keys the operator wrote
/// before and `desired` lacks are removed.
async fn apply(ctx: &Context, target: &Target, desired: &Secret) -> Result<()> {
    apply_named(ctx, &target.namespace, &target.secret_name, desired).await
}

/// Server-side applies `desired` as the Secret `name` of `namespace`.
async fn apply_named(ctx: &Context, namespace: &str, name: &str, desired: &Secret) -> Result<()> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    bounded(api.patch(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(desired)))
        .await
        .map_err(|source| Error::ApplySecret {
            name: name.to_string(),
            source,
        })?;
    Ok(())
}

/// Deletes the Secrets this AssumedRole controls under other names than its
/// current one, once that one holds its credentials: what a rename of
/// `spec.secret.name` left behind would otherwise keep credentials that are
/// never refreshed. A failure is logged and retried at the next write.
async fn remove_stale_secrets(ar: &AssumedRole, ctx: &Context, target: &Target) {
    let stale = ctx.stale_secrets(&target.uid, &target.secret_name);
    if stale.is_empty() {
        return;
    }
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &target.namespace);
    for super::StaleSecret {
        name, uid: secret_uid, ..
    } in stale
    {
        // Only the object that was seen: never one created since under the
        // same name.
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: secret_uid,
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match bounded(api.delete(&name, &params)).await {
            Ok(_) => {
                info!(secret = %name, current = %target.secret_name, "deleted a Secret left behind by a rename");
                let note = format!(
                    "deleted Secret {name}: the credentials now live in Secret {}",
                    target.secret_name
                );
                publish(ctx, ar, EventType::Normal, Reason::SecretRemoved, &note).await;
            }
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(e) => warn!(secret = %name, error = %crate::api_message(&e), "could not delete a stale Secret"),
        }
    }
}

async fn patch_status(
    ar: &AssumedRole,
    ctx: &Context,
    target: &Target,
    old: &AssumedRoleStatus,
    status: AssumedRoleStatus,
) -> Result<()> {
    if ar.status.is_some() && *old == status {
        return Ok(());
    }
    // The same status this process wrote over this very version: the write
    // has not reached the cache yet (a reconcile woken by the Secret's own
    // event comes first). Writing it again would only cost a request, and
    // move the transition times to this second.
    let written = crate::memory::Written::new(
        ar.metadata.resource_version.as_deref().unwrap_or_default(),
        status_hash(&status),
    );
    if ctx.memory.written(&target.uid).as_ref() == Some(&written) {
        return Ok(());
    }
    let api: Api<AssumedRole> = Api::namespaced(ctx.client.clone(), &target.namespace);
    // `status.imagePullSecret` has a writer of its own (its own field
    // manager): this apply leaves it out, and so leaves it alone.
    let mut applied = status;
    applied.image_pull_secret = None;
    let patch = json!({
        "apiVersion": AssumedRole::api_version(&()),
        "kind": AssumedRole::kind(&()),
        "status": applied,
    });
    bounded(api.patch_status(
        &target.name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    ))
    .await
    .map_err(Error::PatchStatus)?;
    ctx.memory.set_written(&target.uid, written);
    Ok(())
}

/// A hash of a status, to tell whether it is the one last written. The
/// conditions' transition times are left out: a reconcile whose cache lacks
/// the last write computes them anew, at its own second.
fn status_hash(status: &AssumedRoleStatus) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut status = status.clone();
    for condition in &mut status.conditions {
        condition.last_transition_time =
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::UNIX_EPOCH);
    }
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_string(&status).unwrap_or_default().hash(&mut hasher);
    hasher.finish()
}

async fn publish(ctx: &Context, ar: &AssumedRole, type_: EventType, reason: Reason, note: &str) {
    if let Err(e) = ctx
        .events
        .publish(ar, type_, reason.as_str(), note, ctx.clock.now())
        .await
    {
        warn!(error = %crate::api_message(&e), "could not publish an Event");
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    use super::*;

    fn status(message: &str, transition: i64) -> AssumedRoleStatus {
        AssumedRoleStatus {
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: "True".into(),
                reason: "CredentialsReady".into(),
                message: message.into(),
                last_transition_time: Time(Timestamp::from_second(transition).unwrap()),
                observed_generation: Some(1),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn a_status_computed_again_a_second_later_is_the_one_written() {
        // A reconcile whose cache lacks the mint's status computes the same
        // status with its own second as the transition time: the same write.
        assert_eq!(
            status_hash(&status("Secret a holds credentials", 1_800_000_000)),
            status_hash(&status("Secret a holds credentials", 1_800_000_001))
        );
        assert_ne!(
            status_hash(&status("Secret a holds credentials", 1_800_000_000)),
            status_hash(&status("Secret b holds credentials", 1_800_000_000))
        );
    }
}
