//! The pod injection webhook: a mutating admission webhook, served over TLS
//! by every replica, that wires a labelled pod to the AssumedRole it names.
//!
//! [`inject`] decides what a pod gets (pure); [`tls`] decides when the
//! certificates change (pure); this module carries both out: it looks the
//! AssumedRole up in the controller's caches (one live read on a miss),
//! answers the API server, and keeps the certificates and the webhook
//! configuration's `caBundle` in step ([`keep_certificates`]).

pub mod inject;
pub mod tls;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use axum::{Router, body::Bytes, extract::State, http::header, response::IntoResponse, routing::post};
use k8s_openapi::api::{admissionregistration::v1::MutatingWebhookConfiguration, core::v1::Secret};
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
    core::{
        DynamicObject,
        admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation},
    },
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{api::AssumedRole, controller::Context, credentials::AssumeRoleRequest, policy::Verdict};

/// Where the serving certificate comes from.
#[derive(Debug, Clone)]
pub enum Certificates {
    /// The operator's own: a CA and a serving certificate in one Secret of
    /// its namespace, shared by every replica and rotated before expiry;
    /// the named webhook configuration's `caBundle` is kept in step.
    Managed {
        /// The operator's namespace.
        namespace: String,
        /// The Secret's name.
        secret: String,
        /// The MutatingWebhookConfiguration whose `caBundle` it keeps.
        configuration: Option<String>,
        /// The DNS names (and addresses) the certificate is for.
        names: Vec<String>,
        /// How long certificates last.
        validity: tls::Validity,
    },
    /// Another issuer's (cert-manager's): `tls.crt` and `tls.key` in this
    /// directory, read again as they change. That issuer keeps the
    /// `caBundle`.
    Files(PathBuf),
}

/// The webhook's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where it listens.
    pub address: SocketAddr,
    /// The sidecar it injects.
    pub sidecar: inject::Sidecar,
    /// Its certificates.
    pub certificates: Certificates,
}

/// What the handler needs.
struct Hook {
    ctx: Arc<Context>,
    sidecar: inject::Sidecar,
}

/// Serves the webhook until `shutdown` is cancelled. It answers only once a
/// certificate is loaded, and clears `pending` then.
pub async fn serve(
    settings: Settings,
    ctx: Arc<Context>,
    pending: Arc<std::sync::atomic::AtomicBool>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let resolver = Arc::new(tls::Resolver::default());
    let (loaded_tx, mut loaded) = tokio::sync::watch::channel(false);
    tokio::spawn(keep_certificates(
        settings.certificates.clone(),
        ctx.client.clone(),
        resolver.clone(),
        loaded_tx,
        shutdown.clone(),
    ));
    let mut config =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .context("the webhook's TLS settings")?
            .with_no_client_auth()
            .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    tokio::select! {
        _ = loaded.wait_for(|l| *l) => {}
        () = shutdown.cancelled() => return Ok(()),
    }
    let listener = tokio::net::TcpListener::bind(settings.address)
        .await
        .with_context(|| format!("binding the webhook's address {}", settings.address))?;
    info!(address = %listener.local_addr()?, "serving the injection webhook");
    pending.store(false, std::sync::atomic::Ordering::Relaxed);
    let hook = Arc::new(Hook {
        ctx,
        sidecar: settings.sidecar,
    });
    let app = Router::new().route("/mutate", post(mutate)).with_state(hook);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    warn!(error = %e, "accepting a webhook connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => return Ok(()),
        };
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await else {
                return;
            };
            let service = hyper_util::service::TowerToHyperService::new(app);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await;
        });
    }
}

