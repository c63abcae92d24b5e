//! Who may assume which role: the cluster-scoped `AssumedRolePolicy` that a
//! cluster admin writes, and [`evaluate`], the pure decision of whether one
//! AssumedRole is allowed.
//!
//! Secure by default: an AssumedRole that no policy allows is denied. A
//! policy covers namespaces (by name and/or label selector) and allows role
//! ARNs (patterns with `*`), a longest `durationSeconds`, and the sources of
//! the identity that assumes the role. One policy must allow all of it.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{
    CustomResource, KubeSchema,
    core::{Selector, SelectorExt},
};
use serde::{Deserialize, Serialize};

use crate::api::{InvalidSpec, MAX_DURATION_SECONDS, MIN_DURATION_SECONDS, SourceKind};

/// A role ARN pattern: each part of the ARN spelled out or `*`, and `*`
/// anywhere in the role's path and name.
const ROLE_PATTERN_PATTERN: &str =
    r"^arn:(aws|aws-cn|aws-us-gov|[*]):iam::([0-9]{12}|[*]):role/[A-Za-z0-9+=,.@_/*-]{1,576}$";

/// A session-name or source-identity pattern: STS's characters and `*`.
const SESSION_PATTERN_PATTERN: &str = r"^[A-Za-z0-9+=,.@_*-]{1,64}$";

/// Allows the namespaces it covers to assume the roles it names.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "sts.refresh.dev",
    version = "v1alpha1",
    kind = "AssumedRolePolicy",
    shortname = "arp",
    category = "aws",
    cel,
    printcolumn = r#"{"name":"Namespaces","type":"string","jsonPath":".spec.namespaces.names"}"#,
    printcolumn = r#"{"name":"Selector","type":"string","jsonPath":".spec.namespaces.selector"}"#,
    printcolumn = r#"{"name":"Roles","type":"string","jsonPath":".spec.roleArns"}"#,
    printcolumn = r#"{"name":"Max Duration","type":"integer","jsonPath":".spec.maxDurationSeconds"}"#,
    printcolumn = r#"{"name":"Sources","type":"string","jsonPath":".spec.sources"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct AssumedRolePolicySpec {
    /// The namespaces this policy covers.
    pub namespaces: NamespaceSelection,

    /// Role ARNs the covered namespaces may assume. Each is an ARN whose
    /// partition and account are spelled out or `*`; `*` in the role's path
    /// and name matches any run of characters, `/` included (as IAM's
    /// `ArnLike`). Partition, account and resource are matched each on its
    /// own, so that no pattern matches across them. For example
    /// `arn:aws:iam::123456789012:role/billing-*`.
    #[x_kube(validation = kube::core::Rule::new(format!("self.all(p, p.matches('{ROLE_PATTERN_PATTERN}'))")).message("spec.roleArns: every entry must be a role ARN pattern such as arn:aws:iam::123456789012:role/billing-* (partition and account spelled out or *)"))]
    #[schemars(length(min = 1, max = 100), inner(length(max = 600)))]
    pub role_arns: Vec<String>,

    /// The longest `spec.durationSeconds` an AssumedRole may ask for, 900 to
    /// 43200. Default: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new(format!("self >= {MIN_DURATION_SECONDS} && self <= {MAX_DURATION_SECONDS}")).message("spec.maxDurationSeconds must be between 900 and 43200 seconds"))]
    pub max_duration_seconds: Option<i32>,

    /// Session names (`spec.roleSessionName`) the covered namespaces may
    /// set, as patterns where `*` matches any run of characters. Default:
    /// `<namespace>.*`, so that a session's name in CloudTrail starts with
    /// the namespace that asked for it (no namespace can pass for another).
    /// The name the operator derives when the spec sets none is
    /// `<namespace>.<name>` and always allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = kube::core::Rule::new(format!("self.all(p, p.matches('{SESSION_PATTERN_PATTERN}'))")).message("spec.roleSessionNames: every entry must be 1 to 64 characters of letters, digits, +=,.@_- and *"))]
    #[schemars(length(max = 100), inner(length(max = 64)))]
    pub role_session_names: Vec<String>,

    /// Source identities (`spec.sourceIdentity`) the covered namespaces may
    /// set, as patterns where `*` matches any run of characters. Default:
    /// none, so an AssumedRole that sets one is denied unless a policy
    /// names it: trust policies key on `sts:SourceIdentity`, and it sticks
    /// to every role chained from the session.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = kube::core::Rule::new(format!("self.all(p, p.matches('{SESSION_PATTERN_PATTERN}'))")).message("spec.sourceIdentities: every entry must be 1 to 64 characters of letters, digits, +=,.@_- and *"))]
    #[schemars(length(max = 100), inner(length(max = 64)))]
    pub source_identities: Vec<String>,

    /// The sources of the assuming identity the covered namespaces may use:
    /// `Operator` (the operator's own identity), `ServiceAccount`, `Secret`,
    /// `AssumedRole`. Default: all four.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 4))]
    pub sources: Vec<SourceKind>,
}

