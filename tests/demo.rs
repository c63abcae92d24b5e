//! `make demo` as a user runs it: it honours `CARGO_TARGET_DIR`, shows
//! rotations, and fails at once, with the operator's own words, when the
//! operator cannot run. Each run starts a control plane of its own.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests fail loudly

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

/// Runs `hack/demo.sh` with `env`, killing it after `limit`. Returns whether
/// it succeeded, its output, and how long it ran.
fn demo(env: &[(&str, &str)], limit: Duration) -> (bool, String, Duration) {
    let state = tempfile::tempdir().expect("state dir");
    let root = env!("CARGO_MANIFEST_DIR");
    // The demo's own `cargo build` leaves out the dev-dependencies' features
    // (tokio's test-util among them), so on a cold target directory it builds
    // the dependencies again, for minutes: not part of what the limit times.
    let built = Command::new("cargo")
        .args(["build", "--locked", "--quiet"])
        .current_dir(root)
        .envs(env.iter().copied())
        .status()
        .expect("run cargo build");
    assert!(built.success(), "cargo build failed");
    let started = Instant::now();
    let mut child = Command::new("timeout")
        .args([
            "--signal=TERM",
            "--kill-after=10",
            &limit.as_secs().to_string(),
            "bash",
            &format!("{root}/hack/demo.sh"),
        ])
        .current_dir(root)
        .env("ARO_DEMO_STATE", state.path().join("cluster"))
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run hack/demo.sh");
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || std::io::read_to_string(stdout).unwrap_or_default());
    let err = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let status = child.wait().expect("wait for the demo");
    let output = out.join().unwrap_or_default() + &err.join().unwrap_or_default();
    (status.success(), output, started.elapsed())
}

fn target_dir() -> String {
    std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| format!("{}/target", env!("CARGO_MANIFEST_DIR")))
}

#[test]
#[ignore = "starts a control plane of its own; run with `make test`"]
fn the_demo_shows_rotations_with_a_custom_target_dir() {
    let target = target_dir();
    let (ok, output, took) = demo(
        &[("CARGO_TARGET_DIR", &target), ("ROTATIONS", "1")],
        Duration::from_secs(240),
    );
    assert!(ok, "the demo failed after {took:?}:\n{output}");
    let rotations = output.matches("holds new credentials").count();
    assert!(rotations >= 2, "saw {rotations} sets of credentials:\n{output}");
    eprintln!("demo with ROTATIONS=1: {} s", took.as_secs());
}

#[test]
#[ignore = "starts a control plane of its own; run with `make test`"]
fn the_demo_fails_at_once_when_the_operator_cannot_run() {
    let target = target_dir();
    // A log filter the operator refuses: it exits as soon as it starts.
    let (ok, output, took) = demo(
        &[("CARGO_TARGET_DIR", &target), ("LOG_LEVEL", "info,[=bad")],
        Duration::from_secs(120),
    );
    assert!(!ok, "the demo succeeded with an operator that cannot start:\n{output}");
    assert!(output.contains("the operator exited"), "{output}");
    assert!(
        output.contains("log-level"),
        "the operator's own words are missing:\n{output}"
    );
    assert!(took < Duration::from_secs(90), "the demo took {took:?} to give up");
    eprintln!("demo with a broken operator gave up in {} s", took.as_secs());
}
