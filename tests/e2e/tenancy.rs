//! Multi-tenant safety: AssumedRolePolicies decide which namespaces may
//! assume which roles. Every STS call is counted by the stand-in that sits
//! in front of moto, not by the operator's own metrics.

use std::time::Instant;

use assumed_role_operator::api::AssumedRole;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use serde_json::{Value, json};

use crate::support::*;

/// Applies an AssumedRolePolicy from its spec.
fn policy(name: &str, spec: Value) {
    let policy = json!({
        "apiVersion": "sts.refresh.dev/v1alpha1",
        "kind": "AssumedRolePolicy",
        "metadata": {"name": name},
        "spec": spec,
    });
    apply(&policy.to_string());
}

/// The keys of a Secret's data.
fn keys(secret: &Secret) -> Vec<String> {
    secret
        .data
        .as_ref()
        .map(|d| d.keys().cloned().collect())
        .unwrap_or_default()
}

fn role(name: &str) -> String {
    format!("arn:aws:iam::{}:role/{name}", account())
}

/// A namespace whose policy allows `role/reader` only, an operator in front
/// of the STS stand-in, and the AssumedRole `reader`, Ready.
struct Tenant {
    standin: StandIn,
    ns: TestNamespace,
    name: String,
    roles: Api<AssumedRole>,
    secrets: Api<Secret>,
    _operator: Operator,
    _logs: tempfile::TempDir,
}

impl Tenant {
    async fn with_reader(prefix: &str) -> Self {
        let client = client().await;
        let logs = tempfile::tempdir().expect("logs dir");
        let standin = StandIn::start(3600, 0, logs.path());
        let ns = TestNamespace::without_policy(&client, prefix).await;
        let name = ns.name.clone();
        allow(&name, &name, &[&role("reader")]);
        let operator = Operator::start(&name, &[], &[("AWS_ENDPOINT_URL_STS", standin.url.as_str())]);
        let roles: Api<AssumedRole> = Api::namespaced(client.clone(), &name);
        let secrets: Api<Secret> = Api::namespaced(client, &name);
        apply(&assumed_role(&name, "reader", ""));
        wait_ready(&roles, "reader", "True", "CredentialsReady").await;
        Self {
            standin,
            ns,
            name,
            roles,
            secrets,
            _operator: operator,
            _logs: logs,
        }
    }
}

#[tokio::test]
#[ignore = "needs the local control plane; run with `make test`"]
async fn two_tenants_each_get_their_own_role_and_are_denied_the_others_without_an_sts_call() {
    let client = client().await;
    let logs = tempfile::tempdir().expect("logs dir");
    let standin = StandIn::start(3600, 0, logs.path());
    let a = TestNamespace::without_policy(&client, "tenant-a").await;
    let b = TestNamespace::without_policy(&client, "tenant-b").await;
    // Each policy is named after its namespace, so that the namespace's
    // guard deletes it.
    allow(&a.name, &a.name, &[&role("team-a-*")]);
    allow(&b.name, &b.name, &[&role("team-b-*")]);
    let both = format!("{},{}", a.name, b.name);
    let _operator = Operator::start_with(
        &["--namespace", &a.name, "--watch-namespaces", &both],
        &[],
        &[("AWS_ENDPOINT_URL_STS", standin.url.as_str())],
    );
    let tenants = [
        (&a.name, "team-a-reader", "team-b-reader"),
        (&b.name, "team-b-reader", "team-a-reader"),
    ];
    for (ns, own, theirs) in tenants {
        apply(&assumed_role_for(ns, "own", own, ""));
        apply(&assumed_role_for(ns, "theirs", theirs, ""));
    }
    for (ns, own, theirs) in tenants {
        let roles: Api<AssumedRole> = Api::namespaced(client.clone(), ns);
        let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
        let granted = wait_ready(&roles, "own", "True", "CredentialsReady").await;
        let arn = granted.status.and_then(|s| s.assumed_role_arn).unwrap_or_default();
        assert!(arn.contains(&format!(":assumed-role/{own}/")), "{arn}");
        let denied = wait_ready(&roles, "theirs", "False", "PolicyDenied").await;
        let (_, _, message) = ready(&denied).expect("Ready");
        assert_eq!(
            message,
            format!(
                "namespace {ns} may not assume {}: the AssumedRolePolicies that cover the namespace ({ns}) do not \
                 name the role; no STS call was made",
                role(theirs)
            )
        );
        assert!(secrets.get_opt("theirs").await.expect("get").is_none());
        let warned = events(ns)
            .into_iter()
            .any(|e| e["type"] == "Warning" && e["reason"] == "PolicyDenied" && e["regarding"]["name"] == "theirs");
        assert!(warned, "no PolicyDenied Warning Event in {ns}");
    }
    // Counted at STS: one call for each granted AssumedRole, with its own
    // role, and none at all for the denied ones.
    let report = standin.report().await;
    for (ns, own) in [(&a.name, "team-a-reader"), (&b.name, "team-b-reader")] {
        let granted = sessions_of(&report, ns, "own");
        assert_eq!(granted.len(), 1, "{granted:?}");
        assert_eq!(granted[0]["role"], role(own));
        assert!(
            sessions_of(&report, ns, "theirs").is_empty(),
            "a denied AssumedRole reached STS"
        );
    }
    eprintln!(
        "two tenants: {} AssumeRole calls at STS, 2 denied AssumedRoles with none",
        report["assume_role"]
    );
}

