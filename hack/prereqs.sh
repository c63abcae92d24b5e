#!/usr/bin/env bash
# Checks, before anything is built, that this machine has every tool a make
# target needs, and names each one missing with how to install it, so that a
# run does not fail on the first missing tool many minutes in.
#
#   hack/prereqs.sh demo   what `make demo` needs
#   hack/prereqs.sh test   what `make test` needs (the demo's, the SDK
#                          matrix's Java, Maven, Node.js and npm, Docker's
#                          engine, and the node's containerd, runc and CNI
#                          plugins)
set -euo pipefail

target="${1:-test}"
missing=()

# tool, then how to get it on Debian or Ubuntu (the README lists others).
want() {
  local tool=$1 how=$2
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool: $how")
}

want go "Go 1.24 or newer: https://go.dev/doc/install (or apt-get install golang-go)"
want cargo "Rust by rustup: https://rustup.rs"
want python3 "apt-get install python3 python3-venv"
want openssl "apt-get install openssl"
want curl "apt-get install curl"
want make "apt-get install make"
if command -v python3 >/dev/null 2>&1 && ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  missing+=("python3 venv: apt-get install python3-venv")
fi
if [[ $target == test ]]; then
  want java "Java 17 or newer: apt-get install openjdk-17-jdk-headless"
  want mvn "Maven: apt-get install maven"
  want node "Node.js 18 or newer: apt-get install nodejs"
  want npm "apt-get install npm"
  want dockerd "Docker's engine for the image tests: apt-get install docker.io (started on a socket of its own)"
  want docker "the docker client: apt-get install docker.io"
  # The real node (hack/node.sh): Debian's runtime, a static pause program,
  # and the loopback addresses, mounts and cgroups it makes as root.
  want containerd "the node's runtime: apt-get install containerd runc"
  want containerd-shim-runc-v2 "apt-get install containerd"
  want runc "apt-get install runc"
  want ip "apt-get install iproute2"
  want gcc "for the node's pause program: apt-get install gcc libc6-dev"
  want dpkg-deb "Debian's dpkg, for the test images' busybox"
  [[ -x /usr/lib/cni/ptp && -x /usr/lib/cni/host-local ]] \
    || missing+=("the CNI plugins ptp and host-local: apt-get install containernetworking-plugins")
  ((EUID == 0)) || missing+=("root: the node and Docker's engine make mounts, cgroups and loopback addresses")
  if command -v cargo >/dev/null 2>&1; then
    cargo fmt --version >/dev/null 2>&1 || missing+=("rustfmt: rustup component add rustfmt")
    cargo clippy --version >/dev/null 2>&1 || missing+=("clippy: rustup component add clippy")
  fi
  if command -v java >/dev/null 2>&1; then
    major=$(java -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = \([0-9]*\).*/\1/p')
    if [[ -n $major ]] && ((major < 17)); then
      missing+=("java 17 or newer (found $major): apt-get install openjdk-17-jdk-headless")
    fi
  fi
fi

if ((${#missing[@]})); then
  {
    echo "make $target needs tools this machine lacks:"
    printf '  - %s\n' "${missing[@]}"
    echo "Install them, then run make $target again (README.md, \"Try it\", lists them all)."
  } >&2
  exit 1
fi
