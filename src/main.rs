//! The `assumed-role-operator` command: `run` starts the controller, `crd`
//! prints the CustomResourceDefinition, `credentials-endpoint` serves a
//! mounted Secret to the SDKs of a pod.

use std::sync::Arc;

use anyhow::Context as _;
use assumed_role_operator::{
    admin,
    api::AssumedRole,
    api_limit,
    clock::{Clock, ClockLayer},
    controller::{self, Context, Settings},
    endpoint, hmac_key, leader,
    policy::AssumedRolePolicy,
    rollout, source,
    sts::AwsSts,
    webhook,
};
use clap::{Parser, Subcommand, ValueEnum};
use kube::CustomResourceExt;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

#[derive(Parser)]
#[command(version, about = "Keeps AWS STS AssumeRole credentials fresh in Kubernetes Secrets")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller.
    Run(Box<RunArgs>),
    /// Print the CustomResourceDefinitions as YAML: all, or the one named
    /// (`assumedroles.sts.refresh.dev`, `assumedrolepolicies.sts.refresh.dev`,
    /// `clusterassumedroles.sts.refresh.dev`).
    Crd {
        /// The CRD's name; all when absent.
        name: Option<String>,
    },
    /// Serve the credentials of a mounted Secret to the SDKs of the pod, on
    /// a loopback address: run it as a native sidecar and point
    /// `AWS_CONTAINER_CREDENTIALS_FULL_URI` at it.
    CredentialsEndpoint(EndpointArgs),
}

