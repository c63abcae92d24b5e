//! The operator process: it stops promptly on SIGTERM whatever it is doing.

use std::time::Duration;

use crate::support::*;

/// How long a SIGTERM may take to stop the operator.
const STOP_LIMIT: Duration = Duration::from_secs(10);

#[tokio::test]
#[ignore = "needs the local control plane; run with `make test`"]
async fn sigterm_stops_the_operator_promptly_while_starting_idle_and_reconciling() {
    let client = client().await;
    let ns = TestNamespace::create(&client, "sigterm").await;

    // Before the watches have synced: at once after start.
    let mut starting = Operator::start(&ns.name, &[], &[]);
    starting.admin_address().await;
    let (status, took) = starting.terminate(STOP_LIMIT).await.expect("stopped while starting");
    assert!(status.success(), "exit status {status} while starting");
    eprintln!("SIGTERM while starting: stopped in {} ms", took.as_millis());

    // Idle: ready, nothing to do.
    let mut idle = Operator::start(&ns.name, &[], &[]);
    idle.wait_ready().await;
    let (status, took) = idle.terminate(STOP_LIMIT).await.expect("stopped while idle");
    assert!(status.success(), "exit status {status} while idle");
    eprintln!("SIGTERM while idle: stopped in {} ms", took.as_millis());

    // Reconciling: twenty AssumedRoles arriving at once.
    let mut busy = Operator::start(&ns.name, &[], &[]);
    for i in 0..20 {
        apply(&assumed_role(&ns.name, &format!("reader-{i}"), ""));
    }
    poll(
        Duration::from_secs(30),
        Duration::from_millis(20),
        "the first write",
        || async { busy.output().contains("wrote new credentials").then_some(()) },
    )
    .await;
    let (status, took) = busy.terminate(STOP_LIMIT).await.expect("stopped while reconciling");
    assert!(status.success(), "exit status {status} while reconciling");
    eprintln!("SIGTERM while reconciling: stopped in {} ms", took.as_millis());
}

#[tokio::test]
#[ignore = "needs the local control plane; run with `make test`"]
async fn readiness_means_synced_watches_on_the_leader_and_the_warm_standby_alike() {
    let client = client().await;
    let ns = TestNamespace::create(&client, "standby").await;
    apply(&assumed_role(&ns.name, "reader", ""));
    let leader = Operator::start(&ns.name, &["--leader-elect", "--lease-duration-seconds", "15"], &[]);
    poll(
        Duration::from_secs(30),
        Duration::from_millis(100),
        "the leader",
        || async { leader.output().contains("acquired the leader lease").then_some(()) },
    )
    .await;
    leader.wait_ready().await;
    assert!(leader.output().contains("watches synced"));

    let standby = Operator::start(&ns.name, &["--leader-elect", "--lease-duration-seconds", "15"], &[]);
    poll(
        Duration::from_secs(30),
        Duration::from_millis(100),
        "the standby",
        || async { standby.output().contains("waiting for the leader lease").then_some(()) },
    )
    .await;
    standby.wait_ready().await;
    // The standby's caches are as warm as the leader's, and it does not lead.
    assert!(standby.output().contains("watches synced"));
    assert!(
        !standby.output().contains("acquired the leader lease"),
        "two leaders at once"
    );
}
