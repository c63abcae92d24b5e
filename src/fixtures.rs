//! Test fixtures: AssumedRole builders, a fake STS, and a mocked API server
//! that checks each request the controller makes (method, path with the
//! server-side-apply query, body) and answers as the API server would.
//!
//! A test runs a scenario (the calls it expects, in order) next to
//! `reconcile`, then waits at most a second for the scenario to finish, so a
//! missing call fails the test as surely as an unexpected one.

use std::{
    future::ready,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use http::{Method, Request, Response, StatusCode};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Secret;
use kube::{Client, Resource, client::Body};
use serde_json::{Value, json};

use crate::{
    api::{AssumedRole, AssumedRoleSpec, AssumedRoleStatus},
    controller::Context,
    credentials::{AssumeRoleRequest, AssumedSession, Credentials},
    metrics::Metrics,
    policy::AssumedRolePolicy,
    secret,
    sts::{StsError, StsFuture},
};

/// Runs the CEL rules of `crd` on an object of `kind` with `spec`, as the
/// API server would at admission.
pub fn cel(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    kind: &str,
    spec: Value,
) -> Result<(), String> {
    let schema = serde_json::to_value(
        crd.spec.versions[0]
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref()),
    )
    .map_err(|e| e.to_string())?;
    let object = json!({"apiVersion": "sts.refresh.dev/v1alpha1", "kind": kind,
        "metadata": {"name": "x", "namespace": "y"}, "spec": spec});
    kube::core::cel::Validator::new()
        .validate(&schema, &object, None)
        .map_err(|e| e.to_string())
}

/// A namespace without labels.
pub static NO_LABELS: std::collections::BTreeMap<String, String> = std::collections::BTreeMap::new();

/// One AssumedRolePolicy that allows every namespace every role from every
/// source, as the chart's `permissivePolicy` does.
pub fn allowing_all() -> &'static [Arc<AssumedRolePolicy>] {
    static ALL: std::sync::LazyLock<Vec<Arc<AssumedRolePolicy>>> = std::sync::LazyLock::new(|| {
        vec![Arc::new(AssumedRolePolicy::new(
            "allow-all",
            serde_json::from_value(
                json!({"namespaces": {"selector": {}}, "roleArns": ["arn:*:iam::*:role/*"],
                "roleSessionNames": ["*"], "sourceIdentities": ["*"]}),
            )
            .expect("policy"),
        ))]
    });
    &ALL
}

/// The HMAC key every fixture signs with.
pub const KEY: &[u8] = b"fixture key";

impl AssumedRole {
    /// `billing/reader`, generation 1, assuming `role/reader`.
    pub fn test() -> Self {
        let spec: AssumedRoleSpec =
            serde_json::from_value(json!({"roleArn": "arn:aws:iam::123456789012:role/reader"})).expect("spec");
        let mut ar = AssumedRole::new("reader", spec);
        ar.meta_mut().namespace = Some("billing".into());
        ar.meta_mut().uid = Some("uid-1".into());
        ar.meta_mut().generation = Some(1);
        ar
    }

    /// The same object with a status.
    pub fn with_status(mut self, status: AssumedRoleStatus) -> Self {
        self.status = Some(status);
        self
    }

    /// The same object at another generation.
    pub fn with_generation(mut self, generation: i64) -> Self {
        self.meta_mut().generation = Some(generation);
        self
    }
}

/// Credentials that expire at `expiration`.
pub fn credentials(expiration: Timestamp) -> Credentials {
    Credentials {
        access_key_id: "ASIAFIXTURE".into(),
        secret_access_key: "fixture-secret".into(),
        session_token: "fixture-token".into(),
        expiration,
    }
}

/// The Secret the operator would have written for `ar`, issued `age` ago
/// with a lifetime of `lifetime`.
pub fn owned_secret(ar: &AssumedRole, age: SignedDuration, lifetime: SignedDuration) -> Secret {
    let issued = Timestamp::from_second((Timestamp::now() - age).as_second()).expect("time");
    let mut request = AssumeRoleRequest::for_resource(ar);
    request.source = crate::source::identity(&ar.spec.source, crate::source::DEFAULT_AUDIENCE);
    let hash = secret::spec_hash(&request);
    let owner = ar.controller_owner_ref(&()).expect("owner");
    let mut s = secret::render_secret(ar, owner, &credentials(issued + lifetime), issued, &hash, None, KEY);
    s.metadata.resource_version = Some("1".into());
    s
}

/// An STS that answers every call with the same result and counts calls.
pub struct FakeSts {
    calls: AtomicUsize,
    answer: Mutex<Result<AssumedSession, StsError>>,
}

impl FakeSts {
    /// Answers with credentials valid for an hour.
    pub fn granting() -> Arc<Self> {
        let session = AssumedSession {
            credentials: credentials(Timestamp::now() + SignedDuration::from_hours(1)),
            assumed_role_arn: Some("arn:aws:sts::123456789012:assumed-role/reader/billing.reader".into()),
            source_identity: None,
        };
        Arc::new(Self {
            calls: AtomicUsize::new(0),
            answer: Mutex::new(Ok(session)),
        })
    }

