//! The chart's default memory limit holds the capacity that its values and
//! the README state: the memory each AssumedRole costs, measured here,
//! projected to that capacity.

use crate::support::*;

/// The number of AssumedRoles the default limit is sized for.
const CAPACITY: u64 = 10_000;
/// How many this test makes first (what a few hundred cost once: pools,
/// buffers, the caches' tables), then on top, to measure the cost of one.
const FIRST: usize = 300;
const SAMPLE: usize = 600;

/// The chart's default memory limit, in KiB.
fn default_limit_kib() -> u64 {
    let values = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/charts/assumed-role-operator/values.yaml"
    ))
    .expect("values.yaml");
    let values: serde_yaml::Value = serde_yaml::from_str(&values).expect("YAML");
    let limit = values["resources"]["limits"]["memory"]
        .as_str()
        .expect("a memory limit");
    let mib: u64 = limit
        .strip_suffix("Mi")
        .expect("a limit in Mi")
        .parse()
        .expect("a number");
    mib * 1024
}

#[tokio::test]
#[ignore = "needs the local control plane; run with `make test`"]
async fn the_memory_per_assumed_role_fits_the_charts_default_limit_at_the_stated_capacity() {
    // The release build, as the chart runs it (`make test` builds it for the
    // image); a budget that does not make the test wait: memory, not time,
    // is measured.
    let binary = std::env::var("ARO_OPERATOR_RELEASE")
        .expect("ARO_OPERATOR_RELEASE: the release build of the operator (hack/e2e.sh sets it)");
    let limits = [
        "--sts-rate",
        "500",
        "--sts-burst",
        "500",
        "--api-qps",
        "1000",
        "--api-burst",
        "2000",
    ];
    let client = client().await;
    let ns = TestNamespace::create(&client, "memory").await;
    let roles = kube::Api::namespaced(client, &ns.name);
    let operator = Operator::start_release(std::path::Path::new(&binary), &ns.name, &limits);
    operator.wait_ready().await;
    let idle = operator.rss_kib();
    apply_ready(&roles, &ns.name, FIRST, "").await;
    let first = operator.rss_kib();
    apply_ready(&roles, &ns.name, FIRST + SAMPLE, "").await;
    let loaded = operator.rss_kib();
    let per_object = loaded.saturating_sub(first) as f64 / SAMPLE as f64;
    let projected = idle as f64 + per_object * CAPACITY as f64;
    let limit = default_limit_kib() as f64;
    eprintln!(
        "memory: idle {idle} KiB, {first} KiB with {FIRST} AssumedRoles, {loaded} KiB with {SAMPLE} more: {per_object:.1} KiB each; \
         {:.0} MiB projected at {CAPACITY}, against a limit of {:.0} MiB",
        projected / 1024.0,
        limit / 1024.0
    );
    // A fifth of the limit is kept for what a relist or a burst of
    // refreshes holds for a moment.
    assert!(
        projected <= 0.8 * limit,
        "{per_object:.1} KiB per AssumedRole would need {:.0} MiB at {CAPACITY}: more than 80% of the chart's {:.0} MiB",
        projected / 1024.0,
        limit / 1024.0
    );
}
