#!/usr/bin/env bash
# Local control plane for the end-to-end tests and the demo: etcd,
# kube-apiserver and kube-controller-manager built from Go modules, and a moto
# server as the STS endpoint, all on free loopback ports.
#
#   hack/cluster.sh build            build or reuse the cached binaries
#   hack/cluster.sh up   [STATE_DIR] [--node]
#                                    start everything, write STATE_DIR/env;
#                                    with --node, a real node too (hack/node.sh)
#   hack/cluster.sh down [STATE_DIR] stop everything that `up` started, by PID,
#                                    and undo the node's changes to the host
#   hack/cluster.sh env  [STATE_DIR] print the environment for kubectl and the SDKs
#   hack/cluster.sh stop  COMPONENT [STATE_DIR]  stop one component (etcd, kube-apiserver, ...) by PID
#   hack/cluster.sh start COMPONENT [STATE_DIR]  start it again with the command line it had
#
# Binaries are cached under $ARO_CACHE (default ~/.cache/assumed-role-operator),
# keyed by version, so only the first run pays for the build.
set -euo pipefail

K8S_VERSION=1.36.3
ETCD_VERSION=3.6.16
HELM_VERSION=3.19.5
# promtool, for the unit tests of the chart's alerting rules (Go module
# version of Prometheus v3.x).
PROMETHEUS_VERSION=0.316.0
MOTO_VERSION=5.2.5
BOTO3_VERSION=1.44.5

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${ARO_CACHE:-$HOME/.cache/assumed-role-operator}"
K8S_BIN="$CACHE/k8s-v$K8S_VERSION/bin"
NODE_BIN="$CACHE/k8s-node-v$K8S_VERSION/bin"
ETCD_BIN="$CACHE/etcd-v$ETCD_VERSION/bin"
HELM_BIN="$CACHE/helm-v$HELM_VERSION/bin"
PROMTOOL_BIN="$CACHE/promtool-v$PROMETHEUS_VERSION/bin"
VENV="$CACHE/venv-moto-$MOTO_VERSION-boto3-$BOTO3_VERSION"
case "${1:-}" in
  stop|start) COMPONENT="${2:-}"; STATE="${3:-$ROOT/.cluster}" ;;
  *) STATE="${2:-$ROOT/.cluster}"; [[ $STATE != --node ]] || STATE=$ROOT/.cluster ;;
esac
NODE=""
for arg in "$@"; do [[ $arg != --node ]] || NODE=1; done

# The account that moto reports for every identity it issues.
AWS_ACCOUNT=123456789012

LOG_TAG=cluster
# shellcheck source=hack/lib.sh
source "$ROOT/hack/lib.sh"

go_build() { # module_dir out_dir version_ldflags packages...
  local module=$1 out=$2 ldflags=$3; shift 3
  local tmp="$out.tmp.$$"
  rm -rf "$tmp"; mkdir -p "$tmp"
  (cd "$ROOT/hack/tools/$module" && CGO_ENABLED=0 go build -trimpath -buildvcs=false -ldflags "-s -w $ldflags" -o "$tmp/" "$@")
  rm -rf "$out"; mv "$tmp" "$out"
}