/// Answers one AdmissionReview.
async fn mutate(State(hook): State<Arc<Hook>>, body: Bytes) -> impl IntoResponse {
    let started = std::time::Instant::now();
    let (response, result) = match serde_json::from_slice::<AdmissionReview<DynamicObject>>(&body)
        .map_err(|e| e.to_string())
        .and_then(|review| {
            let request: Result<AdmissionRequest<DynamicObject>, _> = review.try_into();
            request.map_err(|e| e.to_string())
        }) {
        Ok(request) => answer(&hook, &request).await,
        Err(why) => (
            AdmissionResponse::invalid(format!("not an AdmissionReview: {why}")),
            "invalid",
        ),
    };
    hook.ctx.metrics.admission(result, started.elapsed());
    let body = serde_json::to_vec(&response.into_review()).unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/json")], body)
}

/// The response to `request`, and the result it is counted under.
async fn answer(hook: &Hook, request: &AdmissionRequest<DynamicObject>) -> (AdmissionResponse, &'static str) {
    let response = AdmissionResponse::from(request);
    let (Operation::Create, Some(object)) = (&request.operation, &request.object) else {
        return (response, "unchanged");
    };
    // The request's namespace, not the object's: a pod a controller creates
    // may arrive without one.
    let namespace = request.namespace.clone().unwrap_or_default();
    let pod = match serde_json::to_value(object) {
        Ok(pod) => pod,
        Err(e) => return (response.deny(format!("reading the pod: {e}")), "denied"),
    };
    let who = object
        .metadata
        .name
        .clone()
        .or_else(|| object.metadata.generate_name.clone())
        .unwrap_or_default();
    let role = match inject::role_name(&pod) {
        Ok(name) => match role(&hook.ctx, &namespace, name).await {
            Ok(role) => role,
            Err(why) => return (response.deny(why), "denied"),
        },
        Err(_) => None,
    };
    match inject::decide(&pod, &namespace, role.as_ref(), &hook.sidecar) {
        inject::Decision::Deny(why) => {
            info!(namespace, pod = who, why, dry_run = request.dry_run, "refused a pod");
            (response.deny(why), "denied")
        }
        inject::Decision::Admit { patch, warnings } => {
            let result = if patch.is_empty() { "unchanged" } else { "injected" };
            info!(
                namespace,
                pod = who,
                assumed_role = role.as_ref().map(|r| r.name.as_str()),
                operations = patch.len(),
                dry_run = request.dry_run,
                "admitted a pod"
            );
            let mut response = if patch.is_empty() {
                response
            } else {
                match serde_json::from_value::<json_patch::Patch>(serde_json::Value::Array(patch))
                    .map_err(|e| e.to_string())
                    .and_then(|p| response.clone().with_patch(p).map_err(|e| e.to_string()))
                {
                    Ok(patched) => patched,
                    Err(why) => return (response.deny(format!("making the patch: {why}")), "denied"),
                }
            };
            if !warnings.is_empty() {
                response.warnings = Some(warnings);
            }
            (response, result)
        }
    }
}

/// The AssumedRole `name` of `namespace`, as injection sees it: from the
/// cache, or read once when the cache has not seen it (it may have been
/// created a moment ago). `Err` when it cannot be read at all.
async fn role(ctx: &Context, namespace: &str, name: &str) -> Result<Option<inject::Role>, String> {
    let ar = match ctx.assumed_role(namespace, name) {
        Some(ar) => ar,
        None => {
            let api: Api<AssumedRole> = Api::namespaced(ctx.client.clone(), namespace);
            match tokio::time::timeout(Duration::from_secs(3), api.get_opt(name)).await {
                Ok(Ok(Some(ar))) => Arc::new(ar),
                Ok(Ok(None)) => return Ok(None),
                Ok(Err(e)) => {
                    return Err(format!(
                        "reading AssumedRole {name} in namespace {namespace}: {}",
                        crate::api_message(&e)
                    ));
                }
                Err(_) => {
                    return Err(format!(
                        "reading AssumedRole {name} in namespace {namespace}: no answer in 3 s"
                    ));
                }
            }
        }
    };
    let refused = ctx.grants.labels(namespace).and_then(|labels| {
        let request = AssumeRoleRequest::for_resource(&ar);
        match crate::plan::policy_verdict(&ar, &request, namespace, &ctx.grants.policies(), &labels) {
            Verdict::Denied(why) => Some(why),
            Verdict::Allowed(_) => None,
        }
    });
    Ok(Some(view(&ar, refused)))
}

