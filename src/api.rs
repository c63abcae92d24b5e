//! The `AssumedRole` custom resource: its spec, its status, and the rules that
//! keep a bad spec out.
//!
//! The rules live in two places on purpose. Those the schema or CEL can
//! express are part of the generated CRD, so the API server rejects a bad
//! object at admission with a message that names the field. The same checks,
//! and those CEL cannot express (the inline policy being JSON), run again in
//! [`AssumedRoleSpec::validate`], because a CRD can lag behind the operator
//! and an object can predate a rule.

use std::{collections::BTreeMap, sync::LazyLock};

use jiff::SignedDuration;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use regex::Regex;
use serde::{Deserialize, Serialize};

/// The API group of the operator's resources.
pub const GROUP: &str = "sts.refresh.dev";

/// Shortest lifetime STS grants, in seconds.
pub const MIN_DURATION_SECONDS: i32 = 900;
/// Longest lifetime STS grants, in seconds (a role's own maximum may be lower).
pub const MAX_DURATION_SECONDS: i32 = 43_200;
/// Lifetime asked for when the spec names none.
pub const DEFAULT_DURATION_SECONDS: i32 = 3_600;
/// Where pods mount the Secret when the spec does not say.
pub const DEFAULT_MOUNT_PATH: &str = "/var/run/secrets/aws";
/// The profile written into the config file when the spec does not say.
pub const DEFAULT_PROFILE: &str = "default";

// The CEL rules and the Rust checks below are kept in step by the tests at the
// bottom of this file, which run the CEL rules client-side.
const ROLE_ARN_PATTERN: &str = r"^arn:aws(-cn|-us-gov)?:iam::[0-9]{12}:role/([!-~]{0,510}/)?[A-Za-z0-9+=,.@_-]{1,64}$";
const POLICY_ARN_PATTERN: &str =
    r"^arn:aws(-cn|-us-gov)?:iam::([0-9]{12}|aws):policy/([!-~]{0,510}/)?[A-Za-z0-9+=,.@_-]{1,128}$";
const SESSION_NAME_PATTERN: &str = r"^[A-Za-z0-9+=,.@_-]{2,64}$";
const EXTERNAL_ID_PATTERN: &str = r"^[A-Za-z0-9+=,.@:/_-]+$";
// At most nine digits a unit, so that no duration overflows; all zeros is
// no duration at all.
const DURATION_PATTERN: &str = r"^([0-9]{1,9}h)?([0-9]{1,9}m)?([0-9]{1,9}s)?$";
const ZERO_DURATION_PATTERN: &str = r"^(0+h)?(0+m)?(0+s)?$";
/// A plain absolute path: segments of letters, digits and `._-`, none of
/// them `.` or `..`. The SDKs run `credential_process` through a shell, so
/// nothing else may reach the `config` key.
const MOUNT_PATH_PATTERN: &str = r"^(/[A-Za-z0-9._-]+)+/?$";
const DOT_SEGMENT_PATTERN: &str = r"(^|/)[.][.]?(/|$)";
/// A key of a Secret's data.
const DATA_KEY_PATTERN: &str = r"^[-._a-zA-Z0-9]+$";
const PROFILE_PATTERN: &str = r"^[A-Za-z0-9_.-]{1,64}$";
const TAG_KEY_PATTERN: &str = r"^[\p{L}\p{Z}\p{N}_.:/=+@-]+$";
const TAG_VALUE_PATTERN: &str = r"^[\p{L}\p{Z}\p{N}_.:/=+@-]*$";
// Kubernetes' rules for label and annotation keys (a qualified name: an
// optional DNS-subdomain prefix and a slash, then a name of at most 63
// characters) and label values. The prefix's exact DNS-subdomain form and
// its length are two more patterns, so that CEL and `validate` agree.
const QUALIFIED_NAME_PATTERN: &str =
    r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$";
const KEY_PREFIX_PATTERN: &str = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[^/]*$";
const KEY_PREFIX_LENGTH_PATTERN: &str = r"^([^/]{1,253}/)?[^/]*$";
/// An AWS region: `eu-west-1`, `us-gov-west-1`, `cn-north-1`, ...
const REGION_PATTERN: &str = r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-[0-9]{1,2}$";
const DNS_SUBDOMAIN_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
const LABEL_VALUE_PATTERN: &str = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$";
/// The API server's limit on the size of all annotations of an object, keys
/// and values together.
pub const MAX_ANNOTATIONS_BYTES: usize = 256 * 1024;
/// What `spec.secret.annotations` may use of it: the rest is kept for the
/// operator's own annotations.
pub const MAX_USER_ANNOTATIONS_BYTES: usize = MAX_ANNOTATIONS_BYTES - 2048;
/// Label and annotation keys under this prefix are the operator's own.
pub const RESERVED_PREFIX: &str = "sts.refresh.dev/";

/// Names an IAM role and says how to assume it and where to keep the
/// credentials.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "sts.refresh.dev",
    version = "v1alpha1",
    kind = "AssumedRole",
    namespaced,
    shortname = "ar",
    status = "AssumedRoleStatus",
    category = "aws",
    cel,
    printcolumn = r#"{"name":"Role","type":"string","jsonPath":".spec.roleArn"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Refreshed","type":"string","jsonPath":".status.conditions[?(@.type==\"Refreshed\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Expires","type":"string","jsonPath":".status.expirationTime"}"#,
    printcolumn = r#"{"name":"Next Refresh","type":"string","jsonPath":".status.refreshTime"}"#,
    printcolumn = r#"{"name":"Pull Secret","type":"string","priority":1,"jsonPath":".status.imagePullSecret.reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = kube::core::Rule::new("!has(self.spec.imagePullSecret) || self.spec.imagePullSecret.name != (has(self.spec.secret) && has(self.spec.secret.name) ? self.spec.secret.name : self.metadata.name)").message("spec.imagePullSecret.name must not be the credentials Secret's name (spec.secret.name, or the AssumedRole's name when that is unset): give the image pull Secret a name of its own")
)]
#[x_kube(validation = kube::core::Rule::new("!(has(self.refreshBefore) && has(self.refreshBeforePercentage))").message("spec.refreshBefore and spec.refreshBeforePercentage are mutually exclusive: set one of them"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.transitiveTagKeys) || self.transitiveTagKeys.all(k, has(self.tags) && k in self.tags)").message("spec.transitiveTagKeys: every key must also be a key of spec.tags"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.source) || !has(self.source.serviceAccountName) || (!has(self.tags) && !has(self.transitiveTagKeys) && !has(self.externalId) && !has(self.sourceIdentity))").message("spec.source.serviceAccountName cannot be combined with spec.tags, spec.transitiveTagKeys, spec.externalId or spec.sourceIdentity: AssumeRoleWithWebIdentity takes none of them"))]
#[serde(rename_all = "camelCase")]
pub struct AssumedRoleSpec {
    /// ARN of the IAM role to assume, for example
    /// `arn:aws:iam::123456789012:role/billing-reader`. Partitions aws,
    /// aws-cn and aws-us-gov; role paths are allowed.
    #[x_kube(validation = kube::core::Rule::new(format!("self.matches('{ROLE_ARN_PATTERN}')")).message("spec.roleArn must be an IAM role ARN such as arn:aws:iam::123456789012:role/name (partition aws, aws-cn or aws-us-gov)"))]
    #[schemars(length(max = 2048))]
    pub role_arn: String,

    /// Lifetime to ask STS for, in seconds, from 900 to 43200. STS may grant
    /// less: a role's maximum session duration, or one hour when chaining
    /// roles. The refresh is always scheduled from what STS granted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("self >= 900 && self <= 43200").message("spec.durationSeconds must be between 900 and 43200 seconds"))]
    pub duration_seconds: Option<i32>,

    /// Session name recorded in CloudTrail and in the assumed-role ARN.
    /// Default: derived from the namespace and the name, fitted to STS's 2 to
    /// 64 characters of `[A-Za-z0-9+=,.@_-]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new(format!("self.matches('{SESSION_NAME_PATTERN}')")).message("spec.roleSessionName must be 2 to 64 characters of letters, digits and +=,.@_-"))]
    #[schemars(length(max = 64))]
    pub role_session_name: Option<String>,

