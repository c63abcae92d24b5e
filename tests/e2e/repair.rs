//! The owned Secret under pressure: deleted, edited, fought over by another
//! writer, or already taken by someone else.

use std::time::{Duration, Instant};

use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{
    ResourceExt,
    api::{DeleteParams, ObjectMeta, PostParams},
};

use crate::support::*;

#[tokio::test]
#[ignore = "needs the local control plane; run with `make test`"]
async fn a_deleted_secret_is_back_within_seconds_without_calling_sts() {
    let Scene {
        ns,
        roles,
        secrets,
        operator,
        ..
    } = Scene::start("deleted", &[], &[]).await;
    apply(&assumed_role(&ns.name, "reader", ""));
    wait_ready(&roles, "reader", "True", "CredentialsReady").await;
    let before = secrets.get("reader").await.expect("Secret");

    let started = Instant::now();
    secrets
        .delete("reader", &DeleteParams::default())
        .await
        .expect("delete the Secret");
    let old_uid = before.uid();
    let back = wait_for(
        &secrets,
        "reader",
        Duration::from_secs(30),
        "the Secret to come back",
        |s: Option<&Secret>| s.is_some_and(|s| s.uid() != old_uid),
    )
    .await;
    eprintln!("deleted Secret restored in {} ms", started.elapsed().as_millis());
    assert_eq!(data(&back), data(&before), "the restored Secret holds other data");
    assert_eq!(operator.sts_calls().await, 1, "restoring a deleted Secret called STS");
    caller_arn(&back).await.expect("the restored credentials work");
}

#[tokio::test]
#[ignore = "needs the local control plane; run with `make test`"]
async fn edited_data_is_restored_without_sts_until_a_persistent_writer_is_given_up_on() {
    let Scene {
        ns,
        roles,
        secrets,
        operator,
        ..
    } = Scene::start("edited", &[], &[]).await;
    apply(&assumed_role(&ns.name, "reader", ""));
    wait_ready(&roles, "reader", "True", "CredentialsReady").await;
    let original = data(&secrets.get("reader").await.expect("Secret"));

    let forged = r#"{"data":{"AWS_SESSION_TOKEN":"Zm9yZ2Vk"}}"#; // "forged"
    for round in 1..=assumed_role_operator::controller::MAX_RESTORES {
        merge_patch(&ns.name, "secret/reader", forged);
        let restored = wait_for(
            &secrets,
            "reader",
            Duration::from_secs(30),
            "the edit to be undone",
            |s: Option<&Secret>| s.is_some_and(|s| data(s)["AWS_SESSION_TOKEN"] != "forged"),
        )
        .await;
        assert_eq!(data(&restored), original, "round {round}: restored to something else");
    }
    assert_eq!(operator.sts_calls().await, 1, "restoring edited data called STS");

    // One more edit: the operator stops fighting and says so.
    merge_patch(&ns.name, "secret/reader", forged);
    let ar = wait_ready(&roles, "reader", "False", "SecretContested").await;
    let (_, _, message) = ready(&ar).expect("Ready");
    assert!(message.contains("another writer"), "{message}");
    let left = secrets.get("reader").await.expect("Secret");
    assert_eq!(data(&left)["AWS_SESSION_TOKEN"], "forged", "the operator kept fighting");
}

#[tokio::test]
#[ignore = "needs the local control plane; run with `make test`"]
async fn a_secret_owned_by_someone_else_is_never_touched() {
    let Scene {
        ns,
        roles,
        secrets,
        operator,
        ..
    } = Scene::start("conflict", &[], &[]).await;
    let foreign = Secret {
        metadata: ObjectMeta {
            name: Some("taken".into()),
            ..Default::default()
        },
        data: Some([("password".to_string(), ByteString(b"hunter2".to_vec()))].into()),
        ..Default::default()
    };
    let foreign = secrets
        .create(&PostParams::default(), &foreign)
        .await
        .expect("create the foreign Secret");
    apply(&assumed_role(&ns.name, "reader", "  secret: {name: taken}\n"));
    let ar = wait_ready(&roles, "reader", "False", "SecretConflict").await;
    let (_, _, message) = ready(&ar).expect("Ready");
    assert!(
        message.contains("taken") && message.contains("not controlled"),
        "{message}"
    );
    assert_eq!(operator.sts_calls().await, 0, "a conflict still called STS");
    let after = secrets.get("taken").await.expect("Secret");
    assert_eq!(
        after.resource_version(),
        foreign.resource_version(),
        "the foreign Secret was modified"
    );

    // Two AssumedRoles that name one Secret: the second one loses.
    apply(&assumed_role(&ns.name, "first", "  secret: {name: shared}\n"));
    wait_ready(&roles, "first", "True", "CredentialsReady").await;
    let shared = secrets.get("shared").await.expect("Secret");
    apply(&assumed_role(&ns.name, "second", "  secret: {name: shared}\n"));
    wait_ready(&roles, "second", "False", "SecretConflict").await;
    let still = secrets.get("shared").await.expect("Secret");
    assert_eq!(still.resource_version(), shared.resource_version());
    assert_eq!(still.owner_references()[0].name, "first");
    let events = events_json(&ns.name);
    assert!(events.contains("SecretConflict"), "no SecretConflict Event");
}
