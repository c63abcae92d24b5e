//! The controller: wiring, [`reconcile`] and the executor that carries out
//! the [`Plan`] that [`plan::decide`] returns, [`error_policy`], and the
//! [`Context`] they share. The effects live here (and in [`crate::sts`]):
//! reading and writing the Secret, calling STS, writing status and Events.
//!
//! One reconcile: an event wakes it; the Secret is read if the plan needs it;
//! [`plan::decide`] returns one plan; the executor carries it out and ends in
//! a [`Report`]; [`status::next`] turns that into the new status, which is
//! written, with a Warning Event only on a transition.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::{FutureExt, StreamExt, future::BoxFuture};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::PartialObjectMeta,
    runtime::{Controller, WatchStreamExt, controller::Action, reflector, reflector::ObjectRef, watcher},
};
use tracing::{debug, info, warn};

mod executor;
mod grants;
mod index;
mod publisher;
mod wakeups;

pub use crate::plan::MAX_RESTORES;
use crate::{
    Error, Result, api::AssumedRole, memory::Memory, metrics::Metrics, outcome::Reason, plan::Target, schedule, secret,
    sts::Sts,
};
pub use grants::{Change, Grants};
pub use publisher::EventPublisher;

/// STS calls per second, by default: far below an account's STS quota.
pub const DEFAULT_STS_RATE: f64 = 10.0;
/// STS calls that may be made at once, by default.
pub const DEFAULT_STS_BURST: u32 = 20;

/// Field manager for every write the operator makes.
pub const FIELD_MANAGER: &str = "assumed-role-operator";

/// Shared by every reconcile.
pub struct Context {
    /// The Kubernetes client.
    pub client: Client,
    /// The STS client.
    pub sts: Arc<dyn Sts>,
    /// The ECR client, for image pull Secrets; none: they are not written.
    pub ecr: Option<Arc<dyn crate::ecr::call::Ecr>>,
    /// Publishes Events.
    pub events: EventPublisher,
    /// Key of the data HMAC.
    pub hmac_key: Vec<u8>,
    /// Metrics, shared with the admin server.
    pub metrics: Arc<Metrics>,
    /// Held credentials and remembered failures, per AssumedRole.
    pub memory: Memory,
    /// Whether each session is tagged with the AssumedRole's namespace and
    /// name (`--session-tags`).
    pub session_tags: bool,
    /// Every AssumedRolePolicy and namespace's labels, cached.
    pub grants: Grants,
    /// Audience of ServiceAccount tokens when the spec names none
    /// (`--token-audience`).
    pub token_audience: String,
    /// The kinds of source this installation may use (`--sources`): the
    /// chart grants the RBAC of each only when it is on.
    pub enabled_sources: Vec<crate::api::SourceKind>,
    /// Testing only: pauses at the points where a crash is worst.
    pub test_pauses: TestPauses,
    /// The operator's clock, corrected to the API server's.
    pub clock: Arc<crate::clock::Clock>,
    /// The STS budget shared by every reconcile.
    pub budget: Mutex<crate::budget::Bucket>,
    /// Whether this replica holds the leader Lease (always, without leader
    /// election). Every replica keeps its caches warm; only the leader
    /// reconciles.
    pub leading: tokio::sync::watch::Receiver<bool>,
    /// When each AssumedRole is next reconciled if nothing changes before.
    wakeups: Arc<wakeups::Wakeups>,
    /// The caches of AssumedRoles, one per watched scope, filled by [`run`]:
    /// where `spec.source.assumedRoleRef` is looked up.
    roles: Mutex<Vec<reflector::Store<AssumedRole>>>,
    /// Whether each owned-Secret watch has delivered its first list.
    owned_synced: Mutex<Vec<tokio::sync::watch::Receiver<bool>>>,
    /// Set while an owned-Secret watch fails (its last event was an error,
    /// such as a 403 without the RBAC to list Secrets).
    owned_failing: tokio::sync::watch::Sender<bool>,
    /// When the API server last answered a watch or a call (Unix
    /// milliseconds; 0 for never).
    api_seen: std::sync::atomic::AtomicI64,
    /// Set when a call to the API server failed, cleared when one works.
    api_down: std::sync::atomic::AtomicBool,
    /// When STS last answered a call (Unix milliseconds; 0 for never).
    sts_seen: std::sync::atomic::AtomicI64,
    /// Set when STS was down or throttled a call, cleared when it answers.
    sts_down: std::sync::atomic::AtomicBool,
    /// Tells every controller loop that the API server or STS answers
    /// again, so that the AssumedRoles waiting out a backoff from the outage
    /// catch up at once rather than each at its own retry time.
    api_back: tokio::sync::broadcast::Sender<()>,
}

/// Testing only (hidden flags): how long a refresh pauses right after STS
/// answered and right after the Secret was written, so that a test can kill
/// the operator in those windows. Zero, so no pause, in production.
#[derive(Debug, Default, Clone, Copy)]
pub struct TestPauses {
    /// After the STS answer, before the Secret write.
    pub after_sts: Duration,
    /// After the Secret write, before the status write.
    pub after_secret_write: Duration,
}

impl TestPauses {
    async fn pause(&self, length: Duration, point: &str) {
        if !length.is_zero() {
            warn!(point, seconds = length.as_secs_f64(), "testing: pausing the refresh");
            tokio::time::sleep(length).await;
        }
    }
}