    /// External ID that the role's trust policy requires, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new(format!("size(self) >= 2 && self.matches('{EXTERNAL_ID_PATTERN}')")).message("spec.externalId must be 2 to 1224 characters of letters, digits and +=,.@:/_-"))]
    #[schemars(length(max = 1224))]
    pub external_id: Option<String>,

    /// Inline session policy, as a JSON document, that narrows the role's
    /// permissions. At most 2048 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("size(self) >= 1 && size(self) <= 2048").message("spec.policy must be a JSON policy document of 1 to 2048 characters"))]
    #[schemars(length(max = 2048))]
    pub policy: Option<String>,

    /// ARNs of managed policies that narrow the session's permissions. At
    /// most 10.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = kube::core::Rule::new(format!("size(self) <= 10 && self.all(a, a.matches('{POLICY_ARN_PATTERN}'))")).message("spec.policyArns must hold at most 10 IAM policy ARNs such as arn:aws:iam::aws:policy/ReadOnlyAccess"))]
    #[schemars(length(max = 10), inner(length(max = 2048)))]
    pub policy_arns: Vec<String>,

    /// Session tags, passed to STS. At most 50.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[x_kube(validation = kube::core::Rule::new("size(self) <= 50").message("spec.tags may hold at most 50 tags"))]
    #[x_kube(validation = kube::core::Rule::new(format!("self.all(k, size(k) <= 128 && k.matches('{}'))", cel_string(TAG_KEY_PATTERN))).message("spec.tags: every key must be 1 to 128 letters, digits, spaces or _.:/=+-@"))]
    #[x_kube(validation = kube::core::Rule::new(format!("self.all(k, self[k].matches('{}'))", cel_string(TAG_VALUE_PATTERN))).message("spec.tags: every value must be at most 256 letters, digits, spaces or _.:/=+-@"))]
    #[schemars(extend("maxProperties" = 50, "additionalProperties" = {"type": "string", "maxLength": 256}))]
    pub tags: BTreeMap<String, String>,

    /// Keys of `tags` that pass on to roles assumed later in a chain.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50), inner(length(max = 128)))]
    pub transitive_tag_keys: Vec<String>,

    /// Source identity to set on the session (2 to 64 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new(format!("self.matches('{SESSION_NAME_PATTERN}')")).message("spec.sourceIdentity must be 2 to 64 characters of letters, digits and +=,.@_-"))]
    #[schemars(length(max = 64))]
    pub source_identity: Option<String>,

    /// Refresh this long before the credentials expire, as a duration such as
    /// `20m` or `1h30m`. Never later than 5 minutes before expiry. Exclusive
    /// with `refreshBeforePercentage`; when neither is set the credentials
    /// are refreshed when a third of their lifetime remains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new(format!("self.matches('{DURATION_PATTERN}') && !self.matches('{ZERO_DURATION_PATTERN}')")).message("spec.refreshBefore must be a duration of hours, minutes and seconds (at most 9 digits each, not zero), such as 20m or 1h30m"))]
    #[schemars(length(max = 32))]
    pub refresh_before: Option<String>,

    /// Refresh when this percentage of the credentials' lifetime remains
    /// (1 to 99). Exclusive with `refreshBefore`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("self >= 1 && self <= 99").message("spec.refreshBeforePercentage must be between 1 and 99"))]
    pub refresh_before_percentage: Option<i32>,

    /// Where the credentials are written.
    #[serde(default)]
    pub secret: Sparse<SecretTarget>,

    /// Also write an image pull Secret (`kubernetes.io/dockerconfigjson`)
    /// for these private ECR registries, from an authorization token that
    /// the assumed role's credentials get from ECR.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_secret: Option<Box<ImagePullSecret>>,

    /// Stop refreshing. The Secret is left as it is.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspend: bool,

    /// Whose identity assumes the role. Empty: the operator's own (IRSA, EKS
    /// Pod Identity, environment, instance profile). An `AssumedRolePolicy`
    /// says which sources a namespace may use.
    #[serde(default, skip_serializing_if = "Sparse::is_empty")]
    pub source: Sparse<Source>,
}

/// Where the identity that assumes the role comes from: at most one of
/// `serviceAccountName`, `secretRef` and `assumedRoleRef`; none means the
/// operator's own identity.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("(has(self.serviceAccountName) ? 1 : 0) + (has(self.secretRef) ? 1 : 0) + (has(self.assumedRoleRef) ? 1 : 0) <= 1").message("spec.source: set at most one of serviceAccountName, secretRef and assumedRoleRef"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.audience) || has(self.serviceAccountName)").message("spec.source.audience applies only with spec.source.serviceAccountName"))]
pub struct Source {
    /// A ServiceAccount in the AssumedRole's namespace. The operator asks
    /// the API server for a short-lived token of it (TokenRequest) and calls
    /// `AssumeRoleWithWebIdentity`, so the role's trust policy can name this
    /// ServiceAccount, as with IRSA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')").message("spec.source.serviceAccountName must be a ServiceAccount name (lower-case DNS subdomain)"))]
    #[schemars(length(max = 253))]
    pub service_account_name: Option<String>,

    /// Audience of the ServiceAccount token. Default: the operator's
    /// `--token-audience` (`sts.amazonaws.com`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub audience: Option<String>,

    /// A Secret in the AssumedRole's namespace that holds static access keys
    /// (an IAM user's), for clusters outside AWS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SourceSecretRef>,

    /// Another AssumedRole in the same namespace, whose credentials assume
    /// this role (role chaining). STS caps a chained session at one hour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assumed_role_ref: Option<AssumedRoleRef>,
}

/// A Secret of static access keys.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SourceSecretRef {
    /// Name of the Secret, in the AssumedRole's namespace.
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')").message("spec.source.secretRef.name must be a Secret name (lower-case DNS subdomain)"))]
    #[schemars(length(max = 253))]
    pub name: String,
    /// Key of the access key ID. Default: `AWS_ACCESS_KEY_ID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new(format!("self.matches('{DATA_KEY_PATTERN}')")).message("spec.source.secretRef.accessKeyIdKey must be a Secret key: letters, digits and -._"))]
    #[schemars(length(min = 1, max = 253))]
    pub access_key_id_key: Option<String>,
    /// Key of the secret access key. Default: `AWS_SECRET_ACCESS_KEY`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new(format!("self.matches('{DATA_KEY_PATTERN}')")).message("spec.source.secretRef.secretAccessKeyKey must be a Secret key: letters, digits and -._"))]
    #[schemars(length(min = 1, max = 253))]
    pub secret_access_key_key: Option<String>,
}

/// Another AssumedRole in the same namespace.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AssumedRoleRef {
    /// Its name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// The kinds of [`Source`], as an `AssumedRolePolicy` lists them.
#[derive(schemars::JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SourceKind {
    /// The operator's own identity.
    Operator,
    /// A ServiceAccount's token (`spec.source.serviceAccountName`).
    ServiceAccount,
    /// Static keys in a Secret (`spec.source.secretRef`).
    Secret,
    /// Another AssumedRole (`spec.source.assumedRoleRef`).
    AssumedRole,
}

impl SourceKind {
    /// Every kind, in the order the README lists them.
    pub const ALL: [SourceKind; 4] = [Self::Operator, Self::ServiceAccount, Self::Secret, Self::AssumedRole];

    /// The kind named `name` in `AssumedRolePolicy.spec.sources` and
    /// `--sources`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(name.trim()))
    }

    /// The name in `AssumedRolePolicy.spec.sources`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Operator => "Operator",
            Self::ServiceAccount => "ServiceAccount",
            Self::Secret => "Secret",
            Self::AssumedRole => "AssumedRole",
        }
    }
}

impl Source {
    /// Whether the operator's own identity assumes the role.
    pub fn is_operator(&self) -> bool {
        self.kind() == SourceKind::Operator
    }

