//! Image pull Secrets for private ECR registries: an AssumedRole with
//! `spec.imagePullSecret` also keeps a `kubernetes.io/dockerconfigjson`
//! Secret, holding an ECR authorization token that the assumed role's
//! credentials got, fresh.
//!
//! This module is pure: it renders the Secret from tokens, reads one back,
//! and decides when the next token is due (the credentials' schedule rules,
//! from the token's own expiry, with the floor). [`call`] asks ECR;
//! [`step`] carries a decision out, after each reconcile of an AssumedRole
//! that asks for one.

pub mod call;
pub mod step;

use std::collections::BTreeMap;

use base64::Engine as _;
use jiff::Timestamp;
use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{Resource as _, ResourceExt as _};

use crate::{
    api::{AssumedRole, EcrRegistry, ImagePullSecret},
    schedule,
};

/// The Secret's one key.
pub const KEY: &str = ".dockerconfigjson";
/// The Secret's type.
pub const TYPE: &str = "kubernetes.io/dockerconfigjson";
/// Annotation: when the token that expires first expires (RFC 3339).
pub const EXPIRES_ANNOTATION: &str = "sts.refresh.dev/token-expiration";
/// Annotation: when the tokens were given (RFC 3339).
pub const ISSUED_ANNOTATION: &str = "sts.refresh.dev/token-issued";
/// Annotation: a hash of the registries the Secret is for.
pub const REGISTRIES_ANNOTATION: &str = "sts.refresh.dev/registries-hash";
/// Label: the AssumedRole whose Secret this is. Not the credentials
/// Secrets' label: to their watch this is another Secret, whose name no
/// AssumedRole's credentials may take.
pub const OF_LABEL: &str = "sts.refresh.dev/image-pull-secret-of";

/// A token for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    /// The registry.
    pub registry: EcrRegistry,
    /// The password `docker login` takes with the user `AWS`.
    pub password: String,
    /// When it expires.
    pub expires: Timestamp,
}

impl std::fmt::Debug for Token {
    // Never the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("registry", &self.registry.host())
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

/// A hash of the registries, in order of host: what the Secret is for.
pub fn registries_hash(spec: &ImagePullSecret) -> String {
    use sha2::Digest as _;
    let mut hosts: Vec<String> = spec.registries.iter().map(EcrRegistry::host).collect();
    hosts.sort();
    hosts.dedup();
    hex::encode(&sha2::Sha256::digest(hosts.join(",").as_bytes())[..16])
}

/// The image pull Secret of `ar` holding `tokens`, given at `issued`.
pub fn render(ar: &AssumedRole, spec: &ImagePullSecret, tokens: &[Token], issued: Timestamp) -> Secret {
    let auths: BTreeMap<String, serde_json::Value> = tokens
        .iter()
        .map(|t| {
            let auth = base64::engine::general_purpose::STANDARD.encode(format!("AWS:{}", t.password));
            (
                t.registry.host(),
                serde_json::json!({"username": "AWS", "password": t.password, "auth": auth}),
            )
        })
        .collect();
    let config = serde_json::json!({ "auths": auths }).to_string();
    let expires = expiry(tokens, issued);
    let mut secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(spec.name.clone()),
            namespace: ar.namespace(),
            labels: Some(
                [
                    (OF_LABEL.to_string(), ar.name_any()),
                    (
                        "app.kubernetes.io/part-of".to_string(),
                        "assumed-role-operator".to_string(),
                    ),
                ]
                .into(),
            ),
            annotations: Some(
                [
                    (EXPIRES_ANNOTATION.to_string(), expires.to_string()),
                    (ISSUED_ANNOTATION.to_string(), issued.to_string()),
                    (REGISTRIES_ANNOTATION.to_string(), registries_hash(spec)),
                ]
                .into(),
            ),
            ..Default::default()
        },
        type_: Some(TYPE.into()),
        data: Some([(KEY.to_string(), ByteString(config.into_bytes()))].into()),
        ..Default::default()
    };
    secret.metadata.owner_references = ar.controller_owner_ref(&()).map(|o| vec![o]);
    secret
}

