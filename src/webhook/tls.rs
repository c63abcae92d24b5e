//! The webhook's certificates: one CA and one serving certificate, shared by
//! every replica through one Secret, and rotated before they expire without
//! a moment in which the API server does not trust what a replica serves.
//!
//! [`next`] is the one decision, pure: from what the Secret holds, the names
//! the certificate must carry and the time, to the one change due, if any.
//! A new CA is first only trusted (added to the bundle the API server
//! checks against), and signs serving certificates only once every replica
//! has had time to publish that bundle; an old CA stays trusted until it
//! expires. [`apply`] carries a change out on the Secret's contents (the
//! key generation is its only randomness).

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use serde::{Deserialize, Serialize};

/// The Secret annotation holding the [`Record`].
pub const RECORD_ANNOTATION: &str = "sts.refresh.dev/webhook-certificates";
/// The Secret key of the CA bundle: every CA the API server must trust.
pub const BUNDLE_KEY: &str = "ca.crt";
/// The Secret key of the serving certificate.
pub const CERT_KEY: &str = "tls.crt";
/// The Secret key of the serving certificate's private key.
pub const KEY_KEY: &str = "tls.key";

/// How long certificates last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// Of a CA.
    pub ca: Duration,
    /// Of a serving certificate.
    pub serving: Duration,
}

impl Default for Validity {
    fn default() -> Self {
        Self {
            ca: Duration::from_secs(5 * 365 * 24 * 3600),
            serving: Duration::from_secs(90 * 24 * 3600),
        }
    }
}

impl Validity {
    /// How often each replica looks at the Secret and the webhook
    /// configuration: often enough that a change reaches every replica, and
    /// drift in the configuration is mended, well within the time a change
    /// waits for it.
    pub fn period(&self) -> Duration {
        (self.serving / 10).clamp(Duration::from_secs(1), Duration::from_secs(30))
    }

    /// How long a new CA is only trusted before it signs: long enough for
    /// every replica to publish the bundle that holds it.
    pub fn settle(&self) -> Duration {
        (self.ca / 30).max(self.period() * 3)
    }
}

/// One CA, as the record keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ca {
    /// Its own name, in its subject and in the Secret's keys.
    pub id: String,
    /// When it starts to be valid.
    pub not_before: Timestamp,
    /// When it expires.
    pub not_after: Timestamp,
    /// When it was added to the bundle.
    pub added: Timestamp,
}

/// The serving certificate, as the record keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Serving {
    /// The CA that signed it.
    pub issuer: String,
    /// When it starts to be valid.
    pub not_before: Timestamp,
    /// When it expires.
    pub not_after: Timestamp,
    /// The DNS names and addresses it is for.
    pub names: Vec<String>,
}

/// What the Secret holds, besides the PEM data itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    /// The trusted CAs, oldest first; the last is the newest.
    pub cas: Vec<Ca>,
    /// The serving certificate.
    pub serving: Serving,
}

/// The one change due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Nothing usable: a new CA and a serving certificate.
    Fresh,
    /// Stop trusting this CA: it has expired.
    Drop(String),
    /// Trust a new CA, that signs nothing yet: the newest is in its last third.
    Stage,
    /// A new serving certificate, signed by this CA.
    Issue(String),
}

/// The one change due at `now` to what the Secret holds (`None`: nothing, or
/// nothing readable), for a serving certificate valid for `names`.
pub fn next(record: Option<&Record>, names: &[String], validity: &Validity, now: Timestamp) -> Option<Change> {
    let Some(record) = record else {
        return Some(Change::Fresh);
    };
    let Some(newest) = record.cas.last() else {
        return Some(Change::Fresh);
    };
    let serving = &record.serving;
    if let Some(gone) = record
        .cas
        .iter()
        .find(|ca| ca.not_after <= now && ca.id != serving.issuer)
    {
        return Some(Change::Drop(gone.id.clone()));
    }
    let left = |ca: &Ca| ca.not_after.duration_since(now);
    let third = |from: Timestamp, to: Timestamp| to.duration_since(from) / 3;
    if left(newest) <= third(newest.not_before, newest.not_after) {
        return Some(Change::Stage);
    }
    let settled =
        now.duration_since(newest.added) >= jiff::SignedDuration::try_from(validity.settle()).unwrap_or_default();
    let issuer = record.cas.iter().find(|ca| ca.id == serving.issuer);
    let signer = match issuer {
        _ if settled => newest,
        Some(issuer) if issuer.not_after > now => issuer,
        _ => newest,
    };
    let due = now >= serving.not_after
        || serving.not_after.duration_since(now) <= third(serving.not_before, serving.not_after);
    if signer.id != serving.issuer || due || serving.names != names {
        return Some(Change::Issue(signer.id.clone()));
    }
    None
}

