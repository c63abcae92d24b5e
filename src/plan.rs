//! Decides what one reconcile does: from the AssumedRole, the Secret it
//! observed, the credentials this process holds, the failures it remembers
//! and the time, to one [`Plan`]. Pure: no I/O, no clock, no metrics.
//!
//! The controller carries the plan out ([`crate::controller`]); the tests at
//! the bottom of this file walk every path through the decision.

use std::{collections::BTreeMap, sync::Arc};

use jiff::{SignedDuration, Timestamp};

use crate::{
    Error,
    api::{AssumedRole, AssumedRoleStatus, RefreshBefore, SourceKind},
    credentials::{AssumeRoleRequest, Credentials},
    outcome::{Failure, Reason},
    policy::{self, AssumedRolePolicy, Verdict},
    schedule::{self, Refresh},
    secret::{self, Observed},
    source,
};

/// How long a decision waits for the namespace's labels to reach the cache.
pub const NAMESPACE_WAIT: SignedDuration = SignedDuration::from_secs(1);

/// Restores of one set of credentials before the operator concludes that
/// another writer is fighting it and stops.
pub const MAX_RESTORES: u32 = 3;

/// The object a reconcile works on, with the metadata the API server always
/// sets checked once, so that nothing downstream falls back to a default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The AssumedRole's namespace.
    pub namespace: String,
    /// The AssumedRole's name.
    pub name: String,
    /// The AssumedRole's UID.
    pub uid: String,
    /// The Secret that receives the credentials.
    pub secret_name: String,
    /// The spec's generation.
    pub generation: Option<i64>,
}

impl Target {
    /// Checks the metadata of `ar`.
    pub fn of(ar: &AssumedRole) -> Result<Self, Error> {
        let meta = &ar.metadata;
        Ok(Self {
            namespace: meta.namespace.clone().ok_or(Error::MissingMetadata("namespace"))?,
            name: meta.name.clone().ok_or(Error::MissingMetadata("name"))?,
            uid: meta.uid.clone().ok_or(Error::MissingMetadata("uid"))?,
            secret_name: ar.secret_name(),
            generation: meta.generation,
        })
    }
}

/// Credentials this process holds for one AssumedRole, so that a deleted or
/// edited Secret can be written again without calling STS.
#[derive(Debug, Clone, PartialEq)]
pub struct Held {
    /// The credentials.
    pub creds: Credentials,
    /// When they were issued (whole seconds).
    pub issued: Timestamp,
    /// The spec hash they were obtained for.
    pub spec_hash: secret::Hash,
    /// ARN of the assumed-role session.
    pub assumed_role_arn: Option<String>,
    /// Source identity of the session.
    pub source_identity: Option<String>,
    /// The Secret they are meant for.
    pub secret_name: String,
    /// Whether they reached that Secret. A minted set whose write failed is
    /// held too, so that the retry writes it instead of calling STS again.
    pub written: bool,
    /// Restores of this set into this Secret after another writer changed
    /// or deleted it.
    pub restores: u32,
    /// The keyed hash of the static keys (`spec.source.secretRef`) they
    /// were minted with.
    pub source_key: Option<secret::Hash>,
}

/// Failures this process remembers for one AssumedRole. The status holds the
/// same count, but a status that could not be written (the API server is
/// down) must not stop the backoff from growing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remembered {
    /// Failed attempts in a row.
    pub failures: i32,
    /// When the last one failed (whole seconds).
    pub last: Timestamp,
    /// Why it failed.
    pub reason: Reason,
    /// The generation of the spec it failed for.
    pub generation: Option<i64>,
    /// Set when reporting the last failure (status or Event) failed, so that
    /// the same failure is not reported again into the same outage.
    pub unreported: bool,
}

/// The failures that drive the backoff: those remembered in memory for the
/// current generation, or else those in status for it. After a restart the
/// memory is empty and the status decides; a spec change starts afresh.
pub fn failures(
    status: &AssumedRoleStatus,
    memory: Option<&Remembered>,
    generation: Option<i64>,
) -> Option<(i32, Timestamp, Option<Reason>)> {
    let persisted = (status.observed_generation == generation && status.consecutive_failures > 0)
        .then(|| status.last_failure_time.as_ref().map(|t| t.0))
        .flatten()
        .map(|last| (status.consecutive_failures, last, None));
    let remembered = memory
        .filter(|m| m.generation == generation && m.failures > 0)
        .map(|m| (m.failures, m.last, Some(m.reason)));
    match (persisted, remembered) {
        (Some(p), Some(r)) if p.1 > r.1 => Some(p),
        (_, Some(r)) => Some(r),
        (p, None) => p,
    }
}

/// What an existing Secret tells, read once per reconcile.
#[derive(Debug, Clone, PartialEq)]
pub struct SecretView {
    /// Whose it is and what its annotations say.
    pub observed: Observed,
    /// The credentials in it, when it is intact.
    pub credentials: Option<Credentials>,
}

impl SecretView {
    /// Reads `secret` (or its absence) against the AssumedRole that wants it.
    pub fn of(ar: &AssumedRole, secret: Option<&k8s_openapi::api::core::v1::Secret>, key: &[u8]) -> Self {
        let observed = secret::observe(ar, secret, key);
        let credentials = match &observed {
            Observed::Owned(o) if o.intact => secret.and_then(secret::credentials_from),
            _ => None,
        };
        Self { observed, credentials }
    }
}

