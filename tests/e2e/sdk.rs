//! Real SDKs in a "pod": the Secret laid out on disk the way the kubelet
//! does it, the credentials endpoint running beside them as a sidecar would,
//! and six long-lived AWS clients (boto3, the AWS CLI v1, Go v2, Java v2,
//! JavaScript v3, Rust), each started once, through both routes, against a
//! strict STS stand-in that refuses credentials close to their expiry.
//!
//! The kubelet's writer is imitated here (`project`, `mirror`) only for what
//! a real kubelet cannot give: six runtimes at once without an image of
//! each, a kubelet slower than a real one (5 s after each write), and, for
//! the endpoint's and the probe's tests, credentials that expire on disk and
//! a Secret emptied and refilled at chosen moments.
//! `tests/node.rs` runs both routes in real pods on a real node, with the
//! Secret mounted by the kubelet.

use std::{
    collections::BTreeMap,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use futures::TryStreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::Value;

use crate::support::*;

/// Writes a Secret's data under `dir` as the kubelet's atomic writer does:
/// the files live in a timestamped folder, `..data` links to it, each key is
/// a link into `..data`, and an update swaps `..data` with one rename.
pub(crate) fn project(dir: &Path, data: &BTreeMap<String, String>, generation: usize) {
    let folder = format!("..2026_{generation:06}");
    let target = dir.join(&folder);
    std::fs::create_dir(&target).expect("create the data folder");
    for (key, value) in data {
        std::fs::write(target.join(key), value).expect("write a key");
        let link = dir.join(key);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(key), &link).expect("link a key");
        }
    }
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&folder, &tmp).expect("link the new folder");
    let old = std::fs::read_link(dir.join("..data")).ok();
    std::fs::rename(&tmp, dir.join("..data")).expect("swap ..data");
    if let Some(old) = old {
        let _ = std::fs::remove_dir_all(dir.join(old));
    }
}

/// The credentials endpoint as a sidecar runs it, over the folder `mount`.
async fn start_endpoint(mount: &Path, logs: &Path) -> (Started, String) {
    let address = format!("127.0.0.1:{}", free_port());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_assumed-role-operator"));
    cmd.args(["credentials-endpoint", "--listen", &address, "--credentials-dir"])
        .arg(mount)
        .env_clear();
    let endpoint = Started::spawn(cmd, logs, "endpoint");
    poll(
        Duration::from_secs(20),
        Duration::from_millis(50),
        "the endpoint's readiness",
        || async { matches!(http_get(&address, "/readyz", &[]).await, Ok((200, _))).then_some(()) },
    )
    .await;
    (endpoint, address)
}

/// Keeps the folder `mount` in step with the Secret `name`, each change
/// `delay` after it was written, as the kubelet does. Returns the task.
fn mirror(secrets: &kube::Api<Secret>, name: &str, mount: &Path, delay: Duration) -> tokio::task::JoinHandle<()> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, BTreeMap<String, String>)>();
    let watch = watcher(
        secrets.clone(),
        watcher::Config::default().fields(&format!("metadata.name={name}")),
    )
    .applied_objects()
    .try_for_each(move |secret| {
        let _ = tx.send((tokio::time::Instant::now() + delay, data(&secret)));
        futures::future::ready(Ok(()))
    });
    let dir = mount.to_path_buf();
    tokio::spawn(async move {
        let apply = tokio::spawn(async move {
            let mut generation = 0;
            while let Some((at, data)) = rx.recv().await {
                tokio::time::sleep_until(at).await;
                generation += 1;
                project(&dir, &data, generation);
            }
        });
        let _ = watch.await;
        apply.abort();
    })
}

fn var(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} is not set: run the tests with `make test` (hack/sdks.sh env)"))
}

