//! The Secret that holds the credentials: what it should look like, and what
//! an existing one says. Pure functions, no I/O.
//!
//! Its annotations carry what a restarted operator needs in order to decide
//! without calling STS: when the credentials were issued and expire, a hash
//! of the spec fields that shaped them, and a keyed hash of the data, so that
//! an edit by anyone else is noticed.

use std::collections::BTreeMap;

use hmac::{Hmac, Mac};
use jiff::Timestamp;
use k8s_openapi::{
    ByteString,
    api::core::v1::Secret,
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
};
use kube::{Resource, ResourceExt};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::{
    api::AssumedRole,
    credentials::{AssumeRoleRequest, Credentials},
    schedule,
};

/// Label on every Secret the operator writes, so it can watch only those.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "assumed-role-operator";
/// Label selector that matches the operator's Secrets.
pub const SELECTOR: &str = "app.kubernetes.io/managed-by=assumed-role-operator";

/// Annotation: when the credentials expire (RFC 3339).
pub const EXPIRATION_ANNOTATION: &str = "sts.refresh.dev/expiration";
/// Annotation: when the credentials were issued (RFC 3339).
pub const ISSUED_ANNOTATION: &str = "sts.refresh.dev/issued-at";
/// Annotation: hash of the spec fields that shape the credentials.
pub const SPEC_HASH_ANNOTATION: &str = "sts.refresh.dev/spec-hash";
/// Annotation: hash of the spec fields that shape the Secret but not the
/// credentials (labels, annotations, mount path, profile).
pub const LAYOUT_HASH_ANNOTATION: &str = "sts.refresh.dev/layout-hash";
/// Annotation: keyed hash of the data and of every annotation above, so
/// that nothing the operator decides from can be changed unnoticed.
pub const DATA_HMAC_ANNOTATION: &str = "sts.refresh.dev/data-hmac";

/// Annotation: keyed hash of the access key ID that `spec.source.secretRef`
/// held when the credentials were minted; present only with that source.
pub const SOURCE_KEY_ANNOTATION: &str = "sts.refresh.dev/source-key";

/// The annotations the operator decides from, all covered by the keyed hash.
pub const SIGNED_ANNOTATIONS: [&str; 4] = [
    ISSUED_ANNOTATION,
    EXPIRATION_ANNOTATION,
    SPEC_HASH_ANNOTATION,
    LAYOUT_HASH_ANNOTATION,
];

/// Key for `envFrom`: the access key ID.
pub const ACCESS_KEY_ID: &str = "AWS_ACCESS_KEY_ID";
/// Key for `envFrom`: the secret access key.
pub const SECRET_ACCESS_KEY: &str = "AWS_SECRET_ACCESS_KEY";
/// Key for `envFrom`: the session token.
pub const SESSION_TOKEN: &str = "AWS_SESSION_TOKEN";
/// Key: the output of a `credential_process`.
pub const CREDENTIAL_PROCESS: &str = "credential_process.json";
/// Key: an AWS config file whose profile runs the credential process.
pub const CONFIG: &str = "config";
/// Key: a shared-credentials file.
pub const CREDENTIALS: &str = "credentials";
/// Key: the expiration, RFC 3339.
pub const EXPIRATION: &str = "expiration";
/// Key: the token that the credentials endpoint asks of every request, for
/// `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`. No trailing newline: the SDKs
/// send the file as it is, and a newline makes the header illegal.
pub const ENDPOINT_TOKEN: &str = "endpoint-token";

/// Version of what [`render_data`] writes, part of the layout hash, so that
/// an operator that writes the data differently rewrites the Secrets of an
/// older one (without calling STS) rather than leave them as they are.
const DATA_FORMAT: u32 = 3;

