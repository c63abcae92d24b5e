//! ECR's `GetAuthorizationToken`, behind a small trait so that tests can
//! swap it.

use std::{future::Future, pin::Pin};

use base64::Engine as _;
use jiff::Timestamp;

use super::Token;
use crate::{api::EcrRegistry, credentials::Credentials, sts::StsError};

/// Boxed future returned by [`Ecr`].
pub type EcrFuture<'a> = Pin<Box<dyn Future<Output = Result<Vec<Token>, StsError>> + Send + 'a>>;

/// The ECR operation the operator needs.
pub trait Ecr: Send + Sync {
    /// Tokens for `registries`, all of `region`, asked with `credentials`.
    fn tokens<'a>(
        &'a self,
        credentials: &'a Credentials,
        region: &'a str,
        registries: &'a [EcrRegistry],
    ) -> EcrFuture<'a>;
}

/// [`Ecr`] backed by the AWS SDK, with the environment's settings
/// (`AWS_ENDPOINT_URL_ECR` or `AWS_ENDPOINT_URL`, retries, timeouts).
#[derive(Clone, Debug)]
pub struct AwsEcr {
    config: aws_config::SdkConfig,
}

impl AwsEcr {
    /// A client with loaded AWS settings (shared with the STS client).
    pub fn from_config(config: aws_config::SdkConfig) -> Self {
        Self { config }
    }
}

impl Ecr for AwsEcr {
    fn tokens<'a>(
        &'a self,
        credentials: &'a Credentials,
        region: &'a str,
        registries: &'a [EcrRegistry],
    ) -> EcrFuture<'a> {
        Box::pin(async move {
            let keys = aws_credential_types::Credentials::new(
                &credentials.access_key_id,
                &credentials.secret_access_key,
                Some(credentials.session_token.clone()),
                None,
                "assumed-role-operator-assumed-role",
            );
            let config = aws_sdk_ecr::config::Builder::from(&self.config)
                .region(aws_sdk_ecr::config::Region::new(region.to_string()))
                .credentials_provider(keys)
                .build();
            let client = aws_sdk_ecr::Client::from_conf(config);
            // One token serves every registry of the region that the
            // identity may pull from (ECR no longer scopes it by registry).
            let out = client
                .get_authorization_token()
                .send()
                .await
                .map_err(crate::sts::classify)?;
            let given: Vec<(String, Timestamp)> = out
                .authorization_data()
                .iter()
                .filter_map(|d| {
                    let token = d.authorization_token()?;
                    let decoded = base64::engine::general_purpose::STANDARD.decode(token).ok()?;
                    let pair = String::from_utf8(decoded).ok()?;
                    let password = pair.strip_prefix("AWS:")?.to_string();
                    let expires = Timestamp::from_second(d.expires_at()?.secs()).ok()?;
                    Some((password, expires))
                })
                .collect();
            if given.is_empty() {
                return Err(StsError::Unavailable("ECR gave no authorization token".into()));
            }
            let (password, expires) = &given[0];
            Ok(registries
                .iter()
                .map(|registry| Token {
                    registry: registry.clone(),
                    password: password.clone(),
                    expires: *expires,
                })
                .collect())
        })
    }
}
