#!/usr/bin/env bash
# The kind tier: a kind cluster, the gpu-queue image and chart, a fake nvidia.com/gpu: 8 on a worker
# node, then the same scenarios as the local-control-plane tier (tests/scenarios.py).
#
#   tests/e2e/run.sh            create (or reuse) the cluster, install, test
#   KEEP=1 tests/e2e/run.sh     leave the cluster up afterwards
#
# Needs docker (with a running engine), kind, kubectl and helm on PATH. Where any is missing the
# pytest tier skips itself with the reason; this script says which one and stops.
set -euo pipefail
cd "$(dirname "$0")/../.."
cluster=${KIND_CLUSTER:-gpu-queue-e2e}
namespace=gpu-queue
hub=jhub
work=$(mktemp -d)
say() { printf '[e2e] %s\n' "$*" >&2; }

for tool in docker kind kubectl helm; do
  command -v "$tool" >/dev/null || { say "$tool is not installed: the kind tier cannot run here"; exit 2; }
done
docker info >/dev/null 2>&1 || { say "no Docker engine answers 'docker info': the kind tier cannot run here"; exit 2; }

if ! kind get clusters | grep -qx "$cluster"; then
  say "creating kind cluster $cluster (one control plane, one worker as the GPU node)"
  cat > "$work/kind.yaml" <<YAML
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
nodes:
  - role: control-plane
  - role: worker
    labels:
      nvidia.com/gpu.present: "true"
YAML
  kind create cluster --name "$cluster" --config "$work/kind.yaml" --wait 120s
fi
kind get kubeconfig --name "$cluster" > "$work/kubeconfig"
export KUBECONFIG=$work/kubeconfig
gpu_node=$cluster-worker

say "building and loading the image"
docker build -t gpu-queue:e2e .
kind load docker-image gpu-queue:e2e --name "$cluster"

say "advertising nvidia.com/gpu: 8 on $gpu_node (what the NVIDIA device plugin with time-slicing does)"
kubectl proxy --port=0 > "$work/proxy" 2>&1 &
proxy=$!
trap 'kill $proxy 2>/dev/null || true; [ -n "${pf:-}" ] && kill $pf 2>/dev/null || true' EXIT
for _ in $(seq 50); do grep -q 'Starting to serve' "$work/proxy" && break; sleep 0.1; done
port=$(sed -n 's/.*127.0.0.1:\([0-9]*\).*/\1/p' "$work/proxy")
curl -sf -X PATCH -H 'Content-Type: application/json-patch+json' \
  --data '[{"op":"add","path":"/status/capacity/nvidia.com~1gpu","value":"8"},{"op":"add","path":"/status/allocatable/nvidia.com~1gpu","value":"8"}]' \
  "http://127.0.0.1:$port/api/v1/nodes/$gpu_node/status" >/dev/null

say "installing the chart (built-in Redis, self-managed certificates)"
kubectl create namespace "$hub" --dry-run=client -o yaml | kubectl apply -f -
read_token=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
admin_token=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
helm upgrade --install gpu-queue charts/gpu-queue --namespace "$namespace" --create-namespace \
  --set image.repository=gpu-queue --set image.tag=e2e --set image.pullPolicy=Never \
  --set "hubNamespaces={$hub}" \
  --set "api.readTokens={$read_token}" --set "api.adminTokens={$admin_token}" \
  --set redis.builtin.persistence.enabled=false \
  --set "certs.extraDnsNames={localhost}" \
  --wait --timeout 5m

say "port-forwarding the queue API"
kubectl -n "$namespace" get secret gpu-queue-tls -o jsonpath='{.data.ca\.crt}' | base64 -d > "$work/ca.crt"
kubectl -n "$namespace" port-forward svc/gpu-queue 18443:443 > "$work/pf" 2>&1 &
pf=$!
for _ in $(seq 50); do grep -q 'Forwarding' "$work/pf" && break; sleep 0.1; done

export GPU_QUEUE_E2E_KUBECONFIG=$KUBECONFIG GPU_QUEUE_E2E_NAMESPACE=$hub GPU_QUEUE_E2E_GPU_NODE=$gpu_node
# The serving certificate carries localhost (certs.selfManaged.extraDnsNames) for this port-forward.
export GPU_QUEUE_E2E_API_URL=https://localhost:18443
status=0
.venv/bin/pytest -q tests/e2e || status=$?
if [ -z "${KEEP:-}" ]; then kind delete cluster --name "$cluster"; fi
exit $status
