#!/usr/bin/env bash
# Measures the operator (release build) against the local control plane and
# STS, watching the whole cluster as the chart's default does, among
# BENCH_OTHER_SECRETS unrelated Secrets of a real cluster's sizes (default 0;
# Helm releases, TLS and application Secrets):
#   0. the floor: `benches/floor.rs`, a plain loop with the operator's
#      concurrency and limits that makes only the calls of one mint (one
#      AssumeRole, one Secret apply, one status patch) for BENCH_N
#      AssumedRoles of namespaces of its own, deleted afterwards;
#   1. BENCH_N AssumedRoles (default 200) over BENCH_NAMESPACES namespaces
#      (default 4), created as fast as the API server takes them: time until
#      every one is Ready, and that time divided by the floor's; STS calls,
#      and the API server's own request counts (apiserver_request_total, not
#      the operator's metrics);
#   2. a restart: time until every AssumedRole is judged, STS calls (goal 0)
#      and the requests it caused;
#   3. a refresh wave: the credentials minted in 1 all expire at the same
#      moment (the STS stand-in in front of moto answers so), so that all
#      fall due within the same minute: time to refresh all, how many were
#      refreshed later than the floor (5 minutes before expiry), how many
#      expired; the wave must begin after the burst and the restart end
#      (BENCH_WAVE_LEAD), or the bench fails saying so;
#   4. BENCH_STEADY seconds (default 300) of steady state: CPU and memory.
# The operator runs with the chart's client limits unless BENCH_STS_RATE
# (STS calls per second, default 10), BENCH_STS_BURST (20), BENCH_API_QPS
# (50) and BENCH_API_BURST (100) say otherwise: at the defaults the STS
# budget alone makes N AssumedRoles take N/10 seconds.
# Prints a Markdown table, and writes it as JSON to target/bench/;
# BENCH_LOGS=DIR keeps the operator's logs there.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
N="${BENCH_N:-200}"
NAMESPACES="${BENCH_NAMESPACES:-4}"
OTHERS="${BENCH_OTHER_SECRETS:-0}"
STEADY="${BENCH_STEADY:-300}"
LIMITS=(--sts-rate "${BENCH_STS_RATE:-10}" --sts-burst "${BENCH_STS_BURST:-20}"
  --api-qps "${BENCH_API_QPS:-50}" --api-burst "${BENCH_API_BURST:-100}")
STATE="$(mktemp -d "${TMPDIR:-/tmp}/aro-bench.XXXXXX")"
PID=""
WATCH=""
STANDIN=""
# Every step may fail without stopping the others (errexit would end the
# trap at the first, leaving the control plane running).
cleanup() {
  local pid
  for pid in $WATCH $PID $STANDIN; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [[ -n ${BENCH_LOGS:-} ]]; then
    mkdir -p "$BENCH_LOGS" && cp "$STATE"/operator*.log "$BENCH_LOGS"/ || true
  fi
  hack/cluster.sh down "$STATE" || true
  rm -rf "$STATE"
}
trap cleanup EXIT
log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
py() { python3 "$ROOT/hack/bench.py" "$@"; }
now_ms() { date +%s%3N; }

cargo build --release --locked --quiet
hack/cluster.sh up "$STATE" 2>/dev/null
# A copy: building the floor builds the binary again, with the features the
# test dependencies turn on, over the release build.
BIN="$STATE/assumed-role-operator"
cp "${CARGO_TARGET_DIR:-target}/release/assumed-role-operator" "$BIN"
cargo bench --locked --quiet --bench floor --no-run 2>/dev/null
# shellcheck disable=SC1091
source "$STATE/env"
# The STS stand-in in front of moto: credentials of an hour, unless told to
# make them all expire at one moment (the wave). The floor and the operator
# both call STS through it.
python3 tests/sdk/sts_standin.py "$AWS_ENDPOINT_URL" 3600 0 >"$STATE/standin.port" 2>"$STATE/standin.log" &
STANDIN=$!
for _ in $(seq 100); do [[ -s $STATE/standin.port ]] && break; sleep 0.1; done
[[ -s $STATE/standin.port ]] || { log "the STS stand-in did not start"; cat "$STATE/standin.log" >&2; exit 1; }
AWS_ENDPOINT_URL="http://127.0.0.1:$(head -1 "$STATE/standin.port")"
export AWS_ENDPOINT_URL
standin() { curl -sf "$AWS_ENDPOINT_URL/_standin/$1"; }
kubectl apply -f crds/ >/dev/null
kubectl wait --for condition=established --timeout=60s crd/assumedroles.sts.refresh.dev crd/assumedrolepolicies.sts.refresh.dev crd/clusterassumedroles.sts.refresh.dev >/dev/null
names=()
floors=()
for i in $(seq 0 $((NAMESPACES - 1))); do names+=("bench-$i") floors+=("floor-$i"); done
# The unrelated Secrets also live in namespaces without AssumedRoles.
apps=(apps-0 apps-1 apps-2 apps-3)
for ns in "${names[@]}" "${apps[@]}" "${floors[@]}"; do echo "{\"apiVersion\":\"v1\",\"kind\":\"Namespace\",\"metadata\":{\"name\":\"$ns\"}}"; done \
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

