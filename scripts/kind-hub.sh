#!/usr/bin/env bash
# A real JupyterHub in the kind cluster, deployed the way zero-to-jupyterhub 4.x deploys it and
# configured from the values the docs give admins (docs/z2jh-values.yaml), without helm's chart:
#
#   scripts/kind-hub.sh --install CLUSTER   # into namespace jhub of kind cluster CLUSTER, which
#                                           # runs gpu-queue (KEEP=1 KIND_CLUSTER=CLUSTER scripts/kind-up.sh)
#   scripts/kind-hub.sh --uninstall CLUSTER # delete the hub's objects, the single-user pods and
#                                           # their PVCs from namespace jhub (waits until gone)
#
# Steps (each timed, as "[kind-hub HH:MM:SS] ..." lines on stderr):
#   1. the images: scripts/hub-images.sh (cached) prints hub=<tag> and singleuser=<tag>;
#   2. `kind load docker-image` of both into CLUSTER's nodes;
#   3. from gpu-queue's release (namespace gpu-queue): the hub's queue-API token (the first of the
#      Secret gpu-queue-api's read-tokens) and the CA (ca.crt of the Secret gpu-queue-tls);
#   4. the values, as `helm -f docs/z2jh-values.yaml -f tools/kind-hub/values.yaml --set ...` would
#      compute them (tools/kind-hub/merge_values.py values): z2jh's defaults, the docs' values, the
#      kind overlay, then the local image, the token (hub.services.gpu-queue.apiToken) and the
#      docs' --set-file: hub.extraFiles.gpu-queue-hub = webhook/hub.py, gpu-queue-ca = the CA, and
#      the waiting room's two templates (webhook/hub_templates); with STOCK_PAGES=1 the docs'
#      hub.extraConfig.gpu-queue-templates is left out, so the hub shows its stock pages;
#   5. `kubectl apply` of tools/kind-hub/merge_values.py manifests: the ConfigMap hub
#      (tools/kind-hub/jupyterhub_config.py, z2jh's loader for these values, and z2jh.py), the
#      Secret hub (the merged values, the proxy token, kept across installs, the extraFiles) and
#      tools/kind-hub/hub.yaml (hub RBAC, Deployments hub and proxy, Services hub, proxy-api,
#      proxy-public); a changed config restarts the hub (checksum annotation);
#   6. waits for the hub and the proxy to be Ready (deadline WAIT_SECONDS, default 300);
#   7. through `kubectl port-forward svc/proxy-public`, GET /hub/login must answer 200 with the
#      login form.
# At the end it prints the port-forward command and the logins (any user name, the overlay's
# password; "admin" is an admin). On failure: kubectl describe and the logs of hub and proxy, an
# "error:" line, exit status non-zero.
#
# The cluster is the one KUBECONFIG points at, which must be kind-CLUSTER (its current context);
# without KUBECONFIG, ${GQ_CACHE}/images/kind-CLUSTER.kubeconfig (written by scripts/kind-up.sh)
# or else `kind get kubeconfig --name CLUSTER` is used.
#
# Environment: CULL_TIMEOUT / CULL_EVERY (seconds; default the overlay's 120 / 15), STOCK_PAGES=1
# (the hub's own spawn-pending and home pages instead of the waiting room), WAIT_SECONDS
# (default 300; also --uninstall's deadline), KUBECONFIG, GQ_CACHE (default ~/.cache/gpu-queue;
# kind and kubectl from its bin/).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

say() { printf '[kind-hub %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }

cluster=""
mode=""
case "${1:-}" in
  --install | --uninstall)
    mode=${1#--}
    [ "$#" -eq 2 ] && [ -n "$2" ] || { say "error: usage: $0 ${1} CLUSTER_NAME (try --help)"; exit 2; }
    cluster=$2
    ;;
  -h | --help) sed -n '2,40p' "$0"; exit 0 ;;
  "") say "error: missing argument: --install or --uninstall CLUSTER_NAME (try --help)"; exit 2 ;;
  *) say "error: unknown argument: $1 (try --help)"; exit 2 ;;
esac

