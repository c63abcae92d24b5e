#!/usr/bin/env bash
# Starts the local control plane and STS, runs the operator, applies
# examples/assumedrole.yaml, and shows the Secret being refreshed. Stops
# everything on exit (Ctrl-C, or after three rotations).
#
# Honours CARGO_TARGET_DIR (where the operator is built), ROTATIONS (how many
# refreshes to show, default 3) and ARO_DEMO_STATE (where the control plane
# keeps its state, default .cluster/). Fails at once, with the operator's last
# log lines, if the operator stops.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
STATE="${ARO_DEMO_STATE:-$ROOT/.cluster}"
ROTATIONS="${ROTATIONS:-3}"
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/assumed-role-operator"

die() { echo "demo: error: $*" >&2; exit 1; }

OPERATOR_PID=""
cleanup() {
  local rc=$?
  if [[ -n $OPERATOR_PID ]] && kill "$OPERATOR_PID" 2>/dev/null; then
    wait "$OPERATOR_PID" 2>/dev/null || true
  fi
  hack/cluster.sh down "$STATE"
  exit "$rc"
}
trap cleanup EXIT

# Fails the demo if the operator is no longer running, showing why.
operator_alive() {
  kill -0 "$OPERATOR_PID" 2>/dev/null && return 0
  local rc=0
  wait "$OPERATOR_PID" || rc=$?
  OPERATOR_PID=""
  echo "demo: the operator exited (status $rc); its last log lines:" >&2
  # Its own words, without a backtrace that RUST_BACKTRACE may add.
  sed '/[Bb]acktrace:$/,$d' "$STATE/logs/operator.log" | tail -n 20 >&2 || true
  die "the operator stopped; fix what its log says and run the demo again"
}

echo "demo: building the operator (cargo build)"
cargo build --locked --quiet
[[ -x $BIN ]] || die "no operator binary at $BIN after the build (is CARGO_TARGET_DIR right?)"
hack/cluster.sh up "$STATE"
# shellcheck disable=SC1091
source "$STATE/env"
kubectl apply -f crds/
kubectl wait --for condition=established --timeout=60s crd/assumedroles.sts.refresh.dev crd/assumedrolepolicies.sts.refresh.dev crd/clusterassumedroles.sts.refresh.dev >/dev/null
kubectl create namespace assumed-role-operator --dry-run=client -o yaml | kubectl apply -f - >/dev/null

"$BIN" run --namespace assumed-role-operator --admin-address 127.0.0.1:0 >"$STATE/logs/operator.log" 2>&1 &
OPERATOR_PID=$!
# Up once its admin server listens; a process that dies first fails the demo.
for _ in $(seq 100); do
  operator_alive
  grep -q "admin server listening" "$STATE/logs/operator.log" && break
  sleep 0.1
done
grep -q "admin server listening" "$STATE/logs/operator.log" || die "the operator did not start within 10 s; see $STATE/logs/operator.log"
echo "operator running (PID $OPERATOR_PID), logs in $STATE/logs/operator.log"

kubectl apply -f examples/assumedrolepolicy.yaml
kubectl apply -f examples/assumedrole.yaml
secret=$(kubectl get -f examples/assumedrole.yaml -o jsonpath='{.spec.secret.name}')
ns=$(kubectl get -f examples/assumedrole.yaml -o jsonpath='{.metadata.namespace}')

last=""
seen=0
deadline=$((SECONDS + 120 * ROTATIONS))
while ((seen <= ROTATIONS)); do
  operator_alive
  ((SECONDS < deadline)) || die "saw $seen of $((ROTATIONS + 1)) sets of credentials before the deadline; see $STATE/logs/operator.log"
  exp=$(kubectl -n "$ns" get secret "$secret" -o jsonpath='{.data.expiration}' 2>/dev/null | base64 -d || true)
  if [[ -n $exp && $exp != "$last" ]]; then
    # A fingerprint of the access key, so each rotation shows without printing it.
    fp=$(kubectl -n "$ns" get secret "$secret" -o jsonpath='{.data.AWS_ACCESS_KEY_ID}' | sha256sum | cut -c1-8)
    echo
    echo "== $(date +%H:%M:%S) Secret $ns/$secret holds new credentials (key fingerprint $fp), valid until $exp"
    kubectl -n "$ns" get assumedroles
    last=$exp
    seen=$((seen + 1))
  fi
  sleep 1
done
echo
kubectl -n "$ns" get events --field-selector involvedObject.kind=AssumedRole
