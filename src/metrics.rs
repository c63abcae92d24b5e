//! Prometheus metrics. Labels are fixed, low-cardinality words (a result or
//! an error category), never object names and never anything from a Secret.

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

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
        Self {
            registry,
            sts_budget_rate,
            sts_calls,
            reconciles,
            secret_writes,
            reconcile_duration,
            sts_duration,
            sts_budget_wait,
            sts_budget_deferrals,
        }
    }
}

impl Metrics {
    /// The metrics in the OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// Counts one STS call and how long it took.
    pub fn sts_call(&self, result: &'static str, took: std::time::Duration) {
        self.sts_calls.get_or_create(&ResultLabels { result }).inc();
        self.sts_duration
            .get_or_create(&ResultLabels { result })
            .observe(took.as_secs_f64());
    }

    /// Counts one reconcile, by the category of the reason it ended with.
    pub fn reconcile(&self, result: &'static str) {
        self.reconciles.get_or_create(&ResultLabels { result }).inc();
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
