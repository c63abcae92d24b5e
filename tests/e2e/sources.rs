//! Where the identity that assumes a role comes from (`spec.source`): a
//! ServiceAccount's token through AssumeRoleWithWebIdentity, static keys
//! from a Secret, and another AssumedRole's credentials (role chaining).
//! What reaches STS is seen by the stand-in in front of moto, or by the
//! moto that enforces IAM.

use std::time::Duration;

use assumed_role_operator::api::AssumedRole;
use base64::Engine as _;
use kube::{Api, Client};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::support::*;

fn base64url(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .expect("base64url")
}

/// Checks the RS256 signature of the JWT `token` against the API server's
/// own keys (`/openid/v1/jwks`), and returns its claims.
async fn verified_claims(client: &Client, token: &str) -> Value {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "not a JWT");
    let header: Value = serde_json::from_slice(&base64url(parts[0])).expect("JWT header");
    assert_eq!(header["alg"], "RS256");
    let request = http::Request::get("/openid/v1/jwks").body(Vec::new()).expect("request");
    let jwks: Value =
        serde_json::from_str(&client.request_text(request).await.expect("the API server's JWKS")).expect("JWKS JSON");
    let key = jwks["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["kid"] == header["kid"])
        .expect("the token's key among the API server's");
    let public = aws_lc_rs::signature::RsaPublicKeyComponents {
        n: base64url(key["n"].as_str().expect("n")),
        e: base64url(key["e"].as_str().expect("e")),
    };
    let signed = format!("{}.{}", parts[0], parts[1]);
    public
        .verify(
            &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
            signed.as_bytes(),
            &base64url(parts[2]),
        )
        .expect("the token is signed by the API server");
    // The same check on a token with one claim changed must fail: the
    // verification is real.
    let forged = format!("{}.{}", parts[0], parts[1].replacen('e', "f", 1));
    assert!(
        public
            .verify(
                &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
                forged.as_bytes(),
                &base64url(parts[2]),
            )
            .is_err()
    );
    serde_json::from_slice(&base64url(parts[1])).expect("JWT claims")
}