    /// Which kind of source this is.
    pub fn kind(&self) -> SourceKind {
        if self.service_account_name.is_some() {
            SourceKind::ServiceAccount
        } else if self.secret_ref.is_some() {
            SourceKind::Secret
        } else if self.assumed_role_ref.is_some() {
            SourceKind::AssumedRole
        } else {
            SourceKind::Operator
        }
    }
}

impl Source {
    /// The checks of [`AssumedRoleSpec::validate`] for `spec.source`.
    fn validate(&self) -> Result<(), InvalidSpec> {
        let set = [
            self.service_account_name.is_some(),
            self.secret_ref.is_some(),
            self.assumed_role_ref.is_some(),
        ];
        if set.iter().filter(|s| **s).count() > 1 {
            return Err(invalid(
                "spec.source",
                "set at most one of serviceAccountName, secretRef and assumedRoleRef",
            ));
        }
        if self.audience.is_some() && self.service_account_name.is_none() {
            return Err(invalid(
                "spec.source.audience",
                "applies only with spec.source.serviceAccountName",
            ));
        }
        if let Some(name) = &self.service_account_name
            && (name.len() > 253 || !DNS_SUBDOMAIN.is_match(name))
        {
            return Err(invalid(
                "spec.source.serviceAccountName",
                format!("{name:?} is not a ServiceAccount name (lower-case DNS subdomain)"),
            ));
        }
        if let Some(audience) = &self.audience
            && !(1..=256).contains(&audience.chars().count())
        {
            return Err(invalid("spec.source.audience", "must be 1 to 256 characters"));
        }
        if let Some(secret) = &self.secret_ref {
            if secret.name.len() > 253 || !DNS_SUBDOMAIN.is_match(&secret.name) {
                return Err(invalid(
                    "spec.source.secretRef.name",
                    format!("{:?} is not a Secret name (lower-case DNS subdomain)", secret.name),
                ));
            }
            for (field, key) in [
                ("spec.source.secretRef.accessKeyIdKey", secret.access_key_id_key()),
                (
                    "spec.source.secretRef.secretAccessKeyKey",
                    secret.secret_access_key_key(),
                ),
            ] {
                if key.len() > 253 || !DATA_KEY.is_match(key) {
                    return Err(invalid(field, "must be a Secret key: 1 to 253 letters, digits and -._"));
                }
            }
        }
        if let Some(other) = &self.assumed_role_ref
            && !(1..=253).contains(&other.name.chars().count())
        {
            return Err(invalid(
                "spec.source.assumedRoleRef.name",
                "must be 1 to 253 characters",
            ));
        }
        Ok(())
    }
}

impl SourceSecretRef {
    /// The key that holds the access key ID.
    pub fn access_key_id_key(&self) -> &str {
        self.access_key_id_key.as_deref().unwrap_or("AWS_ACCESS_KEY_ID")
    }

    /// The key that holds the secret access key.
    pub fn secret_access_key_key(&self) -> &str {
        self.secret_access_key_key.as_deref().unwrap_or("AWS_SECRET_ACCESS_KEY")
    }
}

/// The image pull Secret an AssumedRole writes for private ECR registries.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ImagePullSecret {
    /// The Secret's name, in the AssumedRole's namespace; not the name of
    /// its credentials Secret.
    #[schemars(length(max = 253))]
    #[x_kube(validation = kube::core::Rule::new(format!("self.matches('{}')", cel_string(DNS_SUBDOMAIN_PATTERN))).message("spec.imagePullSecret.name must be a Secret name (lower-case DNS subdomain)"))]
    pub name: String,
    /// The registries: an account and a region each, such as
    /// `{account: "123456789012", region: eu-west-1}` for
    /// `123456789012.dkr.ecr.eu-west-1.amazonaws.com`.
    #[schemars(length(min = 1, max = 20))]
    pub registries: Vec<EcrRegistry>,
}

/// One private ECR registry.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub struct EcrRegistry {
    /// The registry's AWS account: 12 digits.
    #[schemars(length(max = 12))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[0-9]{12}$')").message("spec.imagePullSecret.registries[].account must be an AWS account ID of 12 digits"))]
    pub account: String,
    /// Its region, such as `eu-west-1`.
    #[schemars(length(max = 32))]
    #[x_kube(validation = kube::core::Rule::new(format!("self.matches('{REGION_PATTERN}')")).message("spec.imagePullSecret.registries[].region must be an AWS region such as eu-west-1"))]
    pub region: String,
}

impl EcrRegistry {
    /// The registry's host name: what `docker login` and the kubelet use.
    pub fn host(&self) -> String {
        let suffix = if self.region.starts_with("cn-") {
            "amazonaws.com.cn"
        } else {
            "amazonaws.com"
        };
        format!("{}.dkr.ecr.{}.{suffix}", self.account, self.region)
    }
}

/// The Secret that receives the credentials.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretTarget {
    /// Name of the Secret, in the AssumedRole's namespace. Default: the
    /// AssumedRole's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$') && size(self) <= 253").message("spec.secret.name must be a valid Secret name (lower-case DNS subdomain)"))]
    #[schemars(length(max = 253))]
    pub name: Option<String>,

    /// Where pods mount the Secret: a plain absolute path (letters, digits
    /// and `._-` between slashes, no `.` or `..` segment). Written into the
    /// `config` key, whose profile runs `cat '<mountPath>/credential_process.json'`
    /// through the SDK's shell. Default: `/var/run/secrets/aws`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new(format!("self.matches('{MOUNT_PATH_PATTERN}') && !self.matches('{DOT_SEGMENT_PATTERN}')")).message("spec.secret.mountPath must be a plain absolute path: segments of letters, digits and ._- (no . or .. segment), such as /var/run/secrets/aws"))]
    #[schemars(length(max = 1024))]
    pub mount_path: Option<String>,

    /// Profile name in the `config` and `credentials` files. Default:
    /// `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new(format!("self.matches('{PROFILE_PATTERN}')")).message("spec.secret.profile must be 1 to 64 characters of letters, digits and _.-"))]
    #[schemars(length(max = 64))]
    pub profile: Option<String>,

    /// Labels added to the Secret: keys are qualified names (an optional
    /// DNS-subdomain prefix and `/`, then at most 63 characters), values at
    /// most 63 characters of letters, digits and `-_.`, as for any label.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[x_kube(validation = kube::core::Rule::new(format!("self.all(k, k.matches('{QUALIFIED_NAME_PATTERN}') && k.matches('{KEY_PREFIX_PATTERN}') && k.matches('{KEY_PREFIX_LENGTH_PATTERN}') && !k.startsWith('{RESERVED_PREFIX}'))")).message("spec.secret.labels: every key must be a qualified name (an optional DNS-subdomain prefix and '/', then 1 to 63 letters, digits and -_.), outside sts.refresh.dev/"))]
    #[x_kube(validation = kube::core::Rule::new(format!("self.all(k, size(self[k]) <= 63 && self[k].matches('{LABEL_VALUE_PATTERN}'))")).message("spec.secret.labels: every value must be at most 63 letters, digits and -_., starting and ending with a letter or digit"))]
    #[schemars(extend("maxProperties" = 64, "additionalProperties" = {"type": "string", "maxLength": 63}))]
    pub labels: BTreeMap<String, String>,

    /// Annotations added to the Secret: keys are qualified names, and keys
    /// and values together take at most 254 KiB (the API server allows 256
    /// KiB, and the operator's own annotations need the rest).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[x_kube(validation = kube::core::Rule::new(format!("self.all(k, k.matches('{QUALIFIED_NAME_PATTERN}') && k.matches('{KEY_PREFIX_PATTERN}') && k.matches('{KEY_PREFIX_LENGTH_PATTERN}') && !k.startsWith('{RESERVED_PREFIX}'))")).message("spec.secret.annotations: every key must be a qualified name (an optional DNS-subdomain prefix and '/', then 1 to 63 letters, digits and -_.), outside sts.refresh.dev/"))]
    #[x_kube(validation = kube::core::Rule::new(format!("self.map(k, size(bytes(k)) + size(bytes(self[k]))).sum() <= {MAX_USER_ANNOTATIONS_BYTES}")).message("spec.secret.annotations: keys and values together must not exceed 254 KiB"))]
    #[schemars(extend("maxProperties" = 64, "additionalProperties" = {"type": "string", "maxLength": MAX_USER_ANNOTATIONS_BYTES}))]
    pub annotations: BTreeMap<String, String>,
}

