//! The operator started before its CRD is installed: it says what is missing
//! and how to install it, is not ready, stops promptly on SIGTERM, and starts
//! serving once the CRD is there. `make test` runs this before it applies
//! `crds/` to the control plane.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests fail loudly

#[path = "e2e/support.rs"]
#[allow(dead_code)]
mod support;

use std::time::Duration;

use support::*;

fn crd_installed() -> bool {
    kubectl(&["get", "crd", "assumedroles.sts.refresh.dev"], None)
        .status
        .success()
}

#[tokio::test]
#[ignore = "needs the local control plane without the CRD; run with `make test`"]
async fn without_the_crd_the_operator_says_how_to_install_it_and_is_not_ready() {
    require_cluster();
    assert!(
        !crd_installed(),
        "this test needs a control plane without the AssumedRole CRD"
    );
    let mut operator = Operator::start_with(&["--namespace", "default"], &[], &[]);
    let line = poll(
        Duration::from_secs(30),
        Duration::from_millis(100),
        "an error naming the missing CRD",
        || async {
            operator
                .output()
                .lines()
                .find(|l| l.contains("ERROR") && l.contains("assumedroles.sts.refresh.dev"))
                .map(str::to_string)
        },
    )
    .await;
    assert!(line.contains("kubectl apply -f crds/"), "{line}");
    let (code, _) = operator.admin_get("/readyz").await;
    assert_eq!(code, 503, "ready without the CRD");
    let (status, took) = operator
        .terminate(Duration::from_secs(10))
        .await
        .expect("SIGTERM stopped the operator");
    assert!(status.success(), "exit status {status}");
    eprintln!("SIGTERM without the CRD: stopped in {} ms", took.as_millis());

    // Installed while the operator waits: it starts serving by itself.
    let waiting = Operator::start_with(&["--namespace", "default"], &[], &[]);
    poll(
        Duration::from_secs(30),
        Duration::from_millis(100),
        "the error",
        || async { waiting.output().contains("is not installed").then_some(()) },
    )
    .await;
    let crds = concat!(env!("CARGO_MANIFEST_DIR"), "/crds/");
    let out = kubectl(&["apply", "-f", crds], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    poll(
        Duration::from_secs(60),
        Duration::from_millis(200),
        "readiness after the CRD arrived",
        || async { (waiting.admin_get("/readyz").await.0 == 200).then_some(()) },
    )
    .await;
}
