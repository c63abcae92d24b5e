//! On a real node (`hack/cluster.sh up --node`, which `make test` starts):
//! the chart's Deployment runs the operator's image as a pod; workload pods
//! made from `examples/` mount the Secret through a real Secret volume, with
//! the credentials endpoint as a native sidecar whose probes the kubelet
//! runs, or with the `config` key in an image with a shell; an AWS SDK in
//! the pod keeps calling STS across rotations, reading what the kubelet
//! wrote. And the node's teardown leaves the machine as it found it.
//!
//! Nothing here imitates the kubelet: the Secret reaches the pods the way
//! it does in a cluster.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests fail loudly

#[path = "common/plane.rs"]
#[allow(dead_code)]
mod plane;
#[path = "e2e/support.rs"]
#[allow(dead_code)]
mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use assumed_role_operator::{api::AssumedRole, secret};
use futures::TryStreamExt;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::{
    Api,
    runtime::{WatchStreamExt, watcher},
};
use serde_json::{Value, json};
use support::*;

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/assumed-role-operator");

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: the node tests run on the node that `make test` starts (hack/cluster.sh up --node)")
    })
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

fn node_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("hack/node.sh")
}

/// The operator's image (`make image`), imported into the node once.
fn operator_image() -> &'static str {
    static IMPORTED: OnceLock<String> = OnceLock::new();
    IMPORTED.get_or_init(|| {
        let image = var("ARO_IMAGE");
        let mut save = Command::new("docker")
            .args(["save", &image])
            .stdout(Stdio::piped())
            .spawn()
            .expect("docker save");
        run(Command::new("bash")
            .arg(node_script())
            .args(["import", &var("ARO_STATE"), "-"])
            .stdin(save.stdout.take().expect("docker save's output")));
        assert!(
            save.wait().expect("docker save").success(),
            "docker save {image} failed"
        );
        image
    })
}

/// Debian's static busybox, unpacked under `dir`: `sh` and `cat` for the
/// `config` route's image.
fn static_busybox(dir: &Path) -> PathBuf {
    run(Command::new("apt-get")
        .args(["download", "busybox-static"])
        .current_dir(dir));
    let deb = std::fs::read_dir(dir)
        .expect("the download folder")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .expect("busybox-static's package");
    let root = dir.join("root");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
    root.join("bin/busybox")
}

/// An image holding the Go SDK's consumer (a static binary) at `/consumer`,
/// and with `shell`, busybox's `sh` and `cat`; imported into the node.
fn consumer_image(shell: bool, dir: &Path) -> String {
    let tag = format!("aro.local/consumer-go:{}", if shell { "shell" } else { "bare" });
    let archive = dir.join("consumer.tar");
    let mut entries = vec![format!("{}=/consumer", var("ARO_SDK_GO"))];
    if shell {
        let busybox = static_busybox(dir);
        entries.push(format!("{}=/bin/busybox", busybox.display()));
        entries.extend(["/bin/sh@busybox".to_string(), "/bin/cat@busybox".to_string()]);
    }
    import_image(&var("ARO_STATE"), &archive, &tag, &entries);
    tag
}

/// Writes a one-layer image `tag` of `entries` (hack/node/image.py's) to
/// `archive`, and imports it into the node of the cluster under `state`.
fn import_image(state: &str, archive: &Path, tag: &str, entries: &[String]) {
    run(Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("hack/node/image.py"))
        .arg(archive)
        .arg(tag)
        .args(entries));
    run(Command::new("bash")
        .arg(node_script())
        .args(["import", state])
        .arg(archive));
}

fn helm(args: &[&str]) -> String {
    run(Command::new(var("ARO_HELM")).args(args))
}

/// A release of the chart that runs the operator's image on the node,
/// watching `watch` and calling the STS at `sts`; uninstalled on drop.
struct Release {
    name: String,
    ns: String,
}