/// Everything a reconcile knows when it decides.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// The AssumedRole, from the watch cache.
    pub ar: &'a AssumedRole,
    /// Its checked metadata.
    pub target: &'a Target,
    /// The credentials this process holds for it.
    pub held: Option<&'a Held>,
    /// The failures this process remembers for it.
    pub memory: Option<&'a Remembered>,
    /// Its Secret, once read; `None` before.
    pub secret: Option<&'a SecretView>,
    /// When a watch last heard from the API server.
    pub api_seen: Option<Timestamp>,
    /// When STS last answered a call (throttling and 5xx are no answer).
    pub sts_seen: Option<Timestamp>,
    /// Whether the operator tags each session with the AssumedRole's
    /// namespace and name (`--session-tags`).
    pub session_tags: bool,
    /// The audience of ServiceAccount tokens when the spec names none
    /// (`--token-audience`).
    pub token_audience: &'a str,
    /// For `spec.source.secretRef`: the keyed hash of the access key ID the
    /// Secret holds now, once read; `None` when unreadable.
    pub source_key: Option<&'a str>,
    /// Secrets this AssumedRole controls under other names than its current
    /// one that still hold credentials (a rename left them behind), from
    /// what the owned-Secret watch delivered: a revocation empties them
    /// too. `None` before they were looked for.
    pub stale_holding: Option<&'a [String]>,
    /// The kinds of source this installation may use (`--sources`).
    pub enabled_sources: &'a [SourceKind],
    /// Every AssumedRolePolicy, from the watch cache.
    pub policies: &'a [Arc<AssumedRolePolicy>],
    /// The labels of the AssumedRole's namespace; `None` while the cache
    /// has not seen the namespace yet.
    pub namespace_labels: Option<&'a BTreeMap<String, String>>,
    /// The time of the decision.
    pub now: Timestamp,
}

/// What the current Secret still gives pods while something fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Serving {
    /// When its credentials expire.
    pub expires: Timestamp,
}

/// What one reconcile does.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// Wait out the backoff of earlier failures, with no call at all.
    Wait {
        /// When to try again.
        until: Timestamp,
    },
    /// Read the Secret, then decide again.
    ReadSecret,
    /// Look for the Secrets a rename left behind, then decide again: a
    /// denied AssumedRole empties them too.
    FindStale,
    /// No policy allows the AssumedRole any more: remove the credentials
    /// from every Secret it owns (which stay), forget those held, and say
    /// why.
    Revoke {
        /// Why.
        failure: Failure,
        /// The Secrets to empty: the current one first, if it holds
        /// credentials, then any left behind by a rename.
        secrets: Vec<String>,
    },
    /// Nothing can be written: say why.
    Fail {
        /// Why.
        failure: Failure,
        /// What the Secret still gives pods, if anything.
        serving: Option<Serving>,
    },
    /// The Secret holds good credentials for the current spec.
    Keep {
        /// Those credentials.
        held: Held,
        /// When to refresh them.
        refresh: Refresh,
        /// Rewrite the Secret around them: labels, annotations, mount path
        /// or profile changed.
        rewrite: bool,
    },
    /// Write the held credentials without calling STS.
    Write {
        /// The credentials, as they will be held after the write.
        held: Held,
        /// When to refresh them.
        refresh: Refresh,
        /// What the write is: `SecretRestored` (another writer deleted or
        /// changed the Secret), `SecretUpdated` (a new Secret name) or
        /// `CredentialsRefreshed` (the write of a new set failed before).
        reason: Reason,
    },
    /// Ask STS for new credentials.
    Mint {
        /// The request.
        request: AssumeRoleRequest,
        /// Its spec hash.
        spec_hash: String,
        /// The spec's refresh setting, for the new credentials.
        setting: RefreshBefore,
        /// What the Secret still gives pods should STS fail.
        serving: Option<Serving>,
    },
}

/// The refresh time of credentials issued to the AssumedRole `uid`, with the
/// jitter seeded from the UID and the issue time.
pub fn refresh_for(uid: &str, issued: Timestamp, expires: Timestamp, setting: RefreshBefore) -> Refresh {
    schedule::refresh_time(issued, expires, setting, schedule::jitter_seed(uid, issued))
}

