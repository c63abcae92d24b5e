//! The Helm chart: what it renders, that the API server accepts it, and that
//! the RBAC it grants is exactly enough, shown by running the operator with a
//! token of the chart's own ServiceAccount.
//!
//! These tests start operators that watch the whole cluster, so `make test`
//! runs them one at a time, after the other end-to-end tests.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests fail loudly

#[path = "e2e/support.rs"]
#[allow(dead_code)]
mod support;

use std::{path::Path, process::Command};

use assumed_role_operator::api::AssumedRole;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use serde::Deserialize;
use serde_json::Value;
use support::*;

#[path = "chart/fanout.rs"]
mod fanout;
#[path = "chart/webhook.rs"]
mod webhook;

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/assumed-role-operator");
const KUBE_VERSION: &str = "1.36.3";

fn helm(args: &[&str]) -> std::process::Output {
    let helm = std::env::var("ARO_HELM").unwrap_or_else(|_| "helm".into());
    Command::new(helm).args(args).output().expect("run helm")
}

fn helm_ok(args: &[&str]) -> String {
    let out = helm(args);
    assert!(
        out.status.success(),
        "helm {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

/// Every object of a multi-document YAML stream.
fn objects(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .filter_map(|doc| Value::deserialize(doc).ok())
        .filter(|v| v.is_object())
        .collect()
}

fn kinds(objects: &[Value]) -> Vec<String> {
    let mut kinds: Vec<String> = objects
        .iter()
        .map(|o| o["kind"].as_str().unwrap_or_default().to_string())
        .collect();
    kinds.sort();
    kinds
}

fn find<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

/// The chart rendered as release `aro` in namespace `ops`, with extra flags.
fn render(extra: &[&str]) -> Vec<Value> {
    let mut args = vec![
        "template",
        "aro",
        CHART,
        "--namespace",
        "ops",
        "--kube-version",
        KUBE_VERSION,
    ];
    args.extend_from_slice(extra);
    objects(&helm_ok(&args))
}

const ALL_FEATURES: &[&str] = &[
    "--set",
    "watchNamespaces={team-a,team-b}",
    "--set",
    "metrics.serviceMonitor.enabled=true",
    "--set",
    "podDisruptionBudget.enabled=true",
    "--set",
    "networkPolicy.enabled=true",
    "--set",
    "permissivePolicy.enabled=true",
    "--set",
    "prometheusRule.enabled=true",
    "--set",
    "grafanaDashboard.enabled=true",
    "--set",
    "serviceAccount.annotations.eks\\.amazonaws\\.com/role-arn=arn:aws:iam::123456789012:role/operator",
];

/// The containers of every pod template in `value`, wherever they sit
/// (a Pod, a Deployment, a CronJob's job template, ...).
fn containers(value: &Value, out: &mut Vec<Value>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                if (key == "containers" || key == "initContainers")
                    && let Some(list) = child.as_array()
                {
                    out.extend(list.iter().cloned());
                } else {
                    containers(child, out);
                }
            }
        }
        Value::Array(list) => list.iter().for_each(|v| containers(v, out)),
        _ => {}
    }
}