impl Release {
    fn install(name: &str, watch: &str, sts: &str) -> Self {
        Self::install_with(name, watch, sts, &[])
    }

    /// As [`Release::install`], with extra `helm install` arguments.
    fn install_with(name: &str, watch: &str, sts: &str, extra: &[&str]) -> Self {
        let ns = format!("{watch}-system");
        let image = operator_image();
        let (repository, tag) = image.rsplit_once(':').expect("an image with a tag");
        // The operator's own AWS credentials, as a user would hand them in
        // through the chart's extraEnv: moto takes any key.
        apply(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n---\n\
             apiVersion: v1\nkind: Secret\nmetadata: {{name: aws-base, namespace: {ns}}}\n\
             stringData: {{access-key-id: AKIANODETESTBASEKEY1, secret-access-key: node-test-base-secret}}\n"
        ));
        let key = |env: &str, key: &str| json!({"name": env, "valueFrom": {"secretKeyRef": {"name": "aws-base", "key": key}}});
        let extra_env = json!([
            key("AWS_ACCESS_KEY_ID", "access-key-id"),
            key("AWS_SECRET_ACCESS_KEY", "secret-access-key")
        ]);
        let image_values = format!("image.repository={repository},image.tag={tag},image.pullPolicy=Never");
        let sts_values = format!("aws.stsEndpoint={sts},aws.region=us-east-1");
        let watched = format!("watchNamespaces=[\"{watch}\"]");
        let extra_env = format!("extraEnv={extra_env}");
        let mut args = vec![
            "install",
            name,
            CHART,
            "--namespace",
            &ns,
            "--set",
            &image_values,
            "--set",
            &sts_values,
            "--set-json",
            &watched,
            "--set-json",
            &extra_env,
        ];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--wait", "--timeout", "180s"]);
        helm(&args);
        Self { name: name.into(), ns }
    }

    /// The operator's pods.
    async fn pods(&self) -> Vec<Pod> {
        Api::<Pod>::namespaced(client().await, &self.ns)
            .list(&Default::default())
            .await
            .expect("list the release's pods")
            .items
    }

    /// `helm uninstall`, waiting until what it deleted is gone.
    fn uninstall(&mut self) {
        helm(&[
            "uninstall",
            &self.name,
            "--namespace",
            &self.ns,
            "--wait",
            "--timeout",
            "120s",
        ]);
        self.name.clear();
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        if !self.name.is_empty() {
            let _ = Command::new(var("ARO_HELM"))
                .args(["uninstall", &self.name, "--namespace", &self.ns])
                .output();
        }
        let _ = kubectl(
            &["delete", "namespace", &self.ns, "--wait=false", "--ignore-not-found"],
            None,
        );
    }
}

/// A container's status in a pod, by name, among both kinds.
fn container_status<'a>(pod: &'a Pod, name: &str) -> Option<&'a k8s_openapi::api::core::v1::ContainerStatus> {
    let status = pod.status.as_ref()?;
    status
        .container_statuses
        .iter()
        .chain(status.init_container_statuses.iter())
        .flatten()
        .find(|c| c.name == name)
}

/// Waits at most `limit` for the pod `report` to finish; the pod then.
async fn finished(pods: &Api<Pod>, limit: Duration) -> Pod {
    wait_for(
        pods,
        "report",
        limit,
        "the workload pod to finish",
        |p: Option<&Pod>| {
            p.and_then(|p| p.status.as_ref()?.phase.as_deref())
                .is_some_and(|p| p == "Succeeded" || p == "Failed")
        },
    )
    .await
}

/// The consumer's log in the pod `report` of `ns`, and each call it logged
/// (a line it could not parse counts as a failed call).
fn consumer_calls(ns: &str) -> (String, Vec<Value>) {
    let out = kubectl(&["logs", "report", "-c", "report", "-n", ns], None);
    let lines = String::from_utf8_lossy(&out.stdout).to_string();
    let calls = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| json!({"ok": false, "error": l})))
        .collect();
    (lines, calls)
}

