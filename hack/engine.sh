#!/usr/bin/env bash
# Docker's engine for the image tests, on a socket and in folders of its
# own, never the machine's default socket: dockerd as root with the vfs
# storage driver, no iptables and no bridge (containers use the host's
# network, and the tests reach only loopback addresses).
#
#   hack/engine.sh start STATE_DIR   start dockerd, write STATE_DIR/engine.env
#   hack/engine.sh stop  STATE_DIR   stop it by PID
#
# Its images live under $ARO_CACHE/docker-data, so that the stand-in bases
# and the build's layers are built once per machine.
set -euo pipefail

CACHE="${ARO_CACHE:-$HOME/.cache/assumed-role-operator}"
cmd="${1:-}"
STATE="${2:?usage: hack/engine.sh start|stop STATE_DIR}"
RUN="$STATE/engine"

log() { printf '[engine %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

start() {
  command -v dockerd >/dev/null || die "dockerd is missing: apt-get install docker.io (the tests start it on a socket of their own)"
  command -v docker >/dev/null || die "the docker client is missing: apt-get install docker.io"
  ((EUID == 0)) || die "dockerd runs as root here: run the image tests as root"
  mkdir -p "$RUN" "$CACHE/docker-data"
  local sock="$RUN/docker.sock"
  # A short exec root: containerd's socket paths must fit in 108 bytes.
  local exec_root
  exec_root=$(mktemp -d /tmp/aro-dockerd.XXXXXX)
  echo "$exec_root" >"$RUN/exec-root"
  dockerd --host "unix://$sock" --data-root "$CACHE/docker-data" --exec-root "$exec_root" \
    --pidfile "$RUN/dockerd.pid" --storage-driver vfs --iptables=false --ip-forward=false \
    --ip-masq=false --bridge=none >"$RUN/dockerd.log" 2>&1 &
  local pid=$!
  echo "$pid" >"$RUN/pid"
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || { tail -n 20 "$RUN/dockerd.log" >&2; die "dockerd exited at start"; }
    if docker -H "unix://$sock" version >/dev/null 2>&1; then
      echo "export DOCKER_HOST=unix://$sock" >"$STATE/engine.env"
      log "dockerd $(docker -H "unix://$sock" version --format '{{.Server.Version}}') up on $sock (pid $pid)"
      return 0
    fi
    sleep 0.2
  done
  die "dockerd did not answer on $sock within 20 s (log: $RUN/dockerd.log)"
}

stop() {
  [[ -f $RUN/pid ]] || return 0
  local pid
  pid=$(cat "$RUN/pid")
  if kill -0 "$pid" 2>/dev/null; then
    # Containers the tests left behind go first.
    local sock="$RUN/docker.sock" ids
    ids=$(docker -H "unix://$sock" ps -aq 2>/dev/null || true)
    [[ -z $ids ]] || docker -H "unix://$sock" rm -f $ids >/dev/null 2>&1 || true
    kill "$pid"
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
  fi
  [[ -f $RUN/exec-root ]] && rm -rf "$(cat "$RUN/exec-root")"
  rm -f "$RUN/pid" "$STATE/engine.env"
  log "dockerd stopped"
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  *) die "usage: hack/engine.sh start|stop STATE_DIR" ;;
esac
