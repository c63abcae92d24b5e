//! The credentials endpoint for pods: `assumed-role-operator
//! credentials-endpoint`, run as a native sidecar beside the workload, serves
//! the mounted Secret in the container-credentials format that every AWS SDK
//! and the CLI read through `AWS_CONTAINER_CREDENTIALS_FULL_URI` and
//! `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`. No shell, no `cat`: it works in
//! any image.
//!
//! Each request reads the files anew, through the kubelet's `..data` link
//! resolved once, so that a swap of the Secret is seen at once and the files
//! of one answer all come from the same version. A read that fails (the
//! swap removed the folder half-way) falls back to the last good set. Expired
//! credentials are never served: the answer is then 503. Nothing here calls
//! STS or the Kubernetes API.
//!
//! [`answer`] is the decision, pure; [`read`] and [`serve`] are the I/O.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use axum::{
    Router,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use jiff::Timestamp;
use serde::Deserialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    credentials::Credentials,
    schedule,
    secret::{CREDENTIAL_PROCESS, ENDPOINT_TOKEN, EXPIRATION},
};

/// Where the SDKs ask, below the listen address.
pub const PATH: &str = "/v1/credentials";

/// One version of the mounted Secret: the credentials and the token.
#[derive(Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The credentials, with their real expiry.
    pub credentials: Credentials,
    /// The token a request must carry.
    pub token: String,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