/// Every call succeeded as the session of AssumedRole `reader` of `ns`, and
/// the pod `done` ended well.
fn succeeded_as_reader(ns: &str, calls: &[Value], done: &Pod) {
    for call in calls {
        assert_eq!(call["ok"], true, "{call}");
        let arn = call["arn"].as_str().unwrap_or_default();
        assert!(arn.ends_with(&format!("assumed-role/reader/{ns}.reader")), "{arn}");
    }
    assert_eq!(
        done.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded"),
        "{:?}",
        done.status
    );
}

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

#[tokio::test]
#[ignore = "needs the node that `make test` starts"]
async fn the_charts_deployment_runs_the_operator_as_a_pod_that_makes_an_assumed_role_ready() {
    let client = client().await;
    let ns = TestNamespace::create(&client, "node-chart").await;
    let started = Instant::now();
    // Through the host's forwarder to moto: the STS as the pod network sees it.
    let mut release = Release::install("aro-node", &ns.name, &var("ARO_NODE_STS"));
    let installed = started.elapsed();
    let roles: Api<AssumedRole> = Api::namespaced(client.clone(), &ns.name);
    apply(&assumed_role(&ns.name, "reader", ""));
    wait_ready(&roles, "reader", "True", "CredentialsReady").await;
    let first_ready = started.elapsed();
    eprintln!(
        "node: helm install --wait took {installed:?}; the first AssumedRole was Ready {first_ready:?} after the install began"
    );

    // The operator runs as the chart made it: on the node, from the image,
    // under the chart's ServiceAccount and security context, Ready through
    // its probes, never restarted.
    let pods = release.pods().await;
    assert_eq!(pods.len(), 1, "one operator pod: {pods:?}");
    let pod = &pods[0];
    let spec = pod.spec.as_ref().unwrap();
    assert_eq!(spec.node_name.as_deref(), Some(var("ARO_NODE").as_str()));
    assert_eq!(
        spec.service_account_name.as_deref(),
        Some("aro-node-assumed-role-operator")
    );
    let container = &spec.containers[0];
    assert_eq!(container.image.as_deref(), Some(operator_image()));
    assert!(container.readiness_probe.is_some() && container.liveness_probe.is_some());
    let security = container.security_context.as_ref().expect("a security context");
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(
        spec.security_context.as_ref().and_then(|s| s.run_as_non_root),
        Some(true)
    );
    assert!(pod_ready(pod), "the operator's pod is not Ready: {:?}", pod.status);
    let status = container_status(pod, &container.name).expect("the container's status");
    assert!(status.ready && status.restart_count == 0, "{status:?}");

    // Its credentials work.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let secret = secrets.get("reader").await.expect("the Secret");
    let arn = caller_arn(&secret).await.expect("the Secret's credentials work");
    assert!(
        arn.ends_with(&format!("assumed-role/reader/{}.reader", ns.name)),
        "{arn}"
    );

    // `helm uninstall` leaves no pod behind (the operator stops within its
    // grace period); the Secret it made stays.
    release.uninstall();
    let stopping = Instant::now();
    poll(
        Duration::from_secs(60),
        Duration::from_millis(250),
        "the operator's pod to go",
        || async { release.pods().await.is_empty().then_some(()) },
    )
    .await;
    eprintln!(
        "node: the operator's pod was gone {:?} after helm uninstall",
        stopping.elapsed()
    );
    assert!(secrets.get_opt("reader").await.expect("get").is_some());
}

