//! The operator's image, run by Docker's engine as the chart runs it: user
//! 65532, a read-only root filesystem, every capability dropped, no shell in
//! the image. `hack/e2e.sh` starts the engine (`hack/engine.sh`) and builds
//! the image (`hack/image.sh`); the containers use the host's network and
//! reach only loopback addresses.

use std::{
    collections::BTreeSet,
    path::Path,
    process::{Command, Output},
    time::{Duration, Instant},
};

use assumed_role_operator::api::AssumedRole;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;

use crate::{sdk, support::*};

fn image() -> String {
    std::env::var("ARO_IMAGE").expect("ARO_IMAGE: run the tests with `make test` (hack/e2e.sh builds the image)")
}

fn docker(args: &[&str]) -> Output {
    Command::new("docker").args(args).output().expect("run docker")
}

fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The options the chart's Deployment gives the container.
const AS_THE_CHART_RUNS_IT: &[&str] = &[
    "--network",
    "host",
    "--read-only",
    "--cap-drop",
    "ALL",
    "--security-opt",
    "no-new-privileges",
    "--user",
    "65532:65532",
];

/// A container, removed (with whatever it still runs) when dropped.
struct Container(String);

impl Container {
    fn run(name_prefix: &str, volumes: &[String], env: &[(&str, String)], args: &[&str]) -> Self {
        let name = format!("{name_prefix}-{}", std::process::id());
        let mut cmd: Vec<String> = ["run", "-d", "--name", &name].iter().map(|s| s.to_string()).collect();
        cmd.extend(AS_THE_CHART_RUNS_IT.iter().map(|s| s.to_string()));
        cmd.extend(volumes.iter().flat_map(|v| ["-v".to_string(), v.clone()]));
        cmd.extend(env.iter().flat_map(|(k, v)| ["-e".to_string(), format!("{k}={v}")]));
        cmd.push(image());
        cmd.extend(args.iter().map(|s| s.to_string()));
        docker_ok(&cmd.iter().map(String::as_str).collect::<Vec<_>>());
        Self(name)
    }

    fn logs(&self) -> String {
        let out = docker(&["logs", &self.0]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.0]);
    }
}

/// Opens `path` (a folder, recursively, or a file) for reading by the
/// container's user, as the kubelet's volumes are; links are left alone.
fn open_to_the_container(path: &Path) {
    let meta = std::fs::symlink_metadata(path).expect("stat");
    if meta.file_type().is_symlink() {
        return;
    }
    let mode = if meta.is_dir() { 0o755 } else { 0o644 };
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode)).expect("chmod");
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).expect("a folder").flatten() {
            open_to_the_container(&entry.path());
        }
    }
}