/// The one decision of a reconcile.
pub fn decide(facts: &Facts<'_>) -> Plan {
    let Facts {
        ar,
        target,
        held,
        memory,
        secret,
        api_seen,
        sts_seen,
        session_tags,
        token_audience,
        source_key,
        stale_holding,
        enabled_sources,
        policies,
        namespace_labels,
        now,
    } = *facts;
    let status = ar.status.clone().unwrap_or_default();
    let mut request = AssumeRoleRequest::for_resource(ar);
    request.source = source::identity(&ar.spec.source, token_audience);
    // Who may assume what comes first: a revoked grant takes effect at
    // once, whatever the backoff or suspension, and a denied one never
    // reaches STS.
    let Some(labels) = namespace_labels else {
        // The namespace's watch lags behind the AssumedRole's: look again
        // shortly rather than judge without its labels.
        return Plan::Wait {
            until: now + NAMESPACE_WAIT,
        };
    };
    if let Verdict::Denied(why) = policy_verdict(ar, &request, &target.namespace, policies, labels) {
        let Some(view) = secret else {
            return Plan::ReadSecret;
        };
        let Some(stale_holding) = stale_holding else {
            return Plan::FindStale;
        };
        let mut secrets = Vec::new();
        if matches!(&view.observed, Observed::Owned(owned) if owned.holds_credentials) {
            secrets.push(target.secret_name.clone());
        }
        secrets.extend(stale_holding.iter().filter(|n| **n != target.secret_name).cloned());
        let removed = |names: &[String]| match names {
            [one] => format!("{why}; the credentials were removed from Secret {one}, which stays"),
            many => format!(
                "{why}; the credentials were removed from Secrets {}, which stay",
                many.join(", ")
            ),
        };
        return match &view.observed {
            _ if !secrets.is_empty() => Plan::Revoke {
                failure: Failure::new(Reason::PolicyDenied, removed(&secrets)),
                secrets,
            },
            // Emptied already: say so still, rather than flip the message
            // (and the status) at the reconcile after the revocation.
            Observed::Owned(_) => fail(
                Reason::PolicyDenied,
                removed(std::slice::from_ref(&target.secret_name)),
                None,
            ),
            _ => fail(Reason::PolicyDenied, format!("{why}; no STS call was made"), None),
        };
    }

    if ar.spec.suspend {
        return fail(
            Reason::Suspended,
            "refresh is suspended; the Secret is left as it is",
            None,
        );
    }
    let setting = match ar.spec.validate().and_then(|()| ar.spec.refresh_before()) {
        Ok(setting) => setting,
        Err(invalid) => return fail(Reason::InvalidSpec, invalid.to_string(), None),
    };
    let kind = ar.spec.source.kind();
    if !enabled_sources.contains(&kind) {
        return fail(
            Reason::SourceDisabled,
            format!(
                "spec.source: this operator was installed without the {} source (its --sources, the chart's sources \
                 values), so it has no permission to use it; no STS call was made",
                kind.as_str()
            ),
            None,
        );
    }

    // A failing AssumedRole waits out its backoff, even across restarts and
    // whether or not its status could be written, unless its spec changed,
    // or it lost a conflict (over as soon as the other Secret is gone, which
    // the Secret watch tells), or it could not reach the API server and a
    // watch has heard from it since, or STS was down or throttling and has
    // answered a call since.
    if let Some((count, last, reason)) = failures(&status, memory, target.generation) {
        let last_reason = reason.or_else(|| ready_reason(&status));
        let api_back = last_reason.is_some_and(Reason::is_api_failure) && api_seen.is_some_and(|t| t > last);
        let sts_back = last_reason.is_some_and(Reason::is_sts_outage) && sts_seen.is_some_and(|t| t > last);
        // A denial ends when a policy allows again, which the policy and
        // namespace watches tell: no backoff either.
        let over_on_event = matches!(last_reason, Some(Reason::SecretConflict | Reason::PolicyDenied));
        if !over_on_event && !api_back && !sts_back {
            let expires = held
                .map(|h| h.creds.expiration)
                .or(status.expiration_time.as_ref().map(|t| t.0));
            let until = schedule::retry_at(&target.uid, count, last, expires);
            if now < until {
                return Plan::Wait { until };
            }
        }
    }

    let Some(view) = secret else {
        return Plan::ReadSecret;
    };
    // A web identity session takes its tags from the token, not the call.
    let web_identity = ar.spec.source.kind() == SourceKind::ServiceAccount;
    if session_tags
        && !web_identity
        && let Err(invalid) = request.tag_with_origin(&target.namespace, &target.name)
    {
        return fail(Reason::InvalidSpec, invalid.to_string(), None);
    }
    let hash = secret::spec_hash(&request);
    let name = &target.secret_name;
    let mut serving = None;
    match &view.observed {
        Observed::Foreign => {
            return fail(
                Reason::SecretConflict,
                format!(
                    "Secret {name} exists and is not controlled by this AssumedRole; it is left untouched. \
                     Delete it or set spec.secret.name to another name"
                ),
                None,
            );
        }
        Observed::Owned(owned) if owned.intact && owned.spec_hash.as_ref().is_some_and(|h| h.is(&hash)) => {
            if let (Some(issued), Some(expires), Some(creds)) =
                (owned.issued, owned.expiration, view.credentials.clone())
            {
                if now < expires - schedule::FLOOR {
                    serving = Some(Serving { expires });
                }
                let refresh = refresh_for(&target.uid, issued, expires, setting);
                // New static keys in the source Secret: mint with them now,
                // while the credentials in the Secret still serve.
                let new_keys = source_key.is_some_and(|k| !owned.source_key.as_ref().is_some_and(|h| h.is(k)));
                if now < refresh.at && !new_keys {
                    // What this process learned when it minted these
                    // credentials beats the status in the cache, which can
                    // lag behind its own last write.
                    let previous = held.filter(|p| p.issued == issued);
                    let held = Held {
                        creds,
                        issued,
                        spec_hash: hash.into(),
                        assumed_role_arn: previous
                            .map_or_else(|| status.assumed_role_arn.clone(), |p| p.assumed_role_arn.clone()),
                        source_identity: previous
                            .map_or_else(|| status.source_identity.clone(), |p| p.source_identity.clone()),
                        secret_name: name.clone(),
                        written: true,
                        restores: previous.filter(|p| &p.secret_name == name).map_or(0, |p| p.restores),
                        source_key: owned.source_key.clone(),
                    };
                    let rewrite = !owned
                        .layout_hash
                        .as_ref()
                        .is_some_and(|h| h.is(&secret::layout_hash(ar)));
                    return Plan::Keep { held, refresh, rewrite };
                }
            }
        }
        Observed::Owned(_) | Observed::Missing => {
            if let Some(held) = held.filter(|h| h.spec_hash.is(&hash)) {
                let refresh = refresh_for(&target.uid, held.issued, held.creds.expiration, setting);
                if now < refresh.at {
                    let mut held = held.clone();
                    // Only a Secret that already held this set and lost it
                    // to another writer counts as a restore; a first write
                    // that failed, or a new Secret name, does not.
                    let reason = if &held.secret_name != name {
                        held.secret_name = name.clone();
                        held.restores = 0;
                        Reason::SecretUpdated
                    } else if !held.written {
                        Reason::CredentialsRefreshed
                    } else {
                        Reason::SecretRestored
                    };
                    if reason == Reason::SecretRestored {
                        if held.restores >= MAX_RESTORES {
                            return fail(
                                Reason::SecretContested,
                                format!(
                                    "Secret {name} was changed by another writer {} times; the operator stopped \
                                     restoring it and will write new credentials at the next refresh",
                                    held.restores
                                ),
                                None,
                            );
                        }
                        held.restores += 1;
                    }
                    held.written = true;
                    return Plan::Write { held, refresh, reason };
                }
            }
        }
    }
    Plan::Mint {
        request,
        spec_hash: hash,
        setting,
        serving,
    }
}