/// When the first of `tokens`, given at `issued`, expires.
pub fn expiry(tokens: &[Token], issued: Timestamp) -> Timestamp {
    tokens.iter().map(|t| t.expires).min().unwrap_or(issued)
}

/// When tokens given at `issued` and expiring at `expires` are due again,
/// for the AssumedRole of UID `uid`: the credentials' rule.
pub fn refresh_at(uid: &str, issued: Timestamp, expires: Timestamp) -> Timestamp {
    let seed = schedule::jitter_seed(uid, issued);
    schedule::refresh_time(issued, expires, crate::api::RefreshBefore::Default, seed).at
}

/// What the image pull Secret of that name is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    /// There is none.
    Missing,
    /// There is one, and it is not this AssumedRole's: it is never written.
    Foreign,
    /// This AssumedRole's.
    Owned {
        /// When its tokens were given.
        issued: Option<Timestamp>,
        /// When the first of them expires.
        expires: Option<Timestamp>,
        /// The registries it is for.
        registries: Option<String>,
    },
}

/// Reads the Secret found under the name, for the AssumedRole of UID `uid`.
pub fn observe(secret: Option<&Secret>, uid: &str) -> Observed {
    let Some(secret) = secret else {
        return Observed::Missing;
    };
    if crate::secret::controller_uid(secret) != Some(uid) {
        return Observed::Foreign;
    }
    let annotation = |key: &str| secret.metadata.annotations.as_ref().and_then(|a| a.get(key)).cloned();
    Observed::Owned {
        issued: annotation(ISSUED_ANNOTATION).and_then(|t| t.parse().ok()),
        expires: annotation(EXPIRES_ANNOTATION).and_then(|t| t.parse().ok()),
        registries: annotation(REGISTRIES_ANNOTATION),
    }
}

/// What to do about the image pull Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Get tokens and write it; `urgent` when the tokens it holds are
    /// within the floor of their expiry (or it holds none).
    Write {
        /// Whether it goes ahead of routine calls in the budget.
        urgent: bool,
    },
    /// Nothing until then.
    Wait(Timestamp),
    /// A Secret of that name is someone else's: left alone.
    Conflict(String),
}

/// The decision for `ar`'s image pull Secret, as `observed`, at `now`.
pub fn decide(ar: &AssumedRole, spec: &ImagePullSecret, observed: &Observed, now: Timestamp) -> Decision {
    match observed {
        Observed::Missing => Decision::Write { urgent: true },
        Observed::Foreign => Decision::Conflict(format!(
            "Secret {} exists and is not this AssumedRole's: it is left as it is (spec.imagePullSecret.name)",
            spec.name
        )),
        Observed::Owned {
            issued,
            expires,
            registries,
        } => {
            let (Some(issued), Some(expires)) = (issued, expires) else {
                return Decision::Write { urgent: true };
            };
            if registries.as_deref() != Some(registries_hash(spec).as_str()) {
                return Decision::Write { urgent: true };
            }
            let refresh = refresh_at(&ar.uid().unwrap_or_default(), *issued, *expires);
            if now >= refresh {
                Decision::Write {
                    urgent: expires.duration_since(now) <= schedule::FLOOR,
                }
            } else {
                Decision::Wait(refresh)
            }
        }
    }
}

