#!/usr/bin/env bash
# JupyterHub images for the kind tier, built without a registry FROM the local Debian base
# (scripts/images.sh --base-only):
#
#   scripts/hub-images.sh          # builds what is missing; the last two lines on stdout are
#                                  #   hub=<tag>
#                                  #   singleuser=<tag>
#
#   gpu-queue-hub:jh<ver>-ks<ver>-chp<ver>-<hash>  (tools/kind-hub/hub.Dockerfile): what
#     zero-to-jupyterhub 4.x's k8s-hub and proxy images hold, in one image: JupyterHub,
#     KubeSpawner, jupyterhub-idle-culler, PyYAML in the venv /opt/hub, and configurable-http-proxy
#     (npm) on Debian's Node.js. Runs as uid 1000 in /srv/jupyterhub; the proxy Deployment runs it
#     with the command `configurable-http-proxy ...`;
#   gpu-queue-singleuser:jh<ver>-lab<ver>-<hash>  (tools/kind-hub/singleuser.Dockerfile):
#     jupyterhub-singleuser, JupyterLab and ipykernel in the venv /opt/singleuser, user jovyan
#     (1000:100), home /home/jovyan, CMD jupyterhub-singleuser, JUPYTER_PORT=8888.
#
# Versions are pinned in tools/kind-hub/versions.env and passed as build arguments. <hash> is 12
# hex digits of the Dockerfile's content, the base's tag and image id and the versions the image
# uses. An image is skipped while the engine has its tag, else `docker load`ed from
# ${GQ_CACHE}/images/<repo>_<tag>.tar, else built (legacy builder, DOCKER_BUILDKIT=0, with
# --network host: apt, PyPI and npm are reached from inside the build), smoke-tested, and saved
# there with `docker save`. Smoke tests (as the image's non-root user, read-only root):
#   hub: `jupyterhub --version` is the pin, kubespawner/jupyterhub_idle_culler/yaml import at their
#     pins, the culler's CLI answers, `configurable-http-proxy --version` (as uid 65534, as z2jh);
#   singleuser: `jupyterhub-singleuser --version` and `jupyter lab --version` are the pins, then
#     `jupyter lab` is started in the container and GET /api must answer with a version and the
#     python3 kernelspec be listed within SMOKE_SECONDS (default 60); then a python3 kernel
#     (jupyter_client, same container) must run `print(6 * 7)`.
# Progress with timings goes to stderr as "[hub-images HH:MM:SS] ..." lines; on failure the build
# log's tail and an "error:" line, exit status non-zero (a built image that fails its smoke test
# is removed again).
#
# Environment: GQ_CACHE (default ~/.cache/gpu-queue), BUILD_TIMEOUT (seconds per build, default
# 1800), SMOKE_SECONDS (default 60).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

say() { printf '[hub-images %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { say "error: $*"; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }
mb() { docker image inspect --format '{{.Size}}' "$1" | awk '{ printf "%.0f MB", $1 / 1e6 }'; }

case "${1:-}" in
  "") ;;
  -h | --help) sed -n '2,35p' "$0"; exit 0 ;;
  *) die "unknown argument: $1 (try --help)" ;;
esac

gq="${GQ_CACHE:-${HOME}/.cache/gpu-queue}"
cache="${gq}/images"
static="${repo}/tools/kind-hub"
versions="${static}/versions.env"
build_timeout="${BUILD_TIMEOUT:-1800}"
smoke_s="${SMOKE_SECONDS:-60}"
export DOCKER_BUILDKIT=0

[ -r "$versions" ] || die "${versions} missing"
# shellcheck source=/dev/null
. "$versions"
hub_pins=(JUPYTERHUB_VERSION KUBESPAWNER_VERSION IDLE_CULLER_VERSION PYYAML_VERSION CHP_VERSION)
singleuser_pins=(JUPYTERHUB_VERSION JUPYTERLAB_VERSION IPYKERNEL_VERSION)
for v in "${hub_pins[@]}" "${singleuser_pins[@]}"; do
  [ -n "${!v:-}" ] || die "${v} is not set in ${versions#"${repo}"/}"
done

