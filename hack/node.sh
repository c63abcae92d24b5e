#!/usr/bin/env bash
# A real node for the local control plane of hack/cluster.sh: Debian's
# containerd, runc and CNI plugins, with a kubelet and kube-scheduler built
# from the same Kubernetes module as the control plane. Pods really run, the
# kubelet really mounts Secrets and runs probes.
#
#   hack/node.sh up     STATE_DIR   join a node to the control plane under STATE_DIR
#                                   (`hack/cluster.sh up STATE_DIR --node` does this)
#   hack/node.sh down   STATE_DIR   stop it, and undo what it changed on the host
#   hack/node.sh import STATE_DIR ARCHIVE|-
#                                   import an image archive (docker save, or
#                                   hack/node/image.py) into the node
#
# The node's name is the machine's hostname, which resolves to 127.0.0.1: the
# API server dials the kubelet there. One node per machine: the kubelet and
# containerd use a few fixed host paths whatever their settings.
#
# What it changes on the host, and `down` undoes: two addresses on the
# loopback interface (HOST_IP, where pods reach the host's services, and the
# `kubernetes` Service's address), the sysctls the kubelet and the CNI plugin
# set, the fixed paths below, the kubelet's cgroups, and the mounts under
# STATE_DIR/node.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
COMMAND=${1:-}
STATE=${2:-}
LOG_TAG=node
# shellcheck source=hack/lib.sh
source "$ROOT/hack/lib.sh"
[[ -n $COMMAND && -n $STATE ]] || { echo "usage: $0 up|down STATE_DIR | import STATE_DIR ARCHIVE|-" >&2; exit 2; }
[[ -d $STATE ]] || { [[ $COMMAND == down ]] && exit 0; die "no folder $STATE"; }
STATE=$(cd "$STATE" && pwd)
N=$STATE/node

# Pods get addresses from POD_CIDR; the host is GATEWAY on their side of the
# link, and HOST_IP (on the loopback interface) is where the services that
# listen on the host's 127.0.0.1 are forwarded for them.
POD_CIDR=10.88.0.0/24
GATEWAY=10.88.0.1
HOST_IP=10.89.0.1
SERVICE_IP=10.96.0.1
NODE_NAME=$(hostname | tr '[:upper:]' '[:lower:]')
SOCK=$N/containerd/containerd.sock
LOCK=/run/assumed-role-operator-node
# The sysctls the kubelet (protectKernelDefaults off) and the ptp plugin set.
SYSCTLS=(vm.overcommit_memory kernel.panic kernel.panic_on_oops net.ipv4.ip_forward)
# Host paths the kubelet, containerd and the CNI plugins use whatever their
# settings; those that did not exist before `up` are removed by `down`.
FIXED_PATHS=(/var/log/containers /var/lib/kubelet /var/lib/cni /run/containerd/s /run/containerd/fifo /run/containerd)

ctr_() { ctr --address "$SOCK" --namespace k8s.io "$@"; }

# The sandbox image, built from hack/node/pause.c and cached by its source.
pause_image() {
  local key dir
  key=$(sha256sum "$ROOT/hack/node/pause.c" "$ROOT/hack/node/image.py" | sha256sum | cut -c1-12)
  dir=$CACHE/node-pause-$key
  PAUSE_IMAGE=aro.local/pause:$key
  PAUSE_ARCHIVE=$dir/pause.tar
  [[ -f $PAUSE_ARCHIVE ]] && return 0
  rm -rf "$dir.tmp"; mkdir -p "$dir.tmp"
  gcc -static -Os -Wall -Wextra -o "$dir.tmp/pause" "$ROOT/hack/node/pause.c" \
    || die "could not build the pause program: a static glibc (libc6-dev) is needed"
  python3 "$ROOT/hack/node/image.py" "$dir.tmp/pause.tar" "$PAUSE_IMAGE" --entrypoint /pause "$dir.tmp/pause=/pause"
  rm -rf "$dir"; mv "$dir.tmp" "$dir"
}

# What the host was like before `up`, for `down` to put back.
record_host() {
  mkdir -p "$N/host"
  local key path
  for key in "${SYSCTLS[@]}"; do printf '%s=%s\n' "$key" "$(sysctl -n "$key")"; done >"$N/host/sysctls"
  : >"$N/host/paths"
  for path in "${FIXED_PATHS[@]}"; do [[ -e $path ]] || echo "$path" >>"$N/host/paths"; done
  : >"$N/host/addresses"
  for address in "$HOST_IP" "$SERVICE_IP"; do
    ip -br addr show dev lo | grep -qw "$address/32" && die "$address is already on lo: is another node up?"
    ip addr add "$address/32" dev lo
    echo "$address/32" >>"$N/host/addresses"
  done
}

