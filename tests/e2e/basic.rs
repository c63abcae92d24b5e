//! The first path: `kubectl apply`, a Secret whose credentials work, a
//! refresh before expiry, garbage collection, and admission errors.

use std::time::Duration;

use crate::support::*;
use assumed_role_operator::{api::AssumedRole, schedule};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};

#[tokio::test]
#[ignore = "needs the local control plane; run with `make test`"]
async fn operator_writes_working_credentials_and_refreshes_them_before_expiry() {
    let client = client().await;
    let ns = TestNamespace::create(&client, "refresh").await;
    let _operator = Operator::start(&ns.name, &[], &[]);
    // 900 s credentials refreshed 890 s before expiry: a rotation about every 10 s.
    apply(&assumed_role(
        &ns.name,
        "reader",
        "  durationSeconds: 900\n  refreshBefore: 890s\n  secret: {name: reader-aws}\n",
    ));

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let roles: Api<AssumedRole> = Api::namespaced(client.clone(), &ns.name);
    let first = wait_for(
        &secrets,
        "reader-aws",
        Duration::from_secs(30),
        "the Secret",
        |s: Option<&Secret>| s.is_some(),
    )
    .await;
    let expected_arn = format!("arn:aws:sts::{}:assumed-role/reader/{}.reader", account(), ns.name);
    assert_eq!(caller_arn(&first).await, Ok(expected_arn.clone()));
    let keys = data(&first);
    for key in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "expiration",
    ] {
        assert!(keys.get(key).is_some_and(|v| !v.is_empty()), "Secret lacks {key}");
    }
    let owner = first.owner_references().first().cloned().expect("an ownerReference");
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.controller),
        ("AssumedRole", "reader", Some(true))
    );

    let ar = wait_for(
        &roles,
        "reader",
        Duration::from_secs(30),
        "Ready=True",
        |ar: Option<&AssumedRole>| ar.and_then(ready).is_some_and(|(status, _, _)| status == "True"),
    )
    .await;
    let status = ar.status.clone().expect("status");
    let expires = status.expiration_time.clone().expect("status.expirationTime").0;
    assert_eq!(keys["expiration"].parse::<Timestamp>().ok(), Some(expires));
    let refresh = status.refresh_time.clone().expect("status.refreshTime").0;
    assert!(
        refresh <= expires - schedule::FLOOR,
        "refresh {refresh} is not 5 minutes before expiry {expires}"
    );
    assert_eq!(status.assumed_role_arn.as_deref(), Some(expected_arn.as_str()));

    // The next set arrives before the first expires, and works too.
    let old_expiration = expiration_of(&first);
    let second = wait_for(
        &secrets,
        "reader-aws",
        Duration::from_secs(60),
        "a refreshed Secret",
        |s: Option<&Secret>| s.is_some_and(|s| expiration_of(s) != old_expiration),
    )
    .await;
    assert!(
        Timestamp::now() < expires,
        "refreshed only after the old credentials expired"
    );
    assert_ne!(data(&second)["AWS_ACCESS_KEY_ID"], keys["AWS_ACCESS_KEY_ID"]);
    assert_eq!(caller_arn(&second).await, Ok(expected_arn));
}

#[tokio::test]
#[ignore = "needs the local control plane; run with `make test`"]
async fn deleting_the_assumed_role_garbage_collects_its_secret() {
    let client = client().await;
    let ns = TestNamespace::create(&client, "gc").await;
    let _operator = Operator::start(&ns.name, &[], &[]);
    // Create, working credentials, a refresh, then delete and collection.
    main_scenario(&client, &ns.name).await;
}

#[tokio::test]
#[ignore = "needs the local control plane; run with `make test`"]
async fn kubectl_apply_rejects_a_bad_role_arn_duration_or_image_pull_secret_naming_the_field() {
    let client = client().await;
    let ns = TestNamespace::create(&client, "admission").await;
    let role = "roleArn: arn:aws:iam::123456789012:role/r";
    let registry = "registries: [{account: '123456789012', region: eu-west-1}]";
    let taken = "spec.imagePullSecret.name must not be the credentials Secret's name";
    let cases = [
        ("roleArn: arn:aws:iam::123:user/someone".to_string(), "spec.roleArn"),
        (format!("{role}\n  durationSeconds: 100"), "spec.durationSeconds"),
        // The AssumedRole's name, which names its credentials Secret.
        (format!("{role}\n  imagePullSecret: {{name: bad, {registry}}}"), taken),
        (
            format!("{role}\n  secret: {{name: creds}}\n  imagePullSecret: {{name: creds, {registry}}}"),
            taken,
        ),
        (
            format!("{role}\n  imagePullSecret: {{name: ecr, registries: [{{account: '123', region: eu-west-1}}]}}"),
            "spec.imagePullSecret.registries[].account",
        ),
    ];
    for (spec, field) in cases {
        let yaml = format!(
            "apiVersion: sts.refresh.dev/v1alpha1\nkind: AssumedRole\nmetadata: {{name: bad, namespace: {}}}\nspec:\n  {spec}\n",
            ns.name
        );
        let out = kubectl(&["apply", "-f", "-"], Some(&yaml));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{spec:?} was accepted");
        assert!(
            stderr.contains(field),
            "the error for {spec:?} does not name {field}: {stderr}"
        );
    }
    let roles: Api<AssumedRole> = Api::namespaced(client, &ns.name);
    assert!(
        roles.get_opt("bad").await.expect("get").is_none(),
        "a rejected object was stored"
    );
}