k8s_ldflags() {
  local v=v$K8S_VERSION major=${K8S_VERSION%%.*} minor; minor=${K8S_VERSION#*.}; minor=${minor%%.*}
  local flags=""
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X $pkg.gitVersion=$v -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    flags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  echo "$flags"
}

build() {
  need go python3 openssl curl
  local begin=$SECONDS
  if [[ -x $ETCD_BIN/server ]]; then log "etcd v$ETCD_VERSION: cached in $ETCD_BIN"
  else timed "building etcd v$ETCD_VERSION (first run only)" go_build etcd "$ETCD_BIN" "" go.etcd.io/etcd/server/v3; fi
  if [[ -x $K8S_BIN/kube-apiserver && -x $K8S_BIN/kube-controller-manager && -x $K8S_BIN/kubectl ]]; then
    log "kubernetes v$K8S_VERSION: cached in $K8S_BIN"
  else
    timed "building kube-apiserver, kube-controller-manager and kubectl v$K8S_VERSION (first run only, several minutes)" \
      go_build kubernetes "$K8S_BIN" "$(k8s_ldflags)" \
      k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kubectl
  fi
  if [[ -x $NODE_BIN/kubelet && -x $NODE_BIN/kube-scheduler ]]; then log "kubelet v$K8S_VERSION: cached in $NODE_BIN"
  else
    timed "building kubelet and kube-scheduler v$K8S_VERSION (first run only)" \
      go_build kubernetes "$NODE_BIN" "$(k8s_ldflags)" k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-scheduler
  fi
  if [[ -x $HELM_BIN/helm ]]; then log "helm v$HELM_VERSION: cached in $HELM_BIN"
  else timed "building helm v$HELM_VERSION (first run only)" go_build helm "$HELM_BIN" \
      "-X helm.sh/helm/v3/internal/version.version=v$HELM_VERSION" helm.sh/helm/v3/cmd/helm; fi
  if [[ -x $PROMTOOL_BIN/promtool ]]; then log "promtool v$PROMETHEUS_VERSION: cached in $PROMTOOL_BIN"
  else timed "building promtool v$PROMETHEUS_VERSION (first run only)" go_build prometheus "$PROMTOOL_BIN" "" \
      github.com/prometheus/prometheus/cmd/promtool; fi
  if [[ -f $VENV/.complete ]]; then log "moto $MOTO_VERSION: cached in $VENV"
  else timed "installing moto[server]==$MOTO_VERSION and boto3==$BOTO3_VERSION (first run only)" install_venv; fi
  log "all components ready in $((SECONDS - begin)) s"
}

install_venv() {
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet "moto[server]==$MOTO_VERSION" "boto3==$BOTO3_VERSION"
  touch "$VENV/.complete"
}

stop_one() {
  local name=$1 pid
  [[ -f $STATE/pids/$name ]] || die "$name is not running under $STATE"
  pid=$(<"$STATE/pids/$name")
  stop_pid "$name"
  log "stopped $name (PID $pid)"
}

# Starts one stopped component again with its recorded command line.
start_one() {
  local name=$1
  [[ -f $STATE/cmds/$name ]] || die "no recorded command line for $name under $STATE"
  [[ ! -f $STATE/pids/$name ]] || die "$name is already running under $STATE"
  local cmd
  cmd=$(<"$STATE/cmds/$name")
  # exec, so that the PID recorded is the component's own, not a subshell's.
  eval "exec $cmd" >>"$STATE/logs/$name.log" 2>&1 &
  echo $! >"$STATE/pids/$name"
  log "started $name again (PID $!)"
}

certs() {
  local d=$STATE/pki
  mkdir -p "$d"
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=assumed-role-operator-test-ca" \
    -keyout "$d/ca.key" -out "$d/ca.crt" 2>/dev/null
  # 10.96.0.1 is the `kubernetes` Service's address, which a node's pods
  # are handed as KUBERNETES_SERVICE_HOST.
  sign apiserver "/CN=kube-apiserver" "IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes.default.svc"
  sign admin "/O=system:masters/CN=admin"
  sign controller-manager "/CN=system:kube-controller-manager"
  # The API server's identity towards a kubelet (exec, logs, port-forward).
  sign apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client"
  openssl genrsa -out "$d/sa.key" 2048 2>/dev/null
  openssl rsa -in "$d/sa.key" -pubout -out "$d/sa.pub" 2>/dev/null
}

up() {
  need python3 openssl curl
  build
  [[ -e $STATE/pids ]] && down
  rm -rf "$STATE"; mkdir -p "$STATE/logs" "$STATE/pids"
  local begin=$SECONDS
  ETCD_PORT=$(free_port); ETCD_PEER_PORT=$(free_port); API_PORT=$(free_port)
  KCM_PORT=$(free_port); MOTO_PORT=$(free_port); MOTO_IAM_PORT=$(free_port)
  certs
  kubeconfig "$STATE/kubeconfig" admin "https://127.0.0.1:$API_PORT"
  kubeconfig "$STATE/controller-manager.kubeconfig" controller-manager "https://127.0.0.1:$API_PORT"
  # What hack/node.sh needs of this control plane.
  printf 'API_PORT=%q\nMOTO_PORT=%q\nK8S_BIN=%q\nNODE_BIN=%q\nCACHE=%q\n' "$API_PORT" "$MOTO_PORT" "$K8S_BIN" "$NODE_BIN" "$CACHE" >"$STATE/cluster.vars"

  log "starting etcd on 127.0.0.1:$ETCD_PORT"
  start etcd "$ETCD_BIN/server" --name default --data-dir "$STATE/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "default=http://127.0.0.1:$ETCD_PEER_PORT" --unsafe-no-fsync --log-level warn
  wait_for 30 etcd curl -sf "http://127.0.0.1:$ETCD_PORT/health"

  log "starting kube-apiserver on 127.0.0.1:$API_PORT"
  # An audit log of the writes and Secret reads the tests count per
  # namespace (one status patch per mint, no Secret read after a restart):
  # the API server's own record, not the operator's.
  cat >"$STATE/audit-policy.yaml" <<'POLICY'
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    verbs: [get, create, update, patch, delete]
    resources:
      - {group: "", resources: [secrets]}
      - {group: sts.refresh.dev, resources: [assumedroles/status]}
  - level: None
POLICY
  local p=$STATE/pki
  start kube-apiserver "$K8S_BIN/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --bind-address 127.0.0.1 --secure-port "$API_PORT" \
    --advertise-address 127.0.0.1 --endpoint-reconciler-type none \
    --authorization-mode Node,RBAC \
    --client-ca-file "$p/ca.crt" --tls-cert-file "$p/apiserver.crt" --tls-private-key-file "$p/apiserver.key" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$p/sa.pub" --service-account-signing-key-file "$p/sa.key" \
    --service-cluster-ip-range 10.96.0.0/24 --cert-dir "$STATE/apiserver" --profiling=false \
    --kubelet-client-certificate "$p/apiserver-kubelet-client.crt" --kubelet-client-key "$p/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority "$p/ca.crt" --enable-aggregator-routing \
    --audit-policy-file "$STATE/audit-policy.yaml" --audit-log-path "$STATE/logs/audit.log" \
    --audit-log-format json --audit-log-mode blocking
  wait_for 90 kube-apiserver curl -sf --cacert "$p/ca.crt" --cert "$p/admin.crt" --key "$p/admin.key" \
    "https://127.0.0.1:$API_PORT/readyz"

  log "starting kube-controller-manager"
  local controllers=garbage-collector-controller,namespace-controller,serviceaccount-controller,serviceaccount-token-controller,root-ca-certificate-publisher-controller
  # With a node: what lifts the node's not-ready taint, and what a Deployment
  # and a Service need to run pods and list their endpoints.
  [[ -z $NODE ]] || controllers+=,node-lifecycle-controller,deployment-controller,replicaset-controller,endpoints-controller,endpointslice-controller,disruption-controller
  start kube-controller-manager "$K8S_BIN/kube-controller-manager" \
    --kubeconfig "$STATE/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$STATE/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$STATE/controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$KCM_PORT" \
    --use-service-account-credentials \
    --controllers "$controllers" \
    --service-account-private-key-file "$p/sa.key" --root-ca-file "$p/ca.crt" \
    --leader-elect=false --profiling=false
  wait_for 60 kube-controller-manager curl -skf "https://127.0.0.1:$KCM_PORT/healthz"

  log "starting moto (STS and IAM) on 127.0.0.1:$MOTO_PORT"
  start moto "$VENV/bin/moto_server" -H 127.0.0.1 -p "$MOTO_PORT"
  wait_for 30 moto curl -sf "http://127.0.0.1:$MOTO_PORT/moto-api/"

  # A second STS that enforces IAM, for the AccessDenied tests.
  log "starting moto with IAM enforcement on 127.0.0.1:$MOTO_IAM_PORT"
  start moto-iam env INITIAL_NO_AUTH_ACTION_COUNT=5 "$VENV/bin/moto_server" -H 127.0.0.1 -p "$MOTO_IAM_PORT"
  wait_for 30 moto-iam curl -sf "http://127.0.0.1:$MOTO_IAM_PORT/moto-api/"
  "$VENV/bin/python" "$ROOT/hack/moto-iam-setup.py" "http://127.0.0.1:$MOTO_IAM_PORT" >"$STATE/iam.env"

  cat >"$STATE/env" <<ENV
export PATH=$K8S_BIN:$HELM_BIN:\$PATH
export KUBECONFIG=$STATE/kubeconfig
export ARO_STATE=$STATE
export ARO_HELM=$HELM_BIN/helm
export ARO_PROMTOOL=$PROMTOOL_BIN/promtool
export ARO_PYTHON=$VENV/bin/python
export ARO_AWS_ACCOUNT=$AWS_ACCOUNT
export AWS_ENDPOINT_URL=http://127.0.0.1:$MOTO_PORT
export AWS_REGION=us-east-1
export AWS_DEFAULT_REGION=us-east-1
export AWS_ACCESS_KEY_ID=AKIAOPERATORTESTKEY1
export AWS_SECRET_ACCESS_KEY=operator-test-secret
ENV
  cat "$STATE/iam.env" >>"$STATE/env"
  log "control plane and STS up in $((SECONDS - begin)) s; state in $STATE"
  if [[ -n $NODE ]]; then
    "$ROOT/hack/node.sh" up "$STATE"
    cat "$STATE/node.env" >>"$STATE/env"
  fi
  log "use it with: source $STATE/env"
}

down() {
  [[ -d $STATE/pids ]] || return 0
  # The node first, while the API server can still see its pods go.
  "$ROOT/hack/node.sh" down "$STATE"
  local name
  # Stop in reverse order of start, so the apiserver never loses etcd under it.
  for name in moto-iam moto kube-controller-manager kube-apiserver etcd; do
    stop_pid "$name" 50
  done
  log "stopped everything under $STATE"
}

case "${1:-}" in
  build) build ;;
  up) up ;;
  down) down ;;
  env) cat "$STATE/env" ;;
  stop) [[ -n $COMPONENT ]] || die "usage: $0 stop COMPONENT [STATE_DIR]"; stop_one "$COMPONENT" ;;
  start) [[ -n $COMPONENT ]] || die "usage: $0 start COMPONENT [STATE_DIR]"; start_one "$COMPONENT" ;;
  *) echo "usage: $0 build|up [STATE_DIR] [--node]|down|env [STATE_DIR] | stop|start COMPONENT [STATE_DIR]" >&2; exit 2 ;;
esac
