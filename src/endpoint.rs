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
//! [`answer`] and [`parse_head`] are pure; [`read`] and [`serve`] are the
//! I/O.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use jiff::Timestamp;
use serde::Deserialize;
use serde_json::json;
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
    /// A whole version of the Secret without credentials: the operator
    /// removed them (the AssumedRole's grant was revoked).
    #[error("the mounted Secret holds no credentials")]
    Withdrawn,
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
    let process = match file(CREDENTIAL_PROCESS) {
        // The token is there and the credentials are not: a complete
        // version that holds none, not a read that raced a swap.
        Err(ReadError::Io {
            kind: std::io::ErrorKind::NotFound,
            ..
        }) if folder.join(ENDPOINT_TOKEN).is_file() && !folder.join(EXPIRATION).exists() => {
            return Err(ReadError::Withdrawn);
        }
        other => other?,
    };
    parse(&process, &file(EXPIRATION)?, &file(ENDPOINT_TOKEN)?)
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
        return Answer::Unavailable(
            "the mounted Secret holds no credentials: see the Ready condition of its AssumedRole",
        );
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
    connections: AtomicUsize,
}

impl Server {
    /// Reads the Secret, keeps a good read as the last good set, and returns
    /// what was read (if anything) with the last good set.
    fn load(&self) -> (Option<Snapshot>, Option<Snapshot>) {
        let fresh = match read(&self.dir) {
            Ok(snapshot) => Some(snapshot),
            Err(ReadError::Withdrawn) => {
                // Never serve what the operator took away.
                *self.last_good.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
                None
            }
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

/// Connections served at once; more are closed at once. The SDKs of one
/// pod keep one or two each.
const MAX_CONNECTIONS: usize = 64;
/// Bytes of a request's line and headers; the SDKs send a few hundred.
const MAX_HEAD: usize = 16 * 1024;
/// How long an idle keep-alive connection stays open.
const IDLE: Duration = Duration::from_secs(60);

/// Serves the endpoint on `address` (a loopback address), one thread per
/// connection, until the process is stopped. Plain threads and a small
/// HTTP/1.1 reader rather than an async stack: the endpoint runs in every
/// pod, and this keeps it small.
pub fn serve(address: SocketAddr, dir: PathBuf) -> anyhow::Result<()> {
    anyhow::ensure!(
        address.ip().is_loopback(),
        "--listen {address}: the credentials endpoint listens on a loopback address only (127.0.0.1 or ::1), \
         so that nothing outside the pod can reach it"
    );
    let listener = TcpListener::bind(address)?;
    let server = Arc::new(Server {
        dir: dir.clone(),
        last_good: Mutex::new(None),
        connections: AtomicUsize::new(0),
    });
    let _ = server.load();
    info!(address = %listener.local_addr()?, path = PATH, dir = %dir.display(), "serving credentials");
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(stream) => stream,
            Err(error) => {
                warn!(%error, "accepting a connection");
                continue;
            }
        };
        if server.connections.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            server.connections.fetch_sub(1, Ordering::SeqCst);
            warn!("too many connections; closing a new one");
            continue;
        }
        let server = server.clone();
        let spawned = std::thread::Builder::new()
            .name("connection".into())
            .stack_size(128 * 1024)
            .spawn(move || {
                if let Err(error) = connection(&server, stream) {
                    tracing::debug!(%error, "connection ended");
                }
                server.connections.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(error) = spawned {
            warn!(%error, "starting a connection thread");
        }
    }
    Ok(())
}

/// What a probe of the endpoint asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Probe {
    /// The endpoint serves unexpired credentials with the mounted token
    /// (readiness and startup).
    Ready,
    /// The endpoint answers at all (liveness: a restart would not bring
    /// credentials that the Secret lacks).
    Live,
}

/// How long a probe waits for the endpoint, connect and answer each.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Asks the endpoint on `address` as the kubelet's `exec` probe runs it,
/// inside the pod: no shell, no network path from the node (the kubelet
/// runs `httpGet` and `tcpSocket` probes from the node's network namespace,
/// where the pod's loopback cannot be reached). `Ok` says what was found;
/// an error says why the probe fails. Neither holds a credential.
pub fn probe(kind: Probe, address: SocketAddr, dir: &Path) -> anyhow::Result<String> {
    match kind {
        Probe::Live => {
            let (status, _) = probe_get(address, "/livez", None)?;
            anyhow::ensure!(status == 200, "the endpoint on {address} answered {status} to /livez");
            Ok(format!("the endpoint on {address} is live"))
        }
        Probe::Ready => {
            let snapshot = read(dir).map_err(|e| anyhow::anyhow!("no credentials to ask for: {e}"))?;
            let (status, body) = probe_get(address, PATH, Some(&snapshot.token))?;
            anyhow::ensure!(
                status == 200,
                "the endpoint on {address} answered {status}: {}",
                if status == 503 {
                    body.trim()
                } else {
                    "not the credentials"
                }
            );
            let expiration = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["Expiration"].as_str().and_then(|t| t.parse::<Timestamp>().ok()))
                .ok_or_else(|| anyhow::anyhow!("the endpoint on {address} answered 200 without an expiration"))?;
            anyhow::ensure!(
                expiration > Timestamp::now(),
                "the endpoint on {address} serves credentials that expired at {expiration}"
            );
            Ok(format!(
                "the endpoint on {address} serves credentials until {expiration}"
            ))
        }
    }
}