/// The command that runs one SDK's consumer for `seconds`, calling every
/// `interval` seconds. Programs by absolute path: the shell-less route
/// gives them an empty `PATH`.
pub(crate) fn consumer(sdk: &str, seconds: u32, interval: f32) -> Command {
    let (s, i) = (seconds.to_string(), interval.to_string());
    let mut cmd;
    match sdk {
        "boto3" => {
            cmd = Command::new(var("ARO_SDK_PYTHON"));
            cmd.args([var("ARO_SDK_BOTO3_SCRIPT"), s, i]);
        }
        "cli" => {
            cmd = Command::new(var("ARO_SDK_PYTHON"));
            cmd.args([var("ARO_SDK_CLI_SCRIPT"), var("ARO_SDK_AWS_CLI"), s, i]);
        }
        "go" => {
            cmd = Command::new(var("ARO_SDK_GO"));
            cmd.args([s, i]);
        }
        "java" => {
            cmd = Command::new(var("ARO_SDK_JAVA"));
            cmd.args(["-Xmx96m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-cp"])
                .arg(var("ARO_SDK_JAVA_CLASSPATH"))
                .args(["dev.refresh.sts.Consumer", &s, &i]);
        }
        "js" => {
            cmd = Command::new(var("ARO_SDK_NODE"));
            cmd.args([var("ARO_SDK_JS"), s, i]);
        }
        "rust" => {
            cmd = Command::new(var("ARO_SDK_RUST"));
            cmd.args([s, i]);
        }
        other => panic!("no consumer for {other}"),
    }
    cmd
}

/// Points a consumer at the credentials endpoint on `address`, with the
/// token of the Secret mounted at `mount`: the shell-less route.
pub(crate) fn through_endpoint(cmd: &mut Command, address: &str, mount: &Path) {
    cmd.env(
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        format!("http://{address}/v1/credentials"),
    )
    .env("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", mount.join("endpoint-token"));
}

/// What a consumer printed: one JSON line per call, `{"ok": ...}`; a line
/// that is not JSON counts as a failed call.
pub(crate) fn calls(consumer: &Started) -> Vec<Value> {
    consumer
        .stdout()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| serde_json::json!({"ok": false, "error": l})))
        .collect()
}

/// A namespace with an operator started with `env`, an AssumedRole `reader`
/// whose Secret is meant to be mounted at a fresh folder, and that Secret
/// projected into the folder as the kubelet would. Returns the scene, the
/// folder, a folder for logs, and the Secret as first written.
pub(crate) async fn served(
    prefix: &str,
    env: &[(&str, &str)],
) -> (Scene, tempfile::TempDir, tempfile::TempDir, Secret) {
    let scene = Scene::start(prefix, &[], env).await;
    let mount = tempfile::tempdir().expect("mount dir");
    apply(&assumed_role(
        &scene.ns.name,
        "reader",
        &format!("  secret:\n    mountPath: {}\n", mount.path().display()),
    ));
    let secret = wait_for(
        &scene.secrets,
        "reader",
        Duration::from_secs(30),
        "the Secret",
        |s: Option<&Secret>| s.is_some(),
    )
    .await;
    project(mount.path(), &data(&secret), 0);
    let logs = tempfile::tempdir().expect("logs dir");
    (scene, mount, logs, secret)
}

const SDKS: [&str; 6] = ["boto3", "cli", "go", "java", "js", "rust"];

/// A route from the mounted Secret to an SDK.
#[derive(Clone, Copy, Debug)]
enum Route {
    /// `AWS_CONFIG_FILE` and `credential_process = cat ...`, with a shell.
    Config,
    /// The credentials endpoint, with no shell and no coreutils on `PATH`.
    Endpoint,
}