/// The Secret's contents: PEM data by key and the record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Contents {
    /// PEM text by Secret key.
    pub data: BTreeMap<String, String>,
    /// What the data holds.
    pub record: Option<Record>,
}

/// Why certificates could not be made.
#[derive(Debug, thiserror::Error)]
#[error("making the webhook's certificates: {0}")]
pub struct CertError(String);

impl From<rcgen::Error> for CertError {
    fn from(e: rcgen::Error) -> Self {
        Self(e.to_string())
    }
}

fn ca_cert_key(id: &str) -> String {
    format!("ca-{id}.crt")
}

fn ca_key_key(id: &str) -> String {
    format!("ca-{id}.key")
}

fn offset(at: Timestamp) -> Result<time::OffsetDateTime, CertError> {
    time::OffsetDateTime::from_unix_timestamp(at.as_second()).map_err(|e| CertError(e.to_string()))
}

fn ca_params(id: &str, not_before: Timestamp, not_after: Timestamp) -> Result<CertificateParams, CertError> {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, format!("assumed-role-operator webhook CA {id}"));
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = offset(not_before)?;
    params.not_after = offset(not_after)?;
    Ok(params)
}

fn random_id() -> Result<String, CertError> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(|e| CertError(e.to_string()))?;
    Ok(hex::encode(bytes))
}

/// Carries `change` out on `contents`, at `now`.
pub fn apply(
    contents: &Contents,
    change: &Change,
    names: &[String],
    validity: &Validity,
    now: Timestamp,
) -> Result<Contents, CertError> {
    let mut out = match change {
        Change::Fresh => Contents::default(),
        _ => contents.clone(),
    };
    // Valid from a little earlier than now, as clocks differ a little: a
    // minute, or a tenth of a serving certificate's life if that is less.
    let start =
        now - jiff::SignedDuration::try_from((validity.serving / 10).min(Duration::from_secs(60))).unwrap_or_default();
    let ca_until = |from: Timestamp| from + jiff::SignedDuration::try_from(validity.ca).unwrap_or_default();
    let stage = |out: &mut Contents| -> Result<String, CertError> {
        let id = random_id()?;
        let key = KeyPair::generate()?;
        let not_after = ca_until(now);
        let cert = ca_params(&id, start, not_after)?.self_signed(&key)?;
        out.data.insert(ca_cert_key(&id), cert.pem());
        out.data.insert(ca_key_key(&id), key.serialize_pem());
        let ca = Ca {
            id: id.clone(),
            not_before: start,
            not_after,
            added: now,
        };
        match &mut out.record {
            Some(record) => record.cas.push(ca),
            None => {
                out.record = Some(Record {
                    cas: vec![ca],
                    serving: Serving {
                        issuer: String::new(),
                        not_before: start,
                        not_after: start,
                        names: Vec::new(),
                    },
                })
            }
        }
        Ok(id)
    };
    match change {
        Change::Fresh => {
            let id = stage(&mut out)?;
            issue(&mut out, &id, names, validity, start, now)?;
        }
        Change::Stage => {
            stage(&mut out)?;
        }
        Change::Drop(id) => {
            out.data.remove(&ca_cert_key(id));
            out.data.remove(&ca_key_key(id));
            if let Some(record) = &mut out.record {
                record.cas.retain(|ca| &ca.id != id);
            }
        }
        Change::Issue(id) => issue(&mut out, id, names, validity, start, now)?,
    }
    let bundle: String = out
        .record
        .iter()
        .flat_map(|r| r.cas.iter())
        .filter_map(|ca| out.data.get(&ca_cert_key(&ca.id)).cloned())
        .collect();
    out.data.insert(BUNDLE_KEY.into(), bundle);
    Ok(out)
}

