//! ClusterAssumedRoles, with the chart's RBAC: one AssumedRole per selected
//! namespace, kept in step with the template, judged by the policies.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use assumed_role_operator::fanout::ClusterAssumedRole;
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    ResourceExt,
    api::{ObjectMeta, PostParams},
};
use serde_json::json;

use super::*;

/// Namespaces labelled `fanout-test=<id>`, all deleted on drop.
struct Labelled {
    id: String,
}

impl Labelled {
    fn new() -> Self {
        let mut bytes = [0u8; 4];
        getrandom::fill(&mut bytes).expect("random bytes");
        Self {
            id: format!("{:08x}", u32::from_be_bytes(bytes)),
        }
    }

    /// Creates namespace `name` with the test's label, and `team=<team>`.
    async fn create(&self, client: &kube::Client, name: &str, team: &str) {
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(
                    [
                        ("fanout-test".to_string(), self.id.clone()),
                        ("team".to_string(), team.to_string()),
                    ]
                    .into(),
                ),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .expect("create a namespace");
    }
}

impl Drop for Labelled {
    fn drop(&mut self) {
        let selector = format!("fanout-test={}", self.id);
        let _ = kubectl(&["delete", "namespace", "-l", &selector, "--wait=false"], None);
        let _ = kubectl(
            &[
                "delete",
                "assumedrolepolicy",
                &format!("fanout-{}", self.id),
                "--ignore-not-found",
            ],
            None,
        );
        let _ = kubectl(
            &[
                "delete",
                "clusterassumedrole",
                &format!("fanout-{}", self.id),
                "--ignore-not-found",
            ],
            None,
        );
    }
}

/// Waits at most `limit` until `cond` holds of the ClusterAssumedRole.
async fn wait_car(
    api: &Api<ClusterAssumedRole>,
    name: &str,
    limit: Duration,
    what: &str,
    cond: impl Fn(&ClusterAssumedRole) -> bool + Send + 'static,
) -> ClusterAssumedRole {
    wait_for(api, name, limit, what, move |c: Option<&ClusterAssumedRole>| {
        c.is_some_and(&cond)
    })
    .await
}

fn counts(car: &ClusterAssumedRole) -> (i32, i32) {
    car.status.as_ref().map(|s| (s.namespaces, s.ready)).unwrap_or_default()
}

