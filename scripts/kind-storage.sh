#!/usr/bin/env bash
# Dynamic PVCs on a registry-free kind cluster: rancher's local-path-provisioner (what kind itself
# ships as its default storage), built here from its Go module instead of pulled.
#
#   scripts/kind-storage.sh --build              # binary + image (cached); prints the image tag last
#   scripts/kind-storage.sh --install CLUSTER    # --build, load into kind cluster CLUSTER, apply,
#                                                # wait for the provisioner to be Ready
#
# Steps (each timed, as "[kind-storage HH:MM:SS] ..." lines on stderr):
#   1. the binary: `go install github.com/rancher/local-path-provisioner@LPP_VERSION` (CGO_ENABLED=0,
#      GOTOOLCHAIN=local, -trimpath, -ldflags '-s -w -X main.VERSION=...') into
#      ~/.cache/gpu-queue/local-path-provisioner-<version>/, once per version;
#   2. the image gpu-queue-local-path:<version>-<hash of its inputs: version, base, Dockerfile,
#      binary>: the binary on the local Debian base (scripts/images.sh --base-only), legacy builder
#      (DOCKER_BUILDKIT=0), skipped while the engine has the tag. The same base is the helper pod
#      image (its /bin/sh, mkdir and rm run the setup/teardown scripts);
#   3. (--install) `kind load docker-image` of the provisioner image into CLUSTER's nodes, and of
#      the base where a node's containerd lacks it (scripts/kind-up.sh loads it already);
#   4. (--install) the node image's provisioner-less StorageClass `standard` is deleted (a class's
#      provisioner is immutable), then tools/kind-e2e/local-path-storage.yaml is applied with the
#      two image names filled in: namespace local-path-storage, RBAC, ConfigMap local-path-config
#      (nodes' /var/local-path-provisioner), Deployment local-path-provisioner (pullPolicy Never)
#      and the default class `standard` (rancher.io/local-path, WaitForFirstConsumer, Delete);
#   5. (--install) waits for the Deployment (deadline WAIT_SECONDS, default 180); on failure
#      `kubectl describe` and the provisioner's logs are printed.
#
# The cluster is the one KUBECONFIG points at, which must be kind-CLUSTER (its current context);
# without KUBECONFIG, `kind get kubeconfig --name CLUSTER` is used. Exit status non-zero with an
# "error:" line on the first failed step.
#
# Environment: LPP_VERSION (default v0.0.30), WAIT_SECONDS (default 180), KUBECONFIG,
# GQ_CACHE (default ~/.cache/gpu-queue; kind and kubectl are taken from its bin/).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

say() { printf '[kind-storage %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { say "error: $*"; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }

mode=""
cluster=""
case "${1:-}" in
  --build) mode=build; [ "$#" -eq 1 ] || die "--build takes no argument (try --help)" ;;
  --install)
    mode=install
    [ "$#" -eq 2 ] && [ -n "$2" ] || die "usage: $0 --install CLUSTER_NAME (try --help)"
    cluster=$2
    ;;
  -h | --help) sed -n '2,32p' "$0"; exit 0 ;;
  "") die "missing argument: --build or --install CLUSTER_NAME (try --help)" ;;
  *) die "unknown argument: $1 (try --help)" ;;
esac

gq="${GQ_CACHE:-${HOME}/.cache/gpu-queue}"
bin="${gq}/bin"
export PATH="${bin}:${PATH}"
version="${LPP_VERSION:-v0.0.30}"
module=github.com/rancher/local-path-provisioner
repo_name=gpu-queue-local-path
manifest="${repo}/tools/kind-e2e/local-path-storage.yaml"
namespace=local-path-storage
deploy=local-path-provisioner
wait_s="${WAIT_SECONDS:-180}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export DOCKER_BUILDKIT=0

t_all=$(now)

# --- 1. the binary ----------------------------------------------------------------------------
lpp_dir="${gq}/local-path-provisioner-${version}"
lpp="${lpp_dir}/local-path-provisioner"
t=$(now)
if [ -x "$lpp" ]; then
  say "1. ${module}@${version}: cached (${lpp})"
