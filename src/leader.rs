//! Leader election on a Lease in the operator's namespace, so that only one
//! replica calls STS and writes while the others stand by with warm caches.
//!
//! As client-go's elector does: a standby asks for the Lease every
//! [`RETRY`], and takes it when it is free (released) or when its holder has
//! not renewed it for a whole lease duration, judged by this process's own
//! clock from when it last saw the record change (so clock skew between
//! nodes does not matter). The holder renews every third of the duration
//! and steps down when it could not renew for two thirds of it. On shutdown
//! the holder releases the Lease, and a standby takes it within a retry.

use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
};
use kube::{
    Api, Client,
    api::{PostParams, ResourceExt},
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Name of the Lease.
pub const LEASE_NAME: &str = "assumed-role-operator";

/// How often a standby asks for the Lease: the longest a hand-over after a
/// release takes.
pub const RETRY: Duration = Duration::from_secs(1);

/// What one look at the Lease decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Create the Lease, holding it.
    Create,
    /// Take or renew the Lease (an update that fails if it changed since).
    Take,
    /// Someone else holds it and renews it.
    Wait,
}

/// The record as last seen, and when this process saw it change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// Holder, renew time and transitions: what changes when a holder acts.
    pub record: (Option<String>, Option<String>, Option<i32>),
    /// When this process saw `record` change.
    pub at: Instant,
}