    /// Answers with `error`.
    pub fn failing(error: StsError) -> Arc<Self> {
        Arc::new(Self {
            calls: AtomicUsize::new(0),
            answer: Mutex::new(Err(error)),
        })
    }

    /// Calls so far.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl crate::sts::Sts for FakeSts {
    fn assume_role<'a>(&'a self, _request: &'a AssumeRoleRequest, _signer: &'a crate::sts::Signer) -> StsFuture<'a> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let answer = self.answer.lock().expect("lock").clone();
        Box::pin(ready(answer))
    }
}

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// The mocked API server's side of the connection.
pub struct ApiServer(Handle);

/// A context whose client talks to the returned mocked API server.
pub fn context(sts: Arc<FakeSts>) -> (Arc<Context>, ApiServer) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let ctx = Context::new(
        client,
        sts,
        KEY.to_vec(),
        Arc::new(Metrics::default()),
        Some("test".into()),
    );
    ctx.grants.fill(allowing_all(), &[("billing", NO_LABELS.clone())]);
    (Arc::new(ctx), ApiServer(handle))
}

const SECRET_PATH: &str = "/api/v1/namespaces/billing/secrets/reader";
const APPLY_QUERY: &str = "?&force=true&fieldManager=assumed-role-operator";

impl ApiServer {
    /// Takes the next request, checks its method and path, and returns its
    /// JSON body (null when empty) with the means to answer it.
    async fn expect(&mut self, method: Method, path: &str) -> (Value, tower_test::mock::SendResponse<Response<Body>>) {
        let (request, send) = self
            .0
            .next_request()
            .await
            .expect("the controller made no further request");
        assert_eq!((request.method(), request.uri().to_string().as_str()), (&method, path));
        let bytes = request.into_body().collect_bytes().await.expect("request body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("JSON body")
        };
        (body, send)
    }

    fn answer(send: tower_test::mock::SendResponse<Response<Body>>, status: StatusCode, body: &Value) {
        let response = Response::builder()
            .status(status)
            .body(Body::from(body.to_string().into_bytes()));
        send.send_response(response.expect("response"));
    }

    fn not_found(send: tower_test::mock::SendResponse<Response<Body>>) {
        let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
            "code": 404, "message": "secrets \"reader\" not found"});
        Self::answer(send, StatusCode::NOT_FOUND, &status);
    }

    /// Expects the controller to read the Secret, and answers with `secret`
    /// or NotFound.
    pub async fn get_secret(&mut self, secret: Option<&Secret>) {
        let (_, send) = self.expect(Method::GET, SECRET_PATH).await;
        match secret {
            Some(s) => Self::answer(send, StatusCode::OK, &serde_json::to_value(s).expect("secret")),
            None => Self::not_found(send),
        }
    }

    /// Expects a server-side apply of the Secret; answers with `status` and
    /// returns the applied object.
    pub async fn apply_secret(&mut self, status: StatusCode) -> Value {
        let (body, send) = self.expect(Method::PATCH, &format!("{SECRET_PATH}{APPLY_QUERY}")).await;
        if status.is_success() {
            Self::answer(send, status, &body);
        } else {
            let failure = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                "reason": "InternalError", "code": status.as_u16(), "message": "etcd is unhappy"});
            Self::answer(send, status, &failure);
        }
        body
    }

    /// Expects an Event to be created and returns it.
    pub async fn create_event(&mut self) -> Value {
        let (body, send) = self
            .expect(Method::POST, "/apis/events.k8s.io/v1/namespaces/billing/events?")
            .await;
        Self::answer(send, StatusCode::CREATED, &body);
        body
    }

    /// Expects a server-side apply of the status and returns the status.
    pub async fn patch_status(&mut self) -> Value {
        let path = format!("/apis/sts.refresh.dev/v1alpha1/namespaces/billing/assumedroles/reader/status{APPLY_QUERY}");
        let (body, send) = self.expect(Method::PATCH, &path).await;
        let mut object = serde_json::to_value(AssumedRole::test()).expect("object");
        object["status"] = body["status"].clone();
        Self::answer(send, StatusCode::OK, &object);
        body["status"].clone()
    }

    /// Expects a server-side apply of the status and refuses it with a 503.
    pub async fn refuse_status(&mut self) {
        let path = format!("/apis/sts.refresh.dev/v1alpha1/namespaces/billing/assumedroles/reader/status{APPLY_QUERY}");
        let (_, send) = self.expect(Method::PATCH, &path).await;
        let failure = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "reason": "ServiceUnavailable", "code": 503, "message": "the server is shutting down"});
        Self::answer(send, StatusCode::SERVICE_UNAVAILABLE, &failure);
    }

    /// Checks that the controller makes no further request.
    pub async fn expect_no_more(mut self) {
        let next = tokio::time::timeout(std::time::Duration::from_millis(200), self.0.next_request()).await;
        if let Ok(Some((request, _))) = next {
            panic!("unexpected request: {} {}", request.method(), request.uri());
        }
    }
}
