//! When the operator calls STS and when it does not: restarts, spec changes
//! that shape the credentials and spec changes that only shape the Secret,
//! and refresh settings that have to be adjusted.

use std::{collections::BTreeMap, time::Duration};

use assumed_role_operator::api::AssumedRole;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};

use crate::support::*;

/// The Secret's resourceVersion, read with kubectl (so that the audit log
/// counts only the operator's reads).
fn version_of(ns: &str, name: &str) -> String {
    let out = kubectl(
        &[
            "get",
            "secret",
            name,
            "-n",
            ns,
            "-o",
            "jsonpath={.metadata.resourceVersion}",
        ],
        None,
    );
    assert!(
        out.status.success(),
        "kubectl get secret {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
#[ignore = "needs the local control plane; run with `make test`"]
async fn a_mint_writes_once_and_a_restart_makes_no_sts_call_and_reads_no_secret() {
    const ROLES: usize = 5;
    let client = client().await;
    let ns = TestNamespace::create(&client, "restart").await;
    let roles: Api<AssumedRole> = Api::namespaced(client.clone(), &ns.name);
    let mut first = Operator::start(&ns.name, &[], &[]);
    first.wait_ready().await;
    for i in 0..ROLES {
        apply(&assumed_role(&ns.name, &format!("reader-{i}"), ""));
    }
    let mut versions = Vec::new();
    for i in 0..ROLES {
        wait_ready(&roles, &format!("reader-{i}"), "True", "CredentialsReady").await;
        versions.push(version_of(&ns.name, &format!("reader-{i}")));
    }
    assert_eq!(first.sts_calls().await, ROLES as u64);
    // Each mint: one Secret write and one status write, and at most one
    // Secret read (that no Secret of its name is in the way); the watch
    // delivers the rest.
    let minted = audited_at_least(
        &ns.name,
        "reader-",
        &[("patch secrets", ROLES), ("patch assumedroles/status", ROLES)],
    )
    .await;
    eprintln!("{ROLES} mints, the API server's record: {minted:?}");
    assert_eq!(minted.get("patch secrets"), Some(&ROLES), "{minted:?}");
    assert_eq!(minted.get("patch assumedroles/status"), Some(&ROLES), "{minted:?}");
    assert!(minted.get("get secrets").is_none_or(|n| *n <= ROLES), "{minted:?}");
    let writes = |counts: &BTreeMap<String, usize>| counts.iter().filter(|(k, _)| !k.starts_with("get ")).count();
    assert_eq!(writes(&minted), 2, "only Secret and status patches: {minted:?}");
    first.stop();

    let second = Operator::start(&ns.name, &[], &[]);
    // The operator logs its decision for each AssumedRole it looked at.
    poll(
        Duration::from_secs(60),
        Duration::from_millis(200),
        "the restarted operator to decide on all",
        || async {
            let log = second.output();
            let decided = (0..ROLES).filter(|i| {
                log.lines()
                    .any(|l| l.contains("no STS call") && l.contains(&format!("name=reader-{i} ")))
            });
            (decided.count() == ROLES).then_some(())
        },
    )
    .await;
    let calls = second.sts_calls().await;
    let restarted = audited(&ns.name, "reader-");
    eprintln!(
        "restart: {ROLES} AssumedRoles, {calls} STS calls after the restart; the API server's record: {restarted:?}"
    );
    assert_eq!(calls, 0, "the restarted operator called STS for valid Secrets");
    // The watch's first list delivered every Secret: not one was read or
    // written again.
    assert_eq!(
        restarted, minted,
        "the restarted operator read or wrote in the namespace"
    );
    for (i, version) in versions.iter().enumerate() {
        let now = version_of(&ns.name, &format!("reader-{i}"));
        assert_eq!(&now, version, "Secret reader-{i} was rewritten after the restart");
    }
}

#[tokio::test]
#[ignore = "needs the local control plane; run with `make test`"]
async fn a_credential_spec_change_refreshes_at_once_and_a_layout_change_does_not_call_sts() {
    let Scene {
        ns,
        roles,
        secrets,
        operator,
        ..
    } = Scene::start("spec-change", &[], &[]).await;
    apply(&assumed_role(
        &ns.name,
        "reader",
        "  secret:\n    labels: {team: billing, tier: gold}\n    annotations: {owner: alice}\n",
    ));
    wait_ready(&roles, "reader", "True", "CredentialsReady").await;
    let before = secrets.get("reader").await.expect("Secret");
    assert_eq!(before.labels().get("team").map(String::as_str), Some("billing"));
    assert_eq!(before.annotations().get("owner").map(String::as_str), Some("alice"));
    assert_eq!(operator.sts_calls().await, 1);

    // Labels, annotations, mount path and profile shape the Secret, not the
    // credentials: the Secret is rewritten around the same keys.
    merge_patch(
        &ns.name,
        "assumedrole/reader",
        r#"{"spec":{"secret":{"labels":{"tier":null,"app":"reports"},"annotations":{"owner":null},"mountPath":"/aws","profile":"billing"}}}"#,
    );
    let after = wait_for(
        &secrets,
        "reader",
        Duration::from_secs(30),
        "the relabelled Secret",
        |s: Option<&Secret>| s.is_some_and(|s| s.labels().contains_key("app")),
    )
    .await;
    assert!(
        !after.labels().contains_key("tier"),
        "a label removed from the spec stayed on the Secret"
    );
    assert!(
        !after.annotations().contains_key("owner"),
        "an annotation removed from the spec stayed"
    );
    assert_eq!(after.labels().get("team").map(String::as_str), Some("billing"));
    let (old, new) = (data(&before), data(&after));
    assert_eq!(new["AWS_ACCESS_KEY_ID"], old["AWS_ACCESS_KEY_ID"]);
    assert_eq!(
        new["config"],
        "[profile billing]\ncredential_process = cat '/aws/credential_process.json'\n"
    );
    assert_eq!(operator.sts_calls().await, 1, "a layout change called STS");

    // The session name shapes the credentials: new ones at once. It starts
    // with the namespace, as the default policy rule asks.
    let session = format!("{}.nightly-report", ns.name);
    merge_patch(
        &ns.name,
        "assumedrole/reader",
        &format!(r#"{{"spec":{{"roleSessionName":"{session}"}}}}"#),
    );
    let renewed = wait_for(
        &secrets,
        "reader",
        Duration::from_secs(30),
        "new credentials",
        |s: Option<&Secret>| s.is_some_and(|s| data(s)["AWS_ACCESS_KEY_ID"] != old["AWS_ACCESS_KEY_ID"]),
    )
    .await;
    let arn = caller_arn(&renewed).await.expect("the new credentials work");
    assert!(arn.ends_with(&format!("/reader/{session}")), "{arn}");
    assert_eq!(operator.sts_calls().await, 2);
}

#[tokio::test]
#[ignore = "needs the local control plane; run with `make test`"]
async fn refresh_settings_that_break_the_rules_are_adjusted_and_reported() {
    let Scene {
        ns,
        roles,
        operator: _operator,
        ..
    } = Scene::start("settings", &[], &[]).await;
    apply(&assumed_role(
        &ns.name,
        "late",
        "  durationSeconds: 3600\n  refreshBefore: 1m\n",
    ));
    apply(&assumed_role(
        &ns.name,
        "long",
        "  durationSeconds: 900\n  refreshBefore: 2h\n",
    ));
    apply(&assumed_role(
        &ns.name,
        "share",
        "  durationSeconds: 3600\n  refreshBeforePercentage: 50\n",
    ));
    for (name, reason) in [("late", "ClampedToFloor"), ("long", "FellBackToDefault")] {
        let ar = wait_ready(&roles, name, "True", "CredentialsReady").await;
        let status = ar.status.expect("status");
        let adjusted = status.conditions.iter().find(|c| c.type_ == "RefreshAdjusted");
        assert_eq!(adjusted.map(|c| c.reason.as_str()), Some(reason), "{name}");
        let (expires, refresh) = (
            status.expiration_time.expect("exp").0,
            status.refresh_time.expect("refresh").0,
        );
        assert!(
            refresh <= expires - assumed_role_operator::schedule::FLOOR,
            "{name}: {refresh} vs {expires}"
        );
    }
    let ar = wait_ready(&roles, "share", "True", "CredentialsReady").await;
    let status = ar.status.expect("status");
    assert!(status.conditions.iter().all(|c| c.type_ != "RefreshAdjusted"));
    let left = status
        .expiration_time
        .expect("exp")
        .0
        .duration_since(status.refresh_time.expect("refresh").0);
    // Half the lifetime, and jitter moves it earlier by at most a tenth.
    assert!(
        (1800..=1800 + 360).contains(&left.as_secs()),
        "refresh {}s before expiry",
        left.as_secs()
    );
}

#[tokio::test]
#[ignore = "needs the local control plane; run with `make test`"]
async fn a_refresh_writes_the_secret_once_and_the_status_once() {
    const ROLES: usize = 4;
    let logs = tempfile::tempdir().expect("logs dir");
    // Every set lives 900 s and is refreshed 60 s (less a jitter of at most
    // 6 s) after it is issued: the next refresh comes a minute after the one
    // counted here.
    let standin = StandIn::start(900, 0, logs.path());
    let scene = Scene::start("refresh-writes", &[], &[("AWS_ENDPOINT_URL_STS", standin.url.as_str())]).await;
    let ns = scene.ns.name.clone();
    for i in 0..ROLES {
        apply(&assumed_role(
            &ns,
            &format!("reader-{i}"),
            "  durationSeconds: 900\n  refreshBefore: 840s\n",
        ));
    }
    let mut minted_at = Vec::new();
    for i in 0..ROLES {
        let ar = wait_ready(&scene.roles, &format!("reader-{i}"), "True", "CredentialsReady").await;
        minted_at.push(ar.status.and_then(|s| s.last_refresh_time).expect("lastRefreshTime").0);
    }
    let minted = audited_at_least(
        &ns,
        "reader-",
        &[("patch secrets", ROLES), ("patch assumedroles/status", ROLES)],
    )
    .await;
    for (i, first) in minted_at.iter().enumerate() {
        wait_for(
            &scene.roles,
            &format!("reader-{i}"),
            Duration::from_secs(90),
            "a refresh",
            |ar: Option<&AssumedRole>| {
                ar.and_then(|a| a.status.as_ref())
                    .and_then(|s| s.last_refresh_time.as_ref())
                    .is_some_and(|t| t.0 > *first)
            },
        )
        .await;
    }
    let calls = scene.operator.sts_calls().await;
    let refreshed = audited_at_least(
        &ns,
        "reader-",
        &[("patch secrets", 2 * ROLES), ("patch assumedroles/status", 2 * ROLES)],
    )
    .await;
    eprintln!(
        "{ROLES} refreshes after {ROLES} mints ({calls} STS calls); the API server's record: {minted:?} then {refreshed:?}"
    );
    assert_eq!(calls, 2 * ROLES as u64, "each AssumedRole minted and refreshed once");
    let delta = |key: &str| refreshed.get(key).copied().unwrap_or(0) - minted.get(key).copied().unwrap_or(0);
    // The refresh wrote the Secret once and the status once: the events of
    // its own writes, which come back while the cache may still hold the
    // status of the mint, caused no second write.
    assert_eq!(delta("patch secrets"), ROLES, "{minted:?} then {refreshed:?}");
    assert_eq!(
        delta("patch assumedroles/status"),
        ROLES,
        "{minted:?} then {refreshed:?}"
    );
    // And read none: the owned-Secret watch had delivered what it replaced.
    assert_eq!(delta("get secrets"), 0, "{minted:?} then {refreshed:?}");
    let writes = |counts: &BTreeMap<String, usize>| {
        counts
            .keys()
            .filter(|k| !k.starts_with("get "))
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(
        writes(&refreshed),
        writes(&minted),
        "a refresh made writes of another kind"
    );
}