gq="${GQ_CACHE:-${HOME}/.cache/gpu-queue}"
bin="${gq}/bin"
export PATH="${bin}:${PATH}"
static="${repo}/tools/kind-hub"
python="${repo}/.venv/bin/python"
ns=jhub
queue_ns=gpu-queue
wait_s="${WAIT_SECONDS:-300}"
password=$(sed -n 's/^ *password: *//p' "${static}/values.yaml" | head -n 1)
work=$(mktemp -d)
pf_pid=""
touched=0

for tool in kind kubectl; do
  [ -x "${bin}/${tool}" ] || { say "error: ${bin}/${tool} missing (tools/build-kind.sh / tools/build.sh)"; exit 1; }
done
"$python" -c 'import yaml' 2>/dev/null || { say "error: ${python} cannot import yaml (scripts/setup.sh)"; exit 1; }

diagnose() {
  [ "$touched" -eq 1 ] || return 0
  say "--- diagnostics ---"
  kubectl -n "$ns" get deploy,pods,svc,endpointslices -o wide >&2 2>&1 || true
  for d in hub proxy; do
    kubectl -n "$ns" describe "deploy/${d}" >&2 2>&1 | tail -n 25 || true
    kubectl -n "$ns" describe pods -l "component=${d}" >&2 2>&1 | tail -n 40 || true
    kubectl -n "$ns" logs "deploy/${d}" --all-containers --tail=60 >&2 2>&1 || true
  done
  kubectl -n "$ns" get events --sort-by=.lastTimestamp 2>&1 | tail -n 25 >&2 || true
}

die() {
  say "error: $*"
  diagnose
  exit 1
}

finish() {
  local status=$?
  [ -n "$pf_pid" ] && kill "$pf_pid" 2>/dev/null || true
  rm -rf "$work"
  if [ "$status" -eq 0 ]; then say "done in $(since "$t_all")"; else say "FAILED after $(since "$t_all")"; fi
  exit "$status"
}
t_all=$(now)
trap finish EXIT

# --- the cluster ------------------------------------------------------------------------------
if [ -z "${KUBECONFIG:-}" ]; then
  if [ -r "${gq}/images/kind-${cluster}.kubeconfig" ]; then
    export KUBECONFIG="${gq}/images/kind-${cluster}.kubeconfig"
  else
    kind get kubeconfig --name "$cluster" >"${work}/kubeconfig" 2>/dev/null || die "no kind cluster ${cluster}"
    export KUBECONFIG="${work}/kubeconfig"
  fi
fi
context=$(kubectl config current-context 2>/dev/null || true)
[ "$context" = "kind-${cluster}" ] || die "KUBECONFIG (${KUBECONFIG}) points at '${context}', not kind-${cluster}"
kubectl get namespace "$ns" >/dev/null 2>&1 || die "namespace ${ns} missing (scripts/kind-up.sh creates it)"

if [ "$mode" = uninstall ]; then
  t=$(now)
  touched=1
  # The user pods first (the hub leaves them running when it goes: cleanup_servers is off).
  kubectl -n "$ns" delete deploy hub proxy --ignore-not-found --wait=false >/dev/null \
    || die "kubectl delete of the hub and proxy Deployments failed"
  kubectl -n "$ns" delete pods -l component=singleuser-server --grace-period=0 --force --ignore-not-found \
    --wait=false >/dev/null 2>&1 || die "kubectl delete of the single-user pods failed"
  kubectl -n "$ns" delete pvc -l component=singleuser-storage --ignore-not-found --wait=false >/dev/null \
    || die "kubectl delete of the single-user PVCs failed"
  kubectl -n "$ns" delete svc/hub svc/proxy-api svc/proxy-public secret/hub configmap/hub \
    serviceaccount/hub role/hub rolebinding/hub --ignore-not-found >/dev/null || die "kubectl delete of the hub's objects failed"
  deadline=$(( $(date +%s) + wait_s ))
  while :; do
    left=$(kubectl -n "$ns" get pods,pvc -l 'component in (hub, proxy, singleuser-server, singleuser-storage)' \
      --no-headers 2>/dev/null | wc -l)
    [ "$left" -eq 0 ] && break
    [ "$(date +%s)" -lt "$deadline" ] || die "${left} hub, proxy or single-user pods/PVCs still in ${ns} after ${wait_s}s"
    sleep 1
  done
  say "uninstalled: the hub, the proxy, the single-user pods and PVCs are gone from ${ns} in $(since "$t")"
  exit 0
