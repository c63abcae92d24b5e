//! What injection adds to a pod: a pure function from the pod, the
//! AssumedRole it names and the sidecar's settings to JSON-patch operations.
//!
//! The pod is read as JSON and never round-trips through typed structs, so
//! fields this crate does not know (or a newer API server adds) survive.
//! Every operation is an `add`, made only where the pod lacks what it adds,
//! item by item and container by container: running injection on its own
//! output adds nothing, and a container another webhook added after a first
//! pass still gets its environment on the next.

use serde_json::{Value, json};

/// The label that sends a pod to the webhook (its object selector).
pub const INJECT_LABEL: &str = "sts.refresh.dev/inject";
/// The annotation that names the AssumedRole, in the pod's namespace.
pub const ROLE_ANNOTATION: &str = "sts.refresh.dev/assumed-role";
/// The annotation that chooses the route: `endpoint` (the default) or `config`.
pub const ROUTE_ANNOTATION: &str = "sts.refresh.dev/route";
/// The annotation that narrows injection to the containers it lists
/// (comma-separated names, init containers included); all when absent.
pub const CONTAINERS_ANNOTATION: &str = "sts.refresh.dev/containers";
/// The annotation injection leaves, naming the route: the mark of a pod
/// that went through the webhook.
pub const INJECTED_ANNOTATION: &str = "sts.refresh.dev/injected";
/// The name of the injected sidecar (an init container).
pub const SIDECAR_NAME: &str = "sts-credentials-endpoint";
/// The name of the injected Secret volume.
pub const VOLUME_NAME: &str = "sts-credentials";
/// Where the binary is in the operator's image.
const BINARY: &str = "/usr/local/bin/assumed-role-operator";

/// How the pod's SDKs reach the credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// The credentials endpoint, served by a native sidecar on the pod's
    /// loopback: every image, every SDK.
    Endpoint,
    /// The Secret's `config` key through `AWS_CONFIG_FILE`: images with a
    /// shell and `cat`, no sidecar.
    Config,
}

impl Route {
    /// The annotation's word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Endpoint => "endpoint",
            Self::Config => "config",
        }
    }
}

/// The sidecar injection adds for the endpoint route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sidecar {
    /// The operator's own image, at its own version.
    pub image: String,
    /// Its pull policy, when the installation sets one.
    pub pull_policy: Option<String>,
    /// The loopback port it serves on.
    pub port: u16,
}

/// What injection needs to know of the AssumedRole the pod names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    /// Its name.
    pub name: String,
    /// The Secret it writes.
    pub secret_name: String,
    /// Where pods mount that Secret (`spec.secret.mountPath`).
    pub mount_path: String,
    /// Why it may not serve this namespace (its policy's words), if so.
    pub refused: Option<String>,
    /// Why it is not Ready yet, if it is not.
    pub not_ready: Option<String>,
}

/// The answer for one pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Admit it with these operations (none when it already carries all of
    /// them) and warnings for whoever created it.
    Admit {
        /// JSON-patch operations, each an `add`.
        patch: Vec<Value>,
        /// Admission warnings.
        warnings: Vec<String>,
    },
    /// Refuse it, saying which annotation or object is wrong and why.
    Deny(String),
}

/// The value of the pod's annotation `key`.
fn annotation<'a>(pod: &'a Value, key: &str) -> Option<&'a str> {
    pod.pointer("/metadata/annotations")?.get(key)?.as_str()
}

/// The AssumedRole the pod names, or why it names none.
pub fn role_name(pod: &Value) -> Result<&str, String> {
    match annotation(pod, ROLE_ANNOTATION).map(str::trim) {
        Some(name) if !name.is_empty() => Ok(name),
        _ => Err(format!(
            "the pod is labelled {INJECT_LABEL}=true but has no annotation {ROLE_ANNOTATION} naming the AssumedRole (in its namespace) whose credentials it wants"
        )),
    }
}

