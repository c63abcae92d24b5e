#!/usr/bin/env bash
# Measures the injection webhook (release build) against the local control
# plane: the operator's memory with the webhook off and on (idle, and after
# the admissions), the time the webhook takes per admission by its own
# histogram, and what it adds to a pod's creation as a client sees it
# (BENCH_PODS pods, default 300, created one after the other by one kubectl,
# labelled and then not). Prints a Markdown table.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PODS="${BENCH_PODS:-300}"
STATE="$(mktemp -d "${TMPDIR:-/tmp}/aro-bench-webhook.XXXXXX")"
PID=""
cleanup() {
  if [[ -n $PID ]]; then
    kill "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
  fi
  hack/cluster.sh down "$STATE" || true
  rm -rf "$STATE"
}
trap cleanup EXIT
log() { printf '[bench-webhook %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

cargo build --release --locked --quiet
BIN="${CARGO_TARGET_DIR:-target}/release/assumed-role-operator"
hack/cluster.sh up "$STATE" >&2
# shellcheck disable=SC1091
source "$STATE/env"
kubectl apply -f crds/ >/dev/null
kubectl wait --for condition=established --timeout=60s crd --all >/dev/null
NS=bench-hook
kubectl create namespace "$NS" >/dev/null
kubectl create namespace "$NS-system" >/dev/null
kubectl apply -f - >/dev/null <<YAML
apiVersion: sts.refresh.dev/v1alpha1
kind: AssumedRolePolicy
metadata: {name: $NS}
spec:
  namespaces: {names: [$NS]}
  roleArns: ["arn:aws:iam::*:role/*"]
---
apiVersion: sts.refresh.dev/v1alpha1
kind: AssumedRole
metadata: {name: reader, namespace: $NS}
spec:
  roleArn: arn:aws:iam::${ARO_AWS_ACCOUNT}:role/reader
YAML
ADMIN=$(free_port)
HOOK=$(free_port)
# The chart's webhook configuration, pointed at the process by URL.
"$ARO_HELM" template bench charts/assumed-role-operator --namespace "$NS-system" --kube-version 1.35.0 \
  --set webhook.enabled=true --show-only templates/webhook.yaml |
  kubectl create --dry-run=client -o json -f - |
  python3 -c '
import json, sys
text, objects, at = sys.stdin.read(), [], 0
decoder = json.JSONDecoder()
while text[at:].strip():
    at += len(text[at:]) - len(text[at:].lstrip())
    obj, at = decoder.raw_decode(text, at)
    objects.append(obj)
mwc = next(o for o in objects if o["kind"] == "MutatingWebhookConfiguration")
mwc["webhooks"][0]["clientConfig"] = {"url": "https://127.0.0.1:'"$HOOK"'/mutate"}
print(json.dumps(mwc))' >"$STATE/mwc.json"
kubectl apply -f "$STATE/mwc.json" >/dev/null

start() {
  "$BIN" run --namespace "$NS-system" --admin-address "127.0.0.1:$ADMIN" --log-format json "$@" \
    >"$STATE/operator.log" 2>&1 &
  PID=$!
  for _ in $(seq 300); do
    curl -fsS "http://127.0.0.1:$ADMIN/readyz" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  log "the operator did not become ready"; tail -20 "$STATE/operator.log" >&2; return 1
}
stop() { kill "$PID"; wait "$PID" 2>/dev/null || true; PID=""; }
rss() { awk -v k="$1" '$1 == k":" {printf "%.1f", $2 / 1024}' "/proc/$PID/status"; }
settle() { sleep 3; }

log "the operator without the webhook"
start
settle
off_rss=$(rss VmRSS)
stop

log "the operator with the webhook"
start --webhook-address "127.0.0.1:$HOOK" --webhook-dns-names 127.0.0.1 \
  --webhook-configuration bench-assumed-role-operator --webhook-secret bench-webhook-tls
for _ in $(seq 100); do
  [[ -n $(kubectl get mutatingwebhookconfiguration bench-assumed-role-operator -o jsonpath='{.webhooks[0].clientConfig.caBundle}') ]] && break
  sleep 0.1
done
kubectl wait -n "$NS" --for=jsonpath='{.status.conditions[?(@.type=="Ready")].status}'=True assumedrole/reader --timeout=60s >/dev/null
settle
on_rss=$(rss VmRSS)

pods() {
  local labelled=$1 prefix=$2
  python3 - "$PODS" "$labelled" "$prefix" <<'PY'
import json, sys
n, labelled, prefix = int(sys.argv[1]), sys.argv[2] == "1", sys.argv[3]
items = []
for i in range(n):
    meta = {"name": f"{prefix}-{i}", "annotations": {"sts.refresh.dev/assumed-role": "reader"}}
    if labelled:
        meta["labels"] = {"sts.refresh.dev/inject": "true"}
    items.append({"apiVersion": "v1", "kind": "Pod", "metadata": meta,
                  "spec": {"containers": [{"name": "app", "image": "app:1"}]}})
print(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
PY
}
timed_create() {
  local started ended
  started=$(date +%s%3N)
  kubectl create -n "$NS" -f - >/dev/null
  ended=$(date +%s%3N)
  echo $((ended - started))
}
log "creating $PODS pods without the label, then $PODS with it"
plain_ms=$(pods 0 plain | timed_create)
wired_ms=$(pods 1 wired | timed_create)
injected=$(kubectl get pods -n "$NS" -o json | python3 -c '
import json, sys
pods = json.load(sys.stdin)["items"]
print(sum(1 for p in pods if any(c["name"] == "sts-credentials-endpoint" for c in p["spec"].get("initContainers", []))))')
after_rss=$(rss VmRSS)
peak_rss=$(rss VmHWM)
METRICS=$(curl -fsS "http://127.0.0.1:$ADMIN/metrics")
results=$(echo "$METRICS" | awk -F'[{}" ]+' '/^assumed_role_operator_webhook_admissions_total\{/ {printf "%s%s %s", sep, $3, $4; sep=", "}')
read -r count mean p50 p99 < <(python3 - <<PY
import re
text = """$METRICS"""
buckets = []
count = total = 0.0
for line in text.splitlines():
    m = re.match(r'assumed_role_operator_webhook_admission_duration_seconds_bucket\{le="([^"]+)"\} (\S+)', line)
    if m:
        buckets.append((float("inf") if m.group(1) == "+Inf" else float(m.group(1)), float(m.group(2))))
    if line.startswith("assumed_role_operator_webhook_admission_duration_seconds_sum "):
        total = float(line.split()[1])
    if line.startswith("assumed_role_operator_webhook_admission_duration_seconds_count "):
        count = float(line.split()[1])
def quantile(q):
    for le, c in buckets:
        if c >= q * count:
            return le * 1000
    return float("nan")
print(int(count), f"{total / count * 1000:.2f}" if count else "nan", f"{quantile(0.5):g}", f"{quantile(0.99):g}")
PY
)
stop
per_plain=$(python3 -c "print(f'{$plain_ms / $PODS:.1f}')")
per_wired=$(python3 -c "print(f'{$wired_ms / $PODS:.1f}')")
cat <<TABLE
| measure | injection webhook |
|---|---|
| admissions answered, by result | $count: $results ($injected of $PODS labelled pods wired; the API server calls again after later mutations, and the second call adds nothing) |
| time per admission, by the webhook (mean; p50 / p99 at most) | $mean ms; $p50 / $p99 ms |
| pod creation, one client, one after the other: unlabelled / labelled | $per_plain / $per_wired ms per pod |
| operator RSS, idle: webhook off / on | $off_rss / $on_rss MiB |
| operator RSS after the admissions (peak) | $after_rss ($peak_rss) MiB |
TABLE
