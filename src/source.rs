//! Where the identity that assumes a role comes from (`spec.source`): the
//! pure parts. Which keys a Secret of static keys holds, whether a chain of
//! AssumedRoles loops, and what identifies a source in the spec hash, so
//! that a change of source mints new credentials. Fetching a token, a
//! Secret or another AssumedRole's credentials is the controller's.

use std::collections::BTreeMap;

use hmac::{Hmac, Mac};
use k8s_openapi::ByteString;
use sha2::Sha256;

use crate::{
    api::{AssumedRole, Source, SourceKind},
    sts::Signer,
};

/// STS caps a session obtained with temporary credentials (role chaining)
/// at one hour.
pub const CHAINED_MAX_SECONDS: i32 = 3600;

/// Audience of ServiceAccount tokens when neither the spec nor the operator
/// names one: what STS expects of an EKS cluster's OIDC provider.
pub const DEFAULT_AUDIENCE: &str = "sts.amazonaws.com";

/// Lifetime asked of a ServiceAccount token: the shortest the API server
/// grants. It is used once, at once.
pub const TOKEN_SECONDS: i64 = 600;

/// The longest chain of `assumedRoleRef`s followed before giving up.
pub const MAX_CHAIN: usize = 16;

/// The lifetime to ask STS for: the spec's, capped at an hour when the
/// session is chained. Returns the lifetime and, when capped, what the spec
/// asked for.
pub fn duration(spec_seconds: i32, source: &Source) -> (i32, Option<i32>) {
    if source.kind() == SourceKind::AssumedRole && spec_seconds > CHAINED_MAX_SECONDS {
        (CHAINED_MAX_SECONDS, Some(spec_seconds))
    } else {
        (spec_seconds, None)
    }
}

/// What identifies the source in the spec hash: `None` for the operator's
/// own identity (so that the hashes of AssumedRoles without a source stay
/// as they were), else its kind, name and audience. New keys in the same
/// Secret are told apart by [`key_fingerprint`], kept beside the hash:
/// they mean new credentials, but the ones in the Secret still serve.
pub fn identity(source: &Source, default_audience: &str) -> Option<String> {
    match source.kind() {
        SourceKind::Operator => None,
        SourceKind::ServiceAccount => Some(format!(
            "ServiceAccount/{}/{}",
            source.service_account_name.as_deref().unwrap_or_default(),
            source.audience.as_deref().unwrap_or(default_audience)
        )),
        SourceKind::Secret => Some(format!(
            "Secret/{}",
            source.secret_ref.as_ref().map_or("", |s| s.name.as_str())
        )),
        SourceKind::AssumedRole => Some(format!(
            "AssumedRole/{}",
            source.assumed_role_ref.as_ref().map_or("", |r| r.name.as_str())
        )),
    }
}

/// A keyed hash of an access key ID: tells a change of keys without
/// telling the key.
pub fn key_fingerprint(hmac_key: &[u8], access_key_id: &str) -> String {
    #[allow(clippy::expect_used)] // HMAC accepts keys of any length
    let mut mac = Hmac::<Sha256>::new_from_slice(hmac_key).expect("HMAC takes any key length");
    mac.update(b"source-access-key-id\0");
    mac.update(access_key_id.as_bytes());
    hex::encode(&mac.finalize().into_bytes()[..16])
}

/// The keys in the data of a Secret named by `spec.source.secretRef`, or
/// why there are none, naming the Secret and the key (never a value).
pub fn keys_from(
    name: &str,
    data: Option<&BTreeMap<String, ByteString>>,
    id_key: &str,
    secret_key: &str,
) -> Result<Signer, String> {
    let value = |key: &str| {
        let bytes = data
            .and_then(|d| d.get(key))
            .map(|v| v.0.as_slice())
            .unwrap_or_default();
        match std::str::from_utf8(bytes).map(str::trim) {
            Ok(text) if !text.is_empty() => Ok(text.to_string()),
            _ => Err(format!(
                "Secret {name} (spec.source.secretRef) has no key {key:?} with an access key in it"
            )),
        }
    };
    Ok(Signer::Keys {
        access_key_id: value(id_key)?,
        secret_access_key: value(secret_key)?,
        session_token: None,
    })
}

