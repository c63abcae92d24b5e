//! The committed CRDs are exactly what the `crd` subcommand prints, in
//! `crds/` and in the chart.

#![allow(clippy::expect_used)]

use std::process::Command;

#[test]
fn committed_crds_match_the_generated_ones() {
    for name in [
        "assumedroles.sts.refresh.dev",
        "assumedrolepolicies.sts.refresh.dev",
        "clusterassumedroles.sts.refresh.dev",
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_assumed-role-operator"))
            .args(["crd", name])
            .output()
            .expect("run crd");
        assert!(out.status.success(), "crd {name}");
        let generated = String::from_utf8(out.stdout).expect("UTF-8");
        for dir in ["crds", "charts/assumed-role-operator/crds"] {
            let path = format!("{}/{dir}/{name}.yaml", env!("CARGO_MANIFEST_DIR"));
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                generated == committed,
                "{path} is out of date with the types: run `make crds` and commit the result"
            );
        }
    }
}

#[test]
fn crd_without_a_name_prints_all_and_an_unknown_name_fails() {
    let out = Command::new(env!("CARGO_BIN_EXE_assumed-role-operator"))
        .arg("crd")
        .output()
        .expect("run crd");
    let all = String::from_utf8(out.stdout).expect("UTF-8");
    assert_eq!(all.matches("kind: CustomResourceDefinition").count(), 3, "{all}");
    let out = Command::new(env!("CARGO_BIN_EXE_assumed-role-operator"))
        .args(["crd", "nothing.example.com"])
        .output()
        .expect("run crd");
    assert!(!out.status.success());
}
