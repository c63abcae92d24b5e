//! Prometheus metrics. Labels are fixed, low-cardinality words (a result or
//! an error category), except for the gauges per AssumedRole, labelled by
//! namespace and name; never anything from a Secret.

use std::sync::{Arc, Mutex};

use kube::runtime::reflector::Store;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, text::encode},
    metrics::{
        MetricType,
        counter::Counter,
        family::Family,
        gauge::{ConstGauge, Gauge},
        histogram::Histogram,
    },
    registry::Registry,
};

use crate::api::{AssumedRole, AssumedRoleStatus};

/// Labels of a result: `success` or an error category such as `AccessDenied`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// The outcome.
    pub result: &'static str,
}

/// Labels of a Secret write.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    /// Why the Secret was written: `refresh`, `restore` or `layout`.
    pub kind: &'static str,
}

/// Labels of one AssumedRole: the only metrics labelled by object, as
/// cert-manager labels its certificate gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ObjectLabels {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

/// Gauges per AssumedRole, computed at scrape time from the watch caches,
/// so that they cost nothing between scrapes and vanish with the object.
#[derive(Clone, Default)]
pub struct AssumedRoleGauges {
    stores: Arc<Mutex<Vec<Store<AssumedRole>>>>,
}

impl std::fmt::Debug for AssumedRoleGauges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AssumedRoleGauges")
    }
}

impl AssumedRoleGauges {
    /// Reports the AssumedRoles of `store` too.
    pub fn watch(&self, store: Store<AssumedRole>) {
        if let Ok(mut stores) = self.stores.lock() {
            stores.push(store);
        }
    }
}

/// Each gauge per AssumedRole: its name, help, and value (if any).
type ObjectGauge = (&'static str, &'static str, fn(&AssumedRoleStatus) -> Option<i64>);

const OBJECT_GAUGES: [ObjectGauge; 4] = [
    (
        "assumed_role_expiration_timestamp_seconds",
        "When the credentials in the Secret expire (Unix seconds)",
        |s| s.expiration_time.as_ref().map(|t| t.0.as_second()),
    ),
    (
        "assumed_role_refresh_timestamp_seconds",
        "When the operator will next refresh the credentials (Unix seconds)",
        |s| s.refresh_time.as_ref().map(|t| t.0.as_second()),
    ),
    (
        "assumed_role_ready",
        "Whether the Ready condition is True (1) or not (0)",
        |s| {
            Some(i64::from(
                s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"),
            ))
        },
    ),
    (
        "assumed_role_consecutive_failures",
        "Failed attempts since the last success",
        |s| Some(i64::from(s.consecutive_failures)),
    ),
];