else
  command -v go >/dev/null || die "no go on PATH (needed to build ${module}@${version})"
  say "1. ${module}@${version}: go install ($(go env GOVERSION), CGO_ENABLED=0, -trimpath)"
  rm -rf "${lpp_dir}.tmp" && mkdir -p "${lpp_dir}.tmp"
  if ! GOBIN="${lpp_dir}.tmp" CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-trimpath \
      go install -ldflags "-s -w -X main.VERSION=${version}" "${module}@${version}" >"${work}/go.log" 2>&1; then
    tail -n 25 "${work}/go.log" >&2
    rm -rf "${lpp_dir}.tmp"
    die "go install ${module}@${version} failed"
  fi
  rm -rf "$lpp_dir" && mv "${lpp_dir}.tmp" "$lpp_dir"
  say "1. built in $(since "$t"), $(du -m "$lpp" | cut -f1) MB"
fi
"$lpp" --version >/dev/null 2>&1 || die "${lpp} --version does not run (delete ${lpp_dir} to rebuild)"

# --- 2. the image -----------------------------------------------------------------------------
t=$(now)
docker info >/dev/null 2>&1 || { scripts/docker.sh >&2 || die "no Docker engine (scripts/docker.sh failed)"; }
base=$(scripts/images.sh --base-only 2>"${work}/images.log") \
  || { cat "${work}/images.log" >&2; die "scripts/images.sh --base-only failed"; }
[ -n "$base" ] && docker image inspect "$base" >/dev/null 2>&1 || die "base image '${base}' missing"
base_id=$(docker image inspect --format '{{.Id}}' "$base")
cat >"${work}/Dockerfile" <<'EOF'
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
COPY local-path-provisioner /usr/local/bin/local-path-provisioner
ENTRYPOINT ["/usr/local/bin/local-path-provisioner"]
EOF
key=$(printf '%s\n' "module=${module}@${version}" "base=${base}" "base_id=${base_id}" \
        "dockerfile=$(sha256sum <"${work}/Dockerfile" | cut -c1-64)" "binary=$(sha256sum <"$lpp" | cut -c1-64)" \
      | sha256sum | cut -c1-12)
image="${repo_name}:${version}-${key}"
if docker image inspect "$image" >/dev/null 2>&1; then
  say "2. image ${image}: present"
else
  cp "$lpp" "${work}/local-path-provisioner"
  docker build --build-arg "BASE_IMAGE=${base}" -t "$image" \
      --label "org.opencontainers.image.source=https://${module}" \
      --label "org.opencontainers.image.version=${version}" \
      "$work" >"${work}/build.log" 2>&1 \
    || { tail -n 20 "${work}/build.log" >&2; die "docker build of ${image} failed"; }
  docker run --rm --entrypoint sh "$image" -c 'command -v mkdir rm >/dev/null && local-path-provisioner --version' \
    >"${work}/smoke.log" 2>&1 || { cat "${work}/smoke.log" >&2; die "${image}: smoke test failed"; }
  say "2. image ${image} FROM ${base} built in $(since "$t") ($(tail -n 1 "${work}/smoke.log"))"
fi
say "2. size $(docker image inspect --format '{{.Size}}' "$image" | awk '{ printf "%.0f MB", $1 / 1e6 }')" \
    "(base $(docker image inspect --format '{{.Size}}' "$base" | awk '{ printf "%.0f MB", $1 / 1e6 }'))"

if [ "$mode" = build ]; then
  say "done in $(since "$t_all")"
  printf '%s\n' "$image"
  exit 0
fi

# --- 3. images into the nodes -----------------------------------------------------------------
for tool in kind kubectl; do
  command -v "$tool" >/dev/null || die "${tool} not found (expected in ${bin}; tools/build-kind.sh / tools/build.sh)"
done
t=$(now)
kind get clusters 2>/dev/null | grep -qx "$cluster" || die "no kind cluster named ${cluster} (kind get clusters)"
if [ -z "${KUBECONFIG:-}" ]; then
  kind get kubeconfig --name "$cluster" >"${work}/kubeconfig" || die "kind get kubeconfig --name ${cluster} failed"
  export KUBECONFIG="${work}/kubeconfig"
fi
context=$(kubectl config current-context 2>/dev/null || true)
[ "$context" = "kind-${cluster}" ] \
  || die "KUBECONFIG (${KUBECONFIG}) has current context '${context}', not kind-${cluster}"
mapfile -t nodes < <(kind get nodes --name "$cluster")
[ "${#nodes[@]}" -gt 0 ] || die "kind cluster ${cluster} has no nodes"
have_base=1
for n in "${nodes[@]}"; do
  docker exec "$n" crictl images -o json 2>/dev/null | jq -r '.images[].repoTags[]' \
    | grep -qx "docker.io/library/${base}" || have_base=0
