#!/usr/bin/env bash
# The seed story to click through yourself: a kind cluster with gpu-queue (its image and chart,
# a worker advertising nvidia.com/gpu: 8) and a real JupyterHub with JupyterLab, deployed as
# zero-to-jupyterhub deploys it from docs/z2jh-values.yaml. Nothing is pulled from a registry.
#
#   make demo-hub                    # = scripts/demo-hub.sh: bring it up (or reuse it), print the
#                                    # URL and the logins, forward the hub to localhost until Ctrl-C
#   scripts/demo-hub.sh --down       # delete the demo cluster
#
# Log in with any user name and the password gpu-queue-kind ("admin" is an admin). Nine users who
# pick "GPU Enabled" fill the eight slices and the ninth waits with its place on the spawn page;
# stop a server on the home page and the ninth goes into JupyterLab. Idle servers are culled after
# CULL_TIMEOUT seconds (default 600 here). The first run builds the images and tools (about 30
# minutes on 2 cores, cached under ~/.cache/gpu-queue); later runs take 3-4 minutes.
#
# Environment: KIND_CLUSTER (default gpu-queue-demo), PORT (default 8000), CULL_TIMEOUT, CULL_EVERY.
set -euo pipefail
cd "$(dirname "$0")/.."
gq=${GQ_CACHE:-$HOME/.cache/gpu-queue}
export PATH="$gq/bin:$PATH"
cluster=${KIND_CLUSTER:-gpu-queue-demo}
port=${PORT:-8000}
say() { printf '[demo-hub %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

case "${1:-}" in
  "") ;;
  --down) kind delete cluster --name "$cluster"; rm -f "$gq/images/kind-$cluster.kubeconfig"; exit 0 ;;
  -h | --help) sed -n '2,17p' "$0"; exit 0 ;;
  *) say "error: unknown argument: $1 (try --help)"; exit 2 ;;
esac

scripts/docker.sh
tools/build-kind.sh
KEEP=1 KIND_CLUSTER=$cluster scripts/kind-up.sh
export KUBECONFIG=$gq/images/kind-$cluster.kubeconfig
kubectl -n jhub delete pod kind-up-gpu kind-up-cpu --ignore-not-found --grace-period=0 >/dev/null 2>&1 || true
CULL_TIMEOUT=${CULL_TIMEOUT:-600} CULL_EVERY=${CULL_EVERY:-60} scripts/kind-hub.sh --install "$cluster"

cat >&2 <<EOF

  JupyterHub:  http://127.0.0.1:${port}/hub/login
  Logins:      any user name, password gpu-queue-kind ("admin" is an admin: /hub/admin)
  Who holds:   kubectl -n jhub get pods -L gpu-queue.io/profile
  kubectl:     export KUBECONFIG=${KUBECONFIG}
  Stop:        Ctrl-C stops the port-forward; the cluster stays (scripts/demo-hub.sh --down deletes it)

EOF
exec kubectl -n jhub port-forward svc/proxy-public "${port}:80"