# Puts the host back as record_host found it.
restore_host() {
  local path key value address cgroup
  # Mounts under the node's folder (the kubelet's bind mount of its root,
  # Secret volumes, sandbox network namespaces and shm), deepest first.
  findmnt -rn -o TARGET | grep -F "$N/" | sort -r | while read -r path; do
    umount "$path" 2>/dev/null || umount -l "$path" || log "could not unmount $path"
  done
  for cgroup in /sys/fs/cgroup/*/kubepods; do
    [[ -d $cgroup ]] || continue
    find "$cgroup" -depth -type d -exec rmdir {} + 2>/dev/null || log "could not remove every cgroup under $cgroup"
  done
  if [[ -f $N/host/sysctls ]]; then
    while IFS='=' read -r key value; do sysctl -qw "$key=$value" || log "could not restore $key=$value"; done <"$N/host/sysctls"
  fi
  if [[ -f $N/host/addresses ]]; then
    while read -r address; do ip addr del "$address" dev lo 2>/dev/null || true; done <"$N/host/addresses"
  fi
  if [[ -f $N/host/paths ]]; then
    while read -r path; do rm -rf "$path"; done <"$N/host/paths"
  fi
  rm -f "$N/host/sysctls" "$N/host/addresses" "$N/host/paths"
}

certs() {
  sign kubelet-server "/CN=$NODE_NAME" "IP:127.0.0.1,DNS:$NODE_NAME"
  sign kubelet "/O=system:nodes/CN=system:node:$NODE_NAME"
  sign kube-scheduler "/CN=system:kube-scheduler"
  kubeconfig "$N/kubelet.kubeconfig" kubelet "https://127.0.0.1:$API_PORT"
  kubeconfig "$N/kube-scheduler.kubeconfig" kube-scheduler "https://127.0.0.1:$API_PORT"
}

containerd_config() {
  mkdir -p "$N/containerd" "$N/cni/conf" "$N/cni/ipam"
  cat >"$N/containerd/config.toml" <<TOML
version = 2
root = "$N/containerd/root"
state = "$N/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]
[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$N/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  netns_mounts_under_state_dir = true
  # Root here lacks CAP_SYS_RESOURCE: without this every sandbox fails
  # ("can't get final child's PID from pipe: EOF").
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "$SNAPSHOTTER"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$N/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$N/cni/conf"
TOML
  cat >"$N/cni/conf/10-aro.conflist" <<JSON
{
  "cniVersion": "0.4.0",
  "name": "aro-pods",
  "plugins": [
    {
      "type": "ptp",
      "ipMasq": false,
      "ipam": {
        "type": "host-local",
        "dataDir": "$N/cni/ipam",
        "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$GATEWAY"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    }
  ]
}
JSON
}

kubelet_config() {
  mkdir -p "$N/kubelet" "$N/pod-logs"
  cat >"$N/kubelet/config.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# The machines boot with cgroup v1, which 1.35 and later refuse unless told.
failCgroupV1: false
cgroupDriver: cgroupfs
failSwapOn: false
containerRuntimeEndpoint: unix://$SOCK
address: 127.0.0.1
port: $KUBELET_PORT
readOnlyPort: 0
healthzPort: 0
tlsCertFile: $STATE/pki/kubelet-server.crt
tlsPrivateKeyFile: $STATE/pki/kubelet-server.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $STATE/pki/ca.crt}
authorization: {mode: Webhook}
# Secret updates reach containers within seconds (the default is a minute).
syncFrequency: 2s
podLogsDir: $N/pod-logs
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
resolvConf: /etc/resolv.conf
YAML
}

node_ready() {
  [[ $("$K8S_BIN/kubectl" --kubeconfig "$STATE/kubeconfig" get node "$NODE_NAME" \
    -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null) == True ]]
}

up() {
  need containerd containerd-shim-runc-v2 runc ctr ip gcc findmnt sysctl python3 openssl
  [[ -x /usr/lib/cni/ptp && -x /usr/lib/cni/host-local ]] \
    || die "the CNI plugins are missing: apt-get install containernetworking-plugins"
  [[ -f $STATE/cluster.vars ]] || die "no control plane under $STATE: run hack/cluster.sh up $STATE --node"
  # shellcheck disable=SC1091
  source "$STATE/cluster.vars"
  [[ -x $NODE_BIN/kubelet ]] || die "no kubelet in $NODE_BIN: run hack/cluster.sh build"
  if [[ -e $LOCK ]]; then
    local other; other=$(<"$LOCK")
    [[ -f $other/pids/kubelet ]] && kill -0 "$(<"$other/pids/kubelet")" 2>/dev/null \
      && die "a node is already up under $other (one per machine): hack/cluster.sh down $other"
    log "a node under $other was not stopped: undoing what it left"
    STATE=$other N=$other/node restore_host
  fi
  echo "$STATE" >"$LOCK"
  ls -d /sys/fs/cgroup/*/kubepods >/dev/null 2>&1 && die "kubepods cgroups exist: another kubelet runs here"
  local begin=$SECONDS
  rm -rf "$N"; mkdir -p "$N"
  pause_image
  record_host
  log "forwarding $SERVICE_IP:443 to the API server and $HOST_IP:$MOTO_PORT to moto, for the pods"
  start node-forward python3 "$ROOT/hack/node/forward.py" \
    "$SERVICE_IP:443=127.0.0.1:$API_PORT" "$HOST_IP:$MOTO_PORT=127.0.0.1:$MOTO_PORT"
  certs
  # overlayfs where the kernel lets containerd mount it, else plain copies.
  SNAPSHOTTER=overlayfs
  mkdir -p "$N/probe/l" "$N/probe/u" "$N/probe/w" "$N/probe/m"
  if mount -t overlay overlay -o "lowerdir=$N/probe/l,upperdir=$N/probe/u,workdir=$N/probe/w" "$N/probe/m" 2>/dev/null; then
    umount "$N/probe/m"
  else
    SNAPSHOTTER=native
  fi
  rm -rf "$N/probe"
  containerd_config
  log "starting containerd ($SNAPSHOTTER snapshotter)"
  start containerd containerd --config "$N/containerd/config.toml"
  wait_for 30 containerd ctr --address "$SOCK" version
  ctr_ images import --snapshotter "$SNAPSHOTTER" "$PAUSE_ARCHIVE" >/dev/null
  KUBELET_PORT=$(free_port)
  kubelet_config
  log "starting the kubelet as node $NODE_NAME on 127.0.0.1:$KUBELET_PORT"
  start kubelet "$NODE_BIN/kubelet" --config "$N/kubelet/config.yaml" --kubeconfig "$N/kubelet.kubeconfig" \
    --root-dir "$N/kubelet" --cert-dir "$N/kubelet/pki" --node-ip "$HOST_IP" --hostname-override "$NODE_NAME" -v 1
  log "starting kube-scheduler"
  start kube-scheduler "$NODE_BIN/kube-scheduler" --kubeconfig "$N/kube-scheduler.kubeconfig" \
    --authentication-kubeconfig "$N/kube-scheduler.kubeconfig" --authorization-kubeconfig "$N/kube-scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$(free_port)" --leader-elect=false
  wait_for 60 "node $NODE_NAME" node_ready
  cat >"$STATE/node.env" <<ENV
export ARO_NODE=$NODE_NAME
export ARO_NODE_HOST=$HOST_IP
export ARO_NODE_STS=http://$HOST_IP:$MOTO_PORT
export ARO_NODE_KUBELET_DIR=$N/kubelet
export ARO_NODE_SNAPSHOTTER=$SNAPSHOTTER
ENV
  log "node $NODE_NAME Ready in $((SECONDS - begin)) s; pods reach the host's services at $HOST_IP"
}