/// What injection needs of `ar`.
fn view(ar: &AssumedRole, refused: Option<String>) -> inject::Role {
    let ready = ar
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == crate::status::READY));
    let not_ready = match ready {
        Some(c) if c.status == "True" => None,
        Some(c) => Some(format!("{}: {}", c.reason, c.message)),
        None => Some("not reconciled yet".into()),
    };
    inject::Role {
        name: ar.metadata.name.clone().unwrap_or_default(),
        secret_name: ar.secret_name(),
        mount_path: ar.spec.mount_path().to_string(),
        refused,
        not_ready,
    }
}

/// Keeps the serving certificate loaded until `shutdown`: the operator's
/// own, rotated in the shared Secret, with the configuration's `caBundle`
/// kept in step; or another issuer's files, read again as they change.
/// `loaded` turns true once a certificate is.
async fn keep_certificates(
    certificates: Certificates,
    client: kube::Client,
    resolver: Arc<tls::Resolver>,
    loaded: tokio::sync::watch::Sender<bool>,
    shutdown: CancellationToken,
) {
    let mut serving = String::new();
    let period = match &certificates {
        Certificates::Managed { validity, .. } => validity.period(),
        Certificates::Files(_) => Duration::from_secs(10),
    };
    loop {
        let pair = match &certificates {
            Certificates::Managed {
                namespace,
                secret,
                configuration,
                names,
                validity,
            } => match managed(&client, namespace, secret, names, validity).await {
                Ok(contents) => {
                    if let Some(configuration) = configuration
                        && let Err(e) = publish_bundle(&client, configuration, &contents.data[tls::BUNDLE_KEY]).await
                    {
                        warn!(configuration, error = %e, "cannot keep the webhook configuration's caBundle");
                    }
                    Ok((
                        contents.data.get(tls::CERT_KEY).cloned().unwrap_or_default(),
                        contents.data.get(tls::KEY_KEY).cloned().unwrap_or_default(),
                    ))
                }
                Err(e) => Err(e),
            },
            Certificates::Files(dir) => std::fs::read_to_string(dir.join("tls.crt"))
                .and_then(|c| Ok((c, std::fs::read_to_string(dir.join("tls.key"))?)))
                .map_err(|e| anyhow::anyhow!("reading the webhook certificate in {}: {e}", dir.display())),
        };
        match pair {
            Ok((cert, key)) if cert != serving => match tls::certified_key(&cert, &key) {
                Ok(certified) => {
                    resolver.store(certified);
                    serving = cert;
                    info!("serving a new webhook certificate");
                    let _ = loaded.send(true);
                }
                Err(e) => warn!(error = %e, "cannot load the webhook certificate"),
            },
            Ok(_) => {}
            Err(e) => warn!(error = %e, "cannot read the webhook certificate"),
        }
        tokio::select! {
            () = tokio::time::sleep(period) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// The certificates in the shared Secret, after any change due now: made
/// by whichever replica comes first (create; on a conflict, read), changed
/// under optimistic concurrency (on a conflict, read again and decide again).
/// A Secret of that name that the operator did not make is never touched.
async fn managed(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    names: &[String],
    validity: &tls::Validity,
) -> anyhow::Result<tls::Contents> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    for _ in 0..5 {
        let existing = api
            .get_opt(name)
            .await
            .map_err(|e| anyhow::anyhow!("reading Secret {namespace}/{name}: {}", crate::api_message(&e)))?;
        let contents = match &existing {
            Some(secret) => read_contents(secret).ok_or_else(|| {
                anyhow::anyhow!(
                    "Secret {namespace}/{name} exists and was not made by the operator (no annotation {}): it is left alone; delete it, or name another Secret for the webhook",
                    tls::RECORD_ANNOTATION
                )
            })?,
            None => tls::Contents::default(),
        };
        let now = jiff::Timestamp::now();
        let Some(changed) = tls::settle(&contents, names, validity, now)? else {
            return Ok(contents);
        };
        let mut secret = write_contents(name, namespace, &changed)?;
        let written = match existing {
            Some(old) => {
                secret.metadata.resource_version = old.metadata.resource_version;
                api.replace(name, &PostParams::default(), &secret).await
            }
            None => api.create(&PostParams::default(), &secret).await,
        };
        match written {
            Ok(_) => {
                info!(secret = name, "wrote the webhook's certificates");
                return Ok(changed);
            }
            // Another replica wrote first: read what it wrote.
            Err(kube::Error::Api(status)) if status.code == 409 => continue,
            Err(e) => anyhow::bail!("writing Secret {namespace}/{name}: {}", crate::api_message(&e)),
        }
    }
    anyhow::bail!("Secret {namespace}/{name} kept changing under this replica's writes")
}

fn read_contents(secret: &Secret) -> Option<tls::Contents> {
    let record = secret.metadata.annotations.as_ref()?.get(tls::RECORD_ANNOTATION)?;
    let record: tls::Record = serde_json::from_str(record).ok()?;
    let data = secret
        .data
        .iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), String::from_utf8(v.0.clone()).ok()?)))
        .collect();
    Some(tls::Contents {
        data,
        record: Some(record),
    })
}

