//! `make test` and `make demo` check their prerequisites first: on a machine
//! without one, they fail at once and name every tool missing with how to
//! install it, instead of failing many minutes in.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests fail loudly

use std::{path::Path, process::Command, time::Instant};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/hack/prereqs.sh");

/// Runs the check with a `PATH` that holds only `tools` (linked from this
/// machine), so that everything else is missing.
fn check(target: &str, tools: &[&str]) -> (bool, String, std::time::Duration) {
    let bin = tempfile::tempdir().expect("temp dir");
    for tool in tools {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .expect("sh");
        let path = String::from_utf8(found.stdout).unwrap().trim().to_string();
        assert!(!path.is_empty(), "this machine lacks {tool}");
        std::os::unix::fs::symlink(&path, bin.path().join(tool)).expect("link");
    }
    let started = Instant::now();
    let out = Command::new(which("bash"))
        .arg(SCRIPT)
        .arg(target)
        .env_clear()
        .env("PATH", bin.path())
        .output()
        .expect("run the check");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).to_string(),
        started.elapsed(),
    )
}

fn which(tool: &str) -> String {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .expect("sh");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// What the script itself runs.
const SHELL: &[&str] = &["bash", "sed"];

#[test]
fn make_test_names_every_missing_tool_at_once() {
    let mut tools = SHELL.to_vec();
    tools.extend(["go", "cargo", "python3", "openssl", "curl", "make"]);
    let (ok, stderr, took) = check("test", &tools);
    assert!(!ok, "passed without Java, Maven, Node.js and npm: {stderr}");
    for tool in ["java:", "mvn:", "node:", "npm:", "containerd:", "runc:"] {
        assert!(stderr.contains(tool), "{tool} not named: {stderr}");
    }
    assert!(stderr.contains("apt-get install maven"), "{stderr}");
    assert!(!stderr.contains("go:"), "go is there: {stderr}");
    assert!(took.as_secs() < 10, "took {took:?}");
}

#[test]
fn make_demo_needs_neither_java_nor_node_and_names_what_it_needs() {
    let (ok, stderr, _) = check("demo", SHELL);
    assert!(!ok);
    for tool in ["go:", "cargo:", "python3:", "openssl:", "curl:"] {
        assert!(stderr.contains(tool), "{tool} not named: {stderr}");
    }
    assert!(!stderr.contains("java"), "{stderr}");
    assert!(Path::new(SCRIPT).exists());
}

#[test]
fn this_machine_has_everything_make_test_needs() {
    let out = Command::new("bash").arg(SCRIPT).arg("test").output().expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