fn fail(reason: Reason, message: impl Into<String>, serving: Option<Serving>) -> Plan {
    Plan::Fail {
        failure: Failure::new(reason, message),
        serving,
    }
}

/// The reason of the `Ready` or `Refreshed` condition in `status` that
/// records the last failure.
fn ready_reason(status: &AssumedRoleStatus) -> Option<Reason> {
    let reason = status
        .conditions
        .iter()
        .filter(|c| c.status == "False")
        .map(|c| c.reason.as_str())
        .next()?;
    [Reason::SecretConflict, Reason::PolicyDenied]
        .into_iter()
        .find(|r| r.as_str() == reason)
}

/// Whether the policies allow `ar`, asking as `request` from `namespace`
/// (whose labels are `labels`): the judgement a reconcile makes before any
/// STS call, and the webhook before it wires a pod to the AssumedRole.
pub fn policy_verdict(
    ar: &AssumedRole,
    request: &AssumeRoleRequest,
    namespace: &str,
    policies: &[Arc<AssumedRolePolicy>],
    labels: &BTreeMap<String, String>,
) -> Verdict {
    let ask = policy::Ask {
        namespace,
        role_arn: &request.role_arn,
        duration_seconds: request.duration_seconds,
        source: ar.spec.source.kind(),
        role_session_name: ar.spec.role_session_name.as_deref(),
        source_identity: ar.spec.source_identity.as_deref(),
    };
    policy::evaluate(policies.iter().map(Arc::as_ref), labels, &ask)
}

#[cfg(test)]
mod tests {
    use jiff::SignedDuration;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    use super::*;
    use kube::Resource;

    use crate::fixtures;

    const KEY: &[u8] = fixtures::KEY;

    /// One instant for the whole test run, so that a failure "now" and a
    /// decision "now" are the same second.
    fn now() -> Timestamp {
        static NOW: std::sync::LazyLock<Timestamp> =
            std::sync::LazyLock::new(|| schedule::whole_second(Timestamp::now()));
        *NOW
    }

    /// The AssumedRole's own Secret, issued `age` ago for an hour.
    fn own_secret(ar: &AssumedRole, age_mins: i64) -> SecretView {
        let secret = fixtures::owned_secret(ar, SignedDuration::from_mins(age_mins), SignedDuration::from_hours(1));
        SecretView::of(ar, Some(&secret), KEY)
    }

    fn held_for(ar: &AssumedRole, age_mins: i64, secret_name: &str, written: bool, restores: u32) -> Held {
        let issued = now() - SignedDuration::from_mins(age_mins);
        Held {
            creds: fixtures::credentials(issued + SignedDuration::from_hours(1)),
            issued,
            spec_hash: secret::spec_hash(&AssumeRoleRequest::for_resource(ar)).into(),
            assumed_role_arn: None,
            source_identity: None,
            secret_name: secret_name.into(),
            written,
            restores,
            source_key: None,
        }
    }

    fn decide_with(
        ar: &AssumedRole,
        held: Option<&Held>,
        memory: Option<&Remembered>,
        secret: Option<&SecretView>,
    ) -> Plan {
        let target = Target::of(ar).expect("target");
        decide(&Facts {
            ar,
            target: &target,
            held,
            memory,
            secret,
            api_seen: None,
            sts_seen: None,
            session_tags: false,
            token_audience: source::DEFAULT_AUDIENCE,
            source_key: None,
            stale_holding: Some(&[]),
            enabled_sources: &SourceKind::ALL,
            policies: fixtures::allowing_all(),
            namespace_labels: Some(&fixtures::NO_LABELS),
            now: now(),
        })
    }

