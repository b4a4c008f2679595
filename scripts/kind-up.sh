#!/usr/bin/env bash
# gpu-queue on a local, registry-free kind cluster, end to end:
#
#   scripts/kind-up.sh           # build/reuse images, create (or reuse) kind cluster gpu-queue-e2e,
#                                # install the chart, check it, delete the cluster
#   KEEP=1 scripts/kind-up.sh    # the same, and leave the cluster up (kubeconfig path printed)
#
# Steps (each timed, as "[kind-up HH:MM:SS] ..." lines on stderr):
#   1. the engine (scripts/docker.sh), the product image gpu-queue:dev and the debootstrap base
#      (scripts/images.sh), the offline kind node image (scripts/kind-node-image.sh), and a Redis
#      image the chart's built-in Redis can run: Debian's redis-server FROM the base
#      (tools/kind-e2e/redis.Dockerfile; where apt cannot reach a mirror inside the build, the same
#      package's files from this Debian host: tools/kind-e2e/redis-host.Dockerfile);
#   2. kind cluster gpu-queue-e2e (one control plane, one worker; tools/kind-node/cluster.yaml),
#      reused when it exists;
#   3. `kind load docker-image` of gpu-queue:dev (also tagged gpu-queue:e2e-next, for the kind
#      tier's upgrade to a new image tag), the Redis image and the base;
#   4. the worker becomes the fake GPU node: nvidia.com/gpu: 8 in its status capacity/allocatable
#      (what the NVIDIA device plugin with time-slicing would advertise) and the label
#      nvidia.com/gpu.present=true (what GPU feature discovery sets; the cpu-only profile's affinity
#      keeps CPU users off such nodes). The control plane's NoSchedule taint is removed so that
#      CPU-only pods have a node;
#   4b. kind's local-path storage (scripts/kind-storage.sh: rancher's local-path-provisioner built
#      from its Go module) as the default StorageClass, for the built-in Redis's PVC;
#   5. namespace jhub, then `helm upgrade --install gpu-queue charts/gpu-queue -n gpu-queue
#      --create-namespace -f tools/kind-e2e/values.yaml --wait --timeout 5m` (hooks: the
#      self-managed certificate Jobs and the caBundle patch);
#   6. checks: 2 replicas Ready; Redis Ready with its PVC Bound; both certificate Jobs Succeeded (watched while helm runs: they are
#      deleted on success); both webhook configurations have a caBundle; a KubeSpawner-like pod
#      with gpu-queue.io/profile=gpu-enabled is created gated (gpu-queue.io/slice) with the
#      profile's resources injected, then granted (gate removed) and Running on the worker; a
#      cpu-only pod is created ungated and is Running at once.
#
# Exit status non-zero with an "error:" line on the first failed step (diagnostics are printed and
# `kind export logs` is written to ~/.cache/gpu-queue/kind-e2e-logs). Without KEEP=1 the cluster is
# deleted at the end, on success and on failure.
#
# Environment: KEEP=1, KIND_CLUSTER (default gpu-queue-e2e), GQ_CACHE (default ~/.cache/gpu-queue).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

say() { printf '[kind-up %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }

case "${1:-}" in
  "") ;;
  -h | --help) sed -n '2,38p' "$0"; exit 0 ;;
  *) say "error: unknown argument: $1 (try --help)"; exit 2 ;;
esac

gq="${GQ_CACHE:-${HOME}/.cache/gpu-queue}"
bin="${gq}/bin"
export PATH="${bin}:${PATH}"
cluster="${KIND_CLUSTER:-gpu-queue-e2e}"
namespace=gpu-queue
hub=jhub
release=gpu-queue
gate=gpu-queue.io/slice
kubeconfig="${gq}/images/kind-${cluster}.kubeconfig"
logs_dir="${gq}/kind-e2e-logs"
static="${repo}/tools/kind-e2e"
work=$(mktemp -d)
export KUBECONFIG="$kubeconfig"
export DOCKER_BUILDKIT=0

