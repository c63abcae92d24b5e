# shellcheck shell=bash
# Shared by hack/cluster.sh and hack/node.sh (sourced, not run): logging,
# processes started and stopped by PID under $STATE, and certificates
# signed by the local cluster's CA. The caller sets LOG_TAG and STATE.

log() { printf '[%s %s] %s\n' "$LOG_TAG" "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

need() {
  local missing=()
  for tool in "$@"; do command -v "$tool" >/dev/null || missing+=("$tool"); done
  ((${#missing[@]} == 0)) || die "missing tools: ${missing[*]} (install them first; see README.md)"
}

# Runs "$@" and logs how long it took under the label $1.
timed() {
  local label=$1 start=$SECONDS; shift
  log "$label ..."
  "$@"
  log "$label done in $((SECONDS - start)) s"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# Polls until "$@" succeeds, at most $1 seconds.
wait_for() {
  local limit=$1 what=$2; shift 2
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "$what not ready after ${limit}s"
    sleep 0.2
  done
}

# Starts a process in the background, records its PID and logs to STATE/logs,
# and keeps its command line in STATE/cmds so that `start NAME` can run it
# again. Environment assignments before the command are kept too.
start() {
  local name=$1; shift
  mkdir -p "$STATE/cmds" "$STATE/logs" "$STATE/pids"
  printf '%q ' "$@" >"$STATE/cmds/$name"
  "$@" >>"$STATE/logs/$name.log" 2>&1 &
  echo $! >"$STATE/pids/$name"
}

# Stops one component by its PID (SIGTERM, then SIGKILL after $2 tenths of a
# second, default 100) and forgets the PID.
stop_pid() {
  local name=$1 tries=${2:-100} pid
  [[ -f $STATE/pids/$name ]] || return 0
  pid=$(<"$STATE/pids/$name")
  if kill "$pid" 2>/dev/null; then
    for _ in $(seq "$tries"); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$STATE/pids/$name"
}

# Signs a key pair NAME under STATE/pki with the cluster's CA: a client
# certificate for SUBJECT, or a serving one when SANS is given.
sign() { # name subject [sans]
  local d=$STATE/pki
  openssl req -newkey rsa:2048 -nodes -subj "$2" -keyout "$d/$1.key" -out "$d/$1.csr" 2>/dev/null
  local ext=$d/$1.ext
  if [[ -n ${3:-} ]]; then printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\n' "$3" >"$ext"
  else printf 'extendedKeyUsage=clientAuth\n' >"$ext"; fi
  openssl x509 -req -in "$d/$1.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
    -days 2 -extfile "$ext" -out "$d/$1.crt" 2>/dev/null
}

# A kubeconfig FILE for the API server at SERVER that authenticates with the
# client certificate NAME under STATE/pki. Names are quoted: YAML reads some
# bare words (n, y, on, off) as booleans.
kubeconfig() { # file name server
  local d=$STATE/pki
  cat >"$1" <<KC
apiVersion: v1
kind: Config
clusters:
- name: "local"
  cluster:
    server: "$3"
    certificate-authority: "$d/ca.crt"
users:
- name: "$2"
  user:
    client-certificate: "$d/$2.crt"
    client-key: "$d/$2.key"
contexts:
- name: "local"
  context: {cluster: "local", user: "$2", namespace: "default"}
current-context: "local"
KC
}
