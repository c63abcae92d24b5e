#!/usr/bin/env bash
# Measures the operator (release build) against the local control plane and
# STS, watching the whole cluster as the chart's default does:
#   1. BENCH_N AssumedRoles (default 200) over BENCH_NAMESPACES namespaces
#      (default 4), created as fast as the API server takes them, among
#      BENCH_OTHER_SECRETS unrelated Secrets of a real cluster's sizes
#      (default 0; Helm releases, TLS and application Secrets): time until
#      every one is Ready, STS calls, and the API server's own request counts
#      (apiserver_request_total, not the operator's metrics);
#   2. BENCH_STEADY seconds (default 30) of steady state: CPU and memory;
#   3. a restart: time until every AssumedRole is judged, STS calls (goal 0)
#      and the requests it caused.
# The operator runs with the chart's client limits unless BENCH_STS_RATE
# (STS calls per second, default 10), BENCH_STS_BURST (20), BENCH_API_QPS
# (50) and BENCH_API_BURST (100) say otherwise: at the defaults the STS
# budget alone makes N AssumedRoles take N/10 seconds.
# Prints a Markdown table, and writes it as JSON to target/bench/.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
N="${BENCH_N:-200}"
NAMESPACES="${BENCH_NAMESPACES:-4}"
OTHERS="${BENCH_OTHER_SECRETS:-0}"
STEADY="${BENCH_STEADY:-30}"
LIMITS=(--sts-rate "${BENCH_STS_RATE:-10}" --sts-burst "${BENCH_STS_BURST:-20}"
  --api-qps "${BENCH_API_QPS:-50}" --api-burst "${BENCH_API_BURST:-100}")
STATE="$(mktemp -d "${TMPDIR:-/tmp}/aro-bench.XXXXXX")"
PID=""
WATCH=""
cleanup() {
  [[ -n $WATCH ]] && kill "$WATCH" 2>/dev/null
  [[ -n $PID ]] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
  hack/cluster.sh down "$STATE" || true
  rm -rf "$STATE"
}
trap cleanup EXIT
log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
py() { python3 "$ROOT/hack/bench.py" "$@"; }
now_ms() { date +%s%3N; }

cargo build --release --locked --quiet
BIN="${CARGO_TARGET_DIR:-target}/release/assumed-role-operator"
hack/cluster.sh up "$STATE" 2>/dev/null
# shellcheck disable=SC1091
source "$STATE/env"
kubectl apply -f crds/ >/dev/null
kubectl wait --for condition=established --timeout=60s crd/assumedroles.sts.refresh.dev crd/assumedrolepolicies.sts.refresh.dev >/dev/null
names=()
for i in $(seq 0 $((NAMESPACES - 1))); do names+=("bench-$i"); done
# The unrelated Secrets also live in namespaces without AssumedRoles.
apps=(apps-0 apps-1 apps-2 apps-3)
for ns in "${names[@]}" "${apps[@]}"; do echo "{\"apiVersion\":\"v1\",\"kind\":\"Namespace\",\"metadata\":{\"name\":\"$ns\"}}"; done \
  | kubectl apply -f - >/dev/null
list=$(printf '"%s",' "${names[@]}")
kubectl apply -f - >/dev/null <<POLICY
apiVersion: sts.refresh.dev/v1alpha1
kind: AssumedRolePolicy
metadata: {name: bench}
spec: {namespaces: {names: [${list%,}]}, roleArns: ["arn:aws:iam::123456789012:role/role-*"]}
POLICY