#[test]
#[ignore = "needs the node that `make test` starts"]
fn the_kubelet_refuses_anonymous_requests_and_takes_the_api_servers_certificate() {
    let state = PathBuf::from(var("ARO_STATE"));
    let config = std::fs::read_to_string(state.join("node/kubelet/config.yaml")).expect("the kubelet's config");
    let port = config
        .lines()
        .find_map(|l| l.strip_prefix("port: "))
        .expect("the kubelet's port")
        .trim()
        .to_string();
    let url = format!("https://127.0.0.1:{port}/pods");
    let pki = state.join("pki");
    let ca = pki.join("ca.crt");
    let status = |extra: &[&Path]| {
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(&ca);
        if let [cert, key] = extra {
            cmd.arg("--cert").arg(cert).arg("--key").arg(key);
        }
        run(cmd.arg(&url))
    };
    assert_eq!(status(&[]), "401", "an anonymous request to the kubelet");
    let (cert, key) = (
        pki.join("apiserver-kubelet-client.crt"),
        pki.join("apiserver-kubelet-client.key"),
    );
    assert_eq!(status(&[&cert, &key]), "200", "the API server's request to the kubelet");
}

/// A route from the mounted Secret to the SDK, as `examples/` shows it.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Route {
    /// `examples/pod-endpoint.yaml`: a native sidecar, no shell.
    Endpoint,
    /// `examples/pod-config.yaml`: the `config` key, in an image with a shell.
    Config,
}

/// The workload pod of `examples/` for `route`, as a user would adapt it:
/// their image and command, the Secret of AssumedRole `reader`, and here an
/// STS endpoint and an app id so that the stand-in can count its calls.
fn workload(route: Route, ns: &str, image: &str, sts: &str, run: u32) -> Value {
    let file = match route {
        Route::Endpoint => "pod-endpoint.yaml",
        Route::Config => "pod-config.yaml",
    };
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples").join(file))
        .expect("the example");
    let mut pod: Value = serde_yaml::from_str(&text).expect("the example is YAML");
    pod["metadata"]["namespace"] = json!(ns);
    let spec = &mut pod["spec"];
    // No cluster DNS on this node; a pod that ends when its consumer does.
    spec["dnsPolicy"] = json!("Default");
    spec["restartPolicy"] = json!("Never");
    spec["volumes"][0]["secret"]["secretName"] = json!("reader");
    if let Some(sidecars) = spec["initContainers"].as_array_mut() {
        for sidecar in sidecars {
            sidecar["image"] = json!(operator_image());
            sidecar["imagePullPolicy"] = json!("Never");
        }
    }
    let main = &mut spec["containers"][0];
    main["image"] = json!(image);
    main["imagePullPolicy"] = json!("Never");
    main["command"] = json!(["/consumer", run.to_string(), "1.5"]);
    let env = main["env"].as_array_mut().expect("the example's env");
    env.push(json!({"name": "AWS_ENDPOINT_URL_STS", "value": sts}));
    env.push(json!({"name": "AWS_SDK_UA_APP_ID", "value": format!("node-{route:?}").to_lowercase()}));
    pod
}

/// When each version of the Secret `reader` was written (by its
/// `credentials` key), as a watch sees it.
fn watch_versions(
    secrets: &Api<Secret>,
) -> (
    tokio::task::JoinHandle<()>,
    tokio::sync::watch::Receiver<Vec<(String, Instant)>>,
) {
    let (tx, rx) = tokio::sync::watch::channel(Vec::<(String, Instant)>::new());
    let stream = watcher(
        secrets.clone(),
        watcher::Config::default().fields("metadata.name=reader"),
    )
    .applied_objects();
    let task = tokio::spawn(async move {
        let _ = stream
            .try_for_each(|s| {
                let key = data(&s).get(secret::CREDENTIALS).cloned().unwrap_or_default();
                tx.send_modify(|seen| {
                    if seen.last().is_none_or(|(k, _)| *k != key) {
                        seen.push((key, Instant::now()));
                    }
                });
                futures::future::ready(Ok(()))
            })
            .await;
    });
    (task, rx)
}