/// A serving certificate for `names`, signed by CA `id`, never outliving it.
fn issue(
    out: &mut Contents,
    id: &str,
    names: &[String],
    validity: &Validity,
    start: Timestamp,
    now: Timestamp,
) -> Result<(), CertError> {
    let record = out
        .record
        .as_mut()
        .ok_or_else(|| CertError("no CA to sign with".into()))?;
    let ca = record
        .cas
        .iter()
        .find(|ca| ca.id == id)
        .ok_or_else(|| CertError(format!("no CA {id}")))?;
    let ca_key = out
        .data
        .get(&ca_key_key(id))
        .ok_or_else(|| CertError(format!("no key of CA {id}")))?;
    let ca_key = KeyPair::from_pem(ca_key)?;
    let issuer = Issuer::new(ca_params(id, ca.not_before, ca.not_after)?, ca_key);
    let not_after = (now + jiff::SignedDuration::try_from(validity.serving).unwrap_or_default()).min(ca.not_after);
    let mut params = CertificateParams::new(names.to_vec())?;
    let mut subject = DistinguishedName::new();
    subject.push(DnType::CommonName, names.first().cloned().unwrap_or_default());
    params.distinguished_name = subject;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = offset(start)?;
    params.not_after = offset(not_after)?;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    out.data.insert(CERT_KEY.into(), cert.pem());
    out.data.insert(KEY_KEY.into(), key.serialize_pem());
    record.serving = Serving {
        issuer: id.to_string(),
        not_before: start,
        not_after,
        names: names.to_vec(),
    };
    Ok(())
}

/// Every change due at `now`, carried out in turn: the contents to write,
/// or `None` when nothing is due. Bounded: each change is one of a few.
pub fn settle(
    contents: &Contents,
    names: &[String],
    validity: &Validity,
    now: Timestamp,
) -> Result<Option<Contents>, CertError> {
    let mut current = contents.clone();
    let mut changed = false;
    for _ in 0..6 {
        match next(current.record.as_ref(), names, validity, now) {
            Some(change) => {
                current = apply(&current, &change, names, validity, now)?;
                changed = true;
            }
            None => break,
        }
    }
    Ok(changed.then_some(current))
}

/// The serving certificate for rustls, from PEM.
pub fn certified_key(cert_pem: &str, key_pem: &str) -> Result<rustls::sign::CertifiedKey, CertError> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError(format!("reading the serving certificate: {e}")))?;
    if chain.is_empty() {
        return Err(CertError("no serving certificate".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| CertError(format!("reading the serving key: {e}")))?;
    let key = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key)
        .map_err(|e| CertError(format!("loading the serving key: {e}")))?;
    Ok(rustls::sign::CertifiedKey::new(chain, key))
}

/// Serves whichever certificate was stored last: rotation is a store, with
/// no listener restart, and handshakes in flight keep theirs.
#[derive(Debug, Default)]
pub struct Resolver {
    current: std::sync::RwLock<Option<std::sync::Arc<rustls::sign::CertifiedKey>>>,
}

impl Resolver {
    /// Serves `key` from now on.
    pub fn store(&self, key: rustls::sign::CertifiedKey) {
        if let Ok(mut current) = self.current.write() {
            *current = Some(std::sync::Arc::new(key));
        }
    }
}