impl Collector for AssumedRoleGauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let roles: Vec<Arc<AssumedRole>> = match self.stores.lock() {
            Ok(stores) => stores.iter().flat_map(Store::state).collect(),
            Err(_) => return Ok(()),
        };
        let empty = AssumedRoleStatus::default();
        for (name, help, value) in OBJECT_GAUGES {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for ar in &roles {
                let Some(v) = value(ar.status.as_ref().unwrap_or(&empty)) else {
                    continue;
                };
                let labels = ObjectLabels {
                    namespace: ar.metadata.namespace.clone().unwrap_or_default(),
                    name: ar.metadata.name.clone().unwrap_or_default(),
                };
                ConstGauge::new(v).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// The operator's metrics.
pub struct Metrics {
    registry: Registry,
    /// STS AssumeRole calls, by result.
    pub sts_calls: Family<ResultLabels, Counter>,
    /// Reconciles, by result.
    pub reconciles: Family<ResultLabels, Counter>,
    /// Secret writes, by kind.
    pub secret_writes: Family<WriteLabels, Counter>,
    /// Reconcile duration in seconds.
    pub reconcile_duration: Histogram,
    /// STS call duration in seconds, by result.
    pub sts_duration: Family<ResultLabels, Histogram>,
    /// How long calls waited for the STS budget, in seconds.
    pub sts_budget_wait: Histogram,
    /// Routine refreshes put off by the STS budget.
    pub sts_budget_deferrals: Counter,
    /// The STS budget's rate in effect, calls per second (lower than the
    /// configured one while STS throttles).
    pub sts_budget_rate: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Seconds added to the system clock to read the API server's (the
    /// `Date` of its responses); 0 while they agree within 2 s.
    pub clock_offset: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Gauges per AssumedRole, read from the caches at scrape time.
    pub assumed_roles: AssumedRoleGauges,
    /// 1 while this replica holds the leader Lease (or runs without leader
    /// election), 0 while it stands by.
    pub leader: Gauge,
    /// Pod admissions the webhook answered, by result (`injected`,
    /// `unchanged`, `denied`, `invalid`).
    pub admissions: Family<ResultLabels, Counter>,
    /// How long the webhook took to answer, in seconds.
    pub admission_duration: Histogram,
    /// Workloads rolled out for new credentials, by kind.
    pub rollouts: Family<ResultLabels, Counter>,
    /// ECR GetAuthorizationToken calls, by result.
    pub ecr_calls: Family<ResultLabels, Counter>,
    /// ECR call duration in seconds, by result.
    pub ecr_duration: Family<ResultLabels, Histogram>,
    /// The length of the last rendering: the next starts with that much
    /// room, so that the text (about 370 bytes per AssumedRole) is not
    /// copied again and again as it grows.
    rendered: std::sync::atomic::AtomicUsize,
    /// Reconciles finished, whatever their result.
    reconciled: std::sync::atomic::AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("assumed_role_operator");
        let sts_calls = Family::<ResultLabels, Counter>::default();
        // prometheus-client appends `_total` to counters itself.
        registry.register(
            "sts_assume_role_calls",
            "STS AssumeRole calls, by result",
            sts_calls.clone(),
        );
        let reconciles = Family::<ResultLabels, Counter>::default();
        registry.register("reconciles", "Reconciles, by result", reconciles.clone());
        let secret_writes = Family::<WriteLabels, Counter>::default();
        registry.register("secret_writes", "Secret writes, by kind", secret_writes.clone());
        let reconcile_duration = Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]);
        registry.register(
            "reconcile_duration_seconds",
            "Reconcile duration",
            reconcile_duration.clone(),
        );
        let sts_duration = Family::<ResultLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])
        });
        registry.register(
            "sts_call_duration_seconds",
            "STS AssumeRole call duration, by result",
            sts_duration.clone(),
        );
        let sts_budget_wait = Histogram::new([0.001, 0.01, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]);
        registry.register(
            "sts_budget_wait_seconds",
            "Time STS calls waited for the STS budget (rate limiter)",
            sts_budget_wait.clone(),
        );
        let sts_budget_deferrals = Counter::default();
        registry.register(
            "sts_budget_deferrals",
            "Routine refreshes put off by the STS budget",
            sts_budget_deferrals.clone(),
        );
        let sts_budget_rate = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "sts_budget_rate",
            "STS calls per second the budget allows now (lower while STS throttles)",
            sts_budget_rate.clone(),
        );
        let clock_offset = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "clock_offset_seconds",
            "Seconds added to this replica's clock to read the API server's (0 while they agree within 2 s)",
            clock_offset.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "Whether this replica leads: 1 while it holds the Lease or runs without leader election",
            leader.clone(),
        );
        let admissions = Family::<ResultLabels, Counter>::default();
        registry.register(
            "webhook_admissions",
            "Pod admissions the injection webhook answered, by result",
            admissions.clone(),
        );
        let admission_duration = Histogram::new([
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        ]);
        registry.register(
            "webhook_admission_duration_seconds",
            "How long the injection webhook took to answer an admission",
            admission_duration.clone(),
        );
        let ecr_calls = Family::<ResultLabels, Counter>::default();
        registry.register(
            "ecr_authorization_token_calls",
            "ECR GetAuthorizationToken calls, by result",
            ecr_calls.clone(),
        );
        let ecr_duration = Family::<ResultLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])
        });
        registry.register(
            "ecr_call_duration_seconds",
            "ECR GetAuthorizationToken call duration, by result",
            ecr_duration.clone(),
        );
        let rollouts = Family::<ResultLabels, Counter>::default();
        registry.register(
            "rollouts",
            "Workloads rolled out for new credentials, by kind (result)",
            rollouts.clone(),
        );
        let assumed_roles = AssumedRoleGauges::default();
        registry.register_collector(Box::new(assumed_roles.clone()));
        Self {
            registry,
            leader,
            admissions,
            admission_duration,
            rollouts,
            ecr_calls,
            ecr_duration,
            clock_offset,
            assumed_roles,
            sts_budget_rate,
            sts_calls,
            reconciles,
            secret_writes,
            reconcile_duration,
            sts_duration,
            sts_budget_wait,
            sts_budget_deferrals,
            rendered: std::sync::atomic::AtomicUsize::new(0),
            reconciled: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl Metrics {
    /// The metrics in the OpenMetrics text format.
    pub fn render(&self) -> String {
        use std::sync::atomic::Ordering;
        let last = self.rendered.load(Ordering::Relaxed);
        let mut out = String::with_capacity(last + last / 16);
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        self.rendered.store(out.len(), Ordering::Relaxed);
        out
    }

    /// Counts one STS call and how long it took.
    pub fn sts_call(&self, result: &'static str, took: std::time::Duration) {
        self.sts_calls.get_or_create(&ResultLabels { result }).inc();
        self.sts_duration
            .get_or_create(&ResultLabels { result })
            .observe(took.as_secs_f64());
    }

    /// Counts one admission the webhook answered, and how long it took.
    pub fn admission(&self, result: &'static str, took: std::time::Duration) {
        self.admissions.get_or_create(&ResultLabels { result }).inc();
        self.admission_duration.observe(took.as_secs_f64());
    }

    /// Counts one ECR call and how long it took.
    pub fn ecr_call(&self, result: &'static str, took: std::time::Duration) {
        self.ecr_calls.get_or_create(&ResultLabels { result }).inc();
        self.ecr_duration
            .get_or_create(&ResultLabels { result })
            .observe(took.as_secs_f64());
    }

    /// Counts one rollout of a workload of `kind`.
    pub fn rollout(&self, kind: &'static str) {
        self.rollouts.get_or_create(&ResultLabels { result: kind }).inc();
    }

    /// Counts one reconcile, by the category of the reason it ended with.
    pub fn reconcile(&self, result: &'static str) {
        self.reconciles.get_or_create(&ResultLabels { result }).inc();
        self.reconciled.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Reconciles finished so far, whatever their result.
    pub fn reconciled(&self) -> u64 {
        self.reconciled.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Counts one Secret write.
    pub fn secret_write(&self, kind: &'static str) {
        self.secret_writes.get_or_create(&WriteLabels { kind }).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauges_per_assumed_role_are_read_from_the_cache_at_scrape_time() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
        use kube::runtime::{reflector, watcher};
        let metrics = Metrics::default();
        let (store, mut writer) = reflector::store();
        metrics.assumed_roles.watch(store);
        let expires: jiff::Timestamp = "2030-01-01T01:00:00Z".parse().unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        let ar = AssumedRole::test().with_status(AssumedRoleStatus {
            expiration_time: Some(Time(expires)),
            consecutive_failures: 2,
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: "True".into(),
                reason: "CredentialsReady".into(),
                message: String::new(),
                observed_generation: Some(1),
                last_transition_time: Time(expires),
            }],
            ..AssumedRoleStatus::default()
        });
        writer.apply_watcher_event(&watcher::Event::Apply(ar));
        let text = metrics.render();
        let labels = r#"{namespace="billing",name="reader"}"#;
        for line in [
            format!("assumed_role_operator_assumed_role_expiration_timestamp_seconds{labels} 1893459600"),
            format!("assumed_role_operator_assumed_role_ready{labels} 1"),
            format!("assumed_role_operator_assumed_role_consecutive_failures{labels} 2"),
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
        // No refresh planned: no sample, rather than a zero that reads as 1970.
        assert!(!text.contains("assumed_role_refresh_timestamp_seconds{"), "{text}");
        writer.apply_watcher_event(&watcher::Event::Delete(AssumedRole::test()));
        assert!(
            !metrics.render().contains(labels),
            "a deleted AssumedRole still reported"
        );
    }

    #[test]
    fn counters_render_with_prefix_and_result_label() {
        let metrics = Metrics::default();
        metrics.sts_call("success", std::time::Duration::from_millis(20));
        metrics.sts_call("success", std::time::Duration::from_millis(20));
        metrics.sts_call("AccessDenied", std::time::Duration::from_millis(20));
        metrics.secret_write("restore");
        let text = metrics.render();
        assert!(
            text.contains(r#"assumed_role_operator_sts_assume_role_calls_total{result="success"} 2"#),
            "{text}"
        );
        assert!(text.contains(r#"assumed_role_operator_sts_assume_role_calls_total{result="AccessDenied"} 1"#));
        assert!(text.contains(r#"assumed_role_operator_secret_writes_total{kind="restore"} 1"#));
        assert!(
            text.contains(r#"assumed_role_operator_sts_call_duration_seconds_count{result="success"} 2"#),
            "{text}"
        );
        assert!(
            text.contains("assumed_role_operator_sts_budget_wait_seconds_count 0"),
            "{text}"
        );
    }
}
