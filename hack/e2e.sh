#!/usr/bin/env bash
# Runs the end-to-end tests against a fresh local control plane and STS, and
# stops everything by PID when done, whether the tests pass or fail.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

STATE="$(mktemp -d "${TMPDIR:-/tmp}/aro-e2e.XXXXXX")"
NODE_STATE="$STATE/node-cluster"
MATRIX_PID=""
NODE_PID=""
cleanup() {
  local rc=$?
  for pid in $MATRIX_PID $NODE_PID; do
    if kill -0 "$pid" 2>/dev/null; then
      pkill -TERM -P "$pid" || true
      kill "$pid" 2>/dev/null || true
    fi
  done
  hack/cluster.sh down "$NODE_STATE" || true
  if ((rc != 0)) && [[ -d $STATE/logs ]]; then
    for log in "$STATE"/logs/*.log "$NODE_STATE"/logs/*.log; do
      [[ $log == */audit.log ]] && continue
      echo "--- last lines of ${log#"$STATE"/}" >&2
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
# The release build (what the image holds), for the memory test; already
# built where the image's build stage was stood in for.
cargo build --release --locked
# A copy: the benchmark below builds the binary again (with its floor run and
# the test dependencies' features) while the memory test may still use it.
cp "${CARGO_TARGET_DIR:-$ROOT/target}/release/assumed-role-operator" "$STATE/assumed-role-operator-release"
export ARO_OPERATOR_RELEASE="$STATE/assumed-role-operator-release"
# First the operator on a control plane without the CRD; the test installs it.
cargo test --locked --test startup -- --ignored "$@"
kubectl apply -f crds/ >/dev/null
kubectl wait --for condition=established --timeout=60s crd/assumedroles.sts.refresh.dev crd/assumedrolepolicies.sts.refresh.dev crd/clusterassumedroles.sts.refresh.dev >/dev/null
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
cargo test --locked --test e2e --test demo --test outage --test faults --test node --no-run
# The demo builds the operator as a user does, without the dev-dependencies'
# features: a second build of the dependencies, done here before the parallel
# runs rather than inside them.
cargo build --locked
cargo test --locked --test e2e -- --ignored --exact "$MATRIX" --nocapture >"$STATE/sdk-matrix.log" 2>&1 &
MATRIX_PID=$!
# The real node, on a control plane of its own, for the same four minutes:
# its tests too mostly wait (for rotations). Then its teardown test, which
# starts a node of its own (one node per machine, so after the first is
# down), and the benchmark.
TEARDOWN=the_nodes_teardown_leaves_the_host_as_it_found_it
(
  set -e
  hack/cluster.sh up "$NODE_STATE" --node
  (
    # shellcheck disable=SC1091
    source "$NODE_STATE/env"
    kubectl apply -f crds/ >/dev/null
    kubectl wait --for condition=established --timeout=60s crd/assumedroles.sts.refresh.dev crd/assumedrolepolicies.sts.refresh.dev crd/clusterassumedroles.sts.refresh.dev >/dev/null
    cargo test --locked --test node -- --ignored --skip "$TEARDOWN" --test-threads 3 --nocapture "$@"
  )
  hack/cluster.sh down "$NODE_STATE"
  cargo test --locked --test node -- --ignored --exact "$TEARDOWN" --nocapture "$@"
  # The benchmark at a small size, so that it keeps working (`make bench`
  # runs it at full size by hand).
  BENCH_N=60 BENCH_OTHER_SECRETS=150 BENCH_STEADY=2 hack/bench.sh
  BENCH_PODS=20 hack/bench-webhook.sh
) >"$STATE/node.log" 2>&1 &
NODE_PID=$!
cargo test --locked --test demo --test outage -- --ignored --test-threads 1 "$@"
FAULTS_ONLY="${FAULTS_ONLY:-kill,network}" cargo test --locked --test faults -- --ignored --nocapture "$@"
matrix_rc=0 node_rc=0
wait "$MATRIX_PID" || matrix_rc=$?
MATRIX_PID=""
grep -vE '^\s*$' "$STATE/sdk-matrix.log" | grep -v '^  ' | cut -c1-2000 >&2 || true
wait "$NODE_PID" || node_rc=$?
NODE_PID=""
echo "--- the node's tests and the benchmark" >&2
grep -vE '^\s*$' "$STATE/node.log" | grep -v '^  ' | cut -c1-2000 >&2 || true
((matrix_rc == 0)) || exit "$matrix_rc"
exit "$node_rc"
