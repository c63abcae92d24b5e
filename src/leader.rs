//! Leader election on a Lease in the operator's namespace, so that only one
//! replica writes while the others stand by.
//!
//! The holder runs the controller. A holder that loses the lease stops
//! writing at once and exits, and its replacement starts from fresh caches.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use kube::Client;
use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Name of the Lease.
pub const LEASE_NAME: &str = "assumed-role-operator";

/// How leadership ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The process is shutting down.
    Shutdown,
    /// Another replica took the lease: the caller should exit.
    Lost,
}

/// Waits for the lease, then runs `work` with a token that is cancelled on
/// shutdown or when the lease is lost. `ready` is true while this process is
/// a healthy standby (it watches the Lease); `work` sets it while leading.
pub async fn run_as_leader<F, Fut>(
    client: Client,
    namespace: &str,
    identity: &str,
    duration_seconds: u64,
    ready: Arc<AtomicBool>,
    shutdown: CancellationToken,
    work: F,
) -> Result<Outcome, LeaseManagerError>
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: Future<Output = ()>,
{
    let manager = LeaseManagerBuilder::new(client, LEASE_NAME)
        .with_namespace(namespace)
        .with_identity(identity)
        .with_duration(duration_seconds)
        .with_grace(duration_seconds.div_ceil(3).max(2))
        .with_field_manager(format!("assumed-role-operator-{identity}"))
        .build()
        .await?;
    let (mut leading, lease_task) = manager.watch().await;
    info!(lease = LEASE_NAME, %namespace, %identity, "waiting for the leader lease");
    ready.store(!*leading.borrow(), Ordering::Relaxed);
    while !*leading.borrow_and_update() {
        tokio::select! {
            _ = shutdown.cancelled() => {
                drop(leading);
                let _ = lease_task.await;
                return Ok(Outcome::Shutdown);
            }
            changed = leading.changed() => {
                if changed.is_err() {
                    warn!("the lease manager stopped");
                    return Ok(Outcome::Lost);
                }
            }
        }
    }
    info!(lease = LEASE_NAME, "acquired the leader lease");
    // Ready again once the controller's watches have synced.
    ready.store(false, Ordering::Relaxed);
    let token = shutdown.child_token();
    let work = work(token.clone());
    tokio::pin!(work);
    let outcome = loop {
        tokio::select! {
            () = &mut work => break if shutdown.is_cancelled() { Outcome::Shutdown } else { Outcome::Lost },
            changed = leading.changed() => {
                if changed.is_err() || !*leading.borrow_and_update() {
                    warn!(lease = LEASE_NAME, "lost the leader lease; stopping");
                    token.cancel();
                    (&mut work).await;
                    break Outcome::Lost;
                }
            }
        }
    };
    // Closing the channel releases the lease for the next replica.
    drop(leading);
    let _ = lease_task.await;
    Ok(outcome)
}
