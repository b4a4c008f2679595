#!/usr/bin/env bash
# Images without a registry: a local Python base image, then the product image on it.
#
#   scripts/images.sh              # base (cached) + gpu-queue:dev from the repo's Dockerfile
#   scripts/images.sh --base-only  # only the base; prints its tag on stdout
#
# Where no container registry answers, every FROM must be an image made here. The base is a
# Debian root made with debootstrap (minbase + python3, python3-venv, python3-pip,
# ca-certificates), with a `python` symlink and the host's CA bundle copied in (pip inside a build
# reaches the package index only if the container trusts the CAs the host trusts), imported with
# `docker import`. Its tag is a key of its inputs, gpu-queue-base:<suite>-py<ver>-<hash>, and it is
# cached twice: skipped while the engine has the tag, and `docker load`ed from
# $HOME/.cache/gpu-queue/images/<tag>.tar (written by `docker save`) when a new or restarted
# engine lacks it, so debootstrap runs only when the inputs change.
#
# The product image is built by the legacy builder (DOCKER_BUILDKIT=0: BuildKit would first pull
# the Dockerfile's `# syntax=` frontend image from a registry) with the base as PYTHON_IMAGE.
#
# Environment: IMAGE (default gpu-queue:dev), DEBIAN_SUITE (default bookworm), DEBIAN_MIRROR
# (default: debootstrap's own), HOST_CA_BUNDLE (default /etc/ssl/certs/ca-certificates.crt).
# Needs a running engine: scripts/docker.sh is run first (it does nothing when one answers).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '[images] %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }

base_only=0
case "${1:-}" in
  "") ;;
  --base-only) base_only=1 ;;
  -h | --help) sed -n '2,21p' "$0"; exit 0 ;;
  *) die "unknown argument: $1 (try --help)" ;;
esac

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
image="${IMAGE:-gpu-queue:dev}"
suite="${DEBIAN_SUITE:-bookworm}"
mirror="${DEBIAN_MIRROR:-}"
ca_bundle="${HOST_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
cache="${HOME}/.cache/gpu-queue/images"
packages="python3,python3-venv,python3-pip,ca-certificates"
# Bump to rebuild the base when this recipe changes in a way the key below cannot see.
recipe=1

t_all=$(now)
scripts/docker.sh || die "no Docker engine (scripts/docker.sh failed)"
docker_sudo=""
command docker info >/dev/null 2>&1 || docker_sudo="$sudo"
# docker, or sudo docker where the socket is root's only (sudo keeps DOCKER_BUILDKIT for the build).
dk() {
  if [ -n "$docker_sudo" ]; then
    sudo env "DOCKER_BUILDKIT=${DOCKER_BUILDKIT:-1}" docker "$@"
  else
    docker "$@"
  fi
}

# --- the base image ---------------------------------------------------------------------------
case "$suite" in
  bookworm) py=3.11 ;;
  trixie) py=3.13 ;;
  *) die "DEBIAN_SUITE=${suite}: unknown Python version (add it here)" ;;
esac
[ -r "$ca_bundle" ] || die "host CA bundle ${ca_bundle} not readable (set HOST_CA_BUNDLE)"
key=$(printf '%s\n' "recipe=${recipe}" "suite=${suite}" "variant=minbase" "include=${packages}" \
        "mirror=${mirror}" "ca=$(sha256sum <"$ca_bundle" | cut -c1-64)" | sha256sum | cut -c1-12)
base="gpu-queue-base:${suite}-py${py//./}-${key}"
tarball="${cache}/${base//:/_}.tar"

rootfs=""
cleanup() {
  [ -n "$rootfs" ] && [ -d "$rootfs" ] || return 0
  # debootstrap mounts proc and sys inside the target; never rm -rf through a mount.
  awk -v d="$rootfs" 'index($2, d) == 1 { print $2 }' /proc/mounts | sort -r \
    | while read -r m; do $sudo umount -l "$m" || true; done
  $sudo rm -rf --one-file-system "$rootfs"
}
trap cleanup EXIT

