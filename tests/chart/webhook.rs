//! The injection webhook, configured by the chart and run with the chart's
//! RBAC, against the real API server: pods are created (no kubelet is needed
//! to see admission) and their admitted specs read back.
//!
//! The operator runs here as a process, so the chart's webhook configuration
//! is pointed at it by URL (`https://127.0.0.1:PORT/mutate`) instead of the
//! Service; everything else is the chart's.

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use serde_json::{Value, json};

use super::*;

/// A release with the webhook on, its configuration pointed at `port`.
fn release_pointed_at(name: &str, port: u16) -> Release {
    let release = Release::install(name, &["--set", "webhook.enabled=true"]);
    let patch = json!([{
        "op": "replace",
        "path": "/webhooks/0/clientConfig",
        "value": {"url": format!("https://127.0.0.1:{port}/mutate")},
    }]);
    let out = kubectl(
        &[
            "patch",
            "mutatingwebhookconfiguration",
            &configuration(&release),
            "--type",
            "json",
            "-p",
            &patch.to_string(),
        ],
        None,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    release
}

fn configuration(release: &Release) -> String {
    format!("{}-assumed-role-operator", release.name)
}

fn service_account(release: &Release) -> String {
    format!("{}-assumed-role-operator", release.name)
}

/// The operator of `release`, serving the webhook on `port` with a
/// certificate for 127.0.0.1, plus `extra` arguments as environment.
fn webhook_operator(release: &Release, port: u16, dir: &Path, extra: &[(&str, &str)]) -> Operator {
    let address = format!("127.0.0.1:{port}");
    let mut env = vec![
        ("WEBHOOK_ADDRESS", address.as_str()),
        ("WEBHOOK_DNS_NAMES", "127.0.0.1"),
    ];
    env.extend_from_slice(extra);
    release.operator_with(&service_account(release), dir, &env)
}

/// The CA bundle of the release's webhook configuration.
async fn published_bundle(client: &kube::Client, release: &Release) -> Vec<u8> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let mwc = api
        .get(&configuration(release))
        .await
        .expect("the webhook configuration");
    mwc.webhooks.unwrap_or_default()[0]
        .client_config
        .ca_bundle
        .clone()
        .map(|b| b.0)
        .unwrap_or_default()
}

/// The release's certificate Secret, as text by key.
async fn certificates(client: &kube::Client, release: &Release) -> Option<BTreeMap<String, String>> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &release.ns);
    let secret = api
        .get_opt(&format!("{}-webhook-tls", configuration(release)))
        .await
        .expect("read the certificate Secret")?;
    Some(data(&secret))
}

/// Waits until the configuration trusts the CA bundle of the certificate
/// Secret, and returns it.
async fn wait_published(client: &kube::Client, release: &Release) -> String {
    poll(
        Duration::from_secs(30),
        Duration::from_millis(200),
        "the CA bundle in the webhook configuration",
        || async {
            let bundle = certificates(client, release).await?.get("ca.crt")?.clone();
            (published_bundle(client, release).await == bundle.as_bytes()).then_some(bundle)
        },
    )
    .await
}

/// `kubectl create` of `pod` in `ns`: the created pod, or kubectl's error;
/// and what kubectl printed on stderr (admission warnings).
fn create_pod(ns: &str, pod: &Value, extra: &[&str]) -> (Result<Value, String>, String) {
    let mut args = vec!["create", "-n", ns, "-o", "json", "-f", "-"];
    args.extend_from_slice(extra);
    let out = kubectl(&args, Some(&pod.to_string()));
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    if out.status.success() {
        (
            Ok(serde_json::from_slice(&out.stdout).expect("the pod as JSON")),
            stderr,
        )
    } else {
        (Err(stderr.clone()), stderr)
    }
}

fn pod(name: &str, labelled: bool, annotations: Value, spec: Value) -> Value {
    let labels = if labelled {
        json!({"sts.refresh.dev/inject": "true"})
    } else {
        json!({})
    };
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels, "annotations": annotations},
        "spec": spec,
    })
}