#[tokio::test]
#[ignore = "needs the local control plane; run with `make test`"]
async fn a_service_accounts_token_reaches_sts_signed_by_the_api_server() {
    let client = client().await;
    let logs = tempfile::tempdir().expect("logs dir");
    let standin = StandIn::start(3600, 0, logs.path());
    let ns = TestNamespace::create(&client, "web-identity").await;
    let name = ns.name.clone();
    let out = kubectl(&["create", "serviceaccount", "app", "-n", &name], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The operator has no AWS credentials of its own: a web identity needs
    // none.
    let remove = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"];
    let env = [
        ("AWS_ENDPOINT_URL_STS", standin.url.as_str()),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_CONFIG_FILE", "/nonexistent/aws/config"),
        ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws/credentials"),
    ];
    let _operator = Operator::start_without(&name, &remove, &env);
    let roles: Api<AssumedRole> = Api::namespaced(client.clone(), &name);
    apply(&assumed_role(&name, "reader", "  source: {serviceAccountName: app}\n"));
    apply(&assumed_role(
        &name,
        "custom",
        "  source: {serviceAccountName: app, audience: sts.example.test}\n",
    ));
    apply(&assumed_role(
        &name,
        "nobody",
        "  source: {serviceAccountName: missing}\n",
    ));
    wait_ready(&roles, "reader", "True", "CredentialsReady").await;
    wait_ready(&roles, "custom", "True", "CredentialsReady").await;
    let missing = wait_ready(&roles, "nobody", "False", "SourceUnavailable").await;
    let (_, _, message) = ready(&missing).expect("Ready");
    assert!(
        message.starts_with("requesting a token for ServiceAccount missing (spec.source.serviceAccountName):")
            && message.contains("not found"),
        "{message}"
    );

    let report = standin.report().await;
    for (ar, audience) in [("reader", "sts.amazonaws.com"), ("custom", "sts.example.test")] {
        let calls = sessions_of(&report, &name, ar);
        assert_eq!(calls.len(), 1, "{calls:?}");
        assert_eq!(calls[0]["action"], "AssumeRoleWithWebIdentity");
        assert_eq!(calls[0]["signer"], "", "a web identity call is not signed");
        let claims = verified_claims(&client, calls[0]["token"].as_str().expect("token")).await;
        assert_eq!(claims["sub"], format!("system:serviceaccount:{name}:app"));
        assert_eq!(claims["aud"], serde_json::json!([audience]));
        let lifetime = claims["exp"].as_i64().unwrap_or(0) - claims["iat"].as_i64().unwrap_or(0);
        assert!((600..=3600).contains(&lifetime), "token lifetime {lifetime} s");
    }
    assert!(sessions_of(&report, &name, "nobody").is_empty());
    // The token never reaches a log, Event or status.
    let statuses = kubectl(&["get", "assumedroles", "-n", &name, "-o", "json"], None);
    let token = sessions_of(&report, &name, "reader")[0]["token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let payload = token.split('.').nth(1).unwrap_or_default().to_string();
    assert!(!String::from_utf8_lossy(&statuses.stdout).contains(&payload));
    assert!(!events_json(&name).contains(&payload));
    assert!(
        !_operator.output().contains(&payload),
        "the token is in the operator's log"
    );
}

#[tokio::test]
#[ignore = "needs the local control plane; run with `make test`"]
async fn static_keys_from_a_secret_assume_the_role_and_a_change_of_keys_is_picked_up() {
    let client = client().await;
    let ns = TestNamespace::create(&client, "static-keys").await;
    let name = ns.name.clone();
    let var =
        |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k}: start the control plane with hack/cluster.sh"));
    let (good_id, good_secret) = (var("ARO_IAM_ACCESS_KEY_ID"), var("ARO_IAM_SECRET_ACCESS_KEY"));
    let keys = |secret: &str, id: &str, key: &str| {
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: {secret}, namespace: {name}}}\n\
             stringData: {{AWS_ACCESS_KEY_ID: {id}, AWS_SECRET_ACCESS_KEY: {key}}}\n"
        )
    };
    apply(&keys("user-keys", &good_id, &good_secret));
    apply(&keys("wrong-keys", "AKIAWRONGWRONGWRONG1", "not-the-secret"));
    // The operator's own keys are not valid at this STS: only the Secret's
    // can work.
    let endpoint = var("ARO_IAM_ENDPOINT");
    let operator = Operator::start(&name, &[], &[("AWS_ENDPOINT_URL_STS", endpoint.as_str())]);
    let roles: Api<AssumedRole> = Api::namespaced(client.clone(), &name);
    apply(&assumed_role_for(
        &name,
        "reader",
        "allowed-reader",
        "  source: {secretRef: {name: user-keys}}\n",
    ));
    apply(&assumed_role_for(
        &name,
        "wrong",
        "allowed-reader",
        "  source: {secretRef: {name: wrong-keys}}\n",
    ));
    apply(&assumed_role_for(&name, "own", "allowed-reader", ""));
    let reader = wait_ready(&roles, "reader", "True", "CredentialsReady").await;
    let arn = reader.status.and_then(|s| s.assumed_role_arn).unwrap_or_default();
    assert!(arn.contains(":assumed-role/allowed-reader/"), "{arn}");
    let wrong = wait_ready(&roles, "wrong", "False", "AccessDenied").await;
    let (_, _, message) = ready(&wrong).expect("Ready");
    assert!(message.contains("InvalidClientTokenId"), "{message}");
    assert!(!message.contains("not-the-secret"));
    // The operator's own identity is refused at this STS: the Secret's keys
    // made the difference.
    wait_ready(&roles, "own", "False", "AccessDenied").await;

    // New keys in the Secret are used at once, without waiting for the
    // refresh: bad ones fail (the Secret keeps its good credentials), good
    // ones work again.
    let calls = operator.sts_calls().await;
    apply(&keys("user-keys", "AKIAWRONGWRONGWRONG2", "still-not-the-secret"));
    poll(
        Duration::from_secs(30),
        Duration::from_millis(200),
        "a refresh with the new keys",
        || async { (operator.sts_calls().await > calls).then_some(()) },
    )
    .await;
    let refreshing = wait_for(
        &roles,
        "reader",
        Duration::from_secs(30),
        "Refreshed=False",
        |ar: Option<&AssumedRole>| {
            ar.and_then(|a| a.status.as_ref()).is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Refreshed" && c.status == "False")
            })
        },
    )
    .await;
    assert_eq!(
        ready(&refreshing).map(|r| r.0).as_deref(),
        Some("True"),
        "the good credentials were dropped"
    );
    apply(&keys("user-keys", &good_id, &good_secret));
    wait_for(
        &roles,
        "reader",
        Duration::from_secs(90),
        "Refreshed=True again",
        |ar: Option<&AssumedRole>| {
            ar.and_then(|a| a.status.as_ref()).is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Refreshed" && c.status == "True")
            })
        },
    )
    .await;
    // The keys never reach a log, Event or status.
    for text in [operator.output(), events_json(&name)] {
        assert!(!text.contains(&good_secret) && !text.contains("not-the-secret"));
    }
}