done
load=("$image")
[ "$have_base" -eq 1 ] || load+=("$base")
kind load docker-image --name "$cluster" "${load[@]}" >"${work}/kind-load.log" 2>&1 \
  || { cat "${work}/kind-load.log" >&2; die "kind load docker-image ${load[*]} failed"; }
for n in "${nodes[@]}"; do
  have=$(docker exec "$n" crictl images -o json 2>/dev/null | jq -r '.images[].repoTags[]' || true)
  for img in "$image" "$base"; do
    grep -qx "docker.io/library/${img}" <<<"$have" || die "${img} not in ${n}'s containerd after kind load"
  done
done
say "3. ${load[*]} loaded into ${nodes[*]} in $(since "$t")$([ "$have_base" -eq 1 ] && echo " (base already there)")"

# --- 4. the manifest --------------------------------------------------------------------------
t=$(now)
current=$(kubectl get storageclass standard -o jsonpath='{.provisioner}' 2>/dev/null || true)
if [ -n "$current" ] && [ "$current" != rancher.io/local-path ]; then
  kubectl delete storageclass standard --wait >/dev/null || die "could not delete StorageClass standard (${current})"
  say "4. deleted StorageClass standard (provisioner ${current})"
fi
sed -e "s|@PROVISIONER_IMAGE@|${image}|g" -e "s|@HELPER_IMAGE@|${base}|g" "$manifest" >"${work}/storage.yaml"
! grep -q '@[A-Z_]*@' "${work}/storage.yaml" || die "unreplaced placeholder in ${manifest}"
kubectl apply -f "${work}/storage.yaml" >"${work}/apply.log" 2>&1 \
  || { cat "${work}/apply.log" >&2; die "kubectl apply of ${manifest##*/} failed"; }
sed 's/^/    /' "${work}/apply.log" >&2
others=$(kubectl get storageclass -o json | jq -r '.items[] | select(.metadata.name != "standard")
  | select(.metadata.annotations["storageclass.kubernetes.io/is-default-class"] == "true") | .metadata.name')
[ -z "$others" ] || say "   warning: other default StorageClasses: ${others}"
say "4. applied ${manifest#"${repo}"/} in $(since "$t")"

# --- 5. the provisioner Ready -----------------------------------------------------------------
t=$(now)
if ! kubectl -n "$namespace" rollout status "deploy/${deploy}" --timeout="${wait_s}s" >"${work}/rollout.log" 2>&1; then
  cat "${work}/rollout.log" >&2
  say "--- diagnostics ---"
  kubectl -n "$namespace" describe deploy "$deploy" >&2 2>&1 || true
  kubectl -n "$namespace" describe pods -l "app=${deploy}" >&2 2>&1 || true
  kubectl -n "$namespace" logs -l "app=${deploy}" --all-containers --prefix --tail=40 >&2 2>&1 || true
  kubectl -n "$namespace" get events --sort-by=.lastTimestamp 2>&1 | tail -n 20 >&2 || true
  die "deploy/${deploy} not Ready within ${wait_s}s"
fi
pod=$(kubectl -n "$namespace" get pods -l "app=${deploy}" -o json \
  | jq -r '[.items[] | select(.metadata.deletionTimestamp == null)][0] | "\(.metadata.name) on \(.spec.nodeName)"')
say "5. deploy/${deploy} Ready in $(since "$t") (pod ${pod})"
# The controller logs this once it watches claims (the Deployment has no readiness probe).
deadline=$(( $(date +%s) + 30 ))
# grep without -q reads the whole log: with -q it stops at the match, kubectl gets SIGPIPE, and
# pipefail turns a long log's match into a failure.
until kubectl -n "$namespace" logs "deploy/${deploy}" 2>/dev/null | grep 'Started provisioner controller' >/dev/null; do
  if [ "$(date +%s)" -ge "$deadline" ]; then
    kubectl -n "$namespace" logs "deploy/${deploy}" --tail=30 >&2 2>&1 || true
    die "deploy/${deploy} is Ready but its log has no 'Started provisioner controller' after 30s"
  fi
  sleep 1
done
say "5. provisioner controller started; StorageClass standard -> $(kubectl get storageclass standard -o jsonpath='{.provisioner}')"
say "done in $(since "$t_all")"
printf '%s\n' "$image"
