#!/usr/bin/env bash
# Measures the credentials endpoint (release build) as a sidecar runs it:
# memory after start and after REQUESTS requests (default 5000), and request
# latency over one keep-alive connection, with the Secret's files swapped the
# kubelet's way every 100 requests. Prints a Markdown table. No cluster needed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
REQUESTS="${REQUESTS:-5000}"
DIR="$(mktemp -d "${TMPDIR:-/tmp}/aro-endpoint.XXXXXX")"
PID=""
cleanup() {
  if [[ -n $PID ]]; then
    kill "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
  fi
  rm -rf "$DIR"
}
trap cleanup EXIT

cargo build --release --locked --quiet
BIN="${CARGO_TARGET_DIR:-target}/release/assumed-role-operator"
mkdir -p "$DIR/mount"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python3 "$ROOT/hack/endpoint_load.py" project "$DIR/mount" 0
"$BIN" credentials-endpoint --credentials-dir "$DIR/mount" --listen "127.0.0.1:$PORT" 2>"$DIR/endpoint.log" &
PID=$!
for _ in $(seq 100); do
  curl -fsS "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break
  sleep 0.05
done
rss() { awk -v k="$1" '$1 == k":" {printf "%.1f", $2 / 1024}' "/proc/$PID/status"; }
idle_rss=$(rss VmRSS)
read -r p50 p99 max rate < <(python3 "$ROOT/hack/endpoint_load.py" load "$DIR/mount" "$PORT" "$REQUESTS")
cat <<TABLE
| measure | credentials endpoint |
|---|---|
| RSS after start | $idle_rss MiB |
| RSS / peak RSS after $REQUESTS requests | $(rss VmRSS) / $(rss VmHWM) MiB |
| latency p50 / p99 / max (one keep-alive connection) | $p50 / $p99 / $max ms |
| requests per second (one connection) | $rate |
TABLE
