#!/usr/bin/env bash
# Measures the operator against the local control plane and STS: time from
# `kubectl apply` of N AssumedRoles until all are Ready, STS calls, peak
# memory, and the same after a restart (which must make no STS call).
# Prints a Markdown table. N defaults to 200: BENCH_N=1000 make bench.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
N="${BENCH_N:-200}"
STATE="$(mktemp -d "${TMPDIR:-/tmp}/aro-bench.XXXXXX")"
PID=""
cleanup() {
  [[ -n $PID ]] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
  hack/cluster.sh down "$STATE" || true
  rm -rf "$STATE"
}
trap cleanup EXIT

cargo build --release --locked --quiet
BIN="${CARGO_TARGET_DIR:-target}/release/assumed-role-operator"
hack/cluster.sh up "$STATE" 2>/dev/null
# shellcheck disable=SC1091
source "$STATE/env"
kubectl apply -f crds/ >/dev/null
kubectl wait --for condition=established --timeout=60s crd/assumedroles.sts.refresh.dev crd/assumedrolepolicies.sts.refresh.dev >/dev/null
kubectl create namespace bench >/dev/null
kubectl apply -f - >/dev/null <<'POLICY'
apiVersion: sts.refresh.dev/v1alpha1
kind: AssumedRolePolicy
metadata: {name: bench}
spec: {namespaces: {names: [bench]}, roleArns: ["arn:aws:iam::123456789012:role/role-*"]}
POLICY

now_ms() { date +%s%3N; }
start_operator() {
  "$BIN" run --namespace bench --watch-namespaces bench --admin-address 127.0.0.1:0 --log-format text \
    --log-level info,assumed_role_operator=debug \
    >"$STATE/operator.log" 2>&1 &
  PID=$!
  for _ in $(seq 100); do
    ADMIN=$(sed -n 's/.*admin server listening address=\([0-9.:]*\).*/\1/p' "$STATE/operator.log")
    [[ -n $ADMIN ]] && return
    sleep 0.1
  done
  echo "operator did not start" >&2; exit 1
}
sts_calls() { curl -s "http://$ADMIN/metrics" | awk '/^assumed_role_operator_sts_assume_role_calls_total/ {s += $NF} END {print s + 0}'; }
peak_rss_mib() { awk '/VmHWM/ {printf "%.1f", $2 / 1024}' "/proc/$PID/status"; }
ready_count() {
  kubectl get assumedroles -n bench -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' \
    | grep -c '^True$' || true
}
# Waits (at most 10 minutes) until $1 of the AssumedRoles are Ready.
wait_ready() {
  local deadline=$((SECONDS + 600))
  until (($(ready_count) >= $1)); do
    ((SECONDS < deadline)) || { echo "timed out waiting for $1 Ready" >&2; exit 1; }
    sleep 0.5
  done
}

start_operator
idle=$(peak_rss_mib)
for i in $(seq "$N"); do
  printf -- '---\napiVersion: sts.refresh.dev/v1alpha1\nkind: AssumedRole\nmetadata: {name: role-%d, namespace: bench}\nspec: {roleArn: "arn:aws:iam::123456789012:role/role-%d"}\n' "$i" "$i"
done >"$STATE/roles.yaml"
t0=$(now_ms)
kubectl apply -f "$STATE/roles.yaml" >/dev/null
wait_ready "$N"
t1=$(now_ms)
calls=$(sts_calls)
peak=$(peak_rss_mib)

kill "$PID"; wait "$PID" 2>/dev/null || true
t2=$(now_ms)
start_operator
deadline=$((SECONDS + 600))
judged() { grep 'no STS call' "$STATE/operator.log" | grep -o 'name=[^ ]*' | sort -u | wc -l; }
until (($(judged) >= N)); do
  ((SECONDS < deadline)) || { echo "restart did not decide on all" >&2; exit 1; }
  sleep 0.2
done
t3=$(now_ms)
restart_calls=$(sts_calls)
restart_peak=$(peak_rss_mib)

cat <<TABLE
| measure ($N AssumedRoles, release build, 2 cores) | value |
|---|---|
| apply until all Ready | $((t1 - t0)) ms ($(((t1 - t0) * 1000 / N / 1000)) ms each) |
| STS calls to get there | $calls |
| operator peak RSS, idle / after $N | $idle MiB / $peak MiB |
| restart until every Secret judged valid | $((t3 - t2)) ms |
| STS calls after the restart | $restart_calls |
| operator peak RSS after the restart | $restart_peak MiB |
TABLE
