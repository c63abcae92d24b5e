//! The fault matrix (`make faults`): a steady workload of AssumedRoles whose
//! credentials are refreshed every two minutes (`refreshBefore` 90 s ahead
//! of the floor), an independent checker that watches every owned Secret
//! throughout, and one fault at a time: the operator killed in each window
//! of a refresh, the leader of two killed, kube-apiserver or etcd stopped,
//! the operator's network to the API server cut (a proxy it goes through),
//! STS down, throttling or slow, another writer of the Secrets, the
//! operator's clock off by two minutes. The checker's verdict per fault:
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
//! `FAULTS_ONLY=baseline,kill,leader,api,network,sts-down,throttle,slow,writer,clock`
//! runs a subset; `ARO_KEEP_LOGS=DIR` keeps every log.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests fail loudly

#[path = "common/plane.rs"]
mod plane;
#[path = "e2e/support.rs"]
#[allow(dead_code)]
mod support;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::Path,
    process::{Child, Command},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use assumed_role_operator::{api::AssumedRole, secret};
use jiff::Timestamp;
use k8s_openapi::api::{coordination::v1::Lease, core::v1::Secret};
use kube::{Api, Client, api::ListParams};
use plane::ControlPlane;
use sha2::{Digest, Sha256};
use support::{Proxy, StandIn, poll, sessions_of};