#[tokio::test]
#[ignore = "needs the local control plane and the SDK consumers; run with `make test`"]
async fn six_sdks_started_once_keep_working_across_rotations_through_both_routes() {
    // The stand-in grants 320 s: the operator refreshes 300 s (its floor)
    // before expiry, less jitter, so every 10 to 20 s; SDKs are handed an
    // expiration 120 s early, so those that keep a set until then move on
    // after about 200 s. A call signed with a key within 60 s of its expiry
    // is refused.
    const LIFETIME: u32 = 320;
    const STRICT: u32 = 60;
    const RUN: u32 = 235;
    const KUBELET_DELAY: Duration = Duration::from_secs(5);
    let logs = tempfile::tempdir().expect("logs dir");
    let standin = StandIn::start(LIFETIME, STRICT, logs.path());
    let (scene, mount, _, _) = served("sdks", &[("AWS_ENDPOINT_URL_STS", standin.url.as_str())]).await;
    let Scene {
        ns,
        secrets,
        operator: _operator,
        ..
    } = scene;
    let mirror = mirror(&secrets, "reader", mount.path(), KUBELET_DELAY);
    let (_endpoint, address) = start_endpoint(mount.path(), logs.path()).await;

    let home = tempfile::tempdir().expect("an empty HOME");
    let bare = tempfile::tempdir().expect("an empty PATH");
    let mut running = Vec::new();
    for sdk in SDKS {
        for route in [Route::Config, Route::Endpoint] {
            let interval = if sdk == "cli" { 2.0 } else { 1.5 };
            let mut cmd = consumer(sdk, RUN, interval);
            let app = format!("{sdk}-{route:?}").to_lowercase();
            cmd.env_clear()
                .env("HOME", home.path())
                .env("AWS_REGION", "us-east-1")
                .env("AWS_DEFAULT_REGION", "us-east-1")
                .env("AWS_ENDPOINT_URL_STS", &standin.url)
                .env("AWS_SDK_UA_APP_ID", &app)
                .env("AWS_EC2_METADATA_DISABLED", "true")
                .env("AWS_SHARED_CREDENTIALS_FILE", home.path().join("no-credentials"));
            match route {
                Route::Config => {
                    cmd.env("PATH", std::env::var("PATH").unwrap_or_default())
                        .env("AWS_CONFIG_FILE", mount.path().join("config"));
                }
                Route::Endpoint => {
                    cmd.env("PATH", bare.path())
                        .env("AWS_CONFIG_FILE", home.path().join("no-config"));
                    through_endpoint(&mut cmd, &address, mount.path());
                }
            }
            running.push((app.clone(), Started::spawn(cmd, logs.path(), &app)));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(u64::from(RUN) + 90);
    let mut table = Vec::new();
    let mut failed = Vec::new();
    for (app, process) in &mut running {
        let status = process.wait(deadline).await;
        let calls = calls(process);
        let bad: Vec<&Value> = calls.iter().filter(|c| c["ok"] != true).collect();
        if status.is_none_or(|s| !s.success()) || !bad.is_empty() || calls.is_empty() {
            failed.push(format!(
                "{app}: exit {status:?}, {} of {} calls failed, first: {:?}; stderr: {}",
                bad.len(),
                calls.len(),
                bad.first(),
                process.stderr().chars().take(800).collect::<String>()
            ));
        }
        for call in calls.iter().filter(|c| c["ok"] == true) {
            let arn = call["arn"].as_str().unwrap_or_default();
            assert!(
                arn.ends_with(&format!("assumed-role/reader/{}.reader", ns.name)),
                "{app}: {arn}"
            );
        }
        table.push((app.clone(), calls.len(), bad.len()));
    }
    mirror.abort();
    let report = standin.report().await;
    let issued = issued(&report);
    eprintln!(
        "sdk matrix: {} STS AssumeRole calls, {} keys issued",
        report["assume_role"],
        issued.len()
    );
    eprintln!(
        "{:<16} {:>6} {:>8} {:>10} {:>6}",
        "sdk-route", "calls", "failed", "stand-in", "keys"
    );
    let mut stuck = Vec::new();
    for (app, calls, bad) in &table {
        let positions = used_by(&report, app);
        let counted: u64 = report["calls"][app.as_str()]
            .as_object()
            .map(|m| m.values().filter_map(Value::as_u64).sum())
            .unwrap_or(0);
        eprintln!("{app:<16} {calls:>6} {bad:>8} {counted:>10} {:>6}", positions.len());
        // Keys are used in the order they were issued, and at least one newer
        // than the first.
        if positions.len() < 2 || positions.windows(2).any(|w| w[0] >= w[1]) {
            stuck.push(format!("{app} used keys {positions:?} of {}", issued.len()));
        }
    }
    let rejected = report["rejected"].as_array().expect("rejected");
    assert!(
        rejected.is_empty(),
        "the stand-in refused {} calls, the first: {:?}",
        rejected.len(),
        &rejected[..rejected.len().min(5)]
    );
    assert!(failed.is_empty(), "consumers failed:\n{}", failed.join("\n"));
    assert!(stuck.is_empty(), "SDKs did not move to newer keys: {stuck:?}");
    assert!(
        issued.len() >= 4,
        "want at least three rotations, saw {} keys",
        issued.len()
    );
    assert!(
        report["calls"].get("unknown").is_none(),
        "calls without an app id: {report}"
    );
}

#[tokio::test]
#[ignore = "needs the local control plane; run with `make test`"]
async fn the_endpoint_stops_serving_a_revoked_grant_at_once_and_serves_the_new_credentials_when_it_returns() {
    let (scene, mount, logs, secret) = served("endpoint-revoke", &[]).await;
    let (_endpoint, address) = start_endpoint(mount.path(), logs.path()).await;
    let token = data(&secret)["endpoint-token"].clone();
    let ask = || async {
        http_get(&address, "/v1/credentials", &[("Authorization", token.as_str())])
            .await
            .expect("reach the endpoint")
    };
    assert_eq!(ask().await.0, 200);
    let ns = scene.ns.name.clone();
    // The namespace's policy stops naming the role: the Secret loses its
    // credentials, and the kubelet projects that version.
    allow(&ns, &ns, &["arn:aws:iam::*:role/someone-else"]);
    wait_ready(&scene.roles, "reader", "False", "PolicyDenied").await;
    let emptied = scene.secrets.get("reader").await.expect("the Secret stays");
    project(mount.path(), &data(&emptied), 1);
    let (code, body) = ask().await;
    assert_eq!(code, 503, "{body}");
    assert!(!body.contains(&data(&secret)["AWS_ACCESS_KEY_ID"]), "{body}");
    let (code, _) = http_get(&address, "/readyz", &[]).await.expect("readyz");
    assert_eq!(code, 503, "ready without credentials");
    // The grant returns: new credentials, served as soon as they are on disk.
    allow(&ns, &ns, &["arn:*:iam::*:role/*"]);
    wait_ready(&scene.roles, "reader", "True", "CredentialsReady").await;
    let refilled = scene.secrets.get("reader").await.expect("Secret");
    project(mount.path(), &data(&refilled), 2);
    let (code, body) = ask().await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(&data(&refilled)["AWS_ACCESS_KEY_ID"]), "{body}");
}

#[tokio::test]
#[ignore = "needs the local control plane; run with `make test`"]
async fn the_endpoint_answers_only_the_right_token() {
    let (_scene, mount, logs, secret) = served("endpoint-token", &[]).await;
    let (endpoint, address) = start_endpoint(mount.path(), logs.path()).await;
    let data = data(&secret);
    let token = data["endpoint-token"].as_str();
    let get = |headers: Vec<(&'static str, String)>| {
        let address = address.clone();
        async move {
            let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            http_get(&address, "/v1/credentials", &headers)
                .await
                .expect("reach the endpoint")
        }
    };
    for (what, headers) in [
        ("no token", vec![]),
        ("an empty token", vec![("Authorization", String::new())]),
        ("a wrong token", vec![("Authorization", "0".repeat(token.len()))]),
        (
            "a prefix of the token",
            vec![("Authorization", token[..32].to_string())],
        ),
        (
            "the token of another header",
            vec![("X-Authorization", token.to_string())],
        ),
    ] {
        let (code, body) = get(headers).await;
        assert_eq!(code, 401, "{what}: {body}");
        assert!(
            !body.contains(&data["AWS_ACCESS_KEY_ID"]),
            "{what}: credentials in a refusal"
        );
    }
    let (code, body) = get(vec![("Authorization", token.to_string())]).await;
    assert_eq!(code, 200, "{body}");
    // Its log tells what it refused and why, and never a credential or the
    // token.
    let log = endpoint.stderr();
    assert!(
        log.contains("refused a request without the right authorization token"),
        "{log}"
    );
    for key in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "endpoint-token",
    ] {
        assert!(!log.contains(&data[key]), "{key} in the endpoint's log");
    }
    let answer: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(answer["AccessKeyId"], data["AWS_ACCESS_KEY_ID"]);
    assert_eq!(answer["SecretAccessKey"], data["AWS_SECRET_ACCESS_KEY"]);
    assert_eq!(answer["Token"], data["AWS_SESSION_TOKEN"]);
    // Advertised two minutes before the real expiry.
    let real: jiff::Timestamp = data["expiration"].parse().expect("expiration");
    let advertised: jiff::Timestamp = answer["Expiration"]
        .as_str()
        .expect("Expiration")
        .parse()
        .expect("time");
    assert_eq!(real.duration_since(advertised), jiff::SignedDuration::from_mins(2));
}