/// One GET on `address`, with the token if any; the status and the body.
fn probe_get(address: SocketAddr, path: &str, token: Option<&str>) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&address, PROBE_TIMEOUT)
        .map_err(|e| anyhow::anyhow!("connecting to the endpoint on {address}: {e}"))?;
    stream.set_read_timeout(Some(PROBE_TIMEOUT))?;
    stream.set_write_timeout(Some(PROBE_TIMEOUT))?;
    let authorization = token.map(|t| format!("Authorization: {t}\r\n")).unwrap_or_default();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {address}\r\n{authorization}Connection: close\r\n\r\n").as_bytes(),
        )
        .map_err(|e| anyhow::anyhow!("asking the endpoint on {address}: {e}"))?;
    let mut answer = Vec::new();
    stream
        .take(64 * 1024)
        .read_to_end(&mut answer)
        .map_err(|e| anyhow::anyhow!("reading the endpoint's answer on {address}: {e}"))?;
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("the endpoint on {address} did not answer HTTP"))?;
    Ok((status, body.to_string()))
}

/// What the endpoint reads of a request.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Request {
    /// The method.
    pub method: String,
    /// The path, without a query.
    pub path: String,
    /// The `Authorization` header, as sent.
    pub authorization: Option<Vec<u8>>,
    /// Whether the client asked to close the connection after this answer.
    pub close: bool,
    /// The length of a body, which the endpoint reads and ignores.
    pub content_length: usize,
}

/// Parses a request's line and headers (everything before the empty line).
/// Pure. `None` for anything that is not plain HTTP/1.x.
pub fn parse_head(head: &[u8]) -> Option<Request> {
    let mut lines = head.split(|&b| b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let line = std::str::from_utf8(lines.next()?).ok()?;
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !version.starts_with("HTTP/1.") {
        return None;
    }
    let mut request = Request {
        method: method.to_string(),
        path: target.split('?').next().unwrap_or_default().to_string(),
        close: version == "HTTP/1.0",
        ..Request::default()
    };
    for line in lines.filter(|l| !l.is_empty()) {
        let colon = line.iter().position(|&b| b == b':')?;
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if name.eq_ignore_ascii_case(b"authorization") {
            request.authorization = Some(value.to_vec());
        } else if name.eq_ignore_ascii_case(b"connection") {
            request.close = value.eq_ignore_ascii_case(b"close");
        } else if name.eq_ignore_ascii_case(b"content-length") {
            request.content_length = std::str::from_utf8(value).ok()?.parse().ok()?;
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            return None;
        }
    }
    Some(request)
}

/// Serves the requests of one connection until the client closes it, asks
/// to, sends something that is not a request, or stays idle too long.
fn connection(server: &Server, stream: TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(IDLE))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    loop {
        let mut head = Vec::new();
        loop {
            let before = head.len();
            let read = (&mut reader)
                .take((MAX_HEAD - head.len()) as u64)
                .read_until(b'\n', &mut head)?;
            if read == 0 {
                return Ok(()); // closed, or a head too long
            }
            let line = &head[before..];
            if line == b"\r\n" || line == b"\n" {
                break;
            }
        }
        let Some(request) = parse_head(&head) else {
            return respond(&mut writer, 400, "text/plain", "bad request\n", true);
        };
        std::io::copy(
            &mut (&mut reader).take(request.content_length as u64),
            &mut std::io::sink(),
        )?;
        let (status, content_type, body) = route(server, &request);
        respond(&mut writer, status, content_type, &body, request.close)?;
        if request.close {
            return Ok(());
        }
    }
}