work=$(mktemp -d)
smoke_ctr=""
stop_smoke() {
  [ -z "$smoke_ctr" ] || docker rm -f "$smoke_ctr" >/dev/null 2>&1 || true
  smoke_ctr=""
}
cleanup() {
  stop_smoke
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$cache" "${work}/ctx"

t_all=$(now)
docker info >/dev/null 2>&1 || { scripts/docker.sh >&2 || die "no Docker engine (scripts/docker.sh failed)"; }
docker info >/dev/null 2>&1 || die "docker info does not answer for $(id -un)"
t=$(now)
base=$(scripts/images.sh --base-only 2>"${work}/images.log") \
  || { cat "${work}/images.log" >&2; die "scripts/images.sh --base-only failed"; }
[ -n "$base" ] && docker image inspect "$base" >/dev/null 2>&1 || die "base image '${base}' missing"
base_id=$(docker image inspect --format '{{.Id}}' "$base")
say "base ${base} ($(mb "$base")) in $(since "$t")"

# The tag's hash: the Dockerfile, the base and the pins the image uses.
image_key() { # dockerfile pin-names...
  local dockerfile=$1 v
  shift
  {
    printf 'dockerfile=%s\n' "$(sha256sum <"$dockerfile" | cut -c1-64)"
    printf 'base=%s\nbase_id=%s\n' "$base" "$base_id"
    for v in "$@"; do printf '%s=%s\n' "$v" "${!v}"; done
  } | sha256sum | cut -c1-12
}

# Present in the engine, loaded from the cache, or built + smoke-tested + cached.
ensure_image() { # name image dockerfile smoke-function pin-names...
  local name=$1 image=$2 dockerfile=$3 smoke=$4 v t2
  shift 4
  local tarball="${cache}/${image//:/_}.tar" blog="${cache}/${image%%:*}-build.log"
  local args=(--build-arg "BASE_IMAGE=${base}")
  for v in "$@"; do args+=(--build-arg "${v}=${!v}"); done
  t=$(now)
  if docker image inspect "$image" >/dev/null 2>&1; then
    say "${name} ${image}: present ($(mb "$image"))"
  elif [ -s "$tarball" ]; then
    docker load -i "$tarball" >/dev/null || die "docker load -i ${tarball} failed (delete it to rebuild)"
    docker image inspect "$image" >/dev/null 2>&1 || die "${tarball} does not hold ${image} (delete it to rebuild)"
    say "${name} ${image}: loaded from ${tarball} ($(mb "$image")) in $(since "$t")"
  else
    say "${name} ${image}: building FROM ${base} (${dockerfile#"${repo}"/}; log ${blog})"
    if ! timeout "$build_timeout" docker build --network host "${args[@]}" -t "$image" \
        -f "$dockerfile" "${work}/ctx" >"$blog" 2>&1; then
      tail -n 30 "$blog" >&2
      die "docker build of ${image} failed or timed out after ${build_timeout}s (log: ${blog})"
    fi
    say "${name} built in $(since "$t"), $(mb "$image")"
    t2=$(now)
    if ! "$smoke" "$image"; then
      stop_smoke
      docker rmi "$image" >/dev/null 2>&1 || say "warning: docker rmi ${image} failed"
      die "${name} ${image}: smoke test failed (image removed again)"
    fi
    say "${name} smoke test passed in $(since "$t2")"
    t2=$(now)
    docker save -o "${tarball}.tmp" "$image" || die "docker save ${image} failed"
    mv "${tarball}.tmp" "$tarball"
    say "${name} cached ${tarball} ($(du -h "$tarball" | cut -f1)) in $(since "$t2")"
  fi
  # Older tarballs of this image (other keys) are dead weight.
  find "$cache" -maxdepth 1 -name "${image%%:*}_*.tar" ! -name "${tarball##*/}" -delete 2>/dev/null || true
}

# Run a command in a throw-away container of the image, read-only, as the given user.
run_ro() { # user image command...
  local user=$1 image=$2
  shift 2
  docker run --rm --read-only --network none --user "$user" "$image" "$@"
}

expect() { # what got want
  [ "$2" = "$3" ] && return 0
  say "${1}: got '${2}', want '${3}'"
  return 1
}

smoke_hub() {
  local image=$1 out
  out=$(docker run --rm --network none "$image" id -u) || return 1
  expect "hub image user" "$out" 1000 || return 1
  out=$(run_ro 1000:1000 "$image" jupyterhub --version) || return 1
  expect "jupyterhub --version" "$out" "$JUPYTERHUB_VERSION" || return 1
  out=$(run_ro 1000:1000 "$image" python -c '
import importlib.metadata as md, kubespawner, jupyterhub_idle_culler, yaml
print(" ".join(md.version(d) for d in ("jupyterhub-kubespawner", "jupyterhub-idle-culler", "PyYAML")))') || return 1
  expect "kubespawner/idle-culler/pyyaml versions" "$out" \
    "${KUBESPAWNER_VERSION} ${IDLE_CULLER_VERSION} ${PYYAML_VERSION}" || return 1
  # z2jh's culler service runs `python3 -m jupyterhub_idle_culler`.
  run_ro 1000:1000 "$image" python3 -m jupyterhub_idle_culler --help >/dev/null || return 1
  out=$(run_ro 65534:65534 "$image" configurable-http-proxy --version) || return 1
  expect "configurable-http-proxy --version" "$out" "$CHP_VERSION" || return 1
  say "  hub: uid 1000, jupyterhub ${JUPYTERHUB_VERSION}, kubespawner ${KUBESPAWNER_VERSION}," \
      "idle-culler ${IDLE_CULLER_VERSION}, pyyaml ${PYYAML_VERSION}; configurable-http-proxy ${out} as uid 65534"
}

smoke_singleuser() {
  local image=$1 out su deadline server specs
  out=$(docker run --rm --network none "$image" id -u -n) || return 1
  expect "singleuser image user" "$out" jovyan || return 1
  out=$(docker run --rm --network none "$image" sh -c 'echo "$(id -u):$(id -g) $(pwd) ${JUPYTER_PORT}"') || return 1
  expect "singleuser uid:gid cwd JUPYTER_PORT" "$out" "1000:100 /home/jovyan 8888" || return 1
  su=$(run_ro 1000:100 "$image" jupyterhub-singleuser --version) || return 1
  expect "jupyterhub-singleuser --version" "$su" "$JUPYTERHUB_VERSION" || return 1
  out=$(run_ro 1000:100 "$image" jupyter lab --version) || return 1
  expect "jupyter lab --version" "$out" "$JUPYTERLAB_VERSION" || return 1
  # A live server: read-only root, the home as a tmpfs owned by jovyan (in the cluster: a volume).
  smoke_ctr="gq-singleuser-smoke-$$"
  docker rm -f "$smoke_ctr" >/dev/null 2>&1 || true
  docker run -d --name "$smoke_ctr" --read-only --network none --user 1000:100 \
      --tmpfs /tmp --tmpfs /home/jovyan:uid=1000,gid=100,mode=0755 "$image" \
      jupyter lab --ip=127.0.0.1 --port=8888 --ServerApp.token=t --no-browser >/dev/null || return 1
  deadline=$(( $(date +%s) + smoke_s ))
  # The probe: GET /api answers with the server's version and the python3 kernelspec is listed.
  local probe='
import json, sys, urllib.request
def get(path):
    req = urllib.request.Request("http://127.0.0.1:8888" + path, headers={"Authorization": "token t"})
    with urllib.request.urlopen(req, timeout=3) as r:
        return json.load(r)
version = get("/api")["version"]
specs = sorted(get("/api/kernelspecs")["kernelspecs"])
print("ok" if "python3" in specs else "no-python3-kernelspec", version, ",".join(specs))
'
  while :; do
    out=$(docker exec "$smoke_ctr" python -c "$probe" 2>&1) || true
    case "$out" in "ok "*) break ;; esac
    if [ "$(docker inspect --format '{{.State.Running}}' "$smoke_ctr" 2>/dev/null)" != true ]; then
      docker logs --tail 30 "$smoke_ctr" >&2 2>&1 || true
      say "jupyter lab exited in the container"
      return 1
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      docker logs --tail 30 "$smoke_ctr" >&2 2>&1 || true
      say "last probe: ${out}"
      say "jupyter lab did not answer GET /api with a version (and a python3 kernelspec) within ${smoke_s}s"
      return 1
    fi
    sleep 1
  done
  read -r _ server specs <<<"$out"
  # The kernel itself: started by jupyter_client in the same container, it must run code.
  out=$(docker exec "$smoke_ctr" timeout "$smoke_s" python -c '
from jupyter_client.manager import start_new_kernel
km, kc = start_new_kernel(kernel_name="python3", startup_timeout=50)
got = []
try:
    reply = kc.execute_interactive("print(6 * 7)", timeout=30,
        output_hook=lambda m: got.append(m["content"].get("text", "")) if m["msg_type"] == "stream" else None)
    print(reply["content"]["status"], "".join(got).strip())
finally:
    kc.stop_channels()
    km.shutdown_kernel(now=True)
' 2>"${work}/kernel.err") || true
  if [ "$out" != "ok 42" ]; then
    tail -n 20 "${work}/kernel.err" >&2
    say "python3 kernel: '${out}', want 'ok 42'"
    return 1
  fi
  stop_smoke
  say "  singleuser: jovyan 1000:100, jupyterhub-singleuser --version ${su}, jupyter lab ${JUPYTERLAB_VERSION};" \
      "live read-only server: /api version ${server}, kernelspecs ${specs}; python3 kernel ran print(6 * 7)"
}

hub_key=$(image_key "${static}/hub.Dockerfile" "${hub_pins[@]}")
hub_image="gpu-queue-hub:jh${JUPYTERHUB_VERSION}-ks${KUBESPAWNER_VERSION}-chp${CHP_VERSION}-${hub_key}"
su_key=$(image_key "${static}/singleuser.Dockerfile" "${singleuser_pins[@]}")
su_image="gpu-queue-singleuser:jh${JUPYTERHUB_VERSION}-lab${JUPYTERLAB_VERSION}-${su_key}"

ensure_image hub "$hub_image" "${static}/hub.Dockerfile" smoke_hub "${hub_pins[@]}"
ensure_image singleuser "$su_image" "${static}/singleuser.Dockerfile" smoke_singleuser "${singleuser_pins[@]}"

say "done in $(since "$t_all")"
printf 'hub=%s\nsingleuser=%s\n' "$hub_image" "$su_image"