#[tokio::test]
#[ignore = "needs the local control plane; run with `make test`"]
async fn the_endpoint_listens_on_loopback_only() {
    let logs = tempfile::tempdir().expect("logs dir");
    let mount = tempfile::tempdir().expect("mount dir");
    for address in ["0.0.0.0:0", "[::]:0", "10.0.0.1:9911"] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_assumed-role-operator"));
        cmd.args(["credentials-endpoint", "--listen", address, "--credentials-dir"])
            .arg(mount.path())
            .env_clear();
        let mut process = Started::spawn(cmd, logs.path(), "endpoint");
        let status = process.wait(Instant::now() + Duration::from_secs(20)).await;
        assert!(status.is_some_and(|s| !s.success()), "{address}: {status:?}");
        assert!(
            process.stderr().contains("loopback address only"),
            "{address}: {}",
            process.stderr()
        );
    }
    // Started on loopback, it is not reachable through any other address of
    // this machine.
    let (_scene, mount, logs, _secret) = served("endpoint-loopback", &[]).await;
    let (_endpoint, address) = start_endpoint(mount.path(), logs.path()).await;
    let port = address.rsplit(':').next().expect("port");
    let others = Command::new("hostname")
        .arg("-I")
        .stderr(Stdio::null())
        .output()
        .expect("hostname -I");
    let others = String::from_utf8_lossy(&others.stdout).to_string();
    for ip in others.split_whitespace().filter(|ip| !ip.starts_with("127.")) {
        let target = if ip.contains(':') {
            format!("[{ip}]:{port}")
        } else {
            format!("{ip}:{port}")
        };
        let reached = http_get(&target, "/readyz", &[]).await;
        assert!(reached.is_err(), "reached through {target}: {reached:?}");
    }
    assert!(matches!(http_get(&address, "/readyz", &[]).await, Ok((200, _))));
}