impl Context {
    /// Builds a context.
    pub fn new(
        client: Client,
        sts: Arc<dyn Sts>,
        hmac_key: Vec<u8>,
        metrics: Arc<Metrics>,
        instance: Option<String>,
    ) -> Self {
        Self {
            events: EventPublisher::new(client.clone(), instance),
            client,
            sts,
            ecr: None,
            hmac_key,
            metrics,
            memory: Memory::default(),
            session_tags: false,
            grants: Grants::default(),
            token_audience: crate::source::DEFAULT_AUDIENCE.into(),
            enabled_sources: crate::api::SourceKind::ALL.to_vec(),
            leading: tokio::sync::watch::channel(true).1,
            clock: Arc::default(),
            test_pauses: TestPauses::default(),
            budget: Mutex::new(crate::budget::Bucket::new(
                DEFAULT_STS_RATE,
                DEFAULT_STS_BURST,
                std::time::Instant::now(),
            )),
            roles: Mutex::default(),
            owned_synced: Mutex::default(),
            wakeups: Arc::default(),
            owned_failing: tokio::sync::watch::Sender::new(false),
            api_seen: std::sync::atomic::AtomicI64::new(0),
            api_down: std::sync::atomic::AtomicBool::new(false),
            sts_seen: std::sync::atomic::AtomicI64::new(0),
            sts_down: std::sync::atomic::AtomicBool::new(false),
            api_back: tokio::sync::broadcast::channel(4).0,
        }
    }

    /// Notes whether a call to the API server worked; the first success
    /// after a failure tells the controller loops.
    fn api_answered(&self, answered: bool) {
        use std::sync::atomic::Ordering;
        if answered {
            self.saw_api();
            if self.api_down.swap(false, Ordering::Relaxed) {
                info!("the API server answers again; reconciling every AssumedRole");
                let _ = self.api_back.send(());
            }
        } else {
            self.api_down.store(true, Ordering::Relaxed);
        }
    }

    /// Notes whether STS answered a call (throttling and 5xx are no
    /// answer); the first answer after an outage tells the controller loops.
    pub(crate) fn sts_answered(&self, answered: bool) {
        use std::sync::atomic::Ordering;
        if answered {
            self.sts_seen
                .store(self.clock.now().as_millisecond(), Ordering::Relaxed);
            if self.sts_down.swap(false, Ordering::Relaxed) {
                info!("STS answers again; retrying every AssumedRole that waited on it");
                let _ = self.api_back.send(());
            }
        } else {
            self.sts_down.store(true, Ordering::Relaxed);
        }
    }

    /// When STS last answered a call.
    fn sts_seen(&self) -> Option<Timestamp> {
        let millis = self.sts_seen.load(std::sync::atomic::Ordering::Relaxed);
        (millis > 0).then(|| Timestamp::from_millisecond(millis).ok()).flatten()
    }

    /// Notes that a watch heard from the API server just now.
    fn saw_api(&self) {
        self.api_seen
            .store(self.clock.now().as_millisecond(), std::sync::atomic::Ordering::Relaxed);
    }

    /// When a watch last heard from the API server.
    fn api_seen(&self) -> Option<Timestamp> {
        let millis = self.api_seen.load(std::sync::atomic::Ordering::Relaxed);
        (millis > 0).then(|| Timestamp::from_millisecond(millis).ok()).flatten()
    }

    /// The AssumedRole `name` of `namespace`, from the cache.
    pub fn assumed_role(&self, namespace: &str, name: &str) -> Option<Arc<AssumedRole>> {
        let stores = self.roles.lock().ok()?;
        stores
            .iter()
            .find_map(|store| store.get(&ObjectRef::new(name).within(namespace)))
    }

    /// Follows one event of the owned-Secret watch of `scope` into
    /// [`Memory`]; `list` counts that watch's lists, and moves on at each.
    fn saw(&self, event: &watcher::Event<Secret>, scope: u16, list: &mut u32) {
        match event {
            watcher::Event::Apply(s) | watcher::Event::InitApply(s) => {
                let Some(uid) = secret::controller_uid(s) else { return };
                let observed = secret::observe_owned(s, &self.hmac_key);
                let credentials = match &observed {
                    secret::Observed::Owned(o) if o.intact => secret::credentials_from(s),
                    _ => None,
                };
                let seen = crate::memory::Seen {
                    name: s.name_any(),
                    uid: s.metadata.uid.clone(),
                    view: crate::plan::SecretView { observed, credentials },
                    from: crate::memory::Sighting { scope, list: *list },
                };
                self.memory.saw(uid, seen);
            }
            watcher::Event::Delete(s) => {
                if let Some(uid) = secret::controller_uid(s) {
                    self.memory.unsaw(uid, &s.name_any());
                }
            }
            watcher::Event::Init => *list += 1,
            watcher::Event::InitDone => {
                let gone = self.memory.relisted(scope, *list);
                if gone > 0 {
                    debug!(gone, "forgot Secrets deleted while the watch was away");
                }
            }
        }
    }

    /// The Secret `name` that `uid` controls, as the watch delivered it,
    /// when it agrees with what this process holds.
    ///
    /// Waits (for at most [`OWNED_SYNC_WAIT`], and not while the watch
    /// fails) until every owned-Secret watch has delivered its first list: a
    /// reconcile that starts before (right after a start) would otherwise
    /// read each Secret anew.
    async fn seen_secret(&self, uid: &str, name: &str) -> Option<crate::plan::SecretView> {
        let synced: Vec<_> = self.owned_synced.lock().ok()?.clone();
        let all_synced = async {
            for mut synced in synced {
                let _ = synced.wait_for(|s| *s).await;
            }
        };
        let mut failing = self.owned_failing.subscribe();
        tokio::select! {
            biased;
            () = all_synced => {}
            _ = failing.wait_for(|f| *f) => return None,
            () = tokio::time::sleep(OWNED_SYNC_WAIT) => return None,
        }
        self.memory.seen(uid, name)
    }