/// A kubeconfig with its certificates inline, readable by the container's
/// user, in `dir`.
fn readable_kubeconfig(dir: &Path) -> String {
    let out = kubectl(&["config", "view", "--raw", "--flatten", "--minify"], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let path = dir.join("kubeconfig");
    std::fs::write(&path, &out.stdout).expect("write the kubeconfig");
    open_to_the_container(dir);
    path.display().to_string()
}

#[tokio::test]
#[ignore = "needs the local control plane and the image; run with `make test`"]
async fn the_image_runs_the_operator_as_the_chart_does_and_stops_on_sigterm() {
    let client = client().await;
    let ns = TestNamespace::create(&client, "image").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig = readable_kubeconfig(dir.path());
    let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} from hack/cluster.sh"));
    let operator = Container::run(
        "aro-operator",
        &[format!("{kubeconfig}:/etc/aro/kubeconfig:ro")],
        &[
            ("KUBECONFIG", "/etc/aro/kubeconfig".to_string()),
            ("POD_NAMESPACE", ns.name.clone()),
            ("WATCH_NAMESPACES", ns.name.clone()),
            ("ADMIN_ADDRESS", "127.0.0.1:0".to_string()),
            ("LOG_FORMAT", "json".to_string()),
            ("AWS_ENDPOINT_URL", var("AWS_ENDPOINT_URL")),
            ("AWS_REGION", var("AWS_REGION")),
            ("AWS_ACCESS_KEY_ID", var("AWS_ACCESS_KEY_ID")),
            ("AWS_SECRET_ACCESS_KEY", var("AWS_SECRET_ACCESS_KEY")),
        ],
        &["run"],
    );
    let roles: Api<AssumedRole> = Api::namespaced(client.clone(), &ns.name);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    // Refreshed 10 s after each issue: a refresh within the test.
    apply(&assumed_role(
        &ns.name,
        "reader",
        "  durationSeconds: 900\n  refreshBefore: 890s\n",
    ));
    let first = wait_ready(&roles, "reader", "True", "CredentialsReady").await;
    let issued = first.status.and_then(|s| s.expiration_time).expect("expirationTime").0;
    wait_for(
        &roles,
        "reader",
        Duration::from_secs(60),
        "a refresh by the operator in the image",
        |ar: Option<&AssumedRole>| {
            ar.and_then(|a| a.status.as_ref())
                .and_then(|s| s.expiration_time.as_ref())
                .is_some_and(|t| t.0 > issued)
        },
    )
    .await;
    let secret = data(&secrets.get("reader").await.expect("Secret"));
    assert!(secret["AWS_ACCESS_KEY_ID"].starts_with("ASIA"), "{secret:?}");
    // SIGTERM, as the kubelet sends it, with the chart's grace period.
    let stopping = Instant::now();
    docker_ok(&["stop", "--time", "30", &operator.0]);
    let took = stopping.elapsed();
    let code = docker_ok(&["inspect", "--format", "{{.State.ExitCode}}", &operator.0]);
    let logs = operator.logs();
    assert_eq!(code, "0", "exit code after SIGTERM:\n{logs}");
    assert!(
        took < Duration::from_secs(30),
        "took {took:?}: killed at the end of the grace period"
    );
    assert!(logs.contains("\"stopped\""), "{logs}");
    assert!(
        !logs.contains(&secret["AWS_SECRET_ACCESS_KEY"]),
        "a secret key in the container's log"
    );
    eprintln!(
        "image: the operator made reader Ready and refreshed it, and stopped {} ms after SIGTERM (exit 0)",
        took.as_millis()
    );
}

#[tokio::test]
#[ignore = "needs the local control plane, the image and the SDK consumers; run with `make test`"]
async fn the_images_credentials_endpoint_serves_a_mounted_secret_to_an_sdk() {
    let (scene, mount, logs, secret) = sdk::served("image-endpoint", &[]).await;
    // The container's user reads the mount, as the kubelet's Secret volume
    // lets it.
    open_to_the_container(mount.path());
    let address = format!("127.0.0.1:{}", free_port());
    let endpoint = Container::run(
        "aro-endpoint",
        &[format!("{}:/var/run/secrets/aws:ro", mount.path().display())],
        &[],
        &[
            "credentials-endpoint",
            "--credentials-dir=/var/run/secrets/aws",
            &format!("--listen={address}"),
        ],
    );
    // The exec probe, run inside the image as the kubelet would.
    let probe = |kind: &str| {
        docker(&[
            "exec",
            &endpoint.0,
            "/usr/local/bin/assumed-role-operator",
            "credentials-endpoint",
            &format!("--probe={kind}"),
            "--credentials-dir=/var/run/secrets/aws",
            &format!("--listen={address}"),
        ])
    };
    poll(
        Duration::from_secs(20),
        Duration::from_millis(100),
        "the endpoint in the image",
        || async { probe("ready").status.success().then_some(()) },
    )
    .await;
    assert!(probe("live").status.success());
    // One SDK consumer, shell-less route: boto3 through the endpoint.
    let home = tempfile::tempdir().expect("HOME");
    let mut cmd = sdk::consumer("boto3", 6, 1.0);
    cmd.env_clear()
        .env("HOME", home.path())
        .env("PATH", home.path())
        .env("AWS_REGION", "us-east-1")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env(
            "AWS_ENDPOINT_URL_STS",
            std::env::var("AWS_ENDPOINT_URL").expect("AWS_ENDPOINT_URL"),
        )
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", home.path().join("no-config"))
        .env("AWS_SHARED_CREDENTIALS_FILE", home.path().join("no-credentials"));
    sdk::through_endpoint(&mut cmd, &address, mount.path());
    let mut process = Started::spawn(cmd, logs.path(), "boto3-image");
    let status = process.wait(Instant::now() + Duration::from_secs(90)).await;
    let lines = sdk::calls(&process);
    assert!(
        status.is_some_and(|s| s.success()),
        "boto3: {status:?}: {}",
        process.stderr()
    );
    assert!(!lines.is_empty() && lines.iter().all(|c| c["ok"] == true), "{lines:?}");
    let arn = lines[0]["arn"].as_str().unwrap_or_default();
    assert!(
        arn.ends_with(&format!("assumed-role/reader/{}.reader", scene.ns.name)),
        "{arn}"
    );
    let served = data(&secret);
    assert!(!endpoint.logs().contains(&served["AWS_SECRET_ACCESS_KEY"]));
    eprintln!("image: its credentials endpoint served {} boto3 calls", lines.len());
}

