#!/usr/bin/env bash
# Builds the operator's image from the Dockerfile with the engine that
# DOCKER_HOST names (hack/engine.sh starts one), tagged IMAGE (default: the
# chart's repository at the crate's version), and prints the image and its
# base as shell exports.
#
# Where the Dockerfile's bases (rust:1.95-bookworm and
# gcr.io/distroless/cc-debian12:nonroot) are not in the engine and cannot be
# pulled (a machine without a registry), it makes stand-ins and says so:
# - the runtime base from Debian 12's own packages, with what
#   distroless/cc-debian12 holds: glibc (libc6), libgcc-s1, libssl3, the CA
#   certificates, tzdata, netbase, base-files, /etc/passwd and /etc/group
#   with root, nobody and nonroot (65532); no shell, no package manager;
# - the build stage from this machine's own toolchain: `cargo build
#   --release --locked` here, the binary handed to the Dockerfile's build
#   stage (which then skips its own build) in a builder with only busybox.
# The Dockerfile is the one users build; the stand-ins enter as build
# arguments.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
IMAGE="${IMAGE:-ghcr.io/assumed-role-operator/assumed-role-operator:$VERSION}"
BUILDER=rust:1.95-bookworm
RUNTIME=gcr.io/distroless/cc-debian12:nonroot
# What the runtime stand-in is made of, from Debian 12.
RUNTIME_PACKAGES=(libc6 libgcc-s1 libssl3 ca-certificates tzdata netbase base-files)

log() { printf '[image %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

command -v docker >/dev/null || die "the docker client is missing: apt-get install docker.io"
own_engine=""
if ! docker version >/dev/null 2>&1; then
  # No engine answers (DOCKER_HOST or the default socket): start one of our
  # own for this build, and leave the image as an archive to load.
  own_engine=$(mktemp -d)
  "$ROOT/hack/engine.sh" start "$own_engine"
  # shellcheck disable=SC1091
  source "$own_engine/engine.env"
fi
export DOCKER_BUILDKIT=0   # the legacy builder: BuildKit's frontend is an image too

have() { docker image inspect "$1" >/dev/null 2>&1 || docker pull -q "$1" >/dev/null 2>&1; }

work=$(mktemp -d)
cleanup() {
  rm -rf "$work"
  if [[ -n $own_engine ]]; then "$ROOT/hack/engine.sh" stop "$own_engine" || true; rm -rf "$own_engine"; fi
}
trap cleanup EXIT

# Extracts Debian packages into $2, the way dpkg would lay them out.
unpack() {
  local into=$1; shift
  chmod 755 "$work"
  (cd "$work" && apt-get download "$@" >/dev/null 2>&1) || die "apt-get download $* failed (run apt-get update first)"
  for deb in "$work"/*.deb; do dpkg-deb -x "$deb" "$into"; done
  rm -f "$work"/*.deb
}

runtime_standin() {
  local versions key tag
  versions=$(apt-cache policy "${RUNTIME_PACKAGES[@]}" | awk '/^[a-z]/{p=$1} /Candidate/{print p, $2}')
  key=$(sha256sum <<<"$versions" | cut -c1-12)
  tag="aro-standin/distroless-cc-debian12:nonroot-$key"
  if ! docker image inspect "$tag" >/dev/null 2>&1; then
    log "$RUNTIME cannot be pulled: assembling a stand-in from Debian 12's packages (${RUNTIME_PACKAGES[*]})"
    local root="$work/runtime"
    mkdir -p "$root"
    unpack "$root" "${RUNTIME_PACKAGES[@]}"
    # What ca-certificates' and base-files' scripts would make, without a
    # shell in the image to run them.
    mkdir -p "$root/etc/ssl/certs" "$root/tmp" "$root/home/nonroot" "$root/root"
    cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
    chmod 1777 "$root/tmp"
    printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$root/etc/passwd"
    printf 'root:x:0:\nnobody:x:65534:\ntty:x:5:\nstaff:x:50:\nnonroot:x:65532:\n' >"$root/etc/group"
    chown 65532:65532 "$root/home/nonroot"
    # Documentation, manuals, locales and the maintainer scripts' helpers are
    # not part of distroless either; nor is any program.
    rm -rf "${root:?}/usr/share/doc" "$root/usr/share/man" "$root/usr/share/lintian" "$root/usr/share/locale" \
      "$root/usr/share/ca-certificates" "${root:?}/usr/sbin" "${root:?}/usr/bin" "${root:?}/sbin" "${root:?}/bin" "$root/etc/update-motd.d"
    (cd "$root" && tar --numeric-owner -cf - .) | docker import - "$tag" >/dev/null
    log "runtime stand-in $tag: $(docker image inspect "$tag" --format '{{.Size}}' | numfmt --to=iec) "
  fi
  echo "$tag"
}

builder_standin() {
  log "$BUILDER cannot be pulled: building the binary with this machine's toolchain ($(cargo --version))"
  cargo build --release --locked >&2
  local bin="${CARGO_TARGET_DIR:-target}/release/assumed-role-operator"
  local root="$work/builder" tag
  mkdir -p "$root/out" "$root/bin" "$root/src"
  unpack "$root" busybox-static
  for tool in sh [ test; do ln -sf busybox "$root/bin/$tool"; done
  install -m 0755 "$bin" "$root/out/assumed-role-operator"
  tag="aro-standin/builder:$(sha256sum "$bin" | cut -c1-12)"
  docker image inspect "$tag" >/dev/null 2>&1 \
    || (cd "$root" && tar --numeric-owner -cf - .) | docker import - "$tag" >/dev/null
  echo "$tag"
}

started=$SECONDS
args=()
base=$RUNTIME
if have "$RUNTIME"; then log "runtime base: $RUNTIME"; else base=$(runtime_standin); args+=(--build-arg "RUNTIME=$base"); fi
builder=""
if have "$BUILDER"; then log "build base: $BUILDER"; else builder=$(builder_standin); args+=(--build-arg "BUILDER=$builder"); fi
if ! docker build --quiet "${args[@]}" --tag "$IMAGE" . >"$work/build.log" 2>&1; then
  cat "$work/build.log" >&2
  die "docker build failed"
fi
log "built $IMAGE in $((SECONDS - started)) s: $(docker image inspect "$IMAGE" --format '{{.Size}}' | numfmt --to=iec)"
# The builder stand-ins of earlier binaries, and the layers no tag names,
# would pile up in the engine's store (vfs copies every layer whole).
for old in $(docker images --format '{{.Repository}}:{{.Tag}}' aro-standin/builder); do
  [[ $old == "${builder:-}" ]] || docker rmi -f "$old" >/dev/null 2>&1 || true
done
docker image prune -f >/dev/null 2>&1 || true
if [[ -n $own_engine ]]; then
  archive="${IMAGE_ARCHIVE:-$ROOT/target/image.tar}"
  mkdir -p "$(dirname "$archive")"
  docker save -o "$archive" "$IMAGE"
  log "saved $IMAGE to $archive (docker load -i, kind load image-archive, or push it with skopeo)"
fi
# For the tests (eval "$(hack/image.sh)"): the image and the base it is on.
echo "export ARO_IMAGE=$IMAGE ARO_IMAGE_BASE=$base"
