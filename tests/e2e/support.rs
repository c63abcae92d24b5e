//! Helpers for the end-to-end tests, which run against the control plane and
//! STS that `hack/cluster.sh up` starts. They read its environment
//! (`KUBECONFIG`, `AWS_ENDPOINT_URL`, ...) as a user's shell would.
//!
//! Every process a test starts is killed by PID when its guard drops, and
//! every wait is bounded.

use std::{
    collections::BTreeMap,
    future::Future,
    io::Write,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use assumed_role_operator::{api::AssumedRole, secret};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
    runtime::wait::{Condition, await_condition},
};

/// Fails the test with a clear message when the control plane is not up.
pub fn require_cluster() {
    assert!(
        std::env::var_os("ARO_STATE").is_some(),
        "the end-to-end tests need the local control plane: run `make test` (or `source .cluster/env` after `hack/cluster.sh up`)"
    );
}

/// A Kubernetes client for the local control plane.
pub async fn client() -> Client {
    require_cluster();
    Client::try_default()
        .await
        .expect("a client for the local control plane")
}

/// A namespace of its own for one test, deleted when the guard drops.
pub struct TestNamespace {
    pub name: String,
}

impl TestNamespace {
    /// A fresh namespace, and an AssumedRolePolicy of the same name that
    /// lets it assume any role from any source: what the tests that are not
    /// about policies need.
    pub async fn create(client: &Client, prefix: &str) -> Self {
        let ns = Self::without_policy(client, prefix).await;
        allow(&ns.name, &ns.name, &["arn:*:iam::*:role/*"]);
        ns
    }

