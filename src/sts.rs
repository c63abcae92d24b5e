//! The calls to AWS STS, behind a small trait so that tests can swap the
//! endpoint or the whole service.
//!
//! The endpoint, region and base credentials come from the standard AWS
//! settings (`AWS_ENDPOINT_URL_STS`, `AWS_ENDPOINT_URL`, `AWS_REGION`, IRSA,
//! EKS Pod Identity, ...), so the same binary talks to real AWS or to a local
//! STS.

use std::{future::Future, pin::Pin};

use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_sts::{
    config::http::HttpResponse,
    error::{ProvideErrorMetadata, SdkError},
    types::{PolicyDescriptorType, Tag},
};
use jiff::Timestamp;

pub use crate::credentials::{AssumeRoleRequest, AssumedSession, Credentials};

/// Why an STS call failed, sorted into what the operator does about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StsError {
    /// The operator's identity may not assume the role (or the role does
    /// not trust it).
    #[error("access denied: {0}")]
    AccessDenied(String),
    /// STS asked us to slow down.
    #[error("throttled: {0}")]
    Throttled(String),
    /// STS rejected the request's parameters.
    #[error("rejected by STS: {0}")]
    InvalidRequest(String),
    /// STS could not be reached or failed on its side.
    #[error("STS unavailable: {0}")]
    Unavailable(String),
    /// The operator has no credentials of its own to call STS with: no
    /// provider of the default chain (environment, config files, IRSA, EKS
    /// Pod Identity, instance metadata) gave any.
    #[error("no AWS credentials for the operator: {0}")]
    NoCredentials(String),
}

impl StsError {
    /// What this error says of STS's health: `Some(false)` when STS is down
    /// or throttling, `None` when STS was never reached (no credentials to
    /// sign with), `Some(true)` when STS answered (a refusal is an answer).
    pub fn sts_answered(&self) -> Option<bool> {
        match self {
            Self::Throttled(_) | Self::Unavailable(_) => Some(false),
            Self::NoCredentials(_) => None,
            _ => Some(true),
        }
    }

    /// The condition reason and Event reason for this error.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::AccessDenied(_) => "AccessDenied",
            Self::Throttled(_) => "Throttled",
            Self::InvalidRequest(_) => "InvalidSpec",
            Self::Unavailable(_) => "STSUnavailable",
            Self::NoCredentials(_) => "NoCredentials",
        }
    }
}

/// Boxed future returned by [`Sts`] methods.
pub type StsFuture<'a> = Pin<Box<dyn Future<Output = Result<AssumedSession, StsError>> + Send + 'a>>;

/// Whose identity assumes the role.
#[derive(Clone, PartialEq, Eq)]
pub enum Signer {
    /// The operator's own, from the default AWS chain.
    Operator,
    /// Access keys: an IAM user's from a Secret, or another AssumedRole's
    /// temporary ones (role chaining).
    Keys {
        /// The access key ID.
        access_key_id: String,
        /// The secret access key.
        secret_access_key: String,
        /// The session token of temporary keys.
        session_token: Option<String>,
    },
    /// A ServiceAccount token: `AssumeRoleWithWebIdentity`, which is not
    /// signed at all.
    WebIdentity(String),
}

impl std::fmt::Debug for Signer {
    // Never the keys or the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Operator => "Operator",
            Self::Keys { .. } => "Keys",
            Self::WebIdentity(_) => "WebIdentity",
        })
    }
}

/// The STS operations the controller needs.
pub trait Sts: Send + Sync {
    /// Assumes a role as `signer`: `AssumeRole`, or
    /// `AssumeRoleWithWebIdentity` for a web identity (which takes no tags,
    /// external ID or source identity).
    fn assume_role<'a>(&'a self, request: &'a AssumeRoleRequest, signer: &'a Signer) -> StsFuture<'a>;
}

/// [`Sts`] backed by the AWS SDK.
#[derive(Clone, Debug)]
pub struct AwsSts {
    client: aws_sdk_sts::Client,
}

