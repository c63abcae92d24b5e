//! What a ClusterAssumedRole asks of the cluster now: pure. From its spec,
//! the namespaces (with their labels) and the AssumedRoles of its name in
//! them, to the AssumedRoles to write, those to delete, and its status.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use super::{ClusterAssumedRole, ClusterAssumedRoleStatus, NamespaceProblem};
use crate::api::AssumedRoleSpec;

/// How many namespaces that are not Ready the status lists by name.
pub const LISTED: usize = 20;

/// An AssumedRole of the ClusterAssumedRole's name in one namespace.
#[derive(Debug, Clone, PartialEq)]
pub struct Present {
    /// Its namespace.
    pub namespace: String,
    /// Whether this ClusterAssumedRole owns it (its controller reference).
    pub owned: bool,
    /// Its spec.
    pub spec: AssumedRoleSpec,
    /// Its labels and annotations.
    pub labels: BTreeMap<String, String>,
    /// Its annotations.
    pub annotations: BTreeMap<String, String>,
    /// Its Ready condition: status, reason, message.
    pub ready: Option<(String, String, String)>,
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    /// Namespaces whose AssumedRole is written (made, or brought in step).
    pub apply: Vec<String>,
    /// Namespaces whose AssumedRole (owned, no longer selected) is deleted.
    pub delete: Vec<String>,
    /// The status.
    pub status: ClusterAssumedRoleStatus,
}

/// The name of the AssumedRole each namespace gets.
pub fn role_name(car: &ClusterAssumedRole) -> String {
    car.spec
        .template
        .metadata
        .name
        .clone()
        .unwrap_or_else(|| car.metadata.name.clone().unwrap_or_default())
}

/// The labels each AssumedRole carries: the template's, and the one that
/// names its ClusterAssumedRole.
pub fn labels_of(car: &ClusterAssumedRole) -> BTreeMap<String, String> {
    let mut labels = car.spec.template.metadata.labels.clone();
    labels.insert(super::OWNER_LABEL.into(), car.metadata.name.clone().unwrap_or_default());
    labels
}

