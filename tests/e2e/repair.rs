//! The owned Secret under pressure: deleted, edited, fought over by another
//! writer, or already taken by someone else.

use std::time::{Duration, Instant};

use assumed_role_operator::api::AssumedRole;
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

#[tokio::test]
#[ignore = "needs the local control plane; run with `make test`"]
async fn renaming_the_secret_moves_the_credentials_and_leaves_no_owned_secret_behind() {
    let Scene {
        ns,
        roles,
        secrets,
        operator,
        ..
    } = Scene::start("rename", &[], &[]).await;
    apply(&assumed_role(&ns.name, "reader", "  secret: {name: aws-0}\n"));
    wait_ready(&roles, "reader", "True", "CredentialsReady").await;
    let first = data(&secrets.get("aws-0").await.expect("Secret"));
    // More renames than the restore limit, all within one lifetime: a rename
    // is a spec change, not another writer.
    let renames = assumed_role_operator::controller::MAX_RESTORES + 2;
    for i in 1..=renames {
        let (old, new) = (format!("aws-{}", i - 1), format!("aws-{i}"));
        merge_patch(
            &ns.name,
            "assumedrole/reader",
            &format!(r#"{{"spec":{{"secret":{{"name":"{new}"}}}}}}"#),
        );
        let moved = wait_for(
            &secrets,
            &new,
            Duration::from_secs(30),
            "the Secret under its new name",
            |s: Option<&Secret>| s.is_some(),
        )
        .await;
        assert_eq!(data(&moved), first, "rename {i}: other credentials");
        let gone = secrets.get_opt(&old).await.expect("get");
        if let Some(left) = gone {
            wait_deleted(
                &secrets,
                &old,
                &left.uid().expect("uid"),
                Duration::from_secs(30),
                "the Secret under the old name to be removed",
            )
            .await;
        }
        let ar = roles.get("reader").await.expect("AssumedRole");
        let (_, reason, message) = ready(&ar).expect("Ready");
        assert_ne!(reason, "SecretContested", "rename {i}: {message}");
    }
    wait_ready(&roles, "reader", "True", "CredentialsReady").await;
    assert_eq!(operator.sts_calls().await, 1, "a rename called STS");

    // Every Secret the AssumedRole owns holds credentials that are still
    // valid, and there is only the one.
    let owned: Vec<Secret> = secrets
        .list(&kube::api::ListParams::default().labels(assumed_role_operator::secret::SELECTOR))
        .await
        .expect("list")
        .items
        .into_iter()
        .filter(|s| s.owner_references().iter().any(|o| o.kind == "AssumedRole"))
        .collect();
    let names: Vec<String> = owned.iter().map(|s| s.name_any()).collect();
    assert_eq!(names, vec![format!("aws-{renames}")]);
    for s in &owned {
        let expires: jiff::Timestamp = expiration_of(s).expect("expiration").parse().expect("RFC 3339");
        assert!(
            expires > jiff::Timestamp::now(),
            "{} holds expired credentials",
            s.name_any()
        );
    }
}

#[tokio::test]
#[ignore = "needs the local control plane; run with `make test`"]
async fn an_edited_annotation_cannot_move_the_refresh() {
    let Scene {
        ns,
        roles,
        secrets,
        operator: _operator,
        ..
    } = Scene::start("annotations", &[], &[]).await;
    use assumed_role_operator::secret::SIGNED_ANNOTATIONS;
    // One AssumedRole per annotation, each rotating about every 10 s.
    for (i, _) in SIGNED_ANNOTATIONS.iter().enumerate() {
        apply(&assumed_role(
            &ns.name,
            &format!("reader-{i}"),
            "  durationSeconds: 900\n  refreshBefore: 890s\n",
        ));
    }
    for (i, annotation) in SIGNED_ANNOTATIONS.iter().enumerate() {
        let name = format!("reader-{i}");
        wait_ready(&roles, &name, "True", "CredentialsReady").await;
        let before = secrets.get(&name).await.expect("Secret");
        // A far-off expiration or issue time, or hashes that match nothing:
        // none may postpone the refresh that is due in seconds.
        let forged = if annotation.ends_with("expiration") || annotation.ends_with("issued-at") {
            "2099-01-01T00:00:00Z"
        } else {
            "0000"
        };
        let out = kubectl(
            &[
                "annotate",
                "secret",
                &name,
                "-n",
                &ns.name,
                "--overwrite",
                &format!("{annotation}={forged}"),
            ],
            None,
        );
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        // The credentials themselves carry their expiration in the data.
        let old = data(&before)["expiration"].clone();
        let refreshed = wait_for(
            &secrets,
            &name,
            Duration::from_secs(60),
            "a refresh on schedule",
            |s: Option<&Secret>| s.is_some_and(|s| data(s).get("expiration").is_some_and(|e| *e != old)),
        )
        .await;
        let value = refreshed.annotations().get(*annotation).cloned().unwrap_or_default();
        assert_ne!(value, forged, "{annotation} kept the forged value");
        assert_eq!(expiration_of(&refreshed), data(&refreshed).get("expiration").cloned());
        caller_arn(&refreshed).await.expect("the refreshed credentials work");
    }
}

#[tokio::test]
#[ignore = "needs the local control plane; run with `make test`"]
async fn an_assumed_role_that_lost_a_conflict_takes_the_name_over_as_soon_as_it_is_free() {
    let Scene {
        ns,
        roles,
        secrets,
        operator: _operator,
        ..
    } = Scene::start("takeover", &[], &[]).await;
    apply(&assumed_role(&ns.name, "first", "  secret: {name: shared}\n"));
    wait_ready(&roles, "first", "True", "CredentialsReady").await;
    apply(&assumed_role(&ns.name, "second", "  secret: {name: shared}\n"));
    // Failed often enough that its next retry is tens of seconds away.
    wait_for(
        &roles,
        "second",
        Duration::from_secs(90),
        "four conflicts",
        |ar: Option<&AssumedRole>| {
            ar.and_then(|a| a.status.as_ref())
                .is_some_and(|s| s.consecutive_failures >= 4)
        },
    )
    .await;
    let out = kubectl(&["delete", "assumedrole", "first", "-n", &ns.name], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The garbage collector would remove the Secret in its own time; a user
    // deletes it at once.
    let freed = Instant::now();
    match secrets.delete("shared", &DeleteParams::default()).await {
        // The garbage collector may have been quicker.
        Ok(_) | Err(kube::Error::Api(_)) => {}
        Err(e) => panic!("delete the Secret: {e}"),
    }
    let taken = wait_for(
        &secrets,
        "shared",
        Duration::from_secs(10),
        "the waiting AssumedRole to take the name over",
        |s: Option<&Secret>| s.is_some_and(|s| s.owner_references().first().is_some_and(|o| o.name == "second")),
    )
    .await;
    eprintln!(
        "took the Secret over {} ms after it was freed",
        freed.elapsed().as_millis()
    );
    caller_arn(&taken).await.expect("the new owner's credentials work");
    wait_ready(&roles, "second", "True", "CredentialsReady").await;
}
