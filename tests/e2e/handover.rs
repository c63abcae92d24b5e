//! Hand-over between replicas: every replica keeps warm caches, only the
//! Lease holder calls STS (counted at the STS stand-in, per process by the
//! app id in its User-Agent), SIGTERM hands the Lease over at once, SIGKILL
//! within the lease duration, and no AssumedRole reaches its floor.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use assumed_role_operator::api::AssumedRole;
use jiff::Timestamp;
use kube::Api;
use serde_json::Value;

use crate::support::*;

const LEASE_SECONDS: u64 = 15;
const ROLES: usize = 6;
/// The refresh floor: credentials are refreshed at least this long before
/// they expire.
const FLOOR: i64 = 300;

/// The AssumeRole calls at the stand-in, as (app, time).
fn calls(report: &Value) -> Vec<(String, f64)> {
    report["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .map(|s| {
            (
                s["app"].as_str().unwrap_or_default().to_string(),
                s["at"].as_f64().unwrap_or(0.0),
            )
        })
        .collect()
}

fn replica(ns: &str, app: &str, sts: &str) -> Operator {
    replica_with(ns, app, sts, &[])
}

/// A replica with more environment (a `KUBECONFIG` of its own, say).
fn replica_with(ns: &str, app: &str, sts: &str, env: &[(&str, &str)]) -> Operator {
    let lease = LEASE_SECONDS.to_string();
    let mut all = vec![("AWS_ENDPOINT_URL_STS", sts), ("AWS_SDK_UA_APP_ID", app)];
    all.extend_from_slice(env);
    Operator::start(ns, &["--leader-elect", "--lease-duration-seconds", &lease], &all)
}

/// Once `leader` leads: a standby `replica-b`, ready, and the AssumedRoles
/// `role-0`.. of `ns`, Ready, refreshed 10 s after each issue so that
/// refreshes are due all the time.
async fn standby_and_roles(leader: &Operator, ns: &str, roles: &Api<AssumedRole>, sts: &str) -> Operator {
    leads(leader, Instant::now(), Duration::from_secs(30)).await;
    let b = replica(ns, "replica-b", sts);
    b.wait_ready().await;
    apply_ready(roles, ns, ROLES, "  durationSeconds: 900\n  refreshBefore: 890s\n").await;
    b
}

/// Waits until `operator` logs that it leads; returns how long that took.
async fn leads(operator: &Operator, since: Instant, limit: Duration) -> Duration {
    poll(limit, Duration::from_millis(50), "a new leader", || async {
        operator
            .output()
            .contains("acquired the leader lease")
            .then(|| since.elapsed())
    })
    .await
}

/// Waits until every AssumedRole was refreshed after `after`, and checks
/// that none was refreshed later than its floor: each refresh came while
/// the credentials it replaced still had more than the floor left.
async fn all_refreshed_before_their_floor(roles: &Api<AssumedRole>, after: Timestamp, before: &[(String, Timestamp)]) {
    for (name, expired_at) in before {
        let ar = wait_for(
            roles,
            name,
            Duration::from_secs(60),
            "a refresh after the hand-over",
            |ar: Option<&AssumedRole>| {
                ar.and_then(|a| a.status.as_ref())
                    .and_then(|s| s.last_refresh_time.as_ref())
                    .is_some_and(|t| t.0 > after)
            },
        )
        .await;
        let refreshed = ar.status.and_then(|s| s.last_refresh_time).expect("lastRefreshTime").0;
        let left = expired_at.duration_since(refreshed).as_secs();
        assert!(
            left > FLOOR,
            "{name} was refreshed with {left} s left, inside the {FLOOR} s floor"
        );
    }
}

/// The expiration of each AssumedRole's current credentials.
async fn expirations(roles: &Api<AssumedRole>) -> Vec<(String, Timestamp)> {
    let mut out = Vec::new();
    for i in 0..ROLES {
        let name = format!("role-{i}");
        let ar = roles.get(&name).await.expect("AssumedRole");
        out.push((
            name,
            ar.status.and_then(|s| s.expiration_time).expect("expirationTime").0,
        ));
    }
    out
}

