//! A real SDK in a "pod": the Secret laid out on disk the way the kubelet
//! does it, and one long-running boto3 process that keeps working across
//! rotations without a restart.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use futures::TryStreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::{WatchStreamExt, watcher};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::support::*;

/// Writes a Secret's data under `dir` as the kubelet's atomic writer does:
/// the files live in a timestamped folder, `..data` links to it, each key is
/// a link into `..data`, and an update swaps `..data` with one rename.
fn project(dir: &Path, secret: &Secret, generation: usize) {
    let folder = format!("..2026_{generation:06}");
    let target = dir.join(&folder);
    std::fs::create_dir(&target).expect("create the data folder");
    for (key, value) in secret.data.clone().unwrap_or_default() {
        std::fs::write(target.join(&key), value.0).expect("write a key");
        let link = dir.join(&key);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(&key), &link).expect("link a key");
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

fn fingerprint(secret: &Secret) -> String {
    let key = &data(secret)["AWS_ACCESS_KEY_ID"];
    hex::encode(Sha256::digest(key.as_bytes()))[..16].to_string()
}

#[tokio::test]
#[ignore = "needs the local control plane; run with `make test`"]
async fn boto3_started_once_keeps_working_across_three_rotations() {
    const ROTATIONS: usize = 3;
    let Scene {
        ns,
        secrets,
        operator: _operator,
        ..
    } = Scene::start("sdk", &[], &[]).await;
    let mount = tempfile::tempdir().expect("mount dir");
    let mount_path: PathBuf = mount.path().to_path_buf();
    apply(&assumed_role(
        &ns.name,
        "reader",
        &format!(
            "  durationSeconds: 900\n  refreshBefore: 890s\n  secret:\n    mountPath: {}\n",
            mount_path.display()
        ),
    ));
    let first = wait_for(
        &secrets,
        "reader",
        Duration::from_secs(30),
        "the Secret",
        |s: Option<&Secret>| s.is_some(),
    )
    .await;
    project(&mount_path, &first, 0);

    // Keep the "volume" in step with the Secret, as the kubelet would.
    let (written_tx, mut written_rx) = mpsc::unbounded_channel();
    let _ = written_tx.send(fingerprint(&first));
    let dir = mount_path.clone();
    let watch = watcher(
        secrets.clone(),
        watcher::Config::default().fields("metadata.name=reader"),
    )
    .applied_objects()
    .try_for_each({
        let mut generation = 0;
        move |secret| {
            generation += 1;
            project(&dir, &secret, generation);
            let _ = written_tx.send(fingerprint(&secret));
            futures::future::ready(Ok(()))
        }
    });
    let mirror = tokio::spawn(watch);

    let python = std::env::var("ARO_PYTHON").expect("ARO_PYTHON from hack/cluster.sh");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/sdk_caller.py");
    let child = Command::new(python)
        .args([script, &(ROTATIONS + 1).to_string(), "120", "0.5"])
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_SESSION_TOKEN")
        .env("AWS_CONFIG_FILE", mount_path.join("config"))
        .env("AWS_SHARED_CREDENTIALS_FILE", mount_path.join("no-such-file"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start python");
    let pid = child.id();
    let output = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("join")
        .expect("python");
    mirror.abort();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    let calls: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let failures: Vec<_> = calls.iter().filter(|c| c["ok"] != true).collect();
    assert!(failures.is_empty(), "calls failed: {failures:?}");
    let mut used: Vec<String> = Vec::new();
    for call in &calls {
        let key = call["key"].as_str().expect("key").to_string();
        if used.last() != Some(&key) {
            used.push(key);
        }
    }
    let mut written = Vec::new();
    while let Ok(fp) = written_rx.try_recv() {
        if written.last() != Some(&fp) {
            written.push(fp);
        }
    }
    eprintln!(
        "sdk: one python process (PID {pid}), {} calls, {} keys used",
        calls.len(),
        used.len()
    );
    assert!(
        used.len() > ROTATIONS,
        "the SDK used {} keys; want {} rotations",
        used.len(),
        ROTATIONS
    );
    // The SDK moved to each new key in the order the operator wrote them.
    assert_eq!(used, written[..used.len()].to_vec(), "keys used vs keys written");
    let arn = calls[0]["arn"].as_str().unwrap_or_default();
    assert!(
        arn.ends_with(&format!("assumed-role/reader/{}.reader", ns.name)),
        "{arn}"
    );
}