for tool in kind kubectl helm; do
  [ -x "${bin}/${tool}" ] || { say "error: ${bin}/${tool} missing (tools/build-kind.sh / tools/build.sh)"; exit 1; }
done

t_all=$(now)
watch_pid=""
cluster_touched=0
failed=0

diagnose() {
  [ "$cluster_touched" -eq 1 ] || return 0
  say "--- diagnostics ---"
  kubectl get nodes -o wide >&2 2>&1 || true
  kubectl get pods -A -o wide >&2 2>&1 || true
  kubectl -n "$namespace" get jobs,deploy,sts,svc,endpointslices >&2 2>&1 || true
  kubectl -n "$namespace" get events --sort-by=.lastTimestamp 2>&1 | tail -n 30 >&2 || true
  kubectl -n "$hub" get events --sort-by=.lastTimestamp 2>&1 | tail -n 20 >&2 || true
  kubectl -n "$namespace" logs -l app.kubernetes.io/component=certs --all-containers --prefix --tail=30 >&2 2>&1 || true
  kubectl -n "$namespace" logs -l app.kubernetes.io/component=webhook --all-containers --prefix --tail=40 >&2 2>&1 || true
  kubectl -n "$namespace" logs -l app.kubernetes.io/component=redis --all-containers --prefix --tail=20 >&2 2>&1 || true
  rm -rf "$logs_dir"
  timeout 120 kind export logs --name "$cluster" "$logs_dir" >/dev/null 2>&1 \
    && say "kind export logs: ${logs_dir}" || true
}

die() {
  say "error: $*"
  failed=1
  diagnose
  exit 1
}

finish() {
  local status=$?
  [ -n "$watch_pid" ] && kill "$watch_pid" 2>/dev/null || true
  if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then
    say "error: stopped with status ${status} (a command above failed)"
    diagnose
  fi
  if [ "$cluster_touched" -eq 1 ]; then
    if [ -n "${KEEP:-}" ] && [ "${KEEP}" != 0 ]; then
      say "KEEP=1: cluster ${cluster} left up; export KUBECONFIG=${kubeconfig}"
    else
      local t
      t=$(now)
      kind delete cluster --name "$cluster" --kubeconfig "$kubeconfig" >/dev/null 2>&1 \
        && say "cluster ${cluster} deleted in $(since "$t")" \
        || say "warning: kind delete cluster --name ${cluster} failed"
      rm -f "$kubeconfig"
    fi
  fi
  rm -rf "$work"
  if [ "$status" -eq 0 ]; then say "all checks passed in $(since "$t_all")"; else say "FAILED after $(since "$t_all")"; fi
  exit "$status"
}
trap finish EXIT

# Run a helper script with its output in a log; on failure show the log's tail.
run_logged() { # log-name command...
  local log="${work}/$1.log"
  shift
  if ! "$@" >"${log}.out" 2>"$log"; then
    tail -n 25 "$log" >&2
    return 1
  fi
  sed 's/^/    /' "$log" >&2
  cat "${log}.out"
}

# --- 1. engine and images ---------------------------------------------------------------------
t=$(now)
run_logged docker scripts/docker.sh >/dev/null || die "no Docker engine (scripts/docker.sh failed)"
docker info >/dev/null 2>&1 || die "docker info does not answer for $(id -un) (scripts/docker.sh started an engine only root reaches?)"
say "1a. engine up ($(docker info --format '{{.ServerVersion}}'), runtime $(docker info --format '{{.DefaultRuntime}}')) in $(since "$t")"

t=$(now)
run_logged images scripts/images.sh >/dev/null || die "scripts/images.sh failed (product image gpu-queue:dev)"
base=$(scripts/images.sh --base-only 2>/dev/null) || die "scripts/images.sh --base-only failed"
docker image inspect gpu-queue:dev >/dev/null 2>&1 || die "gpu-queue:dev missing after scripts/images.sh"
product_id=$(docker image inspect --format '{{.Id}}' gpu-queue:dev)
say "1b. product image gpu-queue:dev (${product_id:7:12}) on base ${base} in $(since "$t")"