/// The credentials endpoint's token for one AssumedRole: a keyed hash of its
/// UID, so that it stays the same across refreshes, restarts and replicas
/// (a pod reads it and the endpoint checks it at different moments, around
/// a swap of the files), and no one without the operator's key can tell it.
pub fn endpoint_token(key: &[u8], uid: &str) -> String {
    #[allow(clippy::expect_used)] // HMAC accepts keys of any length
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(b"credentials-endpoint-token\0");
    mac.update(uid.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Hash of the request fields that shape the credentials. A change of any of
/// them needs new credentials; a change of anything else does not.
pub fn spec_hash(request: &AssumeRoleRequest) -> String {
    let mut canonical = json!({
        "roleArn": request.role_arn,
        "roleSessionName": request.role_session_name,
        "durationSeconds": request.duration_seconds,
        "externalId": request.external_id,
        "policy": request.policy,
        "policyArns": request.policy_arns,
        "tags": request.tags,
        "transitiveTagKeys": request.transitive_tag_keys,
        "sourceIdentity": request.source_identity,
    });
    // Only a source other than the operator's own is part of the hash, so
    // that the hashes of AssumedRoles without one stay as they were.
    if let Some(source) = &request.source {
        canonical["source"] = json!(source);
    }
    hash(&canonical)
}

/// SHA-256 of `value` written as JSON with the keys of every object in
/// order. The hashes are kept in Secrets and compared by the next process:
/// they must not depend on how this build's JSON maps order their keys
/// (serde_json's `preserve_order` feature, which another crate can turn on,
/// keeps the order of insertion instead).
fn hash(value: &serde_json::Value) -> String {
    fn write(value: &serde_json::Value, out: &mut String) {
        match value {
            serde_json::Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                out.push('{');
                for (i, key) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&serde_json::Value::from(key.as_str()).to_string());
                    out.push(':');
                    write(&map[key], out);
                }
                out.push('}');
            }
            serde_json::Value::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(item, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut text = String::new();
    write(value, &mut text);
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Hash of the spec fields that shape the Secret around the credentials. A
/// change of any of them rewrites the Secret without calling STS.
pub fn layout_hash(ar: &AssumedRole) -> String {
    let canonical = json!({
        "format": DATA_FORMAT,
        "labels": ar.spec.secret.labels,
        "annotations": ar.spec.secret.annotations,
        "mountPath": ar.spec.mount_path(),
        "profile": ar.spec.profile(),
    });
    hash(&canonical)
}

/// Keyed hash of what the operator wrote and reads back: the
/// [`SIGNED_ANNOTATIONS`] (an absent one differs from an empty one), then
/// each data key and value, every field length-prefixed, in key order.
pub fn data_hmac(key: &[u8], annotations: &BTreeMap<String, String>, data: &BTreeMap<String, ByteString>) -> String {
    #[allow(clippy::expect_used)] // HMAC accepts keys of any length
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    let mut field = |bytes: &[u8]| {
        mac.update(&(bytes.len() as u64).to_be_bytes());
        mac.update(bytes);
    };
    for name in SIGNED_ANNOTATIONS {
        match annotations.get(name) {
            Some(value) => {
                field(b"+");
                field(value.as_bytes());
            }
            None => field(b"-"),
        }
    }
    // Signed only when present, so that the Secrets of AssumedRoles without
    // static keys keep the hash they had; adding or removing it still shows.
    if let Some(value) = annotations.get(SOURCE_KEY_ANNOTATION) {
        field(b"source-key");
        field(value.as_bytes());
    }
    for (k, v) in data {
        field(k.as_bytes());
        field(&v.0);
    }
    hex::encode(mac.finalize().into_bytes())
}

/// `text` in single quotes for a POSIX shell (and for botocore's `shlex`),
/// so that a shell sees one word and nothing to run, whatever the text. The
/// mount path is already a plain path (see [`crate::api::mount_path_problem`]);
/// the quotes make sure of it.
pub fn shell_quoted(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// Renders the file contents for each key. `credential_process.json`
/// advertises an expiration [`schedule::ADVERTISED_MARGIN`] earlier than the
/// real one, which the `expiration` key and the annotation keep.
pub fn render_data(
    ar: &AssumedRole,
    creds: &Credentials,
    issued: Timestamp,
    token: &str,
) -> BTreeMap<String, ByteString> {
    let expiration = creds.expiration.to_string();
    let profile = ar.spec.profile();
    let process = json!({
        "Version": 1,
        "AccessKeyId": creds.access_key_id,
        "SecretAccessKey": creds.secret_access_key,
        "SessionToken": creds.session_token,
        "Expiration": schedule::advertised_expiration(creds.expiration, issued).to_string(),
    });
    let section = if profile == "default" {
        "default".to_string()
    } else {
        format!("profile {profile}")
    };
    let config = format!(
        "[{section}]\ncredential_process = cat {}\n",
        shell_quoted(&format!("{}/{CREDENTIAL_PROCESS}", ar.spec.mount_path()))
    );
    let credentials = format!(
        "[{profile}]\naws_access_key_id = {}\naws_secret_access_key = {}\naws_session_token = {}\n",
        creds.access_key_id, creds.secret_access_key, creds.session_token
    );
    [
        (ACCESS_KEY_ID, creds.access_key_id.clone()),
        (SECRET_ACCESS_KEY, creds.secret_access_key.clone()),
        (SESSION_TOKEN, creds.session_token.clone()),
        (CREDENTIAL_PROCESS, process.to_string()),
        (CONFIG, config),
        (CREDENTIALS, credentials),
        (EXPIRATION, expiration),
        (ENDPOINT_TOKEN, token.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), ByteString(v.into_bytes())))
    .collect()
}

/// Renders the whole desired Secret for server-side apply: data, labels,
/// annotations and a controller ownerReference to `ar`.
pub fn render_secret(
    ar: &AssumedRole,
    owner: OwnerReference,
    creds: &Credentials,
    issued: Timestamp,
    spec_hash: &str,
    source_key: Option<&str>,
    hmac_key: &[u8],
) -> Secret {
    let token = endpoint_token(hmac_key, ar.meta().uid.as_deref().unwrap_or_default());
    let data = render_data(ar, creds, issued, &token);
    let mut annotations = ar.spec.secret.annotations.clone();
    annotations.insert(EXPIRATION_ANNOTATION.into(), creds.expiration.to_string());
    annotations.insert(ISSUED_ANNOTATION.into(), issued.to_string());
    annotations.insert(SPEC_HASH_ANNOTATION.into(), spec_hash.into());
    annotations.insert(LAYOUT_HASH_ANNOTATION.into(), layout_hash(ar));
    if let Some(key) = source_key {
        annotations.insert(SOURCE_KEY_ANNOTATION.into(), key.into());
    }
    signed(ar, owner, data, annotations, hmac_key)
}

/// Keys that hold credentials, in any form: what a revoked Secret loses.
pub const CREDENTIAL_KEYS: [&str; 6] = [
    ACCESS_KEY_ID,
    SECRET_ACCESS_KEY,
    SESSION_TOKEN,
    CREDENTIAL_PROCESS,
    CREDENTIALS,
    EXPIRATION,
];

/// Renders the Secret of an AssumedRole whose grant was revoked: the same
/// Secret with every key of [`CREDENTIAL_KEYS`] removed. It stays, so that
/// pods keep their mounts and read credentials again if the grant returns.
/// `config` stays too: an SDK then fails on the missing credential process
/// rather than fall through to another identity (the node's, say).
pub fn render_revoked(ar: &AssumedRole, owner: OwnerReference, hmac_key: &[u8]) -> Secret {
    let token = endpoint_token(hmac_key, ar.meta().uid.as_deref().unwrap_or_default());
    let placeholder = Credentials {
        access_key_id: String::new(),
        secret_access_key: String::new(),
        session_token: String::new(),
        expiration: Timestamp::UNIX_EPOCH,
    };
    let mut data = render_data(ar, &placeholder, Timestamp::UNIX_EPOCH, &token);
    data.retain(|k, _| !CREDENTIAL_KEYS.contains(&k.as_str()));
    let mut annotations = ar.spec.secret.annotations.clone();
    annotations.insert(LAYOUT_HASH_ANNOTATION.into(), layout_hash(ar));
    signed(ar, owner, data, annotations, hmac_key)
}

/// The Secret around `data`: the spec's labels and the operator's, the
/// annotations with the keyed hash over them and the data, and the
/// controller ownerReference.
fn signed(
    ar: &AssumedRole,
    owner: OwnerReference,
    data: BTreeMap<String, ByteString>,
    mut annotations: BTreeMap<String, String>,
    hmac_key: &[u8],
) -> Secret {
    let mut labels = ar.spec.secret.labels.clone();
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
    let signature = data_hmac(hmac_key, &annotations, &data);
    annotations.insert(DATA_HMAC_ANNOTATION.into(), signature);
    Secret {
        metadata: ObjectMeta {
            name: Some(ar.secret_name()),
            namespace: ar.namespace(),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".into()),
        data: Some(data),
        ..Secret::default()
    }
}

/// What an existing Secret tells about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    /// There is no Secret of that name.
    Missing,
    /// The Secret is not controlled by this AssumedRole.
    Foreign,
    /// The Secret belongs to this AssumedRole.
    Owned(OwnedSecret),
}

/// A hash the operator keeps in an annotation (64 hex digits), held as its
/// 32 bytes: the memory keeps two or three per AssumedRole, and as text each
/// would cost an allocation of 80 bytes. Any other text (an edited
/// annotation) is kept as it is, and is equal only to the same text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hash {
    /// 64 hex digits, as their bytes.
    Bytes([u8; 32]),
    /// Anything else.
    Text(Box<str>),
}

impl Hash {
    /// Whether this is the hash written as `text`.
    pub fn is(&self, text: &str) -> bool {
        *self == Self::from(text)
    }
}

impl From<&str> for Hash {
    fn from(text: &str) -> Self {
        let mut bytes = [0u8; 32];
        match hex::decode_to_slice(text, &mut bytes) {
            Ok(()) if text.bytes().all(|b| !b.is_ascii_uppercase()) => Self::Bytes(bytes),
            _ => Self::Text(text.into()),
        }
    }
}

impl From<String> for Hash {
    fn from(text: String) -> Self {
        Self::from(text.as_str())
    }
}

impl std::fmt::Display for Hash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Bytes(bytes) => f.write_str(&hex::encode(bytes)),
            Self::Text(text) => f.write_str(text),
        }
    }
}

