//! The fault matrix (`make faults`): a steady workload of AssumedRoles whose
//! credentials are refreshed every two minutes, an independent checker that
//! watches every owned Secret throughout, and one fault at a time. The
//! checker's verdict per fault:
//!
//! - expired: seconds during which any Secret held credentials past their
//!   expiration;
//! - floor: seconds during which any Secret held credentials more than 5 s
//!   inside the refresh floor (300 s before expiry) while STS was healthy
//!   and had been for 30 s;
//! - lost: Secrets missing or without credentials for more than 20 s;
//! - mismatched: Secrets carrying the operator's signature (its keyed hash)
//!   over an access key that STS never issued;
//!
//! with the STS calls counted at the STS stand-in and the time from the end
//! of the fault until every AssumedRole is Ready with fresh credentials
//! again. The test prints one row per fault and fails on any breach. It
//! starts a control plane of its own, since it stops parts of it.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests fail loudly

#[path = "common/plane.rs"]
mod plane;
#[path = "e2e/support.rs"]
#[allow(dead_code)]
mod support;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    process::{Child, Command},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use assumed_role_operator::{api::AssumedRole, secret};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client, api::ListParams};
use plane::ControlPlane;
use sha2::{Digest, Sha256};
use support::{StandIn, poll};

const NAMESPACE: &str = "faults";
const ROLES: usize = 20;
/// What the stand-in grants: the operator refreshes at its floor, 300 s
/// before expiry, so every two minutes (minus jitter).
const LIFETIME: u32 = 420;
const FLOOR: i64 = 300;
/// How late a refresh may be before it counts as a floor breach: the write,
/// and the checker's own sampling.
const SLACK: i64 = 5;
/// How long after STS recovers the floor is judged again.
const STS_GRACE: Duration = Duration::from_secs(30);
const LOST_AFTER: Duration = Duration::from_secs(20);
const TICK: Duration = Duration::from_millis(250);

/// What the checker has seen, for the fault under way.
#[derive(Default)]
struct Tally {
    expired: f64,
    floor: f64,
    lost: u32,
    mismatched: BTreeSet<String>,
    /// When STS stopped being healthy (None: healthy since `healthy_since`).
    sts_down: bool,
    healthy_since: Option<Instant>,
    missing_since: HashMap<String, Instant>,
    lost_now: BTreeSet<String>,
}

/// The independent checker: samples every owned Secret every 250 ms.
struct Checker {
    tally: Arc<Mutex<Tally>>,
    task: tokio::task::JoinHandle<()>,
}

