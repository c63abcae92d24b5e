#!/usr/bin/env bash
# Starts the local control plane and STS, runs the operator, applies
# examples/assumedrole.yaml, and shows the Secret being refreshed. Stops
# everything on exit (Ctrl-C, or after three rotations).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
STATE="$ROOT/.cluster"
ROTATIONS="${ROTATIONS:-3}"

OPERATOR_PID=""
cleanup() {
  [[ -n $OPERATOR_PID ]] && kill "$OPERATOR_PID" 2>/dev/null && wait "$OPERATOR_PID" 2>/dev/null
  hack/cluster.sh down "$STATE"
}
trap cleanup EXIT

cargo build --locked --quiet
hack/cluster.sh up "$STATE"
# shellcheck disable=SC1091
source "$STATE/env"
kubectl apply -f crds/
kubectl wait --for condition=established --timeout=60s crd/assumedroles.sts.refresh.dev >/dev/null
kubectl create namespace assumed-role-operator --dry-run=client -o yaml | kubectl apply -f - >/dev/null

target/debug/assumed-role-operator run --namespace assumed-role-operator >"$STATE/logs/operator.log" 2>&1 &
OPERATOR_PID=$!
echo "operator running (PID $OPERATOR_PID), logs in $STATE/logs/operator.log"

kubectl apply -f examples/assumedrole.yaml
secret=$(kubectl get -f examples/assumedrole.yaml -o jsonpath='{.spec.secret.name}')
ns=$(kubectl get -f examples/assumedrole.yaml -o jsonpath='{.metadata.namespace}')

last=""
seen=0
deadline=$((SECONDS + 120 * ROTATIONS))
while ((seen <= ROTATIONS && SECONDS < deadline)); do
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