/// A pod `name` of one container, `app`, with `annotations`, labelled for
/// the webhook or not.
fn app_pod(name: &str, labelled: bool, annotations: Value) -> Value {
    pod(
        name,
        labelled,
        annotations,
        json!({"containers": [{"name": "app", "image": "app:1"}]}),
    )
}

fn env_names(container: &Value) -> Vec<String> {
    container["env"]
        .as_array()
        .map(|e| e.iter().map(|e| e["name"].as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

fn env_value<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    container["env"].as_array()?.iter().find(|e| e["name"] == name)?["value"].as_str()
}

/// How many admissions the operator answered, by its metrics.
async fn admissions(operator: &Operator) -> u64 {
    operator
        .counter("assumed_role_operator_webhook_admissions_total", None)
        .await
}

#[tokio::test]
#[ignore = "needs the local control plane; run with `make test`"]
async fn the_webhook_wires_labelled_pods_and_refuses_what_it_cannot_serve() {
    let client = client().await;
    let port = free_port();
    let release = release_pointed_at("aro-hook", port);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut operator = webhook_operator(&release, port, dir.path(), &[]);
    operator.wait_ready().await;
    wait_published(&client, &release).await;
    let image = find(&release.manifest(), "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap()
        .to_string();

    let ns = TestNamespace::create(&client, "hook").await;
    let roles: Api<AssumedRole> = Api::namespaced(client.clone(), &ns.name);
    apply(&format!(
        "{}\n---\n{}",
        assumed_role(&ns.name, "reader", "  secret: {name: reader-aws, mountPath: /etc/aws}"),
        assumed_role(&ns.name, "paused", "  suspend: true"),
    ));
    wait_ready(&roles, "reader", "True", "CredentialsReady").await;
    wait_ready(&roles, "paused", "False", "Suspended").await;

    // The endpoint route, by default: the sidecar first among the init
    // containers, with restartPolicy Always and the operator's image; the
    // environment and mount in every container, init containers included;
    // fields injection does not touch (a startupProbe) kept.
    let endpoint = pod(
        "endpoint",
        true,
        json!({"sts.refresh.dev/assumed-role": "reader"}),
        json!({
            "initContainers": [{"name": "migrate", "image": "migrate:1"}],
            "containers": [{"name": "app", "image": "app:1", "startupProbe": {"exec": {"command": ["true"]}}}],
        }),
    );
    // A server-side dry run goes through the webhook too (no side effects).
    let (dry, _) = create_pod(&ns.name, &endpoint, &["--dry-run=server"]);
    let dry = dry.expect("a server-side dry run");
    assert_eq!(dry["spec"]["initContainers"][0]["name"], "sts-credentials-endpoint");
    let (created, warnings) = create_pod(&ns.name, &endpoint, &[]);
    let created = created.expect("the endpoint pod is admitted");
    assert!(!warnings.contains("Warning"), "{warnings}");
    let spec = &created["spec"];
    let sidecar = &spec["initContainers"][0];
    assert_eq!(sidecar["name"], "sts-credentials-endpoint");
    assert_eq!(sidecar["restartPolicy"], "Always");
    assert_eq!(sidecar["image"], image.as_str());
    assert_eq!(sidecar["securityContext"]["runAsNonRoot"], true);
    assert!(sidecar["startupProbe"]["exec"].is_object(), "{sidecar}");
    assert_eq!(spec["initContainers"][1]["name"], "migrate");
    for container in [&spec["containers"][0], &spec["initContainers"][1]] {
        assert_eq!(
            env_value(container, "AWS_CONTAINER_CREDENTIALS_FULL_URI"),
            Some("http://127.0.0.1:9911/v1/credentials"),
            "{container}"
        );
        assert_eq!(
            env_value(container, "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"),
            Some("/etc/aws/endpoint-token")
        );
        assert!(
            container["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["name"] == "sts-credentials" && m["mountPath"] == "/etc/aws"),
            "{container}"
        );
    }
    assert_eq!(
        spec["containers"][0]["startupProbe"]["exec"],
        json!({"command": ["true"]})
    );
    let volume = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "sts-credentials")
        .expect("the Secret volume");
    assert_eq!(volume["secret"]["secretName"], "reader-aws");
    assert_eq!(
        created["metadata"]["annotations"]["sts.refresh.dev/injected"],
        "endpoint"
    );

    // The config route: the config file, no sidecar; only the containers
    // the annotation names.
    let (created, _) = create_pod(
        &ns.name,
        &pod(
            "config",
            true,
            json!({"sts.refresh.dev/assumed-role": "reader", "sts.refresh.dev/route": "config", "sts.refresh.dev/containers": "app"}),
            json!({"containers": [{"name": "app", "image": "app:1"}, {"name": "proxy", "image": "proxy:1"}]}),
        ),
        &[],
    );
    let created = created.expect("the config pod is admitted");
    assert!(created["spec"].get("initContainers").is_none(), "{created}");
    assert_eq!(
        env_value(&created["spec"]["containers"][0], "AWS_CONFIG_FILE"),
        Some("/etc/aws/config")
    );
    assert!(env_names(&created["spec"]["containers"][1]).is_empty());

    // A pod that already carries what injection adds is left as it is.
    let mut again = created.clone();
    again["metadata"] = json!({"name": "again", "labels": created["metadata"]["labels"], "annotations": created["metadata"]["annotations"]});
    let (admitted, _) = create_pod(&ns.name, &again, &[]);
    let admitted = admitted.expect("the pod that carries it all is admitted");
    assert_eq!(admitted["spec"]["containers"], created["spec"]["containers"]);
    assert_eq!(admitted["spec"]["volumes"], created["spec"]["volumes"]);

    // Not Ready yet: admitted, with a warning that says so.
    let (created, warnings) = create_pod(
        &ns.name,
        &app_pod("waits", true, json!({"sts.refresh.dev/assumed-role": "paused"})),
        &[],
    );
    created.expect("a pod of an AssumedRole not Ready yet is admitted");
    assert!(
        warnings.contains("Warning: AssumedRole paused is not Ready yet (Suspended"),
        "{warnings}"
    );

    // Missing: refused, naming it and the namespace.
    let (refused, _) = create_pod(
        &ns.name,
        &app_pod("ghost", true, json!({"sts.refresh.dev/assumed-role": "ghost"})),
        &[],
    );
    let why = refused.expect_err("a pod naming a missing AssumedRole is refused");
    assert!(
        why.contains(&format!(
            "AssumedRole ghost (annotation sts.refresh.dev/assumed-role) does not exist in namespace {}",
            ns.name
        )),
        "{why}"
    );

    // Denied by the namespace's policy: refused in the policy's words.
    let other = TestNamespace::without_policy(&client, "hook-denied").await;
    apply(&assumed_role(&other.name, "reader", ""));
    let other_roles: Api<AssumedRole> = Api::namespaced(client.clone(), &other.name);
    wait_ready(&other_roles, "reader", "False", "PolicyDenied").await;
    let (refused, _) = create_pod(
        &other.name,
        &app_pod("denied", true, json!({"sts.refresh.dev/assumed-role": "reader"})),
        &[],
    );
    let why = refused.expect_err("a pod of a denied AssumedRole is refused");
    assert!(
        why.contains(&format!("AssumedRole reader may not serve namespace {}", other.name))
            && why.contains("no AssumedRolePolicy covers"),
        "{why}"
    );

    // An unlabelled pod never reaches the webhook, annotation or not.
    let before = admissions(&operator).await;
    let (created, _) = create_pod(
        &ns.name,
        &app_pod("plain", false, json!({"sts.refresh.dev/assumed-role": "reader"})),
        &[],
    );
    let created = created.expect("an unlabelled pod is created");
    assert!(env_names(&created["spec"]["containers"][0]).is_empty());
    assert_eq!(
        admissions(&operator).await,
        before,
        "the unlabelled pod was sent to the webhook"
    );
    assert!(before >= 6, "{before} admissions counted");

    let log = operator.output();
    assert!(!log.contains("is forbidden: User"), "RBAC refused something:\n{log}");

    // With the webhook down, a labelled pod is refused and an unlabelled one
    // is created.
    operator.stop();
    let (refused, _) = create_pod(
        &ns.name,
        &app_pod("down", true, json!({"sts.refresh.dev/assumed-role": "reader"})),
        &[],
    );
    let why = refused.expect_err("a labelled pod is refused while the webhook is down");
    assert!(
        why.contains("failed calling webhook \"inject.sts.refresh.dev\""),
        "{why}"
    );
    let (created, _) = create_pod(&ns.name, &app_pod("down-plain", false, json!({})), &[]);
    created.expect("an unlabelled pod is created while the webhook is down");
}

#[tokio::test]
#[ignore = "needs the local control plane; run with `make test`"]
async fn two_replicas_share_one_ca_and_rotate_it_without_refusing_a_pod() {
    let client = client().await;
    let port = free_port();
    let release = release_pointed_at("aro-rotate", port);
    let dir = tempfile::tempdir().expect("temp dir");
    // Short lives: the serving certificate renewed every few seconds, the CA
    // once within the test.
    let lives = [
        ("WEBHOOK_CA_VALIDITY_SECONDS", "40"),
        ("WEBHOOK_CERT_VALIDITY_SECONDS", "8"),
    ];
    let serving = webhook_operator(&release, port, dir.path(), &lives);
    // A second replica, on a port of its own: it keeps the same Secret and
    // the same configuration, as a second pod behind the Service would.
    let other_port = free_port().to_string();
    let other_address = format!("127.0.0.1:{other_port}");
    let mut second: Vec<(&str, &str)> = lives.to_vec();
    second.push(("POD_NAME", "aro-rotate-1"));
    let standby = release.operator_with(
        &service_account(&release),
        dir.path(),
        &[
            &second[..],
            &[
                ("WEBHOOK_ADDRESS", other_address.as_str()),
                ("WEBHOOK_DNS_NAMES", "127.0.0.1"),
            ],
        ]
        .concat(),
    );
    serving.wait_ready().await;
    let first_bundle = wait_published(&client, &release).await;

    let ns = TestNamespace::create(&client, "rotate").await;
    let roles: Api<AssumedRole> = Api::namespaced(client.clone(), &ns.name);
    apply(&assumed_role(&ns.name, "reader", ""));
    wait_ready(&roles, "reader", "True", "CredentialsReady").await;

    // For 50 s, a labelled pod every second: each one admitted and wired,
    // while the certificates and the bundle are watched change.
    let mut certs = std::collections::BTreeSet::new();
    let mut bundles = std::collections::BTreeSet::new();
    let mut cas = std::collections::BTreeSet::new();
    let started = std::time::Instant::now();
    let mut created = 0;
    while started.elapsed() < Duration::from_secs(50) && created < 60 {
        let (pod_created, _) = create_pod(
            &ns.name,
            &app_pod(
                &format!("p{created}"),
                true,
                json!({"sts.refresh.dev/assumed-role": "reader"}),
            ),
            &[],
        );
        let pod_created =
            pod_created.unwrap_or_else(|why| panic!("pod {created} refused after {:?}: {why}", started.elapsed()));
        assert_eq!(
            pod_created["spec"]["initContainers"][0]["name"],
            "sts-credentials-endpoint"
        );
        created += 1;
        let stored = certificates(&client, &release).await.expect("the certificate Secret");
        certs.insert(stored["tls.crt"].clone());
        cas.extend(
            stored
                .keys()
                .filter(|k| k.starts_with("ca-") && k.ends_with(".crt"))
                .cloned(),
        );
        bundles.insert(published_bundle(&client, &release).await);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(certs.len() >= 4, "{} serving certificates in 50 s", certs.len());
    assert!(cas.len() >= 2, "CAs seen: {cas:?}");
    assert!(bundles.len() >= 2, "{} bundles published", bundles.len());
    // Still one CA set for both replicas: the bundle published is the Secret's.
    let settled = wait_published(&client, &release).await;
    assert_ne!(settled, first_bundle, "the CA was rotated");
    for log in [serving.output(), standby.output()] {
        assert!(!log.contains("is forbidden: User"), "RBAC refused something:\n{log}");
    }
}

/// The kinds of workload that rollouts restart.
const WORKLOADS: [&str; 3] = ["Deployment", "StatefulSet", "DaemonSet"];

/// A workload of `kind` named `name` in `ns` (its pods never run: there is
/// no node), with `annotations` on it.
fn workload(kind: &str, ns: &str, name: &str, annotations: Value) -> String {
    let mut spec = json!({
        "selector": {"matchLabels": {"app": name}},
        "template": {
            "metadata": {"labels": {"app": name}},
            "spec": {"containers": [{"name": "app", "image": "app:1"}]},
        },
    });
    if kind == "StatefulSet" {
        spec["serviceName"] = json!(name);
    }
    json!({
        "apiVersion": "apps/v1",
        "kind": kind,
        "metadata": {"name": name, "namespace": ns, "annotations": annotations},
        "spec": spec,
    })
    .to_string()
}

/// The workload's generation and its pod template's credentials annotation.
async fn template_state(client: &kube::Client, ns: &str, kind: &str, name: &str) -> (i64, Option<String>) {
    let resource = kube::core::ApiResource::from_gvk(&kube::core::GroupVersionKind::gvk("apps", "v1", kind));
    let api: Api<kube::core::DynamicObject> = Api::namespaced_with(client.clone(), ns, &resource);
    let workload = api.get(name).await.unwrap_or_else(|e| panic!("the {kind} {name}: {e}"));
    let annotation =
        workload.data["spec"]["template"]["metadata"]["annotations"]["sts.refresh.dev/credentials-generation"]
            .as_str()
            .map(str::to_owned);
    (workload.metadata.generation.unwrap_or_default(), annotation)
}

/// Waits at most `limit` until the pod template of every kind's `reads-once`
/// carries the credentials generation `wanted`, and checks that each
/// changed `rolled` times since `created` (its generation when created).
async fn wait_all_rolled(client: &kube::Client, ns: &str, created: &BTreeMap<&str, i64>, wanted: &str, rolled: i64) {
    for kind in WORKLOADS {
        let generation = poll(
            Duration::from_secs(60),
            Duration::from_millis(200),
            &format!("the {kind}'s rollout to {wanted}"),
            || async {
                let (generation, annotation) = template_state(client, ns, kind, "reads-once").await;
                (annotation.as_deref() == Some(wanted)).then_some(generation)
            },
        )
        .await;
        assert_eq!(
            generation,
            created[kind] + rolled,
            "{kind}: one template change per set"
        );
    }
}

/// Changes the AssumedRole's spec (a new set of credentials at once) and
/// returns the new set's expiration.
async fn rotate(roles: &Api<AssumedRole>, ns: &str, duration: u32) -> String {
    let before = roles
        .get("reader")
        .await
        .unwrap()
        .status
        .unwrap()
        .expiration_time
        .unwrap()
        .0;
    merge_patch(
        ns,
        "assumedrole/reader",
        &format!("{{\"spec\":{{\"durationSeconds\":{duration}}}}}"),
    );
    let ar = wait_for(
        roles,
        "reader",
        Duration::from_secs(30),
        "a new set",
        move |ar: Option<&AssumedRole>| {
            ar.and_then(|a| a.status.as_ref()?.expiration_time.clone())
                .is_some_and(|t| t.0 != before)
                && ar.and_then(ready).is_some_and(|(s, _, _)| s == "True")
        },
    )
    .await;
    ar.status.unwrap().expiration_time.unwrap().0.to_string()
}

#[tokio::test]
#[ignore = "needs the local control plane; run with `make test`"]
async fn an_annotated_workload_is_rolled_out_once_per_new_set_and_others_never() {
    let client = client().await;
    let release = Release::install("aro-roll", &["--set", "rollouts.enabled=true"]);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut operator = release.operator(&service_account(&release), dir.path());
    operator.wait_ready().await;
    let ns = TestNamespace::create(&client, "roll").await;
    let roles: Api<AssumedRole> = Api::namespaced(client.clone(), &ns.name);
    // Created before their AssumedRole: their pods started without
    // credentials, and the first set rolls them out too.
    let mut created = BTreeMap::new();
    for kind in WORKLOADS {
        apply(&workload(
            kind,
            &ns.name,
            "reads-once",
            json!({"sts.refresh.dev/restart-on-refresh": "reader"}),
        ));
        apply(&workload(kind, &ns.name, "plain", json!({})));
        let (generation, none) = template_state(&client, &ns.name, kind, "reads-once").await;
        assert_eq!(none, None, "{kind}");
        created.insert(kind, generation);
    }
    apply(&assumed_role(&ns.name, "reader", ""));
    let ar = wait_ready(&roles, "reader", "True", "CredentialsReady").await;
    let first = format!("reader={}", ar.status.unwrap().expiration_time.unwrap().0);
    wait_all_rolled(&client, &ns.name, &created, &first, 1).await;

    let rollouts = |kind: &str| format!("result=\"{kind}\"");
    for (rolled, duration) in [(2, 1800), (3, 2700)] {
        let expires = rotate(&roles, &ns.name, duration).await;
        wait_all_rolled(&client, &ns.name, &created, &format!("reader={expires}"), rolled).await;
        for kind in WORKLOADS {
            assert_eq!(
                operator
                    .counter("assumed_role_operator_rollouts_total", Some(&rollouts(kind)))
                    .await,
                rolled as u64,
                "{kind}: one rollout per set"
            );
        }
    }
    for kind in WORKLOADS {
        let (_, plain) = template_state(&client, &ns.name, kind, "plain").await;
        assert_eq!(plain, None, "a {kind} that is not annotated is never rolled out");
    }
    let events: Value = serde_json::from_str(&events_json(&ns.name)).expect("the Events as JSON");
    let rolled_out: Vec<(&str, &str)> = events["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["reason"] == "CredentialsRollout")
        .filter_map(|e| Some((e["regarding"]["kind"].as_str()?, e["regarding"]["name"].as_str()?)))
        .collect();
    for kind in WORKLOADS {
        assert!(
            rolled_out.contains(&(kind, "reads-once")),
            "no rollout Event on the {kind}: {rolled_out:?}"
        );
        assert!(
            !rolled_out.contains(&(kind, "plain")),
            "a rollout Event on the plain {kind}"
        );
    }

    // A restarted operator rolls out nothing for sets already rolled out:
    // the next set is the only change.
    operator.stop();
    let restarted = release.operator(&service_account(&release), dir.path());
    restarted.wait_ready().await;
    let expires = rotate(&roles, &ns.name, 3600).await;
    wait_all_rolled(&client, &ns.name, &created, &format!("reader={expires}"), 4).await;
    assert_eq!(
        restarted.counter("assumed_role_operator_rollouts_total", None).await,
        3,
        "one per workload"
    );
    let log = restarted.output();
    assert!(!log.contains("is forbidden: User"), "RBAC refused something:\n{log}");
}

/// The rules of every Role and ClusterRole of `objects`.
fn rules(objects: &[Value]) -> Vec<Value> {
    objects
        .iter()
        .filter(|o| o["kind"] == "ClusterRole" || o["kind"] == "Role")
        .flat_map(|o| o["rules"].as_array().cloned().unwrap_or_default())
        .collect()
}

fn env_of_deployment(objects: &[Value]) -> Vec<(String, String)> {
    find(objects, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_string(),
                e["value"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[test]
#[ignore = "needs helm from hack/cluster.sh; run with `make test`"]
fn the_webhook_and_rollouts_render_only_when_on_with_their_rbac_only() {
    let off = render(&[]);
    assert!(find(&off, "MutatingWebhookConfiguration").is_empty());
    let off_rules = rules(&off);
    for rule in &off_rules {
        assert_ne!(rule["apiGroups"][0], "admissionregistration.k8s.io", "{rule}");
        assert_ne!(rule["apiGroups"][0], "apps", "{rule}");
    }

    let on = render(&["--set", "webhook.enabled=true", "--set", "networkPolicy.enabled=true"]);
    let mwc = find(&on, "MutatingWebhookConfiguration");
    assert_eq!(mwc.len(), 1);
    let hook = &mwc[0]["webhooks"][0];
    assert_eq!(hook["failurePolicy"], "Fail");
    assert_eq!(hook["sideEffects"], "None");
    assert_eq!(hook["reinvocationPolicy"], "IfNeeded");
    assert_eq!(hook["admissionReviewVersions"], json!(["v1"]));
    assert_eq!(hook["timeoutSeconds"], 5);
    assert_eq!(hook["rules"][0]["operations"], json!(["CREATE"]));
    assert_eq!(hook["rules"][0]["resources"], json!(["pods"]));
    assert_eq!(
        hook["objectSelector"],
        json!({"matchLabels": {"sts.refresh.dev/inject": "true"}})
    );
    assert!(
        hook["clientConfig"].get("caBundle").is_none(),
        "the chart leaves caBundle to the operator"
    );
    assert_eq!(
        hook["clientConfig"]["service"]["name"],
        "aro-assumed-role-operator-webhook"
    );
    // Every replica serves it: two at least, and a disruption budget.
    assert_eq!(find(&on, "Deployment")[0]["spec"]["replicas"], 2);
    assert_eq!(find(&on, "PodDisruptionBudget").len(), 1);
    let ingress = &find(&on, "NetworkPolicy")[0]["spec"]["ingress"];
    assert!(
        ingress
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["ports"][0]["port"] == "https-webhook"),
        "{ingress}"
    );
    let env = env_of_deployment(&on);
    assert!(
        env.contains(&("WEBHOOK_ADDRESS".into(), "0.0.0.0:9443".into())),
        "{env:?}"
    );
    assert!(
        env.iter()
            .any(|(k, v)| k == "WEBHOOK_DNS_NAMES" && v.contains("aro-assumed-role-operator-webhook.ops.svc"))
    );
    // Its RBAC: the certificate Secret (get, update) and the configuration's
    // caBundle (get, patch), each by name, and nothing else besides.
    let added: Vec<Value> = rules(&on).into_iter().filter(|r| !off_rules.contains(r)).collect();
    assert_eq!(
        added,
        vec![
            json!({"apiGroups": ["admissionregistration.k8s.io"], "resources": ["mutatingwebhookconfigurations"], "resourceNames": ["aro-assumed-role-operator"], "verbs": ["get", "patch"]}),
            json!({"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["aro-assumed-role-operator-webhook-tls"], "verbs": ["get", "update"]}),
        ]
    );

    // With cert-manager: its certificate, mounted; its CA injected; no RBAC
    // for the operator's own.
    let cm = render(&[
        "--set",
        "webhook.enabled=true",
        "--set",
        "webhook.certManager.enabled=true",
    ]);
    assert_eq!(
        find(&cm, "MutatingWebhookConfiguration")[0]["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        "ops/aro-assumed-role-operator-webhook"
    );
    assert_eq!(find(&cm, "Certificate").len(), 2, "a CA and the serving certificate");
    assert!(env_of_deployment(&cm).contains(&("WEBHOOK_CERT_DIR".into(), "/var/run/webhook-tls".into())));
    let cm_added: Vec<Value> = rules(&cm).into_iter().filter(|r| !off_rules.contains(r)).collect();
    assert!(cm_added.is_empty(), "{cm_added:?}");

    // Limited to some namespaces: only their pods reach the webhook.
    let limited = render(&[
        "--set",
        "webhook.enabled=true",
        "--set",
        "watchNamespaces={team-a,team-b}",
    ]);
    assert_eq!(
        find(&limited, "MutatingWebhookConfiguration")[0]["webhooks"][0]["namespaceSelector"]["matchExpressions"][0]["values"],
        json!(["team-a", "team-b"])
    );

    let rolling = render(&["--set", "rollouts.enabled=true"]);
    let added: Vec<Value> = rules(&rolling).into_iter().filter(|r| !off_rules.contains(r)).collect();
    assert_eq!(
        added,
        vec![
            json!({"apiGroups": ["apps"], "resources": ["deployments", "statefulsets", "daemonsets"], "verbs": ["get", "list", "watch", "patch"]})
        ]
    );
    assert!(env_of_deployment(&rolling).contains(&("ROLLOUTS".into(), "true".into())));
}

/// Writes `contents`' serving certificate and key where an issuer such as
/// cert-manager mounts them: each file replaced whole, as the kubelet does.
fn write_certificate(dir: &Path, contents: &assumed_role_operator::webhook::tls::Contents) {
    for (key, file) in [("tls.crt", "tls.crt"), ("tls.key", "tls.key")] {
        let next = dir.join(format!(".{file}.next"));
        std::fs::write(&next, &contents.data[key]).expect("write the certificate");
        std::fs::rename(&next, dir.join(file)).expect("swap the certificate in");
    }
}

#[tokio::test]
#[ignore = "needs the local control plane; run with `make test`"]
async fn with_another_issuer_the_webhook_serves_its_files_and_follows_their_rotation() {
    use assumed_role_operator::webhook::tls;
    let client = client().await;
    let port = free_port();
    // What cert-manager would write: a CA, and serving certificates it
    // renews under that CA.
    let names = vec!["127.0.0.1".to_string()];
    let validity = tls::Validity::default();
    let now = jiff::Timestamp::now();
    let first = tls::settle(&tls::Contents::default(), &names, &validity, now)
        .unwrap()
        .unwrap();
    let certs = tempfile::tempdir().expect("certificate dir");
    write_certificate(certs.path(), &first);
    let name = format!("aro-files-{port}");
    let mwc = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [{
            "name": "inject.sts.refresh.dev",
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": "Fail",
            "clientConfig": {
                "url": format!("https://127.0.0.1:{port}/mutate"),
                "caBundle": k8s_openapi::ByteString(first.data["ca.crt"].clone().into_bytes()),
            },
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
            "objectSelector": {"matchLabels": {"sts.refresh.dev/inject": "true", "files-test": name}},
        }],
    });
    apply(&mwc.to_string());
    struct Configuration(String);
    impl Drop for Configuration {
        fn drop(&mut self) {
            let _ = kubectl(
                &["delete", "mutatingwebhookconfiguration", &self.0, "--ignore-not-found"],
                None,
            );
        }
    }
    let _configuration = Configuration(name.clone());

    let ns = TestNamespace::create(&client, "files").await;
    let address = format!("127.0.0.1:{port}");
    let cert_dir = certs.path().display().to_string();
    let operator = Operator::start(
        &ns.name,
        &["--webhook-address", &address, "--webhook-cert-dir", &cert_dir],
        &[],
    );
    operator.wait_ready().await;
    apply(&assumed_role(&ns.name, "reader", ""));
    let roles: Api<AssumedRole> = Api::namespaced(client.clone(), &ns.name);
    wait_ready(&roles, "reader", "True", "CredentialsReady").await;
    let labelled = |n: usize| {
        let mut p = app_pod(
            &format!("p{n}"),
            true,
            json!({"sts.refresh.dev/assumed-role": "reader"}),
        );
        p["metadata"]["labels"]["files-test"] = json!(name);
        p
    };
    let served = |p: Result<Value, String>| {
        let p = p.expect("admitted");
        assert_eq!(p["spec"]["initContainers"][0]["name"], "sts-credentials-endpoint");
    };
    served(create_pod(&ns.name, &labelled(0), &[]).0);

    // The issuer renews the serving certificate: the operator serves the new
    // one (the log says so) and pods keep being admitted.
    let renewed = tls::apply(
        &first,
        &tls::Change::Issue(first.record.as_ref().unwrap().cas[0].id.clone()),
        &names,
        &validity,
        now,
    )
    .unwrap();
    assert_ne!(renewed.data["tls.crt"], first.data["tls.crt"]);
    write_certificate(certs.path(), &renewed);
    poll(
        Duration::from_secs(30),
        Duration::from_millis(200),
        "the renewed certificate served",
        || async { (operator.output().matches("serving a new webhook certificate").count() >= 2).then_some(()) },
    )
    .await;
    served(create_pod(&ns.name, &labelled(1), &[]).0);
    let log = operator.output();
    assert!(
        !log.contains("caBundle"),
        "the operator left the caBundle to the issuer:\n{log}"
    );
}