/// What the operator last did and what it will do next.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AssumedRoleStatus {
    /// `Ready` says whether the Secret holds valid credentials for the
    /// current spec; `Refreshed` whether the last attempt to refresh them
    /// worked, and when the next one is; `RefreshAdjusted` that a refresh
    /// setting could not be used as written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// When the credentials in the Secret expire, as STS said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration_time: Option<Time>,
    /// When the operator will next refresh them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_time: Option<Time>,
    /// When the operator last obtained credentials from STS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_refresh_time: Option<Time>,
    /// When the last attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure_time: Option<Time>,
    /// Failed attempts since the last success; drives the backoff.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub consecutive_failures: i32,
    /// ARN of the assumed-role session, as STS reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assumed_role_arn: Option<String>,
    /// Source identity of the session, if one was set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_identity: Option<String>,
    /// The generation of the spec that this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The image pull Secret (`spec.imagePullSecret`): whether it holds
    /// unexpired ECR tokens, when they expire and are refreshed, and what
    /// failed last. Written apart from the rest of the status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_secret: Option<Box<ImagePullSecretStatus>>,
}

/// The state of an AssumedRole's image pull Secret.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ImagePullSecretStatus {
    /// `True` while the Secret holds tokens that have not expired.
    pub ready: String,
    /// `TokenReady`, or what failed last: `ECRAccessDenied`, `ECRThrottled`,
    /// `ECRUnavailable`, `SecretConflict`, `InvalidSpec`, ...
    pub reason: String,
    /// In words.
    pub message: String,
    /// When the first of its tokens expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration_time: Option<Time>,
    /// When the next tokens are due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_time: Option<Time>,
    /// When its tokens were given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_refresh_time: Option<Time>,
    /// Failures since the last success.
    #[serde(default)]
    pub consecutive_failures: i32,
    /// When the last failure happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure_time: Option<Time>,
}

/// `pattern` inside a single-quoted CEL string literal: CEL reads `\\` as
/// one backslash, and refuses an escape such as `\p` it does not know.
fn cel_string(pattern: &str) -> String {
    pattern.replace('\\', r"\\")
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

/// A spec that cannot be acted on, with the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidSpec {
    /// Path of the offending field, such as `spec.roleArn`.
    pub field: &'static str,
    /// Why it was rejected.
    pub reason: String,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> InvalidSpec {
    InvalidSpec {
        field,
        reason: reason.into(),
    }
}

#[allow(clippy::unwrap_used)] // the patterns are constants, checked by the tests below
fn compiled(pattern: &str) -> Regex {
    Regex::new(pattern).unwrap()
}

static ROLE_ARN: LazyLock<Regex> = LazyLock::new(|| compiled(ROLE_ARN_PATTERN));
static POLICY_ARN: LazyLock<Regex> = LazyLock::new(|| compiled(POLICY_ARN_PATTERN));
static SESSION_NAME: LazyLock<Regex> = LazyLock::new(|| compiled(SESSION_NAME_PATTERN));
static EXTERNAL_ID: LazyLock<Regex> = LazyLock::new(|| compiled(EXTERNAL_ID_PATTERN));
static TAG_KEY: LazyLock<Regex> = LazyLock::new(|| compiled(TAG_KEY_PATTERN));
static TAG_VALUE: LazyLock<Regex> = LazyLock::new(|| compiled(TAG_VALUE_PATTERN));
static QUALIFIED_NAME: LazyLock<Regex> = LazyLock::new(|| compiled(QUALIFIED_NAME_PATTERN));
static DNS_SUBDOMAIN: LazyLock<Regex> = LazyLock::new(|| compiled(DNS_SUBDOMAIN_PATTERN));
static LABEL_VALUE: LazyLock<Regex> = LazyLock::new(|| compiled(LABEL_VALUE_PATTERN));
static DATA_KEY: LazyLock<Regex> = LazyLock::new(|| compiled(DATA_KEY_PATTERN));
static MOUNT_PATH: LazyLock<Regex> = LazyLock::new(|| compiled(MOUNT_PATH_PATTERN));
static DOT_SEGMENT: LazyLock<Regex> = LazyLock::new(|| compiled(DOT_SEGMENT_PATTERN));
static PROFILE: LazyLock<Regex> = LazyLock::new(|| compiled(PROFILE_PATTERN));

/// Why `key` is not a label or annotation key the API server accepts (or is
/// one of the operator's own), if it is not.
fn key_problem(key: &str) -> Option<String> {
    let prefix_ok = match key.split_once('/') {
        Some((prefix, _)) => prefix.len() <= 253 && DNS_SUBDOMAIN.is_match(prefix),
        None => true,
    };
    if !prefix_ok || !QUALIFIED_NAME.is_match(key) {
        return Some(format!(
            "key {key:?} must be a qualified name: an optional DNS-subdomain prefix and '/', then 1 to 63 letters, digits and -_., starting and ending with a letter or digit"
        ));
    }
    if key.starts_with(RESERVED_PREFIX) {
        return Some(format!(
            "key {key:?} is under {RESERVED_PREFIX}, which the operator keeps for itself"
        ));
    }
    None
}

impl SecretTarget {
    /// The checks of [`AssumedRoleSpec::validate`] for `spec.secret`.
    fn validate(&self) -> Result<(), InvalidSpec> {
        if let Some(name) = &self.name
            && (name.len() > 253 || !DNS_SUBDOMAIN.is_match(name))
        {
            return Err(invalid(
                "spec.secret.name",
                format!("{name:?} is not a Secret name (lower-case DNS subdomain)"),
            ));
        }
        if let Some(path) = &self.mount_path
            && let Some(problem) = mount_path_problem(path)
        {
            return Err(invalid("spec.secret.mountPath", problem));
        }
        if let Some(profile) = &self.profile
            && !PROFILE.is_match(profile)
        {
            return Err(invalid(
                "spec.secret.profile",
                "must be 1 to 64 characters of letters, digits and _.-",
            ));
        }
        for (field, count) in [
            ("spec.secret.labels", self.labels.len()),
            ("spec.secret.annotations", self.annotations.len()),
        ] {
            if count > 64 {
                return Err(invalid(field, format!("holds {count} entries, more than 64")));
            }
        }
        for (key, value) in &self.labels {
            if let Some(problem) = key_problem(key) {
                return Err(invalid("spec.secret.labels", problem));
            }
            if value.len() > 63 || !LABEL_VALUE.is_match(value) {
                return Err(invalid(
                    "spec.secret.labels",
                    format!(
                        "value of {key:?} must be at most 63 letters, digits and -_., starting and ending with a letter or digit"
                    ),
                ));
            }
        }
        let mut annotation_bytes = 0;
        for (key, value) in &self.annotations {
            if let Some(problem) = key_problem(key) {
                return Err(invalid("spec.secret.annotations", problem));
            }
            annotation_bytes += key.len() + value.len();
        }
        if annotation_bytes > MAX_USER_ANNOTATIONS_BYTES {
            return Err(invalid(
                "spec.secret.annotations",
                format!(
                    "keys and values take {annotation_bytes} bytes, more than the {MAX_USER_ANNOTATIONS_BYTES} allowed"
                ),
            ));
        }
        Ok(())
    }
}

/// Why `path` cannot be a mount path, if it cannot: see
/// [`MOUNT_PATH_PATTERN`]. Never echoes the path, which a shell would run.
pub fn mount_path_problem(path: &str) -> Option<&'static str> {
    if path.len() > 1024 {
        return Some("must be at most 1024 characters");
    }
    if !MOUNT_PATH.is_match(path) || DOT_SEGMENT.is_match(path) {
        return Some(
            "must be a plain absolute path: segments of letters, digits and ._- (no . or .. segment), such as /var/run/secrets/aws",
        );
    }
    None
}

