#!/usr/bin/env bash
# The kind tier: gpu-queue as its users run it. The image, installed by its chart with its hooks,
# in a kind cluster whose worker advertises nvidia.com/gpu: 8; then tests/e2e (the seed scenarios
# of tests/scenarios.py, the leader's pod deleted, a helm upgrade to a new image tag, the Redis pod
# deleted, the certificate hook re-run) and the seed story with a real JupyterHub and JupyterLab in
# headless Chromium (scripts/kind-hub.sh installs the hub; screenshots under the artifacts
# directory), each printing what it measured.
#
#   tests/e2e/run.sh            build what is missing, create the cluster, install, test, delete it
#   KEEP=1 tests/e2e/run.sh     leave the cluster up afterwards (a second run reuses it)
#   REQUIRE_KIND=1 ...          a reason to skip is a failure (CI sets it)
#
# Needs no registry: tools/build-kind.sh builds kind and the node's Kubernetes binaries from Go
# modules, scripts/kind-up.sh builds the images (a debootstrap Debian base, the product, Redis,
# the kind node image, the local-path storage provisioner) and installs the chart. All of it is
# cached by version under ~/.cache/gpu-queue (GQ_CACHE); the first run takes about 30 minutes on
# 2 cores, later ones a few. Without REQUIRE_KIND, a machine that cannot run a Docker engine skips
# the tier with the reason (exit 0).
set -euo pipefail
cd "$(dirname "$0")/../.."
gq=${GQ_CACHE:-$HOME/.cache/gpu-queue}
export PATH="$gq/bin:$PATH"
cluster=${KIND_CLUSTER:-gpu-queue-e2e}
kubeconfig=$gq/images/kind-$cluster.kubeconfig
started=$(date +%s)
say() { printf '[e2e %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
skip() {
  if [ -n "${REQUIRE_KIND:-}" ]; then say "error: $* (REQUIRE_KIND is set: the kind tier must run)"; exit 1; fi
  say "kind tier skipped: $*"
  exit 0
}

case "${1:-}" in
  "") ;;
  -h | --help) sed -n '2,19p' "$0"; exit 0 ;;
  *) say "error: unknown argument: $1 (try --help)"; exit 2 ;;
esac

[ -x .venv/bin/pytest ] || { say "error: .venv missing: run scripts/setup.sh first"; exit 1; }
scripts/docker.sh || skip "no Docker engine could be started here (scripts/docker.sh failed above)"
command -v go >/dev/null 2>&1 || skip "Go is not installed (kind and the node binaries are built from Go modules)"
tools/build-kind.sh

cleanup() {
  local status=$?
  if [ -z "${KEEP:-}" ] || [ "${KEEP}" = 0 ]; then
    kind delete cluster --name "$cluster" --kubeconfig "$kubeconfig" >/dev/null 2>&1 || true
    rm -f "$kubeconfig"
  else
    say "KEEP=1: cluster $cluster left up; export KUBECONFIG=$kubeconfig"
  fi
  say "kind tier: $(( $(date +%s) - started ))s in all, exit $status"
  exit "$status"
}
trap cleanup EXIT

up=$(date +%s)
KEEP=1 KIND_CLUSTER=$cluster scripts/kind-up.sh
say "cluster, images and release ready in $(( $(date +%s) - up ))s"

report=$(mktemp)
tests=$(date +%s)
status=0
artifacts=${GPU_QUEUE_E2E_ARTIFACTS:-$gq/e2e-artifacts}
mkdir -p "$artifacts"
REQUIRE_KIND=1 GPU_QUEUE_E2E_KUBECONFIG=$kubeconfig GPU_QUEUE_E2E_CLUSTER=$cluster GPU_QUEUE_E2E_GPU_NODE=$cluster-worker \
  GPU_QUEUE_E2E_REPORT=$report GPU_QUEUE_E2E_ARTIFACTS=$artifacts \
  .venv/bin/pytest -q -ra -p no:cacheprovider tests/e2e || status=$?
say "screenshots and other artifacts: $artifacts"
say "tests took $(( $(date +%s) - tests ))s; what each scenario measured:"
sed 's/^/  /' "$report" >&2
rm -f "$report"
exit "$status"