/// What is wrong with the probes of `objects`: a probe the kubelet would
/// run from the node's network namespace (`httpGet`, `tcpSocket`, `grpc`)
/// against the credentials endpoint or a loopback host, which it can never
/// reach. Also counts the endpoint sidecars seen.
fn network_probes_of_loopback(objects: &[Value], origin: &str, sidecars: &mut usize) -> Vec<String> {
    let mut wrong = Vec::new();
    let mut all = Vec::new();
    for object in objects {
        containers(object, &mut all);
    }
    for container in all {
        let words = |field: &str| -> Vec<String> {
            container[field]
                .as_array()
                .map(|a| a.iter().filter_map(|w| w.as_str().map(str::to_string)).collect())
                .unwrap_or_default()
        };
        let is_endpoint = words("args")
            .iter()
            .chain(words("command").iter())
            .any(|w| w == "credentials-endpoint");
        *sidecars += usize::from(is_endpoint);
        let name = container["name"].as_str().unwrap_or_default();
        for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
            let p = &container[probe];
            if p.is_null() {
                continue;
            }
            let host = p["httpGet"]["host"].as_str().unwrap_or_default();
            let loopback = ["127.", "localhost", "::1", "[::1]"]
                .iter()
                .any(|l| host.starts_with(l));
            let network = ["httpGet", "tcpSocket", "grpc"].iter().any(|k| !p[*k].is_null());
            if network && (is_endpoint || loopback) {
                wrong.push(format!("{origin}: container {name}: {probe} {p}"));
            }
            if is_endpoint {
                let command: Vec<&str> = p["exec"]["command"]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                if !(command.contains(&"credentials-endpoint") && command.iter().any(|w| w.starts_with("--probe="))) {
                    wrong.push(format!(
                        "{origin}: container {name}: {probe} does not run credentials-endpoint --probe: {p}"
                    ));
                }
            }
        }
    }
    wrong
}

/// The YAML blocks of a Markdown file, parsed.
fn markdown_yaml(text: &str) -> Vec<Value> {
    let mut docs = Vec::new();
    let mut block: Option<String> = None;
    for line in text.lines() {
        match (&mut block, line.trim_start()) {
            (None, l) if l.starts_with("```yaml") => block = Some(String::new()),
            (Some(b), l) if l.starts_with("```") => {
                docs.extend(objects(b));
                block = None;
            }
            (Some(b), _) => {
                b.push_str(line);
                b.push('\n');
            }
            _ => {}
        }
    }
    docs
}

#[test]
fn no_manifest_in_the_repository_probes_the_loopback_endpoint_over_the_network() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut wrong = Vec::new();
    let mut sidecars = 0;
    let mut files = vec![root.join("README.md"), root.join("tests/sdk/README.md")];
    for dir in ["examples", "charts"] {
        let mut stack = vec![root.join(dir)];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).expect("read a folder").flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    files.push(path);
                }
            }
        }
    }
    for path in files {
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let origin = path.strip_prefix(root).unwrap_or(&path).display().to_string();
        let docs = match path.extension().and_then(|e| e.to_str()) {
            Some("md") => markdown_yaml(&text),
            // Chart templates are Go templates: rendered in the chart test.
            Some("yaml" | "yml") if !origin.contains("/templates/") => objects(&text),
            _ => continue,
        };
        wrong.extend(network_probes_of_loopback(&docs, &origin, &mut sidecars));
    }
    assert!(wrong.is_empty(), "probes the kubelet cannot run:\n{}", wrong.join("\n"));
    // The README and the example both show the sidecar: the check saw them.
    assert!(sidecars >= 2, "found {sidecars} credentials-endpoint containers");
}

#[test]
fn the_probe_check_refuses_network_probes_of_the_endpoint() {
    let pod = |probe: &str| {
        objects(&format!(
            "kind: Pod\nspec:\n  initContainers:\n  - name: aws\n    args: [credentials-endpoint]\n    readinessProbe: {probe}\n"
        ))
    };
    for bad in [
        "{httpGet: {host: 127.0.0.1, port: 9911, path: /readyz}}",
        "{tcpSocket: {port: 9911}}",
        "{exec: {command: [/bin/true]}}",
    ] {
        let mut n = 0;
        assert!(!network_probes_of_loopback(&pod(bad), "t", &mut n).is_empty(), "{bad}");
    }
    let good = "{exec: {command: [/usr/local/bin/assumed-role-operator, credentials-endpoint, --probe=ready]}}";
    let mut n = 0;
    assert!(network_probes_of_loopback(&pod(good), "t", &mut n).is_empty());
    let other = objects(
        "kind: Pod\nspec:\n  containers:\n  - name: app\n    livenessProbe: {httpGet: {host: localhost, port: 80}}\n",
    );
    assert_eq!(network_probes_of_loopback(&other, "t", &mut n).len(), 1);
}