impl rustls::server::ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<std::sync::Arc<rustls::sign::CertifiedKey>> {
        self.current.read().ok()?.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        vec!["aro.system.svc".into(), "127.0.0.1".into()]
    }

    fn short() -> Validity {
        Validity {
            ca: Duration::from_secs(3000),
            serving: Duration::from_secs(300),
        }
    }

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    fn verifies(bundle: &str, cert: &str, now: Timestamp) -> bool {
        use rustls::pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject as _};
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(bundle.as_bytes()) {
            roots.add(ca.unwrap()).unwrap();
        }
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
        )
        .build()
        .unwrap();
        let leaf = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
        let when = UnixTime::since_unix_epoch(Duration::from_secs(now.as_second() as u64));
        use rustls::client::danger::ServerCertVerifier as _;
        verifier
            .verify_server_cert(&leaf, &[], &ServerName::try_from("127.0.0.1").unwrap(), &[], when)
            .is_ok()
    }

    #[test]
    fn a_fresh_secret_gets_a_ca_and_a_serving_certificate_it_signed() {
        let made = settle(&Contents::default(), &names(), &short(), at(0))
            .unwrap()
            .unwrap();
        let record = made.record.as_ref().unwrap();
        assert_eq!(record.cas.len(), 1);
        assert_eq!(record.serving.issuer, record.cas[0].id);
        assert!(verifies(&made.data[BUNDLE_KEY], &made.data[CERT_KEY], at(1)));
        assert!(certified_key(&made.data[CERT_KEY], &made.data[KEY_KEY]).is_ok());
        assert_eq!(
            settle(&made, &names(), &short(), at(1)).unwrap(),
            None,
            "nothing more is due"
        );
    }

    #[test]
    fn a_serving_certificate_is_renewed_in_its_last_third_by_the_same_ca() {
        let made = settle(&Contents::default(), &names(), &short(), at(0))
            .unwrap()
            .unwrap();
        // Valid from 30 s before it was made to 300 s after: its last third
        // starts at 190 s.
        assert_eq!(next(made.record.as_ref(), &names(), &short(), at(185)), None);
        let ca = made.record.as_ref().unwrap().cas[0].id.clone();
        assert_eq!(
            next(made.record.as_ref(), &names(), &short(), at(195)),
            Some(Change::Issue(ca.clone()))
        );
        let renewed = settle(&made, &names(), &short(), at(195)).unwrap().unwrap();
        assert_ne!(renewed.data[CERT_KEY], made.data[CERT_KEY]);
        assert_eq!(renewed.data[BUNDLE_KEY], made.data[BUNDLE_KEY], "the bundle stays");
        assert!(verifies(&made.data[BUNDLE_KEY], &renewed.data[CERT_KEY], at(196)));
    }

    #[test]
    fn new_names_get_a_new_certificate() {
        let made = settle(&Contents::default(), &names(), &short(), at(0))
            .unwrap()
            .unwrap();
        let more = vec!["other.svc".to_string()];
        assert!(matches!(
            next(made.record.as_ref(), &more, &short(), at(1)),
            Some(Change::Issue(_))
        ));
    }

    #[test]
    fn a_new_ca_is_trusted_before_it_signs_and_the_old_one_until_it_expires() {
        let v = short();
        let mut contents = settle(&Contents::default(), &names(), &v, at(0)).unwrap().unwrap();
        let first = contents.record.as_ref().unwrap().cas[0].clone();
        let mut served_by_bundle: Vec<(i64, String, String)> = Vec::new();
        // Walk the CA's whole life and past it, a period at a time: at every
        // step the certificate served verifies against the bundle published
        // one period before (what a slow replica or the API server may hold).
        let step = v.period().as_secs() as i64;
        let mut published = contents.data[BUNDLE_KEY].clone();
        let mut staged_at = None;
        let mut promoted_at = None;
        let mut t = 0;
        while t < 4000 {
            t += step;
            if let Some(changed) = settle(&contents, &names(), &v, at(t)).unwrap() {
                contents = changed;
            }
            let record = contents.record.as_ref().unwrap();
            if record.cas.len() == 2 && staged_at.is_none() {
                staged_at = Some(t);
            }
            if record.serving.issuer != first.id && promoted_at.is_none() {
                promoted_at = Some(t);
            }
            assert!(
                verifies(&published, &contents.data[CERT_KEY], at(t)),
                "at {t} s the certificate served does not verify against the bundle of one period before"
            );
            served_by_bundle.push((t, contents.data[CERT_KEY].clone(), published.clone()));
            published = contents.data[BUNDLE_KEY].clone();
        }
        let (staged, promoted) = (staged_at.expect("a new CA was staged"), promoted_at.expect("and signs"));
        // The CA's last third of its life (it is valid from a little before
        // it was made).
        let life = first.not_after.as_second() - first.not_before.as_second();
        let last_third = first.not_after.as_second() - at(0).as_second() - life / 3;
        assert!(staged >= last_third && staged < last_third + step, "staged at {staged}");
        assert!(
            promoted - staged >= v.settle().as_secs() as i64,
            "signed after {} s",
            promoted - staged
        );
        let record = contents.record.as_ref().unwrap();
        assert!(
            record.cas.iter().all(|ca| ca.id != first.id),
            "the old CA was dropped once expired"
        );
        assert!(!contents.data.contains_key(&format!("ca-{}.key", first.id)));
    }
}