#[tokio::test]
#[ignore = "needs the local control plane; run with `make test`"]
async fn kubectl_apply_rejects_labels_and_annotations_the_api_server_would_refuse_on_the_secret() {
    let client = client().await;
    let ns = TestNamespace::create(&client, "labels").await;
    let long = "v".repeat(64);
    let cases = [
        ("labels: {'has space': x}", "spec.secret.labels"),
        (&*format!("labels: {{team: {long}}}"), "spec.secret.labels"),
        ("labels: {team: 'not a value'}", "spec.secret.labels"),
        ("annotations: {'a note': x}", "spec.secret.annotations"),
        (
            "annotations: {'sts.refresh.dev/expiration': '2099-01-01T00:00:00Z'}",
            "spec.secret.annotations",
        ),
    ];
    for (secret, field) in cases {
        let yaml = format!(
            "apiVersion: sts.refresh.dev/v1alpha1\nkind: AssumedRole\nmetadata: {{name: bad, namespace: {}}}\n\
             spec:\n  roleArn: arn:aws:iam::123456789012:role/r\n  secret: {{{secret}}}\n",
            ns.name
        );
        let out = kubectl(&["apply", "-f", "-"], Some(&yaml));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{secret:?} was admitted");
        assert!(
            stderr.contains(field),
            "the error for {secret:?} does not name {field}: {stderr}"
        );
    }
    // What the API server accepts on a Secret is admitted.
    apply(&assumed_role(
        &ns.name,
        "good",
        "  secret:\n    labels: {example.com/team: billing, tier: ''}\n    annotations: {example.com/note: 'any text at all'}\n",
    ));
}

#[tokio::test]
#[ignore = "needs the local control plane; run with `make test`"]
async fn a_policy_is_measured_in_characters_as_sts_measures_it() {
    let Scene {
        ns, roles, operator, ..
    } = Scene::start("policy-length", &[], &[]).await;
    // 1,509 characters in more than 2,048 bytes: within STS's 2,048
    // characters.
    let policy = format!(r#"{{"Version":"2012-10-17","Sid":"{}"}}"#, "é".repeat(1476));
    assert_eq!(policy.chars().count(), 1509);
    assert!(policy.len() > 2048);
    apply(&assumed_role(&ns.name, "reader", &format!("  policy: '{policy}'\n")));
    wait_ready(&roles, "reader", "True", "CredentialsReady").await;
    assert_eq!(operator.sts_calls().await, 1);
}

#[tokio::test]
#[ignore = "needs the local control plane; run with `make test`"]
async fn the_start_up_line_gives_the_version_the_settings_and_the_credential_source() {
    let ns = TestNamespace::create(&client().await, "startline").await;
    let operator = Operator::start(&ns.name, &["--concurrency", "7", "--session-tags"], &[]);
    let line = poll(
        Duration::from_secs(20),
        Duration::from_millis(100),
        "the start-up line",
        || async {
            operator
                .output()
                .lines()
                .find(|l| l.contains("starting assumed-role-operator"))
                .map(str::to_string)
        },
    )
    .await;
    for part in [
        concat!("version=\"", env!("CARGO_PKG_VERSION"), "\""),
        "concurrency=7",
        "session_tags=true",
        "leader_elect=false",
        "credentials=environment variables AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
    ] {
        assert!(line.contains(part), "{part:?} missing from: {line}");
    }
    let endpoint = std::env::var("AWS_ENDPOINT_URL").expect("AWS_ENDPOINT_URL");
    assert!(line.contains(&format!("sts_endpoint={endpoint}")), "{line}");
    let secret = std::env::var("AWS_SECRET_ACCESS_KEY").expect("AWS_SECRET_ACCESS_KEY");
    assert!(!line.contains(&secret), "a credential in the start-up line");
}