#[test]
#[ignore = "needs helm from hack/cluster.sh; run with `make test`"]
fn chart_lints_and_renders_a_locked_down_deployment() {
    helm_ok(&["lint", "--strict", CHART]);
    // TokenRequest only with ServiceAccount tokens on, and the operator is
    // told which sources it may use.
    let grants_tokens = |objects: &[Value]| {
        objects
            .iter()
            .filter(|o| o["kind"] == "ClusterRole" || o["kind"] == "Role")
            .flat_map(|o| o["rules"].as_array().cloned().unwrap_or_default())
            .any(|r| {
                r["resources"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|x| x == "serviceaccounts/token"))
            })
    };
    let sources = |objects: &[Value]| {
        find(objects, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "SOURCES")
            .map(|e| e["value"].as_str().unwrap().to_string())
            .unwrap()
    };
    let default = render(&[]);
    assert!(!grants_tokens(&default), "TokenRequest granted by default");
    assert_eq!(sources(&default), "Operator,Secret,AssumedRole");
    let on = render(&[
        "--set",
        "sources.serviceAccountTokens=true",
        "--set",
        "sources.staticKeys=false",
    ]);
    assert!(grants_tokens(&on));
    assert_eq!(sources(&on), "Operator,ServiceAccount,AssumedRole");
    let mut sidecars = 0;
    for values in [&[][..], ALL_FEATURES] {
        let wrong = network_probes_of_loopback(&render(values), "the chart", &mut sidecars);
        assert!(wrong.is_empty(), "{wrong:?}");
    }
    let mut lint_all = vec!["lint", "--strict", CHART];
    lint_all.extend_from_slice(ALL_FEATURES);
    helm_ok(&lint_all);

    let rendered = render(&[]);
    assert_eq!(
        kinds(&rendered),
        [
            "ClusterRole",
            "ClusterRole",
            "ClusterRoleBinding",
            "ClusterRoleBinding",
            "Deployment",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount"
        ]
    );
    let deploy = find(&rendered, "Deployment")[0];
    let pod = &deploy["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(container["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(container["securityContext"]["capabilities"]["drop"][0], "ALL");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/livez");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert!(container["resources"]["limits"]["memory"].is_string());
    let env: Vec<&str> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    for name in [
        "POD_NAMESPACE",
        "POD_NAME",
        "LOG_LEVEL",
        "LOG_FORMAT",
        "CONCURRENCY",
        "LEADER_ELECT",
    ] {
        assert!(env.contains(&name), "the Deployment does not set {name}");
    }
    let sa = find(&rendered, "ServiceAccount")[0];
    assert_eq!(sa["automountServiceAccountToken"], false);
    // Secure by default: no policy, so no AssumedRole gets credentials
    // until a cluster admin writes one.
    assert!(find(&rendered, "AssumedRolePolicy").is_empty());

    let all = render(ALL_FEATURES);
    // A namespace-limited install keeps one ClusterRole: reading policies
    // and namespace labels, nothing else.
    let cluster_roles = find(&all, "ClusterRole");
    assert_eq!(cluster_roles.len(), 1, "{cluster_roles:?}");
    for rule in cluster_roles[0]["rules"].as_array().unwrap() {
        assert_eq!(rule["verbs"], serde_json::json!(["get", "list", "watch"]), "{rule}");
        let resource = rule["resources"][0].as_str().unwrap();
        assert!(["assumedrolepolicies", "namespaces"].contains(&resource), "{rule}");
    }
    // Alerts and dashboard: off by default, the chart's own files when on.
    for kind in ["PrometheusRule", "ConfigMap"] {
        assert!(find(&rendered, kind).is_empty(), "{kind} rendered by default");
    }
    let rules = find(&all, "PrometheusRule");
    assert_eq!(rules.len(), 1);
    let shipped: Value = serde_yaml::from_str(
        &std::fs::read_to_string(Path::new(CHART).join("files/prometheus-rules.yaml")).expect("rules file"),
    )
    .expect("rules YAML");
    assert_eq!(rules[0]["spec"]["groups"], shipped["groups"]);
    let dashboard = find(&all, "ConfigMap");
    assert_eq!(dashboard.len(), 1);
    assert_eq!(dashboard[0]["metadata"]["labels"]["grafana_dashboard"], "1");
    let json: Value = serde_json::from_str(
        dashboard[0]["data"]["assumed-role-operator.json"]
            .as_str()
            .expect("dashboard JSON"),
    )
    .expect("the dashboard is JSON");
    assert!(json["panels"].as_array().is_some_and(|p| p.len() >= 8));
    let permissive = find(&all, "AssumedRolePolicy");
    assert_eq!(permissive.len(), 1);
    assert_eq!(permissive[0]["spec"]["namespaces"]["selector"], serde_json::json!({}));
    assert_eq!(
        permissive[0]["spec"]["roleArns"],
        serde_json::json!(["arn:*:iam::*:role/*"])
    );
    let role_namespaces: Vec<&str> = find(&all, "Role")
        .iter()
        .filter_map(|r| r["metadata"]["namespace"].as_str())
        .collect();
    assert_eq!(role_namespaces, ["team-a", "team-b", "ops"]);
    for kind in ["ServiceMonitor", "PodDisruptionBudget", "NetworkPolicy"] {
        assert_eq!(find(&all, kind).len(), 1, "{kind} missing");
    }
    let sa = find(&all, "ServiceAccount")[0];
    assert_eq!(
        sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"],
        "arn:aws:iam::123456789012:role/operator"
    );
    let env = &find(&all, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["env"];
    assert!(
        env.as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "WATCH_NAMESPACES" && e["value"] == "team-a,team-b")
    );

    // A bad value is refused with a message that names it.
    let out = helm(&[
        "template",
        "aro",
        CHART,
        "--kube-version",
        KUBE_VERSION,
        "--set",
        "logFormat=xml",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("logFormat"), "{stderr}");
}

#[test]
#[ignore = "needs promtool from hack/cluster.sh; run with `make test`"]
fn the_alerting_rules_are_valid_and_pass_their_promtool_unit_tests() {
    let promtool = std::env::var("ARO_PROMTOOL").expect("ARO_PROMTOOL from hack/cluster.sh");
    let root = env!("CARGO_MANIFEST_DIR");
    let check = Command::new(&promtool)
        .args(["check", "rules"])
        .arg(Path::new(CHART).join("files/prometheus-rules.yaml"))
        .output()
        .expect("run promtool");
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stdout));
    let test = Command::new(&promtool)
        .args(["test", "rules", "tests/promtool/alerts_test.yaml"])
        .current_dir(root)
        .output()
        .expect("run promtool");
    let out = String::from_utf8_lossy(&test.stdout);
    assert!(test.status.success(), "{out}{}", String::from_utf8_lossy(&test.stderr));
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn chart_versions_and_crds_follow_the_crate() {
    let chart = std::fs::read_to_string(Path::new(CHART).join("Chart.yaml")).expect("Chart.yaml");
    let chart: Value = serde_yaml::from_str(&chart).expect("Chart.yaml is YAML");
    assert_eq!(chart["appVersion"], env!("CARGO_PKG_VERSION"));
    let top = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/crds/assumedroles.sts.refresh.dev.yaml"
    ));
    let bundled = std::fs::read_to_string(Path::new(CHART).join("crds/assumedroles.sts.refresh.dev.yaml"));
    assert_eq!(
        bundled.expect("chart CRD"),
        top.expect("top-level CRD"),
        "run `make crds`"
    );
    let top = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/crds/assumedrolepolicies.sts.refresh.dev.yaml"
    ));
    let bundled = std::fs::read_to_string(Path::new(CHART).join("crds/assumedrolepolicies.sts.refresh.dev.yaml"));
    assert_eq!(
        bundled.expect("chart CRD"),
        top.expect("top-level CRD"),
        "run `make crds`"
    );
}

