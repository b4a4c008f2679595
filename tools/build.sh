#!/usr/bin/env bash
# Build the real Kubernetes control-plane binaries (kube-apiserver, kube-scheduler), etcd, kwok and
# helm from their published Go modules into a cache outside the repository. Each tool is built once
# per pinned version (tools/versions.env); a second run only refreshes the symlinks in $BIN.
#
#   tools/build.sh            build what is missing, print progress
#   GPU_QUEUE_CACHE=DIR ...   cache root (default: ~/.cache/gpu-queue)
#
# Output: $GPU_QUEUE_CACHE/bin/{kube-apiserver,kube-scheduler,etcd,kwok,helm} (symlinks).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=/dev/null
source "$here/versions.env"
cache=${GPU_QUEUE_CACHE:-$HOME/.cache/gpu-queue}
bin=$cache/bin
mkdir -p "$bin"
export CGO_ENABLED=0 GOFLAGS=-trimpath GOTOOLCHAIN=local

log() { printf '[tools %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# build NAME DIR CMD... : run CMD in DIR unless $cache/NAME already exists.
built() { [ -x "$1" ]; }

k8s_dir=$cache/kubernetes-$KUBERNETES_VERSION
if built "$k8s_dir/kube-apiserver" && built "$k8s_dir/kube-scheduler"; then
  log "kubernetes $KUBERNETES_VERSION: cached"
else
  mkdir -p "$k8s_dir.tmp"
  minor=${KUBERNETES_VERSION#v1.}; minor=${minor%%.*}
  ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$KUBERNETES_VERSION"
  ldflags+=" -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor"
  ldflags+=" -X k8s.io/component-base/version.gitTreeState=clean"
  ldflags+=" -X k8s.io/client-go/pkg/version.gitVersion=$KUBERNETES_VERSION"
  ldflags+=" -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor"
  for cmd in kube-apiserver kube-scheduler; do
    log "kubernetes $KUBERNETES_VERSION: building $cmd (a cold build takes 10-25 min on 2 cores)"
    (cd "$here/kubernetes" && go build -ldflags "$ldflags" -o "$k8s_dir.tmp/$cmd" "k8s.io/kubernetes/cmd/$cmd")
  done
  rm -rf "$k8s_dir" && mv "$k8s_dir.tmp" "$k8s_dir"
fi

etcd_dir=$cache/etcd-$ETCD_VERSION
if built "$etcd_dir/etcd"; then
  log "etcd $ETCD_VERSION: cached"
else
  log "etcd $ETCD_VERSION: building"
  mkdir -p "$etcd_dir.tmp"
  (cd "$here/etcd" && go build -ldflags "-s -w" -o "$etcd_dir.tmp/etcd" go.etcd.io/etcd/server/v3)
  rm -rf "$etcd_dir" && mv "$etcd_dir.tmp" "$etcd_dir"
fi

gobin_tool() { # NAME VERSION PACKAGE
  local dir=$cache/$1-$2
  if built "$dir/$1"; then log "$1 $2: cached"; return; fi
  log "$1 $2: building"
  mkdir -p "$dir.tmp"
  GOBIN="$dir.tmp" go install -ldflags "-s -w" "$3@$2"
  rm -rf "$dir" && mv "$dir.tmp" "$dir"
}
gobin_tool kwok "$KWOK_VERSION" sigs.k8s.io/kwok/cmd/kwok
gobin_tool helm "$HELM_VERSION" helm.sh/helm/v3/cmd/helm

ln -sfn "$k8s_dir/kube-apiserver" "$bin/kube-apiserver"
ln -sfn "$k8s_dir/kube-scheduler" "$bin/kube-scheduler"
ln -sfn "$etcd_dir/etcd" "$bin/etcd"
ln -sfn "$cache/kwok-$KWOK_VERSION/kwok" "$bin/kwok"
ln -sfn "$cache/helm-$HELM_VERSION/helm" "$bin/helm"
log "tools ready in $bin"
