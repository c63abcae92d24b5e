//! The STS budget: one rate for every STS call of the operator, counted at
//! the STS stand-in, and slowed down as a whole when STS throttles.

use std::time::{Duration, Instant};

use assumed_role_operator::api::AssumedRole;
use jiff::Timestamp;
use serde_json::Value;

use crate::support::*;

/// When the stand-in received each AssumeRole, and whether it throttled it.
fn calls(report: &Value, ns: &str) -> Vec<(f64, bool)> {
    let prefix = format!("{ns}.");
    let mut calls: Vec<(f64, bool)> = report["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .filter(|s| s["session"].as_str().is_some_and(|n| n.starts_with(&prefix)))
        .map(|s| {
            (
                s["at"].as_f64().unwrap_or(0.0),
                s["throttled"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    calls.sort_by(|a, b| a.0.total_cmp(&b.0));
    calls
}

#[tokio::test]
#[ignore = "needs the local control plane; run with `make test`"]
async fn many_assumed_roles_at_once_stay_within_the_sts_rate_and_all_become_ready() {
    const ROLES: usize = 30;
    const RATE: f64 = 3.0;
    const BURST: f64 = 5.0;
    let logs = tempfile::tempdir().expect("logs dir");
    let standin = StandIn::start(3600, 0, logs.path());
    let scene = Scene::start(
        "budget",
        &["--sts-rate", "3", "--sts-burst", "5", "--concurrency", "8"],
        &[("AWS_ENDPOINT_URL_STS", standin.url.as_str())],
    )
    .await;
    let ns = scene.ns.name.clone();
    let started = Instant::now();
    apply_ready(&scene.roles, &ns, ROLES, "").await;
    let took = started.elapsed();
    let report = standin.report().await;
    let at: Vec<f64> = calls(&report, &ns).into_iter().map(|(t, _)| t).collect();
    assert_eq!(at.len(), ROLES, "one call per AssumedRole");
    // Over any stretch, the calls STS saw fit the bucket: its burst plus the
    // rate times the stretch (one call of slack for the two clocks).
    let mut busiest = 0.0f64;
    for i in 0..at.len() {
        for j in i..at.len() {
            let calls = (j - i + 1) as f64;
            let allowed = BURST + RATE * (at[j] - at[i]) + 1.0;
            assert!(calls <= allowed, "{calls} calls in {:.2} s", at[j] - at[i]);
            if at[j] - at[i] <= 1.0 {
                busiest = busiest.max(calls);
            }
        }
    }
    // The gauges per AssumedRole, computed from the cache at scrape time,
    // agree with the status.
    let mut want = Vec::new();
    for i in 0..ROLES {
        let name = format!("role-{i}");
        let ar = scene.roles.get(&name).await.expect("AssumedRole");
        let status = ar.status.expect("status");
        let labels = format!(r#"{{namespace="{ns}",name="{name}"}}"#);
        for (gauge, value) in [
            ("assumed_role_ready", 1),
            (
                "assumed_role_expiration_timestamp_seconds",
                status.expiration_time.expect("expirationTime").0.as_second(),
            ),
            (
                "assumed_role_refresh_timestamp_seconds",
                status.refresh_time.expect("refreshTime").0.as_second(),
            ),
            ("assumed_role_consecutive_failures", 0),
        ] {
            want.push(format!("assumed_role_operator_{gauge}{labels} {value}"));
        }
    }
    scene.operator.scrape_until(&want).await;
    let waited = scene
        .operator
        .counter("assumed_role_operator_sts_budget_wait_seconds_count", None)
        .await;
    assert!(waited >= ROLES as u64, "{waited} waits recorded");
    eprintln!(
        "STS budget: {ROLES} AssumedRoles Ready in {:.1} s at rate {RATE}/s burst {BURST}; busiest second at STS: {busiest} calls",
        took.as_secs_f64()
    );
}

#[tokio::test]
#[ignore = "needs the local control plane; run with `make test`"]
async fn sts_throttling_slows_the_whole_operator_and_every_secret_is_refreshed_before_its_floor() {
    const ROLES: usize = 8;
    const THROTTLE: u32 = 30;
    let logs = tempfile::tempdir().expect("logs dir");
    // Every set lives 900 s and is refreshed 10 s after it is issued.
    let standin = StandIn::start(900, 0, logs.path());
    let scene = Scene::start(
        "throttled",
        &["--sts-rate", "4", "--sts-burst", "4"],
        &[("AWS_ENDPOINT_URL_STS", standin.url.as_str())],
    )
    .await;
    let ns = scene.ns.name.clone();
    for i in 0..ROLES {
        apply(&assumed_role(
            &ns,
            &format!("role-{i}"),
            "  durationSeconds: 900\n  refreshBefore: 890s\n",
        ));
    }
    for i in 0..ROLES {
        wait_ready(&scene.roles, &format!("role-{i}"), "True", "CredentialsReady").await;
    }
    assert_eq!(scene.operator.gauge("assumed_role_operator_sts_budget_rate").await, 4.0);
    let mut expires = Vec::new();
    for i in 0..ROLES {
        let ar = scene.roles.get(&format!("role-{i}")).await.expect("AssumedRole");
        expires.push(ar.status.and_then(|s| s.expiration_time).expect("expirationTime").0);
    }

    let throttled_from = Timestamp::now();
    standin.throttle(THROTTLE).await;
    // The whole operator slows down, not one AssumedRole: the budget's rate
    // drops to a sixteenth while STS keeps throttling.
    let slowest = poll(
        Duration::from_secs(60),
        Duration::from_millis(500),
        "the rate to drop",
        || async {
            let rate = scene.operator.gauge("assumed_role_operator_sts_budget_rate").await;
            (rate <= 4.0 / 8.0).then_some(rate)
        },
    )
    .await;
    // Once STS answers again, every Secret is refreshed, before its floor.
    let recovered_from = throttled_from + jiff::SignedDuration::from_secs(i64::from(THROTTLE));
    for (i, expired_at) in expires.iter().enumerate() {
        let name = format!("role-{i}");
        let ar = wait_for(
            &scene.roles,
            &name,
            Duration::from_secs(120),
            "a refresh after the throttling",
            |ar: Option<&AssumedRole>| {
                ar.and_then(|a| a.status.as_ref())
                    .and_then(|s| s.last_refresh_time.as_ref())
                    .is_some_and(|t| t.0 > recovered_from)
            },
        )
        .await;
        let refreshed = ar.status.and_then(|s| s.last_refresh_time).expect("lastRefreshTime").0;
        assert!(
            expired_at.duration_since(refreshed).as_secs() > 300,
            "{name} refreshed inside its floor"
        );
    }
    poll(
        Duration::from_secs(60),
        Duration::from_millis(500),
        "the rate to recover",
        || async { (scene.operator.gauge("assumed_role_operator_sts_budget_rate").await == 4.0).then_some(()) },
    )
    .await;
    let report = standin.report().await;
    let during: Vec<(f64, bool)> = calls(&report, &ns)
        .into_iter()
        .filter(|(_, throttled)| *throttled)
        .collect();
    eprintln!(
        "STS throttling for {THROTTLE} s: {} calls throttled ({:.2}/s, budget rate down to {slowest}/s from 4/s); all {ROLES} refreshed before their floor afterwards",
        during.len(),
        during.len() as f64 / f64::from(THROTTLE)
    );
}

/// The operator's metric names that `text` uses.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("assumed_role_operator_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        names.insert(name);
    }
    names
}

#[tokio::test]
#[ignore = "needs the local control plane; run with `make test`"]
async fn every_metric_the_alerts_and_the_dashboard_use_is_exported_by_a_running_operator() {
    let chart = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/assumed-role-operator/files/");
    let rules = std::fs::read_to_string(format!("{chart}prometheus-rules.yaml")).expect("rules");
    let dashboard = std::fs::read_to_string(format!("{chart}grafana-dashboard.json")).expect("dashboard");
    let mut used = metric_names(&rules);
    used.extend(metric_names(&dashboard));
    assert!(used.len() >= 10, "{used:?}");
    // A leader with an AssumedRole that has been refreshed once: every
    // family has samples. The per-AssumedRole gauges are read from the
    // operator's cache, which sees the Ready status a moment after the
    // API server does: wait until it reads Ready too.
    let scene = Scene::start("observability", &["--leader-elect"], &[]).await;
    let ns = scene.ns.name.clone();
    apply(&assumed_role(&ns, "reader", ""));
    wait_ready(&scene.roles, "reader", "True", "CredentialsReady").await;
    let ready = format!(r#"assumed_role_operator_assumed_role_ready{{namespace="{ns}",name="reader"}} 1"#);
    let metrics = scene.operator.scrape_until(&[ready]).await;
    let exported: Vec<&str> = metrics.lines().filter(|l| !l.starts_with('#')).collect();
    for name in &used {
        assert!(
            exported
                .iter()
                .any(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} "))),
            "{name} is used by the alerts or the dashboard but not exported:\n{metrics}"
        );
    }
    eprintln!(
        "{} metrics used by the alerts and the dashboard, all exported",
        used.len()
    );
}

#[tokio::test]
#[ignore = "needs the local control plane; run with `make test`"]
async fn the_api_server_client_limit_holds_requests_back_and_every_assumed_role_still_becomes_ready() {
    const ROLES: usize = 10;
    let scene = Scene::start("api-limit", &["--api-qps", "5", "--api-burst", "5"], &[]).await;
    let ns = scene.ns.name.clone();
    let started = Instant::now();
    apply_ready(&scene.roles, &ns, ROLES, "").await;
    let took = started.elapsed();
    // Each AssumedRole takes at least three requests (read the Secret,
    // apply it, patch the status) and publishes a Normal Event: at 5 per
    // second after a burst of 5, 10 of them cannot be done in under 5 s.
    assert!(
        took >= Duration::from_secs(5),
        "{ROLES} AssumedRoles Ready in {took:?} at 5 requests/s"
    );
    eprintln!(
        "API limit 5/s: {ROLES} AssumedRoles Ready in {:.1} s",
        took.as_secs_f64()
    );
}