t=$(now)
node_image=$(run_logged kind-node scripts/kind-node-image.sh | tail -n 1) || die "scripts/kind-node-image.sh failed"
[ -n "$node_image" ] && docker image inspect "$node_image" >/dev/null 2>&1 \
  || die "scripts/kind-node-image.sh printed no usable tag ('${node_image}')"
say "1c. node image ${node_image} in $(since "$t")"

# Redis: the chart's default is redis:7.4-alpine from Docker Hub; here a Debian redis-server.
t=$(now)
redis_key=$( { printf '%s\n' "base=${base}"; cat "${static}/redis.Dockerfile" "${static}/redis-host.Dockerfile"; } \
  | sha256sum | cut -c1-12)
redis_repo=gpu-queue-redis
redis_tag="7-${redis_key}"
redis_image="${redis_repo}:${redis_tag}"
if docker image inspect "$redis_image" >/dev/null 2>&1; then
  say "1d. redis image ${redis_image}: present"
else
  mkdir -p "${work}/redis-ctx"
  if timeout 300 docker build --network host --build-arg "BASE_IMAGE=${base}" -t "$redis_image" \
      -f "${static}/redis.Dockerfile" "${work}/redis-ctx" >"${work}/redis-build.log" 2>&1; then
    say "1d. redis image ${redis_image}: Debian redis-server installed with apt FROM ${base} in $(since "$t")"
  else
    tail -n 8 "${work}/redis-build.log" | sed 's/^/    /' >&2
    say "1d. apt inside the build failed; using this host's Debian redis-server/redis-tools files instead"
    [ -x /usr/bin/redis-check-rdb ] && [ -x /usr/bin/redis-cli ] \
      || die "no Debian mirror in the build and no redis-server on this host (apt-get install redis-server)"
    ctx="${work}/redis-host"
    mkdir -p "${ctx}/bin" "${ctx}/libs"
    cp -L /usr/bin/redis-check-rdb /usr/bin/redis-cli "${ctx}/bin/"
    ldd /usr/bin/redis-check-rdb /usr/bin/redis-cli | awk '$2 == "=>" && $3 ~ /^\// { print $3 }' | sort -u \
      | while read -r lib; do cp -L "$lib" "${ctx}/libs/$(basename "$lib")"; done
    docker build --build-arg "BASE_IMAGE=${base}" -t "$redis_image" -f "${static}/redis-host.Dockerfile" "$ctx" \
      >"${work}/redis-build.log" 2>&1 || { tail -n 20 "${work}/redis-build.log" >&2; die "docker build of ${redis_image} failed"; }
    say "1d. redis image ${redis_image}: host's redis $(dpkg-query -W -f '${Version}' redis-server 2>/dev/null) FROM ${base} in $(since "$t")"
  fi
fi
docker run --rm --read-only --user 999:999 --entrypoint sh "$redis_image" -c 'redis-server --version && command -v redis-cli' \
  >"${work}/redis-smoke.log" 2>&1 || { cat "${work}/redis-smoke.log" >&2; die "${redis_image}: redis-server --version failed as uid 999"; }
say "    $(head -n 1 "${work}/redis-smoke.log")"

# --- 2. the cluster ---------------------------------------------------------------------------
t=$(now)
if kind get clusters 2>/dev/null | grep -qx "$cluster"; then
  cluster_touched=1
  kind get kubeconfig --name "$cluster" >"$kubeconfig" || die "kind get kubeconfig --name ${cluster} failed"
  running=$(docker inspect --format '{{.Config.Image}}' "${cluster}-control-plane" 2>/dev/null || true)
  say "2. reusing kind cluster ${cluster} (node image ${running:-?})"
  [ "$running" = "$node_image" ] || say "   warning: it runs ${running:-?}, not ${node_image} (delete it to start fresh)"
