#!/usr/bin/env bash
# Runs the end-to-end tests against a fresh local control plane and STS, and
# stops everything by PID when done, whether the tests pass or fail.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

STATE="$(mktemp -d "${TMPDIR:-/tmp}/aro-e2e.XXXXXX")"
MATRIX_PID=""
cleanup() {
  local rc=$?
  if [[ -n $MATRIX_PID ]] && kill -0 "$MATRIX_PID" 2>/dev/null; then
    pkill -TERM -P "$MATRIX_PID" || true
    kill "$MATRIX_PID" 2>/dev/null || true
  fi
  if ((rc != 0)) && [[ -d $STATE/logs ]]; then
    for log in "$STATE"/logs/*.log; do
      echo "--- last lines of $(basename "$log")" >&2
      tail -n 15 "$log" >&2 || true
    done
  fi
  hack/engine.sh stop "$STATE" || true
  hack/cluster.sh down "$STATE" || true
  rm -rf "$STATE"
  exit "$rc"
}
trap cleanup EXIT

hack/sdks.sh build
eval "$(hack/sdks.sh env)"
hack/cluster.sh up "$STATE"
# shellcheck disable=SC1091
source "$STATE/env"
# Docker's engine on a socket of its own, and the operator's image.
hack/engine.sh start "$STATE"
# shellcheck disable=SC1091
source "$STATE/engine.env"
eval "$(hack/image.sh)"
# First the operator on a control plane without the CRD; the test installs it.
cargo test --locked --test startup -- --ignored "$@"
kubectl apply -f crds/ >/dev/null
kubectl wait --for condition=established --timeout=60s crd/assumedroles.sts.refresh.dev crd/assumedrolepolicies.sts.refresh.dev >/dev/null
# The tests each run their own operator in a namespace of their own, so they
# can run side by side.
MATRIX=sdk::six_sdks_started_once_keep_working_across_rotations_through_both_routes
cargo test --locked --test e2e -- --ignored --skip "$MATRIX" --test-threads "${E2E_THREADS:-4}" "$@"
# The chart tests run operators that watch the whole cluster: one at a time.
cargo test --locked --test chart -- --ignored --test-threads 1 "$@"
# The SDK matrix runs for four minutes, mostly waiting; no operator that
# watches the whole cluster may run beside it. It runs while the demo, the
# outages and a shortened fault matrix (the SIGKILL windows and the network
# cuts; `make faults` runs all) run on control planes of their own.
cargo test --locked --test e2e --test demo --test outage --test faults --no-run
# The demo builds the operator as a user does, without the dev-dependencies'
# features: a second build of the dependencies, done here before the parallel
# runs rather than inside them.
cargo build --locked
cargo test --locked --test e2e -- --ignored --exact "$MATRIX" --nocapture >"$STATE/sdk-matrix.log" 2>&1 &
MATRIX_PID=$!
cargo test --locked --test demo --test outage -- --ignored --test-threads 1 "$@"
FAULTS_ONLY="${FAULTS_ONLY:-kill,network}" cargo test --locked --test faults -- --ignored --nocapture "$@"
matrix_rc=0
wait "$MATRIX_PID" || matrix_rc=$?
MATRIX_PID=""
grep -vE '^\s*$' "$STATE/sdk-matrix.log" | grep -v '^  ' | cut -c1-2000 >&2 || true
exit "$matrix_rc"