#[tokio::test]
#[ignore = "needs the local control plane; run with `make test`"]
async fn the_endpoint_never_serves_expired_credentials_and_rides_out_a_swap() {
    let (_scene, mount, logs, secret) = served("endpoint-expired", &[]).await;
    let (_endpoint, address) = start_endpoint(mount.path(), logs.path()).await;
    let good = data(&secret);
    let headers = [("Authorization", good["endpoint-token"].as_str())];
    let get = || http_get(&address, "/v1/credentials", &headers);
    assert_eq!(get().await.expect("reach").0, 200);

    // A read that fails half-way through a swap (the folder that `..data`
    // names is gone) is answered from the last good set.
    let folder = std::fs::read_link(mount.path().join("..data")).expect("..data");
    std::fs::remove_dir_all(mount.path().join(&folder)).expect("remove the folder");
    let (code, body) = get().await.expect("reach");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(&good["AWS_ACCESS_KEY_ID"]));

    // What the kubelet brings next has expired (the operator could not
    // refresh it): 503, never the credentials, and not ready.
    let mut expired = good.clone();
    expired.insert("expiration".into(), "2020-01-01T00:00:00Z".into());
    project(mount.path(), &expired, 1);
    let (code, body) = get().await.expect("reach");
    assert_eq!(code, 503, "{body}");
    assert!(!body.contains(&good["AWS_ACCESS_KEY_ID"]), "credentials in a refusal");
    assert_eq!(http_get(&address, "/readyz", &[]).await.expect("reach").0, 503);

    // Valid credentials again: served at once.
    project(mount.path(), &good, 2);
    assert_eq!(get().await.expect("reach").0, 200);
}