else
  say "2. kind create cluster --name ${cluster} --image ${node_image} (1 control plane + 1 worker)"
  cluster_touched=1
  kind create cluster --name "$cluster" --image "$node_image" --config "${repo}/tools/kind-node/cluster.yaml" \
      --kubeconfig "$kubeconfig" --wait 5m >"${work}/kind-create.log" 2>&1 \
    || { tail -n 20 "${work}/kind-create.log" >&2; die "kind create cluster failed"; }
fi
kubectl wait --for=condition=Ready nodes --all --timeout=3m >/dev/null || die "nodes not Ready"
kubectl -n kube-system wait --for=condition=Ready pods --all --timeout=3m >/dev/null || die "kube-system pods not Ready"
nodes=$(kubectl get nodes --no-headers | wc -l)
[ "$nodes" -eq 2 ] || die "cluster ${cluster} has ${nodes} nodes, not 2"
control=$(kubectl get nodes -l node-role.kubernetes.io/control-plane -o jsonpath='{.items[0].metadata.name}')
worker=$(kubectl get nodes -l '!node-role.kubernetes.io/control-plane' -o jsonpath='{.items[0].metadata.name}')
[ -n "$control" ] && [ -n "$worker" ] || die "could not tell the control plane and the worker apart"
say "2. nodes Ready (${control}, ${worker}) in $(since "$t")"

# --- 3. images into the nodes -----------------------------------------------------------------
t=$(now)
# gpu-queue:e2e-next: the same image under a second tag, for the kind tier's `helm upgrade` to a
# new image tag (a rollout of both replicas).
docker tag gpu-queue:dev gpu-queue:e2e-next
kind load docker-image --name "$cluster" gpu-queue:dev gpu-queue:e2e-next "$redis_image" "$base" >"${work}/kind-load.log" 2>&1 \
  || { cat "${work}/kind-load.log" >&2; die "kind load docker-image failed"; }
for n in "$control" "$worker"; do
  have=$(docker exec "$n" crictl images -o json 2>/dev/null | jq -r '.images[].repoTags[]' || true)
  for img in gpu-queue:dev gpu-queue:e2e-next "$redis_image" "$base"; do
    grep -qx "docker.io/library/${img}" <<<"$have" || die "${img} not in ${n}'s containerd after kind load"
  done
done
say "3. loaded gpu-queue:dev (also as :e2e-next), ${redis_image}, ${base} into both nodes in $(since "$t")"

# --- 4. the fake GPU node ---------------------------------------------------------------------
t=$(now)
kubectl patch node "$worker" --subresource=status --type=json -p \
  '[{"op":"add","path":"/status/capacity/nvidia.com~1gpu","value":"8"},{"op":"add","path":"/status/allocatable/nvidia.com~1gpu","value":"8"}]' \
  >/dev/null || die "could not patch ${worker}'s status with nvidia.com/gpu: 8"
kubectl label node "$worker" nvidia.com/gpu.present=true --overwrite >/dev/null || die "could not label ${worker}"
kubectl taint node "$control" node-role.kubernetes.io/control-plane:NoSchedule- >/dev/null 2>&1 || true
alloc=$(kubectl get node "$worker" -o jsonpath='{.status.allocatable.nvidia\.com/gpu}')
[ "$alloc" = "8" ] || die "${worker} allocatable nvidia.com/gpu is '${alloc}', not 8"
say "4. ${worker}: allocatable nvidia.com/gpu=${alloc}, label nvidia.com/gpu.present=true; ${control} untainted, in $(since "$t")"

# --- 4b. storage: kind's local-path provisioner (the node image's default class has none) -------
t=$(now)
storage_image=$(run_logged storage scripts/kind-storage.sh --install "$cluster" | tail -n 1) \
  || die "scripts/kind-storage.sh --install ${cluster} failed"
say "4b. StorageClass standard (rancher.io/local-path, ${storage_image}) ready in $(since "$t")"

