//! ECR image pull Secrets, against moto's ECR through the stand-in (which
//! gives its tokens a short life and can take ECR down).

use std::{collections::BTreeMap, time::Duration};

use base64::Engine as _;
use k8s_openapi::api::core::v1::Secret;

use crate::support::*;

/// The registries of the image pull Secret, as host → (username, password,
/// the `auth` field decoded).
fn auths(secret: &Secret) -> BTreeMap<String, (String, String, String)> {
    let raw = &secret.data.as_ref().expect("data")[".dockerconfigjson"].0;
    let config: serde_json::Value = serde_json::from_slice(raw).expect("a docker config");
    config["auths"]
        .as_object()
        .expect("auths")
        .iter()
        .map(|(host, entry)| {
            let auth = base64::engine::general_purpose::STANDARD
                .decode(entry["auth"].as_str().expect("auth"))
                .expect("base64");
            (
                host.clone(),
                (
                    entry["username"].as_str().unwrap_or_default().to_string(),
                    entry["password"].as_str().unwrap_or_default().to_string(),
                    String::from_utf8(auth).expect("UTF-8"),
                ),
            )
        })
        .collect()
}

fn annotation(secret: &Secret, key: &str) -> Option<String> {
    secret.metadata.annotations.as_ref()?.get(key).cloned()
}

fn pull_status(ar: &assumed_role_operator::api::AssumedRole) -> Option<(String, String)> {
    let s = ar.status.as_ref()?.image_pull_secret.as_ref()?;
    Some((s.ready.clone(), s.reason.clone()))
}

/// Waits until the AssumedRole `name`'s `status.imagePullSecret` has
/// `reason`.
async fn wait_pull_reason(
    roles: &kube::Api<assumed_role_operator::api::AssumedRole>,
    name: &str,
    reason: &str,
) -> assumed_role_operator::api::AssumedRole {
    wait_for(
        roles,
        name,
        Duration::from_secs(30),
        &format!("{reason} in status.imagePullSecret"),
        |a: Option<&assumed_role_operator::api::AssumedRole>| a.and_then(pull_status).is_some_and(|(_, r)| r == reason),
    )
    .await
}

fn registries(accounts: &[(&str, &str)]) -> String {
    let list: Vec<String> = accounts
        .iter()
        .map(|(account, region)| format!("{{account: \"{account}\", region: {region}}}"))
        .collect();
    format!(
        "  imagePullSecret: {{name: puller-ecr, registries: [{}]}}",
        list.join(", ")
    )
}