/// Decides what to do with the Lease `lease` (absent: `None`), seen at
/// `now`, given what was seen before. Pure.
pub fn step(
    lease: Option<&Lease>,
    identity: &str,
    duration: Duration,
    seen: &mut Option<Observed>,
    now: Instant,
) -> Step {
    let Some(lease) = lease else {
        return Step::Create;
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let record = (
        spec.holder_identity.clone().filter(|h| !h.is_empty()),
        spec.renew_time.as_ref().map(|t| t.0.to_string()),
        spec.lease_transitions,
    );
    if seen.as_ref().is_none_or(|s| s.record != record) {
        *seen = Some(Observed {
            record: record.clone(),
            at: now,
        });
    }
    let Some(holder) = record.0 else {
        // Released: free for the taking.
        return Step::Take;
    };
    if holder == identity {
        return Step::Take;
    }
    let held_for = spec
        .lease_duration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map_or(duration, Duration::from_secs);
    let since = seen.as_ref().map_or(now, |s| s.at);
    if now.duration_since(since) > held_for {
        Step::Take
    } else {
        Step::Wait
    }
}

/// The Lease record for `identity` holding it from `now`, built on `old`.
fn held(old: Option<&Lease>, namespace: &str, identity: &str, duration: Duration, now: Timestamp) -> Lease {
    let old_spec = old.and_then(|l| l.spec.clone()).unwrap_or_default();
    let same_holder = old_spec.holder_identity.as_deref() == Some(identity);
    let time = MicroTime(now);
    Lease {
        metadata: ObjectMeta {
            name: Some(LEASE_NAME.into()),
            namespace: Some(namespace.into()),
            resource_version: old.and_then(|l| l.resource_version()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(identity.into()),
            lease_duration_seconds: Some(i32::try_from(duration.as_secs()).unwrap_or(i32::MAX)),
            acquire_time: if same_holder {
                old_spec.acquire_time.clone()
            } else {
                Some(time.clone())
            },
            renew_time: Some(time),
            lease_transitions: Some(old_spec.lease_transitions.unwrap_or(0) + i32::from(old.is_some() && !same_holder)),
            ..LeaseSpec::default()
        }),
    }
}

/// Takes part in the election until `shutdown`: `leading` says whether this
/// process holds the Lease. Returns true if it lost the Lease while leading
/// (the caller should stop at once), false on shutdown, after releasing the
/// Lease if it held it. Call [`release`] only after the work that the Lease
/// guards has stopped: this returns on shutdown without releasing.
pub async fn elect(
    client: Client,
    namespace: &str,
    identity: &str,
    duration: Duration,
    leading: watch::Sender<bool>,
    shutdown: CancellationToken,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
) -> bool {
    let api: Api<Lease> = Api::namespaced(client, namespace);
    let renew_every = (duration / 3).max(RETRY);
    let renew_deadline = duration * 2 / 3;
    let mut seen = None;
    let mut last_renewed: Option<Instant> = None;
    let mut first = true;
    info!(lease = LEASE_NAME, %namespace, %identity, "waiting for the leader lease");
    loop {
        let is_leader = *leading.borrow();
        let wait = if is_leader { renew_every } else { RETRY };
        if !std::mem::take(&mut first) {
            tokio::select! {
                () = shutdown.cancelled() => return false,
                () = tokio::time::sleep(wait) => {}
            }
        }
        // tokio's clock, so that a test with a paused clock is exact.
        let asked = tokio::time::Instant::now().into_std();
        // Every round, its get and its create or replace together, ends
        // within the renew deadline (for a leader, what is left of it since
        // the last renewal): a request that hangs, as on a network that
        // drops packets, must not keep this replica leading past the point
        // where a standby may take the Lease.
        let deadline = attempt_deadline(is_leader, last_renewed, renew_deadline, asked);
        let attempt = async {
            match api.get_opt(LEASE_NAME).await {
                Ok(lease) => match step(lease.as_ref(), identity, duration, &mut seen, asked) {
                    Step::Wait => false,
                    Step::Create => api
                        .create(
                            &PostParams::default(),
                            &held(None, namespace, identity, duration, Timestamp::now()),
                        )
                        .await
                        .map_err(|e| debug!(error = %e, "creating the lease"))
                        .is_ok(),
                    Step::Take => api
                        .replace(
                            LEASE_NAME,
                            &PostParams::default(),
                            &held(lease.as_ref(), namespace, identity, duration, Timestamp::now()),
                        )
                        .await
                        .map_err(|e| debug!(error = %e, "taking or renewing the lease"))
                        .is_ok(),
                },
                Err(e) => {
                    debug!(error = %e, "reading the lease");
                    false
                }
            }
        };
        let took = tokio::select! {
            () = shutdown.cancelled() => return false,
            took = tokio::time::timeout(deadline, attempt) => took.unwrap_or_else(|_| {
                warn!(lease = LEASE_NAME, deadline_ms = deadline.as_millis(), "no answer about the lease within the renew deadline");
                false
            }),
        };
        let now = tokio::time::Instant::now().into_std();
        if took {
            // Counted from before the request: the record says so at most.
            last_renewed = Some(asked);
            if !is_leader {
                info!(lease = LEASE_NAME, %identity, "acquired the leader lease");
                leading.send_replace(true);
                metrics.leader.set(1);
            }
        } else if is_leader && last_renewed.is_none_or(|t| now.duration_since(t) >= renew_deadline) {
            warn!(lease = LEASE_NAME, "lost the leader lease; stopping");
            leading.send_replace(false);
            metrics.leader.set(0);
            return true;
        }
    }
}

/// How long one round of the election may take: a leader's must end
/// before its renew deadline runs out (counted from its last renewal), a
/// standby's within a renew deadline.
pub fn attempt_deadline(
    is_leader: bool,
    last_renewed: Option<Instant>,
    renew_deadline: Duration,
    now: Instant,
) -> Duration {
    match (is_leader, last_renewed) {
        (true, Some(at)) => renew_deadline.saturating_sub(now.duration_since(at)),
        _ => renew_deadline,
    }
}

/// Gives the Lease up, if `identity` still holds it, so that a standby takes
/// over within [`RETRY`] rather than after the lease duration.
pub async fn release(client: Client, namespace: &str, identity: &str) {
    let api: Api<Lease> = Api::namespaced(client, namespace);
    let Ok(Some(mut lease)) = api.get_opt(LEASE_NAME).await else {
        return;
    };
    let Some(spec) = lease.spec.as_mut() else {
        return;
    };
    if spec.holder_identity.as_deref() != Some(identity) {
        return;
    }
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(MicroTime(Timestamp::now()));
    match api.replace(LEASE_NAME, &PostParams::default(), &lease).await {
        Ok(_) => info!(lease = LEASE_NAME, "released the leader lease"),
        Err(e) => warn!(error = %e, "could not release the leader lease; a standby takes it when it expires"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: Option<&str>, renewed: &str, transitions: i32) -> Lease {
        Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_string),
                lease_duration_seconds: Some(15),
                renew_time: Some(MicroTime(renewed.parse().unwrap_or(Timestamp::UNIX_EPOCH))),
                lease_transitions: Some(transitions),
                ..LeaseSpec::default()
            }),
        }
    }

    const D: Duration = Duration::from_secs(15);

    #[test]
    fn a_free_or_own_lease_is_taken_and_anothers_waited_out_by_the_local_clock() {
        let start = Instant::now();
        let mut seen = None;
        assert_eq!(step(None, "me", D, &mut seen, start), Step::Create);
        let other = lease(Some("other"), "2026-11-30T00:00:00Z", 0);
        // However old its renew time by the holder's clock, a record first
        // seen now is waited out for a whole duration.
        assert_eq!(step(Some(&other), "me", D, &mut seen, start), Step::Wait);
        assert_eq!(
            step(Some(&other), "me", D, &mut seen, start + Duration::from_secs(14)),
            Step::Wait
        );
        // Renewed in between: the wait starts again.
        let renewed = lease(Some("other"), "2026-11-30T00:00:10Z", 0);
        let later = start + Duration::from_secs(14);
        assert_eq!(step(Some(&renewed), "me", D, &mut seen, later), Step::Wait);
        assert_eq!(
            step(Some(&renewed), "me", D, &mut seen, later + Duration::from_secs(10)),
            Step::Wait
        );
        assert_eq!(
            step(Some(&renewed), "me", D, &mut seen, later + Duration::from_secs(16)),
            Step::Take
        );
        // Released, or held by this process: taken at once.
        let released = lease(None, "2026-11-30T00:00:20Z", 0);
        assert_eq!(step(Some(&released), "me", D, &mut seen, later), Step::Take);
        let own = lease(Some("me"), "2026-11-30T00:00:20Z", 1);
        assert_eq!(step(Some(&own), "me", D, &mut None, start), Step::Take);
    }

    #[test]
    fn a_leaders_round_ends_by_its_renew_deadline_and_a_standbys_within_one() {
        let start = Instant::now();
        let deadline = Duration::from_secs(10);
        assert_eq!(attempt_deadline(false, None, deadline, start), deadline);
        assert_eq!(
            attempt_deadline(true, Some(start), deadline, start + Duration::from_secs(4)),
            Duration::from_secs(6)
        );
        assert_eq!(
            attempt_deadline(true, Some(start), deadline, start + Duration::from_secs(12)),
            Duration::ZERO
        );
    }

    /// An API server that accepts the connection and never answers: the
    /// leader stops leading within its renew deadline instead of waiting on
    /// the request (tokio's paused clock, so exact).
    #[tokio::test(start_paused = true)]
    async fn a_leader_whose_lease_requests_hang_stops_leading_by_its_renew_deadline() {
        let (service, mut handle) =
            tower_test::mock::pair::<http::Request<kube::client::Body>, http::Response<kube::client::Body>>();
        let client = Client::new(service, "default");
        let lease_json = |holder: &str| {
            serde_json::json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": LEASE_NAME, "namespace": "ops", "resourceVersion": "1"},
                "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15}})
        };
        // The first round answers: this replica leads. Every later request
        // is taken and never answered.
        let server = tokio::spawn(async move {
            let mut answered = 0;
            while let Some((request, send)) = handle.next_request().await {
                if answered < 2 {
                    answered += 1;
                    let body = if request.method() == http::Method::GET {
                        lease_json("").to_string()
                    } else {
                        lease_json("me").to_string()
                    };
                    send.send_response(
                        http::Response::builder()
                            .status(200)
                            .body(kube::client::Body::from(body.into_bytes()))
                            .expect("response"),
                    );
                } else {
                    // Held, never answered.
                    std::mem::forget(send);
                }
            }
        });
        let (tx, mut rx) = watch::channel(false);
        let started = tokio::time::Instant::now();
        let elector = tokio::spawn(elect(
            client,
            "ops",
            "me",
            Duration::from_secs(15),
            tx,
            CancellationToken::new(),
            std::sync::Arc::new(crate::metrics::Metrics::default()),
        ));
        rx.wait_for(|leading| *leading).await.expect("leads");
        let led_at = tokio::time::Instant::now();
        // Bounded: a leader that waits on the hung request forever fails
        // here instead of hanging the test.
        tokio::time::timeout(Duration::from_secs(60), rx.wait_for(|leading| !*leading))
            .await
            .expect("still leading 60 s after the last renewal, every Lease request hanging")
            .expect("stops leading");
        let stepped_down = led_at.elapsed();
        assert!(elector.await.expect("the elector"), "the loss is reported");
        // Renew deadline: two thirds of 15 s, from the last renewal.
        assert!(
            stepped_down <= Duration::from_secs(10),
            "led {stepped_down:?} after the last renewal with every request hanging (started {:?} ago)",
            started.elapsed()
        );
        server.abort();
    }

    #[test]
    fn taking_over_counts_a_transition_and_renewing_keeps_the_acquire_time() {
        let now: Timestamp = "2026-11-30T01:00:00Z".parse().unwrap_or(Timestamp::UNIX_EPOCH);
        let other = lease(Some("other"), "2026-11-30T00:00:00Z", 2);
        let taken = held(Some(&other), "ns", "me", D, now);
        let spec = taken.spec.clone().unwrap_or_default();
        assert_eq!(spec.holder_identity.as_deref(), Some("me"));
        assert_eq!(spec.lease_transitions, Some(3));
        assert_eq!(spec.acquire_time.map(|t| t.0), Some(now));
        let later = now + jiff::SignedDuration::from_secs(5);
        let renewed = held(Some(&taken), "ns", "me", D, later).spec.unwrap_or_default();
        assert_eq!(renewed.lease_transitions, Some(3));
        assert_eq!(renewed.acquire_time.map(|t| t.0), Some(now));
        assert_eq!(renewed.renew_time.map(|t| t.0), Some(later));
        let created = held(None, "ns", "me", D, now).spec.unwrap_or_default();
        assert_eq!(created.lease_transitions, Some(0));
    }
}