#[tokio::test]
#[ignore = "needs the local control plane; run with `make test`"]
async fn the_example_pods_are_accepted_and_match_the_endpoint() {
    let root = env!("CARGO_MANIFEST_DIR");
    for example in ["pod-endpoint.yaml", "pod-config.yaml"] {
        let path = format!("{root}/examples/{example}");
        let out = kubectl(&["apply", "--dry-run=server", "-f", &path], None);
        assert!(
            out.status.success(),
            "{example}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The sidecar's arguments start the endpoint, and the workload's
    // environment points at what it serves.
    let text = std::fs::read_to_string(format!("{root}/examples/pod-endpoint.yaml")).expect("example");
    let pod: Value = serde_yaml::from_str(&text).expect("YAML");
    let sidecar = &pod["spec"]["initContainers"][0];
    assert_eq!(sidecar["restartPolicy"], "Always");
    let args: Vec<String> = sidecar["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("an argument").to_string())
        .collect();
    let listen = args.iter().find_map(|a| a.strip_prefix("--listen=")).expect("--listen");
    let env: BTreeMap<String, String> = pod["spec"]["containers"][0]["env"]
        .as_array()
        .expect("env")
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap_or_default().into(),
                e["value"].as_str().unwrap_or_default().into(),
            )
        })
        .collect();
    assert_eq!(
        env["AWS_CONTAINER_CREDENTIALS_FULL_URI"],
        format!("http://{listen}/v1/credentials")
    );
    assert_eq!(
        env["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"],
        "/var/run/secrets/aws/endpoint-token"
    );
    let help = Command::new(env!("CARGO_BIN_EXE_assumed-role-operator"))
        .args(&args)
        .arg("--help")
        .output()
        .expect("run the binary");
    assert!(help.status.success(), "{}", String::from_utf8_lossy(&help.stderr));
}

/// Runs the endpoint's probe as the kubelet's `exec` probe does; its exit
/// status and what it printed.
fn run_probe(kind: &str, address: &str, mount: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_assumed-role-operator"))
        .args([
            "credentials-endpoint",
            &format!("--probe={kind}"),
            "--listen",
            address,
            "--credentials-dir",
        ])
        .arg(mount)
        .env_clear()
        .output()
        .expect("run the probe");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
#[ignore = "needs the local control plane; run with `make test`"]
async fn the_exec_probe_passes_only_while_the_endpoint_serves_unexpired_credentials() {
    let (_scene, mount, logs, secret) = served("endpoint-probe", &[]).await;
    let good = data(&secret);
    let leaks = |text: &str| {
        [
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "endpoint-token",
        ]
        .iter()
        .any(|k| text.contains(good[*k].as_str()))
    };

    // Before the Secret exists: an endpoint over an empty folder answers,
    // but is not ready.
    let empty = tempfile::tempdir().expect("empty mount");
    let early = format!("127.0.0.1:{}", free_port());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_assumed-role-operator"));
    cmd.args(["credentials-endpoint", "--listen", &early, "--credentials-dir"])
        .arg(empty.path())
        .env_clear();
    let _early_endpoint = Started::spawn(cmd, logs.path(), "early-endpoint");
    poll(
        Duration::from_secs(20),
        Duration::from_millis(50),
        "the early endpoint",
        || async { run_probe("live", &early, empty.path()).0.then_some(()) },
    )
    .await;
    let (ok, text) = run_probe("ready", &early, empty.path());
    assert!(!ok, "ready before the Secret exists: {text}");
    assert!(text.contains("no credentials"), "{text}");

    // Served: ready and live, and the probe prints no credential.
    let (mut endpoint, address) = start_endpoint(mount.path(), logs.path()).await;
    let (ok, text) = run_probe("ready", &address, mount.path());
    assert!(ok, "not ready while serving: {text}");
    assert!(text.contains("serves credentials until"), "{text}");
    assert!(!leaks(&text), "a credential in the probe's output");
    assert!(run_probe("live", &address, mount.path()).0);

    // Expired on disk: not ready, still live (a restart would not help).
    let mut expired = good.clone();
    expired.insert("expiration".into(), "2020-01-01T00:00:00Z".into());
    project(mount.path(), &expired, 1);
    let (ok, text) = run_probe("ready", &address, mount.path());
    assert!(!ok, "ready with expired credentials: {text}");
    assert!(text.contains("503"), "{text}");
    assert!(!leaks(&text), "a credential in the probe's output");
    assert!(run_probe("live", &address, mount.path()).0);
    project(mount.path(), &good, 2);
    assert!(run_probe("ready", &address, mount.path()).0);

    // The endpoint stopped: neither probe passes.
    endpoint.stop();
    let (ok, text) = run_probe("ready", &address, mount.path());
    assert!(!ok, "ready with the endpoint stopped: {text}");
    assert!(text.contains("connecting to the endpoint"), "{text}");
    assert!(!run_probe("live", &address, mount.path()).0);
}