t=$(now)
if dk image inspect "$base" >/dev/null 2>&1; then
  say "base ${base}: present"
elif [ -s "$tarball" ]; then
  say "base ${base}: loading ${tarball}"
  dk load -i "$tarball" >/dev/null || die "docker load -i ${tarball} failed (delete it to rebuild)"
  say "base loaded in $(since "$t")"
else
  if ! command -v debootstrap >/dev/null 2>&1 && [ ! -x /usr/sbin/debootstrap ]; then
    say "installing debootstrap (Debian package)"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq debootstrap >/dev/null \
      || die "apt-get install debootstrap failed"
  fi
  mkdir -p "$cache"
  rootfs=$(mktemp -d "${cache}/rootfs.XXXXXX")
  say "base ${base}: debootstrap --variant=minbase ${suite} (${packages})"
  dlog="${cache}/debootstrap.log"
  # shellcheck disable=SC2086  # $mirror is empty or one word
  if ! $sudo env PATH="/usr/sbin:/sbin:${PATH}" debootstrap --variant=minbase \
      --include="$packages" "$suite" "$rootfs" $mirror >"$dlog" 2>&1; then
    tail -n 20 "$dlog" >&2
    die "debootstrap failed (log: ${dlog})"
  fi
  say "debootstrap done in $(since "$t")"
  [ -x "${rootfs}/usr/bin/python${py}" ] || die "the base has no python${py} (suite ${suite})"
  $sudo ln -sf python3 "${rootfs}/usr/bin/python"
  $sudo install -m 0644 "$ca_bundle" "${rootfs}/etc/ssl/certs/ca-certificates.crt"
  # apt's downloaded packages and lists are not part of an image.
  $sudo rm -rf "${rootfs}"/var/cache/apt/archives/*.deb "${rootfs}"/var/lib/apt/lists/* \
    "${rootfs}"/var/log/*.log "${rootfs}"/tmp/* 2>/dev/null || true
  t2=$(now)
  $sudo tar -C "$rootfs" --numeric-owner -c . \
    | dk import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["python3"]' \
        --message "debootstrap --variant=minbase --include=${packages} ${suite}" \
        - "$base" >/dev/null \
    || die "docker import of the base failed"
  say "imported in $(since "$t2")"
  t2=$(now)
  dk save -o "${tarball}.tmp" "$base" || die "docker save ${base} failed"
  mv "${tarball}.tmp" "$tarball"
  say "cached ${tarball} ($(du -h "$tarball" | cut -f1)) in $(since "$t2")"
  cleanup
  rootfs=""
  say "base built in $(since "$t")"
fi
# Older tarballs of this base (other keys) are dead weight.
find "$cache" -maxdepth 1 -name 'gpu-queue-base_*.tar' ! -name "${tarball##*/}" -delete 2>/dev/null || true

if [ "$base_only" -eq 1 ]; then
  printf '%s\n' "$base"
  exit 0
fi

# --- the product image ------------------------------------------------------------------------
t=$(now)
say "building ${image} from Dockerfile (PYTHON_IMAGE=${base})"
blog="${cache}/build.log"
mkdir -p "$cache"
if ! DOCKER_BUILDKIT=0 dk build --build-arg "PYTHON_IMAGE=${base}" -t "$image" . >"$blog" 2>&1; then
  tail -n 30 "$blog" >&2
  die "docker build failed (log: ${blog})"
fi
say "built ${image} in $(since "$t") (log: ${blog})"

# Smoke: the CLI answers, read-only, as the image's fixed non-root user.
uid=$(dk run --rm --entrypoint id "$image" -u) || die "docker run ${image} failed"
[ "$uid" = "10001" ] || die "${image} runs as uid ${uid}, not 10001"
dk run --rm --read-only "$image" --help >/dev/null || die "${image}: gpu-queue --help failed"
say "${image}: gpu-queue --help works as uid ${uid}, read-only;" \
    "size $(dk image inspect --format '{{.Size}}' "$image" | awk '{ printf "%.0f MB", $1 / 1e6 }')"
say "done in $(since "$t_all")"
