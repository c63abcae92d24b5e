//! Attribution: with `--session-tags`, every AssumeRole carries the
//! AssumedRole's namespace and name as session tags, as seen by the STS
//! stand-in that records each call; without it, none.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::*;

/// The session tags of the AssumeRole calls the stand-in saw for `session`.
fn tags_of(report: &Value, session: &str) -> Vec<Value> {
    report["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .filter(|s| s["session"] == session)
        .map(|s| s["tags"].clone())
        .collect()
}

#[tokio::test]
#[ignore = "needs the local control plane; run with `make test`"]
async fn session_tags_name_the_namespace_and_the_assumed_role_only_when_switched_on() {
    let logs = tempfile::tempdir().expect("logs dir");
    let standin = StandIn::start(3600, 0, logs.path());
    let tagged = Scene::start(
        "tags",
        &["--session-tags"],
        &[("AWS_ENDPOINT_URL_STS", standin.url.as_str())],
    )
    .await;
    let ns = tagged.ns.name.clone();
    apply(&assumed_role(&ns, "reader", "  tags: {team: billing}\n"));
    wait_ready(&tagged.roles, "reader", "True", "CredentialsReady").await;
    let report = standin.report().await;
    assert_eq!(
        tags_of(&report, &format!("{ns}.reader")),
        vec![json!({"team": "billing", "kubernetes-namespace": ns, "kubernetes-name": "reader"})]
    );

    // A spec that sets one of those tags itself is refused, naming the field,
    // and STS is never asked.
    apply(&assumed_role(&ns, "clash", "  tags: {kubernetes-name: other}\n"));
    let clash = wait_ready(&tagged.roles, "clash", "False", "InvalidSpec").await;
    let (_, _, message) = ready(&clash).expect("Ready");
    assert!(
        message.starts_with("spec.tags: \"kubernetes-name\" is set by the operator"),
        "{message}"
    );
    assert!(tags_of(&standin.report().await, &format!("{ns}.clash")).is_empty());

    // Off by default: no session tags beyond the spec's.
    let plain = Scene::start("notags", &[], &[("AWS_ENDPOINT_URL_STS", standin.url.as_str())]).await;
    apply(&assumed_role(&plain.ns.name, "reader", ""));
    wait_ready(&plain.roles, "reader", "True", "CredentialsReady").await;
    let untagged = poll(
        Duration::from_secs(10),
        Duration::from_millis(100),
        "the call recorded",
        || async {
            let tags = tags_of(&standin.report().await, &format!("{}.reader", plain.ns.name));
            (!tags.is_empty()).then_some(tags)
        },
    )
    .await;
    assert_eq!(untagged, vec![json!({})]);
}