roles() {
  local i
  for i in $(seq "$N"); do
    printf -- '---\n{"apiVersion": "sts.refresh.dev/v1alpha1", "kind": "AssumedRole", "metadata": {"name": "role-%d", "namespace": "%s-%d"}, "spec": {"roleArn": "arn:aws:iam::123456789012:role/role-%d"}}\n' \
      "$i" "$1" "$((i % NAMESPACES))" "$i"
  done
}
roles bench >"$STATE/roles.yaml"
roles floor >"$STATE/floor.yaml"

# 0. The floor, before the operator runs, on AssumedRoles of its own.
create "$STATE/floor.yaml"
floor=$(cargo bench --locked --quiet --bench floor -- "${floors[@]}" "${LIMITS[@]}")
log "floor: $floor"
kubectl delete namespace "${floors[@]}" --wait --timeout=600s >/dev/null

# 1. The burst.
t=$(now_ms)
start_operator
sync_ms=$(($(now_ms) - t))
py proc "$PID" >"$STATE/idle.proc"
requests before
# The credentials of the burst all expire at EXPIRES, late enough that the
# burst and the restart are over when they fall due: the wave of step 3.
# The stand-in never grants less than 7 minutes, so the last mint of the
# burst must come BENCH_WAVE_LEAD seconds at most after its start: by default
# time for 50 mints a second (or the STS rate, if lower), more than twice
# over. The wave then begins 2 minutes (less the jitter) after that.
lead=${BENCH_WAVE_LEAD:-$(python3 -c "print(int(2.5 * $N / min(${BENCH_STS_RATE:-10}, 50)))")}
EXPIRES=$(($(date +%s) + 420 + lead))
standin "expire_at?at=$EXPIRES" >/dev/null
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
standin "expire_at?at=0" >/dev/null
kill "$WATCH" 2>/dev/null || true; WATCH=""
py proc "$PID" >"$STATE/ready.proc"
calls=$(sts_calls)
requests ready
log "$N Ready in $((t1 - t0)) ms; restarting"

# 2. The restart.
kill "$PID"; wait "$PID" 2>/dev/null || true
mv "$STATE/operator.log" "$STATE/operator-first.log"
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

# 3. The wave: every AssumedRole refreshed once more.
log "waiting for the refresh wave (credentials expire at $(date -u -d "@$EXPIRES" +%H:%M:%S))"
deadline=$((EXPIRES + 600))
until (($(sts_calls) - restart_calls >= N)); do
  (($(date +%s) < deadline)) || { log "the wave did not refresh every AssumedRole"; exit 1; }
  sleep 1
done
standin report | py wave "$EXPIRES" "$(python3 -c "print($t1 / 1000)")" >"$STATE/wave-sts.json"
# The burst and the restart made no call of the wave: it began after both.
python3 - "$STATE/wave-sts.json" "$t3" "$calls" "$N" <<'PY' ||
import json, sys
wave, restart_end, burst_calls, n = json.load(open(sys.argv[1])), int(sys.argv[2]) / 1000, int(sys.argv[3]), int(sys.argv[4])
sys.exit(0 if wave["first"] and wave["first"] > restart_end and burst_calls <= n else 1)
PY
  { log "the refresh wave began before the burst and the restart were over: raise BENCH_WAVE_LEAD (it was $lead s)"; exit 1; }
py proc "$PID" >"$STATE/wave.proc"
requests wave
log "wave: $(cat "$STATE/wave-sts.json"); steady state for $STEADY s"

# 4. Steady state.
sleep "$STEADY"
py proc "$PID" >"$STATE/steady.proc"
requests steady

mkdir -p target/bench
python3 - "$STATE" "$N" "$NAMESPACES" "$OTHERS" "$STEADY" "$((t1 - t0))" "$created_ms" "$calls" "$((t3 - t2))" "$restart_calls" "$sync_ms" "$floor" "${LIMITS[@]}" \
  >"target/bench/bench-$N-$OTHERS.json" <<'PY'