/// Namespaces by name, by labels, or both (a namespace is covered when
/// either matches).
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("(has(self.names) && size(self.names) > 0) || has(self.selector)").message("spec.namespaces must list names or give a selector (an empty selector {} covers every namespace)"))]
pub struct NamespaceSelection {
    /// Namespaces by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000), inner(length(min = 1, max = 63)))]
    pub names: Vec<String>,

    /// Namespaces whose labels match. `{}` covers every namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

/// What one AssumedRole asks for, as a policy judges it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ask<'a> {
    /// Its namespace.
    pub namespace: &'a str,
    /// The role's ARN.
    pub role_arn: &'a str,
    /// The lifetime it asks for.
    pub duration_seconds: i32,
    /// The source of the identity that assumes the role.
    pub source: SourceKind,
    /// The session name the spec sets; `None` when the operator derives it.
    pub role_session_name: Option<&'a str>,
    /// The source identity the spec sets, if any.
    pub source_identity: Option<&'a str>,
}

/// The answer of [`evaluate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed by the named policy.
    Allowed(String),
    /// Denied; the words say why, naming the role and the namespace.
    Denied(String),
}

impl NamespaceSelection {
    /// Whether it selects the namespace `name` with `labels`: by name, or by
    /// its selector. A selector that cannot be parsed (the API server checks
    /// none of it for a custom resource) selects nothing.
    pub fn covers(&self, name: &str, labels: &BTreeMap<String, String>) -> bool {
        if self.names.iter().any(|n| n == name) {
            return true;
        }
        self.selector
            .clone()
            .and_then(|s| Selector::try_from(s).ok())
            .is_some_and(|s| s.matches(labels))
    }
}

/// Whether the role ARN pattern `pattern` matches `arn`: partition,
/// service, region, account and resource each on its own, as IAM's
/// `ArnLike` does, so that a `*` never reaches across them. An IAM path may
/// hold `:`; the resource is everything after the fifth `:`, in pattern and
/// ARN alike.
pub fn role_arn_matches(pattern: &str, arn: &str) -> bool {
    let (Some(pattern), Some(arn)) = (arn_fields(pattern), arn_fields(arn)) else {
        return false;
    };
    pattern.iter().zip(arn.iter()).all(|(p, a)| glob_matches(p, a))
}

/// The six fields of an ARN: `arn`, partition, service, region, account and
/// resource.
fn arn_fields(arn: &str) -> Option<[&str; 6]> {
    let mut fields = arn.splitn(6, ':');
    let mut out = [""; 6];
    for field in &mut out {
        *field = fields.next()?;
    }
    Some(out)
}

/// Whether `pattern` (with `*` for any run of characters) matches `text`
/// whole.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let Some(first) = parts.next() else {
        return text.is_empty();
    };
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        // No `*` at all: the whole text must be the pattern.
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

impl AssumedRolePolicySpec {
    /// The sources this policy allows.
    pub fn allowed_sources(&self) -> Vec<SourceKind> {
        if self.sources.is_empty() {
            SourceKind::ALL.to_vec()
        } else {
            self.sources.clone()
        }
    }