#[tokio::test]
#[ignore = "needs the local control plane; run with `make test`"]
async fn a_cluster_assumed_role_keeps_one_assumed_role_per_selected_namespace() {
    let client = client().await;
    let release = Release::install("aro-fan", &["--set", "clusterAssumedRoles.enabled=true"]);
    let dir = tempfile::tempdir().expect("temp dir");
    let operator = release.operator("aro-fan-assumed-role-operator", dir.path());
    operator.wait_ready().await;
    let set = Labelled::new();
    let id = set.id.clone();
    let name = format!("fanout-{id}");
    // The policy lets team a (and only it) assume the role.
    apply(
        &json!({
            "apiVersion": "sts.refresh.dev/v1alpha1",
            "kind": "AssumedRolePolicy",
            "metadata": {"name": name},
            "spec": {"namespaces": {"selector": {"matchLabels": {"fanout-test": id, "team": "a"}}}, "roleArns": ["arn:*:iam::*:role/*"]},
        })
        .to_string(),
    );
    set.create(&client, &format!("fan-{id}-a1"), "a").await;
    set.create(&client, &format!("fan-{id}-b1"), "b").await;
    // One namespace already has an AssumedRole of that name, of its own.
    set.create(&client, &format!("fan-{id}-a2"), "a").await;
    apply(&assumed_role_for(&format!("fan-{id}-a2"), "reader", "reader", ""));

    apply(
        &json!({
            "apiVersion": "sts.refresh.dev/v1alpha1",
            "kind": "ClusterAssumedRole",
            "metadata": {"name": name},
            "spec": {
                "namespaces": {"selector": {"matchLabels": {"fanout-test": id}}},
                "template": {
                    "metadata": {"name": "reader", "labels": {"app": "fanout"}},
                    "spec": {"roleArn": format!("arn:aws:iam::{}:role/reader", account())},
                },
            },
        })
        .to_string(),
    );
    let cars: Api<ClusterAssumedRole> = Api::all(client.clone());
    let car = wait_car(
        &cars,
        &name,
        Duration::from_secs(30),
        "a1 Ready, b1 denied, a2 in conflict",
        |c| {
            counts(c) == (3, 1)
                && c.status
                    .as_ref()
                    .is_some_and(|s| s.not_ready.len() == 2 && s.not_ready.iter().all(|p| p.reason != "Pending"))
        },
    )
    .await;
    let status = car.status.unwrap();
    let reasons: BTreeMap<String, String> = status
        .not_ready
        .iter()
        .map(|p| (p.namespace.clone(), p.reason.clone()))
        .collect();
    assert_eq!(reasons[&format!("fan-{id}-b1")], "PolicyDenied", "{status:?}");
    assert_eq!(reasons[&format!("fan-{id}-a2")], "Conflict", "{status:?}");
    // The AssumedRole that was there stays its own.
    let own: Api<AssumedRole> = Api::namespaced(client.clone(), &format!("fan-{id}-a2"));
    let kept = own.get("reader").await.expect("the namespace's own AssumedRole");
    assert!(kept.metadata.owner_references.unwrap_or_default().is_empty());
    // kubectl's columns.
    let out = kubectl(&["get", "clusterassumedrole", &name], None);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("NAMESPACES") && table.contains("READY") && table.contains("ROLE"),
        "{table}"
    );

    // A namespace created with the label gets its AssumedRole and Secret
    // within seconds.
    let started = Instant::now();
    let fresh = format!("fan-{id}-a3");
    set.create(&client, &fresh, "a").await;
    let roles: Api<AssumedRole> = Api::namespaced(client.clone(), &fresh);
    let ar = wait_ready(&roles, "reader", "True", "CredentialsReady").await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &fresh);
    secrets
        .get("reader")
        .await
        .expect("the fanned-out AssumedRole's Secret");
    eprintln!(
        "fanout: a new namespace's AssumedRole was Ready {:?} after its creation",
        started.elapsed()
    );
    assert_eq!(ar.labels().get("app").map(String::as_str), Some("fanout"));
    assert_eq!(ar.labels().get("sts.refresh.dev/cluster-assumed-role"), Some(&name));

    // A template change reaches every namespace, with one STS call each.
    wait_car(&cars, &name, Duration::from_secs(30), "a1 and a3 Ready", |c| {
        counts(c) == (4, 2)
    })
    .await;
    let calls = operator.sts_calls().await;
    merge_patch(
        "default",
        &format!("clusterassumedrole/{name}"),
        r#"{"spec":{"template":{"spec":{"durationSeconds":1800}}}}"#,
    );
    wait_car(&cars, &name, Duration::from_secs(30), "the new template Ready", |c| {
        counts(c) == (4, 2)
            && c.status
                .as_ref()
                .is_some_and(|s| s.observed_generation == c.metadata.generation)
    })
    .await;
    for ns in [format!("fan-{id}-a1"), fresh.clone()] {
        let roles: Api<AssumedRole> = Api::namespaced(client.clone(), &ns);
        let ar = wait_for(
            &roles,
            "reader",
            Duration::from_secs(30),
            "the template's duration",
            |a: Option<&AssumedRole>| a.is_some_and(|a| a.spec.duration_seconds == Some(1800)),
        )
        .await;
        assert_eq!(ar.spec.duration_seconds, Some(1800));
    }
    let after = poll(
        Duration::from_secs(30),
        Duration::from_millis(200),
        "two STS calls",
        || async {
            let now = operator.sts_calls().await;
            (now >= calls + 2).then_some(now)
        },
    )
    .await;
    assert_eq!(after - calls, 2, "one STS call per Ready namespace");

    // Relabelled out: the AssumedRole and its Secret go.
    let out = kubectl(&["label", "namespace", &fresh, "fanout-test-", "--overwrite"], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let uid = ar.metadata.uid.clone().unwrap();
    wait_deleted(
        &roles,
        "reader",
        &uid,
        Duration::from_secs(30),
        "the relabelled namespace's AssumedRole",
    )
    .await;
    poll(
        Duration::from_secs(60),
        Duration::from_millis(250),
        "its Secret to go",
        || async { secrets.get_opt("reader").await.ok().flatten().is_none().then_some(()) },
    )
    .await;
    // Put it back in the set, so that the namespace is deleted with the others.
    let out = kubectl(&["label", "namespace", &fresh, &format!("fanout-test={id}")], None);
    assert!(out.status.success());

    // At scale: 100 namespaces of team a.
    let started = Instant::now();
    for i in 0..100 {
        set.create(&client, &format!("fan-{id}-n{i:03}"), "a").await;
    }
    let created = started.elapsed();
    wait_car(
        &cars,
        &name,
        Duration::from_secs(120),
        "104 namespaces, 102 Ready",
        |c| counts(c) == (104, 102),
    )
    .await;
    eprintln!(
        "fanout: 100 namespaces created in {created:?}; all their AssumedRoles Ready {:?} after the first was created",
        started.elapsed()
    );

    // The ClusterAssumedRole deleted: its AssumedRoles go with it; the
    // namespace's own stays.
    let out = kubectl(&["delete", "clusterassumedrole", &name], None);
    assert!(out.status.success());
    let a1: Api<AssumedRole> = Api::namespaced(client.clone(), &format!("fan-{id}-a1"));
    poll(
        Duration::from_secs(60),
        Duration::from_millis(250),
        "the fanned-out AssumedRoles to go",
        || async { a1.get_opt("reader").await.ok().flatten().is_none().then_some(()) },
    )
    .await;
    own.get("reader").await.expect("the namespace's own AssumedRole stays");
    let log = operator.output();
    assert!(!log.contains("is forbidden: User"), "RBAC refused something:\n{log}");
}

#[test]
#[ignore = "needs helm from hack/cluster.sh; run with `make test`"]
fn cluster_assumed_roles_get_their_rbac_only_when_on() {
    let rules = |objects: &[Value]| -> Vec<Value> {
        objects
            .iter()
            .filter(|o| o["kind"] == "ClusterRole" || o["kind"] == "Role")
            .flat_map(|o| o["rules"].as_array().cloned().unwrap_or_default())
            .collect()
    };
    let off = rules(&render(&[]));
    let on = rules(&render(&["--set", "clusterAssumedRoles.enabled=true"]));
    let added: Vec<Value> = on.into_iter().filter(|r| !off.contains(r)).collect();
    assert_eq!(
        added,
        vec![
            json!({"apiGroups": ["sts.refresh.dev"], "resources": ["assumedroles"], "verbs": ["create", "patch", "delete"]}),
            json!({"apiGroups": ["sts.refresh.dev"], "resources": ["clusterassumedroles"], "verbs": ["get", "list", "watch"]}),
            json!({"apiGroups": ["sts.refresh.dev"], "resources": ["clusterassumedroles/status"], "verbs": ["patch"]}),
        ]
    );
}