impl Checker {
    fn start(client: Client, key: Vec<u8>, standin: Arc<StandIn>) -> Self {
        let tally = Arc::new(Mutex::new(Tally {
            healthy_since: Some(Instant::now()),
            ..Tally::default()
        }));
        let shared = tally.clone();
        let task = tokio::spawn(async move {
            let secrets: Api<Secret> = Api::namespaced(client, NAMESPACE);
            let mut known: BTreeMap<String, Secret> = BTreeMap::new();
            let mut issued: BTreeSet<String> = BTreeSet::new();
            let mut last = Instant::now();
            let mut tick = tokio::time::interval(TICK);
            loop {
                tick.tick().await;
                // While the API server is away, Secrets cannot change: judge
                // the last ones seen.
                let listed = tokio::time::timeout(
                    Duration::from_secs(2),
                    secrets.list(&ListParams::default().labels(secret::SELECTOR)),
                )
                .await;
                if let Ok(Ok(list)) = listed {
                    let mut fresh: BTreeMap<String, Secret> = list
                        .items
                        .into_iter()
                        .map(|s| (s.metadata.name.clone().unwrap_or_default(), s))
                        .collect();
                    // A list right after the API server restarts can come
                    // back short: a Secret is gone only when a read of it by
                    // name says so.
                    for (name, old) in &known {
                        if !fresh.contains_key(name) {
                            match tokio::time::timeout(Duration::from_secs(2), secrets.get_opt(name)).await {
                                Ok(Ok(None)) => {}
                                Ok(Ok(Some(current))) => {
                                    fresh.insert(name.clone(), current);
                                }
                                _ => {
                                    fresh.insert(name.clone(), old.clone());
                                }
                            }
                        }
                    }
                    known = fresh;
                }
                let now = Instant::now();
                let dt = now.duration_since(last).as_secs_f64();
                last = now;
                let wall = Timestamp::now();
                let (mut expired, mut inside) = (false, false);
                let mut missing = Vec::new();
                let mut signed_keys = Vec::new();
                for i in 0..ROLES {
                    let name = format!("role-{i}");
                    let secret = known.get(&name);
                    let data = secret.and_then(|s| s.data.as_ref());
                    let text = |k: &str| {
                        data.and_then(|d| d.get(k))
                            .and_then(|v| String::from_utf8(v.0.clone()).ok())
                    };
                    let (Some(key_id), Some(expiration)) = (text("AWS_ACCESS_KEY_ID"), text("expiration")) else {
                        missing.push(name);
                        continue;
                    };
                    if let Ok(expiration) = expiration.parse::<Timestamp>() {
                        let left = expiration.duration_since(wall).as_secs();
                        expired |= left <= 0;
                        inside |= left < FLOOR - SLACK;
                    }
                    // Signed by the operator: then STS must have issued the key.
                    let signed = secret.is_some_and(|s| {
                        let annotations = s.metadata.annotations.clone().unwrap_or_default();
                        let empty = BTreeMap::new();
                        annotations.get(secret::DATA_HMAC_ANNOTATION).is_some_and(|h| {
                            *h == secret::data_hmac(&key, &annotations, s.data.as_ref().unwrap_or(&empty))
                        })
                    });
                    if signed {
                        signed_keys.push(hex::encode(Sha256::digest(key_id.as_bytes()))[..12].to_string());
                    }
                }
                if signed_keys.iter().any(|k| !issued.contains(k)) {
                    let report = standin.report().await;
                    issued = report["issued"]
                        .as_array()
                        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
                        .unwrap_or_default();
                }
                let mut tally = shared.lock().unwrap();
                let judge_floor =
                    !tally.sts_down && tally.healthy_since.is_some_and(|t| now.duration_since(t) > STS_GRACE);
                for name in (0..ROLES).map(|i| format!("role-{i}")) {
                    if !missing.contains(&name) {
                        tally.missing_since.remove(&name);
                        tally.lost_now.remove(&name);
                    }
                }
                for name in missing {
                    let since = *tally.missing_since.entry(name.clone()).or_insert(now);
                    if now.duration_since(since) > LOST_AFTER && tally.lost_now.insert(name) {
                        tally.lost += 1;
                    }
                }
                for fingerprint in signed_keys {
                    if !issued.contains(&fingerprint) {
                        tally.mismatched.insert(fingerprint);
                    }
                }
                if expired {
                    tally.expired += dt;
                }
                if inside && judge_floor {
                    tally.floor += dt;
                }
            }
        });
        Self { tally, task }
    }

    /// Starts a new row: the counts so far are returned and reset.
    fn take(&self) -> (f64, f64, u32, usize) {
        let mut t = self.tally.lock().unwrap();
        let row = (t.expired, t.floor, t.lost, t.mismatched.len());
        t.expired = 0.0;
        t.floor = 0.0;
        t.lost = 0;
        t.mismatched.clear();
        row
    }

    fn sts(&self, healthy: bool) {
        let mut t = self.tally.lock().unwrap();
        t.sts_down = !healthy;
        t.healthy_since = healthy.then(Instant::now);
    }
}

impl Drop for Checker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The operator under test, killed by PID when dropped.
struct Operator {
    child: Child,
    log: std::path::PathBuf,
}

impl Operator {
    fn start(plane: &ControlPlane, sts: &str, log: &std::path::Path) -> Self {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_assumed-role-operator"))
            .args(["run", "--namespace", NAMESPACE, "--watch-namespaces", NAMESPACE])
            .args([
                "--admin-address",
                "127.0.0.1:0",
                "--log-format",
                "json",
                "--log-level",
                "info",
            ])
            .envs(plane.env.iter())
            .env("AWS_ENDPOINT_URL_STS", sts)
            .stdout(file.try_clone().expect("log"))
            .stderr(file)
            .spawn()
            .expect("start the operator");
        Self {
            child,
            log: log.to_path_buf(),
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!("--- last lines of the operator's log ---");
            for line in &lines[lines.len().saturating_sub(30)..] {
                eprintln!("{line}");
            }
        }
    }
}