impl AwsSts {
    /// Builds a client from the standard AWS settings of the environment.
    pub async fn from_env() -> Self {
        Self::from_config(&aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await)
    }

    /// Builds a client from loaded AWS settings (shared with the ECR
    /// client: one HTTP client and one set of root certificates).
    pub fn from_config(config: &aws_config::SdkConfig) -> Self {
        Self {
            client: aws_sdk_sts::Client::new(config),
        }
    }

    /// Where the default chain takes the operator's own credentials from and
    /// where it sends STS calls, in words for the start-up log; never a
    /// credential.
    pub fn describe_env() -> (String, String) {
        let var = |k: &str| std::env::var(k).ok();
        (credential_source(var), sts_endpoint(var))
    }

    /// Wraps an existing client.
    pub fn new(client: aws_sdk_sts::Client) -> Self {
        Self { client }
    }
}

/// Where the default AWS credential chain will take credentials from,
/// judged from the environment in the chain's own order (environment,
/// profile, web identity, container endpoint, instance metadata). Names
/// variables, a profile or a role ARN, never a credential.
pub fn credential_source(var: impl Fn(&str) -> Option<String>) -> String {
    let value = |k: &str| var(k).filter(|v| !v.is_empty());
    if value("AWS_ACCESS_KEY_ID").is_some() && value("AWS_SECRET_ACCESS_KEY").is_some() {
        return "environment variables AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY".into();
    }
    if let Some(profile) = value("AWS_PROFILE") {
        return format!("profile {profile} of the shared config files");
    }
    if value("AWS_WEB_IDENTITY_TOKEN_FILE").is_some() {
        let role = value("AWS_ROLE_ARN").unwrap_or_else(|| "(AWS_ROLE_ARN unset)".into());
        return format!("web identity token (IRSA) for role {role}");
    }
    if value("AWS_CONTAINER_CREDENTIALS_FULL_URI").is_some()
        || value("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI").is_some()
    {
        return "the container credentials endpoint (EKS Pod Identity or ECS)".into();
    }
    "the shared config files' default profile, else the instance metadata service".into()
}

/// Where STS calls go: the endpoint settings the SDK honours, else the
/// regional endpoint of `AWS_REGION`.
pub fn sts_endpoint(var: impl Fn(&str) -> Option<String>) -> String {
    let value = |k: &str| var(k).filter(|v| !v.is_empty());
    value("AWS_ENDPOINT_URL_STS")
        .or_else(|| value("AWS_ENDPOINT_URL"))
        .or_else(|| {
            value("AWS_REGION")
                .or_else(|| value("AWS_DEFAULT_REGION"))
                .map(|r| format!("the regional endpoint of {r}"))
        })
        .unwrap_or_else(|| "the default endpoint (no AWS_REGION)".into())
}