fi

# --- 1. images --------------------------------------------------------------------------------
t=$(now)
scripts/hub-images.sh >"${work}/images.out" 2>"${work}/images.log" \
  || { tail -n 25 "${work}/images.log" >&2; die "scripts/hub-images.sh failed"; }
hub_image=$(sed -n 's/^hub=//p' "${work}/images.out" | tail -n 1)
su_image=$(sed -n 's/^singleuser=//p' "${work}/images.out" | tail -n 1)
[ -n "$hub_image" ] && [ -n "$su_image" ] || die "scripts/hub-images.sh printed no hub=/singleuser= lines"
say "1. images: hub ${hub_image}, singleuser ${su_image} in $(since "$t")"

# --- 2. into the nodes ------------------------------------------------------------------------
t=$(now)
kind load docker-image --name "$cluster" "$hub_image" "$su_image" >"${work}/kind-load.log" 2>&1 \
  || { cat "${work}/kind-load.log" >&2; die "kind load docker-image failed"; }
say "2. loaded both images into ${cluster}'s nodes in $(since "$t")"
touched=1

# --- 3. gpu-queue's token and CA --------------------------------------------------------------
t=$(now)
tokens=$(kubectl -n "$queue_ns" get secret gpu-queue-api -o jsonpath='{.data.read-tokens}' 2>/dev/null | base64 -d) \
  || die "secret ${queue_ns}/gpu-queue-api (read-tokens) not readable: is gpu-queue installed?"
GQ_HUB_TOKEN=${tokens%%,*}
[ -n "$GQ_HUB_TOKEN" ] || die "secret ${queue_ns}/gpu-queue-api has no read token"
export GQ_HUB_TOKEN
kubectl -n "$queue_ns" get secret gpu-queue-tls -o jsonpath='{.data.ca\.crt}' | base64 -d >"${work}/gpu-queue-ca.crt"
grep -q 'BEGIN CERTIFICATE' "${work}/gpu-queue-ca.crt" || die "secret ${queue_ns}/gpu-queue-tls has no ca.crt"
say "3. queue API read token (${#GQ_HUB_TOKEN} chars) and CA ($(openssl x509 -noout -subject -in "${work}/gpu-queue-ca.crt" 2>/dev/null || echo '?')) in $(since "$t")"

# --- 4. the values ----------------------------------------------------------------------------
t=$(now)
sets=(
  --set-string "singleuser.image.name=${su_image%:*}"
  --set-string "singleuser.image.tag=${su_image##*:}"
  --set-string "kind.profileImage=${su_image}"
  --set-env "hub.services.gpu-queue.apiToken=GQ_HUB_TOKEN"
  --set-file "hub.extraFiles.gpu-queue-hub.stringData=${repo}/webhook/hub.py"
  --set-file "hub.extraFiles.gpu-queue-ca.stringData=${work}/gpu-queue-ca.crt"
  --set-file "hub.extraFiles.gpu-queue-spawn-pending.stringData=${repo}/webhook/hub_templates/spawn_pending.html"
  --set-file "hub.extraFiles.gpu-queue-home.stringData=${repo}/webhook/hub_templates/home.html"
)
pages="the waiting room"
[ "${STOCK_PAGES:-0}" = 1 ] && { sets+=(--unset "hub.extraConfig.gpu-queue-templates"); pages="the stock pages"; }
[ -n "${CULL_TIMEOUT:-}" ] && sets+=(--set-string "cull.timeout=${CULL_TIMEOUT}")
[ -n "${CULL_EVERY:-}" ] && sets+=(--set-string "cull.every=${CULL_EVERY}")
"$python" "${static}/merge_values.py" values -f "${repo}/docs/z2jh-values.yaml" -f "${static}/values.yaml" \
  "${sets[@]}" >"${work}/values.yaml" || die "merging the values failed"
profiles=$("$python" -c 'import sys, yaml; v = yaml.safe_load(open(sys.argv[1])); print(" ".join(p["slug"] for p in v["singleuser"]["profileList"]))' "${work}/values.yaml")
say "4. values: z2jh defaults + docs/z2jh-values.yaml + tools/kind-hub/values.yaml + token/files; profiles: ${profiles}; ${pages} in $(since "$t")"