/// The answer to one request: status, content type and body.
fn route(server: &Server, request: &Request) -> (u16, &'static str, String) {
    if request.method != "GET" {
        return (405, "text/plain", "only GET\n".into());
    }
    match request.path.as_str() {
        PATH => {
            let (fresh, last_good) = server.load();
            match answer(
                fresh.as_ref(),
                last_good.as_ref(),
                request.authorization.as_deref(),
                Timestamp::now(),
            ) {
                Answer::Credentials(body) => (200, "application/json", body.to_string()),
                Answer::Unauthorized => {
                    warn!("refused a request without the right authorization token");
                    (401, "text/plain", "authorization token missing or wrong\n".into())
                }
                Answer::Unavailable(why) => {
                    warn!(why, "no credentials to serve");
                    (503, "text/plain", format!("{why}\n"))
                }
            }
        }
        "/readyz" => {
            let (fresh, last_good) = server.load();
            if ready(fresh.as_ref(), last_good.as_ref(), Timestamp::now()) {
                (200, "text/plain", "ok\n".into())
            } else {
                (503, "text/plain", "no valid credentials in the mounted Secret\n".into())
            }
        }
        "/livez" => (200, "text/plain", "ok\n".into()),
        _ => (404, "text/plain", "not found\n".into()),
    }
}

fn respond(writer: &mut TcpStream, status: u16, content_type: &str, body: &str, close: bool) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let connection = if close { "close" } else { "keep-alive" };
    // One write: a head and a body sent apart wait on the peer's delayed ACK.
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: {connection}\r\n\r\n{body}",
        body.len()
    );
    writer.write_all(response.as_bytes())?;
    writer.flush()
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
    fn a_version_without_credentials_reads_as_withdrawn_and_a_half_swapped_one_does_not() {
        let dir = std::env::temp_dir().join(format!("aro-endpoint-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let version = dir.join("..2026_11_30_01_00_00.1");
        std::fs::create_dir_all(&version).unwrap_or_else(|e| panic!("{e}"));
        std::os::unix::fs::symlink("..2026_11_30_01_00_00.1", dir.join("..data")).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(version.join(ENDPOINT_TOKEN), "t").unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(version.join("config"), "[default]\n").unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(read(&dir), Err(ReadError::Withdrawn)));
        // The expiration without the credentials is a version caught
        // mid-way, not one without credentials.
        std::fs::write(version.join(EXPIRATION), "2026-11-30T02:00:00Z").unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(read(&dir), Err(ReadError::Io { .. })));
        // A folder removed under the reader is a race too.
        std::fs::remove_dir_all(&version).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(read(&dir), Err(ReadError::Io { .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn request_heads_parse_as_the_sdks_send_them() {
        let head = b"GET /v1/credentials?x=1 HTTP/1.1\r\nHost: 127.0.0.1:9911\r\nauthorization:  tok \r\nContent-Length: 0\r\n\r\n";
        let request = parse_head(head).unwrap_or_default();
        assert_eq!(request.method, "GET");
        assert_eq!(request.path, PATH);
        assert_eq!(request.authorization.as_deref(), Some(&b"tok"[..]));
        assert!(!request.close);
        let request = parse_head(b"GET / HTTP/1.0\r\n\r\n").unwrap_or_default();
        assert!(request.close);
        let request = parse_head(b"GET / HTTP/1.1\r\nConnection: Close\r\n\r\n").unwrap_or_default();
        assert!(request.close);
        for bad in [
            &b"GET /\r\n\r\n"[..],
            b"GET / HTTP/2\r\n\r\n",
            b"GET / HTTP/1.1 extra\r\n\r\n",
            b"GET / HTTP/1.1\r\nno colon\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: many\r\n\r\n",
            b"\xff\xfe HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(parse_head(bad), None, "{}", String::from_utf8_lossy(bad));
        }
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