/// Follows `spec.source.assumedRoleRef` from `start` through `lookup` (an
/// AssumedRole of the same namespace by name). Returns the loop, as names
/// in order, if the chain comes back to a name it has passed.
pub fn cycle<'a>(start: &'a AssumedRole, lookup: impl Fn(&str) -> Option<&'a AssumedRole>) -> Option<Vec<String>> {
    let mut path = vec![start.metadata.name.clone().unwrap_or_default()];
    let mut current = start;
    for _ in 0..MAX_CHAIN {
        let next = current.spec.source.assumed_role_ref.as_ref()?.name.clone();
        if let Some(at) = path.iter().position(|n| *n == next) {
            let mut looped = path.split_off(at);
            looped.push(next);
            return Some(looped);
        }
        path.push(next.clone());
        current = lookup(&next)?;
    }
    // Longer than any chain a person writes: report it as the loop it
    // almost surely is not, rather than follow it forever.
    Some(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::AssumedRoleSpec;

    fn ar(name: &str, upstream: Option<&str>) -> AssumedRole {
        let mut spec: AssumedRoleSpec =
            serde_json::from_value(serde_json::json!({"roleArn": "arn:aws:iam::123456789012:role/r"}))
                .unwrap_or_else(|e| panic!("{e}"));
        spec.source.assumed_role_ref = upstream.map(|u| crate::api::AssumedRoleRef { name: u.into() });
        AssumedRole::new(name, spec)
    }

    fn find<'a>(all: &'a [AssumedRole]) -> impl Fn(&str) -> Option<&'a AssumedRole> {
        move |name| all.iter().find(|a| a.metadata.name.as_deref() == Some(name))
    }

    #[test]
    fn a_chain_that_loops_is_found_and_one_that_ends_is_not() {
        let all = [
            ar("a", Some("b")),
            ar("b", Some("c")),
            ar("c", Some("a")),
            ar("d", Some("b")),
        ];
        assert_eq!(
            cycle(&all[0], find(&all)),
            Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
        );
        // A chain that runs into a loop it is not part of reports the loop.
        assert_eq!(
            cycle(&all[3], find(&all)),
            Some(vec!["b".into(), "c".into(), "a".into(), "b".into()])
        );
        let fine = [ar("a", Some("b")), ar("b", None)];
        assert_eq!(cycle(&fine[0], find(&fine)), None);
        // A reference to an AssumedRole that does not exist is no loop.
        assert_eq!(cycle(&ar("a", Some("gone")), find(&fine)), None);
        let own = ar("self", Some("self"));
        assert_eq!(cycle(&own, |_| None), Some(vec!["self".into(), "self".into()]));
    }

    #[test]
    fn a_chained_session_asks_for_at_most_an_hour_and_says_what_was_asked() {
        let chained = ar("a", Some("b")).spec.source;
        assert_eq!(duration(7200, &chained), (3600, Some(7200)));
        assert_eq!(duration(900, &chained), (900, None));
        assert_eq!(duration(7200, &Source::default()), (7200, None));
    }

    #[test]
    fn static_keys_are_read_from_the_named_keys_and_a_missing_one_is_named() {
        let data: BTreeMap<String, ByteString> = [
            ("id".to_string(), ByteString(b"AKIAEXAMPLE\n".to_vec())),
            ("secret".to_string(), ByteString(b"s3cr3t".to_vec())),
        ]
        .into();
        assert_eq!(
            keys_from("keys", Some(&data), "id", "secret"),
            Ok(Signer::Keys {
                access_key_id: "AKIAEXAMPLE".into(),
                secret_access_key: "s3cr3t".into(),
                session_token: None
            })
        );
        let error = keys_from("keys", Some(&data), "AWS_ACCESS_KEY_ID", "secret")
            .err()
            .unwrap_or_default();
        assert_eq!(
            error,
            "Secret keys (spec.source.secretRef) has no key \"AWS_ACCESS_KEY_ID\" with an access key in it"
        );
        assert!(!error.contains("s3cr3t"));
        assert!(keys_from("keys", None, "id", "secret").is_err());
    }

    #[test]
    fn a_source_changes_the_identity_only_when_there_is_one() {
        assert_eq!(identity(&Source::default(), DEFAULT_AUDIENCE), None);
        let sa = Source {
            service_account_name: Some("app".into()),
            ..Source::default()
        };
        assert_eq!(
            identity(&sa, DEFAULT_AUDIENCE).as_deref(),
            Some("ServiceAccount/app/sts.amazonaws.com")
        );
        let fp = key_fingerprint(b"k", "AKIA1");
        assert_ne!(fp, key_fingerprint(b"k", "AKIA2"));
        assert!(!fp.contains("AKIA"));
    }
}