#[derive(Parser)]
struct EndpointArgs {
    /// Where the AssumedRole's Secret is mounted (its `spec.secret.mountPath`).
    #[arg(long, env = "CREDENTIALS_DIR", default_value = "/var/run/secrets/aws")]
    credentials_dir: std::path::PathBuf,
    /// Address to listen on; loopback only. The SDKs ask
    /// `http://<address>/v1/credentials`.
    #[arg(long, env = "LISTEN_ADDRESS", default_value = "127.0.0.1:9911")]
    listen: std::net::SocketAddr,
    /// Probe the endpoint already running on `--listen` instead of serving,
    /// as a kubelet `exec` probe: `ready` exits 0 only when it serves
    /// unexpired credentials with the mounted token, `live` when it answers.
    #[arg(long, value_enum)]
    probe: Option<endpoint::Probe>,
    /// Least severe level logged.
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    log_level: tracing::Level,
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Parser)]
struct RunArgs {
    /// Log filter, in tracing's env-filter syntax (for example `info` or
    /// `assumed_role_operator=debug`). The Kubernetes client's own line per
    /// failed request is off unless the filter names `kube_client`; so are
    /// the debug and trace lines of the AWS SDK, HTTP and TLS crates, which
    /// show what goes over the wire (credentials among it), unless the
    /// filter names the crate (`aws_smithy`, `aws_sigv4`, `hyper`, ...).
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    log_level: String,
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Namespace the operator runs in; holds the HMAC key Secret.
    #[arg(long, env = "POD_NAMESPACE", default_value = "assumed-role-operator")]
    namespace: String,
    /// Name of this replica, reported on Events.
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
    /// Watch only these namespaces (comma-separated); all when empty.
    #[arg(long, env = "WATCH_NAMESPACES", value_delimiter = ',')]
    watch_namespaces: Vec<String>,
    /// Address of the admin server (`/livez`, `/readyz`, `/metrics`).
    #[arg(long, env = "ADMIN_ADDRESS", default_value = "0.0.0.0:8080")]
    admin_address: std::net::SocketAddr,
    /// Run only while holding the Lease `assumed-role-operator` in the
    /// operator's namespace, so that replicas never write at once.
    #[arg(long, env = "LEADER_ELECT", default_value_t = false)]
    leader_elect: bool,
    /// Seconds a leader's lease lasts without renewal.
    #[arg(long, env = "LEASE_DURATION_SECONDS", default_value_t = 30)]
    lease_duration_seconds: u64,
    /// How many AssumedRoles are reconciled at once.
    #[arg(long, env = "CONCURRENCY", default_value_t = 4)]
    concurrency: u16,
    /// Tag every session with `kubernetes-namespace` and `kubernetes-name`
    /// (the AssumedRole's), for CloudTrail and for the role's policies. The
    /// role's trust policy must then allow `sts:TagSession`.
    #[arg(long, env = "SESSION_TAGS", default_value_t = false)]
    session_tags: bool,
    /// Audience of the ServiceAccount tokens that `spec.source.serviceAccountName`
    /// asks for, when the AssumedRole names none: the audience the role's
    /// OIDC identity provider expects.
    #[arg(long, env = "TOKEN_AUDIENCE", default_value = source::DEFAULT_AUDIENCE)]
    token_audience: String,
    /// The kinds of source AssumedRoles may use, comma-separated, of
    /// `Operator`, `ServiceAccount`, `Secret`, `AssumedRole`. An AssumedRole
    /// of another kind gets `SourceDisabled`, with no call: the chart grants
    /// the RBAC of each kind (TokenRequest for `ServiceAccount`) only when
    /// it is on.
    #[arg(long, env = "SOURCES", value_delimiter = ',', default_value = "Operator,ServiceAccount,Secret,AssumedRole", value_parser = source_kind)]
    sources: Vec<assumed_role_operator::api::SourceKind>,
    /// STS calls per second, shared by every reconcile. STS throttling
    /// slows it down further until calls succeed again.
    #[arg(long, env = "STS_RATE", default_value_t = controller::DEFAULT_STS_RATE, value_parser = positive_rate)]
    sts_rate: f64,
    /// STS calls that may be made at once before the rate applies.
    #[arg(long, env = "STS_BURST", default_value_t = controller::DEFAULT_STS_BURST, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    sts_burst: u32,
    /// Requests per second to the API server (client-side, as client-go's
    /// QPS); each watch counts once, when it starts.
    #[arg(long, env = "API_QPS", default_value_t = api_limit::DEFAULT_QPS, value_parser = positive_rate)]
    api_qps: f64,
    /// Requests to the API server that may go at once before the rate
    /// applies.
    #[arg(long, env = "API_BURST", default_value_t = api_limit::DEFAULT_BURST, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    api_burst: u32,
    /// Serve the pod injection webhook on this address (HTTPS), on every
    /// replica; off when absent.
    #[arg(long, env = "WEBHOOK_ADDRESS")]
    webhook_address: Option<std::net::SocketAddr>,
    /// The Secret, in the operator's namespace, that holds the webhook's CA
    /// and serving certificate, made and rotated by the operator and shared
    /// by every replica.
    #[arg(long, env = "WEBHOOK_SECRET", default_value = "assumed-role-operator-webhook-tls")]
    webhook_secret: String,
    /// The MutatingWebhookConfiguration whose `caBundle` the operator keeps
    /// in step with its CA.
    #[arg(long, env = "WEBHOOK_CONFIGURATION")]
    webhook_configuration: Option<String>,
    /// The DNS names (or addresses) the webhook's certificate is for,
    /// comma-separated: its Service's names.
    #[arg(long, env = "WEBHOOK_DNS_NAMES", value_delimiter = ',')]
    webhook_dns_names: Vec<String>,
    /// Serve `tls.crt` and `tls.key` from this directory (written and
    /// rotated by another issuer, such as cert-manager) instead of the
    /// operator's own certificates; that issuer then keeps the `caBundle`.
    #[arg(long, env = "WEBHOOK_CERT_DIR")]
    webhook_cert_dir: Option<std::path::PathBuf>,
    /// The image of the sidecar that the webhook injects: the operator's own.
    #[arg(long, env = "SIDECAR_IMAGE", default_value = concat!("ghcr.io/assumed-role-operator/assumed-role-operator:", env!("CARGO_PKG_VERSION")))]
    sidecar_image: String,
    /// The injected sidecar's `imagePullPolicy`; the cluster's default when
    /// absent.
    #[arg(long, env = "SIDECAR_IMAGE_PULL_POLICY")]
    sidecar_image_pull_policy: Option<String>,
    /// The loopback port the injected sidecar serves on.
    #[arg(long, env = "SIDECAR_PORT", default_value_t = 9911)]
    sidecar_port: u16,
    /// Roll out each Deployment, StatefulSet and DaemonSet annotated
    /// `sts.refresh.dev/restart-on-refresh: <AssumedRoles>` once per new set
    /// of credentials (a pod template annotation), for consumers that read
    /// credentials once.
    #[arg(long, env = "ROLLOUTS", default_value_t = false)]
    rollouts: bool,
    /// Rollouts per second, at most, across every workload.
    #[arg(long, env = "ROLLOUT_RATE", default_value_t = 1.0, value_parser = positive_rate)]
    rollout_rate: f64,
    /// Rollouts that may start at once before the rate applies.
    #[arg(long, env = "ROLLOUT_BURST", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    rollout_burst: u32,
    /// Keep one AssumedRole per namespace that each ClusterAssumedRole
    /// selects, in step with its template.
    #[arg(long, env = "CLUSTER_ASSUMED_ROLES", default_value_t = false)]
    cluster_assumed_roles: bool,
    /// Testing only: seconds the webhook's CA is valid.
    #[arg(long, hide = true, env = "WEBHOOK_CA_VALIDITY_SECONDS")]
    webhook_ca_validity_seconds: Option<u64>,
    /// Testing only: seconds the webhook's serving certificate is valid.
    #[arg(long, hide = true, env = "WEBHOOK_CERT_VALIDITY_SECONDS")]
    webhook_cert_validity_seconds: Option<u64>,
    /// Testing only: seconds this replica's reading of the system clock is
    /// off, to show that schedules follow the API server's clock.
    #[arg(long, hide = true, default_value_t = 0, allow_negative_numbers = true)]
    clock_offset_seconds: i64,
    /// Testing only: seconds each refresh pauses after the STS answer.
    #[arg(long, hide = true, default_value_t = 0)]
    pause_after_sts_seconds: u64,
    /// Testing only: seconds each refresh pauses after the Secret write.
    #[arg(long, hide = true, default_value_t = 0)]
    pause_after_secret_write_seconds: u64,
}