down() {
  [[ -d $N || -f $STATE/pids/kubelet || -f $STATE/pids/containerd ]] || return 0
  local kubectl=(kubectl --kubeconfig "$STATE/kubeconfig")
  if [[ -f $STATE/cluster.vars ]]; then
    # shellcheck disable=SC1091
    source "$STATE/cluster.vars"
    kubectl[0]=$K8S_BIN/kubectl
  fi
  if [[ -f $STATE/pids/kubelet ]] && "${kubectl[@]}" get --raw /readyz >/dev/null 2>&1; then
    # Let the kubelet stop the pods it runs, so their volumes and networks
    # are torn down the usual way.
    "${kubectl[@]}" delete pods --all-namespaces --field-selector "spec.nodeName=$NODE_NAME" \
      --grace-period 2 --wait=false >/dev/null || true
    local deadline=$((SECONDS + 30))
    while ((SECONDS < deadline)) && [[ -n $("${kubectl[@]}" get pods -A --field-selector "spec.nodeName=$NODE_NAME" -o name 2>/dev/null) ]]; do
      sleep 0.5
    done
  fi
  stop_pid kube-scheduler
  stop_pid kubelet
  if [[ -f $STATE/pids/containerd ]]; then
    # Whatever the kubelet left running: killed and removed through containerd.
    local task
    for task in $(ctr_ tasks ls -q 2>/dev/null); do
      ctr_ tasks kill -s SIGKILL "$task" >/dev/null 2>&1 || true
    done
    for task in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks delete -f "$task" >/dev/null 2>&1 || true; done
    stop_pid containerd
  fi
  # A shim outlives containerd by design; these are the node's, by the socket
  # they were started with.
  local pid
  for pid in $(pgrep -f "containerd-shim-runc-v2 .*-address $SOCK" || true); do kill -9 "$pid" 2>/dev/null || true; done
  stop_pid node-forward
  restore_host
  [[ ! -f $LOCK || $(<"$LOCK") != "$STATE" ]] || rm -f "$LOCK"
  rm -rf "$N" "$STATE/node.env"
  log "node stopped; the host is as it was"
}

import() {
  local archive=$1
  # shellcheck disable=SC1091
  source "$STATE/node.env"
  ctr_ images import --snapshotter "$ARO_NODE_SNAPSHOTTER" "$archive" >/dev/null
}

case "$COMMAND" in
  up) up ;;
  down) down ;;
  import) [[ -n ${3:-} ]] || die "usage: $0 import STATE_DIR ARCHIVE|-"; import "$3" ;;
  *) echo "usage: $0 up|down STATE_DIR | import STATE_DIR ARCHIVE|-" >&2; exit 2 ;;
esac