# Creates the objects of a file of one-line documents in four kubectl
# processes at once.
create() {
  local file=$1 part pids=()
  split -n l/4 "$file" "$file.part-"
  for part in "$file".part-*; do kubectl create -f "$part" >/dev/null & pids+=($!); done
  for pid in "${pids[@]}"; do wait "$pid" || { log "kubectl create -f $file failed"; exit 1; }; done
}
if ((OTHERS > 0)); then
  started=$SECONDS
  openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=bench.example \
    -keyout "$STATE/tls.key" -out "$STATE/tls.crt" 2>/dev/null
  BENCH_TLS_DIR=$STATE py others "$OTHERS" "${names[@]}" "${apps[@]}" >"$STATE/others.yaml"
  create "$STATE/others.yaml"
  log "created $OTHERS unrelated Secrets ($(du -h "$STATE/others.yaml" | cut -f1) of YAML) in $((SECONDS - started)) s"
fi

start_operator() {
  "$BIN" run --namespace bench-0 --admin-address 127.0.0.1:0 --log-format text "${LIMITS[@]}" \
    --log-level info,assumed_role_operator=debug >"$STATE/operator.log" 2>&1 &
  PID=$!
  local deadline=$((SECONDS + 300))
  until grep -q 'watches synced' "$STATE/operator.log"; do
    ((SECONDS < deadline)) || { log "the operator did not sync"; tail "$STATE/operator.log" >&2; exit 1; }
    kill -0 "$PID" || { log "the operator exited"; tail "$STATE/operator.log" >&2; exit 1; }
    sleep 0.1
  done
  ADMIN=$(sed -n 's/.*admin server listening address=\([0-9.:]*\).*/\1/p' "$STATE/operator.log")
}
sts_calls() { curl -s "http://$ADMIN/metrics" | awk '/^assumed_role_operator_sts_assume_role_calls_total/ {s += $NF} END {print s + 0}'; }
requests() { kubectl get --raw /metrics | py requests >"$STATE/$1.json"; }

for i in $(seq "$N"); do
  printf -- '---\n{"apiVersion": "sts.refresh.dev/v1alpha1", "kind": "AssumedRole", "metadata": {"name": "role-%d", "namespace": "%s"}, "spec": {"roleArn": "arn:aws:iam::123456789012:role/role-%d"}}\n' \
    "$i" "${names[$((i % NAMESPACES))]}" "$i"
done >"$STATE/roles.yaml"

t=$(now_ms)
start_operator
sync_ms=$(($(now_ms) - t))
py proc "$PID" >"$STATE/idle.proc"
requests before
# A watch of every AssumedRole's Ready condition, from a kubectl of its own.
mkfifo "$STATE/ready.fifo"
kubectl get assumedroles -A --watch -o jsonpath='{.metadata.namespace}/{.metadata.name} {.status.conditions[?(@.type=="Ready")].status}{"\n"}' \
  >"$STATE/ready.fifo" &
WATCH=$!
py ready "$N" <"$STATE/ready.fifo" &
waiter=$!
t0=$(now_ms)
create "$STATE/roles.yaml"
created_ms=$(($(now_ms) - t0))
wait "$waiter"
t1=$(now_ms)
kill "$WATCH" 2>/dev/null || true; WATCH=""
py proc "$PID" >"$STATE/ready.proc"
calls=$(sts_calls)
requests ready
log "$N Ready in $((t1 - t0)) ms; steady state for $STEADY s"
sleep "$STEADY"
py proc "$PID" >"$STATE/steady.proc"
requests steady

kill "$PID"; wait "$PID" 2>/dev/null || true
t2=$(now_ms)
start_operator
deadline=$((SECONDS + 600))
judged() { grep 'no STS call' "$STATE/operator.log" | grep -o 'name=[^ ]*' | sort -u | wc -l; }
until (($(judged) >= N)); do
  ((SECONDS < deadline)) || { log "the restart did not judge every AssumedRole"; exit 1; }
  sleep 0.2
done
t3=$(now_ms)
py proc "$PID" >"$STATE/restart.proc"
restart_calls=$(sts_calls)
requests restart