/// Waits until every AssumedRole is Ready and every Secret holds credentials
/// with more than the floor left; returns how long that took.
async fn recovered(roles: &Api<AssumedRole>, secrets: &Api<Secret>, limit: Duration) -> Duration {
    let started = Instant::now();
    poll(
        limit,
        Duration::from_millis(500),
        "every AssumedRole Ready and fresh",
        || async {
            let all = match roles.list(&ListParams::default()).await {
                Ok(all) => all,
                Err(e) => {
                    eprintln!("listing AssumedRoles: {e}");
                    return None;
                }
            };
            let ready = all.items.len() == ROLES
                && all.items.iter().all(|ar| {
                    ar.status
                        .as_ref()
                        .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
                });
            let now = Timestamp::now();
            let listed = match secrets.list(&ListParams::default().labels(secret::SELECTOR)).await {
                Ok(listed) => listed,
                Err(e) => {
                    eprintln!("listing Secrets: {e}");
                    return None;
                }
            };
            // The AssumedRoles' Secrets, not the key that signs them.
            let fresh = listed
                .items
                .iter()
                .filter(|s| s.metadata.name.as_deref().is_some_and(|n| n.starts_with("role-")))
                .all(|s| {
                    s.data
                        .as_ref()
                        .and_then(|d| d.get("expiration"))
                        .and_then(|v| String::from_utf8(v.0.clone()).ok()?.parse::<Timestamp>().ok())
                        .is_some_and(|e| e.duration_since(now).as_secs() > FLOOR)
                });
            if !(ready && fresh) {
                eprintln!(
                    "ready {ready} fresh {fresh} ({} AssumedRoles, {} Secrets)",
                    all.items.len(),
                    listed.items.len()
                );
            }
            (ready && fresh).then(|| started.elapsed())
        },
    )
    .await
}

struct Row {
    fault: &'static str,
    expired: f64,
    floor: f64,
    lost: u32,
    mismatched: usize,
    sts_calls: u64,
    recover: Duration,
}