/// A rate of more than 0 and at most 10,000 calls per second.
fn positive_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if rate > 0.0 && rate <= 10_000.0 => Ok(rate),
        _ => Err(format!("{text:?} is not a rate above 0 and at most 10000 per second")),
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd { name } => {
            let crds = [
                AssumedRole::crd(),
                AssumedRolePolicy::crd(),
                assumed_role_operator::fanout::ClusterAssumedRole::crd(),
            ];
            let chosen: Vec<_> = crds
                .iter()
                .filter(|c| name.as_deref().is_none_or(|n| c.metadata.name.as_deref() == Some(n)))
                .collect();
            anyhow::ensure!(!chosen.is_empty(), "no CRD named {name:?}");
            let docs = chosen
                .into_iter()
                .map(serde_yaml::to_string)
                .collect::<Result<Vec<_>, _>>()
                .context("rendering the CRDs")?;
            print!("{}", docs.join("---\n"));
            Ok(())
        }
        Command::CredentialsEndpoint(args) => match args.probe {
            Some(kind) => {
                let found = endpoint::probe(kind, args.listen, &args.credentials_dir)?;
                println!("{found}");
                Ok(())
            }
            None => {
                init_plain_logging(args.log_level, args.log_format);
                endpoint::serve(args.listen, args.credentials_dir)
            }
        },
        Command::Run(args) => {
            assumed_role_operator::allocator::tune();
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the runtime")?
                .block_on(run(*args))
        }
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    init_logging(&args.log_level, args.log_format)?;
    let webhook = args
        .webhook_address
        .map(|address| webhook_settings(&args, address))
        .transpose()?;
    let (credentials, sts_endpoint) = AwsSts::describe_env();
    info!(
        version = env!("CARGO_PKG_VERSION"),
        namespace = %args.namespace,
        watch_namespaces = ?args.watch_namespaces,
        leader_elect = args.leader_elect,
        lease_duration_seconds = args.lease_duration_seconds,
        concurrency = args.concurrency,
        session_tags = args.session_tags,
        token_audience = %args.token_audience,
        sources = ?args.sources.iter().map(|k| k.as_str()).collect::<Vec<_>>(),
        sts_rate = args.sts_rate,
        sts_burst = args.sts_burst,
        api_qps = args.api_qps,
        api_burst = args.api_burst,
        admin_address = %args.admin_address,
        credentials = %credentials,
        sts_endpoint = %sts_endpoint,
        "starting assumed-role-operator"
    );
    let shutdown = CancellationToken::new();
    tokio::spawn(signal_shutdown(shutdown.clone()));
    let state = admin::State::default();
    let admin_server = tokio::spawn(admin::serve(args.admin_address, state.clone(), shutdown.clone()));

    let config = kube::Config::infer()
        .await
        .context("finding the Kubernetes API (in-cluster or KUBECONFIG)")?;
    let clock = Arc::new(Clock::new(jiff::SignedDuration::from_secs(args.clock_offset_seconds)));
    let client = kube::client::ClientBuilder::try_from(config)
        .context("connecting to the Kubernetes API")?
        .with_layer(&ClockLayer::new(clock.clone(), state.metrics.clock_offset.clone()))
        .with_layer(&api_limit::ApiLimitLayer::new(args.api_qps, args.api_burst))
        .build();
    let Some(hmac_key) = hmac_key_when_reachable(&client, &args.namespace, &shutdown).await? else {
        return Ok(());
    };
    let aws = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let sts = Arc::new(AwsSts::from_config(&aws));
    let mut ctx = Context::new(client, sts, hmac_key, state.metrics.clone(), args.pod_name.clone());
    ctx.ecr = Some(Arc::new(assumed_role_operator::ecr::call::AwsEcr::from_config(aws)));
    ctx.session_tags = args.session_tags;
    ctx.clock = clock;
    ctx.test_pauses = controller::TestPauses {
        after_sts: std::time::Duration::from_secs(args.pause_after_sts_seconds),
        after_secret_write: std::time::Duration::from_secs(args.pause_after_secret_write_seconds),
    };
    ctx.token_audience = args.token_audience;
    ctx.enabled_sources = args.sources.clone();
    ctx.budget = std::sync::Mutex::new(assumed_role_operator::budget::Bucket::new(
        args.sts_rate,
        args.sts_burst,
        std::time::Instant::now(),
    ));
    ctx.metrics.sts_budget_rate.set(args.sts_rate);
    let identity = args
        .pod_name
        .clone()
        .unwrap_or_else(|| format!("pid-{}", std::process::id()));
    let leading = args.leader_elect.then(|| {
        let (tx, rx) = tokio::sync::watch::channel(false);
        ctx.leading = rx;
        tx
    });
    let ctx = Arc::new(ctx);
    let webhook = webhook.map(|settings| {
        state.webhook_pending.store(true, std::sync::atomic::Ordering::Relaxed);
        tokio::spawn(webhook::serve(
            settings,
            ctx.clone(),
            state.webhook_pending.clone(),
            shutdown.clone(),
        ))
    });
    if args.cluster_assumed_roles {
        tokio::spawn(assumed_role_operator::fanout::run(
            ctx.clone(),
            args.watch_namespaces.clone(),
            shutdown.clone(),
        ));
    }
    if args.rollouts {
        tokio::spawn(rollout::run(
            ctx.clone(),
            rollout::Settings {
                namespaces: args.watch_namespaces.clone(),
                rate: args.rollout_rate,
                burst: args.rollout_burst,
            },
            shutdown.clone(),
        ));
    }
    let settings = Settings {
        namespaces: args.watch_namespaces,
        concurrency: args.concurrency,
    };
    if !controller::wait_for_crd(&ctx.client, &settings.namespaces, &shutdown).await {
        return stop(admin_server, false).await;
    }
    // What a burst of reconciles freed goes back to the system once it is
    // over: the heap would otherwise stay at the burst's size.
    let metrics = ctx.metrics.clone();
    tokio::spawn(assumed_role_operator::allocator::release_after_work(
        move || metrics.reconciled(),
        assumed_role_operator::allocator::release,
        std::time::Duration::from_secs(30),
        shutdown.clone(),
    ));
    let ready = state.ready.clone();
    let lost = match leading {
        Some(leading) => {
            // Every replica runs the controller and keeps its caches warm;
            // only the holder of the Lease reconciles. Losing the Lease stops
            // the process; on shutdown the Lease is released only once the
            // reconciles in flight have finished.
            let elector = leader::elect(
                ctx.client.clone(),
                &args.namespace,
                &identity,
                std::time::Duration::from_secs(args.lease_duration_seconds),
                leading,
                shutdown.clone(),
                ctx.metrics.clone(),
            );
            let controller = controller::run(ctx.clone(), settings, ready, shutdown.clone());
            tokio::pin!(controller);
            let lost = tokio::select! {
                lost = elector => {
                    if lost {
                        shutdown.cancel();
                    }
                    (&mut controller).await;
                    lost
                }
                () = &mut controller => false,
            };
            if !lost {
                leader::release(ctx.client.clone(), &args.namespace, &identity).await;
                ctx.metrics.leader.set(0);
            }
            lost
        }
        None => {
            ctx.metrics.leader.set(1);
            controller::run(ctx, settings, ready, shutdown.clone()).await;
            false
        }
    };
    shutdown.cancel();
    if let Some(webhook) = webhook {
        webhook.await.context("webhook task")?.context("webhook")?;
    }
    stop(admin_server, lost).await
}