mkdir -p target/bench
python3 - "$STATE" "$N" "$NAMESPACES" "$OTHERS" "$STEADY" "$((t1 - t0))" "$created_ms" "$calls" "$((t3 - t2))" "$restart_calls" "$sync_ms" "${LIMITS[@]}" \
  >"target/bench/bench-$N-$OTHERS.json" <<'PY'
import json, subprocess, sys
state, n, nss, others, steady, ready_ms, created_ms, calls, restart_ms, restart_calls, sync_ms = sys.argv[1:12]
n = int(n)
load = lambda f: json.load(open(f"{state}/{f}"))
delta = lambda a, b: {k: v - load(a).get(k, 0) for k, v in load(b).items() if v - load(a).get(k, 0)}
burst, steady_req, restart = delta("before.json", "ready.json"), delta("ready.json", "steady.json"), delta("steady.json", "restart.json")
def per(d, *keys):
    return round(sum(d.get(k, 0) for k in keys) / n, 3)
idle, ready, stead, rest = (load(f"{p}.proc") for p in ("idle", "ready", "steady", "restart"))
out = {
    "n": n, "namespaces": int(nss), "other_secrets": int(others), "steady_seconds": int(steady),
    "created_ms": int(created_ms), "ready_ms": int(ready_ms), "sts_calls": int(calls),
    "secret_writes_per_object": per(burst, "PATCH secrets", "APPLY secrets", "CREATE secrets", "UPDATE secrets"),
    "status_patches_per_object": per(burst, "PATCH assumedroles/status", "APPLY assumedroles/status", "UPDATE assumedroles/status"),
    "secret_gets_per_object": per(burst, "GET secrets"),
    "rss_idle_mib": idle["rss_mib"], "rss_ready_mib": ready["rss_mib"], "rss_steady_mib": stead["rss_mib"],
    "peak_mib": ready["peak_mib"], "cpu_burst_s": round(ready["cpu_s"] - idle["cpu_s"], 2),
    "cpu_steady_s": round(stead["cpu_s"] - ready["cpu_s"], 2),
    "limits": " ".join(sys.argv[12:]),
    "sync_ms": int(sync_ms), "restart_ms": int(restart_ms), "restart_sts_calls": int(restart_calls),
    "restart_peak_mib": rest["peak_mib"], "restart_requests": restart, "burst_requests": burst,
}
json.dump(out, sys.stdout, indent=1, sort_keys=True)
PY
python3 - "target/bench/bench-$N-$OTHERS.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
lists = {k: v for k, v in r["restart_requests"].items() if k.startswith(("LIST", "WATCH", "GET"))}
print(f"""| measure ({r['n']} AssumedRoles in {r['namespaces']} namespaces, {r['other_secrets']} other Secrets; {r['limits']}; release build, 2 cores) | value |
|---|---|
| created by kubectl (4 at once) | {r['created_ms']} ms |
| created until all Ready | {r['ready_ms']} ms ({r['ready_ms'] / r['n']:.2f} ms each) |
| STS calls | {r['sts_calls']} |
| Secret writes / status patches / Secret GETs per AssumedRole (API server's count) | {r['secret_writes_per_object']} / {r['status_patches_per_object']} / {r['secret_gets_per_object']} |
| RSS: idle, all Ready, after {r['steady_seconds']} s steady; peak | {r['rss_idle_mib']} / {r['rss_ready_mib']} / {r['rss_steady_mib']} MiB; {r['peak_mib']} MiB |
| CPU: the burst, {r['steady_seconds']} s steady | {r['cpu_burst_s']} s, {r['cpu_steady_s']} s |
| start until the watches synced | {r['sync_ms']} ms |
| restart until every AssumedRole judged | {r['restart_ms']} ms |
| STS calls after the restart; its peak RSS | {r['restart_sts_calls']}; {r['restart_peak_mib']} MiB |
| reads of the restart (API server's count) | {json.dumps(lists)} |""")
PY
log "JSON: target/bench/bench-$N-$OTHERS.json"