/// How far ahead of expiry the spec asks to refresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshBefore {
    /// When a third of the lifetime remains.
    Default,
    /// This long before expiry.
    Duration(SignedDuration),
    /// When this percentage of the lifetime remains.
    Percentage(u8),
}

impl AssumedRoleSpec {
    /// Checks everything the operator relies on, and names the first field at
    /// fault.
    pub fn validate(&self) -> Result<(), InvalidSpec> {
        if !ROLE_ARN.is_match(&self.role_arn) {
            return Err(invalid(
                "spec.roleArn",
                format!(
                    "{:?} is not an IAM role ARN such as arn:aws:iam::123456789012:role/name",
                    self.role_arn
                ),
            ));
        }
        let duration = self.duration_seconds();
        if !(MIN_DURATION_SECONDS..=MAX_DURATION_SECONDS).contains(&duration) {
            return Err(invalid(
                "spec.durationSeconds",
                format!("{duration} is outside {MIN_DURATION_SECONDS}..{MAX_DURATION_SECONDS}"),
            ));
        }
        if let Some(name) = &self.role_session_name
            && !SESSION_NAME.is_match(name)
        {
            return Err(invalid(
                "spec.roleSessionName",
                "must be 2 to 64 characters of letters, digits and +=,.@_-",
            ));
        }
        if let Some(id) = &self.external_id
            && (!(2..=1224).contains(&id.len()) || !EXTERNAL_ID.is_match(id))
        {
            // The external ID is a shared secret of sorts: never echo it.
            return Err(invalid(
                "spec.externalId",
                "must be 2 to 1224 characters of letters, digits and +=,.@:/_-",
            ));
        }
        if let Some(policy) = &self.policy {
            // STS and CEL's size() count characters, not bytes.
            if policy.is_empty() || policy.chars().count() > 2048 {
                return Err(invalid("spec.policy", "must be 1 to 2048 characters"));
            }
            match serde_json::from_str::<serde_json::Value>(policy) {
                Ok(serde_json::Value::Object(_)) => {}
                Ok(_) => return Err(invalid("spec.policy", "must be a JSON object")),
                Err(e) => return Err(invalid("spec.policy", format!("is not valid JSON: {e}"))),
            }
        }
        if self.policy_arns.len() > 10 {
            return Err(invalid("spec.policyArns", "may hold at most 10 ARNs"));
        }
        if let Some(arn) = self.policy_arns.iter().find(|a| !POLICY_ARN.is_match(a)) {
            return Err(invalid("spec.policyArns", format!("{arn:?} is not an IAM policy ARN")));
        }
        if self.tags.len() > 50 {
            return Err(invalid("spec.tags", "may hold at most 50 tags"));
        }
        for (key, value) in &self.tags {
            if key.chars().count() > 128 || !TAG_KEY.is_match(key) {
                return Err(invalid(
                    "spec.tags",
                    format!("key {key:?} must be 1 to 128 letters, digits, spaces or _.:/=+-@"),
                ));
            }
            if value.chars().count() > 256 || !TAG_VALUE.is_match(value) {
                return Err(invalid(
                    "spec.tags",
                    format!("value of {key:?} must be at most 256 letters, digits, spaces or _.:/=+-@"),
                ));
            }
        }
        if self.transitive_tag_keys.len() > 50 {
            return Err(invalid("spec.transitiveTagKeys", "may hold at most 50 keys"));
        }
        if let Some(key) = self.transitive_tag_keys.iter().find(|k| !self.tags.contains_key(*k)) {
            return Err(invalid(
                "spec.transitiveTagKeys",
                format!("{key:?} is not a key of spec.tags"),
            ));
        }
        if let Some(id) = &self.source_identity
            && !SESSION_NAME.is_match(id)
        {
            return Err(invalid(
                "spec.sourceIdentity",
                "must be 2 to 64 characters of letters, digits and +=,.@_-",
            ));
        }
        self.refresh_before()?;
        self.secret.validate()?;
        self.source.validate()?;
        // AssumeRoleWithWebIdentity takes no tags, external ID or source
        // identity: the token carries who asks.
        if self.source.kind() == SourceKind::ServiceAccount {
            let unsupported = [
                ("spec.tags", !self.tags.is_empty()),
                ("spec.transitiveTagKeys", !self.transitive_tag_keys.is_empty()),
                ("spec.externalId", self.external_id.is_some()),
                ("spec.sourceIdentity", self.source_identity.is_some()),
            ];
            if let Some((field, _)) = unsupported.into_iter().find(|(_, set)| *set) {
                return Err(invalid(
                    field,
                    "cannot be used with spec.source.serviceAccountName: AssumeRoleWithWebIdentity takes no tags, \
                     external ID or source identity",
                ));
            }
        }
        Ok(())
    }

    /// The lifetime to ask STS for.
    pub fn duration_seconds(&self) -> i32 {
        self.duration_seconds.unwrap_or(DEFAULT_DURATION_SECONDS)
    }

    /// The refresh setting, parsed.
    pub fn refresh_before(&self) -> Result<RefreshBefore, InvalidSpec> {
        match (&self.refresh_before, self.refresh_before_percentage) {
            (Some(_), Some(_)) => Err(invalid(
                "spec.refreshBefore",
                "is exclusive with spec.refreshBeforePercentage: set one of them",
            )),
            (Some(text), None) => parse_duration(text).map(RefreshBefore::Duration).ok_or_else(|| {
                invalid(
                    "spec.refreshBefore",
                    format!("{text:?} is not a duration such as 20m or 1h30m"),
                )
            }),
            (None, Some(p)) => u8::try_from(p)
                .ok()
                .filter(|p| (1..=99).contains(p))
                .map(RefreshBefore::Percentage)
                .ok_or_else(|| invalid("spec.refreshBeforePercentage", format!("{p} is outside 1..99"))),
            (None, None) => Ok(RefreshBefore::Default),
        }
    }

    /// Where pods mount the Secret.
    pub fn mount_path(&self) -> &str {
        self.secret
            .mount_path
            .as_deref()
            .unwrap_or(DEFAULT_MOUNT_PATH)
            .trim_end_matches('/')
    }

    /// The profile name written into the config files.
    pub fn profile(&self) -> &str {
        self.secret.profile.as_deref().unwrap_or(DEFAULT_PROFILE)
    }
}

/// Parses a duration of whole hours, minutes and seconds, in that order, such
/// as `1h30m` or `890s`. Returns `None` for anything else, including zero.
pub fn parse_duration(text: &str) -> Option<SignedDuration> {
    let mut rest = text;
    let mut total: i64 = 0;
    let mut last_unit = 0;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        if digits == 0 || digits > 9 {
            return None;
        }
        let value: i64 = rest[..digits].parse().ok()?;
        let (unit, rank) = match rest[digits..].chars().next()? {
            'h' => (3600, 1),
            'm' => (60, 2),
            's' => (1, 3),
            _ => return None,
        };
        if rank <= last_unit {
            return None;
        }
        last_unit = rank;
        total = total.checked_add(value.checked_mul(unit)?)?;
        rest = &rest[digits + 1..];
    }
    (total > 0).then(|| SignedDuration::from_secs(total))
}

impl AssumedRole {
    /// Name of the Secret that receives the credentials.
    pub fn secret_name(&self) -> String {
        self.spec
            .secret
            .name
            .clone()
            .unwrap_or_else(|| self.metadata.name.clone().unwrap_or_default())
    }

    /// The session name: the spec's, or one derived from namespace and name.
    pub fn role_session_name(&self) -> String {
        self.spec.role_session_name.clone().unwrap_or_else(|| {
            default_session_name(
                self.metadata.namespace.as_deref().unwrap_or_default(),
                self.metadata.name.as_deref().unwrap_or_default(),
            )
        })
    }
}