/// Polls the files the kubelet wrote for the pod's volume `aws`, on the
/// host, every 100 ms until `until`: when each version of `credentials`
/// first appeared there.
async fn watch_the_mount(uid: &str, until: Instant) -> Vec<(String, Instant)> {
    let file = Path::new(&var("ARO_NODE_KUBELET_DIR"))
        .join("pods")
        .join(uid)
        .join("volumes/kubernetes.io~secret/aws")
        .join(secret::CREDENTIALS);
    let mut seen: Vec<(String, Instant)> = Vec::new();
    while Instant::now() < until {
        if let Ok(text) = std::fs::read_to_string(&file)
            && seen.last().is_none_or(|(k, _)| *k != text)
        {
            seen.push((text, Instant::now()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    seen
}

/// The workload pod for `route` runs on the node with an SDK consumer that
/// calls STS every 1.5 s for longer than the SDK keeps one set, through a
/// strict stand-in that grants 320 s and refuses keys within 60 s of their
/// expiry: the operator rotates the Secret every 10 to 20 s.
async fn an_sdk_in_a_pod_keeps_working_across_rotations(route: Route) {
    const LIFETIME: u32 = 320;
    const STRICT: u32 = 60;
    // The SDKs are handed an expiration 120 s early and keep a set until
    // then: a run of 230 s sees them move to a newer one.
    const RUN: u32 = 230;
    let client = client().await;
    let prefix = format!("node-{route:?}").to_lowercase();
    let ns = TestNamespace::create(&client, &prefix).await;
    let logs = tempfile::tempdir().expect("logs dir");
    let standin = StandIn::listening_on(
        &var("ARO_NODE_HOST"),
        &var("ARO_PYTHON"),
        &var("AWS_ENDPOINT_URL"),
        LIFETIME,
        STRICT,
        logs.path(),
    );
    let _release = Release::install(&format!("aro-{prefix}"), &ns.name, &standin.url);
    let roles: Api<AssumedRole> = Api::namespaced(client.clone(), &ns.name);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    apply(&assumed_role(&ns.name, "reader", ""));
    wait_ready(&roles, "reader", "True", "CredentialsReady").await;
    let (watch, versions) = watch_versions(&secrets);

    let images = tempfile::tempdir().expect("image dir");
    let image = consumer_image(route == Route::Config, images.path());
    let pod = workload(route, &ns.name, &image, &standin.url, RUN);
    apply(&pod.to_string());
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let running = wait_for(
        &pods,
        "report",
        Duration::from_secs(90),
        "the workload pod Ready",
        |p: Option<&Pod>| p.is_some_and(pod_ready),
    )
    .await;
    let uid = running.metadata.uid.clone().expect("a UID");
    if route == Route::Endpoint {
        // The kubelet ran the sidecar's startup and readiness probes, and
        // they passed: the pod is Ready only once the sidecar is.
        let sidecar = container_status(&running, "aws-credentials").expect("the sidecar's status");
        assert!(sidecar.started == Some(true) && sidecar.ready, "{sidecar:?}");
    }
    let mounted = watch_the_mount(&uid, Instant::now() + Duration::from_secs(u64::from(RUN))).await;
    let done = finished(&pods, Duration::from_secs(90)).await;
    watch.abort();
    let written = versions.borrow().clone();

    // The consumer: every call succeeded, as the AssumedRole's session.
    let (_, calls) = consumer_calls(&ns.name);
    let failed: Vec<&Value> = calls.iter().filter(|c| c["ok"] != true).collect();
    assert!(
        failed.is_empty(),
        "{} of {} calls failed, the first: {:?}",
        failed.len(),
        calls.len(),
        failed.first()
    );
    assert!(calls.len() >= 100, "only {} calls in {RUN} s", calls.len());
    succeeded_as_reader(&ns.name, &calls, &done);

    // What the kubelet wrote: the operator rotated the Secret at least three
    // times while the consumer ran, and each rotation reached the pod.
    assert!(
        mounted.len() >= 4,
        "the mount changed {} times",
        mounted.len().saturating_sub(1)
    );
    let mut delays = Vec::new();
    for (key, at) in &mounted[1..] {
        let (_, written_at) = written
            .iter()
            .find(|(k, _)| k == key)
            .expect("every version in the pod is one the operator wrote");
        delays.push(at.saturating_duration_since(*written_at));
    }
    delays.sort();
    eprintln!(
        "node {route:?}: {} rotations reached the pod; Secret write to file in the pod: min {:?}, median {:?}, max {:?}",
        delays.len(),
        delays[0],
        delays[delays.len() / 2],
        delays[delays.len() - 1]
    );

    // The stand-in: no call with a key near its expiry, and the SDK moved to
    // a newer key by itself, in the order they were issued.
    let report = standin.report().await;
    let app = format!("node-{route:?}").to_lowercase();
    let issued = issued(&report);
    let seen = used_by(&report, &app);
    assert!(
        report["rejected"].as_array().is_some_and(Vec::is_empty),
        "the stand-in refused calls: {}",
        report["rejected"]
    );
    assert!(
        seen.len() >= 2 && seen.windows(2).all(|w| w[0] < w[1]),
        "the SDK used keys {seen:?} of {}",
        issued.len()
    );

    if route == Route::Endpoint {
        // The kubelet kept running the probes, and none failed.
        let events = events(&ns.name);
        let unhealthy: Vec<&Value> = events
            .iter()
            .filter(|e| e["reason"] == "Unhealthy" || e["reason"] == "BackOff")
            .collect();
        assert!(unhealthy.is_empty(), "probe failures: {unhealthy:?}");
        let sidecar = container_status(&done, "aws-credentials").expect("the sidecar's status");
        assert_eq!(sidecar.restart_count, 0, "{sidecar:?}");
    }
}

#[tokio::test]
#[ignore = "needs the node that `make test` starts"]
async fn a_pod_with_the_endpoint_sidecar_keeps_reading_fresh_credentials_across_rotations() {
    an_sdk_in_a_pod_keeps_working_across_rotations(Route::Endpoint).await;
}

#[tokio::test]
#[ignore = "needs the node that `make test` starts"]
async fn a_pod_with_a_shell_keeps_reading_fresh_credentials_through_the_config_key() {
    an_sdk_in_a_pod_keeps_working_across_rotations(Route::Config).await;
}

/// What a node changes on the host, read off the host. Of the mounts, those
/// a node makes: under its state folder `scope`, or under the host paths
/// the kubelet, containerd and CNI use whatever their settings (other tests
/// may run beside this one and mount elsewhere).
#[derive(Debug, PartialEq)]
struct Host {
    sysctls: BTreeMap<String, String>,
    loopback: String,
    paths: BTreeSet<String>,
    mounts: BTreeSet<String>,
    cgroups: BTreeSet<String>,
    processes: BTreeSet<String>,
}

impl Host {
    fn read() -> Self {
        let sysctls = [
            "vm.overcommit_memory",
            "kernel.panic",
            "kernel.panic_on_oops",
            "net.ipv4.ip_forward",
        ]
        .iter()
        .map(|k| {
            (
                k.to_string(),
                run(Command::new("sysctl").args(["-n", k])).trim().to_string(),
            )
        })
        .collect();
        let paths = [
            "/var/log/containers",
            "/var/lib/kubelet",
            "/var/lib/cni",
            "/run/containerd/s",
            "/run/containerd/fifo",
            "/run/assumed-role-operator-node",
        ]
        .iter()
        .filter(|p| Path::new(p).exists())
        .map(|p| p.to_string())
        .collect();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo")
            .expect("mountinfo")
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
            .collect();
        let cgroups = std::fs::read_dir("/sys/fs/cgroup")
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.path().join("kubepods"))
                    .filter(|p| p.exists())
                    .map(|p| p.display().to_string())
                    .collect()
            })
            .unwrap_or_default();
        let processes = std::fs::read_dir("/proc")
            .expect("/proc")
            .filter_map(Result::ok)
            .filter_map(|e| {
                let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
                let comm = comm.trim();
                ["containerd", "containerd-shim", "kubelet", "kube-scheduler", "pause"]
                    .contains(&comm)
                    .then(|| format!("{comm} {}", e.file_name().to_string_lossy()))
            })
            .collect();
        Self {
            sysctls,
            loopback: run(Command::new("ip").args(["-br", "addr", "show", "dev", "lo"])),
            paths,
            mounts,
            cgroups,
            processes,
        }
    }

    /// The same, with only the mounts a node under `scope` could make.
    fn of_node(mut self, scope: &Path) -> Self {
        let scope = scope.display().to_string();
        self.mounts.retain(|m| {
            [
                scope.as_str(),
                "/var/lib/kubelet",
                "/var/lib/cni",
                "/run/containerd",
                "/run/netns",
                "/var/log/pods",
            ]
            .iter()
            .any(|p| m.starts_with(p))
        });
        self
    }
}

#[tokio::test]
#[ignore = "needs the node that `make test` starts"]
async fn a_pod_with_one_label_and_one_annotation_gets_working_credentials_from_the_charts_webhook() {
    let client = client().await;
    let ns = TestNamespace::create(&client, "node-hook").await;
    // The webhook as a cluster runs it: the chart's two replicas of the
    // operator's image on the node, behind its Service, with their own CA.
    let release = Release::install_with(
        "aro-hook",
        &ns.name,
        &var("ARO_NODE_STS"),
        &["--set", "webhook.enabled=true"],
    );
    let configurations: Api<k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration> =
        Api::all(client.clone());
    poll(
        Duration::from_secs(60),
        Duration::from_millis(250),
        "the webhook's CA bundle",
        || async {
            let mwc = configurations.get("aro-hook-assumed-role-operator").await.ok()?;
            let bundle = mwc.webhooks?[0].client_config.ca_bundle.clone()?;
            (!bundle.0.is_empty()).then_some(())
        },
    )
    .await;
    assert_eq!(release.pods().await.len(), 2, "two replicas serve the webhook");
    let roles: Api<AssumedRole> = Api::namespaced(client.clone(), &ns.name);
    apply(&assumed_role(&ns.name, "reader", ""));
    wait_ready(&roles, "reader", "True", "CredentialsReady").await;

    // The example's Deployment: its pods, created by the ReplicaSet
    // controller (which may send them without a namespace of their own),
    // are wired alike.
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/deployment-injected.yaml"
    ))
    .expect("the example");
    apply(
        &example
            .replace("namespace: default", &format!("namespace: {}", ns.name))
            .replace("billing-reader-aws", "reader")
            .replace("billing-reader", "reader"),
    );
    let example_pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let made = poll(
        Duration::from_secs(30),
        Duration::from_millis(200),
        "the example's pods",
        || async {
            let list = example_pods
                .list(&kube::api::ListParams::default().labels("app=report"))
                .await
                .ok()?;
            (list.items.len() == 2).then_some(list.items)
        },
    )
    .await;
    for pod in made {
        let spec = pod.spec.expect("a spec");
        let init = spec.init_containers.expect("the sidecar");
        assert_eq!(init[0].name, "sts-credentials-endpoint");
        assert_eq!(init[0].restart_policy.as_deref(), Some("Always"));
        let env = spec.containers[0].env.clone().unwrap_or_default();
        assert!(
            env.iter().any(|e| e.name == "AWS_CONTAINER_CREDENTIALS_FULL_URI"),
            "{env:?}"
        );
        assert!(
            env.iter().any(|e| e.name == "AWS_REGION"),
            "the pod's own environment stays"
        );
    }

    // What the user writes: a label, an annotation, their image (no shell).
    let images = tempfile::tempdir().expect("image dir");
    let image = consumer_image(false, images.path());
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "report",
            "namespace": ns.name,
            "labels": {"sts.refresh.dev/inject": "true"},
            "annotations": {"sts.refresh.dev/assumed-role": "reader"},
        },
        "spec": {
            "dnsPolicy": "Default",
            "restartPolicy": "Never",
            "containers": [{
                "name": "report",
                "image": image,
                "imagePullPolicy": "Never",
                "command": ["/consumer", "6", "1"],
                "env": [
                    {"name": "AWS_ENDPOINT_URL_STS", "value": var("ARO_NODE_STS")},
                    {"name": "AWS_REGION", "value": "us-east-1"},
                ],
            }],
        },
    });
    apply(&pod.to_string());
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let done = finished(&pods, Duration::from_secs(120)).await;
    let spec = done.spec.as_ref().expect("a spec");
    let sidecar = &spec.init_containers.as_ref().expect("the injected sidecar")[0];
    assert_eq!(sidecar.name, "sts-credentials-endpoint");
    assert_eq!(sidecar.image.as_deref(), Some(operator_image()));
    let status = container_status(&done, "sts-credentials-endpoint").expect("the sidecar's status");
    assert_eq!(status.restart_count, 0, "{status:?}");
    let (lines, calls) = consumer_calls(&ns.name);
    assert!(!calls.is_empty(), "no calls: {lines}");
    succeeded_as_reader(&ns.name, &calls, &done);
    eprintln!(
        "node: a pod wired by the webhook made {} STS calls as the AssumedRole",
        calls.len()
    );
}