/// The registries of `spec` by region, each region once, in order.
pub fn by_region(spec: &ImagePullSecret) -> BTreeMap<String, Vec<EcrRegistry>> {
    let mut regions: BTreeMap<String, Vec<EcrRegistry>> = BTreeMap::new();
    for registry in &spec.registries {
        let list = regions.entry(registry.region.clone()).or_default();
        if !list.contains(registry) {
            list.push(registry.clone());
        }
    }
    regions
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ar() -> AssumedRole {
        let mut ar: AssumedRole = serde_json::from_value(serde_json::json!({
            "apiVersion": "sts.refresh.dev/v1alpha1",
            "kind": "AssumedRole",
            "metadata": {"name": "puller", "namespace": "team", "uid": "uid-1"},
            "spec": {
                "roleArn": "arn:aws:iam::123456789012:role/puller",
                "imagePullSecret": {"name": "ecr", "registries": [
                    {"account": "123456789012", "region": "eu-west-1"},
                    {"account": "210987654321", "region": "eu-west-1"},
                    {"account": "123456789012", "region": "us-east-1"},
                ]},
            },
        }))
        .unwrap();
        ar.metadata.uid = Some("uid-1".into());
        ar
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn tokens(spec: &ImagePullSecret, expires: Timestamp) -> Vec<Token> {
        spec.registries
            .iter()
            .map(|r| Token {
                registry: r.clone(),
                password: format!("pw-{}", r.region),
                expires,
            })
            .collect()
    }

    #[test]
    fn the_secret_decodes_to_the_aws_pair_for_each_registry_and_is_owned() {
        let ar = ar();
        let spec = ar.spec.image_pull_secret.clone().unwrap();
        let secret = render(&ar, &spec, &tokens(&spec, at(43_200)), at(0));
        assert_eq!(secret.type_.as_deref(), Some(TYPE));
        let config: serde_json::Value = serde_json::from_slice(&secret.data.as_ref().unwrap()[KEY].0).unwrap();
        let auths = config["auths"].as_object().unwrap();
        assert_eq!(auths.len(), 3);
        let entry = &auths["210987654321.dkr.ecr.eu-west-1.amazonaws.com"];
        assert_eq!(entry["username"], "AWS");
        assert_eq!(entry["password"], "pw-eu-west-1");
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(entry["auth"].as_str().unwrap())
            .unwrap();
        assert_eq!(decoded, b"AWS:pw-eu-west-1");
        assert_eq!(
            observe(Some(&secret), "uid-1"),
            Observed::Owned {
                issued: Some(at(0)),
                expires: Some(at(43_200)),
                registries: Some(registries_hash(&spec)),
            }
        );
        assert_eq!(observe(Some(&secret), "another"), Observed::Foreign);
        assert!(
            !format!("{:?}", tokens(&spec, at(1))).contains("pw-"),
            "no password in Debug"
        );
    }

    #[test]
    fn a_token_is_renewed_on_the_credentials_schedule_from_its_own_expiry() {
        let ar = ar();
        let spec = ar.spec.image_pull_secret.clone().unwrap();
        let observed = observe(Some(&render(&ar, &spec, &tokens(&spec, at(43_200)), at(0))), "uid-1");
        // A 12-hour token: due when a third of its life remains, minus jitter.
        let Decision::Wait(due) = decide(&ar, &spec, &observed, at(60)) else {
            panic!("a fresh token waits");
        };
        assert!(due <= at(28_800) && due >= at(28_800 - 4_320), "{due}");
        assert_eq!(decide(&ar, &spec, &observed, due), Decision::Write { urgent: false });
        assert_eq!(
            decide(&ar, &spec, &observed, at(43_000)),
            Decision::Write { urgent: true }
        );
    }

    #[test]
    fn new_registries_a_missing_secret_and_a_foreign_one() {
        let ar = ar();
        let mut spec = ar.spec.image_pull_secret.clone().unwrap();
        let observed = observe(Some(&render(&ar, &spec, &tokens(&spec, at(43_200)), at(0))), "uid-1");
        spec.registries.pop();
        assert_eq!(decide(&ar, &spec, &observed, at(60)), Decision::Write { urgent: true });
        assert_eq!(
            decide(&ar, &spec, &Observed::Missing, at(60)),
            Decision::Write { urgent: true }
        );
        assert!(matches!(
            decide(&ar, &spec, &Observed::Foreign, at(60)),
            Decision::Conflict(_)
        ));
        assert_eq!(by_region(&spec).len(), 1);
    }
}