impl Sts for AwsSts {
    fn assume_role<'a>(&'a self, r: &'a AssumeRoleRequest, signer: &'a Signer) -> StsFuture<'a> {
        Box::pin(async move {
            let policy_arns: Vec<PolicyDescriptorType> = r
                .policy_arns
                .iter()
                .map(|arn| PolicyDescriptorType::builder().arn(arn).build())
                .collect();
            let (creds, assumed_role_arn, source_identity) = match signer {
                Signer::WebIdentity(token) => {
                    let out = self
                        .client
                        .assume_role_with_web_identity()
                        .role_arn(&r.role_arn)
                        .role_session_name(&r.role_session_name)
                        .web_identity_token(token)
                        .duration_seconds(r.duration_seconds)
                        .set_policy(r.policy.clone())
                        .set_policy_arns(Some(policy_arns).filter(|p| !p.is_empty()))
                        .send()
                        .await
                        .map_err(classify)?;
                    (
                        out.credentials,
                        out.assumed_role_user.map(|u| u.arn),
                        out.source_identity,
                    )
                }
                Signer::Operator | Signer::Keys { .. } => {
                    let mut call = self
                        .client
                        .assume_role()
                        .role_arn(&r.role_arn)
                        .role_session_name(&r.role_session_name)
                        .duration_seconds(r.duration_seconds)
                        .set_external_id(r.external_id.clone())
                        .set_policy(r.policy.clone())
                        .set_policy_arns(Some(policy_arns).filter(|p| !p.is_empty()))
                        .set_source_identity(r.source_identity.clone());
                    for (key, value) in &r.tags {
                        let tag = Tag::builder()
                            .key(key)
                            .value(value)
                            .build()
                            .map_err(|e| StsError::InvalidRequest(e.to_string()))?;
                        call = call.tags(tag);
                    }
                    for key in &r.transitive_tag_keys {
                        call = call.transitive_tag_keys(key);
                    }
                    let out = match signer {
                        Signer::Keys {
                            access_key_id,
                            secret_access_key,
                            session_token,
                        } => {
                            let keys = aws_credential_types::Credentials::new(
                                access_key_id,
                                secret_access_key,
                                session_token.clone(),
                                None,
                                "assumed-role-operator-source",
                            );
                            call.customize()
                                .config_override(aws_sdk_sts::config::Config::builder().credentials_provider(keys))
                                .send()
                                .await
                        }
                        _ => call.send().await,
                    }
                    .map_err(classify)?;
                    (
                        out.credentials,
                        out.assumed_role_user.map(|u| u.arn),
                        out.source_identity,
                    )
                }
            };
            let creds = creds.ok_or_else(|| StsError::Unavailable("response carried no credentials".into()))?;
            let expiration = Timestamp::from_second(creds.expiration.secs())
                .map_err(|e| StsError::Unavailable(format!("expiration out of range: {e}")))?;
            Ok(AssumedSession {
                credentials: Credentials {
                    access_key_id: creds.access_key_id,
                    secret_access_key: creds.secret_access_key,
                    session_token: creds.session_token,
                    expiration,
                },
                assumed_role_arn,
                source_identity,
            })
        })
    }
}

/// Sorts an SDK error by its code. The messages STS returns never carry
/// credentials; the SDK's own errors are reduced to their kind and code.
pub(crate) fn classify<E>(err: SdkError<E, HttpResponse>) -> StsError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    if let Some(problem) = credentials_problem(&err) {
        return StsError::NoCredentials(problem);
    }
    let (code, message, http_status) = match &err {
        SdkError::ServiceError(service) => {
            let modeled = service.err();
            // An error the SDK could not read (an STS-compatible endpoint
            // with another envelope, such as `<Errors><Error>`) still says
            // what it is in its body; a modeled error without metadata names
            // its kind first in its Display.
            let body = service
                .raw()
                .body()
                .bytes()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            let tag = |name: &str| {
                let open = format!("<{name}>");
                let start = body.find(&open)? + open.len();
                let end = body[start..].find(&format!("</{name}>"))?;
                Some(body[start..start + end].trim().to_string()).filter(|t| !t.is_empty())
            };
            let described = modeled.to_string();
            let code = modeled
                .code()
                .map(str::to_string)
                .or_else(|| tag("Code"))
                .or_else(|| {
                    described
                        .split_once(':')
                        .map(|(kind, _)| kind.trim().to_string())
                        .filter(|k| !k.contains(' '))
                })
                .unwrap_or_else(|| "Unknown".into());
            let message = modeled
                .message()
                .map(str::to_string)
                .or_else(|| tag("Message"))
                .or_else(|| described.split_once(':').map(|(_, m)| m.trim().to_string()))
                .unwrap_or_default();
            (code, message, service.raw().status().as_u16())
        }
        SdkError::TimeoutError(_) => return StsError::Unavailable("request timed out".into()),
        SdkError::DispatchFailure(_) => return StsError::Unavailable("could not connect to STS".into()),
        SdkError::ResponseError(_) => return StsError::Unavailable("unreadable response from STS".into()),
        SdkError::ConstructionFailure(_) => return StsError::InvalidRequest("request could not be built".into()),
        _ => return StsError::Unavailable("unknown SDK error".into()),
    };
    let text = if message.is_empty() {
        format!("{code} (HTTP {http_status})")
    } else {
        format!("{code}: {message}")
    };
    match code.as_str() {
        // A token the role's identity provider does not accept is the
        // trust policy's refusal, as much as an AccessDenied is.
        "AccessDenied"
        | "AccessDeniedException"
        | "InvalidClientTokenId"
        | "ExpiredToken"
        | "ExpiredTokenException"
        | "SignatureDoesNotMatch"
        | "UnrecognizedClientException"
        | "InvalidIdentityToken"
        | "IDPRejectedClaim" => StsError::AccessDenied(text),
        "Throttling" | "ThrottlingException" | "RequestLimitExceeded" | "TooManyRequestsException" => {
            StsError::Throttled(text)
        }
        "ValidationError"
        | "MalformedPolicyDocument"
        | "MalformedPolicyDocumentException"
        | "PackedPolicyTooLarge"
        | "PackedPolicyTooLargeException"
        | "InvalidParameterValue"
        | "RegionDisabledException" => StsError::InvalidRequest(text),
        // An error body the SDK could not read: go by the HTTP status.
        _ => match http_status {
            401 | 403 => StsError::AccessDenied(text),
            429 => StsError::Throttled(text),
            400 => StsError::InvalidRequest(text),
            _ => StsError::Unavailable(text),
        },
    }
}