/// Derives a session name from namespace and name that fits STS's rules:
/// 2 to 64 characters of `[A-Za-z0-9+=,.@_-]`. Names that do not fit are
/// shortened and end in a short hash, so that two long names stay apart.
pub fn default_session_name(namespace: &str, name: &str) -> String {
    let full = format!("{namespace}.{name}");
    let cleaned: String = full
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "+=,.@_-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    let fitted = if cleaned.len() <= 64 {
        cleaned
    } else {
        use sha2::Digest;
        let digest = hex::encode(sha2::Sha256::digest(full.as_bytes()));
        format!("{}-{}", &cleaned[..55], &digest[..8])
    };
    if fitted.len() < 2 {
        format!("{fitted}--")
    } else {
        fitted
    }
}

/// A part of the spec that most objects leave empty, kept as a pointer: one
/// word in every cached AssumedRole instead of the whole struct (`secret` and
/// `source` are 264 bytes together, 2.5 MB at 10,000 objects that never set
/// them). It reads as the struct itself, the empty one when unset; writing
/// through it makes room first. The schema and the JSON are the struct's.
#[derive(Clone, PartialEq)]
pub struct Sparse<T: Empty>(Option<Box<T>>);

/// A struct with an empty value that lives as long as the program, for
/// [`Sparse`] to read when unset.
pub trait Empty: Default + PartialEq + 'static {
    /// The empty value.
    fn empty() -> &'static Self;
}

impl Empty for SecretTarget {
    fn empty() -> &'static Self {
        static EMPTY: SecretTarget = SecretTarget {
            name: None,
            mount_path: None,
            profile: None,
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
        };
        &EMPTY
    }
}

impl Empty for Source {
    fn empty() -> &'static Self {
        static EMPTY: Source = Source {
            service_account_name: None,
            audience: None,
            secret_ref: None,
            assumed_role_ref: None,
        };
        &EMPTY
    }
}

impl<T: Empty> Sparse<T> {
    /// Whether it holds the empty value.
    pub fn is_empty(&self) -> bool {
        **self == *T::empty()
    }
}

impl<T: Empty> Default for Sparse<T> {
    fn default() -> Self {
        Self(None)
    }
}

impl<T: Empty> From<T> for Sparse<T> {
    fn from(value: T) -> Self {
        if value == *T::empty() {
            Self(None)
        } else {
            Self(Some(Box::new(value)))
        }
    }
}

impl<T: Empty> std::ops::Deref for Sparse<T> {
    type Target = T;

    fn deref(&self) -> &T {
        match &self.0 {
            Some(value) => value,
            None => T::empty(),
        }
    }
}

impl<T: Empty> std::ops::DerefMut for Sparse<T> {
    fn deref_mut(&mut self) -> &mut T {
        self.0.get_or_insert_with(Box::default)
    }
}

impl<T: Empty + std::fmt::Debug> std::fmt::Debug for Sparse<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

impl<T: Empty + Serialize> Serialize for Sparse<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        (**self).serialize(serializer)
    }
}

impl<'de, T: Empty + Deserialize<'de>> Deserialize<'de> for Sparse<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::deserialize(deserializer).map(Self::from)
    }
}

impl<T: Empty + schemars::JsonSchema> schemars::JsonSchema for Sparse<T> {
    fn inline_schema() -> bool {
        T::inline_schema()
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        T::schema_name()
    }

    fn schema_id() -> std::borrow::Cow<'static, str> {
        T::schema_id()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        T::json_schema(generator)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;
    use serde_json::json;