/// State read from a Secret that this AssumedRole controls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedSecret {
    /// When its credentials expire, if the annotation is readable.
    pub expiration: Option<Timestamp>,
    /// When they were issued, if the annotation is readable.
    pub issued: Option<Timestamp>,
    /// The spec hash it was written for.
    pub spec_hash: Option<Hash>,
    /// The layout hash it was written for.
    pub layout_hash: Option<Hash>,
    /// Whether the data is exactly what the operator wrote.
    pub intact: bool,
    /// Whether any key of [`CREDENTIAL_KEYS`] is present.
    pub holds_credentials: bool,
    /// The keyed hash of the static keys the credentials were minted with.
    pub source_key: Option<Hash>,
}

/// Reads an existing Secret (or its absence) against the AssumedRole that
/// wants it.
pub fn observe(ar: &AssumedRole, secret: Option<&Secret>, hmac_key: &[u8]) -> Observed {
    let Some(secret) = secret else {
        return Observed::Missing;
    };
    let uid = ar.meta().uid.as_deref();
    if uid.is_none() || controller_uid(secret) != uid {
        return Observed::Foreign;
    }
    observe_owned(secret, hmac_key)
}

/// The UID of the AssumedRole that controls `secret`, if one does.
pub fn controller_uid(secret: &Secret) -> Option<&str> {
    secret
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true) && o.kind == "AssumedRole")
        .map(|o| o.uid.as_str())
}