/// A release of the chart, uninstalled (with its namespace) on drop.
struct Release {
    name: String,
    ns: String,
}

impl Release {
    fn install(name: &str, extra: &[&str]) -> Self {
        let ns = format!("{name}-system");
        let mut args = vec!["install", name, CHART, "--namespace", &ns, "--create-namespace"];
        args.extend_from_slice(extra);
        helm_ok(&args);
        Self { name: name.into(), ns }
    }

    fn manifest(&self) -> Vec<Value> {
        objects(&helm_ok(&["get", "manifest", &self.name, "--namespace", &self.ns]))
    }

    /// The operator, run here with a token of the chart's ServiceAccount and
    /// the environment the chart's Deployment sets.
    fn operator(&self, sa: &str, dir: &Path) -> Operator {
        self.operator_with(sa, dir, &[])
    }

    /// As [`Release::operator`], with `extra` environment set after the
    /// chart's.
    fn operator_with(&self, sa: &str, dir: &Path, extra: &[(&str, &str)]) -> Operator {
        let kubeconfig = token_kubeconfig(&self.ns, sa, dir);
        let manifest = self.manifest();
        let container = &find(&manifest, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0];
        let mut env: Vec<(String, String)> = container["env"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| Some((e["name"].as_str()?.to_string(), e["value"].as_str()?.to_string())))
            .collect();
        env.push(("POD_NAMESPACE".into(), self.ns.clone()));
        env.push(("POD_NAME".into(), format!("{}-0", self.name)));
        env.push(("KUBECONFIG".into(), kubeconfig.display().to_string()));
        env.push(("LEASE_DURATION_SECONDS".into(), "10".into()));
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Operator::start_with(&[], &[], &env)
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        let _ = helm(&["uninstall", &self.name, "--namespace", &self.ns]);
        let _ = kubectl(
            &["delete", "namespace", &self.ns, "--wait=false", "--ignore-not-found"],
            None,
        );
    }
}