# --- 5. apply ---------------------------------------------------------------------------------
t=$(now)
CONFIGPROXY_AUTH_TOKEN=$(kubectl -n "$ns" get secret hub -o jsonpath='{.data.hub\.config\.ConfigurableHTTPProxy\.auth_token}' 2>/dev/null | base64 -d || true)
[ -n "$CONFIGPROXY_AUTH_TOKEN" ] || CONFIGPROXY_AUTH_TOKEN=$(openssl rand -hex 32)
export CONFIGPROXY_AUTH_TOKEN
"$python" "${static}/merge_values.py" manifests --values "${work}/values.yaml" --hub-image "$hub_image" \
  >"${work}/manifests.yaml" || die "rendering the manifests failed"
kubectl -n "$ns" apply -f "${work}/manifests.yaml" >"${work}/apply.log" 2>&1 \
  || { cat "${work}/apply.log" >&2; die "kubectl apply failed"; }
sed 's/^/    /' "${work}/apply.log" >&2
say "5. applied in $(since "$t")"

# --- 6. Ready ---------------------------------------------------------------------------------
t=$(now)
deadline=$(( $(date +%s) + wait_s ))
for d in hub proxy; do
  left=$(( deadline - $(date +%s) ))
  [ "$left" -gt 0 ] || left=1
  kubectl -n "$ns" rollout status "deploy/${d}" --timeout="${left}s" >/dev/null 2>"${work}/rollout.err" \
    || { cat "${work}/rollout.err" >&2; die "deploy/${d} not Ready within ${wait_s}s"; }
  say "6. deploy/${d} Ready ($(kubectl -n "$ns" get pods -l "component=${d}" -o jsonpath='{.items[0].metadata.name} on {.items[0].spec.nodeName}')) $(since "$t") after apply"
done

# --- 7. the login page through the proxy ------------------------------------------------------
t=$(now)
kubectl -n "$ns" port-forward svc/proxy-public :80 >"${work}/pf.log" 2>&1 &
pf_pid=$!
port=""
for _ in $(seq 1 100); do
  port=$(sed -n 's/^Forwarding from 127\.0\.0\.1:\([0-9]*\) .*/\1/p' "${work}/pf.log" | head -n 1)
  [ -n "$port" ] && break
  kill -0 "$pf_pid" 2>/dev/null || break
  sleep 0.1
done
[ -n "$port" ] || { cat "${work}/pf.log" >&2; die "kubectl port-forward svc/proxy-public did not start"; }
code=""
for _ in $(seq 1 30); do  # the proxy learns its routes from the hub shortly after both are Ready
  code=$(curl -sS -o "${work}/login.html" -w '%{http_code}' "http://127.0.0.1:${port}/hub/login" 2>"${work}/curl.err" || true)
  [ "$code" = 200 ] && grep -q 'name="username"' "${work}/login.html" && break
  sleep 1
done
[ "$code" = 200 ] || { cat "${work}/curl.err" >&2; head -c 600 "${work}/login.html" >&2 || true; die "GET /hub/login through the proxy answered ${code:-nothing}, not 200"; }
grep -q 'name="username"' "${work}/login.html" && grep -q 'name="password"' "${work}/login.html" \
  || { head -c 600 "${work}/login.html" >&2; die "GET /hub/login answered 200 without a login form"; }
version=$(curl -sS "http://127.0.0.1:${port}/hub/api" 2>/dev/null | "$python" -c 'import json, sys; print(json.load(sys.stdin)["version"])' || echo '?')
say "7. GET /hub/login through svc/proxy-public: 200 with the login form (JupyterHub ${version}) in $(since "$t")"
kill "$pf_pid" 2>/dev/null || true
wait "$pf_pid" 2>/dev/null || true
pf_pid=""

cat >&2 <<EOF
[kind-hub] JupyterHub is up in ${cluster}, namespace ${ns}:
    export KUBECONFIG=${KUBECONFIG}
    kubectl -n ${ns} port-forward svc/proxy-public 8000:80
    open http://127.0.0.1:8000/ and log in as any user name with password '${password}'
    (user 'admin' is an admin: http://127.0.0.1:8000/hub/admin); profiles: ${profiles}
EOF