const NAMESPACE: &str = "faults";
const ROLES: usize = 20;
/// What the stand-in grants, and when the AssumedRoles ask to refresh: 120 s
/// after each mint, 90 s before the floor, so that a fault shorter than that
/// margin must not bring any Secret inside the floor.
const LIFETIME: u32 = 510;
const REFRESH_BEFORE: u32 = 390;
/// The operator's floor: it never refreshes later than this before expiry.
const FLOOR: i64 = 300;
/// One round of refreshes: every AssumedRole refreshes once.
const ROUND: Duration = Duration::from_secs(125);
/// An STS outage longer than the time to the floor of most AssumedRoles.
const STS_LONG: Duration = Duration::from_secs(150);
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
    /// Starts it once it has read every Secret: what it judges while the API
    /// server is away is what it read last.
    async fn start(client: Client, key: Vec<u8>, standin: Arc<StandIn>) -> Self {
        let tally = Arc::new(Mutex::new(Tally {
            healthy_since: Some(Instant::now()),
            ..Tally::default()
        }));
        let shared = tally.clone();
        let secrets: Api<Secret> = Api::namespaced(client, NAMESPACE);
        let mut known: BTreeMap<String, Secret> = secrets
            .list(&ListParams::default().labels(secret::SELECTOR))
            .await
            .expect("the owned Secrets")
            .items
            .into_iter()
            .map(|s| (s.metadata.name.clone().unwrap_or_default(), s))
            .collect();
        let task = tokio::spawn(async move {
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
                    for (name, old) in &known {
                        let uid = |s: &Secret| s.metadata.uid.clone().unwrap_or_default();
                        match fresh.get(name) {
                            Some(new) if uid(new) != uid(old) => eprintln!("checker: {name} was re-created"),
                            None => eprintln!("checker: {name} is gone"),
                            _ => {}
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

/// What every operator process runs against.
struct Setup {
    plane: ControlPlane,
    standin: Arc<StandIn>,
    /// A kubeconfig that reaches the API server through the proxy.
    kubeconfig: std::path::PathBuf,
    logs: tempfile::TempDir,
}

/// One operator process, killed by PID when dropped.
struct Operator {
    child: Child,
    log: std::path::PathBuf,
}

impl Operator {
    fn start(setup: &Setup, name: &str, extra: &[&str]) -> Self {
        let log = setup.logs.path().join(format!("operator-{name}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_assumed-role-operator"))
            .args(["run", "--namespace", NAMESPACE, "--watch-namespaces", NAMESPACE])
            .args([
                "--admin-address",
                "127.0.0.1:0",
                "--log-format",
                "json",
                "--pod-name",
                name,
            ])
            .args(extra)
            .envs(setup.plane.env.iter())
            .env("KUBECONFIG", &setup.kubeconfig)
            .env("AWS_ENDPOINT_URL_STS", &setup.standin.url)
            .stdout(file.try_clone().expect("log"))
            .stderr(file)
            .spawn()
            .expect("start the operator");
        Self { child, log }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!("--- last lines of {} ---", self.log.display());
            for line in &lines[lines.len().saturating_sub(30)..] {
                eprintln!("{line}");
            }
        }
    }
}

/// Waits until the operator has caught up: every AssumedRole Ready, no
/// refresh overdue (its status's `refreshTime` not more than 10 s past), its
/// status telling the expiration that its Secret holds, and that more than
/// the floor away. Returns how long that took. (A Secret merely above the
/// floor would not show that the operator works again: the workload
/// refreshes 90 s before it.)
async fn recovered(roles: &Api<AssumedRole>, secrets: &Api<Secret>, limit: Duration) -> Duration {
    let started = Instant::now();
    poll(
        limit,
        Duration::from_millis(500),
        "every AssumedRole Ready, on schedule, its status matching its Secret",
        || async {
            let all = roles.list(&ListParams::default()).await.ok()?;
            let expirations = expirations(secrets).await.ok()?;
            let now = Timestamp::now();
            let caught_up = all.items.len() == ROLES
                && all.items.iter().all(|ar| {
                    let status = ar.status.clone().unwrap_or_default();
                    let expires = status.expiration_time.map(|t| t.0);
                    is_ready(ar)
                        && refresh_time(ar).is_some_and(|t| t > now - jiff::SignedDuration::from_secs(10))
                        && expires.is_some()
                        && expirations.get(&ar.metadata.name.clone().unwrap_or_default()) == expires.as_ref()
                        && expires.is_some_and(|e| e.duration_since(now).as_secs() > FLOOR)
                });
            caught_up.then(|| started.elapsed())
        },
    )
    .await
}

fn is_ready(ar: &AssumedRole) -> bool {
    ar.status
        .as_ref()
        .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// When the AssumedRole's status says it will refresh.
fn refresh_time(ar: &AssumedRole) -> Option<Timestamp> {
    Some(ar.status.as_ref()?.refresh_time.as_ref()?.0)
}

/// A data key of a Secret, as text.
fn text(secret: &Secret, key: &str) -> Option<String> {
    let value = secret.data.as_ref()?.get(key)?;
    String::from_utf8(value.0.clone()).ok()
}

/// The data key `key` of every owned Secret that has it, as text, by name.
async fn owned_data(secrets: &Api<Secret>, key: &str) -> Result<BTreeMap<String, String>, kube::Error> {
    let listed = secrets.list(&ListParams::default().labels(secret::SELECTOR)).await?;
    Ok(listed
        .items
        .iter()
        .filter_map(|s| Some((s.metadata.name.clone()?, text(s, key)?)))
        .collect())
}

/// Each owned Secret's expiration, by name.
async fn expirations(secrets: &Api<Secret>) -> Result<BTreeMap<String, Timestamp>, kube::Error> {
    let texts = owned_data(secrets, "expiration").await?;
    Ok(texts
        .into_iter()
        .filter_map(|(n, e)| Some((n, e.parse().ok()?)))
        .collect())
}

struct Row {
    fault: &'static str,
    expired: f64,
    floor: f64,
    lost: u32,
    mismatched: usize,
    sts_calls: u64,
    recover: Duration,
    note: String,
}

/// The workload, the checker, the operators and the rows so far.
struct Matrix {
    setup: Setup,
    proxy: Proxy,
    checker: Checker,
    roles: Api<AssumedRole>,
    secrets: Api<Secret>,
    operators: Vec<Operator>,
    rows: Vec<Row>,
}

impl Matrix {
    async fn calls(&self) -> u64 {
        self.setup.standin.report().await["assume_role"].as_u64().unwrap_or(0)
    }

    /// Stops every operator and starts one, with `extra` flags.
    fn restart(&mut self, extra: &[&str]) {
        self.operators.clear();
        self.operators.push(Operator::start(&self.setup, "op", extra));
    }

    /// Waits for every AssumedRole to be Ready and fresh again, then records
    /// the row of `fault`, whose STS calls are those since `before`.
    async fn settle(&mut self, fault: &'static str, before: u64, note: String) {
        eprintln!("faults: {fault}: waiting for recovery");
        let recover = recovered(&self.roles, &self.secrets, Duration::from_secs(300)).await;
        let (expired, floor, lost, mismatched) = self.checker.take();
        let sts_calls = self.calls().await - before;
        self.rows.push(Row {
            fault,
            expired,
            floor,
            lost,
            mismatched,
            sts_calls,
            recover,
            note,
        });
    }

    /// Waits until the operator's log has a line with `needle` beyond its
    /// first `from` bytes.
    async fn logged(&self, needle: &str, from: usize, limit: Duration) {
        poll(limit, Duration::from_millis(50), needle, || async {
            let log = self.operators[0].log();
            log.get(from..).is_some_and(|new| new.contains(needle)).then_some(())
        })
        .await;
    }

    /// The holder of the leader Lease.
    async fn holder(&self) -> Option<String> {
        let leases: Api<Lease> = Api::namespaced(self.roles.clone().into_client(), NAMESPACE);
        let lease = leases.get_opt("assumed-role-operator").await.ok()??;
        lease.spec?.holder_identity.filter(|h| !h.is_empty())
    }

    /// The operator killed in one window of a refresh, then restarted: in
    /// flight at STS, after the STS answer (before the Secret write), after
    /// the Secret write (before the status write).
    async fn kill_in_refresh(&mut self, fault: &'static str, window: &str) {
        let before = self.calls().await;
        match window {
            "in flight" => {
                self.setup.standin.slow(150, 4).await;
                let standin = self.setup.standin.clone();
                poll(
                    Duration::from_secs(150),
                    Duration::from_millis(100),
                    "a refresh in flight",
                    || async { (standin.report().await["inflight"].as_u64().unwrap_or(0) > 0).then_some(()) },
                )
                .await;
            }
            point => {
                let flag = if point == "after the STS answer" {
                    "--pause-after-sts-seconds"
                } else {
                    "--pause-after-secret-write-seconds"
                };
                self.restart(&[flag, "10"]);
                let from = self.operators[0].log().len();
                self.logged(&format!("\"point\":\"{point}\""), from, Duration::from_secs(150))
                    .await;
            }
        }
        self.operators[0].kill();
        // What the killed operator left: the AssumedRoles due (their status's
        // refresh time passed), and among them those whose Secret already
        // holds new credentials that their status does not tell yet.
        let now = Timestamp::now();
        let listed = self.roles.list(&ListParams::default()).await.expect("AssumedRoles");
        let expirations = expirations(&self.secrets).await.expect("Secrets");
        let mut due = BTreeMap::new();
        for ar in &listed.items {
            let status = ar.status.clone().unwrap_or_default();
            if refresh_time(ar).is_some_and(|t| t <= now) {
                let name = ar.metadata.name.clone().unwrap_or_default();
                let written = expirations.get(&name) != status.expiration_time.map(|t| t.0).as_ref();
                due.insert(name, written);
            }
        }
        let report = self.setup.standin.report().await;
        let calls_before: BTreeMap<&String, usize> = due
            .keys()
            .map(|n| (n, sessions_of(&report, NAMESPACE, n).len()))
            .collect();
        self.setup.standin.slow(0, 0).await;
        self.restart(&[]);
        let restarted = Instant::now();
        assert!(!due.is_empty(), "{fault}: no AssumedRole was being refreshed");
        // Each of them planned anew by the restarted operator.
        poll(
            Duration::from_secs(120),
            Duration::from_millis(250),
            "the AssumedRoles left due planned anew",
            || async {
                let listed = self.roles.list(&ListParams::default()).await.ok()?;
                let now = Timestamp::now();
                listed
                    .items
                    .iter()
                    .filter(|ar| due.contains_key(ar.metadata.name.as_deref().unwrap_or_default()))
                    .all(|ar| refresh_time(ar).is_some_and(|t| t > now))
                    .then_some(())
            },
        )
        .await;
        self.settle(fault, before, String::new()).await;
        let report = self.setup.standin.report().await;
        let mut notes = Vec::new();
        for (name, written) in &due {
            let calls = sessions_of(&report, NAMESPACE, name).len() - calls_before[name];
            if *written {
                assert_eq!(calls, 0, "{name}: the credentials in its Secret were minted again");
                notes.push(format!("{name}: Secret kept, status caught up, no STS call"));
            } else {
                assert!(calls >= 1, "{name}: not refreshed after the restart");
                notes.push(format!("{name}: refreshed by the restarted operator"));
            }
        }
        let row = self.rows.last_mut().expect("the row");
        row.note = format!("killed {window}; {}", notes.join("; "));
        // Recovered counts from the restart, the wait for the replans in.
        row.recover = restarted.elapsed();
    }

    /// Waits until a refresh is due within 3 s, so that the fault that
    /// follows meets one.
    async fn refresh_coming(&self) {
        poll(
            Duration::from_secs(150),
            Duration::from_millis(250),
            "a refresh coming",
            || async {
                let listed = self.roles.list(&ListParams::default()).await.ok()?;
                let soon = Timestamp::now() + jiff::SignedDuration::from_secs(3);
                listed
                    .items
                    .iter()
                    .any(|ar| refresh_time(ar).is_some_and(|t| t <= soon))
                    .then_some(())
            },
        )
        .await;
    }

    async fn not_ready(&self) -> usize {
        let all = self.roles.list(&ListParams::default()).await.expect("AssumedRoles");
        all.items.iter().filter(|ar| !is_ready(ar)).count()
    }
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
    // The operator reaches the API server through a proxy that can cut it.
    let (proxy, proxied) = Proxy::in_front_of(Path::new(&plane.env["KUBECONFIG"]), logs.path()).await;
    let setup = Setup {
        plane,
        standin,
        kubeconfig: proxied,
        logs,
    };
    let client = setup.plane.client().await;
    let roles: Api<AssumedRole> = Api::namespaced(client.clone(), NAMESPACE);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
    let operators = vec![Operator::start(&setup, "op", &[])];
    let manifests: String = (0..ROLES)
        .map(|i| {
            format!(
                "---\napiVersion: sts.refresh.dev/v1alpha1\nkind: AssumedRole\nmetadata: {{name: role-{i}, namespace: {NAMESPACE}}}\n\
                 spec: {{roleArn: 'arn:aws:iam::123456789012:role/role-{i}', durationSeconds: 900, refreshBefore: {REFRESH_BEFORE}s}}\n"
            )
        })
        .collect();
    setup.plane.kubectl(&["apply", "-f", "-"], Some(&manifests));
    recovered(&roles, &secrets, Duration::from_secs(120)).await;
    let key = secrets
        .get(assumed_role_operator::hmac_key::HMAC_KEY_SECRET)
        .await
        .expect("the HMAC key")
        .data
        .and_then(|mut d| d.remove("key"))
        .expect("key")
        .0;
    let checker = Checker::start(client.clone(), key, setup.standin.clone()).await;
    let mut m = Matrix {
        setup,
        proxy,
        checker,
        roles,
        secrets,
        operators,
        rows: Vec::new(),
    };

    // FAULTS_ONLY=kill,api,... runs a subset.
    let only = std::env::var("FAULTS_ONLY").ok();
    let run = |key: &str| only.as_deref().is_none_or(|o| o.split(',').any(|k| k == key));
    if run("baseline") {
        // Steady state first: no fault, one round of refreshes.
        let before = m.calls().await;
        tokio::time::sleep(ROUND).await;
        m.settle("none (one round of refreshes)", before, String::new()).await;
    }
    if run("kill") {
        // 1. SIGKILL in each window of a refresh, then a restart.
        m.kill_in_refresh("operator SIGKILL, STS call in flight", "in flight")
            .await;
        m.kill_in_refresh(
            "operator SIGKILL, STS answered, Secret not written",
            "after the STS answer",
        )
        .await;
        m.kill_in_refresh("operator SIGKILL, Secret written, status not", "after the Secret write")
            .await;
    }
    if run("leader") {
        // 2. Two replicas; the leader killed.
        let before = m.calls().await;
        m.operators.clear();
        let lease = ["--leader-elect", "--lease-duration-seconds", "15"];
        m.operators.push(Operator::start(&m.setup, "op-a", &lease));
        let holder = poll(Duration::from_secs(60), Duration::from_millis(200), "a leader", || {
            m.holder()
        })
        .await;
        m.operators.push(Operator::start(&m.setup, "op-b", &lease));
        // Let the standby's caches warm and a refresh or two pass.
        tokio::time::sleep(Duration::from_secs(20)).await;
        m.operators[0].kill();
        let killed = Instant::now();
        let next = poll(
            Duration::from_secs(60),
            Duration::from_millis(100),
            "a new leader",
            || async { m.holder().await.filter(|h| *h != holder) },
        )
        .await;
        let note = format!(
            "{holder} killed; {next} led {:.1} s later (lease 15 s)",
            killed.elapsed().as_secs_f64()
        );
        m.settle("leader SIGKILLed, two replicas", before, note).await;
        m.restart(&[]);
    }
    if run("api") {
        // 3, 4. The API server, then etcd, stopped for 30 s.
        for (fault, component) in [
            ("kube-apiserver stopped 30 s", "kube-apiserver"),
            ("etcd stopped 30 s", "etcd"),
        ] {
            m.refresh_coming().await;
            let before = m.calls().await;
            m.setup.plane.cluster("stop", component);
            tokio::time::sleep(Duration::from_secs(30)).await;
            m.setup.plane.cluster("start", component);
            m.settle(fault, before, String::new()).await;
        }
    }
    if run("network") {
        // 10. The operator's network to the API server cut for a minute.
        m.refresh_coming().await;
        let before = m.calls().await;
        m.proxy.cut(true);
        tokio::time::sleep(Duration::from_secs(60)).await;
        m.proxy.cut(false);
        m.settle("operator's network to the API server cut 60 s", before, String::new())
            .await;
        // The operator (re)started while its network is cut: it waits for
        // the API server rather than exit.
        let before = m.calls().await;
        m.proxy.cut(true);
        m.restart(&[]);
        tokio::time::sleep(Duration::from_secs(30)).await;
        m.proxy.cut(false);
        m.settle(
            "operator started while its network is cut (30 s)",
            before,
            String::new(),
        )
        .await;
    }
    if run("sts-down") {
        // 5. STS unavailable for less than the time to the floor...
        m.refresh_coming().await;
        let before = m.calls().await;
        m.checker.sts(false);
        m.setup.standin.down(60).await;
        tokio::time::sleep(Duration::from_secs(60)).await;
        m.checker.sts(true);
        m.settle(
            "STS unavailable 60 s (less than the time to the floor)",
            before,
            String::new(),
        )
        .await;
        // ... and for longer: those past their floor end Ready=False with
        // their Secrets untouched, and recover on their own.
        m.refresh_coming().await;
        let before = m.calls().await;
        let keys = owned_data(&m.secrets, "AWS_ACCESS_KEY_ID").await.expect("Secrets");
        m.checker.sts(false);
        m.setup.standin.down(STS_LONG.as_secs() as u32).await;
        tokio::time::sleep(STS_LONG).await;
        let not_ready = m.not_ready().await;
        assert_eq!(
            owned_data(&m.secrets, "AWS_ACCESS_KEY_ID").await.expect("Secrets"),
            keys,
            "Secrets changed while STS was down"
        );
        assert!(not_ready > 0, "no AssumedRole reached its floor during the outage");
        m.checker.sts(true);
        let note = format!("{not_ready} of {ROLES} Ready=False at the end, every Secret untouched");
        m.settle("STS unavailable 150 s (past the floor)", before, note).await;
    }
    if run("throttle") {
        // 6. STS throttling every call for a minute.
        m.refresh_coming().await;
        let before = m.calls().await;
        m.checker.sts(false);
        m.setup.standin.throttle(60).await;
        tokio::time::sleep(Duration::from_secs(60)).await;
        m.checker.sts(true);
        m.settle("STS throttling every call 60 s", before, String::new()).await;
    }
    if run("slow") {
        // 7. STS answering in 3 s per call for a round: slow is healthy.
        let before = m.calls().await;
        m.setup.standin.slow(ROUND.as_secs() as u32, 3).await;
        tokio::time::sleep(ROUND).await;
        m.settle("STS answering in 3 s per call, one round", before, String::new())
            .await;
    }
    if run("writer") {
        // 8. Another writer deletes one owned Secret and edits another, three
        // rounds, ten seconds apart.
        let before = m.calls().await;
        for round in 0..3 {
            let _ = m.secrets.delete(&format!("role-{round}"), &Default::default()).await;
            let patch = serde_json::json!({"data": {"AWS_ACCESS_KEY_ID": "QUtJQUZPUkdFRA=="}});
            let _ = m
                .secrets
                .patch(
                    &format!("role-{}", round + 10),
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(&patch),
                )
                .await;
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
        m.settle("another writer deletes and edits Secrets", before, String::new())
            .await;
    }
    if run("clock") {
        // 9. The operator's clock two minutes ahead, then behind, for a round
        // of refreshes each.
        for (fault, offset) in [
            ("operator's clock 2 min ahead", "120"),
            ("operator's clock 2 min behind", "-120"),
        ] {
            let before = m.calls().await;
            m.restart(&["--clock-offset-seconds", offset]);
            tokio::time::sleep(ROUND).await;
            let log = m.operators[0].log();
            let measured = log
                .lines()
                .filter(|l| l.contains("clock is off"))
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter_map(|l| l["fields"]["offset_seconds"].as_i64())
                .next_back();
            m.restart(&[]);
            let note = measured.map_or_else(
                || "no offset measured".to_string(),
                |m| format!("offset measured from the API server's Date: {m} s"),
            );
            m.settle(fault, before, note).await;
        }
    }
    let rows = std::mem::take(&mut m.rows);
    if let Ok(keep) = std::env::var("ARO_KEEP_LOGS") {
        let _ = std::fs::create_dir_all(&keep);
        for op in ["op", "op-a", "op-b"] {
            let name = format!("operator-{op}.log");
            let _ = std::fs::copy(m.setup.logs.path().join(&name), std::path::Path::new(&keep).join(&name));
        }
    }
    drop(m);
    println!("\n| fault | expired s | floor breach s | lost | mismatched | STS calls | recovered in | notes |");
    println!("|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {:.1} | {:.1} | {} | {} | {} | {:.1} s | {} |",
            r.fault,
            r.expired,
            r.floor,
            r.lost,
            r.mismatched,
            r.sts_calls,
            r.recover.as_secs_f64(),
            r.note
        );
    }
    let breaches: Vec<&str> = rows
        .iter()
        .filter(|r| r.expired > 0.0 || r.floor > 0.0 || r.lost > 0 || r.mismatched > 0)
        .map(|r| r.fault)
        .collect();
    assert!(breaches.is_empty(), "breaches in: {breaches:?}");
}
