//! The committed CRD is exactly what the `crd` subcommand prints.

#![allow(clippy::expect_used)]

use std::process::Command;

#[test]
fn committed_crd_matches_the_generated_one() {
    let out = Command::new(env!("CARGO_BIN_EXE_assumed-role-operator"))
        .arg("crd")
        .output()
        .expect("run crd");
    assert!(out.status.success());
    let generated = String::from_utf8(out.stdout).expect("UTF-8");
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/crds/assumedroles.sts.refresh.dev.yaml");
    let committed = std::fs::read_to_string(path).expect("read crds/");
    assert!(
        generated == committed,
        "crds/ is out of date with the types: run `make crds` and commit the result"
    );
}