    fn spec(extra: serde_json::Value) -> serde_json::Value {
        let mut spec = json!({"roleArn": "arn:aws:iam::123456789012:role/reader"});
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                s.insert(k.clone(), v.clone());
            }
        }
        spec
    }

    /// Runs the CRD's own CEL rules on a spec, as the API server would.
    fn cel(spec: serde_json::Value) -> Result<(), String> {
        crate::fixtures::cel(&AssumedRole::crd(), "AssumedRole", spec)
    }

    fn rust(spec: serde_json::Value) -> Result<(), InvalidSpec> {
        let spec: AssumedRoleSpec = serde_json::from_value(spec).map_err(|e| invalid("spec", e.to_string()))?;
        spec.validate()
    }

    #[test]
    fn a_secret_and_a_source_left_unset_take_one_word_each_and_read_as_empty() {
        let written = json!({"roleArn": "arn:aws:iam::123456789012:role/reader"});
        let mut spec: AssumedRoleSpec = serde_json::from_value(written.clone()).expect("a spec");
        assert!(spec.secret.0.is_none() && spec.source.0.is_none(), "nothing allocated");
        assert_eq!(std::mem::size_of_val(&spec.secret), std::mem::size_of::<usize>());
        assert_eq!(
            (spec.secret.name.as_deref(), spec.source.kind()),
            (None, SourceKind::Operator)
        );
        assert_eq!(
            serde_json::to_value(&spec).expect("json"),
            json!({"roleArn": written["roleArn"], "secret": {}})
        );

        // Written through, it holds what was written, and reads back alike.
        spec.secret.name = Some("billing".into());
        spec.source.assumed_role_ref = Some(AssumedRoleRef { name: "base".into() });
        let json = serde_json::to_value(&spec).expect("json");
        assert_eq!(
            (&json["secret"], &json["source"]),
            (
                &json!({"name": "billing"}),
                &json!({"assumedRoleRef": {"name": "base"}})
            )
        );
        let read: AssumedRoleSpec = serde_json::from_value(json).expect("a spec");
        assert_eq!(read, spec);
        assert!(read.secret.0.is_some() && read.source.0.is_some());

        // An object that spells out the empty struct is kept as unset.
        let spelled: AssumedRoleSpec =
            serde_json::from_value(json!({"roleArn": written["roleArn"], "secret": {"labels": {}}, "source": {}}))
                .expect("a spec");
        assert!(spelled.secret.0.is_none() && spelled.source.0.is_none());
    }

    #[test]
    fn an_image_pull_secret_takes_a_name_of_its_own() {
        let registries = json!([{"account": "123456789012", "region": "eu-west-1"}]);
        let role = "arn:aws:iam::123456789012:role/reader";
        let taken = "spec.imagePullSecret.name must not be the credentials Secret's name";
        // The AssumedRole the CEL fixture checks is named "x".
        for (spec, refused) in [
            (
                json!({"roleArn": role, "imagePullSecret": {"name": "ecr", "registries": registries}}),
                false,
            ),
            (
                json!({"roleArn": role, "imagePullSecret": {"name": "x", "registries": registries}}),
                true,
            ),
            (
                json!({"roleArn": role, "secret": {"name": "creds"}, "imagePullSecret": {"name": "creds", "registries": registries}}),
                true,
            ),
            (
                json!({"roleArn": role, "secret": {"name": "creds"}, "imagePullSecret": {"name": "x", "registries": registries}}),
                false,
            ),
        ] {
            let verdict = cel(spec.clone());
            assert_eq!(
                verdict.as_ref().err().is_some_and(|e| e.contains(taken)),
                refused,
                "{spec}: {verdict:?}"
            );
            assert_eq!(verdict.is_err(), refused, "{spec}: {verdict:?}");
        }
    }

    #[test]
    fn a_source_names_one_identity_and_web_identity_refuses_what_it_cannot_carry() {
        let role = "arn:aws:iam::123456789012:role/reader";
        for good in [
            json!({}),
            json!({"serviceAccountName": "app", "audience": "sts.example.com"}),
            json!({"secretRef": {"name": "keys", "accessKeyIdKey": "id"}}),
            json!({"assumedRoleRef": {"name": "base"}}),
        ] {
            let spec = json!({"roleArn": role, "source": good});
            assert_eq!(cel(spec.clone()), Ok(()), "{spec}");
            assert_eq!(rust(spec.clone()).map_err(|e| e.to_string()), Ok(()), "{spec}");
        }
        for (bad, field) in [
            (
                json!({"source": {"serviceAccountName": "app", "secretRef": {"name": "keys"}}}),
                "spec.source",
            ),
            (json!({"source": {"audience": "x"}}), "spec.source.audience"),
            (
                json!({"source": {"serviceAccountName": "App_1"}}),
                "spec.source.serviceAccountName",
            ),
            (
                json!({"source": {"secretRef": {"name": "Keys"}}}),
                "spec.source.secretRef.name",
            ),
            (
                json!({"source": {"serviceAccountName": "app"}, "tags": {"a": "b"}}),
                "spec.tags",
            ),
            (
                json!({"source": {"serviceAccountName": "app"}, "externalId": "abc"}),
                "spec.externalId",
            ),
        ] {
            let mut spec = bad.clone();
            spec["roleArn"] = json!(role);
            let from_cel = cel(spec.clone()).err().unwrap_or_default();
            assert!(from_cel.contains(field), "CEL on {bad}: {from_cel}");
            let from_rust = rust(spec)
                .map(|()| String::new())
                .unwrap_or_else(|e| e.field.to_string());
            assert!(from_rust.starts_with(field), "Rust on {bad}: {from_rust}");
        }
    }

    #[test]
    fn valid_role_arns_pass_both_cel_and_rust() {
        for arn in [
            "arn:aws:iam::123456789012:role/reader",
            "arn:aws-cn:iam::123456789012:role/reader",
            "arn:aws-us-gov:iam::123456789012:role/reader",
            "arn:aws:iam::123456789012:role/team/app/service-role+x=,.@_-",
        ] {
            let s = json!({"roleArn": arn});
            assert_eq!(cel(s.clone()), Ok(()), "{arn}");
            assert_eq!(rust(s), Ok(()), "{arn}");
        }
    }

    #[test]
    fn bad_role_arns_are_rejected_by_cel_and_rust_naming_the_field() {
        for arn in [
            "",
            "reader",
            "arn:aws:iam::12345:role/reader",
            "arn:aws:iam::123456789012:user/reader",
            "arn:aws:s3:::bucket",
            "arn:aws-xx:iam::123456789012:role/reader",
            "arn:aws:iam::123456789012:role/",
        ] {
            let s = json!({"roleArn": arn});
            let err = cel(s.clone()).expect_err(arn);
            assert!(err.contains("spec.roleArn"), "{err}");
            assert_eq!(rust(s).map_err(|e| e.field), Err("spec.roleArn"), "{arn}");
        }
    }

    #[test]
    fn duration_outside_sts_limits_is_rejected() {
        for (d, ok) in [
            (899, false),
            (900, true),
            (3600, true),
            (43200, true),
            (43201, false),
            (100, false),
        ] {
            let s = spec(json!({"durationSeconds": d}));
            assert_eq!(cel(s.clone()).is_ok(), ok, "{d}");
            assert_eq!(rust(s).is_ok(), ok, "{d}");
        }
        let err = cel(spec(json!({"durationSeconds": 100}))).expect_err("100 s");
        assert!(err.contains("spec.durationSeconds"), "{err}");
    }

    #[test]
    fn refresh_before_and_percentage_are_exclusive() {
        let both = spec(json!({"refreshBefore": "20m", "refreshBeforePercentage": 30}));
        let err = cel(both.clone()).expect_err("both");
        assert!(err.contains("mutually exclusive"), "{err}");
        assert_eq!(rust(both).map_err(|e| e.field), Err("spec.refreshBefore"));
        assert_eq!(cel(spec(json!({"refreshBefore": "1h30m"}))), Ok(()));
        assert_eq!(cel(spec(json!({"refreshBeforePercentage": 30}))), Ok(()));
    }

    #[test]
    fn durations_parse_in_hour_minute_second_order() {
        assert_eq!(parse_duration("20m"), Some(SignedDuration::from_mins(20)));
        assert_eq!(parse_duration("1h30m"), Some(SignedDuration::from_mins(90)));
        assert_eq!(parse_duration("1h2m3s"), Some(SignedDuration::from_secs(3723)));
        for bad in ["", "0s", "m", "20", "5m1h", "1.5h", "-5m", "20 m", "1d", "1234567890s"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
        assert!(cel(spec(json!({"refreshBefore": "5m1h"}))).is_err());
    }

    #[test]
    fn policy_must_be_a_json_object() {
        assert_eq!(rust(spec(json!({"policy": "{\"Version\":\"2012-10-17\"}"}))), Ok(()));
        assert_eq!(
            rust(spec(json!({"policy": "{not json"}))).map_err(|e| e.field),
            Err("spec.policy")
        );
        assert_eq!(
            rust(spec(json!({"policy": "[1]"}))).map_err(|e| e.field),
            Err("spec.policy")
        );
    }

    #[test]
    fn transitive_tag_keys_must_be_tags() {
        let s = spec(json!({"tags": {"team": "billing"}, "transitiveTagKeys": ["team"]}));
        assert_eq!(cel(s.clone()), Ok(()));
        assert_eq!(rust(s), Ok(()));
        let s = spec(json!({"tags": {"team": "billing"}, "transitiveTagKeys": ["owner"]}));
        assert!(cel(s.clone()).is_err());
        assert_eq!(rust(s).map_err(|e| e.field), Err("spec.transitiveTagKeys"));
    }

    #[test]
    fn policy_arns_session_names_and_external_ids_follow_sts_rules() {
        assert_eq!(
            cel(spec(json!({"policyArns": ["arn:aws:iam::aws:policy/ReadOnlyAccess"]}))),
            Ok(())
        );
        assert!(cel(spec(json!({"policyArns": ["ReadOnlyAccess"]}))).is_err());
        assert_eq!(
            rust(spec(json!({"policyArns": ["ReadOnlyAccess"]}))).map_err(|e| e.field),
            Err("spec.policyArns")
        );
        assert!(cel(spec(json!({"roleSessionName": "has space"}))).is_err());
        assert_eq!(
            rust(spec(json!({"roleSessionName": "x"}))).map_err(|e| e.field),
            Err("spec.roleSessionName")
        );
        assert!(cel(spec(json!({"externalId": "x"}))).is_err());
        assert_eq!(rust(spec(json!({"externalId": "tenant:42/a"}))), Ok(()));
        assert!(cel(spec(json!({"secret": {"mountPath": "relative"}}))).is_err());
        assert!(cel(spec(json!({"secret": {"name": "Not_A_Name"}}))).is_err());
    }

    #[test]
    fn secret_labels_follow_the_api_servers_rules_in_cel_and_rust() {
        let long = "v".repeat(64);
        for (labels, ok) in [
            (json!({"team": "billing"}), true),
            (json!({"example.com/team": "billing", "a": ""}), true),
            (json!({"team": "a-b_c.d"}), true),
            (json!({"has space": "x"}), false),
            (json!({"team": "has space"}), false),
            (json!({"team": long}), false),
            (json!({"team": "-leading"}), false),
            (json!({"Example.com/team": "x"}), false),
            (json!({"/team": "x"}), false),
            (json!({"sts.refresh.dev/expiration": "x"}), false),
        ] {
            let s = spec(json!({"secret": {"labels": labels}}));
            let (cel, rust) = (cel(s.clone()), rust(s));
            assert_eq!(cel.is_ok(), ok, "CEL on {labels}: {cel:?}");
            assert_eq!(rust.is_ok(), ok, "validate on {labels}: {rust:?}");
            if !ok {
                assert!(cel.unwrap_err().contains("spec.secret.labels"), "{labels}");
                assert_eq!(rust.map_err(|e| e.field), Err("spec.secret.labels"));
            }
        }
        // The exact DNS-subdomain prefix is checked by validate().
        let s = spec(json!({"secret": {"labels": {"a..b/team": "x"}}}));
        assert_eq!(rust(s).map_err(|e| e.field), Err("spec.secret.labels"));
    }

    #[test]
    fn secret_annotations_need_qualified_keys_and_fit_the_api_servers_size_limit() {
        let s = spec(json!({"secret": {"annotations": {"example.com/note": "any text, even with spaces"}}}));
        assert_eq!(cel(s.clone()), Ok(()));
        assert_eq!(rust(s), Ok(()));
        let s = spec(json!({"secret": {"annotations": {"a note": "x"}}}));
        assert!(
            cel(s.clone())
                .expect_err("a bad key")
                .contains("spec.secret.annotations")
        );
        assert_eq!(rust(s).map_err(|e| e.field), Err("spec.secret.annotations"));
        // Two values that fit one by one but not together; in bytes, as the
        // API server counts them ("é" is two).
        let half = "é".repeat(MAX_USER_ANNOTATIONS_BYTES / 4 + 1);
        let s = spec(json!({"secret": {"annotations": {"a": half, "b": half}}}));
        assert!(cel(s.clone()).expect_err("too large").contains("254 KiB"));
        assert_eq!(rust(s).map_err(|e| e.field), Err("spec.secret.annotations"));
    }

    #[test]
    fn the_policy_length_is_counted_in_characters_as_sts_does() {
        // 1,509 characters, 3,009 bytes.
        let policy = format!(r#"{{"Sid":"{}"}}"#, "é".repeat(1499));
        assert_eq!(policy.chars().count(), 1509);
        // The API server's CEL counts characters too, as the end-to-end test
        // shows; the client-side CEL library counts bytes, so it is left out.
        assert_eq!(rust(spec(json!({ "policy": policy }))), Ok(()));
        let policy = format!(r#"{{"Sid":"{}"}}"#, "é".repeat(2040));
        let s = spec(json!({ "policy": policy }));
        assert!(cel(s.clone()).is_err());
        assert_eq!(rust(s).map_err(|e| e.field), Err("spec.policy"));
    }

    #[test]
    fn a_mount_path_is_a_plain_absolute_path_in_cel_and_rust() {
        for good in [
            "/var/run/secrets/aws",
            "/aws/",
            "/a",
            "/opt/app_1/creds-v2.0",
            "/.hidden/x..y/...",
        ] {
            let s = spec(json!({"secret": {"mountPath": good}}));
            assert_eq!(cel(s.clone()), Ok(()), "CEL on {good:?}");
            assert_eq!(rust(s), Ok(()), "validate on {good:?}");
        }
        for bad in [
            "/var/run/secrets/aws;id>/tmp/x;#",
            "/aws$(id)",
            "/aws`id`",
            "/aws|id",
            "/aws&id",
            "/aws'x",
            "/aws\"x",
            "/aws\tx",
            "/aws\rx",
            "/aws\nx",
            "/a b",
            "/aws/../etc",
            "/aws/..",
            "/aws/./x",
            "//aws",
            "/",
            "aws",
            "/aws/\u{e9}",
            "/aws/*",
        ] {
            let s = spec(json!({"secret": {"mountPath": bad}}));
            let from_cel = cel(s.clone()).expect_err(bad);
            assert!(from_cel.contains("spec.secret.mountPath"), "{bad:?}: {from_cel}");
            let from_rust = rust(s).expect_err(bad);
            assert_eq!(from_rust.field, "spec.secret.mountPath", "{bad:?}");
            // The message never repeats what a shell would run.
            assert!(bad.len() < 5 || !from_rust.reason.contains(bad), "{from_rust}");
        }
    }

    /// Values on both sides of each rule that the schema and CEL enforce,
    /// with the field each must be refused under. Every one is judged the
    /// same by the CRD's CEL and by `validate` (the end-to-end catalogue and
    /// the generated specs run the same against the real API server, with
    /// the schema's own limits too).
    #[test]
    fn cel_and_validate_agree_on_each_rule() {
        let long_prefix = format!("{}/a", "a".repeat(254));
        for (extra, refused_under) in [
            (json!({"tags": {"team\tx": "a"}}), Some("spec.tags")),
            (json!({"tags": {"team;x": "a"}}), Some("spec.tags")),
            (json!({"tags": {"team": "a\u{0}b"}}), Some("spec.tags")),
            (json!({"tags": {"équipe name": "valeur é"}}), None),
            (json!({"tags": {"": "a"}}), Some("spec.tags")),
            (json!({"refreshBefore": "0s"}), Some("spec.refreshBefore")),
            (json!({"refreshBefore": "0h00m"}), Some("spec.refreshBefore")),
            (json!({"refreshBefore": "9999999999h"}), Some("spec.refreshBefore")),
            (json!({"refreshBefore": "999999999h"}), None),
            (
                json!({"secret": {"labels": {"a..b/team": "x"}}}),
                Some("spec.secret.labels"),
            ),
            (
                json!({"secret": {"annotations": {"a..b/team": "x"}}}),
                Some("spec.secret.annotations"),
            ),
            (
                json!({"secret": {"annotations": {long_prefix.clone(): "x"}}}),
                Some("spec.secret.annotations"),
            ),
            (json!({"secret": {"profile": "a b"}}), Some("spec.secret.profile")),
            (json!({"secret": {"name": "-x"}}), Some("spec.secret.name")),
            (
                json!({"source": {"secretRef": {"name": "k", "accessKeyIdKey": "a b"}}}),
                Some("spec.source.secretRef.accessKeyIdKey"),
            ),
            (
                json!({"source": {"secretRef": {"name": "k", "secretAccessKeyKey": "a/b"}}}),
                Some("spec.source.secretRef.secretAccessKeyKey"),
            ),
            (
                json!({"source": {"serviceAccountName": "a", "audience": "é".repeat(200)}}),
                None,
            ),
        ] {
            let s = spec(extra.clone());
            let (from_cel, from_rust) = (cel(s.clone()), rust(s));
            match refused_under {
                None => {
                    assert_eq!(from_cel, Ok(()), "CEL on {extra}");
                    assert_eq!(from_rust, Ok(()), "validate on {extra}");
                }
                Some(field) => {
                    let from_cel = from_cel.expect_err("CEL refuses");
                    assert!(from_cel.contains(field), "CEL on {extra}: {from_cel}");
                    assert_eq!(from_rust.map_err(|e| e.field), Err(field), "validate on {extra}");
                }
            }
        }
    }

    #[test]
    fn default_session_names_fit_sts_rules() {
        assert_eq!(default_session_name("billing", "reader"), "billing.reader");
        let long = default_session_name(&"n".repeat(63), &"r".repeat(253));
        assert_eq!(long.len(), 64);
        assert!(SESSION_NAME.is_match(&long));
        assert_ne!(long, default_session_name(&"n".repeat(63), &"r".repeat(252)));
        assert!(SESSION_NAME.is_match(&default_session_name("", "")));
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        fn value() -> impl Strategy<Value = serde_json::Value> {
            let leaf = prop_oneof![
                Just(serde_json::Value::Null),
                any::<bool>().prop_map(serde_json::Value::from),
                any::<i64>().prop_map(serde_json::Value::from),
                "[ -~]{0,80}".prop_map(serde_json::Value::from),
                "arn:aws:iam::[0-9]{12}:role/[ -~]{0,20}".prop_map(serde_json::Value::from),
            ];
            leaf.prop_recursive(3, 24, 6, |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
                    proptest::collection::btree_map("[a-zA-Z]{1,12}", inner, 0..6)
                        .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
                ]
            })
        }

        const FIELDS: [&str; 14] = [
            "roleArn",
            "durationSeconds",
            "roleSessionName",
            "externalId",
            "policy",
            "policyArns",
            "tags",
            "transitiveTagKeys",
            "sourceIdentity",
            "refreshBefore",
            "refreshBeforePercentage",
            "secret",
            "suspend",
            "unknown",
        ];

        proptest! {
            /// Random JSON shaped like a spec: it either does not
            /// deserialize, or validation says yes, or names a field of the
            /// spec. Never a panic.
            #[test]
            fn validation_of_any_spec_names_a_field_or_passes(
                fields in proptest::collection::btree_map(proptest::sample::select(&FIELDS[..]), value(), 0..10),
                arn in "arn:aws:iam::[0-9]{12}:role/[a-z]{1,8}",
            ) {
                let mut spec: serde_json::Map<String, serde_json::Value> =
                    fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
                spec.entry("roleArn").or_insert_with(|| serde_json::Value::from(arn));
                if let Ok(spec) = serde_json::from_value::<AssumedRoleSpec>(serde_json::Value::Object(spec)) {
                    match spec.validate().and_then(|()| spec.refresh_before().map(|_| ())) {
                        Ok(()) => {}
                        Err(invalid) => prop_assert!(invalid.field.starts_with("spec."), "{invalid}"),
                    }
                }
            }
        }
    }
}
