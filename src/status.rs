//! Decides what the status says: the conditions and fields that follow from
//! the old status, how the reconcile ended, and the time. Pure; writing it is
//! the controller's job.
//!
//! `Ready` tells what a pod sees: `True` while the Secret holds good
//! credentials for the current spec, even when a refresh fails (as
//! cert-manager keeps a Certificate Ready while its renewal fails).
//! `Refreshed` tells whether the last attempt to keep them fresh worked, and
//! when the next one is. `RefreshAdjusted` says that a refresh setting could
//! not be used as written.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::{
    api::AssumedRoleStatus,
    outcome::{Failure, Reason},
    plan::{Held, Serving},
    schedule::{Adjustment, Refresh},
};

/// The condition type that says whether pods can use the Secret.
pub const READY: &str = "Ready";
/// The condition type that says whether the last refresh attempt worked.
pub const REFRESHED: &str = "Refreshed";
/// The condition type that says a refresh setting was adjusted.
pub const REFRESH_ADJUSTED: &str = "RefreshAdjusted";
/// The condition type that says the lifetime asked of STS is not the
/// spec's.
pub const DURATION_ADJUSTED: &str = "DurationAdjusted";

/// How a reconcile ended, as far as the status is concerned.
#[derive(Debug, Clone, Copy)]
pub enum Report<'a> {
    /// The Secret holds `held`, to be refreshed at `refresh`.
    Serving {
        /// The credentials in the Secret.
        held: &'a Held,
        /// When they will be refreshed.
        refresh: Refresh,
        /// When they were obtained from STS, if this reconcile did.
        refreshed_at: Option<Timestamp>,
        /// The `spec.durationSeconds` that a chained session could not
        /// ask for, if any.
        clamped_from: Option<i32>,
    },
    /// Something failed or stopped the operator.
    Failed {
        /// What.
        failure: &'a Failure,
        /// What the Secret still gives pods.
        serving: Option<Serving>,
        /// Failed attempts in a row, this one included when it counts.
        failures: i32,
        /// When this one failed, when it counts.
        failed_at: Option<Timestamp>,
        /// When the next try is, when there is one.
        retry_at: Option<Timestamp>,
    },
}

/// The status after a reconcile that ended with `report`, for the spec of
/// `generation`, at `now`.
pub fn next(
    old: &AssumedRoleStatus,
    generation: Option<i64>,
    secret_name: &str,
    report: Report<'_>,
    now: Timestamp,
) -> AssumedRoleStatus {
    let condition = |type_: &str, status: bool, reason: Reason, message: String| {
        make_condition(old, generation, type_, status, reason, message, now)
    };
    match report {
        Report::Serving {
            held,
            refresh,
            refreshed_at,
            clamped_from,
        } => {
            let expires = held.creds.expiration;
            let mut conditions = vec![
                condition(
                    READY,
                    true,
                    Reason::CredentialsReady,
                    format!("Secret {secret_name} holds credentials valid until {expires}"),
                ),
                condition(
                    REFRESHED,
                    true,
                    Reason::CredentialsRefreshed,
                    format!("credentials issued at {}; next refresh at {}", held.issued, refresh.at),
                ),
            ];
            conditions.extend(adjusted(old, generation, refresh.adjustment, now));
            conditions.extend(clamped_from.map(|asked| {
                condition(
                    DURATION_ADJUSTED,
                    true,
                    Reason::ClampedForChaining,
                    format!(
                        "spec.durationSeconds asks for {asked} s, but STS caps a chained session \
                         (spec.source.assumedRoleRef) at {} s, which is asked instead",
                        crate::source::CHAINED_MAX_SECONDS
                    ),
                )
            }));
            AssumedRoleStatus {
                conditions,
                expiration_time: Some(Time(expires)),
                refresh_time: Some(Time(refresh.at)),
                // Served credentials were issued at their last refresh: a
                // reconcile that reads the status before its own last write
                // reached the cache must write the same time, not the
                // refresh before (that cost a second status write after a
                // third of the refreshes, and set the time back).
                last_refresh_time: Some(Time(
                    refreshed_at
                        .unwrap_or(held.issued)
                        .max(old.last_refresh_time.as_ref().map_or(held.issued, |t| t.0)),
                )),
                last_failure_time: old.last_failure_time.clone(),
                consecutive_failures: 0,
                assumed_role_arn: held.assumed_role_arn.clone(),
                source_identity: held.source_identity.clone(),
                observed_generation: generation,
                // Written apart (by the image pull Secret's step): kept as is.
                image_pull_secret: old.image_pull_secret.clone(),
            }
        }
        Report::Failed {
            failure,
            serving,
            failures,
            failed_at,
            retry_at,
        } => {
            let retry = retry_at.map_or_else(String::new, |t| format!("; next try at {t}"));
            let ready = match serving {
                Some(s) => condition(
                    READY,
                    true,
                    Reason::CredentialsReady,
                    format!(
                        "Secret {secret_name} holds credentials valid until {}; refreshing them failed ({})",
                        s.expires, failure.reason
                    ),
                ),
                None => condition(READY, false, failure.reason, failure.message.clone()),
            };
            let refreshed = condition(REFRESHED, false, failure.reason, format!("{}{retry}", failure.message));
            let mut conditions = vec![ready, refreshed];
            // The adjustment, if any, still describes the credentials in the
            // Secret.
            if serving.is_some() {
                conditions.extend(
                    old.conditions
                        .iter()
                        .filter(|c| c.type_ == REFRESH_ADJUSTED || c.type_ == DURATION_ADJUSTED)
                        .cloned(),
                );
            }
            let mut status = old.clone();
            status.conditions = conditions;
            status.observed_generation = generation;
            status.consecutive_failures = failures;
            if let Some(t) = failed_at {
                status.last_failure_time = Some(Time(t));
            }
            // No refresh is planned while failing; the expiration of what
            // the Secret holds stays for people to see.
            status.refresh_time = None;
            status
        }
    }
}