/// The paths in an image's file system, from `docker export`.
fn listing(image: &str) -> BTreeSet<String> {
    let id = docker_ok(&["create", image, "--version"]);
    let out = Command::new("sh")
        .args(["-c", &format!("docker export {id} | tar -t")])
        .output()
        .expect("export");
    let _ = docker(&["rm", &id]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim_start_matches("./").trim_end_matches('/').to_string())
        .filter(|l| !l.is_empty() && l != ".")
        .collect()
}

#[tokio::test]
#[ignore = "needs the image; run with `make test`"]
async fn the_image_holds_the_binary_on_its_base_and_no_shell() {
    let image = image();
    let base = std::env::var("ARO_IMAGE_BASE").expect("ARO_IMAGE_BASE from hack/image.sh");
    let (ours, theirs) = (listing(&image), listing(&base));
    // `docker export` adds the files the engine mounts into every container.
    let engine: BTreeSet<&str> = [
        ".dockerenv",
        "etc/hostname",
        "etc/hosts",
        "etc/resolv.conf",
        "dev",
        "dev/console",
        "dev/pts",
        "dev/shm",
        "proc",
        "sys",
        "etc/mtab",
    ]
    .into();
    let binary = "usr/local/bin/assumed-role-operator";
    let added: Vec<&String> = ours
        .iter()
        .filter(|p| !theirs.contains(*p) && !engine.contains(p.as_str()))
        // The folders that hold the binary.
        .filter(|p| !(binary.starts_with(p.as_str()) && binary.as_bytes().get(p.len()) == Some(&b'/')))
        .collect();
    assert_eq!(added, [binary], "the image adds more than the binary to its base");
    for tool in ["sh", "bash", "cat", "busybox", "apt", "dpkg"] {
        // Programs, wherever a program could be run from.
        let found: Vec<&String> = ours
            .iter()
            .filter(|p| {
                p.rsplit_once('/')
                    .is_some_and(|(dir, name)| name == tool && dir.ends_with("bin"))
            })
            .collect();
        assert!(found.is_empty(), "{tool} in the image: {found:?}");
    }
    for needed in [
        "etc/ssl/certs/ca-certificates.crt",
        "etc/passwd",
        "usr/share/zoneinfo/UTC",
    ] {
        assert!(ours.contains(needed), "{needed} missing");
    }
    let user = docker_ok(&["inspect", "--format", "{{.Config.User}}", &image]);
    assert_eq!(user, "65532:65532");
    let size: u64 = docker_ok(&["image", "inspect", "--format", "{{.Size}}", &image])
        .parse()
        .expect("size");
    eprintln!(
        "image: {} bytes ({:.1} MiB), {} paths: its base's {} and the binary",
        size,
        size as f64 / 1_048_576.0,
        ours.len(),
        theirs.len()
    );
}