fn write_contents(name: &str, namespace: &str, contents: &tls::Contents) -> anyhow::Result<Secret> {
    let record = serde_json::to_string(&contents.record).context("the certificates' record")?;
    Ok(Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            // Not the label of the credentials Secrets: to the AssumedRoles'
            // watches this is someone else's Secret, whose name none may take.
            labels: Some(
                [
                    (
                        "app.kubernetes.io/part-of".to_string(),
                        "assumed-role-operator".to_string(),
                    ),
                    ("app.kubernetes.io/component".to_string(), "webhook".to_string()),
                ]
                .into(),
            ),
            annotations: Some([(tls::RECORD_ANNOTATION.to_string(), record)].into()),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(
            contents
                .data
                .iter()
                .map(|(k, v)| (k.clone(), k8s_openapi::ByteString(v.clone().into_bytes())))
                .collect(),
        ),
        ..Default::default()
    })
}

/// Sets the `caBundle` of every webhook of `configuration` that differs
/// from `bundle`: only that field, so that whoever installed the
/// configuration (Helm, a policy engine rewriting selectors) keeps the rest.
async fn publish_bundle(client: &kube::Client, configuration: &str, bundle: &str) -> anyhow::Result<()> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let current = api
        .get(configuration)
        .await
        .map_err(|e| anyhow::anyhow!("reading it: {}", crate::api_message(&e)))?;
    let wanted = bundle.as_bytes();
    let mut ops = Vec::new();
    for (index, webhook) in current.webhooks.iter().flatten().enumerate() {
        if webhook.client_config.ca_bundle.as_ref().map(|b| b.0.as_slice()) != Some(wanted) {
            ops.push(
                serde_json::json!({"op": "test", "path": format!("/webhooks/{index}/name"), "value": webhook.name}),
            );
            ops.push(serde_json::json!({
                "op": "add",
                "path": format!("/webhooks/{index}/clientConfig/caBundle"),
                "value": k8s_openapi::ByteString(wanted.to_vec()),
            }));
        }
    }
    if ops.is_empty() {
        return Ok(());
    }
    let patch: json_patch::Patch = serde_json::from_value(serde_json::Value::Array(ops))?;
    api.patch(
        configuration,
        &PatchParams {
            field_manager: Some(crate::controller::FIELD_MANAGER.into()),
            ..PatchParams::default()
        },
        &Patch::Json::<()>(patch),
    )
    .await
    .map_err(|e| anyhow::anyhow!("patching its caBundle: {}", crate::api_message(&e)))?;
    info!(configuration, "published the webhook's CA bundle");
    Ok(())
}