    /// The Secrets that the AssumedRole `uid` controls, other than
    /// `current`: left behind by a rename.
    fn stale_secrets(&self, uid: &str, current: &str) -> Vec<StaleSecret> {
        self.memory
            .others_seen(uid, current)
            .into_iter()
            .map(|s| StaleSecret {
                holds_credentials: matches!(&s.view.observed, secret::Observed::Owned(o) if o.holds_credentials),
                name: s.name,
                uid: s.uid,
            })
            .collect()
    }
}

/// An owned Secret under another name than the AssumedRole's current one.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StaleSecret {
    name: String,
    uid: Option<String>,
    /// Whether it still holds credentials (it carries an expiration).
    holds_credentials: bool,
}

/// Brings one AssumedRole's Secret and status in line with its spec.
/// Failures are recorded here, in status, memory and Events, through the
/// same path as successes; only an object without the metadata the API
/// server always sets comes back as an error.
pub async fn reconcile(ar: Arc<AssumedRole>, ctx: Arc<Context>) -> Result<Action> {
    // Until the policies and namespaces are cached, every AssumedRole would
    // look denied.
    ctx.grants.ready().await;
    // A standby does nothing: when it becomes the leader, every AssumedRole
    // is reconciled from the warm caches.
    if !*ctx.leading.borrow() {
        return Ok(Action::await_change());
    }
    let started = std::time::Instant::now();
    let target = Target::of(&ar);
    let (next, reason) = match &target {
        Ok(target) => executor::execute(&ar, &ctx, target, ctx.clock.now()).await,
        Err(_) => (Next::Change, Reason::MissingMetadata),
    };
    ctx.metrics.reconcile_duration.observe(started.elapsed().as_secs_f64());
    ctx.metrics.reconcile(reason.category());
    let target = target?;
    // The image pull Secret, when the spec asks for one (or a status of one
    // is left to clear): after the credentials, with them.
    let asks = ar.spec.image_pull_secret.is_some() || ar.status.as_ref().is_some_and(|s| s.image_pull_secret.is_some());
    let ecr_due = if asks {
        crate::ecr::step::run(&ar, &ctx, ctx.clock.now()).await
    } else {
        None
    };
    let next = match (next, ecr_due) {
        (next, None) => next,
        (Next::Change, Some(due)) => Next::At(due),
        (Next::At(at), Some(due)) => Next::At(at.min(due)),
    };
    let at = match next {
        Next::Change => None,
        Next::At(at) => {
            let wait = Duration::try_from(at.duration_since(ctx.clock.now())).unwrap_or_default();
            Some(tokio::time::Instant::now() + wait.max(Duration::from_secs(1)))
        }
    };
    ctx.wakeups.set(&target.namespace, &target.name, at);
    Ok(Action::await_change())
}

/// When a reconcile wants to run again if nothing changes before: its
/// refresh time, or the end of its backoff. Kept in [`wakeups::Wakeups`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// Only on a change.
    Change,
    /// At this time, or in a second if that is sooner.
    At(Timestamp),
}

/// What to do after `reconcile` returned an error, which only an object
/// without the metadata the API server always sets can cause: log it and
/// look again after the longest backoff. Failures of the work itself are
/// recorded by the reconcile, not here.
pub fn error_policy(ar: Arc<AssumedRole>, error: &Error, _ctx: Arc<Context>) -> Action {
    warn!(name = %ar.name_any(), namespace = ?ar.namespace(), error = %error, "cannot reconcile");
    Action::requeue(Duration::try_from(schedule::BACKOFF_MAX).unwrap_or(Duration::from_secs(300)))
}

/// Settings of the controller loop.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Namespaces to watch; all when empty.
    pub namespaces: Vec<String>,
    /// How many AssumedRoles are reconciled at once.
    pub concurrency: u16,
}

/// The controller's backoff over all its triggers together: none, since
/// each watch backs off on its own errors. kube-runtime's default would
/// pause every trigger while any one watch fails, for up to 30 s past an
/// outage: the API server's return, a won election and policy changes
/// would all wait on a watch still backing off.
struct EachWatchBacksOff;

impl Iterator for EachWatchBacksOff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        Some(Duration::ZERO)
    }
}

impl kube::runtime::utils::Backoff for EachWatchBacksOff {
    fn reset(&mut self) {}
}