#[tokio::test]
#[ignore = "needs the local control plane; run with `make test`"]
async fn an_image_pull_secret_holds_each_registrys_pair_refreshes_before_expiry_and_survives_an_ecr_outage() {
    let logs = tempfile::tempdir().expect("logs dir");
    let standin = StandIn::start(3600, 0, logs.path());
    // Tokens of 400 s: the floor (5 minutes) leaves 100 s, less jitter,
    // before the next is due.
    standin.ecr_lifetime(400).await;
    let scene = Scene::start(
        "ecr",
        &[],
        &[
            ("AWS_ENDPOINT_URL_STS", standin.url.as_str()),
            ("AWS_ENDPOINT_URL_ECR", standin.url.as_str()),
        ],
    )
    .await;
    let ns = scene.ns.name.clone();
    let account = account();
    let first = [
        (account.as_str(), "us-east-1"),
        ("210987654321", "us-east-1"),
        (account.as_str(), "eu-west-1"),
    ];
    apply(&assumed_role(&ns, "puller", &registries(&first)));
    wait_ready(&scene.roles, "puller", "True", "CredentialsReady").await;
    let secret = poll(
        Duration::from_secs(30),
        Duration::from_millis(200),
        "the image pull Secret",
        || async { scene.secrets.get_opt("puller-ecr").await.ok().flatten() },
    )
    .await;
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/dockerconfigjson"));
    let owner = &secret.metadata.owner_references.as_ref().expect("an owner")[0];
    assert_eq!((owner.kind.as_str(), owner.name.as_str()), ("AssumedRole", "puller"));
    let given = auths(&secret);
    let hosts: Vec<&str> = given.keys().map(String::as_str).collect();
    let mut expected = vec![
        "210987654321.dkr.ecr.us-east-1.amazonaws.com".to_string(),
        format!("{account}.dkr.ecr.eu-west-1.amazonaws.com"),
        format!("{account}.dkr.ecr.us-east-1.amazonaws.com"),
    ];
    expected.sort();
    assert_eq!(hosts, expected);
    for (host, (user, password, auth)) in &given {
        assert_eq!(user, "AWS", "{host}");
        assert!(!password.is_empty(), "{host}");
        assert_eq!(auth, &format!("AWS:{password}"), "{host}");
    }
    let ar = wait_pull_reason(&scene.roles, "puller", "TokenReady").await;
    assert_eq!(pull_status(&ar).map(|(ready, _)| ready).as_deref(), Some("True"));
    // The status tells the expiry of the tokens the Secret holds.
    let expires = ar.status.unwrap().image_pull_secret.unwrap().expiration_time.unwrap().0;
    assert_eq!(
        annotation(&secret, "sts.refresh.dev/token-expiration"),
        Some(expires.to_string())
    );

    // A Secret of that name that is someone else's is never written.
    apply(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: theirs, namespace: {ns}}}\nstringData: {{note: mine}}\n"
    ));
    apply(&assumed_role(
        &ns,
        "other",
        &registries(&first[..1]).replace("name: puller-ecr", "name: theirs"),
    ));
    wait_pull_reason(&scene.roles, "other", "SecretConflict").await;
    let theirs = scene.secrets.get("theirs").await.expect("their Secret");
    assert!(theirs.metadata.owner_references.is_none() && theirs.type_.as_deref() == Some("Opaque"));
    assert_eq!(data(&theirs).get("note").map(String::as_str), Some("mine"));

    // ECR goes down; a new registry makes a token due at once: the attempt
    // fails, says so, and the Secret is left as it was.
    standin.ecr_down(600).await;
    let calls = scene
        .operator
        .counter("assumed_role_operator_ecr_authorization_token_calls_total", None)
        .await;
    let mut more = first.to_vec();
    more.push((account.as_str(), "eu-central-1"));
    apply(&assumed_role(&ns, "puller", &registries(&more)));
    let failing = wait_pull_reason(&scene.roles, "puller", "ECRUnavailable").await;
    // Its tokens have not expired: still Ready, as pods can still pull.
    assert_eq!(pull_status(&failing).map(|(ready, _)| ready).as_deref(), Some("True"));
    let during = scene.secrets.get("puller-ecr").await.expect("the Secret");
    assert_eq!(during.data, secret.data, "an ECR outage never touches the Secret");
    let failed = scene
        .operator
        .counter(
            "assumed_role_operator_ecr_authorization_token_calls_total",
            Some("ECRUnavailable"),
        )
        .await;
    assert!(failed >= 1, "the failed call is not counted");
    assert!(calls >= 2, "{calls} ECR calls before the outage (two regions)");
    let events = events_json(&ns);
    assert!(events.contains("ECRUnavailable"), "no Warning Event: {events}");

    // ECR back: the Secret gets the four registries.
    standin.ecr_down(0).await;
    let back = poll(
        Duration::from_secs(90),
        Duration::from_millis(250),
        "the Secret with the new registry",
        || async {
            let s = scene.secrets.get_opt("puller-ecr").await.ok().flatten()?;
            (auths(&s).len() == 4).then_some(s)
        },
    )
    .await;
    let issued = annotation(&back, "sts.refresh.dev/token-issued");

    // And a token is renewed on its own schedule, before it expires.
    let renewed = poll(
        Duration::from_secs(150),
        Duration::from_millis(500),
        "a renewal before expiry",
        || async {
            let s = scene.secrets.get_opt("puller-ecr").await.ok().flatten()?;
            (annotation(&s, "sts.refresh.dev/token-issued") != issued).then_some(s)
        },
    )
    .await;
    let renewed_at: jiff::Timestamp = annotation(&renewed, "sts.refresh.dev/token-issued")
        .unwrap()
        .parse()
        .unwrap();
    let previous: jiff::Timestamp = annotation(&back, "sts.refresh.dev/token-expiration")
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        renewed_at < previous,
        "renewed at {renewed_at}, after its token expired at {previous}"
    );

    // Every token ECR gave is a successful call in the operator's metric.
    let given = standin.report().await["ecr"]
        .as_u64()
        .expect("the stand-in's ECR count");
    let counted = scene
        .operator
        .counter(
            "assumed_role_operator_ecr_authorization_token_calls_total",
            Some("success"),
        )
        .await;
    assert_eq!(counted, given, "ECR calls the metric counts against tokens ECR gave");

    // No password in the operator's log.
    let log = scene.operator.output();
    for (_, (_, password, _)) in auths(&renewed) {
        assert!(!log.contains(&password), "an ECR password is in the log");
    }
}