#[tokio::test]
#[ignore = "starts a control plane of its own and breaks parts of it; run with `make faults`"]
async fn the_fault_matrix_keeps_every_secret_valid() {
    let plane = ControlPlane::up();
    plane.install_crds();
    plane.kubectl(&["create", "namespace", NAMESPACE], None);
    plane.kubectl(
        &["apply", "-f", "-"],
        Some(&format!(
            "apiVersion: sts.refresh.dev/v1alpha1\nkind: AssumedRolePolicy\nmetadata: {{name: {NAMESPACE}}}\n\
             spec: {{namespaces: {{names: [{NAMESPACE}]}}, roleArns: ['arn:aws:iam::123456789012:role/*']}}\n"
        )),
    );
    let logs = tempfile::tempdir().expect("logs");
    let standin = Arc::new(StandIn::start_with(
        &plane.env["ARO_PYTHON"],
        &plane.env["AWS_ENDPOINT_URL"],
        LIFETIME,
        0,
        logs.path(),
    ));
    let log = logs.path().join("operator.log");
    let mut operator = Operator::start(&plane, &standin.url, &log);
    let client = plane.client().await;
    let roles: Api<AssumedRole> = Api::namespaced(client.clone(), NAMESPACE);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
    let manifests: String = (0..ROLES)
        .map(|i| {
            format!(
                "---\napiVersion: sts.refresh.dev/v1alpha1\nkind: AssumedRole\nmetadata: {{name: role-{i}, namespace: {NAMESPACE}}}\n\
                 spec: {{roleArn: 'arn:aws:iam::123456789012:role/role-{i}', durationSeconds: 900}}\n"
            )
        })
        .collect();
    plane.kubectl(&["apply", "-f", "-"], Some(&manifests));
    recovered(&roles, &secrets, Duration::from_secs(120)).await;
    let key = Api::<Secret>::namespaced(client.clone(), NAMESPACE)
        .get(assumed_role_operator::hmac_key::HMAC_KEY_SECRET)
        .await
        .expect("the HMAC key")
        .data
        .and_then(|mut d| d.remove("key"))
        .expect("key")
        .0;
    let checker = Checker::start(client.clone(), key, standin.clone());
    let calls = || async { standin.report().await["assume_role"].as_u64().unwrap_or(0) };
    let mut rows = Vec::new();
    let mut row = |fault, counts: (f64, f64, u32, usize), sts_calls, recover| {
        rows.push(Row {
            fault,
            expired: counts.0,
            floor: counts.1,
            lost: counts.2,
            mismatched: counts.3,
            sts_calls,
            recover,
        });
    };

    // FAULTS_ONLY=kill,api,... runs a subset (baseline, kill, api, sts-down,
    // throttle, slow, writer).
    let only = std::env::var("FAULTS_ONLY").ok();
    let run = |key: &str| only.as_deref().is_none_or(|o| o.split(',').any(|k| k == key));
    if run("baseline") {
        // Steady state first: a baseline with no fault, one refresh round.
        let before = calls().await;
        tokio::time::sleep(Duration::from_secs(150)).await;
        row("none (150 s)", checker.take(), calls().await - before, Duration::ZERO);
    }
    if run("kill") {
        // 1. The operator killed while STS answers a refresh, then restarted.
        let before = calls().await;
        standin.slow(60, 4).await;
        poll(
            Duration::from_secs(150),
            Duration::from_millis(100),
            "a refresh in flight",
            || async { (standin.report().await["inflight"].as_u64().unwrap_or(0) > 0).then_some(()) },
        )
        .await;
        operator.kill();
        operator = Operator::start(&plane, &standin.url, &log);
        let recover = recovered(&roles, &secrets, Duration::from_secs(240)).await;
        row(
            "operator SIGKILL mid-refresh, restarted",
            checker.take(),
            calls().await - before,
            recover,
        );
    }
    if run("api") {
        // 3, 4. The API server, then etcd, stopped for 30 s.
        for (fault, component) in [
            ("kube-apiserver stopped 30 s", "kube-apiserver"),
            ("etcd stopped 30 s", "etcd"),
        ] {
            let before = calls().await;
            plane.cluster("stop", component);
            tokio::time::sleep(Duration::from_secs(30)).await;
            plane.cluster("start", component);
            let recover = recovered(&roles, &secrets, Duration::from_secs(240)).await;
            row(fault, checker.take(), calls().await - before, recover);
        }
    }
    if run("sts-down") {
        // 5. STS unavailable for 60 s, less than the 120 s to the floor.
        let before = calls().await;
        checker.sts(false);
        standin.down(60).await;
        tokio::time::sleep(Duration::from_secs(60)).await;
        checker.sts(true);
        let recover = recovered(&roles, &secrets, Duration::from_secs(240)).await;
        row("STS unavailable 60 s", checker.take(), calls().await - before, recover);
    }
    if run("throttle") {
        // 6. STS throttling every call for a minute.
        let before = calls().await;
        checker.sts(false);
        standin.throttle(60).await;
        tokio::time::sleep(Duration::from_secs(60)).await;
        checker.sts(true);
        let recover = recovered(&roles, &secrets, Duration::from_secs(240)).await;
        row("STS throttling 60 s", checker.take(), calls().await - before, recover);
    }
    if run("slow") {
        // 7. STS answering in 3 s per call for two minutes: slow is healthy.
        let before = calls().await;
        standin.slow(120, 3).await;
        tokio::time::sleep(Duration::from_secs(120)).await;
        let recover = recovered(&roles, &secrets, Duration::from_secs(240)).await;
        row(
            "STS 3 s per call for 120 s",
            checker.take(),
            calls().await - before,
            recover,
        );
    }
    if run("writer") {
        // 8. Another writer deletes one owned Secret and edits another, three
        // rounds, ten seconds apart.
        let before = calls().await;
        for round in 0..3 {
            let _ = secrets.delete(&format!("role-{round}"), &Default::default()).await;
            let patch = serde_json::json!({"data": {"AWS_ACCESS_KEY_ID": "QUtJQUZPUkdFRA=="}});
            let _ = secrets
                .patch(
                    &format!("role-{}", round + 10),
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(&patch),
                )
                .await;
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
        let recover = recovered(&roles, &secrets, Duration::from_secs(240)).await;
        row(
            "another writer deletes and edits Secrets",
            checker.take(),
            calls().await - before,
            recover,
        );
    }
    drop(checker);
    drop(operator);
    println!("\n| fault | expired s | floor breach s | lost | mismatched | STS calls | recovered in |");
    println!("|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {:.1} | {:.1} | {} | {} | {} | {:.1} s |",
            r.fault,
            r.expired,
            r.floor,
            r.lost,
            r.mismatched,
            r.sts_calls,
            r.recover.as_secs_f64()
        );
    }
    let breaches: Vec<&str> = rows
        .iter()
        .filter(|r| r.expired > 0.0 || r.floor > 0.0 || r.lost > 0 || r.mismatched > 0)
        .map(|r| r.fault)
        .collect();
    assert!(breaches.is_empty(), "breaches in: {breaches:?}");
}