/// The plan for `car`, given every namespace not being deleted (with its
/// labels) and the AssumedRoles of its name that exist.
pub fn plan(
    car: &ClusterAssumedRole,
    namespaces: &[(String, BTreeMap<String, String>)],
    present: &[Present],
    now: jiff::Timestamp,
) -> Plan {
    let mut selected: Vec<&str> = namespaces
        .iter()
        .filter(|(name, labels)| car.spec.namespaces.covers(name, labels))
        .map(|(name, _)| name.as_str())
        .collect();
    selected.sort_unstable();
    let by_namespace: BTreeMap<&str, &Present> = present.iter().map(|p| (p.namespace.as_str(), p)).collect();
    let labels = labels_of(car);
    let template = &car.spec.template;
    let name = role_name(car);
    let mut plan = Plan::default();
    let mut ready = 0;
    let mut problems = Vec::new();
    for ns in &selected {
        match by_namespace.get(ns) {
            Some(p) if !p.owned => problems.push(NamespaceProblem {
                namespace: ns.to_string(),
                reason: "Conflict".into(),
                message: format!(
                    "AssumedRole {name} exists in namespace {ns} and is not this ClusterAssumedRole's: it is left as it is"
                ),
            }),
            Some(p) => {
                let in_step = p.spec == template.spec
                    && labels.iter().all(|(k, v)| p.labels.get(k) == Some(v))
                    && template.metadata.annotations.iter().all(|(k, v)| p.annotations.get(k) == Some(v));
                if !in_step {
                    plan.apply.push(ns.to_string());
                }
                match &p.ready {
                    Some((status, _, _)) if status == "True" && in_step => ready += 1,
                    Some((_, reason, message)) if in_step => problems.push(NamespaceProblem {
                        namespace: ns.to_string(),
                        reason: reason.clone(),
                        message: message.clone(),
                    }),
                    _ => problems.push(NamespaceProblem {
                        namespace: ns.to_string(),
                        reason: "Pending".into(),
                        message: "the AssumedRole is being brought in step with the template".into(),
                    }),
                }
            }
            None => {
                plan.apply.push(ns.to_string());
                problems.push(NamespaceProblem {
                    namespace: ns.to_string(),
                    reason: "Pending".into(),
                    message: "the AssumedRole is being created".into(),
                });
            }
        }
    }
    plan.delete = present
        .iter()
        .filter(|p| p.owned && selected.binary_search(&p.namespace.as_str()).is_err())
        .map(|p| p.namespace.clone())
        .collect();
    plan.delete.sort();
    let covered = selected.len() as i32;
    let all_ready = ready == selected.len();
    let (status, reason, message) = if all_ready {
        ("True", "AllReady", format!("{covered} namespaces covered, all Ready"))
    } else {
        let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
        for p in &problems {
            *reasons.entry(p.reason.as_str()).or_default() += 1;
        }
        let counts: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
        (
            "False",
            "NotAllReady",
            format!(
                "{ready} of {covered} namespaces Ready; not Ready: {}",
                counts.join(", ")
            ),
        )
    };
    let old = car.status.as_ref();
    let since = old
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == crate::status::READY))
        .filter(|c| c.status == status)
        .map(|c| c.last_transition_time.clone());
    problems.truncate(LISTED);
    plan.status = ClusterAssumedRoleStatus {
        namespaces: covered,
        ready: ready as i32,
        not_ready: problems,
        conditions: vec![Condition {
            type_: crate::status::READY.into(),
            status: status.into(),
            reason: reason.into(),
            message,
            observed_generation: car.metadata.generation,
            last_transition_time: since.unwrap_or(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now)),
        }],
        observed_generation: car.metadata.generation,
    };
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fanout::ClusterAssumedRoleSpec;

    fn car(selector: Option<&str>, names: &[&str]) -> ClusterAssumedRole {
        let spec: ClusterAssumedRoleSpec = serde_json::from_value(serde_json::json!({
            "namespaces": {
                "names": names,
                "selector": selector.map(|s| serde_json::json!({"matchLabels": {s: "true"}})),
            },
            "template": {"spec": {"roleArn": "arn:aws:iam::123456789012:role/reader"}},
        }))
        .unwrap();
        let mut car = ClusterAssumedRole::new("readers", spec);
        car.metadata.generation = Some(3);
        car
    }

    fn ns(name: &str, team: bool) -> (String, BTreeMap<String, String>) {
        let mut labels = BTreeMap::new();
        if team {
            labels.insert("team".to_string(), "true".to_string());
        }
        (name.to_string(), labels)
    }

    fn present(car: &ClusterAssumedRole, namespace: &str, owned: bool, ready: &str) -> Present {
        Present {
            namespace: namespace.into(),
            owned,
            spec: car.spec.template.spec.clone(),
            labels: labels_of(car),
            annotations: BTreeMap::new(),
            ready: Some((
                ready.into(),
                if ready == "True" {
                    "CredentialsReady"
                } else {
                    "PolicyDenied"
                }
                .into(),
                "why".into(),
            )),
        }
    }

    fn now() -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_800_000_000).unwrap()
    }

    #[test]
    fn selected_namespaces_get_one_each_and_the_others_lose_theirs() {
        let car = car(Some("team"), &["ops"]);
        let namespaces = [ns("a", true), ns("b", false), ns("ops", false), ns("c", true)];
        let present = [present(&car, "a", true, "True"), present(&car, "b", true, "True")];
        let plan = plan(&car, &namespaces, &present, now());
        assert_eq!(plan.apply, vec!["c".to_string(), "ops".to_string()]);
        assert_eq!(plan.delete, vec!["b".to_string()]);
        assert_eq!((plan.status.namespaces, plan.status.ready), (3, 1));
        assert_eq!(plan.status.conditions[0].status, "False");
        assert_eq!(
            plan.status.conditions[0].message,
            "1 of 3 namespaces Ready; not Ready: 2 Pending"
        );
        assert_eq!(plan.status.observed_generation, Some(3));
    }

    #[test]
    fn an_assumed_role_it_does_not_own_is_never_written_nor_deleted() {
        let car = car(None, &["a", "b"]);
        let present = [present(&car, "a", false, "True"), present(&car, "z", false, "True")];
        let plan = plan(&car, &[ns("a", false), ns("b", false), ns("z", false)], &present, now());
        assert_eq!(plan.apply, vec!["b".to_string()]);
        assert!(plan.delete.is_empty());
        let conflict = &plan.status.not_ready[0];
        assert_eq!(
            (conflict.namespace.as_str(), conflict.reason.as_str()),
            ("a", "Conflict")
        );
    }

    #[test]
    fn a_template_change_rewrites_each_and_a_denied_one_says_why() {
        let mut car = car(None, &["a", "b"]);
        let old = [present(&car, "a", true, "True"), present(&car, "b", true, "False")];
        let in_step = plan(&car, &[ns("a", false), ns("b", false)], &old, now());
        assert!(in_step.apply.is_empty());
        assert_eq!(in_step.status.not_ready[0].reason, "PolicyDenied");
        assert_eq!(in_step.status.ready, 1);
        car.spec.template.spec.duration_seconds = Some(1800);
        let changed = plan(&car, &[ns("a", false), ns("b", false)], &old, now());
        assert_eq!(changed.apply, vec!["a".to_string(), "b".to_string()]);
        assert_eq!(changed.status.ready, 0, "not Ready until in step");
    }

    #[test]
    fn all_ready_is_ready_and_the_list_is_capped() {
        let car = car(Some("team"), &[]);
        let namespaces: Vec<_> = (0..30).map(|i| ns(&format!("n{i:02}"), true)).collect();
        let present: Vec<_> = namespaces.iter().map(|(n, _)| present(&car, n, true, "True")).collect();
        let all = plan(&car, &namespaces, &present, now());
        assert_eq!((all.status.namespaces, all.status.ready), (30, 30));
        assert_eq!(all.status.conditions[0].reason, "AllReady");
        let none = plan(&car, &namespaces, &[], now());
        assert_eq!(none.status.not_ready.len(), LISTED);
    }
}