/// The SDK's own explanation, when the call failed because the operator's
/// credentials could not be loaded. The SDK reports that as a dispatch
/// failure; the credentials error is in its chain of causes.
fn credentials_problem(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut source = Some(err);
    while let Some(e) = source {
        if let Some(creds) = e.downcast_ref::<CredentialsError>() {
            // The error and its causes, as the SDK words them. None of them
            // carries a credential.
            let mut text = creds.to_string();
            let mut cause = std::error::Error::source(creds);
            while let Some(c) = cause {
                text.push_str(": ");
                text.push_str(&c.to_string());
                cause = c.source();
            }
            return Some(text);
        }
        source = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use aws_sdk_sts::{
        Client,
        config::{http::HttpResponse, retry::RetryConfig},
        operation::assume_role::{AssumeRoleError, AssumeRoleOutput},
        types::{AssumedRoleUser, Credentials as StsCredentials, error::MalformedPolicyDocumentException},
    };
    use aws_smithy_mocks::{RuleMode, mock, mock_client};
    use aws_smithy_types::{DateTime, body::SdkBody};

    use super::*;

    #[test]
    fn only_a_call_that_reached_sts_tells_of_its_health() {
        assert_eq!(StsError::Throttled("x".into()).sts_answered(), Some(false));
        assert_eq!(StsError::Unavailable("x".into()).sts_answered(), Some(false));
        assert_eq!(StsError::AccessDenied("x".into()).sts_answered(), Some(true));
        assert_eq!(StsError::InvalidRequest("x".into()).sts_answered(), Some(true));
        assert_eq!(StsError::NoCredentials("x".into()).sts_answered(), None);
    }

    fn request() -> AssumeRoleRequest {
        AssumeRoleRequest {
            role_arn: "arn:aws:iam::123456789012:role/reader".into(),
            role_session_name: "ns.reader".into(),
            duration_seconds: 900,
            external_id: None,
            policy: None,
            policy_arns: vec![],
            tags: vec![("team".into(), "billing".into())],
            transitive_tag_keys: vec![],
            source_identity: None,
            source: None,
        }
    }

    fn sts_error(status: u16, code: &str) -> impl Fn() -> HttpResponse + Send + Sync + 'static {
        let body = format!(
            "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error><Type>Sender</Type>\
             <Code>{code}</Code><Message>from STS</Message></Error><RequestId>r</RequestId></ErrorResponse>"
        );
        move || HttpResponse::new(status.try_into().expect("status"), SdkBody::from(body.clone()))
    }

    async fn call(rule: aws_smithy_mocks::Rule) -> Result<AssumedSession, StsError> {
        let client = mock_client!(aws_sdk_sts, RuleMode::Sequential, &[&rule], |c| c
            .retry_config(RetryConfig::disabled()));
        AwsSts::new(client).assume_role(&request(), &Signer::Operator).await
    }

    #[tokio::test]
    async fn sts_error_codes_become_condition_reasons() {
        for (status, code, reason) in [
            (403, "AccessDenied", "AccessDenied"),
            (400, "Throttling", "Throttled"),
            (400, "ExpiredToken", "AccessDenied"),
            (400, "ValidationError", "InvalidSpec"),
            (500, "InternalFailure", "STSUnavailable"),
        ] {
            let err = call(mock!(Client::assume_role).then_http_response(sts_error(status, code))).await;
            assert_eq!(err.map_err(|e| e.reason()).err(), Some(reason), "{status} {code}");
        }
    }

    #[tokio::test]
    async fn missing_operator_credentials_are_no_credentials_with_the_sdks_words() {
        // What the default chain answers when no source has credentials;
        // the end-to-end test runs the real chain.
        let chain = aws_credential_types::credential_fn::provide_credentials_fn(|| async {
            Err(CredentialsError::not_loaded(
                "no providers in chain provided credentials",
            ))
        });
        let config = aws_sdk_sts::Config::builder()
            .behavior_version(aws_sdk_sts::config::BehaviorVersion::latest())
            .region(aws_sdk_sts::config::Region::new("us-east-1"))
            .endpoint_url("http://127.0.0.1:9")
            .credentials_provider(chain)
            .retry_config(RetryConfig::disabled())
            .build();
        let err = AwsSts::new(Client::from_conf(config))
            .assume_role(&request(), &Signer::Operator)
            .await
            .expect_err("no credentials");
        assert_eq!(err.reason(), "NoCredentials", "{err}");
        assert!(
            err.to_string().contains("no providers in chain provided credentials"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn an_unreachable_sts_is_unavailable() {
        let config = aws_sdk_sts::Config::builder()
            .behavior_version(aws_sdk_sts::config::BehaviorVersion::latest())
            .region(aws_sdk_sts::config::Region::new("us-east-1"))
            .endpoint_url("http://127.0.0.1:9")
            .credentials_provider(aws_sdk_sts::config::Credentials::for_tests())
            .retry_config(RetryConfig::disabled())
            .build();
        let err = AwsSts::new(Client::from_conf(config))
            .assume_role(&request(), &Signer::Operator)
            .await
            .expect_err("nothing listens on port 9");
        assert_eq!(err.reason(), "STSUnavailable", "{err}");
    }

    #[tokio::test]
    async fn an_unreadable_error_body_is_judged_by_its_http_status() {
        for (status, reason) in [(403, "AccessDenied"), (429, "Throttled"), (502, "STSUnavailable")] {
            let rule = mock!(Client::assume_role).then_http_response(move || {
                HttpResponse::new(status.try_into().expect("status"), SdkBody::from("<html>"))
            });
            assert_eq!(call(rule).await.map_err(|e| e.reason()).err(), Some(reason), "{status}");
        }
    }

    #[tokio::test]
    async fn an_error_in_another_envelope_is_read_from_its_body() {
        // What moto answers for a key it does not know: <Errors><Error>,
        // which the SDK's STS parser does not read.
        let body = "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<ErrorResponse><Errors><Error>\
                    <Code>InvalidClientTokenId</Code><Message>The security token included in the request is \
                    invalid.</Message><Type>Sender</Type></Error></Errors></ErrorResponse>";
        let rule = mock!(Client::assume_role)
            .then_http_response(move || HttpResponse::new(403.try_into().expect("status"), SdkBody::from(body)));
        let err = call(rule).await.expect_err("an error");
        assert_eq!(
            err,
            StsError::AccessDenied(
                "InvalidClientTokenId: The security token included in the request is invalid.".into()
            )
        );
    }

    #[tokio::test]
    async fn a_modeled_error_is_classified_by_its_code() {
        let rule = mock!(Client::assume_role).then_error(|| {
            AssumeRoleError::MalformedPolicyDocumentException(
                MalformedPolicyDocumentException::builder()
                    .message("bad policy")
                    .build(),
            )
        });
        let err = call(rule).await.expect_err("an error");
        assert_eq!(err.reason(), "InvalidSpec");
        assert!(err.to_string().contains("bad policy"), "{err}");
    }

    #[tokio::test]
    async fn a_success_carries_the_expiration_sts_returned_and_the_session_arn() {
        let rule = mock!(Client::assume_role)
            .match_requests(|r| r.duration_seconds() == Some(900) && r.tags().len() == 1)
            .then_output(|| {
                AssumeRoleOutput::builder()
                    .credentials(
                        StsCredentials::builder()
                            .access_key_id("ASIAEXAMPLE")
                            .secret_access_key("secret")
                            .session_token("token")
                            .expiration(DateTime::from_secs(1_900_000_000))
                            .build()
                            .expect("credentials"),
                    )
                    .assumed_role_user(
                        AssumedRoleUser::builder()
                            .assumed_role_id("AROA:ns.reader")
                            .arn("arn:aws:sts::123456789012:assumed-role/reader/ns.reader")
                            .build()
                            .expect("user"),
                    )
                    .build()
            });
        let session = call(rule).await.expect("a session");
        assert_eq!(session.credentials.expiration.as_second(), 1_900_000_000);
        assert_eq!(
            session.assumed_role_arn.as_deref(),
            Some("arn:aws:sts::123456789012:assumed-role/reader/ns.reader")
        );
        let debug = format!("{:?}", session.credentials);
        assert!(
            !debug.contains("secret") && !debug.contains("token") && !debug.contains("ASIAEXAMPLE"),
            "{debug}"
        );
    }

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_string())
    }

    #[test]
    fn the_credential_source_follows_the_chains_order_and_names_no_secret() {
        let keys = [("AWS_ACCESS_KEY_ID", "AKIAXX"), ("AWS_SECRET_ACCESS_KEY", "shh")];
        let source = credential_source(env(&[
            ("AWS_ACCESS_KEY_ID", "AKIAXX"),
            ("AWS_SECRET_ACCESS_KEY", "shh"),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", "/t"),
        ]));
        assert_eq!(
            source,
            "environment variables AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        );
        assert!(keys.iter().all(|(_, v)| !source.contains(v)));
        assert_eq!(
            credential_source(env(&[
                ("AWS_WEB_IDENTITY_TOKEN_FILE", "/t"),
                ("AWS_ROLE_ARN", "arn:aws:iam::1:role/op")
            ])),
            "web identity token (IRSA) for role arn:aws:iam::1:role/op"
        );
        assert_eq!(
            credential_source(env(&[("AWS_PROFILE", "ops"), ("AWS_WEB_IDENTITY_TOKEN_FILE", "/t")])),
            "profile ops of the shared config files"
        );
        assert_eq!(
            credential_source(env(&[(
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                "http://169.254.170.23/v1/credentials"
            )])),
            "the container credentials endpoint (EKS Pod Identity or ECS)"
        );
        assert!(credential_source(env(&[("AWS_ACCESS_KEY_ID", "AKIAXX")])).contains("instance metadata"));
    }

    #[test]
    fn the_sts_endpoint_honours_the_sdks_settings() {
        assert_eq!(
            sts_endpoint(env(&[
                ("AWS_ENDPOINT_URL", "http://a"),
                ("AWS_ENDPOINT_URL_STS", "http://b")
            ])),
            "http://b"
        );
        assert_eq!(sts_endpoint(env(&[("AWS_ENDPOINT_URL", "http://a")])), "http://a");
        assert_eq!(
            sts_endpoint(env(&[("AWS_REGION", "eu-west-1")])),
            "the regional endpoint of eu-west-1"
        );
        assert_eq!(sts_endpoint(env(&[])), "the default endpoint (no AWS_REGION)");
    }
}
