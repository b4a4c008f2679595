#!/usr/bin/env bash
# Build Kueue, the peer that bench/peer.py compares gpu-queue with, from its published Go module
# into the same cache as tools/build.sh, and copy the CRDs and webhook manifests it ships (from
# the downloaded module, not from this repository) next to the binary, where the bench reads them.
# Built once per version; a second run only refreshes the symlink.
#
#   tools/build-kueue.sh      build what is missing, print progress
#   GPU_QUEUE_CACHE=DIR ...   cache root (default: ~/.cache/gpu-queue)
#
# Output: $GPU_QUEUE_CACHE/kueue-v0.17.0/{kueue,manifests/crd/*.yaml,manifests/webhooks.yaml}
# and the symlink $GPU_QUEUE_CACHE/bin/kueue.
set -euo pipefail
KUEUE_VERSION=v0.17.0
KUEUE_MODULE=sigs.k8s.io/kueue
cache=${GPU_QUEUE_CACHE:-$HOME/.cache/gpu-queue}
bin=$cache/bin
dir=$cache/kueue-$KUEUE_VERSION
mkdir -p "$bin"
# Kueue's go.mod asks for Go 1.25: the local toolchain builds it, nothing is downloaded for Go itself.
export CGO_ENABLED=0 GOTOOLCHAIN=local

log() { printf '[kueue %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
built() { [ -x "$dir/kueue" ] && [ -f "$dir/manifests/webhooks.yaml" ] && [ -f "$dir/manifests/crd/kueue.x-k8s.io_workloads.yaml" ]; }

if built; then
  log "kueue $KUEUE_VERSION: cached in $dir"
else
  started=$(date +%s)
  log "kueue $KUEUE_VERSION: downloading $KUEUE_MODULE from the Go module proxy"
  moddir=$(go mod download -json "$KUEUE_MODULE@$KUEUE_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  if [ -z "$moddir" ] || [ ! -d "$moddir/config/components/crd/bases" ]; then
    log "kueue $KUEUE_VERSION: the module has no config/components/crd/bases (dir: ${moddir:-none})"
    exit 1
  fi
  rm -rf "$dir.tmp"
  mkdir -p "$dir.tmp/manifests/crd"
  log "kueue $KUEUE_VERSION: building cmd/kueue (about 1,200 packages; a cold build takes 10-20 min on 2 cores)"
  ldflags="-s -w -X $KUEUE_MODULE/pkg/version.GitVersion=$KUEUE_VERSION"
  GOBIN="$dir.tmp" go install -trimpath -ldflags "$ldflags" "$KUEUE_MODULE/cmd/kueue@$KUEUE_VERSION"
  # The module cache is read-only: copy the files, then make the copies ours.
  cp "$moddir"/config/components/crd/bases/*.yaml "$dir.tmp/manifests/crd/"
  cp "$moddir/config/components/webhook/manifests.yaml" "$dir.tmp/manifests/webhooks.yaml"
  cp "$moddir/config/components/manager/controller_manager_config.yaml" "$dir.tmp/manifests/"
  chmod -R u+w "$dir.tmp"
  rm -rf "$dir" && mv "$dir.tmp" "$dir"
  log "kueue $KUEUE_VERSION: built in $(($(date +%s) - started)) s"
fi

ln -sfn "$dir/kueue" "$bin/kueue"
log "kueue ready: $bin/kueue, manifests in $dir/manifests"