    /// A fresh namespace that no policy of its own covers.
    pub async fn without_policy(client: &Client, prefix: &str) -> Self {
        let name = format!("{prefix}-{:08x}", rand_u32());
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .expect("create the test namespace");
        Self { name }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        for kind in ["assumedrolepolicy", "namespace"] {
            let _ = Command::new("kubectl")
                .args(["delete", kind, &self.name, "--wait=false", "--ignore-not-found"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Applies the AssumedRolePolicy `name`, letting the namespace `namespace`
/// assume the roles matching `roles` from any source.
pub fn allow(name: &str, namespace: &str, roles: &[&str]) {
    let policy = serde_json::json!({
        "apiVersion": "sts.refresh.dev/v1alpha1",
        "kind": "AssumedRolePolicy",
        "metadata": {"name": name},
        "spec": {"namespaces": {"names": [namespace]}, "roleArns": roles},
    });
    let out = kubectl(&["apply", "-f", "-"], Some(&policy.to_string()));
    assert!(
        out.status.success(),
        "applying AssumedRolePolicy {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn rand_u32() -> u32 {
    let mut bytes = [0u8; 4];
    getrandom::fill(&mut bytes).expect("random bytes");
    u32::from_be_bytes(bytes)
}

/// The operator binary, running as a child process against the control
/// plane. Killed by PID when the guard drops.
pub struct Operator {
    child: Child,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Operator {
    /// Starts the operator watching `namespace` only, keeping its HMAC key
    /// there too, with extra arguments and environment.
    pub fn start(namespace: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_with(&["--namespace", namespace, "--watch-namespaces", namespace], args, env)
    }

    /// Starts the operator with exactly these `run` arguments plus `args`.
    pub fn start_with(base: &[&str], args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_full(base, args, env, &[])
    }

    /// Starts the operator watching `namespace`, without the environment
    /// variables named in `remove`.
    pub fn start_without(namespace: &str, remove: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_full(
            &["--namespace", namespace, "--watch-namespaces", namespace],
            &[],
            env,
            remove,
        )
    }

    fn start_full(base: &[&str], args: &[&str], env: &[(&str, &str)], remove: &[&str]) -> Self {
        Self::start_binary(
            Path::new(env!("CARGO_BIN_EXE_assumed-role-operator")),
            base,
            args,
            env,
            remove,
        )
    }

    /// Starts the operator binary at `binary` (the release build, say),
    /// watching `namespace`, with extra arguments.
    pub fn start_release(binary: &Path, namespace: &str, args: &[&str]) -> Self {
        Self::start_binary(
            binary,
            &["--namespace", namespace, "--watch-namespaces", namespace],
            args,
            &[],
            &[],
        )
    }

    fn start_binary(binary: &Path, base: &[&str], args: &[&str], env: &[(&str, &str)], remove: &[&str]) -> Self {
        require_cluster();
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("operator.log");
        let file = std::fs::File::create(&log).expect("log file");
        let mut cmd = Command::new(binary);
        cmd.arg("run")
            .args(base)
            .args(["--admin-address", "127.0.0.1:0", "--log-format", "text"])
            .args(args)
            .env("LOG_LEVEL", "info,assumed_role_operator=debug,kube_runtime=debug")
            .stdout(file.try_clone().expect("log file"))
            .stderr(file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        for k in remove {
            cmd.env_remove(k);
        }
        let child = cmd.spawn().expect("start the operator");
        Self { child, log, _dir: dir }
    }

    /// Its resident memory now, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("the operator's status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    /// Everything the operator has logged so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The address of its admin server, read from its log.
    pub async fn admin_address(&self) -> String {
        poll(
            Duration::from_secs(20),
            Duration::from_millis(100),
            "the admin server address in the log",
            || async {
                let log = self.output();
                let line = log.lines().find(|l| l.contains("admin server listening"))?;
                let address = line.split("address=").nth(1)?.split_whitespace().next()?;
                Some(address.to_string())
            },
        )
        .await
    }

    /// GETs `path` from its admin server and returns the status code and body.
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        let address = self.admin_address().await;
        http_get(&address, path, &[]).await.expect("reach the admin server")
    }

    /// Scrapes `/metrics` until every line of `want` is in it (the gauges
    /// per AssumedRole are read from the operator's cache, which sees a
    /// status a moment after the API server does), for at most 30 s, and
    /// returns the last scrape; on time-out, names the lines missing.
    pub async fn scrape_until(&self, want: &[String]) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, body) = self.admin_get("/metrics").await;
            let missing: Vec<&String> = want.iter().filter(|w| !body.lines().any(|l| l == w.as_str())).collect();
            if missing.is_empty() {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "not scraped within 30 s: {missing:?}\n{body}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Sum of a counter over all its label sets, from `/metrics`.
    pub async fn counter(&self, name: &str, label: Option<&str>) -> u64 {
        let (_, body) = self.admin_get("/metrics").await;
        body.lines()
            .filter(|l| l.starts_with(name) && label.is_none_or(|want| l.contains(want)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    /// The value of the gauge `name` (the first sample).
    pub async fn gauge(&self, name: &str) -> f64 {
        let (_, body) = self.admin_get("/metrics").await;
        body.lines()
            .filter(|l| l.split([' ', '{']).next() == Some(name))
            .find_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    }

    /// STS AssumeRole calls this operator has made, whatever their result.
    pub async fn sts_calls(&self) -> u64 {
        self.counter("assumed_role_operator_sts_assume_role_calls_total", None)
            .await
    }

    /// Waits until `/readyz` answers 200: the watches have synced, and the
    /// key that signs Secret data exists.
    pub async fn wait_ready(&self) {
        poll(
            Duration::from_secs(30),
            Duration::from_millis(100),
            "operator readiness",
            || async { (self.admin_get("/readyz").await.0 == 200).then_some(()) },
        )
        .await;
    }

    /// Sends SIGTERM and waits at most `limit` for the process to exit.
    /// Returns its exit status and how long it took, or `None` if it was
    /// still running (it is then killed).
    pub async fn terminate(&mut self, limit: Duration) -> Option<(std::process::ExitStatus, Duration)> {
        let started = std::time::Instant::now();
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().expect("run kill");
        assert!(sent.success(), "could not signal the operator");
        let status = exit_within(&mut self.child, Instant::now() + limit).await?;
        Some((status, started.elapsed()))
    }

    /// Stops it (SIGKILL) and waits for it to exit.
    pub fn stop(&mut self) {
        kill(&mut self.child);
    }

    /// Waits at most `limit` for the process to exit by itself; its exit
    /// status, or `None` if it was still running (it is then killed).
    pub async fn exits_within(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        exit_within(&mut self.child, Instant::now() + limit).await
    }
}

/// Waits for `child` to exit, at most until `deadline`; kills it then and
/// returns `None`.
async fn exit_within(child: &mut Child, deadline: Instant) -> Option<std::process::ExitStatus> {
    loop {
        if let Some(status) = child.try_wait().expect("wait for a child process") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            kill(child);
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Kills `child` (SIGKILL) and reaps it.
fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.stop();
        // A failing test shows what the operator said last.
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let _ = std::fs::write(
                std::env::temp_dir().join(format!("aro-failed-{}.log", std::process::id())),
                &log,
            );
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- last lines of the operator's log ---");
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// GETs `path` from `address` with extra `headers`, and returns the status
/// code and body, or the error of the connection.
pub async fn http_get(address: &str, path: &str, headers: &[(&str, &str)]) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::time::timeout(Duration::from_secs(10), tokio::net::TcpStream::connect(address))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut response))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

/// Runs kubectl with `args`, feeding `stdin`.
pub fn kubectl(args: &[&str], stdin: Option<&str>) -> Output {
    kubectl_with(&[], args, stdin)
}

/// Runs kubectl with `args` and extra environment (such as another
/// `KUBECONFIG`), feeding `stdin`.
pub fn kubectl_with(env: &[(&str, &str)], args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new("kubectl")
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kubectl");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
    }
    drop(child.stdin.take());
    child.wait_with_output().expect("kubectl output")
}

/// `kubectl apply -f -` of `yaml`; panics with kubectl's words on failure.
pub fn apply(yaml: &str) {
    let out = kubectl(&["apply", "-f", "-"], Some(yaml));
    assert!(
        out.status.success(),
        "kubectl apply failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits at most `limit` for `cond` on the named object.
pub async fn wait_for<K>(api: &Api<K>, name: &str, limit: Duration, what: &str, cond: impl Condition<K>) -> K
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    let found = tokio::time::timeout(limit, await_condition(api.clone(), name, cond))
        .await
        .unwrap_or_else(|_| panic!("timed out after {limit:?} waiting for {what}"))
        .unwrap_or_else(|e| panic!("watch failed while waiting for {what}: {e}"));
    found.unwrap_or_else(|| panic!("{what}: {name} was deleted"))
}

/// Waits at most `limit` for the named object to be gone.
pub async fn wait_deleted<K>(api: &Api<K>, name: &str, uid: &str, limit: Duration, what: &str)
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    tokio::time::timeout(
        limit,
        await_condition(api.clone(), name, kube::runtime::conditions::is_deleted(uid)),
    )
    .await
    .unwrap_or_else(|_| panic!("timed out after {limit:?} waiting for {what}"))
    .unwrap_or_else(|e| panic!("watch failed while waiting for {what}: {e}"));
}

/// Polls `probe` every `every` until it returns `Some`, at most `limit`.
pub async fn poll<T, F, Fut>(limit: Duration, every: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(every).await;
    }
}

/// The data of a Secret as text.
pub fn data(secret: &Secret) -> BTreeMap<String, String> {
    secret
        .data
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8(v.0).expect("UTF-8 data")))
        .collect()
}

/// The expiration annotation of a Secret, if any.
pub fn expiration_of(secret: &Secret) -> Option<String> {
    secret
        .metadata
        .annotations
        .as_ref()?
        .get(secret::EXPIRATION_ANNOTATION)
        .cloned()
}

/// Calls STS GetCallerIdentity with the credentials in a Secret and returns
/// the caller's ARN.
pub async fn caller_arn(secret: &Secret) -> Result<String, String> {
    let d = data(secret);
    let creds = aws_sdk_sts::config::Credentials::new(
        &d[secret::ACCESS_KEY_ID],
        &d[secret::SECRET_ACCESS_KEY],
        Some(d[secret::SESSION_TOKEN].clone()),
        None,
        "secret",
    );
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .credentials_provider(creds)
        .load()
        .await;
    let out = aws_sdk_sts::Client::new(&config)
        .get_caller_identity()
        .send()
        .await
        .map_err(|e| format!("{e:?}"))?;
    out.arn.ok_or_else(|| "no ARN in the answer".into())
}

/// The Ready condition of an AssumedRole, as (status, reason, message).
pub fn ready(ar: &AssumedRole) -> Option<(String, String, String)> {
    let c = ar.status.as_ref()?.conditions.iter().find(|c| c.type_ == "Ready")?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// An AssumedRole manifest for role `name` in `ns`, with extra spec lines.
pub fn assumed_role(ns: &str, name: &str, extra_spec: &str) -> String {
    assumed_role_for(ns, name, name, extra_spec)
}

/// The AssumeRole* calls a stand-in's `report` holds for the session
/// `ns.name`.
pub fn sessions_of(report: &serde_json::Value, ns: &str, name: &str) -> Vec<serde_json::Value> {
    let session = format!("{ns}.{name}");
    report["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .filter(|s| s["session"] == session.as_str())
        .cloned()
        .collect()
}

/// Applies `count` AssumedRoles `role-0`, `role-1`, ... in `ns` with extra
/// spec lines, in one `kubectl apply`, and waits until each is Ready.
pub async fn apply_ready(roles: &Api<AssumedRole>, ns: &str, count: usize, extra_spec: &str) {
    let manifests: String = (0..count)
        .map(|i| format!("---\n{}", assumed_role(ns, &format!("role-{i}"), extra_spec)))
        .collect();
    apply(&manifests);
    for i in 0..count {
        wait_ready(roles, &format!("role-{i}"), "True", "CredentialsReady").await;
    }
}

/// An AssumedRole manifest named `name` in `ns` for the role `role` (a
/// role name in the test account), with extra spec lines.
pub fn assumed_role_for(ns: &str, name: &str, role: &str, extra_spec: &str) -> String {
    format!(
        "apiVersion: sts.refresh.dev/v1alpha1
kind: AssumedRole
metadata: {{name: {name}, namespace: {ns}}}
spec:
  roleArn: arn:aws:iam::{account}:role/{role}
{extra_spec}",
        account = account()
    )
}

/// Environment that points the operator at the IAM-enforcing STS, with the
/// access key of the user that may assume only `allowed-*` roles.
pub fn iam_enforcing_sts() -> Vec<(&'static str, String)> {
    let var = |k: &str| {
        std::env::var(k).unwrap_or_else(|_| panic!("{k} is not set: start the control plane with hack/cluster.sh"))
    };
    vec![
        ("AWS_ENDPOINT_URL", var("ARO_IAM_ENDPOINT")),
        ("AWS_ACCESS_KEY_ID", var("ARO_IAM_ACCESS_KEY_ID")),
        ("AWS_SECRET_ACCESS_KEY", var("ARO_IAM_SECRET_ACCESS_KEY")),
    ]
}

/// All Events in a namespace, as JSON text.
pub fn events_json(ns: &str) -> String {
    let out = kubectl(&["get", "events.events.k8s.io", "-n", ns, "-o", "json"], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The AWS account moto reports.
pub fn account() -> String {
    std::env::var("ARO_AWS_ACCOUNT").unwrap_or_else(|_| "123456789012".into())
}

/// Waits for the AssumedRole's Ready condition to have `status` and `reason`.
pub async fn wait_ready(api: &Api<AssumedRole>, name: &str, status: &str, reason: &str) -> AssumedRole {
    let what = format!("{name} to be Ready={status} ({reason})");
    let (status, reason) = (status.to_string(), reason.to_string());
    wait_for(
        api,
        name,
        Duration::from_secs(60),
        &what,
        move |ar: Option<&AssumedRole>| ar.and_then(ready).is_some_and(|(s, r, _)| s == status && r == reason),
    )
    .await
}

/// `kubectl patch --type merge` of an object in `ns`.
pub fn merge_patch(ns: &str, kind_name: &str, patch: &str) {
    let out = kubectl(&["patch", "-n", ns, kind_name, "--type", "merge", "-p", patch], None);
    assert!(
        out.status.success(),
        "kubectl patch failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What most tests start from: a namespace of their own, an operator
/// watching it, and the APIs of the objects they look at.
pub struct Scene {
    pub roles: Api<AssumedRole>,
    pub secrets: Api<Secret>,
    pub operator: Operator,
    // Dropped last, after the operator has stopped.
    pub ns: TestNamespace,
}

impl Scene {
    /// Creates a namespace named after `prefix` and starts an operator for it
    /// with extra arguments and environment.
    pub async fn start(prefix: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let client = client().await;
        let ns = TestNamespace::create(&client, prefix).await;
        Self {
            roles: Api::namespaced(client.clone(), &ns.name),
            secrets: Api::namespaced(client.clone(), &ns.name),
            operator: Operator::start(&ns.name, args, env),
            ns,
        }
    }
}

/// The main scenario on the namespace `ns`, against whatever operator serves
/// it: create an AssumedRole, see its Secret appear with working
/// credentials, see them refreshed, delete it, and see the Secret collected.
pub async fn main_scenario(client: &Client, ns: &str) {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    apply(&assumed_role(
        ns,
        "reader",
        "  durationSeconds: 900\n  refreshBefore: 890s\n",
    ));
    let first = wait_for(
        &secrets,
        "reader",
        Duration::from_secs(60),
        "the Secret",
        |s: Option<&Secret>| s.is_some(),
    )
    .await;
    let expected = format!("arn:aws:sts::{}:assumed-role/reader/{ns}.reader", account());
    assert_eq!(caller_arn(&first).await, Ok(expected.clone()));
    let old = expiration_of(&first);
    let second = wait_for(
        &secrets,
        "reader",
        Duration::from_secs(60),
        "a refresh",
        |s: Option<&Secret>| s.is_some_and(|s| expiration_of(s) != old),
    )
    .await;
    assert_eq!(caller_arn(&second).await, Ok(expected));
    let out = kubectl(&["delete", "assumedrole", "reader", "-n", ns], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let uid = second.metadata.uid.clone().expect("uid");
    // The garbage collector notices a new CRD within its 30 s discovery period.
    wait_deleted(
        &secrets,
        "reader",
        &uid,
        Duration::from_secs(120),
        "the Secret to be collected",
    )
    .await;
}

/// A ValidatingAdmissionPolicy that refuses every create and update of a
/// Secret in one namespace with `message`, so that the operator's writes fail
/// the way a real admission policy makes them fail. Removed when dropped.
pub struct DenySecretWrites {
    name: String,
}

impl DenySecretWrites {
    /// Installs the policy and waits until the API server enforces it.
    pub async fn install(ns: &str, message: &str) -> Self {
        let name = format!("deny-secrets-{ns}");
        let message = serde_json::to_string(message).expect("JSON string");
        apply(&format!(
            "apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {{name: {name}}}
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
    - {{apiGroups: [''], apiVersions: [v1], operations: [CREATE, UPDATE], resources: [secrets]}}
  validations:
  - {{expression: 'false', message: {message}}}
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {{name: {name}}}
spec:
  policyName: {name}
  validationActions: [Deny]
  matchResources:
    namespaceSelector:
      matchLabels: {{kubernetes.io/metadata.name: {ns}}}
"
        ));
        // The policy takes effect once the API server has compiled it.
        poll(
            Duration::from_secs(30),
            Duration::from_millis(200),
            "the admission policy to take effect",
            || async {
                let out = kubectl(
                    &["create", "secret", "generic", "probe", "-n", ns, "--dry-run=server"],
                    None,
                );
                (!out.status.success()).then_some(())
            },
        )
        .await;
        Self { name }
    }

    /// Removes the policy and waits until Secrets can be written again.
    pub async fn remove(self, ns: &str) {
        drop(self);
        poll(
            Duration::from_secs(30),
            Duration::from_millis(200),
            "the admission policy to be lifted",
            || async {
                let out = kubectl(
                    &["create", "secret", "generic", "probe", "-n", ns, "--dry-run=server"],
                    None,
                );
                out.status.success().then_some(())
            },
        )
        .await;
    }
}

impl Drop for DenySecretWrites {
    fn drop(&mut self) {
        for kind in ["validatingadmissionpolicybinding", "validatingadmissionpolicy"] {
            let _ = Command::new("kubectl")
                .args(["delete", kind, &self.name, "--ignore-not-found"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// The Events in `ns` as JSON objects.
pub fn events(ns: &str) -> Vec<serde_json::Value> {
    let list: serde_json::Value = serde_json::from_str(&events_json(ns)).expect("Event list JSON");
    list["items"].as_array().cloned().unwrap_or_default()
}

/// A process the test started, killed by PID when dropped.
pub struct Started {
    child: Child,
    out: PathBuf,
    err: PathBuf,
}

impl Started {
    pub fn spawn(mut cmd: Command, dir: &Path, name: &str) -> Self {
        let out = dir.join(format!("{name}.out"));
        let err = dir.join(format!("{name}.err"));
        cmd.stdout(std::fs::File::create(&out).expect("stdout file"))
            .stderr(std::fs::File::create(&err).expect("stderr file"));
        let child = cmd.spawn().unwrap_or_else(|e| panic!("start {name}: {e}"));
        Self { child, out, err }
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// Waits until it exits, at most until `deadline`; kills it then.
    pub async fn wait(&mut self, deadline: Instant) -> Option<std::process::ExitStatus> {
        exit_within(&mut self.child, deadline).await
    }

    /// Stops it (SIGKILL) and waits for it to exit.
    pub fn stop(&mut self) {
        kill(&mut self.child);
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The strict STS stand-in in front of moto.
pub struct StandIn {
    _process: Started,
    /// Its address, for `AWS_ENDPOINT_URL_STS`.
    pub url: String,
}

impl StandIn {
    /// Starts it in front of the cluster's moto: it grants `lifetime`
    /// seconds and refuses calls signed with keys within `strict` seconds
    /// of expiry. Its output goes under `logs`.
    pub fn start(lifetime: u32, strict: u32, logs: &Path) -> Self {
        let python = std::env::var("ARO_PYTHON").expect("ARO_PYTHON from hack/cluster.sh");
        let moto = std::env::var("AWS_ENDPOINT_URL").expect("AWS_ENDPOINT_URL from hack/cluster.sh");
        Self::start_with(&python, &moto, lifetime, strict, logs)
    }

    /// Starts it with the Python `python`, in front of the moto at `moto`.
    pub fn start_with(python: &str, moto: &str, lifetime: u32, strict: u32, logs: &Path) -> Self {
        Self::listening_on("127.0.0.1", python, moto, lifetime, strict, logs)
    }

    /// Starts it listening on `host` (an address of this machine).
    pub fn listening_on(host: &str, python: &str, moto: &str, lifetime: u32, strict: u32, logs: &Path) -> Self {
        let mut cmd = Command::new(python);
        cmd.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/sts_standin.py"))
            .args([
                moto.to_string(),
                lifetime.to_string(),
                strict.to_string(),
                host.to_string(),
            ]);
        let process = Started::spawn(cmd, logs, "standin");
        let started = Instant::now();
        let port = loop {
            if let Some(line) = process.stdout().lines().next() {
                break line.trim().to_string();
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the stand-in did not start: {}",
                process.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        Self {
            _process: process,
            url: format!("http://{host}:{port}"),
        }
    }

    /// Answers every AssumeRole of the next `seconds` with Throttling.
    pub async fn throttle(&self, seconds: u32) {
        self.control(&format!("throttle?seconds={seconds}")).await;
    }

    /// Makes the ECR tokens given from now on expire `seconds` after they
    /// are given (0: moto's 12 hours).
    #[allow(dead_code)]
    pub async fn ecr_lifetime(&self, seconds: u32) {
        self.control(&format!("ecr_lifetime?seconds={seconds}")).await;
    }

    /// Answers every ECR GetAuthorizationToken of the next `seconds` with
    /// 503.
    #[allow(dead_code)]
    pub async fn ecr_down(&self, seconds: u32) {
        self.control(&format!("ecr_down?seconds={seconds}")).await;
    }

    /// Answers every AssumeRole of the next `seconds` with 503 (used by the
    /// fault matrix).
    #[allow(dead_code)]
    pub async fn down(&self, seconds: u32) {
        self.control(&format!("down?seconds={seconds}")).await;
    }

    /// Makes every AssumeRole of the next `seconds` take `delay` seconds
    /// (used by the fault matrix).
    #[allow(dead_code)]
    pub async fn slow(&self, seconds: u32, delay: u32) {
        self.control(&format!("slow?seconds={seconds}&delay={delay}")).await;
    }

    async fn control(&self, query: &str) {
        let address = self.url.trim_start_matches("http://");
        let (code, body) = http_get(address, &format!("/_standin/{query}"), &[])
            .await
            .expect("the stand-in");
        assert_eq!(code, 200, "{body}");
    }

    /// What it counted and recorded so far.
    pub async fn report(&self) -> serde_json::Value {
        let address = self.url.trim_start_matches("http://");
        let (code, body) = http_get(address, "/_standin/report", &[])
            .await
            .expect("the stand-in's report");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).expect("a JSON report")
    }
}

/// The keys a stand-in's `report` says it issued, oldest first.
pub fn issued(report: &serde_json::Value) -> Vec<&str> {
    report["issued"]
        .as_array()
        .expect("issued")
        .iter()
        .filter_map(serde_json::Value::as_str)
        .collect()
}

/// Which of the issued keys the consumer `app` used, as places in
/// [`issued`], in the order it first used each.
pub fn used_by(report: &serde_json::Value, app: &str) -> Vec<usize> {
    let issued = issued(report);
    report["seen"][app]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(serde_json::Value::as_str)
                .map(|k| issued.iter().position(|i| *i == k).expect("a key the stand-in issued"))
                .collect()
        })
        .unwrap_or_default()
}

/// A TCP proxy between the operator and the API server that can cut the
/// network: while cut, every connection, open or new, is held silent (as a
/// network that drops packets), and closed when the cut ends.
pub struct Proxy {
    port: u16,
    cut: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(target: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let port = listener.local_addr().expect("address").port();
        let (cut, watch) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut cut = watch.clone();
                let target = target.clone();
                tokio::spawn(async move {
                    if !*cut.borrow() {
                        let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else {
                            return;
                        };
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => return,
                            _ = cut.wait_for(|c| *c) => {}
                        }
                    }
                    // Cut: silent until the cut ends, then closed.
                    let _ = cut.wait_for(|c| !*c).await;
                });
            }
        });
        Self { port, cut, task }
    }

    pub fn cut(&self, cut: bool) {
        self.cut.send_replace(cut);
    }

    /// A proxy in front of the API server of the kubeconfig `kubeconfig`,
    /// and a copy of that kubeconfig under `dir` that goes through it.
    pub async fn in_front_of(kubeconfig: &Path, dir: &Path) -> (Self, PathBuf) {
        let text = std::fs::read_to_string(kubeconfig).expect("kubeconfig");
        let server = text
            .lines()
            .find_map(|l| {
                let value = l
                    .trim()
                    .strip_prefix("server:")?
                    .trim()
                    .trim_matches(|c| c == '"' || c == '\'');
                value.strip_prefix("https://")
            })
            .expect("the API server's address")
            .to_string();
        let proxy = Self::start(server.clone()).await;
        let proxied = dir.join("kubeconfig-proxied");
        std::fs::write(&proxied, text.replace(&server, &format!("127.0.0.1:{}", proxy.port)))
            .expect("proxied kubeconfig");
        (proxy, proxied)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// [`audited`] once it holds at least `want` requests of each kind named
/// there (within 10 s): the API server logs a request when its response is
/// complete, which can come after a watch saw the write.
pub async fn audited_at_least(ns: &str, prefix: &str, want: &[(&str, usize)]) -> BTreeMap<String, usize> {
    poll(
        Duration::from_secs(10),
        Duration::from_millis(200),
        "the audit log to record the writes",
        || async {
            let counts = audited(ns, prefix);
            want.iter()
                .all(|(key, n)| counts.get(*key).copied().unwrap_or(0) >= *n)
                .then_some(counts)
        },
    )
    .await
}

/// The API server's own record (its audit log: Secret reads and writes,
/// AssumedRole status writes) of the requests for objects of `ns` whose
/// names start with `prefix`, not made by kubectl, counted as
/// `"VERB resource[/subresource]"`. Tests that count read what they check
/// with kubectl, so that only the operator's requests count. The files the
/// API server rotated out (at 100 MB) count too.
pub fn audited(ns: &str, prefix: &str) -> BTreeMap<String, usize> {
    let state = std::env::var("ARO_STATE").expect("ARO_STATE");
    let mut log = String::new();
    for file in std::fs::read_dir(Path::new(&state).join("logs")).expect("the logs directory") {
        let path = file.expect("a log file").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name.starts_with("audit") && name.ends_with(".log") {
            log.push_str(&std::fs::read_to_string(&path).expect("an audit log"));
        }
    }
    let mut counts = BTreeMap::new();
    // Only the lines that name the namespace are parsed: the log of a long
    // run holds hundreds of thousands.
    let named = format!("\"namespace\":\"{ns}\"");
    for entry in log
        .lines()
        .filter(|l| l.contains(&named))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
    {
        let object = &entry["objectRef"];
        if object["namespace"] != ns
            || !object["name"].as_str().is_some_and(|n| n.starts_with(prefix))
            || entry["userAgent"].as_str().is_some_and(|a| a.starts_with("kubectl/"))
        {
            continue;
        }
        let mut resource = object["resource"].as_str().unwrap_or_default().to_string();
        if let Some(sub) = object["subresource"].as_str() {
            resource = format!("{resource}/{sub}");
        }
        *counts
            .entry(format!("{} {resource}", entry["verb"].as_str().unwrap_or_default()))
            .or_default() += 1;
    }
    counts
}