#[tokio::test]
#[ignore = "needs the local control plane; run with `make test`"]
async fn a_chained_role_is_assumed_with_the_other_assumed_roles_credentials_for_at_most_an_hour() {
    let logs = tempfile::tempdir().expect("logs dir");
    let standin = StandIn::start(3600, 0, logs.path());
    let Scene {
        ns,
        roles,
        secrets,
        operator: _operator,
    } = Scene::start("chain", &[], &[("AWS_ENDPOINT_URL_STS", standin.url.as_str())]).await;
    let name = ns.name.clone();
    apply(&assumed_role(&name, "base", ""));
    apply(&assumed_role(
        &name,
        "chained",
        "  durationSeconds: 7200\n  source: {assumedRoleRef: {name: base}}\n",
    ));
    wait_ready(&roles, "base", "True", "CredentialsReady").await;
    let chained = wait_ready(&roles, "chained", "True", "CredentialsReady").await;
    let adjusted = chained
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "DurationAdjusted"))
        .expect("a DurationAdjusted condition");
    assert_eq!(adjusted.reason, "ClampedForChaining");
    assert!(
        adjusted.message.starts_with("spec.durationSeconds asks for 7200 s"),
        "{}",
        adjusted.message
    );

    // At STS: the chained call asked for an hour, signed with the key in
    // the base AssumedRole's Secret.
    let base = secrets.get("base").await.expect("base Secret");
    let base_key = base
        .data
        .as_ref()
        .and_then(|d| d.get("AWS_ACCESS_KEY_ID"))
        .expect("key")
        .0
        .clone();
    let fingerprint: String = hex::encode(Sha256::digest(&base_key))[..12].to_string();
    let report = standin.report().await;
    let calls = sessions_of(&report, &name, "chained");
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0]["duration"], "3600");
    assert_eq!(calls[0]["signer"], fingerprint.as_str());
    assert_ne!(sessions_of(&report, &name, "base")[0]["signer"], fingerprint.as_str());

    // A loop is refused, with no STS call.
    apply(&assumed_role(
        &name,
        "loop-a",
        "  source: {assumedRoleRef: {name: loop-b}}\n",
    ));
    apply(&assumed_role(
        &name,
        "loop-b",
        "  source: {assumedRoleRef: {name: loop-a}}\n",
    ));
    for (ar, path) in [
        ("loop-a", "loop-a -> loop-b -> loop-a"),
        ("loop-b", "loop-b -> loop-a -> loop-b"),
    ] {
        let looped = wait_ready(&roles, ar, "False", "SourceCycle").await;
        let (_, _, message) = ready(&looped).expect("Ready");
        assert!(message.contains(path), "{message}");
        assert!(secrets.get_opt(ar).await.expect("get").is_none());
    }
    let report = standin.report().await;
    assert!(sessions_of(&report, &name, "loop-a").is_empty() && sessions_of(&report, &name, "loop-b").is_empty());
}

