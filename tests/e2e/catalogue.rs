//! A catalogue of malformed AssumedRoles, applied to the real API server as
//! a user would: each is refused at admission with a message that names the
//! field, or, where the schema cannot judge it, reaches `Ready=False,
//! reason=InvalidSpec` naming the field, with no STS call (counted at the
//! STS stand-in, not only by the operator).

use crate::support::*;

/// (what is wrong, the spec lines, the field the message must name)
const REFUSED: &[(&str, &str, &str)] = &[
    ("no role", "spec:\n  durationSeconds: 900\n", "spec.roleArn"),
    ("empty role", "spec:\n  roleArn: \"\"\n", "spec.roleArn"),
    (
        "11-digit account",
        "spec:\n  roleArn: arn:aws:iam::12345678901:role/r\n",
        "spec.roleArn",
    ),
    ("an S3 ARN", "spec:\n  roleArn: arn:aws:s3:::bucket\n", "spec.roleArn"),
    (
        "a user, not a role",
        "spec:\n  roleArn: arn:aws:iam::123456789012:user/r\n",
        "spec.roleArn",
    ),
    (
        "unknown partition",
        "spec:\n  roleArn: arn:aws-xx:iam::123456789012:role/r\n",
        "spec.roleArn",
    ),
    (
        "space in the role",
        "spec:\n  roleArn: \"arn:aws:iam::123456789012:role/a b\"\n",
        "spec.roleArn",
    ),
    ("role as a number", "spec:\n  roleArn: 42\n", "spec.roleArn"),
    (
        "duration too short",
        "ROLE  durationSeconds: 899\n",
        "spec.durationSeconds",
    ),
    (
        "duration too long",
        "ROLE  durationSeconds: 43201\n",
        "spec.durationSeconds",
    ),
    (
        "negative duration",
        "ROLE  durationSeconds: -1\n",
        "spec.durationSeconds",
    ),
    (
        "duration as text",
        "ROLE  durationSeconds: an hour\n",
        "spec.durationSeconds",
    ),
    (
        "session name of 1",
        "ROLE  roleSessionName: a\n",
        "spec.roleSessionName",
    ),
    (
        "session name of 65",
        "ROLE  roleSessionName: LONG65\n",
        "spec.roleSessionName",
    ),
    (
        "session name with !",
        "ROLE  roleSessionName: \"bad!\"\n",
        "spec.roleSessionName",
    ),
    ("external ID of 1", "ROLE  externalId: x\n", "spec.externalId"),
    (
        "external ID with a space",
        "ROLE  externalId: \"a b\"\n",
        "spec.externalId",
    ),
    ("empty policy", "ROLE  policy: \"\"\n", "spec.policy"),
    ("policy too long", "ROLE  policy: LONG2049\n", "spec.policy"),
    ("11 policy ARNs", "ROLE  policyArns: ARNS11\n", "spec.policyArns"),
    (
        "a role as a policy ARN",
        "ROLE  policyArns: [\"arn:aws:iam::123456789012:role/r\"]\n",
        "spec.policyArns",
    ),
    ("51 tags", "ROLE  tags: TAGS51\n", "spec.tags"),
    (
        "transitive key not a tag",
        "ROLE  tags: {a: b}\n  transitiveTagKeys: [c]\n",
        "spec.transitiveTagKeys",
    ),
    (
        "transitive keys without tags",
        "ROLE  transitiveTagKeys: [c]\n",
        "spec.transitiveTagKeys",
    ),
    (
        "source identity of 1",
        "ROLE  sourceIdentity: x\n",
        "spec.sourceIdentity",
    ),
    (
        "source identity with a space",
        "ROLE  sourceIdentity: \"a b\"\n",
        "spec.sourceIdentity",
    ),
    ("refresh of words", "ROLE  refreshBefore: soon\n", "spec.refreshBefore"),
    ("negative refresh", "ROLE  refreshBefore: -5m\n", "spec.refreshBefore"),
    ("refresh in days", "ROLE  refreshBefore: 1d\n", "spec.refreshBefore"),
    (
        "both refresh settings",
        "ROLE  refreshBefore: 20m\n  refreshBeforePercentage: 30\n",
        "spec.refreshBefore",
    ),
    (
        "percentage 0",
        "ROLE  refreshBeforePercentage: 0\n",
        "spec.refreshBeforePercentage",
    ),
    (
        "percentage 100",
        "ROLE  refreshBeforePercentage: 100\n",
        "spec.refreshBeforePercentage",
    ),
    (
        "upper-case Secret name",
        "ROLE  secret: {name: Bad_Name}\n",
        "spec.secret.name",
    ),
    (
        "Secret name of 254",
        "ROLE  secret: {name: LONG254}\n",
        "spec.secret.name",
    ),
    (
        "relative mount path",
        "ROLE  secret: {mountPath: relative/aws}\n",
        "spec.secret.mountPath",
    ),
    (
        "mount path with a space",
        "ROLE  secret: {mountPath: \"/a b\"}\n",
        "spec.secret.mountPath",
    ),
    (
        "profile with a bracket",
        "ROLE  secret: {profile: \"a]b\"}\n",
        "spec.secret.profile",
    ),
    (
        "empty profile",
        "ROLE  secret: {profile: \"\"}\n",
        "spec.secret.profile",
    ),
    (
        "label key with !",
        "ROLE  secret: {labels: {\"bad!\": x}}\n",
        "spec.secret.labels",
    ),
    (
        "label value with a space",
        "ROLE  secret: {labels: {a: \"b c\"}}\n",
        "spec.secret.labels",
    ),
    (
        "label value of 64",
        "ROLE  secret: {labels: {a: LONG64}}\n",
        "spec.secret.labels",
    ),
    (
        "label in the operator's prefix",
        "ROLE  secret: {labels: {\"sts.refresh.dev/x\": y}}\n",
        "spec.secret.labels",
    ),
    (
        "annotation key with a space",
        "ROLE  secret: {annotations: {\"a b\": x}}\n",
        "spec.secret.annotations",
    ),
    (
        "annotation in the operator's prefix",
        "ROLE  secret: {annotations: {\"sts.refresh.dev/expiration\": x}}\n",
        "spec.secret.annotations",
    ),
    ("suspend as text", "ROLE  suspend: maybe\n", "spec.suspend"),
    (
        "an unknown field",
        "ROLE  roleARN: arn:aws:iam::123456789012:role/r\n",
        "spec.roleARN",
    ),
];