/// The route the pod asks for.
fn route(pod: &Value) -> Result<Route, String> {
    match annotation(pod, ROUTE_ANNOTATION).map(str::trim) {
        None | Some("endpoint") => Ok(Route::Endpoint),
        Some("config") => Ok(Route::Config),
        Some(other) => Err(format!(
            "annotation {ROUTE_ANNOTATION} is {other:?}; it must be \"endpoint\" (the credentials endpoint, any image) or \"config\" (AWS_CONFIG_FILE, images with a shell)"
        )),
    }
}

/// Escapes a JSON-pointer token (RFC 6901).
fn token(text: &str) -> String {
    text.replace('~', "~0").replace('/', "~1")
}

fn add(path: String, value: Value) -> Value {
    json!({"op": "add", "path": path, "value": value})
}

/// The name of each item of the array at `pointer` in `pod`.
fn names<'a>(pod: &'a Value, pointer: &str) -> Vec<&'a str> {
    pod.pointer(pointer)
        .and_then(Value::as_array)
        .map(|items| items.iter().map(|i| i["name"].as_str().unwrap_or_default()).collect())
        .unwrap_or_default()
}

/// The operations that add `items` to the array at `path` of `object` (at
/// `pointer` in the pod): the array itself when it is absent, else each item
/// at its end.
fn append(object: &Value, field: &str, path: &str, items: Vec<Value>, patch: &mut Vec<Value>) {
    if items.is_empty() {
        return;
    }
    if object.get(field).is_some_and(Value::is_array) {
        patch.extend(items.into_iter().map(|item| add(format!("{path}/{field}/-"), item)));
    } else {
        patch.push(add(format!("{path}/{field}"), Value::Array(items)));
    }
}

/// The environment each target container gets on `route`.
fn environment(route: Route, role: &Role, sidecar: &Sidecar) -> Vec<(&'static str, String)> {
    match route {
        Route::Endpoint => vec![
            (
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                format!("http://127.0.0.1:{}/v1/credentials", sidecar.port),
            ),
            (
                "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
                format!("{}/endpoint-token", role.mount_path),
            ),
        ],
        Route::Config => vec![("AWS_CONFIG_FILE", format!("{}/config", role.mount_path))],
    }
}

/// The native sidecar: the credentials endpoint on the pod's loopback, with
/// the probes, resources and security context of `examples/pod-endpoint.yaml`.
fn sidecar_container(role: &Role, sidecar: &Sidecar) -> Value {
    let dir = format!("--credentials-dir={}", role.mount_path);
    let listen = format!("--listen=127.0.0.1:{}", sidecar.port);
    let probe = |kind: &str| -> Value {
        let mut command = vec![
            BINARY.to_string(),
            "credentials-endpoint".into(),
            format!("--probe={kind}"),
        ];
        if kind == "ready" {
            command.push(dir.clone());
        }
        command.push(listen.clone());
        json!({"exec": {"command": command}})
    };
    let mut startup = probe("ready");
    startup["periodSeconds"] = json!(1);
    startup["timeoutSeconds"] = json!(5);
    startup["failureThreshold"] = json!(60);
    let mut readiness = probe("ready");
    readiness["periodSeconds"] = json!(10);
    readiness["timeoutSeconds"] = json!(5);
    let mut liveness = probe("live");
    liveness["periodSeconds"] = json!(30);
    liveness["timeoutSeconds"] = json!(5);
    let mut container = json!({
        "name": SIDECAR_NAME,
        "image": sidecar.image,
        "args": ["credentials-endpoint", dir, listen],
        "restartPolicy": "Always",
        "startupProbe": startup,
        "readinessProbe": readiness,
        "livenessProbe": liveness,
        "resources": {"requests": {"cpu": "5m", "memory": "16Mi"}, "limits": {"memory": "32Mi"}},
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": 65532,
            "runAsGroup": 65532,
            "readOnlyRootFilesystem": true,
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [{"name": VOLUME_NAME, "mountPath": role.mount_path, "readOnly": true}],
    });
    if let Some(policy) = &sidecar.pull_policy {
        container["imagePullPolicy"] = json!(policy);
    }
    container
}

