//! The key that signs the data of every Secret the operator writes: kept in
//! a Secret in the operator's own namespace, created with a random key on
//! first start, and read by every replica.

use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};

use crate::{Error, Result, secret};

/// Name of the Secret, in the operator's namespace, that holds the key.
pub const HMAC_KEY_SECRET: &str = "assumed-role-operator-hmac-key";

/// Reads the HMAC key from its Secret in `namespace`, creating it with a
/// random key on first start.
pub async fn load_hmac_key(client: Client, namespace: &str) -> Result<Vec<u8>> {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    let err = |source| Error::HmacKey {
        name: HMAC_KEY_SECRET.into(),
        source,
    };
    for _ in 0..3 {
        if let Some(secret) = api.get_opt(HMAC_KEY_SECRET).await.map_err(err)?
            && let Some(key) = secret.data.and_then(|mut d| d.remove("key"))
            && key.0.len() >= 32
        {
            return Ok(key.0);
        }
        let mut key = vec![0u8; 32];
        getrandom::fill(&mut key).map_err(|_| Error::MissingMetadata("random source"))?;
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(HMAC_KEY_SECRET.into()),
                labels: Some([(secret::MANAGED_BY_LABEL.into(), secret::MANAGED_BY.into())].into()),
                ..Default::default()
            },
            data: Some([("key".to_string(), ByteString(key.clone()))].into()),
            ..Default::default()
        };
        match api.create(&PostParams::default(), &secret).await {
            Ok(_) => return Ok(key),
            // Another replica created it first: read theirs.
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => return Err(err(e)),
        }
    }
    Err(Error::MissingMetadata("HMAC key after three attempts"))
}