/// A kubeconfig for the local API server that authenticates with a fresh
/// token of ServiceAccount `sa` (TokenRequest API), and nothing else.
fn token_kubeconfig(ns: &str, sa: &str, dir: &Path) -> std::path::PathBuf {
    let token = kubectl(&["create", "token", sa, "-n", ns, "--duration", "1h"], None);
    assert!(token.status.success(), "{}", String::from_utf8_lossy(&token.stderr));
    let token = String::from_utf8(token.stdout).expect("UTF-8").trim().to_string();
    let view = |path: &str| {
        let out = kubectl(
            &["config", "view", "--minify", "-o", &format!("jsonpath={{{path}}}")],
            None,
        );
        String::from_utf8(out.stdout).expect("UTF-8")
    };
    let (server, ca) = (
        view(".clusters[0].cluster.server"),
        view(".clusters[0].cluster.certificate-authority"),
    );
    let path = dir.join(format!("{sa}.kubeconfig"));
    let config = format!(
        "apiVersion: v1\nkind: Config\nclusters: [{{name: local, cluster: {{server: '{server}', certificate-authority: '{ca}'}}}}]\n\
         users: [{{name: {sa}, user: {{token: '{token}'}}}}]\n\
         contexts: [{{name: {sa}, context: {{cluster: local, user: {sa}}}}}]\ncurrent-context: {sa}\n"
    );
    std::fs::write(&path, config).expect("write the kubeconfig");
    path
}

