//! The API server, then etcd, stopped for more than 30 seconds under twenty
//! AssumedRoles that rotate every ten: the retries back off instead of
//! hammering, the log stays bounded, nothing is reported twice into the
//! outage, and every Secret rotates again within seconds of the return with
//! valid credentials throughout. The test starts a control plane of its own,
//! since it stops parts of it.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests fail loudly

#[path = "common/plane.rs"]
mod plane;
#[path = "e2e/support.rs"]
#[allow(dead_code)]
mod support;

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    process::{Child, Command},
    time::{Duration, Instant},
};

use assumed_role_operator::api::AssumedRole;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use plane::ControlPlane;
use serde_json::Value;
use support::poll;

const ROLES: usize = 20;
const OUTAGE: Duration = Duration::from_secs(35);

/// The operator, logging JSON to a file; killed by PID when dropped.
struct Operator {
    child: Child,
    log: PathBuf,
}

impl Operator {
    fn start(plane: &ControlPlane, dir: &Path) -> Self {
        let log = dir.join("operator.log");
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_assumed-role-operator"))
            .args(["run", "--namespace", "outage", "--watch-namespaces", "outage"])
            .args([
                "--admin-address",
                "127.0.0.1:0",
                "--log-format",
                "json",
                "--log-level",
                // The bounds on log lines below count info lines; another
                // level (ARO_OUTAGE_LOG_LEVEL) is for a post-mortem.
                &std::env::var("ARO_OUTAGE_LOG_LEVEL").unwrap_or_else(|_| "info".to_string()),
            ])
            .envs(plane.env.iter())
            .stdout(file.try_clone().expect("log"))
            .stderr(file)
            .spawn()
            .expect("start the operator");
        Self { child, log }
    }