import json, sys
state, n, nss, others, steady, ready_ms, created_ms, calls, restart_ms, restart_calls, sync_ms, floor = sys.argv[1:13]
n, floor = int(n), json.loads(floor)
load = lambda f: json.load(open(f"{state}/{f}"))
delta = lambda a, b: {k: v - load(a).get(k, 0) for k, v in load(b).items() if v - load(a).get(k, 0)}
burst, restart = delta("before.json", "ready.json"), delta("ready.json", "restart.json")
wave_req, steady_req = delta("restart.json", "wave.json"), delta("wave.json", "steady.json")
def per(d, *keys):
    return round(sum(d.get(k, 0) for k in keys) / n, 3)
WRITES = ("PATCH secrets", "APPLY secrets", "CREATE secrets", "UPDATE secrets")
STATUS = ("PATCH assumedroles/status", "APPLY assumedroles/status", "UPDATE assumedroles/status")
idle, ready, rest, wave, stead = (load(f"{p}.proc") for p in ("idle", "ready", "restart", "wave", "steady"))
out = {
    "n": n, "namespaces": int(nss), "other_secrets": int(others), "steady_seconds": int(steady),
    "limits": " ".join(sys.argv[13:]),
    "floor_ms": floor["ms"], "floor_failed": floor["failed"],
    "created_ms": int(created_ms), "ready_ms": int(ready_ms),
    "ratio_to_floor": round(int(ready_ms) / max(floor["ms"], 1), 2), "sts_calls": int(calls),
    "secret_writes_per_object": per(burst, *WRITES), "status_patches_per_object": per(burst, *STATUS),
    "secret_gets_per_object": per(burst, "GET secrets"),
    "rss_idle_mib": idle["rss_mib"], "rss_ready_mib": ready["rss_mib"], "peak_mib": ready["peak_mib"],
    "cpu_burst_s": round(ready["cpu_s"] - idle["cpu_s"], 2),
    "sync_ms": int(sync_ms), "restart_ms": int(restart_ms), "restart_sts_calls": int(restart_calls),
    "restart_peak_mib": rest["peak_mib"], "restart_requests": restart,
    "wave": load("wave-sts.json"), "wave_secret_writes_per_object": per(wave_req, *WRITES),
    "wave_status_patches_per_object": per(wave_req, *STATUS), "wave_secret_gets_per_object": per(wave_req, "GET secrets"),
    "rss_steady_mib": stead["rss_mib"], "peak_after_restart_mib": stead["peak_mib"],
    "cpu_steady_s": round(stead["cpu_s"] - wave["cpu_s"], 2), "steady_requests": steady_req,
    "burst_requests": burst,
}
json.dump(out, sys.stdout, indent=1, sort_keys=True)
PY
python3 - "target/bench/bench-$N-$OTHERS.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
w = r["wave"]
reads = {k: v for k, v in r["restart_requests"].items() if k.startswith(("LIST", "WATCH", "GET"))}
print(f"""| measure ({r['n']} AssumedRoles in {r['namespaces']} namespaces, {r['other_secrets']} other Secrets; {r['limits']}; release build, 2 cores) | value |
|---|---|
| floor: the calls of {r['n']} mints in a plain loop | {r['floor_ms']} ms ({r['floor_failed']} failed) |
| created by kubectl (4 at once) | {r['created_ms']} ms |
| created until all Ready; divided by the floor | {r['ready_ms']} ms ({r['ready_ms'] / r['n']:.2f} ms each); {r['ratio_to_floor']} |
| STS calls | {r['sts_calls']} |
| Secret writes / status patches / Secret GETs per AssumedRole (API server's count) | {r['secret_writes_per_object']} / {r['status_patches_per_object']} / {r['secret_gets_per_object']} |
| RSS: idle, all Ready; peak | {r['rss_idle_mib']} / {r['rss_ready_mib']} MiB; {r['peak_mib']} MiB |
| CPU of the burst | {r['cpu_burst_s']} s |
| start until the watches synced | {r['sync_ms']} ms |
| restart until every AssumedRole judged | {r['restart_ms']} ms |
| STS calls after the restart; its peak RSS | {r['restart_sts_calls']}; {r['restart_peak_mib']} MiB |
| reads of the restart (API server's count) | {json.dumps(reads)} |
| refresh wave: all due within {w['first_before_floor_s']} s of their floor; refreshed in | {w['ms']} ms ({w['calls']} STS calls) |
| wave: refreshed after the floor (latest by); expired | {w['passed_floor']} ({w['late_s']} s); {w['expired']} |
| wave: Secret writes / status patches / Secret GETs per AssumedRole | {r['wave_secret_writes_per_object']} / {r['wave_status_patches_per_object']} / {r['wave_secret_gets_per_object']} |
| RSS after {r['steady_seconds']} s steady; peak since the restart | {r['rss_steady_mib']} MiB; {r['peak_after_restart_mib']} MiB |
| CPU of {r['steady_seconds']} s steady | {r['cpu_steady_s']} s |""")
PY
log "JSON: target/bench/bench-$N-$OTHERS.json"