#[tokio::test]
#[ignore = "starts a node of its own: run alone, with no other node up (`make test` does)"]
async fn the_nodes_teardown_leaves_the_host_as_it_found_it() {
    let before = Host::read();
    let plane = plane::ControlPlane::with_node();
    let before = before.of_node(plane.state());
    // A running pod with a Secret volume, so that there are mounts, a
    // sandbox, a network namespace and cgroups to undo (its consumer finds
    // no credentials and keeps trying).
    plane.kubectl(&["create", "secret", "generic", "data", "--from-literal=k=v"], None);
    poll(
        Duration::from_secs(30),
        Duration::from_millis(200),
        "the default ServiceAccount",
        || async {
            kubectl_with(
                &[("KUBECONFIG", &plane.env["KUBECONFIG"])],
                &["get", "serviceaccount", "default"],
                None,
            )
            .status
            .success()
            .then_some(())
        },
    )
    .await;
    let dir = tempfile::tempdir().expect("image dir");
    import_image(
        &plane.env["ARO_STATE"],
        &dir.path().join("sleeper.tar"),
        "aro.local/sleeper:1",
        &[format!("{}=/consumer", var("ARO_SDK_GO"))],
    );
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "sleeper"},
        "spec": {
            "dnsPolicy": "Default",
            "containers": [{"name": "c", "image": "aro.local/sleeper:1", "imagePullPolicy": "Never",
                "command": ["/consumer", "600", "5"], "volumeMounts": [{"name": "d", "mountPath": "/d"}]}],
            "restartPolicy": "Never",
            "volumes": [{"name": "d", "secret": {"secretName": "data"}}]
        }
    });
    plane.kubectl(&["apply", "-f", "-"], Some(&pod.to_string()));
    plane.kubectl(
        &["wait", "--for", "condition=Ready", "--timeout=60s", "pod/sleeper"],
        None,
    );
    let during = Host::read().of_node(plane.state());
    // The node did change the host (else this test could not fail).
    assert!(
        during.mounts.len() > before.mounts.len(),
        "no mounts while the node ran"
    );
    assert!(!during.cgroups.is_empty(), "no kubepods cgroups while the node ran");
    assert_ne!(during.loopback, before.loopback);
    assert!(during.paths.contains("/run/assumed-role-operator-node"));
    let scope = plane.state().to_path_buf();
    drop(plane);
    let after = Host::read().of_node(&scope);
    assert_eq!(
        after, before,
        "the host after the node's teardown differs from before it started"
    );
}