/// Why the files could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// A file is missing or unreadable.
    #[error("reading {path}: {kind}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong, without the content.
        kind: std::io::ErrorKind,
    },
    /// A file does not hold what the operator writes.
    #[error("{0} does not hold what the operator writes")]
    Malformed(&'static str),
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Process {
    access_key_id: String,
    secret_access_key: String,
    session_token: String,
}

/// Parses the three files of one version of the Secret.
pub fn parse(process: &[u8], expiration: &[u8], token: &[u8]) -> Result<Snapshot, ReadError> {
    let process: Process = serde_json::from_slice(process).map_err(|_| ReadError::Malformed(CREDENTIAL_PROCESS))?;
    let expiration = std::str::from_utf8(expiration)
        .ok()
        .and_then(|t| t.trim().parse::<Timestamp>().ok())
        .ok_or(ReadError::Malformed(EXPIRATION))?;
    let token = std::str::from_utf8(token)
        .ok()
        .filter(|t| !t.is_empty() && !t.contains(['\r', '\n']))
        .ok_or(ReadError::Malformed(ENDPOINT_TOKEN))?;
    Ok(Snapshot {
        credentials: Credentials {
            access_key_id: process.access_key_id,
            secret_access_key: process.secret_access_key,
            session_token: process.session_token,
            expiration,
        },
        token: token.to_string(),
    })
}

/// Reads the version of the Secret that `dir/..data` points to, or the files
/// in `dir` itself when it is not a kubelet volume.
pub fn read(dir: &Path) -> Result<Snapshot, ReadError> {
    let folder = match std::fs::read_link(dir.join("..data")) {
        Ok(target) => dir.join(target),
        Err(_) => dir.to_path_buf(),
    };
    let file = |name: &str| {
        let path = folder.join(name);
        std::fs::read(&path).map_err(|e| ReadError::Io { path, kind: e.kind() })
    };
    parse(&file(CREDENTIAL_PROCESS)?, &file(EXPIRATION)?, &file(ENDPOINT_TOKEN)?)
}

/// What to answer a request for credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// 200, with the credentials in the container-credentials format.
    Credentials(serde_json::Value),
    /// 401: no token, or not the right one.
    Unauthorized,
    /// 503, with why.
    Unavailable(&'static str),
}

/// Decides the answer to one request, from the set just read (if the read
/// worked), the last good set, the request's `Authorization` header and the
/// time. Pure.
pub fn answer(
    fresh: Option<&Snapshot>,
    last_good: Option<&Snapshot>,
    authorization: Option<&[u8]>,
    now: Timestamp,
) -> Answer {
    let Some(snapshot) = fresh.or(last_good) else {
        return Answer::Unavailable("no credentials have been read from the mounted Secret yet");
    };
    if !authorization.is_some_and(|given| same(given, snapshot.token.as_bytes())) {
        return Answer::Unauthorized;
    }
    let creds = &snapshot.credentials;
    if now >= creds.expiration {
        return Answer::Unavailable("the credentials in the mounted Secret have expired");
    }
    Answer::Credentials(json!({
        "AccessKeyId": creds.access_key_id,
        "SecretAccessKey": creds.secret_access_key,
        "Token": creds.session_token,
        "Expiration": schedule::advertised_expiration(creds.expiration, now).to_string(),
    }))
}

/// Whether the endpoint can serve: it has a set that has not expired.
pub fn ready(fresh: Option<&Snapshot>, last_good: Option<&Snapshot>, now: Timestamp) -> bool {
    fresh.or(last_good).is_some_and(|s| now < s.credentials.expiration)
}

/// Compares in time that depends on the length only.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The endpoint's state: where the Secret is mounted and the last good set.
struct Server {
    dir: PathBuf,
    last_good: Mutex<Option<Snapshot>>,
}

impl Server {
    /// Reads the Secret, keeps a good read as the last good set, and returns
    /// what was read (if anything) with the last good set.
    fn load(&self) -> (Option<Snapshot>, Option<Snapshot>) {
        let fresh = match read(&self.dir) {
            Ok(snapshot) => Some(snapshot),
            Err(error) => {
                warn!(%error, "could not read the mounted Secret; using the last good credentials, if any");
                None
            }
        };
        let mut last_good = self.last_good.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(fresh) = &fresh {
            *last_good = Some(fresh.clone());
        }
        (fresh, last_good.clone())
    }
}

/// Serves the endpoint on `address` (a loopback address) until `shutdown`.
pub async fn serve(address: SocketAddr, dir: PathBuf, shutdown: CancellationToken) -> anyhow::Result<()> {
    anyhow::ensure!(
        address.ip().is_loopback(),
        "--listen {address}: the credentials endpoint listens on a loopback address only (127.0.0.1 or ::1), \
         so that nothing outside the pod can reach it"
    );
    let listener = tokio::net::TcpListener::bind(address).await?;
    let server = Arc::new(Server {
        dir: dir.clone(),
        last_good: Mutex::new(None),
    });
    let _ = server.load();
    info!(address = %listener.local_addr()?, path = PATH, dir = %dir.display(), "serving credentials");
    let app = Router::new()
        .route(PATH, get(credentials))
        .route("/readyz", get(readyz))
        .route("/livez", get(|| async { "ok" }))
        .with_state(server);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await?;
    info!("stopped");
    Ok(())
}

async fn credentials(State(server): State<Arc<Server>>, headers: HeaderMap) -> Response {
    let (fresh, last_good) = server.load();
    let authorization = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes());
    match answer(fresh.as_ref(), last_good.as_ref(), authorization, Timestamp::now()) {
        Answer::Credentials(body) => ([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response(),
        Answer::Unauthorized => {
            warn!("refused a request without the right authorization token");
            (StatusCode::UNAUTHORIZED, "authorization token missing or wrong\n").into_response()
        }
        Answer::Unavailable(why) => {
            warn!(why, "no credentials to serve");
            (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response()
        }
    }
}

async fn readyz(State(server): State<Arc<Server>>) -> Response {
    let (fresh, last_good) = server.load();
    if ready(fresh.as_ref(), last_good.as_ref(), Timestamp::now()) {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "no valid credentials in the mounted Secret\n",
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    fn snapshot(key: &str, expires: i64) -> Snapshot {
        Snapshot {
            credentials: Credentials {
                access_key_id: key.into(),
                secret_access_key: "secret".into(),
                session_token: "session".into(),
                expiration: at(expires),
            },
            token: "right".into(),
        }
    }

    #[test]
    fn the_right_token_gets_the_container_credentials_format_with_the_margin() {
        let fresh = snapshot("ASIANEW", 3600);
        let Answer::Credentials(body) = answer(Some(&fresh), None, Some(b"right"), at(0)) else {
            panic!("no credentials")
        };
        assert_eq!(
            body,
            json!({"AccessKeyId": "ASIANEW", "SecretAccessKey": "secret", "Token": "session",
                   "Expiration": at(3600 - 120).to_string()})
        );
        assert!(body["Expiration"].as_str().is_some_and(|e| e.ends_with(":00Z")));
    }

    #[test]
    fn a_missing_or_wrong_token_gets_nothing() {
        let fresh = snapshot("ASIANEW", 3600);
        for given in [
            None,
            Some(&b""[..]),
            Some(b"wrong"),
            Some(b"righ"),
            Some(b"right\n"),
            Some(b"rightt"),
        ] {
            assert_eq!(
                answer(Some(&fresh), None, given, at(0)),
                Answer::Unauthorized,
                "{given:?}"
            );
        }
    }

    #[test]
    fn expired_credentials_are_never_served() {
        let old = snapshot("ASIAOLD", 100);
        assert!(matches!(
            answer(Some(&old), None, Some(b"right"), at(100)),
            Answer::Unavailable(_)
        ));
        assert!(matches!(
            answer(None, Some(&old), Some(b"right"), at(200)),
            Answer::Unavailable(_)
        ));
        assert!(!ready(Some(&old), None, at(100)));
        // Inside the margin, still valid: served, with an expiry ahead.
        let Answer::Credentials(body) = answer(Some(&old), None, Some(b"right"), at(90)) else {
            panic!("no credentials")
        };
        assert_eq!(body["Expiration"], at(95).to_string());
    }

    #[test]
    fn a_failed_read_serves_the_last_good_set_and_a_good_read_wins() {
        let last = snapshot("ASIALAST", 3600);
        let fresh = snapshot("ASIAFRESH", 7200);
        let key = |a: Answer| match a {
            Answer::Credentials(body) => body["AccessKeyId"].as_str().unwrap_or_default().to_string(),
            other => format!("{other:?}"),
        };
        assert_eq!(key(answer(None, Some(&last), Some(b"right"), at(0))), "ASIALAST");
        assert_eq!(
            key(answer(Some(&fresh), Some(&last), Some(b"right"), at(0))),
            "ASIAFRESH"
        );
        assert!(matches!(
            answer(None, None, Some(b"right"), at(0)),
            Answer::Unavailable(_)
        ));
        assert!(ready(None, Some(&last), at(0)));
        assert!(!ready(None, None, at(0)));
    }

    #[test]
    fn the_files_parse_strictly() {
        let process = br#"{"Version":1,"AccessKeyId":"A","SecretAccessKey":"S","SessionToken":"T","Expiration":"x"}"#;
        let parsed = parse(process, b"2030-01-01T00:00:00Z", b"tok");
        assert!(parsed.is_ok_and(|s| s.token == "tok" && s.credentials.access_key_id == "A"));
        assert!(matches!(
            parse(b"{", b"2030-01-01T00:00:00Z", b"tok"),
            Err(ReadError::Malformed(CREDENTIAL_PROCESS))
        ));
        assert!(matches!(
            parse(process, b"soon", b"tok"),
            Err(ReadError::Malformed(EXPIRATION))
        ));
        assert!(matches!(
            parse(process, b"2030-01-01T00:00:00Z", b""),
            Err(ReadError::Malformed(ENDPOINT_TOKEN))
        ));
        assert!(matches!(
            parse(process, b"2030-01-01T00:00:00Z", b"tok\n"),
            Err(ReadError::Malformed(ENDPOINT_TOKEN))
        ));
    }

    /// Writes one version of a Secret as the kubelet does: a folder, and
    /// `..data` swapped to it by one rename.
    fn project(dir: &Path, version: u32, key: &str) {
        let folder = format!("..v{version}");
        std::fs::create_dir(dir.join(&folder)).unwrap_or_default();
        let process = json!({"Version": 1, "AccessKeyId": key, "SecretAccessKey": "S", "SessionToken": "T",
                             "Expiration": "2099-01-01T00:00:00Z"});
        let write = |name: &str, data: &str| std::fs::write(dir.join(&folder).join(name), data).unwrap_or_default();
        write(CREDENTIAL_PROCESS, &process.to_string());
        write(EXPIRATION, "2099-01-01T00:00:00Z");
        write(ENDPOINT_TOKEN, "right");
        let tmp = dir.join("..data_tmp");
        std::os::unix::fs::symlink(&folder, &tmp).unwrap_or_default();
        std::fs::rename(&tmp, dir.join("..data")).unwrap_or_default();
    }

    #[test]
    fn reads_follow_the_data_link_and_see_a_swap_at_once() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(read(dir.path()), Err(ReadError::Io { .. })));
        project(dir.path(), 1, "ASIAONE");
        assert_eq!(
            read(dir.path()).map(|s| s.credentials.access_key_id).ok().as_deref(),
            Some("ASIAONE")
        );
        project(dir.path(), 2, "ASIATWO");
        assert_eq!(
            read(dir.path()).map(|s| s.credentials.access_key_id).ok().as_deref(),
            Some("ASIATWO")
        );
        // The old folder removed under a reader that resolved it: an error,
        // which the server answers from its last good set.
        std::fs::remove_dir_all(dir.path().join("..v2")).unwrap_or_default();
        assert!(read(dir.path()).is_err());
    }
}