/// What injection adds to `pod` (created in `namespace`), which names
/// `role` (`None`: no such AssumedRole).
pub fn decide(pod: &Value, namespace: &str, role: Option<&Role>, sidecar: &Sidecar) -> Decision {
    match patch(pod, namespace, role, sidecar) {
        Ok((patch, warnings)) => Decision::Admit { patch, warnings },
        Err(why) => Decision::Deny(why),
    }
}

fn patch(
    pod: &Value,
    namespace: &str,
    role: Option<&Role>,
    sidecar: &Sidecar,
) -> Result<(Vec<Value>, Vec<String>), String> {
    let name = role_name(pod)?;
    let route = route(pod)?;
    let Some(role) = role else {
        return Err(format!(
            "AssumedRole {name} (annotation {ROLE_ANNOTATION}) does not exist in namespace {namespace}: create it, or name one that exists"
        ));
    };
    if let Some(why) = &role.refused {
        return Err(format!("AssumedRole {name} may not serve namespace {namespace}: {why}"));
    }
    if route == Route::Endpoint && pod.pointer("/spec/hostNetwork") == Some(&Value::Bool(true)) {
        return Err(format!(
            "the pod uses hostNetwork, whose loopback is the node's, shared with every hostNetwork pod: the credentials endpoint cannot serve it alone; set annotation {ROUTE_ANNOTATION}: config"
        ));
    }
    let containers = names(pod, "/spec/containers");
    let init = names(pod, "/spec/initContainers");
    let wanted: Option<Vec<&str>> = annotation(pod, CONTAINERS_ANNOTATION)
        .map(|list| list.split(',').map(str::trim).filter(|n| !n.is_empty()).collect());
    if let Some(wanted) = &wanted {
        let unknown: Vec<&str> = wanted
            .iter()
            .copied()
            .filter(|n| !containers.contains(n) && !init.contains(n))
            .collect();
        if !unknown.is_empty() || wanted.is_empty() {
            return Err(format!(
                "annotation {CONTAINERS_ANNOTATION} names {}, which the pod does not have; its containers are {}",
                if unknown.is_empty() {
                    "no container".to_string()
                } else {
                    unknown.join(", ")
                },
                containers
                    .iter()
                    .chain(init.iter())
                    .copied()
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    let chosen = |n: &str| n != SIDECAR_NAME && wanted.as_ref().is_none_or(|w| w.contains(&n));
    let env = environment(route, role, sidecar);
    let mut ops = Vec::new();
    let mut warnings = Vec::new();
    for (field, list) in [("containers", &containers), ("initContainers", &init)] {
        for (index, container_name) in list.iter().enumerate() {
            if !chosen(container_name) {
                continue;
            }
            let path = format!("/spec/{field}/{index}");
            let Some(container) = pod.pointer(&path) else {
                continue;
            };
            let set = names(container, "/env");
            let mut adding = Vec::new();
            for (key, value) in &env {
                if !set.contains(key) {
                    adding.push(json!({"name": key, "value": value}));
                } else if container["env"]
                    .as_array()
                    .and_then(|e| e.iter().find(|e| e["name"] == *key))
                    .is_some_and(|e| e["value"] != json!(value))
                {
                    warnings.push(format!(
                        "container {container_name} sets {key} itself; injection left it as it is"
                    ));
                }
            }
            append(container, "env", &path, adding, &mut ops);
            let mounts = container["volumeMounts"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            match mounts
                .iter()
                .find(|m| m["mountPath"].as_str().map(|p| p.trim_end_matches('/')) == Some(&role.mount_path))
            {
                Some(m) if m["name"] != VOLUME_NAME => {
                    return Err(format!(
                        "container {container_name} already mounts volume {} at {}, where AssumedRole {name}'s Secret must be mounted (its spec.secret.mountPath)",
                        m["name"].as_str().unwrap_or_default(),
                        role.mount_path
                    ));
                }
                Some(_) => {}
                None => append(
                    container,
                    "volumeMounts",
                    &path,
                    vec![json!({"name": VOLUME_NAME, "mountPath": role.mount_path, "readOnly": true})],
                    &mut ops,
                ),
            }
        }
    }
    let spec = &pod["spec"];
    if !names(pod, "/spec/volumes").contains(&VOLUME_NAME) {
        append(
            spec,
            "volumes",
            "/spec",
            vec![json!({"name": VOLUME_NAME, "secret": {"secretName": role.secret_name}})],
            &mut ops,
        );
    }
    if annotation(pod, INJECTED_ANNOTATION).is_none() {
        ops.push(add(
            format!("/metadata/annotations/{}", token(INJECTED_ANNOTATION)),
            json!(route.as_str()),
        ));
    }
    // Last, as it moves every init container one place on: first of all,
    // so that the init containers after it (migrations, say) find the
    // endpoint serving.
    if route == Route::Endpoint && !init.contains(&SIDECAR_NAME) {
        if spec.get("initContainers").is_some_and(Value::is_array) {
            ops.push(add("/spec/initContainers/0".into(), sidecar_container(role, sidecar)));
        } else {
            ops.push(add(
                "/spec/initContainers".into(),
                json!([sidecar_container(role, sidecar)]),
            ));
        }
    }
    if let Some(why) = &role.not_ready {
        warnings.push(format!(
            "AssumedRole {name} is not Ready yet ({why}); the pod's credentials wait for its Secret {}",
            role.secret_name
        ));
    }
    Ok((ops, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sidecar() -> Sidecar {
        Sidecar {
            image: "registry.local/assumed-role-operator:0.1.0".into(),
            pull_policy: None,
            port: 9911,
        }
    }

    fn role() -> Role {
        Role {
            name: "reader".into(),
            secret_name: "reader-aws".into(),
            mount_path: "/var/run/secrets/aws".into(),
            refused: None,
            not_ready: None,
        }
    }

    fn pod(annotations: Value, spec: Value) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"generateName": "app-", "labels": {INJECT_LABEL: "true"}, "annotations": annotations},
            "spec": spec,
        })
    }

    fn simple() -> Value {
        pod(
            json!({ROLE_ANNOTATION: "reader"}),
            json!({"containers": [{"name": "app", "image": "app:1"}]}),
        )
    }

    fn admitted(pod: &Value, role: Option<&Role>) -> (Vec<Value>, Vec<String>) {
        match decide(pod, "team", role, &sidecar()) {
            Decision::Admit { patch, warnings } => (patch, warnings),
            Decision::Deny(why) => panic!("denied: {why}"),
        }
    }

    fn denied(pod: &Value, role: Option<&Role>) -> String {
        match decide(pod, "team", role, &sidecar()) {
            Decision::Deny(why) => why,
            Decision::Admit { patch, .. } => panic!("admitted with {patch:?}"),
        }
    }

    /// The pod after its patch, applied as the API server applies it.
    fn applied(pod: &Value, patch: &[Value]) -> Value {
        let patch: json_patch::Patch = serde_json::from_value(Value::Array(patch.to_vec())).expect("a JSON patch");
        let mut out = pod.clone();
        json_patch::patch(&mut out, &patch).expect("the patch applies");
        out
    }

    fn env_of(container: &Value) -> Vec<(String, String)> {
        container["env"]
            .as_array()
            .map(|e| {
                e.iter()
                    .map(|e| (e["name"].as_str().unwrap().into(), e["value"].as_str().unwrap().into()))
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn the_endpoint_route_adds_the_volume_the_environment_and_the_sidecar_first() {
        let pod = pod(
            json!({ROLE_ANNOTATION: "reader"}),
            json!({
                "initContainers": [{"name": "migrate", "image": "m:1", "env": [{"name": "A", "value": "1"}]}],
                "containers": [{"name": "app", "image": "app:1", "startupProbe": {"exec": {"command": ["true"]}}}],
            }),
        );
        let (patch, warnings) = admitted(&pod, Some(&role()));
        assert!(warnings.is_empty(), "{warnings:?}");
        assert!(patch.iter().all(|op| op["op"] == "add"), "{patch:?}");
        let out = applied(&pod, &patch);
        let init = out["spec"]["initContainers"].as_array().unwrap();
        assert_eq!(init[0]["name"], SIDECAR_NAME);
        assert_eq!(init[0]["restartPolicy"], "Always");
        assert_eq!(init[0]["image"], "registry.local/assumed-role-operator:0.1.0");
        assert_eq!(init[0]["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(init[0]["startupProbe"]["exec"]["command"][0], BINARY);
        assert_eq!(
            init[1]["name"], "migrate",
            "the app's init container runs after the endpoint"
        );
        let endpoint_env = vec![
            (
                "AWS_CONTAINER_CREDENTIALS_FULL_URI".to_string(),
                "http://127.0.0.1:9911/v1/credentials".to_string(),
            ),
            (
                "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE".to_string(),
                "/var/run/secrets/aws/endpoint-token".to_string(),
            ),
        ];
        assert_eq!(env_of(&out["spec"]["containers"][0]), endpoint_env);
        let mut migrate_env = vec![("A".to_string(), "1".to_string())];
        migrate_env.extend(endpoint_env);
        assert_eq!(env_of(&init[1]), migrate_env);
        assert_eq!(
            out["spec"]["containers"][0]["startupProbe"],
            json!({"exec": {"command": ["true"]}}),
            "fields injection does not touch survive"
        );
        assert_eq!(
            out["spec"]["containers"][0]["volumeMounts"],
            json!([{"name": VOLUME_NAME, "mountPath": "/var/run/secrets/aws", "readOnly": true}])
        );
        assert_eq!(
            out["spec"]["volumes"],
            json!([{"name": VOLUME_NAME, "secret": {"secretName": "reader-aws"}}])
        );
        assert_eq!(out["metadata"]["annotations"][INJECTED_ANNOTATION], "endpoint");
    }

    #[test]
    fn the_config_route_adds_the_config_file_and_no_sidecar() {
        let pod = pod(
            json!({ROLE_ANNOTATION: "reader", ROUTE_ANNOTATION: "config"}),
            json!({"containers": [{"name": "app", "image": "app:1"}], "volumes": [{"name": "data", "emptyDir": {}}]}),
        );
        let out = applied(&pod, &admitted(&pod, Some(&role())).0);
        assert!(out["spec"].get("initContainers").is_none());
        assert_eq!(
            env_of(&out["spec"]["containers"][0]),
            vec![("AWS_CONFIG_FILE".to_string(), "/var/run/secrets/aws/config".to_string())]
        );
        assert_eq!(out["spec"]["volumes"][0]["name"], "data");
        assert_eq!(out["spec"]["volumes"][1]["secret"]["secretName"], "reader-aws");
        assert_eq!(out["metadata"]["annotations"][INJECTED_ANNOTATION], "config");
    }

    #[test]
    fn injection_on_its_own_output_adds_nothing() {
        for route in ["endpoint", "config"] {
            let pod = pod(
                json!({ROLE_ANNOTATION: "reader", ROUTE_ANNOTATION: route}),
                json!({
                    "initContainers": [{"name": "migrate", "image": "m:1"}],
                    "containers": [{"name": "app", "image": "app:1"}, {"name": "b", "image": "b:1", "env": []}],
                }),
            );
            let once = applied(&pod, &admitted(&pod, Some(&role())).0);
            let (again, _) = admitted(&once, Some(&role()));
            assert_eq!(again, Vec::<Value>::new(), "route {route}");
        }
    }

    #[test]
    fn a_container_added_after_the_first_pass_gets_its_environment_on_the_next() {
        let pod = simple();
        let mut once = applied(&pod, &admitted(&pod, Some(&role())).0);
        // Another webhook adds a container; the API server invokes this one again.
        once["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "proxy", "image": "p:1"}));
        let (patch, _) = admitted(&once, Some(&role()));
        let out = applied(&once, &patch);
        assert_eq!(env_of(&out["spec"]["containers"][1]).len(), 2, "{patch:?}");
        assert_eq!(out["spec"]["initContainers"].as_array().unwrap().len(), 1);
        assert_eq!(out["spec"]["volumes"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn the_containers_annotation_narrows_injection_and_names_unknown_containers() {
        let narrowed = pod(
            json!({ROLE_ANNOTATION: "reader", CONTAINERS_ANNOTATION: "app"}),
            json!({"containers": [{"name": "app", "image": "a"}, {"name": "proxy", "image": "p"}]}),
        );
        let out = applied(&narrowed, &admitted(&narrowed, Some(&role())).0);
        assert_eq!(env_of(&out["spec"]["containers"][0]).len(), 2);
        assert!(out["spec"]["containers"][1].get("env").is_none());
        assert!(out["spec"]["containers"][1].get("volumeMounts").is_none());

        let unknown = pod(
            json!({ROLE_ANNOTATION: "reader", CONTAINERS_ANNOTATION: "app, worker"}),
            json!({"containers": [{"name": "app", "image": "a"}]}),
        );
        let why = denied(&unknown, Some(&role()));
        assert!(why.contains(CONTAINERS_ANNOTATION) && why.contains("worker"), "{why}");
    }

    #[test]
    fn refusals_say_which_object_or_annotation_and_why() {
        let why = denied(&simple(), None);
        assert!(
            why.contains("AssumedRole reader") && why.contains("does not exist in namespace team"),
            "{why}"
        );

        let mut refused = role();
        refused.refused = Some("no AssumedRolePolicy covers namespace team".into());
        let why = denied(&simple(), Some(&refused));
        assert!(why.contains("no AssumedRolePolicy covers namespace team"), "{why}");

        let unnamed = pod(json!({}), json!({"containers": [{"name": "app", "image": "a"}]}));
        assert!(denied(&unnamed, Some(&role())).contains(ROLE_ANNOTATION));

        let bad_route = pod(
            json!({ROLE_ANNOTATION: "reader", ROUTE_ANNOTATION: "env"}),
            json!({"containers": [{"name": "app", "image": "a"}]}),
        );
        assert!(denied(&bad_route, Some(&role())).contains(ROUTE_ANNOTATION));

        let host = pod(
            json!({ROLE_ANNOTATION: "reader"}),
            json!({"hostNetwork": true, "containers": [{"name": "app", "image": "a"}]}),
        );
        assert!(denied(&host, Some(&role())).contains("hostNetwork"));
        let host_config = pod(
            json!({ROLE_ANNOTATION: "reader", ROUTE_ANNOTATION: "config"}),
            json!({"hostNetwork": true, "containers": [{"name": "app", "image": "a"}]}),
        );
        admitted(&host_config, Some(&role()));

        let clash = pod(
            json!({ROLE_ANNOTATION: "reader"}),
            json!({"containers": [{"name": "app", "image": "a", "volumeMounts": [{"name": "other", "mountPath": "/var/run/secrets/aws/"}]}]}),
        );
        let why = denied(&clash, Some(&role()));
        assert!(why.contains("already mounts volume other"), "{why}");
    }

    #[test]
    fn a_role_not_ready_yet_is_admitted_with_a_warning() {
        let mut pending = role();
        pending.not_ready = Some("Pending: waiting for STS".into());
        let (patch, warnings) = admitted(&simple(), Some(&pending));
        assert!(!patch.is_empty());
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].contains("not Ready yet") && warnings[0].contains("reader-aws"),
            "{warnings:?}"
        );
    }

    #[test]
    fn a_value_the_pod_sets_itself_is_kept_with_a_warning() {
        let pod = pod(
            json!({ROLE_ANNOTATION: "reader"}),
            json!({"containers": [{"name": "app", "image": "a", "env": [{"name": "AWS_CONTAINER_CREDENTIALS_FULL_URI", "value": "http://127.0.0.1:1/x"}]}]}),
        );
        let (patch, warnings) = admitted(&pod, Some(&role()));
        let out = applied(&pod, &patch);
        assert_eq!(out["spec"]["containers"][0]["env"][0]["value"], "http://127.0.0.1:1/x");
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("sets AWS_CONTAINER_CREDENTIALS_FULL_URI itself"))
        );
    }
}
