#!/usr/bin/env bash
# The SDK consumers of tests/sdk, built from the registries and cached under
# $ARO_CACHE (default ~/.cache/assumed-role-operator), each keyed by a hash
# of the files that pin it, so only the first run pays for the build.
#
#   hack/sdks.sh build   build or reuse every consumer
#   hack/sdks.sh env     print the variables that tests/e2e/sdk.rs reads
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${ARO_CACHE:-$HOME/.cache/assumed-role-operator}"
SDK="$ROOT/tests/sdk"

log() { printf '[sdks %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# A short hash of the named files under tests/sdk/$1.
key() {
  local lang=$1; shift
  (cd "$SDK/$lang" && sha256sum "$@") | sha256sum | cut -c1-12
}

PY_DIR="$CACHE/sdk-python-$(key python requirements.txt)"
GO_DIR="$CACHE/sdk-go-$(key go go.mod go.sum main.go)"
JAVA_DIR="$CACHE/sdk-java-$(key java pom.xml src/main/java/dev/refresh/sts/Consumer.java)"
JS_DIR="$CACHE/sdk-js-$(key js package.json package-lock.json consumer.mjs)"
RUST_DIR="$CACHE/sdk-rust-$(key rust Cargo.toml Cargo.lock src/main.rs)"

# Runs "$@" into $dir (in place: a virtual environment cannot move), and
# marks it done only at the end, so that a build that failed half-way is
# built again rather than taken for a cached one.
cached() {
  local label=$1 dir=$2; shift 2
  if [[ -e $dir/.done ]]; then return; fi
  local start=$SECONDS
  log "building $label (first run only) ..."
  rm -rf "$dir"; mkdir -p "$dir"
  "$@" "$dir"
  touch "$dir/.done"
  log "$label done in $((SECONDS - start)) s"
}

build_python() {
  python3 -m venv "$1"
  "$1/bin/pip" install --quiet --disable-pip-version-check -r "$SDK/python/requirements.txt"
}

build_go() {
  (cd "$SDK/go" && CGO_ENABLED=0 go build -mod=readonly -trimpath -buildvcs=false -o "$1/consumer" .)
}

build_java() {
  cp -r "$SDK/java/." "$1/src-copy"
  (cd "$1/src-copy" && mvn --batch-mode --quiet -Dstyle.color=never -DoutputDirectory="$1/lib" \
    compile dependency:copy-dependencies)
  mv "$1/src-copy/target/classes" "$1/classes"
  rm -rf "$1/src-copy"
}

build_js() {
  cp "$SDK/js/package.json" "$SDK/js/package-lock.json" "$SDK/js/consumer.mjs" "$1/"
  (cd "$1" && npm ci --quiet --no-audit --no-fund --ignore-scripts >/dev/null)
}

build_rust() {
  cargo build --quiet --release --locked --manifest-path "$SDK/rust/Cargo.toml" \
    --target-dir "$CACHE/sdk-rust-target"
  cp "$CACHE/sdk-rust-target/release/sdk-consumer" "$1/consumer"
}

build() {
  cached "boto3 and the AWS CLI" "$PY_DIR" build_python
  cached "aws-sdk-go-v2" "$GO_DIR" build_go
  cached "AWS SDK for Java v2" "$JAVA_DIR" build_java
  cached "AWS SDK for JavaScript v3" "$JS_DIR" build_js
  cached "aws-sdk-rust" "$RUST_DIR" build_rust
}

env() {
  # Absolute paths throughout: the shell-less route runs them with an empty PATH.
  cat <<VARS
export ARO_SDK_PYTHON=$PY_DIR/bin/python
export ARO_SDK_AWS_CLI=$PY_DIR/bin/aws
export ARO_SDK_BOTO3_SCRIPT=$SDK/python/boto3_consumer.py
export ARO_SDK_CLI_SCRIPT=$SDK/python/cli_consumer.py
export ARO_SDK_GO=$GO_DIR/consumer
export ARO_SDK_JAVA=$(readlink -f "$(command -v java)")
export ARO_SDK_JAVA_CLASSPATH=$JAVA_DIR/classes:$JAVA_DIR/lib/*
export ARO_SDK_NODE=$(readlink -f "$(command -v node)")
export ARO_SDK_JS=$JS_DIR/consumer.mjs
export ARO_SDK_RUST=$RUST_DIR/consumer
VARS
}

case "${1:-}" in
  build) build ;;
  env) env ;;
  *) echo "usage: $0 build|env" >&2; exit 2 ;;
esac