/// Fills in the placeholders of a catalogue entry.
fn spec(lines: &str) -> String {
    let arns: Vec<String> = (0..11).map(|i| format!("\"arn:aws:iam::aws:policy/P{i}\"")).collect();
    let tags: Vec<String> = (0..51).map(|i| format!("k{i}: v")).collect();
    lines
        .replace("ROLE  ", "spec:\n  roleArn: arn:aws:iam::123456789012:role/r\n  ")
        .replace("LONG65", &"a".repeat(65))
        .replace("LONG2049", &format!("\"{{\\\"a\\\": \\\"{}\\\"}}\"", "x".repeat(2040)))
        .replace("LONG254", &"a".repeat(254))
        .replace("LONG64", &"a".repeat(64))
        .replace("ARNS11", &format!("[{}]", arns.join(", ")))
        .replace("TAGS51", &format!("{{{}}}", tags.join(", ")))
}

#[tokio::test]
#[ignore = "needs the local control plane; run with `make test`"]
async fn malformed_assumed_roles_are_refused_naming_the_field_and_never_reach_sts() {
    assert!(REFUSED.len() >= 40, "the catalogue holds {} entries", REFUSED.len());
    let logs = tempfile::tempdir().expect("logs dir");
    let standin = StandIn::start(3600, 0, logs.path());
    let scene = Scene::start("catalogue", &[], &[("AWS_ENDPOINT_URL_STS", standin.url.as_str())]).await;
    let ns = &scene.ns.name;
    let mut wrong = Vec::new();
    for (i, (what, lines, field)) in REFUSED.iter().enumerate() {
        let manifest = format!(
            "apiVersion: sts.refresh.dev/v1alpha1\nkind: AssumedRole\nmetadata: {{name: bad-{i}, namespace: {ns}}}\n{}",
            spec(lines)
        );
        let out = kubectl(&["apply", "--validate=strict", "-f", "-"], Some(&manifest));
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            wrong.push(format!("{what}: accepted at admission"));
        } else if !stderr.contains(field) {
            wrong.push(format!("{what}: the message does not name {field}: {stderr}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {}:\n{}",
        wrong.len(),
        REFUSED.len(),
        wrong.join("\n")
    );
    eprintln!(
        "catalogue: {} malformed AssumedRoles refused at admission",
        REFUSED.len()
    );

    // What only the operator can judge: a policy that is JSON but not an
    // object passes the schema's length rule.
    apply(&assumed_role(ns, "array-policy", "  policy: \"[1, 2]\"\n"));
    let ar = wait_ready(&scene.roles, "array-policy", "False", "InvalidSpec").await;
    let (_, _, message) = ready(&ar).expect("Ready");
    assert!(message.starts_with("spec.policy: "), "{message}");
    let report = standin.report().await;
    assert_eq!(report["assume_role"], 0, "STS was called: {report}");
}