# --- 5. the chart -----------------------------------------------------------------------------
t=$(now)
for ns in "$hub" "$namespace"; do
  kubectl create namespace "$ns" --dry-run=client -o yaml | kubectl apply -f - >/dev/null || die "namespace ${ns}"
done
# The certificate Jobs are deleted once they succeed (hook-delete-policy hook-succeeded): watch them.
kubectl -n "$namespace" get jobs -w --no-headers \
  -o custom-columns='NAME:.metadata.name,SUCCEEDED:.status.succeeded,FAILED:.status.failed' >"${work}/jobs.watch" 2>&1 &
watch_pid=$!
say "5. helm upgrade --install ${release} charts/gpu-queue -n ${namespace} --create-namespace --wait --timeout 5m"
if ! helm upgrade --install "$release" charts/gpu-queue --namespace "$namespace" --create-namespace \
    -f "${static}/values.yaml" \
    --set "image.repository=gpu-queue" --set "image.tag=dev" --set "image.pullPolicy=Never" \
    --set "hubNamespaces={${hub}}" \
    --set "redis.builtin.image.repository=${redis_repo}" --set-string "redis.builtin.image.tag=${redis_tag}" \
    --set-string "podAnnotations.kind-up/image-id=${product_id}" \
    --wait --timeout 5m >"${work}/helm.log" 2>&1; then
  cat "${work}/helm.log" >&2
  die "helm upgrade --install failed"
fi
say "5. helm done in $(since "$t"): $(helm -n "$namespace" status "$release" -o json | jq -r '"revision \(.version), \(.info.status)"')"
sleep 1
kill "$watch_pid" 2>/dev/null || true
wait "$watch_pid" 2>/dev/null || true
watch_pid=""

# --- 6. checks --------------------------------------------------------------------------------
t=$(now)
ready=$(kubectl -n "$namespace" get deploy "$release" -o jsonpath='{.status.readyReplicas}')
[ "${ready:-0}" = "2" ] || die "deploy/${release}: ${ready:-0} replicas Ready, not 2"
say "6a. deploy/${release}: 2/2 replicas Ready on $(kubectl -n "$namespace" get pods -l app.kubernetes.io/component=webhook -o jsonpath='{range .items[*]}{.spec.nodeName} {end}')"
deadline=$(( $(date +%s) + 30 ))  # the disruption controller updates the status a moment after
while :; do
  pdb=$(kubectl -n "$namespace" get pdb "$release" -o jsonpath='{.status.currentHealthy} healthy, {.status.disruptionsAllowed} disruption(s) allowed' 2>/dev/null || true)
  [[ "$pdb" == "2 healthy, 1 disruption"* ]] || [ "$(date +%s)" -ge "$deadline" ] && break
  sleep 1
done
[[ "$pdb" == "2 healthy, 1 disruption"* ]] || die "poddisruptionbudget/${release}: '${pdb:-missing}', not 2 healthy with 1 disruption allowed"
say "6a. poddisruptionbudget/${release}: ${pdb}"
kubectl -n "$namespace" get sts "${release}-redis" -o jsonpath='{.status.readyReplicas}' | grep -qx 1 \
  || die "statefulset ${release}-redis not Ready"
pvc_phase=$(kubectl -n "$namespace" get pvc "data-${release}-redis-0" -o jsonpath='{.status.phase}' 2>/dev/null || true)
[ "$pvc_phase" = Bound ] || die "pvc data-${release}-redis-0 is '${pvc_phase:-missing}', not Bound"
say "6a. statefulset ${release}-redis: 1/1 Ready (${redis_image}), its PVC data-${release}-redis-0 Bound to $(kubectl -n "$namespace" get pvc "data-${release}-redis-0" -o jsonpath='{.spec.volumeName}')"
pods_age=$(kubectl -n "$namespace" get pods -l app.kubernetes.io/component=webhook \
  -o jsonpath='{range .items[*]}{.metadata.name} (since {.status.startTime}) {end}')