/// The webhook's settings from the flags.
fn webhook_settings(args: &RunArgs, address: std::net::SocketAddr) -> anyhow::Result<webhook::Settings> {
    let certificates = match &args.webhook_cert_dir {
        Some(dir) => webhook::Certificates::Files(dir.clone()),
        None => {
            anyhow::ensure!(
                !args.webhook_dns_names.is_empty(),
                "--webhook-dns-names (WEBHOOK_DNS_NAMES) must name the webhook's Service, for its certificate"
            );
            let mut validity = webhook::tls::Validity::default();
            if let Some(seconds) = args.webhook_ca_validity_seconds {
                validity.ca = std::time::Duration::from_secs(seconds);
            }
            if let Some(seconds) = args.webhook_cert_validity_seconds {
                validity.serving = std::time::Duration::from_secs(seconds);
            }
            webhook::Certificates::Managed {
                namespace: args.namespace.clone(),
                secret: args.webhook_secret.clone(),
                configuration: args.webhook_configuration.clone(),
                names: args.webhook_dns_names.clone(),
                validity,
            }
        }
    };
    Ok(webhook::Settings {
        address,
        sidecar: webhook::inject::Sidecar {
            image: args.sidecar_image.clone(),
            pull_policy: args.sidecar_image_pull_policy.clone(),
            port: args.sidecar_port,
        },
        certificates,
    })
}