/// Reads a Secret that an AssumedRole controls.
pub fn observe_owned(secret: &Secret, hmac_key: &[u8]) -> Observed {
    let annotations = secret.annotations();
    let time = |key: &str| annotations.get(key).and_then(|v| v.parse::<Timestamp>().ok());
    let empty = BTreeMap::new();
    let data = secret.data.as_ref().unwrap_or(&empty);
    // The HMAC covers every data key and value and every annotation read
    // below: an added, removed or edited one all show as a mismatch.
    let intact = annotations
        .get(DATA_HMAC_ANNOTATION)
        .is_some_and(|h| *h == data_hmac(hmac_key, annotations, data));
    Observed::Owned(OwnedSecret {
        expiration: time(EXPIRATION_ANNOTATION),
        issued: time(ISSUED_ANNOTATION),
        spec_hash: annotations.get(SPEC_HASH_ANNOTATION).map(|h| Hash::from(h.as_str())),
        layout_hash: annotations.get(LAYOUT_HASH_ANNOTATION).map(|h| Hash::from(h.as_str())),
        intact,
        holds_credentials: CREDENTIAL_KEYS.iter().any(|k| data.contains_key(*k)),
        source_key: annotations.get(SOURCE_KEY_ANNOTATION).map(|h| Hash::from(h.as_str())),
    })
}