#[tokio::test]
#[ignore = "needs the local control plane; run with `make test`"]
async fn only_the_leader_calls_sts_and_a_standby_takes_over_on_sigterm_and_on_sigkill() {
    let logs = tempfile::tempdir().expect("logs dir");
    // Every set lives 900 s and is refreshed 10 s after it is issued, so
    // refreshes are due all the time.
    let standin = StandIn::start(900, 0, logs.path());
    let sts = standin.url.as_str();
    let client = client().await;
    let ns = TestNamespace::create(&client, "handover").await;
    let roles: Api<AssumedRole> = Api::namespaced(client.clone(), &ns.name);
    let mut a = replica(&ns.name, "replica-a", sts);
    let b = standby_and_roles(&a, &ns.name, &roles, sts).await;
    // Long enough for every AssumedRole to be refreshed once more.
    let watched = Instant::now();
    poll(
        Duration::from_secs(60),
        Duration::from_millis(500),
        "a round of refreshes",
        || async {
            let report = standin.report().await;
            (calls(&report).len() >= 2 * ROLES).then_some(())
        },
    )
    .await;
    let report = standin.report().await;
    let by: Vec<String> = calls(&report).into_iter().map(|(app, _)| app).collect();
    assert!(
        by.iter().all(|app| app == "replica-a"),
        "the standby called STS: {by:?}"
    );
    assert!(!b.output().contains("acquired the leader lease"), "two leaders");
    eprintln!(
        "leader only: {} AssumeRole calls in {:.0} s, all by the leader",
        by.len(),
        watched.elapsed().as_secs_f64()
    );

    // SIGTERM on the leader: it releases the Lease, the standby leads at once.
    let before = expirations(&roles).await;
    let handed = Timestamp::now();
    let signalled = Instant::now();
    let (status, stopped) = a.terminate(Duration::from_secs(30)).await.expect("the leader stopped");
    assert!(status.success(), "exit status {status}");
    // The old leader is gone: every call from now on is another's.
    let a_gone = Timestamp::now();
    let sigterm = leads(&b, signalled, Duration::from_secs(30)).await;
    assert!(
        sigterm < Duration::from_secs(LEASE_SECONDS),
        "the standby waited the lease out ({sigterm:?}) instead of taking the released Lease"
    );
    assert!(a.output().contains("released the leader lease"));
    all_refreshed_before_their_floor(&roles, handed, &before).await;
    eprintln!(
        "SIGTERM: leader stopped in {} ms, standby leading {} ms after the signal",
        stopped.as_millis(),
        sigterm.as_millis()
    );

    // SIGKILL on the new leader: a third replica takes over once the Lease
    // has gone unrenewed for its duration.
    let mut b = b;
    let c = replica(&ns.name, "replica-c", sts);
    c.wait_ready().await;
    let before = expirations(&roles).await;
    let killed_at = Timestamp::now();
    let killed = Instant::now();
    b.stop();
    let b_gone = Timestamp::now();
    let sigkill = leads(&c, killed, Duration::from_secs(LEASE_SECONDS + 30)).await;
    assert!(
        sigkill < Duration::from_secs(LEASE_SECONDS + 5),
        "took {sigkill:?} with a lease of {LEASE_SECONDS} s"
    );
    all_refreshed_before_their_floor(&roles, killed_at, &before).await;
    eprintln!(
        "SIGKILL: standby leading {} ms after the kill (lease {LEASE_SECONDS} s)",
        sigkill.as_millis()
    );

    // At STS, after each hand-over only the new leader called.
    let report = standin.report().await;
    let seconds = |t: Timestamp| t.as_millisecond() as f64 / 1000.0;
    for (app, at) in calls(&report) {
        let expected = if at < seconds(a_gone) {
            "replica-a"
        } else if at < seconds(b_gone) {
            "replica-b"
        } else {
            "replica-c"
        };
        assert_eq!(app, expected, "a call at {at} by the wrong replica");
    }
}

#[tokio::test]
#[ignore = "needs the local control plane; run with `make test`"]
async fn a_leader_whose_network_goes_silent_stops_leading_before_its_lease_expires() {
    let logs = tempfile::tempdir().expect("logs dir");
    let standin = StandIn::start(900, 0, logs.path());
    let sts = standin.url.as_str();
    let client = client().await;
    let ns = TestNamespace::create(&client, "silent-lease").await;
    let roles: Api<AssumedRole> = Api::namespaced(client.clone(), &ns.name);
    // The leader reaches the API server through a proxy that can go silent:
    // connections open, packets dropped, nothing refused.
    let kubeconfig = std::env::var("KUBECONFIG").expect("KUBECONFIG");
    let (proxy, proxied) = Proxy::in_front_of(Path::new(&kubeconfig), logs.path()).await;
    let proxied = proxied.display().to_string();
    let mut a = replica_with(&ns.name, "replica-a", sts, &[("KUBECONFIG", proxied.as_str())]);
    let b = standby_and_roles(&a, &ns.name, &roles, sts).await;

    let cut = Instant::now();
    proxy.cut(true);
    // Both logs watched at once: the leader must say it stopped leading
    // before the standby takes the Lease.
    let (mut a_down, mut b_up) = (None, None);
    let mut a_down_at = Timestamp::now();
    let limit = Duration::from_secs(LEASE_SECONDS + 30);
    while (a_down.is_none() || b_up.is_none()) && cut.elapsed() < limit {
        if a_down.is_none() && a.output().contains("lost the leader lease; stopping") {
            a_down = Some(cut.elapsed());
            a_down_at = Timestamp::now();
        }
        if b_up.is_none() && b.output().contains("acquired the leader lease") {
            b_up = Some(cut.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let a_down = a_down.expect("the leader cut off by a silent network never stopped leading");
    let b_up = b_up.expect("the standby never took over");
    assert!(
        a_down < b_up,
        "two leaders: the standby led {b_up:?} after the cut, the old leader stopped only {a_down:?} after it"
    );
    assert!(
        a_down <= Duration::from_secs(LEASE_SECONDS) * 2 / 3 + Duration::from_secs(1),
        "stopped leading {a_down:?} after the cut, past the renew deadline"
    );
    // The old leader ends by itself, its network still silent.
    let status = a
        .exits_within(Duration::from_secs(60))
        .await
        .expect("the old leader exited");
    assert!(
        !status.success(),
        "a lost Lease ends the process with an error: {status}"
    );
    proxy.cut(false);
    eprintln!(
        "silent network: the leader stopped leading {} ms after the cut, the standby led {} ms after it (lease {LEASE_SECONDS} s)",
        a_down.as_millis(),
        b_up.as_millis()
    );

    // Every AssumedRole refreshed again, and after the old leader stopped
    // every STS call came from the new one: nothing was written by both.
    let seconds = |t: Timestamp| t.as_millisecond() as f64 / 1000.0;
    poll(
        Duration::from_secs(60),
        Duration::from_millis(500),
        "refreshes by the new leader",
        || async {
            let report = standin.report().await;
            let by_b = calls(&report).iter().filter(|(app, _)| app == "replica-b").count();
            (by_b >= ROLES).then_some(())
        },
    )
    .await;
    for (app, at) in calls(&standin.report().await) {
        if at > seconds(a_down_at) {
            assert_eq!(
                app, "replica-b",
                "a call at {at} by the replica that had stopped leading"
            );
        }
    }
}