fn adjusted(
    old: &AssumedRoleStatus,
    generation: Option<i64>,
    adjustment: Option<Adjustment>,
    now: Timestamp,
) -> Option<Condition> {
    let (reason, text) = match adjustment? {
        Adjustment::ClampedToFloor => (
            Reason::ClampedToFloor,
            "the refresh setting would refresh later than 5 minutes before expiry; refreshing 5 minutes before",
        ),
        Adjustment::FellBackToDefault => (
            Reason::FellBackToDefault,
            "the refresh setting is longer than the lifetime STS granted; refreshing when a third of it remains",
        ),
    };
    Some(make_condition(
        old,
        generation,
        REFRESH_ADJUSTED,
        true,
        reason,
        text.into(),
        now,
    ))
}

fn make_condition(
    old: &AssumedRoleStatus,
    generation: Option<i64>,
    type_: &str,
    status: bool,
    reason: Reason,
    message: String,
    now: Timestamp,
) -> Condition {
    let status = if status { "True" } else { "False" };
    // Keep the transition time while the status stays the same.
    let last_transition_time = old
        .conditions
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or(Time(now), |c| c.last_transition_time.clone());
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.as_str().into(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

/// Whether going from `old` to `new` is a transition worth an Event: the
/// reason of `Ready` or `Refreshed` changed, or `Ready` flipped.
pub fn is_transition(old: &AssumedRoleStatus, new: &AssumedRoleStatus) -> bool {
    let key = |s: &AssumedRoleStatus, t: &str| {
        s.conditions
            .iter()
            .find(|c| c.type_ == t)
            .map(|c| (c.status.clone(), c.reason.clone()))
    };
    key(old, READY) != key(new, READY) || key(old, REFRESHED) != key(new, REFRESHED)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    fn held() -> Held {
        Held {
            creds: fixtures::credentials(at(3600)),
            issued: at(0),
            spec_hash: "h".into(),
            assumed_role_arn: Some("arn:aws:sts::123456789012:assumed-role/reader/s".into()),
            source_identity: None,
            secret_name: "reader".into(),
            written: true,
            restores: 0,
            source_key: None,
        }
    }

    fn condition<'a>(s: &'a AssumedRoleStatus, t: &str) -> (&'a str, &'a str) {
        s.conditions
            .iter()
            .find(|c| c.type_ == t)
            .map(|c| (c.status.as_str(), c.reason.as_str()))
            .unwrap_or(("", ""))
    }

    fn ready() -> AssumedRoleStatus {
        let refresh = Refresh {
            at: at(2400),
            adjustment: None,
        };
        let held = held();
        let report = Report::Serving {
            held: &held,
            refresh,
            refreshed_at: Some(at(0)),
            clamped_from: None,
        };
        next(&AssumedRoleStatus::default(), Some(1), "reader", report, at(0))
    }

    #[test]
    fn fresh_credentials_are_ready_and_refreshed() {
        let s = ready();
        assert_eq!(condition(&s, READY), ("True", "CredentialsReady"));
        assert_eq!(condition(&s, REFRESHED), ("True", "CredentialsRefreshed"));
        assert_eq!(s.refresh_time, Some(Time(at(2400))));
        assert_eq!(s.expiration_time, Some(Time(at(3600))));
        assert_eq!(s.consecutive_failures, 0);
    }

    #[test]
    fn credentials_served_without_a_refresh_report_when_they_were_issued() {
        // The status as a reconcile sees it before the mint's status patch
        // reached its cache: the status it writes is the mint's, not one
        // without lastRefreshTime.
        let held = held();
        let report = Report::Serving {
            held: &held,
            refresh: Refresh {
                at: at(2400),
                adjustment: None,
            },
            refreshed_at: None,
            clamped_from: None,
        };
        let kept = next(&AssumedRoleStatus::default(), Some(1), "reader", report, at(5));
        assert_eq!(kept.last_refresh_time, Some(Time(held.issued)));
        assert_eq!(kept.last_refresh_time, ready().last_refresh_time);
        // Nor the refresh before, when the cache still holds the status that
        // refresh wrote.
        let before = AssumedRoleStatus {
            last_refresh_time: Some(Time(held.issued - jiff::SignedDuration::from_mins(40))),
            ..ready()
        };
        let kept = next(&before, Some(1), "reader", report, at(5));
        assert_eq!(kept.last_refresh_time, Some(Time(held.issued)));
    }

    #[test]
    fn a_failed_refresh_keeps_ready_while_the_secret_still_serves() {
        let old = ready();
        let failure = Failure::new(Reason::StsUnavailable, "STS unavailable: could not connect");
        let report = Report::Failed {
            failure: &failure,
            serving: Some(Serving { expires: at(3600) }),
            failures: 1,
            failed_at: Some(at(2400)),
            retry_at: Some(at(2404)),
        };
        let s = next(&old, Some(1), "reader", report, at(2400));
        assert_eq!(condition(&s, READY), ("True", "CredentialsReady"));
        assert_eq!(condition(&s, REFRESHED), ("False", "STSUnavailable"));
        assert!(is_transition(&old, &s), "the failed refresh is news");
        let ready_since = |s: &AssumedRoleStatus| {
            s.conditions
                .iter()
                .find(|c| c.type_ == READY)
                .map(|c| c.last_transition_time.clone())
        };
        assert_eq!(ready_since(&s), ready_since(&old), "Ready never flipped");
        assert_eq!(s.consecutive_failures, 1);
        assert_eq!(s.expiration_time, Some(Time(at(3600))));
        assert_eq!(s.refresh_time, None);
    }

    #[test]
    fn a_failure_with_nothing_to_serve_is_not_ready_and_a_repeat_is_no_transition() {
        let failure = Failure::new(Reason::AccessDenied, "access denied: not allowed");
        let report = |n| Report::Failed {
            failure: &failure,
            serving: None,
            failures: n,
            failed_at: Some(at(n.into())),
            retry_at: None,
        };
        let first = next(&ready(), Some(2), "reader", report(1), at(1));
        assert_eq!(condition(&first, READY), ("False", "AccessDenied"));
        let second = next(&first, Some(2), "reader", report(2), at(2));
        assert!(!is_transition(&first, &second), "a repeat is no new Event");
        assert_eq!(second.consecutive_failures, 2);
        assert_eq!(second.observed_generation, Some(2));
    }
}