/// Reads the credentials back from a Secret the operator wrote. Call only on
/// a Secret that [`observe`] found intact.
pub fn credentials_from(secret: &Secret) -> Option<Credentials> {
    let data = secret.data.as_ref()?;
    let text = |key: &str| data.get(key).and_then(|v| String::from_utf8(v.0.clone()).ok());
    Some(Credentials {
        access_key_id: text(ACCESS_KEY_ID)?,
        secret_access_key: text(SECRET_ACCESS_KEY)?,
        session_token: text(SESSION_TOKEN)?,
        expiration: text(EXPIRATION)?.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::AssumedRoleSpec;

    fn resource(spec: serde_json::Value) -> AssumedRole {
        let spec: AssumedRoleSpec = serde_json::from_value(spec).unwrap_or_else(|e| panic!("{e}"));
        let mut ar = AssumedRole::new("reader", spec);
        ar.metadata.namespace = Some("billing".into());
        ar.metadata.uid = Some("uid-1".into());
        ar
    }

    /// The hashes are kept in Secrets and compared by the next process,
    /// which may be another build: pinned to the JSON with keys in order,
    /// whatever this build's JSON maps do with the order of insertion (the
    /// tests are built with serde_json's `preserve_order`, the release
    /// without).
    #[test]
    fn a_hash_is_kept_as_its_bytes_and_compares_with_its_text() {
        let text = spec_hash(&AssumeRoleRequest::for_resource(&AssumedRole::test()));
        let hash = Hash::from(text.as_str());
        assert!(matches!(hash, Hash::Bytes(_)));
        assert!(hash.is(&text));
        assert_eq!(hash.to_string(), text);
        assert!(!hash.is(&text.to_uppercase()), "another text");
        assert!(!hash.is(&text[..62]));
        let edited = Hash::from("not a hash");
        assert!(edited.is("not a hash") && !edited.is(&text));
        assert_eq!(edited.to_string(), "not a hash");
    }

    #[test]
    fn the_spec_and_layout_hashes_do_not_depend_on_the_build() {
        let ar = resource(
            json!({"roleArn": "arn:aws:iam::123456789012:role/r", "tags": {"team": "a", "env": "b"},
            "secret": {"labels": {"z": "1", "a": "2"}}}),
        );
        assert_eq!(
            spec_hash(&AssumeRoleRequest::for_resource(&ar)),
            "fb461e528d7fc5993c3b6f010444eb48118b8fc8ef7e31dd809dc894b9ba87d8"
        );
        assert_eq!(
            layout_hash(&ar),
            "6cd04b720dd2ee1140e3c3aeb493159d17a430d43173247479d6f33aab51eaf5"
        );
    }

    fn creds() -> Credentials {
        Credentials {
            access_key_id: "ASIAEXAMPLE".into(),
            secret_access_key: "secret/key".into(),
            session_token: "token".into(),
            expiration: "2030-01-01T01:00:00Z".parse().unwrap_or(Timestamp::UNIX_EPOCH),
        }
    }

    fn issued() -> Timestamp {
        "2030-01-01T00:00:00Z".parse().unwrap_or(Timestamp::UNIX_EPOCH)
    }

    fn text(data: &BTreeMap<String, ByteString>, key: &str) -> String {
        String::from_utf8(data[key].0.clone()).unwrap_or_default()
    }

    fn rendered(ar: &AssumedRole) -> Secret {
        let owner = ar.controller_owner_ref(&()).unwrap_or_default();
        render_secret(
            ar,
            owner,
            &creds(),
            "2030-01-01T00:00:00Z".parse().unwrap_or(Timestamp::UNIX_EPOCH),
            "h",
            None,
            b"k",
        )
    }

    #[test]
    fn config_runs_the_credential_process_and_holds_no_keys() {
        let ar = resource(json!({"roleArn": "arn:aws:iam::123456789012:role/r"}));
        let data = render_data(&ar, &creds(), issued(), "t");
        let config = text(&data, CONFIG);
        assert_eq!(
            config,
            "[default]\ncredential_process = cat '/var/run/secrets/aws/credential_process.json'\n"
        );
        let ar = resource(json!({"roleArn": "arn:aws:iam::123456789012:role/r",
            "secret": {"mountPath": "/aws/", "profile": "billing"}}));
        let config = text(&render_data(&ar, &creds(), issued(), "t"), CONFIG);
        assert_eq!(
            config,
            "[profile billing]\ncredential_process = cat '/aws/credential_process.json'\n"
        );
        assert!(!config.contains("secret/key"));
    }

    #[test]
    fn credential_process_output_follows_the_sdk_format_and_advertises_an_earlier_expiry() {
        let ar = resource(json!({"roleArn": "arn:aws:iam::123456789012:role/r"}));
        let data = render_data(&ar, &creds(), issued(), "t");
        let parsed: serde_json::Value = serde_json::from_str(&text(&data, CREDENTIAL_PROCESS)).unwrap_or_default();
        assert_eq!(
            parsed,
            json!({"Version": 1, "AccessKeyId": "ASIAEXAMPLE", "SecretAccessKey": "secret/key",
                   "SessionToken": "token", "Expiration": "2030-01-01T00:58:00Z"})
        );
        // The real expiry stays where the operator and tools read it.
        assert_eq!(text(&data, EXPIRATION), "2030-01-01T01:00:00Z");
        assert_eq!(text(&data, ENDPOINT_TOKEN), "t");
        assert_eq!(text(&data, ACCESS_KEY_ID), "ASIAEXAMPLE");
        assert!(text(&data, CREDENTIALS).starts_with("[default]\naws_access_key_id = ASIAEXAMPLE\n"));
    }

    #[test]
    fn rendered_secret_is_owned_labelled_and_observed_as_intact() {
        let ar = resource(json!({"roleArn": "arn:aws:iam::123456789012:role/r",
            "secret": {"name": "aws", "labels": {"team": "b"}, "annotations": {"note": "n"}}}));
        let secret = rendered(&ar);
        assert_eq!(secret.metadata.name.as_deref(), Some("aws"));
        assert_eq!(
            secret.labels().get(MANAGED_BY_LABEL).map(String::as_str),
            Some(MANAGED_BY)
        );
        assert_eq!(secret.labels().get("team").map(String::as_str), Some("b"));
        assert_eq!(secret.annotations().get("note").map(String::as_str), Some("n"));
        let Observed::Owned(owned) = observe(&ar, Some(&secret), b"k") else {
            panic!("not owned")
        };
        assert!(owned.intact);
        assert!(owned.spec_hash.as_ref().is_some_and(|h| h.is("h")));
        assert_eq!(owned.expiration, Some(creds().expiration));
    }

    #[test]
    fn edited_data_or_another_key_is_seen_as_tampered() {
        let ar = resource(json!({"roleArn": "arn:aws:iam::123456789012:role/r"}));
        let mut secret = rendered(&ar);
        if let Some(data) = secret.data.as_mut() {
            data.insert(SESSION_TOKEN.into(), ByteString(b"forged".to_vec()));
        }
        assert!(matches!(observe(&ar, Some(&secret), b"k"), Observed::Owned(o) if !o.intact));
        let mut secret = rendered(&ar);
        if let Some(data) = secret.data.as_mut() {
            data.remove(CONFIG);
        }
        assert!(matches!(observe(&ar, Some(&secret), b"k"), Observed::Owned(o) if !o.intact));
        let mut secret = rendered(&ar);
        if let Some(data) = secret.data.as_mut() {
            data.insert("extra".into(), ByteString(b"x".to_vec()));
        }
        assert!(matches!(observe(&ar, Some(&secret), b"k"), Observed::Owned(o) if !o.intact));
        let secret = rendered(&ar);
        assert!(matches!(observe(&ar, Some(&secret), b"other key"), Observed::Owned(o) if !o.intact));
    }

    #[test]
    fn every_annotation_the_operator_decides_from_is_signed() {
        let ar = resource(json!({"roleArn": "arn:aws:iam::123456789012:role/r"}));
        for name in SIGNED_ANNOTATIONS {
            for edit in [Some("2099-01-01T00:00:00Z"), None] {
                let mut secret = rendered(&ar);
                let annotations = secret.metadata.annotations.get_or_insert_default();
                match edit {
                    Some(value) => annotations.insert(name.into(), value.into()),
                    None => annotations.remove(name),
                };
                assert!(
                    matches!(observe(&ar, Some(&secret), b"k"), Observed::Owned(o) if !o.intact),
                    "{name} changed to {edit:?} unnoticed"
                );
            }
        }
        // Annotations of the user's own are not the operator's to judge.
        let mut secret = rendered(&ar);
        secret
            .metadata
            .annotations
            .get_or_insert_default()
            .insert("example.com/note".into(), "x".into());
        assert!(matches!(observe(&ar, Some(&secret), b"k"), Observed::Owned(o) if o.intact));
    }

    #[test]
    fn a_secret_without_our_controller_reference_is_foreign() {
        let ar = resource(json!({"roleArn": "arn:aws:iam::123456789012:role/r"}));
        let mut secret = rendered(&ar);
        secret.metadata.owner_references = None;
        assert_eq!(observe(&ar, Some(&secret), b"k"), Observed::Foreign);
        let mut other = resource(json!({"roleArn": "arn:aws:iam::123456789012:role/r"}));
        other.metadata.uid = Some("uid-2".into());
        assert_eq!(observe(&other, Some(&rendered(&ar)), b"k"), Observed::Foreign);
        assert_eq!(observe(&ar, None, b"k"), Observed::Missing);
    }

    #[test]
    fn the_endpoint_token_is_stable_per_assumed_role_and_secret_to_others() {
        let ar = resource(json!({"roleArn": "arn:aws:iam::123456789012:role/r"}));
        let token = text(rendered(&ar).data.as_ref().unwrap_or(&BTreeMap::new()), ENDPOINT_TOKEN);
        assert_eq!(token, endpoint_token(b"k", "uid-1"));
        assert_eq!(token.len(), 64);
        assert!(!token.ends_with('\n'));
        // The same across refreshes, another for another object or key.
        let mut later = creds();
        later.access_key_id = "ASIALATER".into();
        let owner = ar.controller_owner_ref(&()).unwrap_or_default();
        let next = render_secret(&ar, owner, &later, issued(), "h", None, b"k");
        assert_eq!(
            text(next.data.as_ref().unwrap_or(&BTreeMap::new()), ENDPOINT_TOKEN),
            token
        );
        assert_ne!(endpoint_token(b"k", "uid-2"), token);
        assert_ne!(endpoint_token(b"other", "uid-1"), token);
    }

    #[test]
    fn spec_hash_changes_with_credential_fields_only() {
        let a = resource(json!({"roleArn": "arn:aws:iam::123456789012:role/r"}));
        let b = resource(json!({"roleArn": "arn:aws:iam::123456789012:role/r", "secret": {"labels": {"x": "y"}}}));
        let c = resource(json!({"roleArn": "arn:aws:iam::123456789012:role/r", "tags": {"x": "y"}}));
        let hash = |ar: &AssumedRole| spec_hash(&AssumeRoleRequest::for_resource(ar));
        assert_eq!(hash(&a), hash(&b));
        assert_ne!(hash(&a), hash(&c));
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        /// What `sh -c` runs `line` as: the words it hands to the program
        /// named first, with `printf` standing in for it.
        fn shell_words(rest: &str) -> Vec<u8> {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("printf '%s\\0' {rest}"))
                .env_clear()
                .output()
                .expect("run sh");
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            out.stdout
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(48))]

            /// Every mount path that validation accepts is rendered into a
            /// `config` whose credential process, run by a shell as the SDKs
            /// run it, prints exactly `<path>/credential_process.json`.
            #[test]
            fn the_config_of_any_accepted_path_cats_exactly_that_path(
                segments in proptest::collection::vec("[A-Za-z0-9._-]{1,12}", 1..5),
                trailing in any::<bool>(),
            ) {
                let tmp = tempfile::tempdir().expect("tempdir");
                let mut dir = tmp.path().to_path_buf();
                for segment in &segments {
                    dir.push(segment);
                }
                let mut path = dir.display().to_string();
                if trailing {
                    path.push('/');
                }
                let ar = resource(json!({"roleArn": "arn:aws:iam::123456789012:role/r",
                    "secret": {"mountPath": path}}));
                prop_assume!(ar.spec.validate().is_ok());
                std::fs::create_dir_all(&dir).expect("mkdir");
                std::fs::write(dir.join(CREDENTIAL_PROCESS), "{\"Version\":1}").expect("write");
                let config = text(&render_data(&ar, &creds(), issued(), "t"), CONFIG);
                let line = config.lines().nth(1).and_then(|l| l.strip_prefix("credential_process = ")).expect("the line");
                let out = std::process::Command::new("sh").arg("-c").arg(line).env("PATH", "/usr/bin:/bin").output().expect("sh");
                prop_assert!(out.status.success(), "{line}: {}", String::from_utf8_lossy(&out.stderr));
                prop_assert_eq!(String::from_utf8_lossy(&out.stdout), "{\"Version\":1}");
                let rest = line.strip_prefix("cat ").expect("cat");
                let expected = format!("{}/{CREDENTIAL_PROCESS}", dir.display());
                prop_assert_eq!(shell_words(rest), [expected.as_bytes(), b"\0"].concat());
            }

            /// Whatever the text, quoted it is one word to a shell, the text
            /// itself, and nothing runs.
            #[test]
            fn shell_quoted_text_is_one_word_and_runs_nothing(text in "[ -~\t\n]{0,40}") {
                prop_assert_eq!(shell_words(&shell_quoted(&text)), [text.as_bytes(), b"\0"].concat());
            }

            /// Whatever another writer puts into an owned Secret's data or
            /// annotations, reading it never panics, and a change to what the
            /// operator wrote is never taken for intact.
            #[test]
            fn any_edit_of_an_owned_secret_is_read_without_panic_and_never_intact(
                data in proptest::collection::btree_map("[ -~]{0,24}", proptest::collection::vec(any::<u8>(), 0..64), 0..8),
                annotations in proptest::collection::btree_map("[ -~]{0,40}", "[ -~]{0,40}", 0..8),
                keep_data in any::<bool>(),
            ) {
                let ar = resource(json!({"roleArn": "arn:aws:iam::123456789012:role/r"}));
                let original = rendered(&ar);
                let mut edited = original.clone();
                if !keep_data {
                    edited.data = Some(data.into_iter().map(|(k, v)| (k, ByteString(v))).collect());
                }
                let meta = edited.metadata.annotations.get_or_insert_default();
                for (k, v) in annotations {
                    meta.insert(k, v);
                }
                let signed_changed = SIGNED_ANNOTATIONS.iter().chain([&DATA_HMAC_ANNOTATION]).any(|name| {
                    original.annotations().get(*name) != edited.annotations().get(*name)
                });
                let data_changed = original.data != edited.data;
                let observed = observe(&ar, Some(&edited), b"k");
                let Observed::Owned(owned) = observed else {
                    return Err(TestCaseError::fail("an owned Secret read as not owned"));
                };
                if data_changed || signed_changed {
                    prop_assert!(!owned.intact);
                }
                // Reading the credentials back never panics either.
                let _ = credentials_from(&edited);
            }
        }
    }
}
