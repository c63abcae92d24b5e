//! STS and spec failures: the Secret is left exactly as it was, the status
//! and Events say why, and no credential leaks into logs or Events.

use std::time::Duration;

use assumed_role_operator::{api::AssumedRole, schedule};
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};

use crate::support::*;

#[tokio::test]
#[ignore = "needs the local control plane; run with `make test`"]
async fn access_denied_leaves_the_secret_as_it_was_and_backs_off() {
    let env = iam_enforcing_sts();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let Scene {
        ns,
        roles,
        secrets,
        operator,
        ..
    } = Scene::start("denied", &[], &env).await;
    apply(&assumed_role(&ns.name, "allowed-reader", "  secret: {name: aws}\n"));
    wait_ready(&roles, "allowed-reader", "True", "CredentialsReady").await;
    let before = secrets.get("aws").await.expect("Secret");

    // The operator's user may not assume this role: moto enforces IAM.
    let denied = format!("arn:aws:iam::{}:role/denied-reader", account());
    merge_patch(
        &ns.name,
        "assumedrole/allowed-reader",
        &format!(r#"{{"spec":{{"roleArn":"{denied}"}}}}"#),
    );
    let ar = wait_ready(&roles, "allowed-reader", "False", "AccessDenied").await;
    let status = ar.status.clone().expect("status");
    assert!(
        status.consecutive_failures >= 1 && status.last_failure_time.is_some(),
        "{status:?}"
    );
    assert!(events_json(&ns.name).contains("AccessDenied"), "no AccessDenied Event");

    // It retries with backoff, and the Secret stays exactly as it was.
    wait_for(
        &roles,
        "allowed-reader",
        Duration::from_secs(60),
        "a retry",
        |ar: Option<&AssumedRole>| {
            ar.and_then(|a| a.status.as_ref())
                .is_some_and(|s| s.consecutive_failures >= 2)
        },
    )
    .await;
    let after = secrets.get("aws").await.expect("Secret");
    assert_eq!(
        after.resource_version(),
        before.resource_version(),
        "a failure modified the Secret"
    );
    assert!(
        operator
            .counter(
                "assumed_role_operator_sts_assume_role_calls_total",
                Some("AccessDenied")
            )
            .await
            >= 2
    );
    // The reconciles are counted as what they are, never as a success.
    let denied = operator
        .counter("assumed_role_operator_reconciles_total", Some(r#"result="sts_denied""#))
        .await;
    assert!(denied >= 2, "{denied} reconciles counted as sts_denied");
}

#[tokio::test]
#[ignore = "needs the local control plane; run with `make test`"]
async fn a_restarted_operator_waits_out_the_backoff_persisted_in_status() {
    let env = iam_enforcing_sts();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let Scene {
        ns,
        roles,
        mut operator,
        ..
    } = Scene::start("backoff", &[], &env).await;
    // Never allowed: every try fails, and the backoff grows.
    apply(&assumed_role(&ns.name, "denied-reader", ""));
    wait_for(
        &roles,
        "denied-reader",
        Duration::from_secs(90),
        "three failures",
        |ar: Option<&AssumedRole>| {
            ar.and_then(|a| a.status.as_ref())
                .is_some_and(|s| s.consecutive_failures >= 3)
        },
    )
    .await;
    operator.stop();
    let ar = roles.get("denied-reader").await.expect("AssumedRole");
    let status = ar.status.clone().expect("status");
    let last = status.last_failure_time.clone().expect("lastFailureTime").0;
    let uid = ar.metadata.uid.clone().expect("uid");
    let retry = schedule::retry_at(&uid, status.consecutive_failures, last, None);

    // A new process reads the schedule from status instead of retrying at once.
    let _restarted = Operator::start(&ns.name, &[], &env);
    let failures = status.consecutive_failures;
    let after = wait_for(
        &roles,
        "denied-reader",
        Duration::from_secs(90),
        "the next try",
        move |ar: Option<&AssumedRole>| {
            ar.and_then(|a| a.status.as_ref())
                .is_some_and(|s| s.consecutive_failures > failures)
        },
    )
    .await;
    let next = after
        .status
        .and_then(|s| s.last_failure_time)
        .expect("lastFailureTime")
        .0;
    assert!(
        next >= schedule::whole_second(retry),
        "retried at {next}, before the persisted backoff ended at {retry} (last failure {last})"
    );
}

#[tokio::test]
#[ignore = "needs the local control plane; run with `make test`"]
async fn a_spec_only_the_reconciler_can_judge_is_reported_as_invalid() {
    let Scene {
        ns, roles, operator, ..
    } = Scene::start("invalid", &[], &[]).await;
    apply(&assumed_role(&ns.name, "reader", "  policy: '{not json'\n"));
    let ar = wait_ready(&roles, "reader", "False", "InvalidSpec").await;
    let (_, _, message) = ready(&ar).expect("Ready");
    assert!(message.starts_with("spec.policy: is not valid JSON"), "{message}");
    assert_eq!(operator.sts_calls().await, 0);
}

#[tokio::test]
#[ignore = "needs the local control plane; run with `make test`"]
async fn a_suspended_assumed_role_is_left_alone() {
    let Scene {
        ns,
        roles,
        secrets,
        operator,
        ..
    } = Scene::start("suspend", &[], &[]).await;
    // Due for a refresh every ~10 s while not suspended.
    apply(&assumed_role(
        &ns.name,
        "reader",
        "  durationSeconds: 900\n  refreshBefore: 890s\n",
    ));
    let ar = wait_ready(&roles, "reader", "True", "CredentialsReady").await;
    let due = ar.status.and_then(|s| s.refresh_time).expect("status.refreshTime").0;
    merge_patch(&ns.name, "assumedrole/reader", r#"{"spec":{"suspend":true}}"#);
    wait_ready(&roles, "reader", "False", "Suspended").await;
    let calls = operator.sts_calls().await;
    let version = secrets.get("reader").await.expect("Secret").resource_version();
    // Only letting the due time pass can show that nothing happens then.
    let wait = due.duration_since(jiff::Timestamp::now()) + jiff::SignedDuration::from_secs(3);
    tokio::time::sleep(
        Duration::try_from(wait)
            .unwrap_or_default()
            .min(Duration::from_secs(20)),
    )
    .await;
    assert_eq!(
        operator.sts_calls().await,
        calls,
        "a suspended AssumedRole was refreshed"
    );
    assert_eq!(secrets.get("reader").await.expect("Secret").resource_version(), version);

    merge_patch(&ns.name, "assumedrole/reader", r#"{"spec":{"suspend":false}}"#);
    wait_ready(&roles, "reader", "True", "CredentialsReady").await;
}

#[tokio::test]
#[ignore = "needs the local control plane; run with `make test`"]
async fn credentials_never_appear_in_logs_events_status_or_metrics() {
    let Scene {
        ns,
        roles,
        secrets,
        operator,
        ..
    } = Scene::start("leaks", &["--log-level", "debug"], &[]).await;
    // Refreshes about every 10 s, and a failure path alongside.
    apply(&assumed_role(
        &ns.name,
        "reader",
        "  durationSeconds: 900\n  refreshBefore: 890s\n",
    ));
    apply(&assumed_role(&ns.name, "broken", "  policy: '[1]'\n"));
    wait_ready(&roles, "broken", "False", "InvalidSpec").await;
    let mut seen = Vec::new();
    let mut last = None;
    for _ in 0..3 {
        let s = wait_for(
            &secrets,
            "reader",
            Duration::from_secs(60),
            "a new set",
            |s: Option<&Secret>| s.is_some_and(|s| expiration_of(s) != last),
        )
        .await;
        last = expiration_of(&s);
        seen.push(data(&s));
    }
    // Delete the Secret too, so that the restore path logs as well.
    let uid = secrets.get("reader").await.expect("Secret").uid();
    kubectl(&["delete", "secret", "reader", "-n", &ns.name], None);
    wait_for(
        &secrets,
        "reader",
        Duration::from_secs(30),
        "the restore",
        |s: Option<&Secret>| s.is_some_and(|s| s.uid() != uid),
    )
    .await;

    let log = operator.output();
    assert!(
        log.lines().count() > 50,
        "expected a debug log, got {} lines",
        log.lines().count()
    );
    let events = events_json(&ns.name);
    let statuses = kubectl(&["get", "assumedroles", "-n", &ns.name, "-o", "json"], None);
    let statuses = String::from_utf8_lossy(&statuses.stdout);
    let (_, metrics) = operator.admin_get("/metrics").await;
    assert!(
        metrics.contains("assumed_role_operator_sts_assume_role_calls_total"),
        "{metrics}"
    );
    for set in &seen {
        for key in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"] {
            let value = &set[key];
            assert!(!log.contains(value.as_str()), "{key} appears in the operator's log");
            assert!(!events.contains(value.as_str()), "{key} appears in an Event");
            assert!(!statuses.contains(value.as_str()), "{key} appears in a status");
            assert!(!metrics.contains(value.as_str()), "{key} appears in the metrics");
        }
    }
}

#[tokio::test]
#[ignore = "needs the local control plane; run with `make test`"]
async fn a_failed_secret_write_is_retried_with_the_credentials_already_minted() {
    let Scene {
        ns,
        roles,
        secrets,
        operator,
        ..
    } = Scene::start("write-retry", &[], &[]).await;
    // Up first: the operator keeps its own key in this namespace.
    operator.wait_ready().await;
    let deny = DenySecretWrites::install(&ns.name, "Secrets are frozen in this namespace").await;
    apply(&assumed_role(&ns.name, "reader", ""));
    let ar = wait_ready(&roles, "reader", "False", "ApplySecret").await;
    let (_, _, message) = ready(&ar).expect("Ready");
    assert!(message.contains("Secrets are frozen"), "{message}");
    // Retried with backoff, each time without a new STS call.
    wait_for(
        &roles,
        "reader",
        Duration::from_secs(60),
        "three failed writes",
        |ar: Option<&AssumedRole>| {
            ar.and_then(|a| a.status.as_ref())
                .is_some_and(|s| s.consecutive_failures >= 3)
        },
    )
    .await;
    assert_eq!(operator.sts_calls().await, 1, "a failed write cost another STS call");

    deny.remove(&ns.name).await;
    wait_ready(&roles, "reader", "True", "CredentialsReady").await;
    assert_eq!(operator.sts_calls().await, 1, "the write after the failures called STS");
    let secret = secrets.get("reader").await.expect("Secret");
    caller_arn(&secret)
        .await
        .expect("the credentials minted before the failures work");
}

#[tokio::test]
#[ignore = "needs the local control plane; run with `make test`"]
async fn an_operator_without_aws_credentials_says_so_in_the_sdks_words() {
    let client = client().await;
    let ns = TestNamespace::create(&client, "no-creds").await;
    let roles: Api<AssumedRole> = Api::namespaced(client, &ns.name);
    // No keys, no profile, no web identity, no container or instance
    // metadata: nothing in the default chain has credentials.
    let remove = [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_ARN",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    ];
    let env = [
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_CONFIG_FILE", "/nonexistent/aws/config"),
        ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws/credentials"),
    ];
    let _operator = Operator::start_without(&ns.name, &remove, &env);
    apply(&assumed_role(&ns.name, "reader", ""));
    let ar = wait_ready(&roles, "reader", "False", "NoCredentials").await;
    let (_, _, message) = ready(&ar).expect("Ready");
    // The SDK's own account of the chain it tried.
    assert!(message.contains("no credentials found in chain"), "{message}");
    assert!(message.contains("Ec2InstanceMetadata"), "{message}");
    assert!(!message.contains("could not connect"), "{message}");
}

#[tokio::test]
#[ignore = "needs the local control plane; run with `make test`"]
async fn warning_events_reach_the_api_server_whatever_the_name_and_message() {
    let Scene {
        ns, roles, operator, ..
    } = Scene::start("events", &[], &[]).await;
    // Up first: the operator keeps its own key in this namespace.
    operator.wait_ready().await;
    // The API server's own words, longer than an Event note may be.
    let reason = "no Secret may be written here: ".to_string() + &"the policy says so. ".repeat(60);
    let _deny = DenySecretWrites::install(&ns.name, &reason).await;
    // A name as long as an object name may be (253), so that the Event's
    // name has to be shortened.
    let name = format!("r{}", "e".repeat(252));
    apply(&format!(
        "apiVersion: sts.refresh.dev/v1alpha1\nkind: AssumedRole\nmetadata: {{name: {name}, namespace: {}}}\n\
         spec:\n  roleArn: arn:aws:iam::{}:role/reader\n  secret: {{name: aws}}\n",
        ns.name,
        account()
    ));
    wait_ready(&roles, &name, "False", "ApplySecret").await;
    let warning = poll(
        Duration::from_secs(30),
        Duration::from_millis(200),
        "a Warning Event about the failed write",
        || async {
            events(&ns.name)
                .into_iter()
                .find(|e| e["reason"] == "ApplySecret" && e["type"] == "Warning")
        },
    )
    .await;
    let note = warning["note"].as_str().expect("a note");
    assert!(note.len() <= 1024, "{} bytes", note.len());
    assert!(note.starts_with("applying Secret aws: "), "{note}");
    assert!(note.contains("no Secret may be written here"), "{note}");
    assert!(!note.contains("Status {"), "a debug dump: {note}");
    assert_eq!(warning["regarding"]["name"], name.as_str());
    assert!(warning["metadata"]["name"].as_str().expect("name").len() <= 253);
}