    fn failing(count: i32, reason: &str, generation: i64) -> AssumedRoleStatus {
        AssumedRoleStatus {
            consecutive_failures: count,
            last_failure_time: Some(Time(now())),
            observed_generation: Some(generation),
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: "False".into(),
                reason: reason.into(),
                message: String::new(),
                observed_generation: Some(generation),
                last_transition_time: Time(now()),
            }],
            ..AssumedRoleStatus::default()
        }
    }

    fn reason_of(plan: &Plan) -> Option<Reason> {
        match plan {
            Plan::Fail { failure, .. } => Some(failure.reason),
            Plan::Write { reason, .. } => Some(*reason),
            _ => None,
        }
    }

    #[test]
    fn each_situation_leads_to_its_plan() {
        let ar = AssumedRole::test();
        let mut suspended = ar.clone();
        suspended.spec.suspend = true;
        let mut invalid = ar.clone();
        invalid.spec.policy = Some("[1]".into());
        let mut renamed = ar.clone();
        renamed.spec.secret.name = Some("elsewhere".into());
        let mut relabelled = ar.clone();
        relabelled.spec.secret.labels.insert("team".into(), "billing".into());
        let foreign = {
            let mut s = fixtures::owned_secret(&ar, SignedDuration::from_mins(1), SignedDuration::from_hours(1));
            s.metadata.owner_references = None;
            SecretView::of(&ar, Some(&s), KEY)
        };
        let tampered = {
            let mut s = fixtures::owned_secret(&ar, SignedDuration::from_mins(1), SignedDuration::from_hours(1));
            s.data
                .get_or_insert_default()
                .insert("AWS_SESSION_TOKEN".into(), k8s_openapi::ByteString(b"x".to_vec()));
            SecretView::of(&ar, Some(&s), KEY)
        };
        let missing = SecretView::of(&ar, None, KEY);
        let fresh = own_secret(&ar, 1);
        let due = own_secret(&ar, 50);
        let written = held_for(&ar, 1, "reader", true, 0);
        let unwritten = held_for(&ar, 1, "reader", false, 0);
        let contested = held_for(&ar, 1, "reader", true, MAX_RESTORES);
        let backing_off = ar.clone().with_status(failing(3, "STSUnavailable", 1));
        let conflicted = ar.clone().with_status(failing(3, "SecretConflict", 1));
        let spec_changed = ar.clone().with_generation(2).with_status(failing(3, "AccessDenied", 1));
        let remembered = Remembered {
            failures: 4,
            last: now(),
            reason: Reason::GetSecret,
            generation: Some(1),
            unreported: true,
        };

        let rows: Vec<(&str, Plan, &str)> = vec![
            ("suspended", decide_with(&suspended, None, None, None), "Fail Suspended"),
            (
                "invalid spec",
                decide_with(&invalid, None, None, None),
                "Fail InvalidSpec",
            ),
            ("not read yet", decide_with(&ar, None, None, None), "ReadSecret"),
            (
                "foreign Secret",
                decide_with(&ar, None, None, Some(&foreign)),
                "Fail SecretConflict",
            ),
            ("valid, not due", decide_with(&ar, None, None, Some(&fresh)), "Keep"),
            (
                "valid, new labels",
                decide_with(&relabelled, None, None, Some(&fresh)),
                "Keep rewrite",
            ),
            ("due", decide_with(&ar, None, None, Some(&due)), "Mint"),
            (
                "missing, nothing held",
                decide_with(&ar, None, None, Some(&missing)),
                "Mint",
            ),
            (
                "deleted, held",
                decide_with(&ar, Some(&written), None, Some(&missing)),
                "Write SecretRestored",
            ),
            (
                "tampered, held",
                decide_with(&ar, Some(&written), None, Some(&tampered)),
                "Write SecretRestored",
            ),
            (
                "write failed before",
                decide_with(&ar, Some(&unwritten), None, Some(&missing)),
                "Write CredentialsRefreshed",
            ),
            (
                "renamed",
                decide_with(&renamed, Some(&written), None, Some(&missing)),
                "Write SecretUpdated",
            ),
            (
                "contested",
                decide_with(&ar, Some(&contested), None, Some(&tampered)),
                "Fail SecretContested",
            ),
            ("in backoff", decide_with(&backing_off, None, None, None), "Wait"),
            (
                "lost a conflict",
                decide_with(&conflicted, None, None, Some(&missing)),
                "Mint",
            ),
            (
                "spec changed in backoff",
                decide_with(&spec_changed, None, None, Some(&missing)),
                "Mint",
            ),
            (
                "backoff only in memory",
                decide_with(&ar, None, Some(&remembered), None),
                "Wait",
            ),
        ];
        for (situation, plan, expected) in rows {
            let got = match &plan {
                Plan::Wait { .. } => "Wait".to_string(),
                Plan::ReadSecret => "ReadSecret".to_string(),
                Plan::FindStale => "FindStale".to_string(),
                Plan::Keep { rewrite: false, .. } => "Keep".to_string(),
                Plan::Keep { rewrite: true, .. } => "Keep rewrite".to_string(),
                Plan::Mint { .. } => "Mint".to_string(),
                Plan::Fail { .. } => format!("Fail {}", reason_of(&plan).map_or("", Reason::as_str)),
                Plan::Write { .. } => format!("Write {}", reason_of(&plan).map_or("", Reason::as_str)),
                Plan::Revoke { .. } => "Revoke".to_string(),
            };
            assert_eq!(got, expected, "{situation}: {plan:?}");
        }
    }

    /// The decision under `policies`, for a namespace with `labels`.
    fn judged(
        ar: &AssumedRole,
        policies: &[Arc<AssumedRolePolicy>],
        labels: Option<&BTreeMap<String, String>>,
        memory: Option<&Remembered>,
        secret: Option<&SecretView>,
    ) -> Plan {
        let target = Target::of(ar).expect("target");
        decide(&Facts {
            ar,
            target: &target,
            held: None,
            memory,
            secret,
            api_seen: None,
            sts_seen: None,
            session_tags: false,
            token_audience: source::DEFAULT_AUDIENCE,
            source_key: None,
            stale_holding: Some(&[]),
            enabled_sources: &SourceKind::ALL,
            policies,
            namespace_labels: labels,
            now: now(),
        })
    }

    #[test]
    fn a_denied_assumed_role_never_reaches_sts_and_a_revoked_one_loses_its_credentials() {
        let ar = AssumedRole::test();
        let none: &[Arc<AssumedRolePolicy>] = &[];
        let labels = Some(&fixtures::NO_LABELS);
        let missing = SecretView::of(&ar, None, KEY);
        let full = own_secret(&ar, 10);
        // The Secret is read first, to know whether it holds credentials.
        assert_eq!(judged(&ar, none, labels, None, None), Plan::ReadSecret);
        let denied = judged(&ar, none, labels, None, Some(&missing));
        assert_eq!(reason_of(&denied), Some(Reason::PolicyDenied));
        let Plan::Fail { failure, .. } = denied else {
            panic!("not a failure: {denied:?}")
        };
        assert_eq!(
            failure.message,
            "namespace billing may not assume arn:aws:iam::123456789012:role/reader: no AssumedRolePolicy covers the \
             namespace; no STS call was made"
        );
        let Plan::Revoke { failure, .. } = judged(&ar, none, labels, None, Some(&full)) else {
            panic!("credentials kept")
        };
        assert!(
            failure
                .message
                .ends_with("the credentials were removed from Secret reader, which stays")
        );
        // Neither a suspension nor a backoff delays a revocation.
        let mut suspended = ar.clone();
        suspended.spec.suspend = true;
        assert!(matches!(
            judged(&suspended, none, labels, None, Some(&own_secret(&suspended, 10))),
            Plan::Revoke { .. }
        ));
        let backing_off = ar.clone().with_status(failing(4, "STSUnavailable", 1));
        assert!(matches!(
            judged(&backing_off, none, labels, None, Some(&full)),
            Plan::Revoke { .. }
        ));
        // A Secret already emptied is left alone.
        let owner = ar.controller_owner_ref(&()).expect("owner");
        let emptied = secret::render_revoked(&ar, owner, KEY);
        let emptied = SecretView::of(&ar, Some(&emptied), KEY);
        let Plan::Fail { failure, .. } = judged(&ar, none, labels, None, Some(&emptied)) else {
            panic!("an emptied Secret written again")
        };
        // The same words as at the revocation: the status does not flip.
        assert!(
            failure
                .message
                .ends_with("the credentials were removed from Secret reader, which stays"),
            "{}",
            failure.message
        );
    }

    #[test]
    fn a_revocation_empties_secrets_left_under_an_old_name_even_when_the_current_one_conflicts() {
        let mut ar = AssumedRole::test();
        ar.spec.secret.name = Some("taken".into());
        let none: &[Arc<AssumedRolePolicy>] = &[];
        let target = Target::of(&ar).expect("target");
        let foreign = SecretView {
            observed: Observed::Foreign,
            ..SecretView::of(&ar, None, KEY)
        };
        let stale = ["reader".to_string()];
        let facts = |stale_holding| Facts {
            ar: &ar,
            target: &target,
            held: None,
            memory: None,
            secret: Some(&foreign),
            api_seen: None,
            sts_seen: None,
            session_tags: false,
            token_audience: source::DEFAULT_AUDIENCE,
            source_key: None,
            stale_holding,
            enabled_sources: &SourceKind::ALL,
            policies: none,
            namespace_labels: Some(&fixtures::NO_LABELS),
            now: now(),
        };
        // Looked for only once denied: an allowed AssumedRole never scans.
        assert_eq!(decide(&facts(None)), Plan::FindStale);
        let plan = decide(&facts(Some(&stale)));
        let Plan::Revoke { failure, secrets } = plan else {
            panic!("credentials kept under the old name: {plan:?}")
        };
        assert_eq!(secrets, ["reader"]);
        assert_eq!(failure.reason, Reason::PolicyDenied);
        assert!(
            failure.message.ends_with("removed from Secret reader, which stays"),
            "{}",
            failure.message
        );
    }

    #[test]
    fn a_grant_that_returns_is_acted_on_at_once_and_a_namespace_unseen_is_waited_for() {
        let denied = AssumedRole::test().with_status(failing(5, "PolicyDenied", 1));
        let emptied = {
            let owner = denied.controller_owner_ref(&()).expect("owner");
            SecretView::of(&denied, Some(&secret::render_revoked(&denied, owner, KEY)), KEY)
        };
        // Five failures would mean a long backoff; a denial has none.
        assert!(matches!(
            judged(
                &denied,
                fixtures::allowing_all(),
                Some(&fixtures::NO_LABELS),
                None,
                Some(&emptied)
            ),
            Plan::Mint { .. }
        ));
        assert_eq!(
            judged(&denied, fixtures::allowing_all(), None, None, None),
            Plan::Wait {
                until: now() + NAMESPACE_WAIT
            }
        );
    }

    #[test]
    fn new_static_keys_mint_at_once_while_the_secret_still_serves() {
        let mut ar = AssumedRole::test();
        ar.spec.source.secret_ref = Some(crate::api::SourceSecretRef {
            name: "keys".into(),
            ..Default::default()
        });
        let view = own_secret(&ar, 10);
        let target = Target::of(&ar).expect("target");
        let with_key = |source_key| {
            decide(&Facts {
                ar: &ar,
                target: &target,
                held: None,
                memory: None,
                secret: Some(&view),
                api_seen: None,
                sts_seen: None,
                session_tags: false,
                token_audience: source::DEFAULT_AUDIENCE,
                source_key,
                stale_holding: Some(&[]),
                enabled_sources: &SourceKind::ALL,
                policies: fixtures::allowing_all(),
                namespace_labels: Some(&fixtures::NO_LABELS),
                now: now(),
            })
        };
        // Unreadable keys change nothing while the Secret is good.
        assert!(matches!(with_key(None), Plan::Keep { .. }));
        let Plan::Mint { serving, .. } = with_key(Some("fingerprint of new keys")) else {
            panic!("new keys were not used")
        };
        assert!(
            serving.is_some(),
            "the credentials in the Secret no longer count as serving"
        );
    }

    #[test]
    fn a_restore_counts_and_a_rename_starts_the_count_afresh() {
        let ar = AssumedRole::test();
        let missing = SecretView::of(&ar, None, KEY);
        let held = held_for(&ar, 1, "reader", true, 2);
        let Plan::Write { held: after, .. } = decide_with(&ar, Some(&held), None, Some(&missing)) else {
            panic!("no write")
        };
        assert_eq!(after.restores, 3);
        let mut renamed = ar.clone();
        renamed.spec.secret.name = Some("elsewhere".into());
        let Plan::Write { held: after, .. } = decide_with(&renamed, Some(&held), None, Some(&missing)) else {
            panic!("no write")
        };
        assert_eq!((after.restores, after.secret_name.as_str()), (0, "elsewhere"));
    }

    #[test]
    fn a_due_refresh_offers_the_current_secret_while_sts_is_asked() {
        let ar = AssumedRole::test();
        let due = own_secret(&ar, 50);
        let Plan::Mint { serving, .. } = decide_with(&ar, None, None, Some(&due)) else {
            panic!("no mint")
        };
        assert!(serving.is_some(), "ten minutes left: the Secret still serves");
        let nearly_expired = own_secret(&ar, 57);
        let Plan::Mint { serving, .. } = decide_with(&ar, None, None, Some(&nearly_expired)) else {
            panic!("no mint")
        };
        assert_eq!(
            serving, None,
            "within the floor, the Secret no longer counts as serving"
        );
    }

    #[test]
    fn memory_keeps_the_backoff_growing_when_status_could_not_be_written() {
        let ar = AssumedRole::test().with_status(failing(1, "GetSecret", 1));
        let memory = |failures| Remembered {
            failures,
            last: now(),
            reason: Reason::GetSecret,
            generation: Some(1),
            unreported: true,
        };
        let status = ar.status.clone().unwrap_or_default();
        // Memory of a later failure wins over the status.
        let m = memory(6);
        assert_eq!(failures(&status, Some(&m), Some(1)).map(|f| f.0), Some(6));
        // A restarted process has no memory: the status decides.
        assert_eq!(failures(&status, None, Some(1)).map(|f| f.0), Some(1));
        // Memory of another generation is not this spec's.
        assert_eq!(failures(&status, Some(&m), Some(2)), None);
        // The plan waits for the sixth step of the backoff, not the first.
        let target = Target::of(&ar).expect("target");
        let plan = decide(&Facts {
            ar: &ar,
            target: &target,
            held: None,
            memory: Some(&m),
            secret: None,
            api_seen: None,
            sts_seen: None,
            session_tags: false,
            token_audience: source::DEFAULT_AUDIENCE,
            source_key: None,
            stale_holding: Some(&[]),
            enabled_sources: &SourceKind::ALL,
            policies: fixtures::allowing_all(),
            namespace_labels: Some(&fixtures::NO_LABELS),
            now: now(),
        });
        let expected = schedule::retry_at(&target.uid, 6, m.last, None);
        assert_eq!(plan, Plan::Wait { until: expected });
    }

    #[test]
    fn once_the_api_server_or_sts_answers_again_their_failures_wait_no_longer() {
        let ar = AssumedRole::test();
        let target = Target::of(&ar).expect("target");
        // Decided half a second after the fifth failure: every backoff
        // waits at least a second, so without news the plan is to wait.
        let failed = now();
        let decided = failed + SignedDuration::from_millis(500);
        let memory = |reason| Remembered {
            failures: 5,
            last: failed,
            reason,
            generation: Some(1),
            unreported: true,
        };
        let plan = |m: &Remembered, api_seen, sts_seen| {
            decide(&Facts {
                ar: &ar,
                target: &target,
                held: None,
                memory: Some(m),
                secret: None,
                api_seen,
                sts_seen,
                session_tags: false,
                token_audience: source::DEFAULT_AUDIENCE,
                source_key: None,
                stale_holding: Some(&[]),
                enabled_sources: &SourceKind::ALL,
                policies: fixtures::allowing_all(),
                namespace_labels: Some(&fixtures::NO_LABELS),
                now: decided,
            })
        };
        let unreachable = memory(Reason::GetSecret);
        let sts_down = memory(Reason::StsUnavailable);
        let later = Some(failed + SignedDuration::from_millis(250));
        let earlier = Some(failed - SignedDuration::from_secs(5));
        let throttled = memory(Reason::Throttled);
        let denied = memory(Reason::AccessDenied);
        assert!(matches!(plan(&unreachable, None, None), Plan::Wait { .. }));
        assert!(matches!(plan(&unreachable, earlier, None), Plan::Wait { .. }));
        assert_eq!(plan(&unreachable, later, None), Plan::ReadSecret);
        // STS being down is not the API server's: the backoff stands...
        assert!(matches!(plan(&sts_down, later, None), Plan::Wait { .. }));
        assert!(matches!(plan(&sts_down, None, earlier), Plan::Wait { .. }));
        // ... until STS answers a call again.
        assert_eq!(plan(&sts_down, None, later), Plan::ReadSecret);
        assert_eq!(plan(&throttled, None, later), Plan::ReadSecret);
        // A refusal is about the role, not STS's health: its backoff stands.
        assert!(matches!(plan(&denied, None, later), Plan::Wait { .. }));
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        /// Keys the operator reads, and any others.
        fn annotation_key() -> impl Strategy<Value = String> {
            let ours: Vec<String> = secret::SIGNED_ANNOTATIONS
                .iter()
                .chain([&secret::DATA_HMAC_ANNOTATION, &secret::SOURCE_KEY_ANNOTATION])
                .map(|k| k.to_string())
                .collect();
            prop_oneof![proptest::sample::select(ours), "[ -~]{0,40}"]
        }

        /// Values that look like what the operator writes (a far-off
        /// expiration, an issue time), and any others.
        fn annotation_value() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("2999-01-01T00:00:00Z".to_string()),
                Just(now().to_string()),
                "[ -~]{0,40}",
            ]
        }

        fn data_key() -> impl Strategy<Value = String> {
            let ours: Vec<String> = secret::CREDENTIAL_KEYS.iter().map(|k| k.to_string()).collect();
            prop_oneof![proptest::sample::select(ours), "[ -~]{0,24}"]
        }

        proptest! {
            /// Whatever another writer does to an owned Secret's data and
            /// annotations, the decision never skips a due refresh, never
            /// keeps credentials other than those the operator wrote, and
            /// never plans a write under another name.
            #[test]
            fn no_edit_of_an_owned_secret_skips_a_due_refresh_or_moves_the_credentials(
                age in 0i64..60,
                data in proptest::collection::btree_map(data_key(), proptest::collection::vec(any::<u8>(), 0..48), 0..6),
                annotations in proptest::collection::btree_map(annotation_key(), annotation_value(), 0..6),
                replace_data in any::<bool>(),
            ) {
                let ar = AssumedRole::test();
                let target = Target::of(&ar).expect("target");
                let original = fixtures::owned_secret(&ar, SignedDuration::from_mins(age), SignedDuration::from_hours(1));
                let mut edited = original.clone();
                let edited_data = edited.data.get_or_insert_default();
                if replace_data {
                    edited_data.clear();
                }
                for (k, v) in data {
                    edited_data.insert(k, k8s_openapi::ByteString(v));
                }
                let meta = edited.metadata.annotations.get_or_insert_default();
                for (k, v) in annotations {
                    meta.insert(k, v);
                }
                let unedited = decide_with(&ar, None, None, Some(&SecretView::of(&ar, Some(&original), KEY)));
                let plan = decide_with(&ar, None, None, Some(&SecretView::of(&ar, Some(&edited), KEY)));
                match (&unedited, &plan) {
                    // Due: whatever the edit, STS is asked.
                    (Plan::Mint { .. }, Plan::Mint { .. }) => {}
                    (Plan::Mint { .. }, other) => {
                        return Err(TestCaseError::fail(format!("a due refresh became {other:?}")));
                    }
                    // Not due: kept only as the operator wrote it, and when
                    // the operator would have refreshed it anyway.
                    (Plan::Keep { .. }, Plan::Keep { held, .. }) => {
                        prop_assert_eq!(&plan, &unedited);
                        prop_assert_eq!(&held.secret_name, &target.secret_name);
                    }
                    (Plan::Keep { .. }, Plan::Mint { .. }) => {}
                    (original_plan, other) => {
                        return Err(TestCaseError::fail(format!("{original_plan:?} became {other:?}")));
                    }
                }
            }
        }
    }
}