/// Runs the controller until `shutdown` is cancelled. `ready` turns true once
/// the watches have synced, and false when the controller stops.
pub async fn run(
    ctx: Arc<Context>,
    settings: Settings,
    ready: Arc<std::sync::atomic::AtomicBool>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let scopes: Vec<Option<String>> = if settings.namespaces.is_empty() {
        vec![None]
    } else {
        settings.namespaces.iter().cloned().map(Some).collect()
    };
    let mut stores = Vec::new();
    let mut ready_stores = Vec::new();
    let mut secret_ready = Vec::new();
    let mut loops: Vec<BoxFuture<'static, ()>> = scopes
        .into_iter()
        .enumerate()
        .map(|(position, ns)| {
            let (roles, secrets): (Api<AssumedRole>, Api<Secret>) = match &ns {
                Some(ns) => (
                    Api::namespaced(ctx.client.clone(), ns),
                    Api::namespaced(ctx.client.clone(), ns),
                ),
                None => (Api::all(ctx.client.clone()), Api::all(ctx.client.clone())),
            };
            let (reader, writer) = reflector::store();
            stores.push(reader.clone());
            if let Ok(mut roles) = ctx.roles.lock() {
                roles.push(reader.clone());
            }
            ctx.metrics.assumed_roles.watch(reader.clone());
            let (roles_synced, synced) = tokio::sync::watch::channel(false);
            ready_stores.push(synced);
            // Status writes change no generation: filtering on it keeps the
            // operator's own status patches from waking it up again.
            // What the watch hears, or fails to, says whether the API server
            // answers.
            let seen = ctx.clone();
            use futures::TryStreamExt as _;
            let generations = Arc::new(Generations::default());
            let seen_generations = generations.clone();
            let index = Arc::new(index::SecretIndex::default());
            let filing = index.clone();
            let roles = watcher(roles, watcher::Config::default().any_semantic())
                .default_backoff()
                .inspect(move |event| seen.api_answered(event.is_ok()))
                // Which AssumedRoles a Secret's name concerns, kept in step.
                .inspect(move |event| {
                    if let Ok(event) = event {
                        filing.apply(event);
                    }
                })
                // Who wrote which field is the API server's business, and the
                // labels and annotations (`kubectl apply` leaves a copy of the
                // whole object in one) are the user's: nothing here reads
                // them, and kept in the cache they would cost memory with
                // every AssumedRole.
                .modify(|ar| {
                    ar.metadata.managed_fields = None;
                    ar.metadata.annotations = None;
                    ar.metadata.labels = None;
                })
                .reflect(writer)
                .inspect(move |event| grants::synced_on(event, &roles_synced))
                .inspect(move |event| {
                    if let Ok(watcher::Event::Delete(ar)) = event {
                        generations.forget(ar);
                    }
                })
                .applied_objects()
                .try_filter(move |ar| std::future::ready(seen_generations.changed(ar)));
            // Owned Secrets are watched whole, so that a reconcile need not
            // read its Secret again (nor a restart every Secret): each is
            // read with the HMAC key as it arrives and remembered, per
            // AssumedRole, as what it holds. No cache besides: the memory is
            // the record of which Secrets each AssumedRole owns.
            let (secrets_synced, synced) = tokio::sync::watch::channel(false);
            if let Ok(mut owned) = ctx.owned_synced.lock() {
                owned.push(synced.clone());
            }
            secret_ready.push(synced);
            let sightings = ctx.clone();
            let scope = u16::try_from(position).unwrap_or(u16::MAX);
            let mut list = 0;
            let owned = watcher(
                secrets,
                watcher::Config::default().labels(secret::SELECTOR).any_semantic(),
            )
            .default_backoff()
            .inspect(move |event| {
                sightings.owned_failing.send_replace(event.is_err());
                if let Ok(event) = event {
                    sightings.saw(event, scope, &mut list);
                }
            })
            .inspect(move |event| grants::synced_on(event, &secrets_synced))
            // No predicate filter (its cache would cost an entry per
            // Secret): a relist, which is rare, wakes every owner once, and
            // each reconcile finds its Secret as remembered, with no call.
            .touched_objects();
            // Every other Secret, as metadata and without a cache: a change to
            // one that `spec.source.secretRef` names (new keys) is acted on at
            // once. The operator's own come through the watch above.
            let others: Api<PartialObjectMeta<Secret>> = match &ns {
                Some(ns) => Api::namespaced(ctx.client.clone(), ns),
                None => Api::all(ctx.client.clone()),
            };
            let others = watcher(
                others,
                watcher::Config::default()
                    .labels(&format!("{}!={}", secret::MANAGED_BY_LABEL, secret::MANAGED_BY))
                    .any_semantic(),
            )
            .default_backoff()
            // No predicate filter: its cache would keep an entry for every
            // Secret of the cluster, and the index already drops the events
            // of Secrets no AssumedRole names. A relist (rare: the watch
            // resumes from its last resourceVersion) wakes only those that
            // do, and their reconcile changes nothing.
            .touched_objects();
            let ctx = ctx.clone();
            let token = shutdown.clone();
            let (wanting, reading) = (index.clone(), index);
            let api_back = futures::stream::unfold(ctx.api_back.subscribe(), |mut rx| async move {
                use tokio::sync::broadcast::error::RecvError;
                match rx.recv().await {
                    Ok(()) | Err(RecvError::Lagged(_)) => Some(((), rx)),
                    Err(RecvError::Closed) => None,
                }
            });
            let judge = ctx.grants.triggers(reader.clone());
            let elected = futures::stream::unfold(ctx.leading.clone(), |mut rx| async move {
                loop {
                    rx.changed().await.ok()?;
                    if *rx.borrow_and_update() {
                        return Some(((), rx));
                    }
                }
            });
            Controller::for_stream(roles, reader)
                .trigger_backoff(EachWatchBacksOff)
                .reconcile_all_on(api_back)
                // Leadership won: everything, at once, from warm caches.
                .reconcile_all_on(elected)
                // A policy change, or a namespace's label change, judges
                // the AssumedRoles it may concern again.
                .reconcile_on(judge)
                // Refresh times and the ends of backoffs.
                .reconcile_on(ctx.wakeups.subscribe(ns.clone()))
                // A change to a Secret, or its deletion, wakes its owner and
                // every AssumedRole that names it: one that lost a conflict
                // takes the name over as soon as it is free.
                .watches_stream(owned, move |secret| wanting.interested(&secret))
                .watches_stream(others, move |secret| reading.interested(&secret))
                .with_config(kube::runtime::controller::Config::default().concurrency(settings.concurrency))
                .graceful_shutdown_on(async move { token.cancelled_owned().await })
                .run(reconcile, error_policy, ctx)
                .for_each(|result| async move {
                    match result {
                        Ok((obj, _)) => {
                            debug!(name = %obj.name, namespace = ?obj.namespace, "reconciled")
                        }
                        Err(kube::runtime::controller::Error::QueueError(e)) => {
                            warn!(error = %e, "watch failed; retrying")
                        }
                        Err(e) => debug!(error = %e, "reconcile loop error"),
                    }
                })
                .boxed()
        })
        .collect();
    loops.push(prune_held(ctx.clone(), stores, shutdown.clone()).boxed());
    let wakeups = ctx.wakeups.clone();
    let wakeups_shutdown = shutdown.clone();
    loops.push(async move { wakeups.run(wakeups_shutdown).await }.boxed());
    let grants = ctx.clone();
    let grants_shutdown = shutdown.clone();
    loops.push(
        async move {
            tokio::select! {
                () = grants.grants.watch(grants.client.clone()) => {}
                () = grants_shutdown.cancelled() => {}
            }
        }
        .boxed(),
    );
    let probe_scope = match settings.namespaces.first() {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    };
    loops.push(probe_api(ctx.clone(), probe_scope, shutdown.clone()).boxed());
    // Ready once every cache holds a first full list.
    let synced_flag = ready.clone();
    let synced_grants = ctx.clone();
    let synced_shutdown = shutdown.clone();
    loops.push(
        async move {
            let synced = async {
                // The watches' own events tell, not `Store::wait_until_ready`:
                // the controller waits on the same stores, and their future
                // wakes only the last task that polled it.
                for synced in ready_stores.iter().chain(&secret_ready) {
                    let _ = synced.clone().wait_for(|s| *s).await;
                }
                synced_grants.grants.ready().await;
            };
            tokio::select! {
                () = synced => {
                    info!("watches synced");
                    synced_flag.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                () = synced_shutdown.cancelled() => {}
            }
        }
        .boxed(),
    );
    let loops = futures::future::join_all(loops);
    // On shutdown the controller stops taking work and lets the reconciles
    // in flight finish, for at most SHUTDOWN_GRACE. Before the caches have
    // synced nothing is in flight, and kube-runtime would wait for a sync
    // that no longer comes: stop at once.
    let stopped = async {
        shutdown.cancelled().await;
        if ready.load(std::sync::atomic::Ordering::Relaxed) {
            tokio::time::sleep(SHUTDOWN_GRACE).await;
            warn!(grace = ?SHUTDOWN_GRACE, "reconciles still running after the grace period; stopping anyway");
        }
    };
    tokio::select! {
        _ = loops => {}
        () = stopped => {}
    }
    ready.store(false, std::sync::atomic::Ordering::Relaxed);
}

/// The generation of each AssumedRole last let through, by a hash of its
/// UID: status writes change no generation, so filtering on it keeps the
/// operator's own status patches from waking it up again. Sixteen bytes an
/// AssumedRole, where kube-runtime's predicate cache keeps three strings.
#[derive(Default)]
struct Generations(Mutex<std::collections::HashMap<u64, i64>>);

impl Generations {
    fn key(ar: &AssumedRole) -> u64 {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        BuildHasherDefault::<DefaultHasher>::default().hash_one(ar.metadata.uid.as_deref().unwrap_or_default())
    }

    /// Whether `ar`'s generation differs from the last one let through (or
    /// it is new, or has none).
    fn changed(&self, ar: &AssumedRole) -> bool {
        let Some(generation) = ar.metadata.generation else {
            return true;
        };
        let Ok(mut seen) = self.0.lock() else { return true };
        seen.insert(Self::key(ar), generation) != Some(generation)
    }

    /// Forgets a deleted AssumedRole.
    fn forget(&self, ar: &AssumedRole) {
        if let Ok(mut seen) = self.0.lock() {
            seen.remove(&Self::key(ar));
        }
    }
}

/// How long a reconcile waits for the owned-Secret watch's first list before
/// it reads its Secret itself.
const OWNED_SYNC_WAIT: Duration = Duration::from_secs(30);

/// How long the reconciles in flight may take to finish after a shutdown
/// begins: less than the chart's `terminationGracePeriodSeconds` (30 s).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(15);

/// What a list of `K` that ended in `result` says about its CRD, if
/// anything is wrong.
fn crd_problem<K: Resource<DynamicType = ()>>(result: Result<(), kube::Error>) -> Option<String> {
    let crd = format!("{}.{}", K::plural(&()), K::group(&()));
    match result {
        Ok(()) => None,
        Err(kube::Error::Api(s)) if s.code == 404 => Some(format!(
            "the CustomResourceDefinition {crd} is not installed; install it with `kubectl apply -f crds/` (or the \
             chart's crds/), and the operator starts serving at once"
        )),
        Err(e) => Some(format!("cannot list {crd}: {}", crate::api_message(&e))),
    }
}

/// How often a missing CRD is looked for again.
const CRD_RECHECK: Duration = Duration::from_secs(5);

/// Checks that the AssumedRole CRD is installed and readable in every scope,
/// and while it is not, says so at error level and checks again every few
/// seconds. Returns false when `shutdown` came first.
pub async fn wait_for_crd(
    client: &Client,
    namespaces: &[String],
    shutdown: &tokio_util::sync::CancellationToken,
) -> bool {
    let apis: Vec<Api<AssumedRole>> = if namespaces.is_empty() {
        vec![Api::all(client.clone())]
    } else {
        namespaces
            .iter()
            .map(|ns| Api::namespaced(client.clone(), ns))
            .collect()
    };
    let policies: Api<crate::policy::AssumedRolePolicy> = Api::all(client.clone());
    let mut said = None;
    loop {
        let one = kube::api::ListParams::default().limit(1);
        let mut problem = None;
        for api in &apis {
            problem = problem.or(crd_problem::<AssumedRole>(api.list_metadata(&one).await.map(|_| ())));
        }
        problem = problem.or(crd_problem::<crate::policy::AssumedRolePolicy>(
            policies.list_metadata(&one).await.map(|_| ()),
        ));
        let Some(problem) = problem else {
            if said.is_some() {
                info!("the CustomResourceDefinitions are installed");
            }
            return true;
        };
        if said.as_ref() != Some(&problem) {
            tracing::error!("{problem}");
            said = Some(problem);
        }
        tokio::select! {
            () = shutdown.cancelled() => return false,
            () = tokio::time::sleep(CRD_RECHECK) => {}
        }
    }
}

/// How often the API server is asked whether it is back, while it is down.
const API_PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// While a call to the API server has failed, lists one AssumedRole every
/// [`API_PROBE_INTERVAL`] (a read that needs etcd too, unlike `/version`);
/// the first answer wakes every AssumedRole that waits on the outage. One
/// request every two seconds, whatever the number of AssumedRoles, and none
/// while the API server answers.
async fn probe_api(ctx: Arc<Context>, scope: Api<AssumedRole>, shutdown: tokio_util::sync::CancellationToken) {
    let mut tick = tokio::time::interval(API_PROBE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let one = kube::api::ListParams::default().limit(1);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if ctx.api_down.load(std::sync::atomic::Ordering::Relaxed)
            && executor::bounded(scope.list_metadata(&one)).await.is_ok()
        {
            ctx.api_answered(true);
        }
    }
}

/// How often credentials held for deleted AssumedRoles are dropped.
const PRUNE_INTERVAL: Duration = Duration::from_secs(300);

/// Drops held credentials of AssumedRoles that are gone, so memory follows
/// the number of live objects. Deletions reach no reconcile: ownerReferences
/// and the garbage collector clean up the Secret, and this cleans up memory.
async fn prune_held(
    ctx: Arc<Context>,
    stores: Vec<reflector::Store<AssumedRole>>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(PRUNE_INTERVAL);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let live: std::collections::HashSet<String> = stores
            .iter()
            .flat_map(|s| s.state())
            .filter_map(|ar| ar.uid())
            .collect();
        let dropped = ctx.memory.retain(&live);
        if dropped > 0 {
            debug!(dropped, "forgot deleted AssumedRoles");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration as StdDuration;

    use http::StatusCode;
    use jiff::SignedDuration;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use crate::{
        api::AssumedRoleStatus,
        fixtures::{self, FakeSts},
        sts::StsError,
    };

    /// Runs `reconcile` beside the mocked API server's `scenario`, and fails
    /// if the scenario is not done within a second. Returns in how many
    /// seconds the AssumedRole is reconciled again if nothing changes.
    async fn run<S>(
        ar: AssumedRole,
        sts: Arc<FakeSts>,
        scenario: impl FnOnce(fixtures::ApiServer) -> S,
    ) -> Result<Option<f64>>
    where
        S: std::future::Future<Output = fixtures::ApiServer> + Send + 'static,
    {
        let (ctx, server) = fixtures::context(sts);
        let scenario = tokio::spawn(scenario(server));
        let ar = Arc::new(ar);
        let result = reconcile(ar.clone(), ctx.clone()).await.map(|_| wait_of(&ctx, &ar));
        let server = tokio::time::timeout(StdDuration::from_secs(1), scenario)
            .await
            .expect("the scenario did not finish: a call is missing")
            .expect("the scenario panicked");
        server.expect_no_more().await;
        result
    }

    #[test]
    fn only_a_new_generation_or_a_new_object_passes_the_filter() {
        let generations = Generations::default();
        let mut ar = AssumedRole::test();
        ar.metadata.generation = Some(1);
        assert!(generations.changed(&ar), "new");
        assert!(!generations.changed(&ar), "a status write");
        ar.metadata.generation = Some(2);
        assert!(generations.changed(&ar), "a spec change");
        let mut other = ar.clone();
        other.metadata.uid = Some("uid-2".into());
        assert!(generations.changed(&other), "another object");
        generations.forget(&ar);
        assert!(generations.changed(&ar), "deleted and created again");
    }

    #[tokio::test]
    async fn a_valid_secret_costs_no_sts_call_and_waits_for_the_refresh_time() {
        let ar = AssumedRole::test();
        let secret = fixtures::owned_secret(&ar, SignedDuration::from_mins(1), SignedDuration::from_hours(1));
        let sts = FakeSts::granting();
        let wait = run(ar, sts.clone(), |mut api| async move {
            api.get_secret(Some(&secret)).await;
            let status = api.patch_status().await;
            assert_eq!(status["conditions"][0]["status"], "True");
            assert_eq!(status["conditions"][0]["reason"], "CredentialsReady");
            api
        })
        .await
        .expect("reconcile");
        assert_eq!(sts.calls(), 0);
        // Refresh when a third of the hour remains: 39 minutes from now, less
        // at most 6 minutes of jitter.
        let wait = wait.expect("a refresh time");
        assert!((33.0 * 60.0..=39.0 * 60.0).contains(&wait), "{wait}");
    }

    /// In how many seconds `ar` is reconciled again if nothing changes.
    fn wait_of(ctx: &Context, ar: &AssumedRole) -> Option<f64> {
        let at = ctx.wakeups.get(&ar.namespace().unwrap_or_default(), &ar.name_any())?;
        Some(at.saturating_duration_since(tokio::time::Instant::now()).as_secs_f64())
    }

    #[tokio::test]
    async fn a_missing_secret_is_minted_applied_then_reported() {
        let sts = FakeSts::granting();
        run(AssumedRole::test(), sts.clone(), |mut api| async move {
            api.get_secret(None).await;
            let applied = api.apply_secret(StatusCode::OK).await;
            assert_eq!(applied["metadata"]["ownerReferences"][0]["controller"], true);
            assert!(applied["data"]["credential_process.json"].is_string());
            let event = api.create_event().await;
            assert_eq!(event["reason"], "CredentialsRefreshed");
            let status = api.patch_status().await;
            assert_eq!(
                status["assumedRoleArn"],
                "arn:aws:sts::123456789012:assumed-role/reader/billing.reader"
            );
            api
        })
        .await
        .expect("reconcile");
        assert_eq!(sts.calls(), 1);
    }

    #[tokio::test]
    async fn an_sts_failure_never_touches_the_secret_and_keeps_ready_while_it_serves() {
        let ar = AssumedRole::test();
        // Issued 50 minutes ago for an hour: due, and still good for 10.
        let secret = fixtures::owned_secret(&ar, SignedDuration::from_mins(50), SignedDuration::from_hours(1));
        let sts = FakeSts::failing(StsError::Throttled("Rate exceeded".into()));
        run(ar, sts.clone(), |mut api| async move {
            api.get_secret(Some(&secret)).await;
            let status = api.patch_status().await;
            assert_eq!(status["conditions"][0]["type"], "Ready");
            assert_eq!(status["conditions"][0]["status"], "True");
            assert_eq!(status["conditions"][1]["type"], "Refreshed");
            assert_eq!(status["conditions"][1]["status"], "False");
            assert_eq!(status["conditions"][1]["reason"], "Throttled");
            let event = api.create_event().await;
            assert_eq!(
                (event["type"].as_str(), event["reason"].as_str()),
                (Some("Warning"), Some("Throttled"))
            );
            assert_eq!(status["consecutiveFailures"], 1);
            assert!(status["lastFailureTime"].is_string());
            api
        })
        .await
        .expect("reconcile");
        assert_eq!(sts.calls(), 1);
    }

    #[tokio::test]
    async fn a_status_that_cannot_be_written_is_tried_once_and_remembered_as_a_failure() {
        let ar = AssumedRole::test();
        let secret = fixtures::owned_secret(&ar, SignedDuration::from_mins(1), SignedDuration::from_hours(1));
        let sts = FakeSts::granting();
        let (ctx, server) = fixtures::context(sts.clone());
        let scenario = tokio::spawn(async move {
            let mut api = server;
            api.get_secret(Some(&secret)).await;
            // One try; no second status patch, no Event.
            api.refuse_status().await;
            api
        });
        // A second status patch would wait for an answer that never comes.
        let ar = Arc::new(ar);
        tokio::time::timeout(StdDuration::from_secs(2), reconcile(ar.clone(), ctx.clone()))
            .await
            .expect("the reconcile made a request the scenario does not answer")
            .expect("reconcile");
        let server = tokio::time::timeout(StdDuration::from_secs(1), scenario)
            .await
            .expect("the scenario did not finish")
            .expect("the scenario panicked");
        server.expect_no_more().await;
        assert_eq!(sts.calls(), 0);
        let remembered = ctx.memory.failures("uid-1").expect("the failure is remembered");
        assert_eq!((remembered.reason, remembered.failures), (Reason::PatchStatus, 1));
        assert!(remembered.unreported);
        // Retried after the first backoff step, at most 5 s away.
        let wait = wait_of(&ctx, &ar).expect("a retry");
        assert!(wait <= 5.0, "{wait}");
    }

    #[tokio::test]
    async fn a_failure_requeues_exactly_when_its_persisted_backoff_ends() {
        let sts = FakeSts::failing(StsError::Unavailable("connection reset".into()));
        let (written_tx, written_rx) = std::sync::mpsc::channel();
        // Five failures, the last an hour ago: due for a try, and the sixth
        // failure backs off up to 160 s, so two unrelated jitters would
        // hardly ever land within a second of each other.
        let failing = AssumedRoleStatus {
            consecutive_failures: 5,
            last_failure_time: Some(Time(Timestamp::now() - SignedDuration::from_hours(1))),
            observed_generation: Some(1),
            ..AssumedRoleStatus::default()
        };
        let first = run(
            AssumedRole::test().with_status(failing),
            sts.clone(),
            |mut api| async move {
                api.get_secret(None).await;
                let _ = written_tx.send(api.patch_status().await);
                api.create_event().await;
                api
            },
        )
        .await
        .expect("reconcile");
        let status: AssumedRoleStatus = serde_json::from_value(written_rx.recv().expect("status")).expect("status");
        assert!(status.last_failure_time.is_some());
        assert_eq!(status.consecutive_failures, 6);

        // Woken at once (by a Secret event, say): the gate holds it back to
        // the same instant, without a call.
        let second = run(AssumedRole::test().with_status(status), sts.clone(), |api| async move {
            api
        })
        .await
        .expect("reconcile");
        assert_eq!(sts.calls(), 1);
        let (a, b) = (first.expect("a retry"), second.expect("a retry"));
        assert!(
            (a - b).abs() < 0.25,
            "the requeue ({a} s) and the backoff check ({b} s) disagree"
        );
    }

    #[tokio::test]
    async fn a_failed_secret_write_is_reported_in_the_api_servers_words_and_the_credentials_kept() {
        let sts = FakeSts::granting();
        let ar = AssumedRole::test();
        let (ctx, server) = fixtures::context(sts.clone());
        let scenario = tokio::spawn(async move {
            let mut api = server;
            api.get_secret(None).await;
            api.apply_secret(StatusCode::INTERNAL_SERVER_ERROR).await;
            let status = api.patch_status().await;
            assert_eq!(status["conditions"][0]["reason"], "ApplySecret");
            let message = status["conditions"][0]["message"].as_str().unwrap_or_default();
            assert_eq!(message, "applying Secret reader: etcd is unhappy");
            let event = api.create_event().await;
            assert_eq!(event["reason"], "ApplySecret");
            api
        });
        reconcile(Arc::new(ar), ctx.clone()).await.expect("reconcile");
        let server = tokio::time::timeout(StdDuration::from_secs(1), scenario)
            .await
            .expect("the scenario did not finish")
            .expect("the scenario panicked");
        server.expect_no_more().await;
        // The minted set is held, unwritten, for the retry.
        let held = ctx.memory.held("uid-1").expect("held credentials");
        assert!(!held.written);
        assert_eq!(sts.calls(), 1);
        let metrics = ctx.metrics.render();
        assert!(
            metrics.contains(r#"reconciles_total{result="api_unavailable"} 1"#),
            "{metrics}"
        );
    }

    fn failing_status(generation: i64) -> AssumedRoleStatus {
        AssumedRoleStatus {
            consecutive_failures: 3,
            last_failure_time: Some(Time(Timestamp::now())),
            observed_generation: Some(generation),
            ..AssumedRoleStatus::default()
        }
    }

    #[tokio::test]
    async fn a_backoff_in_status_defers_the_retry_without_any_call() {
        let sts = FakeSts::granting();
        let ar = AssumedRole::test().with_status(failing_status(1));
        let wait = run(ar, sts.clone(), |api| async move { api }).await.expect("reconcile");
        assert_eq!(sts.calls(), 0);
        // The third retry waits at most 20 s (5 s doubled twice).
        assert!(wait.is_some_and(|w| w <= 20.0), "{wait:?}");
    }

    #[tokio::test]
    async fn a_spec_change_skips_the_backoff() {
        let sts = FakeSts::granting();
        let ar = AssumedRole::test().with_generation(2).with_status(failing_status(1));
        run(ar, sts.clone(), |mut api| async move {
            api.get_secret(None).await;
            api.apply_secret(StatusCode::OK).await;
            api.create_event().await;
            let status = api.patch_status().await;
            assert!(status["consecutiveFailures"].is_null(), "a success resets the count");
            assert_eq!(status["observedGeneration"], 2);
            api
        })
        .await
        .expect("reconcile");
        assert_eq!(sts.calls(), 1);
    }

    /// A watch that keeps failing holds back no other trigger: the API
    /// server's return still reconciles every AssumedRole at once. Time is
    /// paused, so the bound is exact: kube-runtime's default backoff over
    /// the triggers would hold the return back 0.8 s or more.
    #[tokio::test(start_paused = true)]
    async fn a_failing_watch_holds_back_no_other_trigger() {
        let (reader, mut writer) = reflector::store();
        for event in [
            watcher::Event::Init,
            watcher::Event::InitApply(AssumedRole::test()),
            watcher::Event::InitDone,
        ] {
            writer.apply_watcher_event(&event);
        }
        // A watch failing six times in a row, then silent.
        let failing = futures::stream::iter((0..6).map(|_| Err(watcher::Error::NoResourceVersion)))
            .chain(futures::stream::pending());
        // The API server's return, a moment later.
        let back = futures::stream::once(tokio::time::sleep(StdDuration::from_millis(100)));
        let started = tokio::time::Instant::now();
        let (done, mut reconciled) = tokio::sync::mpsc::unbounded_channel::<()>();
        let controller = Controller::for_stream(failing, reader)
            .trigger_backoff(EachWatchBacksOff)
            .reconcile_all_on(back)
            .run(
                |_, done: Arc<tokio::sync::mpsc::UnboundedSender<()>>| async move {
                    let _ = done.send(());
                    Ok::<_, std::convert::Infallible>(Action::await_change())
                },
                |_, _, _| Action::await_change(),
                Arc::new(done),
            )
            .for_each(|_| async {});
        tokio::select! {
            () = controller => panic!("the controller stopped"),
            _ = reconciled.recv() => {}
        }
        let took = started.elapsed();
        assert!(
            took < StdDuration::from_millis(500),
            "reconciled {took:?} after the start, 100 ms after the trigger"
        );
    }
}