/// Waits for the admin server to close, and says how the process ends.
async fn stop(admin_server: tokio::task::JoinHandle<std::io::Result<()>>, lost: bool) -> anyhow::Result<()> {
    admin_server
        .await
        .context("admin server task")?
        .context("admin server")?;
    if lost {
        anyhow::bail!("lost the leader lease");
    }
    info!("stopped");
    Ok(())
}

fn source_kind(name: &str) -> Result<assumed_role_operator::api::SourceKind, String> {
    assumed_role_operator::api::SourceKind::parse(name)
        .ok_or_else(|| format!("{name:?} is not one of Operator, ServiceAccount, Secret, AssumedRole"))
}

/// Cancels `token` on SIGTERM or SIGINT.
/// The HMAC key, once the API server answers: an operator that starts while
/// the API server (or the network to it) is away waits for it, with a
/// capped backoff, rather than exit into a crash loop whose own backoff
/// outlasts the outage. A refusal (RBAC) ends the run. `None` on shutdown.
async fn hmac_key_when_reachable(
    client: &kube::Client,
    namespace: &str,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<Vec<u8>>> {
    let mut wait = std::time::Duration::from_secs(1);
    loop {
        match hmac_key::load_hmac_key(client.clone(), namespace).await {
            Ok(key) => return Ok(Some(key)),
            Err(e) if e.reason() == assumed_role_operator::outcome::Reason::GetSecret => {
                warn!(error = %e, retry_in_seconds = wait.as_secs(), "the API server does not answer yet");
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = shutdown.cancelled() => return Ok(None),
                }
                wait = (wait * 2).min(std::time::Duration::from_secs(30));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

async fn signal_shutdown(token: CancellationToken) {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => {
                let _ = interrupt.await;
                token.cancel();
                return;
            }
        };
        tokio::select! {
            _ = interrupt => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
    info!("shutting down");
    token.cancel();
}

/// Logging for the credentials endpoint: a level, no filter expressions, so
/// that a sidecar in every pod does not carry a regex engine in memory.
fn init_plain_logging(level: tracing::Level, format: LogFormat) {
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(false);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn init_logging(log_level: &str, log_format: LogFormat) -> anyhow::Result<()> {
    let mut filter = tracing_subscriber::EnvFilter::try_new(log_level).context("parsing --log-level")?;
    // The client logs every failed request at error level with no word of
    // the object; the operator logs each failed attempt once, with it. Ask
    // for `kube_client=...` in the filter to see the client's own lines.
    if !log_level.contains("kube_client") {
        filter = filter.add_directive(
            "kube_client::client::builder=off"
                .parse()
                .context("the client log directive")?,
        );
    }
    let named: Vec<&'static str> = WIRE_CRATES
        .iter()
        .copied()
        .filter(|krate| log_level.contains(krate))
        .collect();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let quiet_wire = tracing_subscriber::filter::filter_fn(move |meta| wire_allowed(meta, &named));
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    match log_format {
        LogFormat::Json => builder.json().finish().with(quiet_wire).init(),
        LogFormat::Text => builder.finish().with(quiet_wire).init(),
    }
    Ok(())
}

/// Crates below the operator that log what goes over the wire at debug and
/// trace: request and response bodies (a web identity token, STS's answer),
/// headers (`X-Amz-Security-Token`), the strings SigV4 signs. Their debug
/// and trace lines are dropped unless the filter names the crate, whatever
/// the level asked for, so that `LOG_LEVEL=trace` logs no credential.
const WIRE_CRATES: [&str; 12] = [
    "aws_smithy",
    "aws_sigv4",
    "aws_runtime",
    "aws_sdk_",
    "aws_config",
    "aws_credential_types",
    "aws_types",
    "hyper",
    "h2",
    "rustls",
    "tower",
    "kube_client",
];

/// Whether an event or span may be logged: at info and above always; at
/// debug and trace only outside [`WIRE_CRATES`], or in one the filter names.
fn wire_allowed(meta: &tracing::Metadata<'_>, named: &[&str]) -> bool {
    if *meta.level() <= tracing::Level::INFO {
        return true;
    }
    let target = meta.target();
    match WIRE_CRATES.iter().find(|krate| target.starts_with(**krate)) {
        Some(krate) => named.contains(krate),
        None => true,
    }
}