#[tokio::test]
#[ignore = "needs the local control plane; run with `make test`"]
async fn the_charts_own_rbac_is_enough_for_the_main_scenario() {
    let client = client().await;
    let release = Release::install("aro-rbac", &["--set", "sources.serviceAccountTokens=true"]);
    // Every object of the release was accepted.
    for object in release.manifest() {
        let kind = object["kind"].as_str().unwrap().to_lowercase();
        let name = object["metadata"]["name"].as_str().unwrap();
        let ns = object["metadata"]["namespace"].as_str().unwrap_or(&release.ns);
        let out = kubectl(&["get", &kind, name, "-n", ns], None);
        assert!(
            out.status.success(),
            "{kind}/{name} missing: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let status = helm_ok(&["status", &release.name, "--namespace", &release.ns]);
    assert!(status.contains("STATUS: deployed"), "{status}");

    let dir = tempfile::tempdir().expect("temp dir");
    let operator = release.operator("aro-rbac-assumed-role-operator", dir.path());
    let ns = TestNamespace::create(&client, "chart-rbac").await;
    main_scenario(&client, &ns.name).await;
    every_source(&client, &ns.name).await;
    let log = operator.output();
    assert!(
        log.contains("acquired the leader lease"),
        "no leader election in:\n{log}"
    );
    // RBAC refusals read "... is forbidden: User \"system:serviceaccount:...\" cannot ...". (Other
    // 403s, such as writes into namespaces that other tests are deleting, are not RBAC's.)
    assert!(!log.contains("is forbidden: User"), "RBAC refused something:\n{log}");
}

/// An AssumedRole of each source in `ns` becomes Ready: a ServiceAccount's
/// token (TokenRequest), static keys from a Secret (reading it), and another
/// AssumedRole's credentials. Whatever RBAC each needs, the operator has.
async fn every_source(client: &kube::Client, ns: &str) {
    let out = kubectl(&["create", "serviceaccount", "app", "-n", ns], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    apply(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: keys, namespace: {ns}}}\n\
         stringData: {{AWS_ACCESS_KEY_ID: AKIASTATICKEYEXAMPLE, AWS_SECRET_ACCESS_KEY: static-secret}}\n"
    ));
    apply(&assumed_role(ns, "base", ""));
    for (name, source) in [
        ("web", "{serviceAccountName: app}"),
        ("static", "{secretRef: {name: keys}}"),
        ("chained", "{assumedRoleRef: {name: base}}"),
    ] {
        apply(&assumed_role(ns, name, &format!("  source: {source}\n")));
    }
    let roles: Api<AssumedRole> = Api::namespaced(client.clone(), ns);
    for name in ["base", "web", "static", "chained"] {
        wait_ready(&roles, name, "True", "CredentialsReady").await;
    }
}

