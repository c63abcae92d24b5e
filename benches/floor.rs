//! The floor of `make bench`: the calls one mint needs and nothing else (one
//! AssumeRole, one Secret apply, one status patch per AssumedRole), in a
//! plain loop with the operator's concurrency, STS budget and API client
//! limits, the operator's own STS client, Secret and status. No watch, no
//! cache, no plan, no Event: what the operator's time to Ready is measured
//! against.
//!
//! `cargo bench --bench floor -- NAMESPACE... [--concurrency 4] [--sts-rate
//! 10] [--sts-burst 20] [--api-qps 50] [--api-burst 100]` mints for every
//! AssumedRole of the namespaces (listed once before the clock starts) and
//! prints `{"n": .., "ms": .., "failed": ..}`.

use std::{
    sync::{Arc, Mutex},
    time::Instant,
};

use assumed_role_operator::{
    api::AssumedRole,
    api_limit::ApiLimitLayer,
    budget::Bucket,
    controller::{DEFAULT_STS_BURST, DEFAULT_STS_RATE, FIELD_MANAGER},
    plan::{self, Held},
    schedule, secret, status,
    sts::{AssumeRoleRequest, AwsSts, Signer, Sts},
};
use clap::Parser;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Resource, ResourceExt,
    api::{ListParams, Patch, PatchParams},
};
use serde_json::json;

#[derive(Parser)]
struct Args {
    /// The namespaces whose AssumedRoles to mint for.
    #[arg(required = true)]
    namespaces: Vec<String>,
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    #[arg(long, default_value_t = DEFAULT_STS_RATE)]
    sts_rate: f64,
    #[arg(long, default_value_t = DEFAULT_STS_BURST)]
    sts_burst: u32,
    #[arg(long, default_value_t = assumed_role_operator::api_limit::DEFAULT_QPS)]
    api_qps: f64,
    #[arg(long, default_value_t = assumed_role_operator::api_limit::DEFAULT_BURST)]
    api_burst: u32,
    /// What `cargo bench` passes to every benchmark.
    #[arg(long, hide = true)]
    bench: bool,
}

/// A key for the Secrets' HMAC: the floor's Secrets are deleted with their
/// namespaces, never read by an operator.
const KEY: &[u8] = b"the floor run's own key, not the operator's";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = kube::Config::infer().await?;
    let client = kube::client::ClientBuilder::try_from(config)?
        .with_layer(&ApiLimitLayer::new(args.api_qps, args.api_burst))
        .build();
    let sts = Arc::new(AwsSts::from_env().await);
    let mut roles = Vec::new();
    for ns in &args.namespaces {
        let api: Api<AssumedRole> = Api::namespaced(client.clone(), ns);
        roles.extend(api.list(&ListParams::default()).await?.items);
    }
    let budget = Mutex::new(Bucket::new(args.sts_rate, args.sts_burst, Instant::now()));
    let started = Instant::now();
    let failed = futures::stream::iter(&roles)
        .map(|ar| mint(&client, sts.as_ref(), &budget, ar))
        .buffer_unordered(args.concurrency)
        .filter(|result| {
            if let Err(e) = result {
                eprintln!("floor: {e:#}");
            }
            futures::future::ready(result.is_err())
        })
        .count()
        .await;
    println!(
        "{}",
        json!({"n": roles.len(), "ms": started.elapsed().as_millis(), "failed": failed})
    );
    Ok(())
}

/// The calls of one mint, as the operator makes them.
async fn mint(client: &kube::Client, sts: &dyn Sts, budget: &Mutex<Bucket>, ar: &AssumedRole) -> anyhow::Result<()> {
    let ns = ar.namespace().unwrap_or_default();
    loop {
        let taken = budget
            .lock()
            .map_err(|_| anyhow::anyhow!("budget"))?
            .take(true, Instant::now());
        match taken {
            Ok(()) => break,
            Err(wait) => tokio::time::sleep(wait).await,
        }
    }
    let request = AssumeRoleRequest::for_resource(ar);
    let session = sts.assume_role(&request, &Signer::Operator).await?;
    let now = jiff::Timestamp::now();
    let issued = schedule::whole_second(now);
    let uid = ar.uid().unwrap_or_default();
    let refresh = plan::refresh_for(&uid, issued, session.credentials.expiration, ar.spec.refresh_before()?);
    let held = Held {
        creds: session.credentials,
        issued,
        spec_hash: secret::spec_hash(&request).into(),
        assumed_role_arn: session.assumed_role_arn,
        source_identity: session.source_identity,
        secret_name: ar.secret_name(),
        written: true,
        restores: 0,
        source_key: None,
    };
    let owner = ar.controller_owner_ref(&()).ok_or_else(|| anyhow::anyhow!("no uid"))?;
    let mut desired = secret::render_secret(ar, owner, &held.creds, issued, &held.spec_hash.to_string(), None, KEY);
    // Without its owner reference: deleted with the floor's namespaces, an
    // owned Secret is read again by the garbage collector (a GET per Secret,
    // for minutes at the controller manager's client rate), which the API
    // server would count against the operator's run that follows.
    desired.metadata.owner_references = None;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let apply = PatchParams::apply(FIELD_MANAGER).force();
    secrets
        .patch(&held.secret_name, &apply, &Patch::Apply(&desired))
        .await?;
    let report = status::Report::Serving {
        held: &held,
        refresh,
        refreshed_at: Some(issued),
        clamped_from: None,
    };
    let old = ar.status.clone().unwrap_or_default();
    let new = status::next(&old, ar.metadata.generation, &held.secret_name, report, now);
    let patch = json!({
        "apiVersion": AssumedRole::api_version(&()),
        "kind": AssumedRole::kind(&()),
        "status": new,
    });
    let roles: Api<AssumedRole> = Api::namespaced(client.clone(), &ns);
    roles
        .patch_status(&ar.name_any(), &apply, &Patch::Apply(&patch))
        .await?;
    Ok(())
}