/// The forms a secret takes in a log: as it is, percent-encoded (a form
/// body), and as the list of its bytes that a `Debug` of raw bytes prints.
fn encodings(value: &str) -> [String; 3] {
    let percent: String = value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let bytes = value.bytes().map(|b| b.to_string()).collect::<Vec<_>>().join(", ");
    [value.to_string(), percent, bytes]
}

#[tokio::test]
#[ignore = "needs the local control plane; run with `make test`"]
async fn no_source_leaks_a_credential_at_trace_level() {
    let logs = tempfile::tempdir().expect("logs dir");
    let standin = StandIn::start(3600, 0, logs.path());
    let Scene {
        ns,
        roles,
        secrets,
        operator,
    } = Scene::start(
        "trace-leaks",
        &["--log-level", "trace"],
        // The SDK's own switch for printing what it signs, bodies included
        // (web identity tokens), as someone debugging might set it.
        &[
            ("AWS_ENDPOINT_URL_STS", standin.url.as_str()),
            ("LOG_SIGNABLE_BODY", "true"),
        ],
    )
    .await;
    let name = ns.name.clone();
    let out = kubectl(&["create", "serviceaccount", "app", "-n", &name], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let static_secret = "static-secret-key-0f3c9a7e5b1d";
    apply(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: user-keys, namespace: {name}}}\n\
         stringData: {{AWS_ACCESS_KEY_ID: AKIASTATICLEAKTEST01, AWS_SECRET_ACCESS_KEY: {static_secret}}}\n"
    ));
    // Every source: the operator's own identity, a ServiceAccount's token,
    // static keys, and another AssumedRole's credentials.
    let external_id = "shared-external-id-5c2e9b";
    apply(&assumed_role(&name, "own", &format!("  externalId: {external_id}\n")));
    apply(&assumed_role(&name, "web", "  source: {serviceAccountName: app}\n"));
    apply(&assumed_role(
        &name,
        "keys",
        "  source: {secretRef: {name: user-keys}}\n",
    ));
    apply(&assumed_role(
        &name,
        "chained",
        "  source: {assumedRoleRef: {name: own}}\n",
    ));
    for ar in ["own", "web", "keys", "chained"] {
        wait_ready(&roles, ar, "True", "CredentialsReady").await;
    }
    let report = standin.report().await;
    let token = sessions_of(&report, &name, "web")
        .first()
        .and_then(|call| call["token"].as_str())
        .expect("the web identity token at STS")
        .to_string();
    let mut secret_values = vec![
        ("the web identity token".to_string(), token),
        ("the static secret key".to_string(), static_secret.to_string()),
        ("the external ID".to_string(), external_id.to_string()),
        (
            "the operator's own secret key".to_string(),
            std::env::var("AWS_SECRET_ACCESS_KEY").expect("the operator's key"),
        ),
    ];
    for ar in ["own", "web", "keys", "chained"] {
        let secret = data(&secrets.get(ar).await.expect("Secret"));
        for key in ["AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "endpoint-token"] {
            secret_values.push((format!("{key} of {ar}"), secret[key].clone()));
        }
    }
    let log = operator.output();
    // The log is at trace: the check below means something.
    assert!(
        log.lines().filter(|l| l.contains("TRACE")).count() > 20,
        "expected a trace log, got:\n{}",
        log.lines().take(20).collect::<Vec<_>>().join("\n")
    );
    let events = events_json(&name);
    // The statuses only: the spec holds the external ID the user wrote.
    let statuses = kubectl(
        &["get", "assumedroles", "-n", &name, "-o", "jsonpath={.items[*].status}"],
        None,
    );
    let statuses = String::from_utf8_lossy(&statuses.stdout).to_string();
    assert!(statuses.contains("CredentialsReady"), "{statuses}");
    let (_, metrics) = operator.admin_get("/metrics").await;
    for (what, value) in &secret_values {
        assert!(value.len() >= 16, "{what} is too short to look for");
        for (place, text) in [
            ("log", &log),
            ("Events", &events),
            ("status", &statuses),
            ("metrics", &metrics),
        ] {
            for form in encodings(value) {
                assert!(
                    !text.contains(&form),
                    "{what} appears in the operator's {place} as {form:.60}"
                );
            }
        }
    }
}