/// Whether `who` may create ServiceAccount tokens in `ns`, asked as the API
/// server authorizes TokenRequest: the subresource `token` of
/// `serviceaccounts` (`can-i create serviceaccounts/token` answers `no`
/// whatever the rules).
fn can_mint_tokens(ns: &str, who: &str) -> String {
    let out = kubectl(
        &[
            "auth",
            "can-i",
            "create",
            "serviceaccounts",
            "--subresource=token",
            "-n",
            ns,
            "--as",
            who,
        ],
        None,
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test]
#[ignore = "needs the local control plane; run with `make test`"]
async fn a_source_that_is_off_has_no_rbac_and_its_assumed_roles_say_so() {
    let client = client().await;
    // The default: ServiceAccount tokens off.
    let release = Release::install("aro-nosa", &[]);
    let sa = "aro-nosa-assumed-role-operator";
    let who = format!("system:serviceaccount:{}:{sa}", release.ns);
    for ns in ["kube-system", "default"] {
        assert_eq!(
            can_mint_tokens(ns, &who),
            "no",
            "the chart grants TokenRequest in {ns} with ServiceAccount tokens off"
        );
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let operator = release.operator(sa, dir.path());
    let ns = TestNamespace::create(&client, "chart-nosa").await;
    let out = kubectl(&["create", "serviceaccount", "app", "-n", &ns.name], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    apply(&assumed_role(&ns.name, "web", "  source: {serviceAccountName: app}\n"));
    apply(&assumed_role(&ns.name, "base", ""));
    apply(&assumed_role(
        &ns.name,
        "chained",
        "  source: {assumedRoleRef: {name: base}}\n",
    ));
    let roles: Api<AssumedRole> = Api::namespaced(client.clone(), &ns.name);
    let web = wait_ready(&roles, "web", "False", "SourceDisabled").await;
    let (_, _, message) = ready(&web).expect("Ready");
    assert!(
        message.contains("without the ServiceAccount source") && message.contains("no STS call"),
        "{message}"
    );
    // The sources that are on work as before.
    wait_ready(&roles, "chained", "True", "CredentialsReady").await;
    let log = operator.output();
    assert!(!log.contains("is forbidden: User"), "a raw RBAC refusal:\n{log}");
    // Turned on, the same install grants TokenRequest and the AssumedRole
    // gets its credentials.
    helm_ok(&[
        "upgrade",
        &release.name,
        CHART,
        "--namespace",
        &release.ns,
        "--reuse-values",
        "--set",
        "sources.serviceAccountTokens=true",
    ]);
    assert_eq!(can_mint_tokens(&ns.name, &who), "yes");
    drop(operator);
    let _operator = release.operator(sa, dir.path());
    wait_ready(&roles, "web", "True", "CredentialsReady").await;
}

#[tokio::test]
#[ignore = "needs the local control plane; run with `make test`"]
async fn a_missing_rule_fails_with_a_clear_forbidden_error() {
    let client = client().await;
    let release = Release::install("aro-norule", &[]);
    // A copy of the ClusterRole without the rule that lets it write Secrets.
    let role = kubectl(
        &["get", "clusterrole", "aro-norule-assumed-role-operator", "-o", "json"],
        None,
    );
    let mut role: Value = serde_json::from_slice(&role.stdout).expect("ClusterRole JSON");
    let rules = role["rules"].as_array_mut().unwrap();
    let before = rules.len();
    rules.retain(|r| r["resources"][0] != "secrets");
    assert_eq!(rules.len(), before - 1);
    role["metadata"] = serde_json::json!({"name": "aro-norule-assumed-role-operator"});
    let out = kubectl(&["replace", "-f", "-"], Some(&role.to_string()));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let dir = tempfile::tempdir().expect("temp dir");
    let operator = release.operator("aro-norule-assumed-role-operator", dir.path());
    let ns = TestNamespace::create(&client, "chart-norule").await;
    apply(&assumed_role(&ns.name, "reader", ""));
    let roles: Api<AssumedRole> = Api::namespaced(client.clone(), &ns.name);
    let ar = wait_ready(&roles, "reader", "False", "Forbidden").await;
    let (_, _, message) = ready(&ar).expect("Ready");
    assert!(
        message.contains("secrets") && message.contains("forbidden"),
        "{message}"
    );
    assert!(
        operator.output().contains("Forbidden"),
        "the log does not say Forbidden"
    );
}

#[tokio::test]
#[ignore = "needs the local control plane; run with `make test`"]
async fn a_namespace_limited_install_serves_only_its_namespaces() {
    let client = client().await;
    let listed = TestNamespace::create(&client, "listed").await;
    let unlisted = TestNamespace::create(&client, "unlisted").await;
    let release = Release::install("aro-ns", &["--set", &format!("watchNamespaces={{{}}}", listed.name)]);
    // No ClusterRole for AssumedRoles and Secrets (the read-only one for
    // policies and namespaces is the only cluster-wide grant).
    assert!(
        kubectl(&["get", "clusterrole", "aro-ns-assumed-role-operator"], None)
            .status
            .code()
            != Some(0)
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let _operator = release.operator("aro-ns-assumed-role-operator", dir.path());

    apply(&assumed_role(&unlisted.name, "reader", ""));
    main_scenario(&client, &listed.name).await;
    // By now the operator has served the listed namespace through a whole
    // scenario; the unlisted AssumedRole has no status and no Secret.
    let roles: Api<AssumedRole> = Api::namespaced(client.clone(), &unlisted.name);
    assert!(roles.get("reader").await.expect("AssumedRole").status.is_none());
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &unlisted.name);
    assert!(secrets.get_opt("reader").await.expect("get").is_none());
}
