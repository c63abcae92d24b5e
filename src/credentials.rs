//! The credentials the operator handles and the request that obtains them:
//! the vocabulary that the pure modules ([`crate::secret`], [`crate::plan`])
//! and the STS client ([`crate::sts`]) share, without the client itself.

use std::fmt;

use jiff::Timestamp;

use crate::api::{AssumedRole, InvalidSpec};

/// Session tag naming the AssumedRole's namespace, added when the operator
/// runs with `--session-tags`.
pub const NAMESPACE_TAG: &str = "kubernetes-namespace";
/// Session tag naming the AssumedRole, added with [`NAMESPACE_TAG`].
pub const NAME_TAG: &str = "kubernetes-name";
/// Session tags STS accepts on one call.
const MAX_SESSION_TAGS: usize = 50;

/// Temporary credentials. `Debug` never shows the secret parts.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The access key ID (not secret on its own, but kept out of logs too).
    pub access_key_id: String,
    /// The secret access key.
    pub secret_access_key: String,
    /// The session token.
    pub session_token: String,
    /// When STS said they expire.
    pub expiration: Timestamp,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &"<redacted>")
            .field("expiration", &self.expiration)
            .finish_non_exhaustive()
    }
}

/// What a successful AssumeRole returned.
#[derive(Debug, Clone)]
pub struct AssumedSession {
    /// The credentials.
    pub credentials: Credentials,
    /// ARN of the assumed-role session.
    pub assumed_role_arn: Option<String>,
    /// Source identity of the session, if set.
    pub source_identity: Option<String>,
}

/// The input of one AssumeRole call.
#[derive(Debug, Clone, PartialEq)]
pub struct AssumeRoleRequest {
    /// ARN of the role.
    pub role_arn: String,
    /// Session name.
    pub role_session_name: String,
    /// Lifetime asked for, in seconds.
    pub duration_seconds: i32,
    /// External ID, if any.
    pub external_id: Option<String>,
    /// Inline session policy.
    pub policy: Option<String>,
    /// Managed session policies.
    pub policy_arns: Vec<String>,
    /// Session tags.
    pub tags: Vec<(String, String)>,
    /// Tags that pass on to chained roles.
    pub transitive_tag_keys: Vec<String>,
    /// Source identity.
    pub source_identity: Option<String>,
    /// What identifies `spec.source` (see [`crate::source::identity`]); not
    /// sent to STS, but part of the spec hash. `None` for the operator's
    /// own identity.
    pub source: Option<String>,
}

impl AssumeRoleRequest {
    /// The request that an AssumedRole's spec describes.
    pub fn for_resource(ar: &AssumedRole) -> Self {
        let spec = &ar.spec;
        Self {
            role_arn: spec.role_arn.clone(),
            role_session_name: ar.role_session_name(),
            duration_seconds: crate::source::duration(spec.duration_seconds(), &spec.source).0,
            external_id: spec.external_id.clone(),
            policy: spec.policy.clone(),
            policy_arns: spec.policy_arns.clone(),
            tags: spec.tags.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            transitive_tag_keys: spec.transitive_tag_keys.clone(),
            source_identity: spec.source_identity.clone(),
            source: None,
        }
    }

    /// Adds the session tags [`NAMESPACE_TAG`] and [`NAME_TAG`], so that
    /// CloudTrail and the role's policies can tell which AssumedRole asked.
    /// A spec that sets either key itself, or leaves no room for them, is
    /// refused naming `spec.tags`.
    pub fn tag_with_origin(&mut self, namespace: &str, name: &str) -> Result<(), InvalidSpec> {
        if let Some((key, _)) = self.tags.iter().find(|(k, _)| k == NAMESPACE_TAG || k == NAME_TAG) {
            return Err(InvalidSpec {
                field: "spec.tags",
                reason: format!("{key:?} is set by the operator (--session-tags); remove it from spec.tags"),
            });
        }
        if self.tags.len() + 2 > MAX_SESSION_TAGS {
            return Err(InvalidSpec {
                field: "spec.tags",
                reason: format!(
                    "may hold at most {} tags while the operator adds its two session tags (--session-tags)",
                    MAX_SESSION_TAGS - 2
                ),
            });
        }
        self.tags.push((NAMESPACE_TAG.into(), namespace.into()));
        self.tags.push((NAME_TAG.into(), name.into()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::AssumedRoleSpec;

    fn request(tags: serde_json::Value) -> AssumeRoleRequest {
        let spec: AssumedRoleSpec =
            serde_json::from_value(serde_json::json!({"roleArn": "arn:aws:iam::123456789012:role/r", "tags": tags}))
                .unwrap_or_else(|e| panic!("{e}"));
        let mut ar = AssumedRole::new("reader", spec);
        ar.metadata.namespace = Some("billing".into());
        AssumeRoleRequest::for_resource(&ar)
    }

    #[test]
    fn origin_tags_name_the_namespace_and_the_assumed_role() {
        let mut r = request(serde_json::json!({"team": "b"}));
        assert_eq!(r.tag_with_origin("billing", "reader"), Ok(()));
        assert_eq!(
            r.tags,
            vec![
                ("team".to_string(), "b".to_string()),
                (NAMESPACE_TAG.to_string(), "billing".to_string()),
                (NAME_TAG.to_string(), "reader".to_string()),
            ]
        );
    }

    #[test]
    fn origin_tags_refuse_a_spec_that_sets_them_or_leaves_no_room() {
        let mut r = request(serde_json::json!({"kubernetes-name": "other"}));
        let error = r.tag_with_origin("billing", "reader").err().map(|e| e.to_string());
        assert!(
            error
                .as_deref()
                .is_some_and(|e| e.starts_with("spec.tags: \"kubernetes-name\" is set by the operator")),
            "{error:?}"
        );
        let full: serde_json::Map<String, serde_json::Value> =
            (0..49).map(|i| (format!("k{i}"), serde_json::json!("v"))).collect();
        let mut r = request(serde_json::Value::Object(full));
        let error = r.tag_with_origin("billing", "reader").err().map(|e| e.to_string());
        assert_eq!(
            error.as_deref(),
            Some("spec.tags: may hold at most 48 tags while the operator adds its two session tags (--session-tags)")
        );
    }
}