leader=$(kubectl -n "$namespace" get lease "${release}-leader" -o jsonpath='{.spec.holderIdentity}' 2>/dev/null || true)
say "6a. replicas: ${pods_age}; leader (Lease ${release}-leader): ${leader:-none yet}"

for job in "${release}-certs-pre" "${release}-certs-post"; do
  if grep -Eq "^${job} +1 " "${work}/jobs.watch"; then
    say "6b. job ${job}: Succeeded (seen by the watch; deleted by its hook-delete-policy)"
  elif kubectl -n "$namespace" get events --field-selector "involvedObject.kind=Job,involvedObject.name=${job},reason=Completed" \
      --no-headers 2>/dev/null | grep -q .; then
    say "6b. job ${job}: Succeeded (its Completed event)"
  else
    sed 's/^/    /' "${work}/jobs.watch" >&2
    die "certificate job ${job}: no sign that it Succeeded"
  fi
done
kubectl -n "$namespace" get secret "${release}-tls" >/dev/null 2>&1 || die "secret ${release}-tls missing"
ca=$(kubectl -n "$namespace" get secret "${release}-tls" -o jsonpath='{.data.ca\.crt}')
for kind_ in mutatingwebhookconfiguration validatingwebhookconfiguration; do
  bundle=$(kubectl get "$kind_" "$release" -o jsonpath='{.webhooks[0].clientConfig.caBundle}')
  [ -n "$bundle" ] || die "${kind_}/${release} has no caBundle"
  subject=$(base64 -d <<<"$bundle" | openssl x509 -noout -subject 2>/dev/null || echo '?')
  same=$([ "$bundle" = "$ca" ] && echo "= secret ${release}-tls ca.crt" || echo "differs from the secret's ca.crt")
  say "6c. ${kind_}/${release}: caBundle ${#bundle} chars (${subject}) ${same}"
done

pod_json() { # name profile
  cat <<EOF
{
  "apiVersion": "v1",
  "kind": "Pod",
  "metadata": {
    "name": "$1",
    "namespace": "${hub}",
    "labels": {
      "app": "jupyterhub",
      "app.kubernetes.io/component": "singleuser-server",
      "app.kubernetes.io/managed-by": "kubespawner",
      "app.kubernetes.io/name": "jupyterhub",
      "component": "singleuser-server",
      "gpu-queue.io/profile": "$2",
      "heritage": "jupyterhub",
      "hub.jupyter.org/network-access-hub": "true",
      "hub.jupyter.org/servername": "",
      "hub.jupyter.org/username": "$1",
      "release": "jhub"
    },
    "annotations": {
      "hub.jupyter.org/username": "$1",
      "hub.jupyter.org/kubespawner-version": "7.1.0"
    }
  },
  "spec": {
    "automountServiceAccountToken": false,
    "restartPolicy": "OnFailure",
    "terminationGracePeriodSeconds": 1,
    "containers": [
      {
        "name": "notebook",
        "image": "${base}",
        "imagePullPolicy": "Never",
        "command": ["sleep", "infinity"],
        "env": [{"name": "JUPYTERHUB_USER", "value": "$1"}],
        "ports": [{"containerPort": 8888, "name": "notebook-port"}],
        "securityContext": {"allowPrivilegeEscalation": false}
      }
    ]
  }
}
EOF
}
kubectl -n "$hub" delete pod kind-up-gpu kind-up-cpu --ignore-not-found --grace-period=0 --force --wait >/dev/null 2>&1 || true

# GPU pod: gated + resources at creation, then granted, then Running on the worker.
t=$(now)
pod_json kind-up-gpu gpu-enabled | kubectl create -f - -o json >"${work}/gpu-created.json" 2>"${work}/gpu-create.err" \
  || { cat "${work}/gpu-create.err" >&2; die "creating the gpu-enabled pod failed"; }
g=${work}/gpu-created.json
jq -e --arg gate "$gate" '[.spec.schedulingGates[]?.name] | index($gate)' "$g" >/dev/null \
  || die "gpu-enabled pod created without the ${gate} gate: $(jq -c .spec.schedulingGates "$g")"
