//! A control plane of a test's own (`hack/cluster.sh up` in a temporary
//! folder), for the tests that stop parts of it. Stopped by PID when dropped.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

use kube::{
    Client,
    config::{KubeConfigOptions, Kubeconfig},
};

/// A control plane of the test's own, stopped by PID when dropped.
pub struct ControlPlane {
    state: PathBuf,
    /// The environment the control plane's env file exports, but PATH.
    pub env: BTreeMap<String, String>,
    _dir: tempfile::TempDir,
}

impl ControlPlane {
    /// Starts one.
    pub fn up() -> Self {
        Self::up_with(&[])
    }

    /// Starts one with a real node (one per machine).
    #[allow(dead_code)]
    pub fn with_node() -> Self {
        Self::up_with(&["--node"])
    }

    fn up_with(flags: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("state dir");
        let state = dir.path().join("cluster");
        let out = Command::new("bash")
            .arg(script())
            .args(["up", state.to_str().expect("UTF-8 path")])
            .args(flags)
            .output()
            .expect("run hack/cluster.sh up");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let env = std::fs::read_to_string(state.join("env"))
            .expect("the env file")
            .lines()
            .filter_map(|l| l.strip_prefix("export ")?.split_once('='))
            .filter(|(k, _)| *k != "PATH")
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Self { state, env, _dir: dir }
    }

    /// The folder its processes keep their state, logs and mounts in.
    #[allow(dead_code)]
    pub fn state(&self) -> &Path {
        &self.state
    }

    /// `hack/cluster.sh VERB COMPONENT` on it: `stop` or `start` a part.
    pub fn cluster(&self, verb: &str, component: &str) {
        let out = Command::new("bash")
            .arg(script())
            .args([verb, component, self.state.to_str().expect("UTF-8 path")])
            .output()
            .expect("run hack/cluster.sh");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        if verb == "start" {
            // The PID on record is the component's own, so that `down` stops
            // it. The shell forks before it execs the binary: poll, bounded.
            let pid = std::fs::read_to_string(self.state.join("pids").join(component)).expect("PID file");
            let binary = if component == "etcd" { "server" } else { component };
            let mut exe = PathBuf::new();
            for _ in 0..100 {
                exe = std::fs::read_link(format!("/proc/{}/exe", pid.trim())).unwrap_or_default();
                if exe.file_name().is_some_and(|f| f == binary) {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            panic!("PID {} runs {exe:?}, not {component}", pid.trim());
        }
    }

    /// Applies `crds/` and waits until both CRDs are established.
    pub fn install_crds(&self) {
        self.kubectl(&["apply", "-f", concat!(env!("CARGO_MANIFEST_DIR"), "/crds/")], None);
        self.kubectl(
            &[
                "wait",
                "--for",
                "condition=established",
                "--timeout=60s",
                "crd/assumedroles.sts.refresh.dev",
                "crd/assumedrolepolicies.sts.refresh.dev",
            ],
            None,
        );
    }

    /// Runs kubectl against it; panics with its words on failure.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) {
        let out = crate::support::kubectl_with(&[("KUBECONFIG", &self.env["KUBECONFIG"])], args, stdin);
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A client of it.
    pub async fn client(&self) -> Client {
        let kubeconfig = Kubeconfig::read_from(&self.env["KUBECONFIG"]).expect("kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .expect("client config");
        Client::try_from(config).expect("client")
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .args(["down", self.state.to_str().unwrap_or_default()])
            .output();
        // ARO_KEEP_LOGS=DIR keeps the components' logs for a post-mortem.
        if let Ok(keep) = std::env::var("ARO_KEEP_LOGS") {
            let _ = Command::new("cp")
                .args(["-r", self.state.join("logs").to_str().unwrap_or_default(), &keep])
                .output();
        }
    }
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("hack/cluster.sh")
}