#[tokio::test]
#[ignore = "needs the local control plane; run with `make test`"]
async fn a_revoked_grant_empties_the_secret_and_a_returned_one_fills_it_at_once() {
    let Tenant {
        standin,
        ns: _ns,
        name,
        roles,
        secrets,
        _operator,
        _logs,
    } = Tenant::with_reader("revoke").await;
    let first = secrets.get("reader").await.expect("Secret");
    let calls = |report: &Value| sessions_of(report, &name, "reader").len();
    assert_eq!(calls(&standin.report().await), 1);

    // The policy stops naming the role: the credentials leave the Secret at
    // once, the Secret stays, and STS is not asked.
    allow(&name, &name, &[&role("someone-else")]);
    let revoked = wait_ready(&roles, "reader", "False", "PolicyDenied").await;
    let (_, _, message) = ready(&revoked).expect("Ready");
    assert!(
        message.ends_with("the credentials were removed from Secret reader, which stays"),
        "{message}"
    );
    let emptied = secrets.get("reader").await.expect("the Secret stays");
    assert_eq!(emptied.metadata.uid, first.metadata.uid, "the Secret was replaced");
    assert_eq!(keys(&emptied), ["config", "endpoint-token"]);
    assert_eq!(calls(&standin.report().await), 1);

    // The grant returns: new credentials at once, not at the next refresh
    // (40 minutes away), and not the ones handed out before.
    let returned = Instant::now();
    allow(&name, &name, &[&role("reader")]);
    wait_ready(&roles, "reader", "True", "CredentialsReady").await;
    eprintln!("grant returned: Ready again in {} ms", returned.elapsed().as_millis());
    let refilled = secrets.get("reader").await.expect("Secret");
    assert!(keys(&refilled).contains(&"credential_process.json".to_string()));
    let key = |s: &Secret| {
        s.data
            .as_ref()
            .and_then(|d| d.get("AWS_ACCESS_KEY_ID"))
            .map(|v| v.0.clone())
    };
    assert_ne!(key(&refilled), key(&first), "the revoked credentials came back");
    assert_eq!(calls(&standin.report().await), 2);

    // The same by namespace labels: a policy by selector, and the
    // namespace relabelled out of it and back.
    let label = format!("tenant={name}");
    let out = kubectl(&["label", "namespace", &name, &label], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    policy(
        &name,
        json!({"namespaces": {"selector": {"matchLabels": {"tenant": name}}}, "roleArns": [role("reader")]}),
    );
    let out = kubectl(&["label", "namespace", &name, "tenant-"], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_ready(&roles, "reader", "False", "PolicyDenied").await;
    assert_eq!(
        keys(&secrets.get("reader").await.expect("Secret")),
        ["config", "endpoint-token"]
    );
    let out = kubectl(&["label", "namespace", &name, &label], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_ready(&roles, "reader", "True", "CredentialsReady").await;
    assert_eq!(calls(&standin.report().await), 3);
}

#[tokio::test]
#[ignore = "needs the local control plane; run with `make test`"]
async fn policies_are_checked_at_admission_naming_the_field_and_list_what_they_allow() {
    let out = kubectl(
        &[
            "apply",
            "--dry-run=server",
            "-f",
            concat!(env!("CARGO_MANIFEST_DIR"), "/examples/assumedrolepolicy.yaml"),
        ],
        None,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for (spec, field) in [
        (json!({"namespaces": {}, "roleArns": [role("r")]}), "spec.namespaces"),
        (
            json!({"namespaces": {"names": ["a"]}, "roleArns": ["*"]}),
            "spec.roleArns",
        ),
        (json!({"namespaces": {"names": ["a"]}, "roleArns": []}), "spec.roleArns"),
        (
            json!({"namespaces": {"names": ["a"]}, "roleArns": [role("r")], "maxDurationSeconds": 100000}),
            "spec.maxDurationSeconds",
        ),
        (
            json!({"namespaces": {"names": ["a"]}, "roleArns": [role("r")], "sources": ["Node"]}),
            "spec.sources",
        ),
    ] {
        let manifest = json!({"apiVersion": "sts.refresh.dev/v1alpha1", "kind": "AssumedRolePolicy",
            "metadata": {"name": "bad"}, "spec": spec});
        let out = kubectl(&["apply", "--dry-run=server", "-f", "-"], Some(&manifest.to_string()));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(field), "{spec}: {stderr}");
    }
    let columns = kubectl(
        &["get", "crd", "assumedrolepolicies.sts.refresh.dev", "-o", "json"],
        None,
    );
    let crd: Value = serde_json::from_slice(&columns.stdout).expect("CRD JSON");
    let names: Vec<&str> = crd["spec"]["versions"][0]["additionalPrinterColumns"]
        .as_array()
        .expect("columns")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(
        names,
        ["Namespaces", "Selector", "Roles", "Max Duration", "Sources", "Age"]
    );
    assert_eq!(crd["spec"]["scope"], "Cluster");
}

#[tokio::test]
#[ignore = "needs the local control plane; run with `make test`"]
async fn patterns_sessions_and_identities_are_judged_field_by_field_without_an_sts_call() {
    let client = client().await;
    let logs = tempfile::tempdir().expect("logs dir");
    let standin = StandIn::start(3600, 0, logs.path());
    let ns = TestNamespace::without_policy(&client, "fields").await;
    let name = ns.name.clone();
    let own = account();
    // Any role of this account: partition and account are fields of their
    // own, so no path can pass for them.
    policy(
        &name,
        json!({"namespaces": {"names": [name]}, "roleArns": [format!("arn:*:iam::{own}:role/*")]}),
    );
    let _operator = Operator::start(&name, &[], &[("AWS_ENDPOINT_URL_STS", standin.url.as_str())]);
    let roles: Api<AssumedRole> = Api::namespaced(client.clone(), &name);
    // A role of another account whose path ends like one of this account.
    let crafted = format!("arn:aws:iam::999999999999:role/x:iam::{own}:role/y");
    apply(&format!(
        "apiVersion: sts.refresh.dev/v1alpha1\nkind: AssumedRole\nmetadata: {{name: crafted, namespace: {name}}}\n\
         spec: {{roleArn: '{crafted}'}}\n"
    ));
    let other_tenant = "payroll.reader";
    apply(&assumed_role_for(
        &name,
        "posing",
        "reader",
        &format!("  roleSessionName: {other_tenant}\n"),
    ));
    apply(&assumed_role_for(
        &name,
        "identity",
        "reader",
        "  sourceIdentity: alice\n",
    ));
    apply(&assumed_role_for(
        &name,
        "prefixed",
        "reader",
        &format!("  roleSessionName: {name}.nightly\n"),
    ));
    apply(&assumed_role_for(&name, "plain", "reader", ""));

    let denied = wait_ready(&roles, "crafted", "False", "PolicyDenied").await;
    let (_, _, message) = ready(&denied).expect("Ready");
    assert!(
        message.contains("do not name the role") && message.contains("no STS call"),
        "{message}"
    );
    let posing = wait_ready(&roles, "posing", "False", "PolicyDenied").await;
    let (_, _, message) = ready(&posing).expect("Ready");
    assert!(
        message.contains(&format!("session names starting with {name}. only")) && message.contains(other_tenant),
        "{message}"
    );
    let identity = wait_ready(&roles, "identity", "False", "PolicyDenied").await;
    let (_, _, message) = ready(&identity).expect("Ready");
    assert!(message.contains("allows no spec.sourceIdentity"), "{message}");
    wait_ready(&roles, "prefixed", "True", "CredentialsReady").await;
    wait_ready(&roles, "plain", "True", "CredentialsReady").await;

    // Counted at STS: the two allowed, nothing for the three refused.
    let report = standin.report().await;
    let sessions: Vec<String> = report["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .filter_map(|s| s["session"].as_str().map(str::to_string))
        .collect();
    assert!(sessions.contains(&format!("{name}.nightly")), "{sessions:?}");
    assert!(sessions.contains(&format!("{name}.plain")), "{sessions:?}");
    for refused in [
        format!("{name}.crafted"),
        other_tenant.to_string(),
        format!("{name}.identity"),
    ] {
        assert!(!sessions.contains(&refused), "{refused} reached STS: {sessions:?}");
    }
    assert!(
        report["sessions"]
            .as_array()
            .expect("sessions")
            .iter()
            .all(|s| s["role"] != crafted.as_str()),
        "the crafted ARN reached STS"
    );

    // A policy that names source identities lets them through.
    policy(
        &name,
        json!({"namespaces": {"names": [name]}, "roleArns": [format!("arn:*:iam::{own}:role/*")],
               "sourceIdentities": ["ali*"]}),
    );
    wait_ready(&roles, "identity", "True", "CredentialsReady").await;
    let report = standin.report().await;
    assert_eq!(sessions_of(&report, &name, "identity").len(), 1, "{report}");
}

#[tokio::test]
#[ignore = "needs the local control plane; run with `make test`"]
async fn a_revocation_empties_the_secret_left_under_an_old_name_too() {
    let Tenant {
        standin,
        ns: _ns,
        name,
        roles,
        secrets,
        _operator,
        _logs,
    } = Tenant::with_reader("revoke-renamed").await;
    // Renamed to a Secret that someone else owns: a conflict, so the old
    // Secret keeps its credentials (nothing was written under the new name).
    apply(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: taken, namespace: {name}}}\nstringData: {{note: mine}}\n"
    ));
    merge_patch(&name, "assumedrole/reader", r#"{"spec":{"secret":{"name":"taken"}}}"#);
    wait_ready(&roles, "reader", "False", "SecretConflict").await;
    assert!(keys(&secrets.get("reader").await.expect("the old Secret")).contains(&"AWS_SECRET_ACCESS_KEY".to_string()));
    // Revoked: every Secret this AssumedRole owns loses its credentials,
    // the one under the old name too; the foreign one is untouched.
    allow(&name, &name, &[&role("someone-else")]);
    let emptied = wait_for(
        &secrets,
        "reader",
        std::time::Duration::from_secs(30),
        "the old Secret emptied",
        |s: Option<&Secret>| s.is_some_and(|s| !keys(s).contains(&"AWS_SECRET_ACCESS_KEY".to_string())),
    )
    .await;
    assert_eq!(keys(&emptied), ["config", "endpoint-token"]);
    wait_ready(&roles, "reader", "False", "PolicyDenied").await;
    // The Warning Event of the revocation names the Secret it emptied (the
    // status moves on to say that nothing more was called).
    let said = events(&name).into_iter().any(|e| {
        e["reason"] == "PolicyDenied"
            && e["note"]
                .as_str()
                .is_some_and(|n| n.contains("the credentials were removed from Secret reader"))
    });
    assert!(said, "no Event names the emptied Secret: {}", events_json(&name));
    assert_eq!(keys(&secrets.get("taken").await.expect("the foreign Secret")), ["note"]);
    assert_eq!(sessions_of(&standin.report().await, &name, "reader").len(), 1);
}