res=$(jq -c '.spec.containers[0].resources' "$g")
# What the release's values say the profile gets (tools/kind-e2e/values.yaml over the chart's).
want=$(helm -n "$namespace" get values "$release" --all -o json | jq -c '.config.profiles["gpu-enabled"] | {requests, limits}')
jq -e --argjson want "$want" '.spec.containers[0].resources as $r
    | [($want.requests | to_entries[] | ($r.requests[.key] == (.value | tostring))),
       ($want.limits | to_entries[] | ($r.limits[.key] == (.value | tostring)))] | all' "$g" >/dev/null \
  || die "gpu-enabled pod: resources ${res} are not what the profile says (${want})"
say "6d. gpu pod created gated (${gate}); injected ${res}; requested-at $(jq -r '.metadata.annotations["gpu-queue.io/requested-at"] // "-"' "$g")"
deadline=$(( $(date +%s) + 120 ))
while :; do
  gates=$(kubectl -n "$hub" get pod kind-up-gpu -o jsonpath='{.spec.schedulingGates}' 2>/dev/null || echo '?')
  [ -z "$gates" ] || [ "$gates" = "[]" ] && break
  [ "$(date +%s)" -lt "$deadline" ] || die "gpu pod still gated after 120s (gates: ${gates})"
  sleep 0.5
done
say "6d. gpu pod granted (gate removed) $(since "$t") after creation; admitted-at $(kubectl -n "$hub" get pod kind-up-gpu -o jsonpath='{.metadata.annotations.gpu-queue\.io/admitted-at}')"
kubectl -n "$hub" wait --for=condition=Ready pod/kind-up-gpu --timeout=120s >/dev/null || die "gpu pod not Ready within 120s"
gnode=$(kubectl -n "$hub" get pod kind-up-gpu -o jsonpath='{.spec.nodeName}')
gphase=$(kubectl -n "$hub" get pod kind-up-gpu -o jsonpath='{.status.phase}')
[ "$gnode" = "$worker" ] && [ "$gphase" = Running ] || die "gpu pod is ${gphase} on '${gnode}', not Running on ${worker}"
say "6d. gpu pod Running on ${gnode} $(since "$t") after creation"
gpu_uid=$(kubectl -n "$hub" get pod kind-up-gpu -o jsonpath='{.metadata.uid}')
kubectl -n "$hub" get events --field-selector "involvedObject.name=kind-up-gpu,involvedObject.uid=${gpu_uid}" -o json \
  | jq -r '[.items[] | select(.source.component == "gpu-queue" or .reportingComponent == "gpu-queue")]
      | sort_by(.eventTime // .firstTimestamp // .metadata.creationTimestamp) | .[]
      | "    event: \(.reason): \(.message)"' >&2 || true

# CPU-only pod: no gate, Running at once (on the control plane: the worker is a GPU node).
t=$(now)
pod_json kind-up-cpu cpu-only | kubectl create -f - -o json >"${work}/cpu-created.json" 2>"${work}/cpu-create.err" \
  || { cat "${work}/cpu-create.err" >&2; die "creating the cpu-only pod failed"; }
c=${work}/cpu-created.json
[ "$(jq '[.spec.schedulingGates[]?] | length' "$c")" = 0 ] || die "cpu-only pod was gated: $(jq -c .spec.schedulingGates "$c")"
say "6e. cpu pod created ungated; injected $(jq -c '.spec.containers[0].resources' "$c")"
kubectl -n "$hub" wait --for=condition=Ready pod/kind-up-cpu --timeout=90s >/dev/null || die "cpu-only pod not Ready within 90s"
cnode=$(kubectl -n "$hub" get pod kind-up-cpu -o jsonpath='{.spec.nodeName}')
say "6e. cpu pod Running on ${cnode} $(since "$t") after creation"
kubectl -n "$hub" get pods -o wide >&2