    /// Whether a namespace may set `session` as `spec.roleSessionName`.
    pub fn session_name_allowed(&self, namespace: &str, session: &str) -> bool {
        if self.role_session_names.is_empty() {
            session
                .strip_prefix(namespace)
                .is_some_and(|rest| rest.starts_with('.'))
        } else {
            self.role_session_names.iter().any(|p| glob_matches(p, session))
        }
    }

    /// Checks what the schema cannot (a selector the API server would not
    /// parse), naming the field.
    pub fn validate(&self) -> Result<(), InvalidSpec> {
        if let Some(selector) = &self.namespaces.selector
            && let Err(e) = Selector::try_from(selector.clone())
        {
            return Err(InvalidSpec {
                field: "spec.namespaces.selector",
                reason: e.to_string(),
            });
        }
        Ok(())
    }
}

/// Whether any of `policies` allows `ask` from a namespace with `labels`.
/// When none does, the answer names the role and the namespace and says
/// what came closest: no policy covers the namespace; none of those that do
/// names the role; or one names it but not for this duration or source.
pub fn evaluate<'p>(
    policies: impl IntoIterator<Item = &'p AssumedRolePolicy>,
    labels: &BTreeMap<String, String>,
    ask: &Ask<'_>,
) -> Verdict {
    let mut covering = Vec::new();
    let mut closest: Option<String> = None;
    for policy in policies {
        let spec = &policy.spec;
        if spec.validate().is_err() || !spec.namespaces.covers(ask.namespace, labels) {
            continue;
        }
        let name = policy.metadata.name.clone().unwrap_or_default();
        if !spec.role_arns.iter().any(|p| role_arn_matches(p, ask.role_arn)) {
            covering.push(name);
            continue;
        }
        if let Some(max) = spec.max_duration_seconds
            && ask.duration_seconds > max
        {
            closest.get_or_insert(format!(
                "AssumedRolePolicy {name} allows it for at most {max} s, and spec.durationSeconds asks for {}",
                ask.duration_seconds
            ));
            continue;
        }
        let sources = spec.allowed_sources();
        if !sources.contains(&ask.source) {
            let names: Vec<&str> = sources.iter().map(|s| s.as_str()).collect();
            closest.get_or_insert(format!(
                "AssumedRolePolicy {name} allows it only from the sources {} and spec.source uses {}",
                names.join(", "),
                ask.source.as_str()
            ));
            continue;
        }
        if let Some(session) = ask.role_session_name
            && !spec.session_name_allowed(ask.namespace, session)
        {
            closest.get_or_insert(if spec.role_session_names.is_empty() {
                format!(
                    "AssumedRolePolicy {name} allows session names starting with {}. only, and spec.roleSessionName is {session}",
                    ask.namespace
                )
            } else {
                format!(
                    "AssumedRolePolicy {name} allows the session names {} only, and spec.roleSessionName is {session}",
                    spec.role_session_names.join(", ")
                )
            });
            continue;
        }
        if let Some(identity) = ask.source_identity
            && !spec.source_identities.iter().any(|p| glob_matches(p, identity))
        {
            closest.get_or_insert(if spec.source_identities.is_empty() {
                format!("AssumedRolePolicy {name} allows no spec.sourceIdentity, and it is {identity}")
            } else {
                format!(
                    "AssumedRolePolicy {name} allows the source identities {} only, and spec.sourceIdentity is {identity}",
                    spec.source_identities.join(", ")
                )
            });
            continue;
        }
        return Verdict::Allowed(name);
    }
    let (namespace, role) = (ask.namespace, ask.role_arn);
    let why = closest.unwrap_or_else(|| {
        if covering.is_empty() {
            "no AssumedRolePolicy covers the namespace".to_string()
        } else {
            covering.sort();
            format!(
                "the AssumedRolePolicies that cover the namespace ({}) do not name the role",
                covering.join(", ")
            )
        }
    });
    Verdict::Denied(format!("namespace {namespace} may not assume {role}: {why}"))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
    use proptest::prelude::*;

    use super::*;

    const ROLE: &str = "arn:aws:iam::123456789012:role/billing-reader";

    fn policy(name: &str, spec: serde_json::Value) -> AssumedRolePolicy {
        let spec: AssumedRolePolicySpec = serde_json::from_value(spec).unwrap_or_else(|e| panic!("{e}"));
        AssumedRolePolicy::new(name, spec)
    }

    fn ask(namespace: &str, role: &str) -> Ask<'static> {
        Ask {
            namespace: namespace.to_string().leak(),
            role_arn: role.to_string().leak(),
            duration_seconds: 3600,
            source: SourceKind::Operator,
            role_session_name: None,
            source_identity: None,
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn nothing_is_allowed_without_a_policy() {
        assert_eq!(
            evaluate([], &labels(&[]), &ask("billing", ROLE)),
            Verdict::Denied(format!(
                "namespace billing may not assume {ROLE}: no AssumedRolePolicy covers the namespace"
            ))
        );
    }

    #[test]
    fn a_policy_allows_the_namespaces_it_names_the_roles_it_names() {
        let p = policy(
            "billing",
            serde_json::json!({"namespaces": {"names": ["billing"]}, "roleArns": ["arn:aws:iam::123456789012:role/billing-*"]}),
        );
        assert_eq!(
            evaluate([&p], &labels(&[]), &ask("billing", ROLE)),
            Verdict::Allowed("billing".into())
        );
        let other = "arn:aws:iam::123456789012:role/payroll-reader";
        assert_eq!(
            evaluate([&p], &labels(&[]), &ask("billing", other)),
            Verdict::Denied(format!(
                "namespace billing may not assume {other}: the AssumedRolePolicies that cover the namespace (billing) do not name the role"
            ))
        );
        assert!(matches!(
            evaluate([&p], &labels(&[]), &ask("payroll", ROLE)),
            Verdict::Denied(m) if m.ends_with("no AssumedRolePolicy covers the namespace")
        ));
    }

    #[test]
    fn a_selector_covers_namespaces_by_label_and_an_empty_one_covers_all() {
        let p = policy(
            "teams",
            serde_json::json!({
                "namespaces": {"selector": {"matchLabels": {"team": "billing"}, "matchExpressions": [{"key": "env", "operator": "In", "values": ["prod", "dev"]}]}},
                "roleArns": [ROLE]
            }),
        );
        let allowed = ask("any", ROLE);
        assert!(matches!(
            evaluate([&p], &labels(&[("team", "billing"), ("env", "dev")]), &allowed),
            Verdict::Allowed(_)
        ));
        assert!(matches!(
            evaluate([&p], &labels(&[("team", "billing"), ("env", "test")]), &allowed),
            Verdict::Denied(_)
        ));
        assert!(matches!(
            evaluate([&p], &labels(&[("env", "dev")]), &allowed),
            Verdict::Denied(_)
        ));
        let all = policy(
            "all",
            serde_json::json!({"namespaces": {"selector": {}}, "roleArns": ["arn:*:iam::*:role/*"]}),
        );
        assert!(matches!(
            evaluate(
                [&all],
                &labels(&[]),
                &ask("x", "arn:aws-cn:iam::000000000000:role/a/b/c")
            ),
            Verdict::Allowed(_)
        ));
    }

    #[test]
    fn a_broken_selector_covers_nothing_and_is_refused_naming_the_field() {
        let mut p = policy(
            "broken",
            serde_json::json!({"namespaces": {"selector": {}}, "roleArns": [ROLE]}),
        );
        p.spec.namespaces.selector = Some(LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "team".into(),
                operator: "In".into(),
                values: None,
            }]),
            match_labels: None,
        });
        assert!(matches!(
            evaluate([&p], &labels(&[]), &ask("x", ROLE)),
            Verdict::Denied(_)
        ));
        assert_eq!(p.spec.validate().map_err(|e| e.field), Err("spec.namespaces.selector"));
    }

    #[test]
    fn duration_and_source_limits_say_which_policy_came_closest() {
        let p = policy(
            "short",
            serde_json::json!({"namespaces": {"names": ["billing"]}, "roleArns": [ROLE], "maxDurationSeconds": 900, "sources": ["ServiceAccount"]}),
        );
        let long = Ask {
            duration_seconds: 3600,
            source: SourceKind::ServiceAccount,
            ..ask("billing", ROLE)
        };
        assert_eq!(
            evaluate([&p], &labels(&[]), &long),
            Verdict::Denied(format!(
                "namespace billing may not assume {ROLE}: AssumedRolePolicy short allows it for at most 900 s, and spec.durationSeconds asks for 3600"
            ))
        );
        let operator = Ask {
            duration_seconds: 900,
            ..ask("billing", ROLE)
        };
        assert_eq!(
            evaluate([&p], &labels(&[]), &operator),
            Verdict::Denied(format!(
                "namespace billing may not assume {ROLE}: AssumedRolePolicy short allows it only from the sources ServiceAccount and spec.source uses Operator"
            ))
        );
        let fits = Ask {
            duration_seconds: 900,
            source: SourceKind::ServiceAccount,
            ..ask("billing", ROLE)
        };
        assert_eq!(evaluate([&p], &labels(&[]), &fits), Verdict::Allowed("short".into()));
        // A second policy that allows all of it wins over the near miss.
        let wide = policy(
            "wide",
            serde_json::json!({"namespaces": {"names": ["billing"]}, "roleArns": ["arn:aws:iam::123456789012:role/*"]}),
        );
        assert_eq!(
            evaluate([&p, &wide], &labels(&[]), &long),
            Verdict::Allowed("wide".into())
        );
    }

    /// Runs the CRD's own CEL rules on a spec, as the API server would.
    fn cel(spec: serde_json::Value) -> Result<(), String> {
        use kube::CustomResourceExt;
        crate::fixtures::cel(&AssumedRolePolicy::crd(), "AssumedRolePolicy", spec)
    }

    #[test]
    fn the_crd_admits_role_patterns_and_refuses_anything_else_naming_the_field() {
        let with_roles =
            |roles: serde_json::Value| serde_json::json!({"namespaces": {"names": ["a"]}, "roleArns": roles});
        for good in [
            ROLE,
            "arn:aws:iam::123456789012:role/billing-*",
            "arn:*:iam::*:role/*",
            "arn:aws-us-gov:iam::*:role/team/*/reader",
        ] {
            assert_eq!(cel(with_roles(serde_json::json!([good]))), Ok(()), "{good}");
        }
        for bad in [
            "*",
            "arn:aws:iam::12:role/x",
            "arn:aws:s3:::bucket",
            "arn:aws:iam::123456789012:user/x",
        ] {
            let error = cel(with_roles(serde_json::json!([bad]))).err().unwrap_or_default();
            assert!(error.contains("spec.roleArns"), "{bad}: {error}");
        }
        let error = cel(serde_json::json!({"namespaces": {}, "roleArns": [ROLE]}))
            .err()
            .unwrap_or_default();
        assert!(
            error.contains("spec.namespaces must list names or give a selector"),
            "{error}"
        );
        assert_eq!(
            cel(serde_json::json!({"namespaces": {"selector": {}}, "roleArns": [ROLE]})),
            Ok(())
        );
        let error =
            cel(serde_json::json!({"namespaces": {"names": ["a"]}, "roleArns": [ROLE], "maxDurationSeconds": 60}))
                .err()
                .unwrap_or_default();
        assert!(error.contains("spec.maxDurationSeconds"), "{error}");
    }

    #[test]
    fn a_role_pattern_never_matches_across_the_arns_fields() {
        // An IAM path may hold ':', so the whole string of this ARN of
        // account 999999999999 ends like one of account 123456789012.
        let crafted = "arn:aws:iam::999999999999:role/x:iam::123456789012:role/y";
        assert!(glob_matches("arn:*:iam::123456789012:role/*", crafted));
        for (pattern, arn, matches) in [
            ("arn:*:iam::123456789012:role/*", crafted, false),
            ("arn:aws:iam::*:role/*", crafted, true),
            ("arn:*:iam::999999999999:role/x:*", crafted, true),
            ("arn:*:iam::123456789012:role/*", ROLE, true),
            ("arn:aws-cn:iam::123456789012:role/*", ROLE, false),
            (
                "arn:aws:iam::123456789012:role/team/*",
                "arn:aws:iam::123456789012:role/team/a/b",
                true,
            ),
            ("arn:aws:iam::123456789012:role/*", "arn:aws:iam::123456789012", false),
        ] {
            assert_eq!(role_arn_matches(pattern, arn), matches, "{pattern} ~ {arn}");
        }
        let p = policy(
            "mine",
            serde_json::json!({"namespaces": {"names": ["billing"]}, "roleArns": ["arn:*:iam::123456789012:role/*"]}),
        );
        assert!(matches!(
            evaluate([&p], &labels(&[]), &ask("billing", crafted)),
            Verdict::Denied(m) if m.contains("do not name the role")
        ));
    }

    #[test]
    fn session_names_start_with_the_namespace_and_source_identities_need_a_policy() {
        let default = policy(
            "default",
            serde_json::json!({"namespaces": {"names": ["billing"]}, "roleArns": [ROLE]}),
        );
        let asking = |session: Option<&'static str>, identity: Option<&'static str>| Ask {
            role_session_name: session,
            source_identity: identity,
            ..ask("billing", ROLE)
        };
        assert!(matches!(
            evaluate([&default], &labels(&[]), &asking(None, None)),
            Verdict::Allowed(_)
        ));
        assert!(matches!(
            evaluate([&default], &labels(&[]), &asking(Some("billing.nightly"), None)),
            Verdict::Allowed(_)
        ));
        for other in ["payroll.reader", "billingx.reader", "billing", "x.billing.reader"] {
            assert!(
                matches!(
                    evaluate([&default], &labels(&[]), &asking(Some(other), None)),
                    Verdict::Denied(m) if m.contains("session names starting with billing.") && m.contains(other)
                ),
                "{other}"
            );
        }
        assert!(matches!(
            evaluate([&default], &labels(&[]), &asking(None, Some("alice"))),
            Verdict::Denied(m) if m.contains("allows no spec.sourceIdentity")
        ));
        let named = policy(
            "named",
            serde_json::json!({"namespaces": {"names": ["billing"]}, "roleArns": [ROLE],
                "roleSessionNames": ["ci-*"], "sourceIdentities": ["billing-*"]}),
        );
        assert!(matches!(
            evaluate([&named], &labels(&[]), &asking(Some("ci-42"), Some("billing-bot"))),
            Verdict::Allowed(_)
        ));
        assert!(matches!(
            evaluate([&named], &labels(&[]), &asking(Some("billing.x"), None)),
            Verdict::Denied(m) if m.contains("allows the session names ci-* only")
        ));
        assert!(matches!(
            evaluate([&named], &labels(&[]), &asking(None, Some("payroll-bot"))),
            Verdict::Denied(m) if m.contains("allows the source identities billing-* only")
        ));
        let error =
            cel(serde_json::json!({"namespaces": {"names": ["a"]}, "roleArns": [ROLE], "roleSessionNames": ["a b"]}))
                .err()
                .unwrap_or_default();
        assert!(error.contains("spec.roleSessionNames"), "{error}");
    }

    #[test]
    fn globs_match_whole_strings() {
        for (pattern, text, matches) in [
            ("abc", "abc", true),
            ("abc", "abcd", false),
            ("a*", "a", true),
            ("a*c", "abbbc", true),
            ("a*c", "abbbcd", false),
            ("*", "", true),
            ("*b*", "abc", true),
            ("a*b*c", "ac", false),
            ("a*a", "a", false),
            ("arn:aws:iam::*:role/team-*", "arn:aws:iam::1:role/team-x/y", true),
        ] {
            assert_eq!(glob_matches(pattern, text), matches, "{pattern} ~ {text}");
        }
    }

    proptest! {
        #[test]
        fn a_pattern_without_stars_matches_only_itself(a in "[a-z/:]{0,12}", b in "[a-z/:]{0,12}") {
            prop_assert_eq!(glob_matches(&a, &b), a == b);
        }

        #[test]
        fn a_star_in_place_of_any_slice_still_matches(text in "[a-z/:-]{0,24}", i in 0usize..24, j in 0usize..24) {
            let (i, j) = (i.min(text.len()), j.min(text.len()));
            let (i, j) = (i.min(j), i.max(j));
            let pattern = format!("{}*{}", &text[..i], &text[j..]);
            prop_assert!(glob_matches(&pattern, &text));
        }
    }
}
