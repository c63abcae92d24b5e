//! The credentials the operator handles and the request that obtains them:
//! the vocabulary that the pure modules ([`crate::secret`], [`crate::plan`])
//! and the STS client ([`crate::sts`]) share, without the client itself.

use std::fmt;

use jiff::Timestamp;

use crate::api::AssumedRole;

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
}

impl AssumeRoleRequest {
    /// The request that an AssumedRole's spec describes.
    pub fn for_resource(ar: &AssumedRole) -> Self {
        let spec = &ar.spec;
        Self {
            role_arn: spec.role_arn.clone(),
            role_session_name: ar.role_session_name(),
            duration_seconds: spec.duration_seconds(),
            external_id: spec.external_id.clone(),
            policy: spec.policy.clone(),
            policy_arns: spec.policy_arns.clone(),
            tags: spec.tags.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            transitive_tag_keys: spec.transitive_tag_keys.clone(),
            source_identity: spec.source_identity.clone(),
        }
    }
}
