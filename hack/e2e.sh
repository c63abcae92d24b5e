#!/usr/bin/env bash
# Runs the end-to-end tests against a fresh local control plane and STS, and
# stops everything by PID when done, whether the tests pass or fail.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

STATE="$(mktemp -d "${TMPDIR:-/tmp}/aro-e2e.XXXXXX")"
cleanup() {
  local rc=$?
  if ((rc != 0)) && [[ -d $STATE/logs ]]; then
    for log in "$STATE"/logs/*.log; do
      echo "--- last lines of $(basename "$log")" >&2
      tail -n 15 "$log" >&2 || true
    done
  fi
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
# First the operator on a control plane without the CRD; the test installs it.
cargo test --locked --test startup -- --ignored "$@"
kubectl apply -f crds/ >/dev/null
kubectl wait --for condition=established --timeout=60s crd/assumedroles.sts.refresh.dev >/dev/null
# The tests each run their own operator in a namespace of their own, so they
# can run side by side.
cargo test --locked --test e2e -- --ignored --test-threads "${E2E_THREADS:-4}" "$@"
# The chart tests run operators that watch the whole cluster: one at a time.
cargo test --locked --test chart -- --ignored --test-threads 1 "$@"
# These start control planes of their own: the demo, and the outages.
cargo test --locked --test demo --test outage -- --ignored --test-threads 1 "$@"
