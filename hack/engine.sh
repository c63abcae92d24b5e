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
# The containers' cgroups, removed when the engine stops.
CGROUP=aro-dockerd

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
    --pidfile "$RUN/dockerd.pid" --cgroup-parent "$CGROUP" --storage-driver vfs --iptables=false --ip-forward=false \
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
    local sock="$RUN/docker.sock" id
    for id in $(docker -H "unix://$sock" ps -aq 2>/dev/null || true); do
      docker -H "unix://$sock" rm -f "$id" >/dev/null 2>&1 || true
    done
    kill "$pid"
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
  fi
  if [[ -f $RUN/exec-root ]]; then
    local exec_root mounts
    exec_root=$(cat "$RUN/exec-root")
    # dockerd leaves its network namespace bind-mounted: undo every mount
    # under its folders, deepest first, before removing them.
    mounts=$(awk -v root="$exec_root" 'index($2, root) == 1 {print $2}' /proc/self/mounts | sort -r)
    for mount in $mounts; do umount "$mount" 2>/dev/null || umount -l "$mount" || true; done
    rm -rf "$exec_root"
  fi
  for dir in /sys/fs/cgroup/*/"$CGROUP" /sys/fs/cgroup/"$CGROUP"; do
    [[ -d $dir ]] && rmdir "$dir" 2>/dev/null || true
  done
  rm -f "$RUN/pid" "$STATE/engine.env"
  log "dockerd stopped"
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  *) die "usage: hack/engine.sh start|stop STATE_DIR" ;;
esac