    /// The sum of a counter over the label sets that contain `label`, read
    /// from `/metrics` at the address the operator logged.
    fn counter(&self, name: &str, label: &str) -> u64 {
        use std::io::{Read, Write};
        let address = self
            .lines()
            .iter()
            .find_map(|l| l["fields"]["address"].as_str().map(str::to_string))
            .expect("the admin address in the log");
        let mut stream = std::net::TcpStream::connect(&address).expect("connect to the admin server");
        write!(
            stream,
            "GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
        )
        .expect("request");
        let mut body = String::new();
        stream.read_to_string(&mut body).expect("response");
        body.lines()
            .filter(|l| l.starts_with(name) && l.contains(label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    /// Every log line, parsed.
    fn lines(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // ARO_KEEP_LOGS=DIR keeps the operator's log too.
        if let Ok(keep) = std::env::var("ARO_KEEP_LOGS") {
            let _ = std::fs::create_dir_all(&keep);
            let _ = std::fs::copy(&self.log, Path::new(&keep).join("operator.log"));
        }
    }
}

fn time_of(line: &Value) -> Option<Timestamp> {
    line["timestamp"].as_str()?.parse().ok()
}

/// The expiration in each AssumedRole's Secret, from the data pods see.
async fn expirations(secrets: &Api<Secret>) -> Option<HashMap<String, Timestamp>> {
    let list = secrets.list(&Default::default()).await.ok()?;
    let found: HashMap<String, Timestamp> = list
        .items
        .iter()
        .filter_map(|s| {
            let name = s.metadata.name.clone()?;
            let text = s.data.as_ref()?.get("expiration")?;
            Some((name, String::from_utf8(text.0.clone()).ok()?.parse().ok()?))
        })
        .collect();
    (found.len() == ROLES).then_some(found)
}

/// What the operator logged about failed attempts between `from` and `to`:
/// per AssumedRole, the time and failure count of each attempt.
fn attempts(lines: &[Value], from: Timestamp, to: Timestamp) -> BTreeMap<String, Vec<(Timestamp, i64)>> {
    let mut per_role: BTreeMap<String, Vec<(Timestamp, i64)>> = BTreeMap::new();
    for line in lines {
        let Some(t) = time_of(line) else { continue };
        let fields = &line["fields"];
        if t < from || t > to || fields["failures"].is_null() {
            continue;
        }
        let name = fields["name"].as_str().unwrap_or_default().to_string();
        per_role
            .entry(name)
            .or_default()
            .push((t, fields["failures"].as_i64().unwrap_or_default()));
    }
    per_role
}

/// Stops `component` for [`OUTAGE`], starts it again, and checks what the
/// operator did meanwhile and after.
async fn outage(plane: &ControlPlane, operator: &Operator, secrets: &Api<Secret>, component: &str) {
    let api_failures = || operator.counter("assumed_role_operator_reconciles_total", r#"result="api_unavailable""#);
    let counted_before = api_failures();
    let before = poll(
        Duration::from_secs(30),
        Duration::from_millis(200),
        "every Secret",
        || expirations(secrets),
    )
    .await;
    let from = Timestamp::now();
    plane.cluster("stop", component);
    tokio::time::sleep(OUTAGE).await;
    plane.cluster("start", component);
    let restarted = Instant::now();
    let to = Timestamp::now();
    // The API server may take a while to answer again (after etcd, its own
    // client reconnects with a backoff): time the operator from then.
    poll(
        Duration::from_secs(90),
        Duration::from_millis(100),
        "the API server to answer",
        || async {
            secrets
                .list(&kube::api::ListParams::default().limit(1))
                .await
                .ok()
                .map(|_| ())
        },
    )
    .await;
    let answering = restarted.elapsed();
    let back = Instant::now();

    // Every Secret rotates again, with credentials that are valid.
    let after = poll(
        Duration::from_secs(90),
        Duration::from_millis(200),
        "every Secret rotated",
        || async {
            let now = expirations(secrets).await?;
            now.iter().all(|(name, e)| before.get(name) != Some(e)).then_some(now)
        },
    )
    .await;
    let caught_up = back.elapsed();
    for (name, expires) in &after {
        assert!(*expires > Timestamp::now(), "{name} holds expired credentials");
    }

    let lines = operator.lines();
    let during: Vec<&Value> = lines
        .iter()
        .filter(|l| time_of(l).is_some_and(|t| t >= from && t <= to))
        .collect();
    let warnings = during
        .iter()
        .filter(|l| matches!(l["level"].as_str(), Some("WARN" | "ERROR")))
        .count();
    let per_role = attempts(&lines, from, to);
    let outage_minutes = OUTAGE.as_secs_f64() / 60.0;
    eprintln!(
        "{component} down {} s: {} log lines ({:.0}/min, {warnings} WARN/ERROR), {} AssumedRoles retried; \
         the API server answered {} ms after the restart, and every Secret rotated {} ms after that",
        OUTAGE.as_secs(),
        during.len(),
        during.len() as f64 / outage_minutes,
        per_role.len(),
        answering.as_millis(),
        caught_up.as_millis()
    );
    // When the operator noticed, and when the first Secret was written.
    let after_return = |text: &str| {
        lines
            .iter()
            .filter(|l| time_of(l).is_some_and(|t| t > to))
            .find(|l| l["fields"]["message"].as_str().is_some_and(|m| m.contains(text)))
            .and_then(time_of)
            .map(|t| t.duration_since(to).as_millis())
    };
    eprintln!(
        "  after the restart: the operator saw the API server back at +{:?} ms, wrote its first Secret at +{:?} ms",
        after_return("answers again"),
        after_return("wrote new credentials")
    );
    let mut by_message: BTreeMap<String, usize> = BTreeMap::new();
    for line in &during {
        let message = line["fields"]["message"].as_str().unwrap_or_default();
        let key = if line["fields"]["failures"].is_null() {
            message.chars().take(60).collect()
        } else {
            "a failed attempt of an AssumedRole".to_string()
        };
        *by_message.entry(key).or_default() += 1;
    }
    eprintln!("  lines by kind: {by_message:?}");
    for (name, tries) in per_role.iter().take(3) {
        let gaps: Vec<i64> = tries
            .windows(2)
            .map(|w| w[1].0.duration_since(w[0].0).as_secs())
            .collect();
        eprintln!(
            "  {name}: failure counts {:?}, seconds between tries {gaps:?}",
            tries.iter().map(|t| t.1).collect::<Vec<_>>()
        );
    }
    // The metrics count the same failed attempts that the log shows.
    let counted = api_failures() - counted_before;
    let logged: usize = attempts(&operator.lines(), from, Timestamp::now())
        .values()
        .map(Vec::len)
        .sum();
    eprintln!("  reconciles_total{{result=\"api_unavailable\"}} grew by {counted}; {logged} failed attempts logged");
    assert_eq!(counted, logged as u64, "the metrics and the log disagree");
    if component == "kube-apiserver" {
        // Every AssumedRole kept trying, and its failure count grew by one
        // with each try, whatever became of its status: the backoff grew.
        assert_eq!(per_role.len(), ROLES, "{per_role:?}");
        for (name, tries) in &per_role {
            let counts: Vec<i64> = tries.iter().map(|t| t.1).collect();
            assert!(counts.windows(2).all(|w| w[1] == w[0] + 1), "{name}: {counts:?}");
            assert!(*counts.last().unwrap_or(&0) >= 3, "{name}: {counts:?}");
            // 35 s of exponential backoff from 5 s is at most a handful of
            // tries; retrying every 1 to 4 s would be ten or more.
            assert!(tries.len() <= 9, "{name} tried {} times", tries.len());
        }
    }
    // Bounded whatever the component: one line per try, one per failed
    // report, and a few from the watches.
    assert!(
        during.len() <= ROLES * 9 + ROLES * 2 + 30,
        "{} log lines in a {} s outage",
        during.len(),
        OUTAGE.as_secs()
    );
    // Reporting into the outage is tried once per AssumedRole at most.
    let unreported = during
        .iter()
        .filter(|l| {
            l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("could not report"))
        })
        .count();
    assert!(unreported <= ROLES, "{unreported} status writes tried into the outage");
    if caught_up >= Duration::from_secs(10) {
        // What held the operator back: its warnings after the restart.
        for line in lines
            .iter()
            .filter(|l| {
                (time_of(l).is_some_and(|t| t > to) && l["level"] == "WARN")
                    || l["target"] == "assumed_role_operator::clock"
            })
            .take(40)
        {
            eprintln!("{line}");
        }
    }
    // The wake on the API server's return is not held back by the watches,
    // which may still be backing off (up to 30 s) from the outage. After
    // etcd's, the API server's own storage clients reconnect one by one,
    // each with its backoff: a looser bound.
    let bound = Duration::from_secs(if component == "kube-apiserver" { 20 } else { 60 });
    assert!(caught_up < bound, "caught up only after {caught_up:?}");
}

#[tokio::test]
#[ignore = "starts a control plane of its own and stops parts of it; run with `make test`"]
async fn retries_back_off_while_the_api_server_or_etcd_is_down_and_catch_up_when_it_returns() {
    let plane = ControlPlane::up();
    plane.install_crds();
    plane.kubectl(&["create", "namespace", "outage"], None);
    plane.kubectl(
        &["apply", "-f", "-"],
        Some(
            "apiVersion: sts.refresh.dev/v1alpha1\nkind: AssumedRolePolicy\nmetadata: {name: outage}\n\
             spec: {namespaces: {names: [outage]}, roleArns: ['arn:aws:iam::123456789012:role/role-*']}\n",
        ),
    );
    let dir = tempfile::tempdir().expect("dir");
    let operator = Operator::start(&plane, dir.path());
    let mut manifests = String::new();
    for i in 0..ROLES {
        manifests.push_str(&format!(
            "---\napiVersion: sts.refresh.dev/v1alpha1\nkind: AssumedRole\nmetadata: {{name: role-{i}, namespace: outage}}\n\
             spec: {{roleArn: 'arn:aws:iam::123456789012:role/role-{i}', durationSeconds: 900, refreshBefore: 890s}}\n"
        ));
    }
    plane.kubectl(&["apply", "-f", "-"], Some(&manifests));
    let client = plane.client().await;
    let roles: Api<AssumedRole> = Api::namespaced(client.clone(), "outage");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "outage");
    poll(
        Duration::from_secs(60),
        Duration::from_millis(250),
        "all Ready",
        || async {
            let list = roles.list(&Default::default()).await.ok()?;
            let ready = list
                .items
                .iter()
                .filter(|ar| support::ready(ar).is_some_and(|(s, _, _)| s == "True"))
                .count();
            (ready == ROLES).then_some(())
        },
    )
    .await;

    outage(&plane, &operator, &secrets, "kube-apiserver").await;
    outage(&plane, &operator, &secrets, "etcd").await;

    // After both outages: each AssumedRole is Ready, and at most one Warning
    // Event per AssumedRole and outage says what happened.
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client, "outage");
    let warnings = events
        .list(&Default::default())
        .await
        .expect("Events")
        .items
        .into_iter()
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .count();
    eprintln!("Warning Events after both outages: {warnings}");
    assert!(warnings <= 2 * ROLES, "{warnings} Warning Events");
    poll(
        Duration::from_secs(60),
        Duration::from_millis(250),
        "all Ready again",
        || async {
            let list = roles.list(&Default::default()).await.ok()?;
            list.items
                .iter()
                .all(|ar| support::ready(ar).is_some_and(|(s, _, _)| s == "True"))
                .then_some(())
        },
    )
    .await;
}
