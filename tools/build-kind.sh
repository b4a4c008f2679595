#!/usr/bin/env bash
# Build the binaries a kind test tier needs, from published Go modules, into the same cache as
# tools/build.sh: kind itself, the node-side Kubernetes binaries (kubelet, kubeadm, kubectl,
# kube-controller-manager, kube-proxy) from the same k8s.io/kubernetes as KUBERNETES_VERSION in
# tools/versions.env, crictl, the CNI plugins a node needs, and CoreDNS. Each tool is built once per
# pinned version; a second run only refreshes the symlinks in $BIN.
#
#   tools/build-kind.sh        build what is missing, print progress, build time and size
#   GPU_QUEUE_CACHE=DIR ...    cache root (default: ~/.cache/gpu-queue)
#
# kubelet is built with CGO_ENABLED=0 like the rest. Upstream release builds link it with cgo (it is
# not in hack/lib/golang.sh's KUBE_STATIC_BINARIES), but with cgo on, the only cgo packages in its
# import graph are runtime/cgo, net and os/user (glibc resolver and user lookup), so a static
# kubelet loses nothing, reuses the CGO_ENABLED=0 build cache and runs in any node root.
#
# Output: $GPU_QUEUE_CACHE/bin/{kind,kubelet,kubeadm,kubectl,kube-controller-manager,kube-proxy,
#         crictl,coredns,containerd,containerd-shim-runc-v2,ctr,runc} (symlinks) and
#         $GPU_QUEUE_CACHE/cni-bin -> the CNI plugins directory (a node's /opt/cni/bin).
# runc needs cgo and libseccomp (Debian: gcc libseccomp-dev pkg-config); without them it is
# skipped with a warning (a node root can then take Debian's runc package instead).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=/dev/null
source "$here/versions.env"

# Pins for the kind tier (candidates for tools/versions.env). Kubernetes comes from versions.env.
KIND_VERSION=${KIND_VERSION:-v0.33.0}                # the verified kind release
CRICTL_VERSION=${CRICTL_VERSION:-v1.36.0}            # what kind v0.33.0's base image ships
CNI_PLUGINS_VERSION=${CNI_PLUGINS_VERSION:-v1.9.1}   # what kind v0.33.0's base image ships
COREDNS_VERSION=${COREDNS_VERSION:-v1.13.1}          # kubeadm v1.35's constants.CoreDNSVersion
CONTAINERD_VERSION=${CONTAINERD_VERSION:-v2.3.4}     # what kind v0.33.0's base image ships
RUNC_VERSION=${RUNC_VERSION:-v1.4.3}                 # what kind v0.33.0's base image ships
CNI_PLUGINS="bridge host-local loopback portmap ptp" # kind ships host-local loopback ptp portmap

cache=${GPU_QUEUE_CACHE:-$HOME/.cache/gpu-queue}
bin=$cache/bin
mkdir -p "$bin"
export CGO_ENABLED=0 GOFLAGS=-trimpath GOTOOLCHAIN=local

log() { printf '[kind-tools %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
built() { [ -x "$1" ]; }
size() { du -m "$1" | cut -f1; }

# timed NAME FILE CMD... : run CMD, then log how long it took and how big FILE is.
timed() {
  local name=$1 file=$2 start; shift 2
  start=$(date +%s)
  "$@"
  log "$name: built in $(( $(date +%s) - start ))s, $(size "$file") MB"
}

# Kubernetes node binaries: wrapper module tools/kubernetes-node (same k8s.io/kubernetes and
# dependency versions as tools/kubernetes, so the go build cache of kube-apiserver is reused; it is
# a separate module because kubelet & co. need modules that tools/kubernetes/go.sum lacks).
k8s_dir=$cache/kubernetes-node-$KUBERNETES_VERSION
mkdir -p "$k8s_dir"
minor=${KUBERNETES_VERSION#v1.}; minor=${minor%%.*}
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$KUBERNETES_VERSION"
ldflags+=" -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor"
ldflags+=" -X k8s.io/component-base/version.gitTreeState=clean"
ldflags+=" -X k8s.io/client-go/pkg/version.gitVersion=$KUBERNETES_VERSION"
ldflags+=" -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor"
k8s_cmds="kubeadm kubectl kubelet kube-proxy kube-controller-manager"
for cmd in $k8s_cmds; do
  if built "$k8s_dir/$cmd"; then log "kubernetes $KUBERNETES_VERSION: $cmd cached"; continue; fi
  log "kubernetes $KUBERNETES_VERSION: building $cmd (1-2 min each once kube-apiserver's build cache is warm)"
  (cd "$here/kubernetes-node" &&
    timed "$cmd" "$k8s_dir/.$cmd.tmp" go build -ldflags "$ldflags" -o "$k8s_dir/.$cmd.tmp" "k8s.io/kubernetes/cmd/$cmd")
  mv "$k8s_dir/.$cmd.tmp" "$k8s_dir/$cmd"
done

# gobin_tool DIRNAME VERSION LDFLAGS PACKAGE... : go install PACKAGE@VERSION into $cache/DIRNAME-VERSION.
# The first package's last path element is the binary checked for "cached".
gobin_tool() {
  local name=$1 version=$2 lflags=$3; shift 3
  local dir=$cache/$name-$version first=${1##*/} pkgs=() p start
  if built "$dir/$first"; then log "$name $version: cached"; return; fi
  for p in "$@"; do pkgs+=("$p@$version"); done
  log "$name $version: building ${*##*/}"
  rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
  start=$(date +%s)
  GOBIN="$dir.tmp" go install -ldflags "$lflags" "${pkgs[@]}"
  log "$name $version: built in $(( $(date +%s) - start ))s, $(cd "$dir.tmp" && du -m -- * | awk '{printf "%s%s %s MB", s, $2, $1; s=", "}')"
  rm -rf "$dir" && mv "$dir.tmp" "$dir"
}

gobin_tool kind "$KIND_VERSION" "-s -w" sigs.k8s.io/kind
gobin_tool crictl "$CRICTL_VERSION" "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=$CRICTL_VERSION" \
  sigs.k8s.io/cri-tools/cmd/crictl
cni_pkgs=()
for p in $CNI_PLUGINS; do
  case $p in
    host-local|static|dhcp) cni_pkgs+=("github.com/containernetworking/plugins/plugins/ipam/$p") ;;
    portmap|bandwidth|firewall|tuning|sbr|vrf) cni_pkgs+=("github.com/containernetworking/plugins/plugins/meta/$p") ;;
    *) cni_pkgs+=("github.com/containernetworking/plugins/plugins/main/$p") ;;
  esac
done
gobin_tool cni-plugins "$CNI_PLUGINS_VERSION" \
  "-s -w -X github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion=$CNI_PLUGINS_VERSION" \
  "${cni_pkgs[@]}"
gobin_tool coredns "$COREDNS_VERSION" "-s -w -X github.com/coredns/coredns/coremain.GitCommit=$COREDNS_VERSION" \
  github.com/coredns/coredns

# containerd: static (CGO_ENABLED=0 works once the cgo-only btrfs/devmapper snapshotters are tagged
# out), with the build tags kind's base image uses; the shim is built apart with no_grpc, as
# containerd's Makefile does.
ctd_dir=$cache/containerd-$CONTAINERD_VERSION
if built "$ctd_dir/containerd" && built "$ctd_dir/containerd-shim-runc-v2" && built "$ctd_dir/ctr"; then
  log "containerd $CONTAINERD_VERSION: cached"
else
  log "containerd $CONTAINERD_VERSION: building containerd ctr containerd-shim-runc-v2"
  rm -rf "$ctd_dir.tmp" && mkdir -p "$ctd_dir.tmp"
  ctd=github.com/containerd/containerd/v2
  ctd_ldflags="-s -w -X $ctd/version.Version=$CONTAINERD_VERSION -X $ctd/version.Package=$ctd"
  ctd_tags=no_aufs,no_zfs,no_btrfs,no_devmapper,urfave_cli_no_docs
  start=$(date +%s)
  GOBIN="$ctd_dir.tmp" go install -tags "$ctd_tags" -ldflags "$ctd_ldflags" \
    "$ctd/cmd/containerd@$CONTAINERD_VERSION" "$ctd/cmd/ctr@$CONTAINERD_VERSION"
  GOBIN="$ctd_dir.tmp" go install -tags "$ctd_tags,no_grpc" -ldflags "$ctd_ldflags" \
    "$ctd/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION"
  log "containerd $CONTAINERD_VERSION: built in $(( $(date +%s) - start ))s, $(cd "$ctd_dir.tmp" && du -m -- * | awk '{printf "%s%s %s MB", s, $2, $1; s=", "}')"
  rm -rf "$ctd_dir" && mv "$ctd_dir.tmp" "$ctd_dir"
fi

# runc: cgo is required (libcontainer/nsenter is C); linked static-pie with libseccomp, as runc's
# `make static` does, so it runs in any node root.
runc_dir=$cache/runc-$RUNC_VERSION
if built "$runc_dir/runc"; then
  log "runc $RUNC_VERSION: cached"
elif ! command -v gcc >/dev/null || ! pkg-config --exists libseccomp 2>/dev/null; then
  log "runc $RUNC_VERSION: SKIPPED, needs gcc, pkg-config and libseccomp-dev (apt-get install -y gcc pkg-config libseccomp-dev)"
else
  log "runc $RUNC_VERSION: building (cgo, static-pie, seccomp)"
  rm -rf "$runc_dir.tmp" && mkdir -p "$runc_dir.tmp"
  start=$(date +%s)
  CGO_ENABLED=1 GOBIN="$runc_dir.tmp" go install -buildmode=pie -tags "seccomp urfave_cli_no_docs netgo osusergo" \
    -ldflags "-s -w -X main.version=${RUNC_VERSION#v} -linkmode external -extldflags -static-pie" \
    "github.com/opencontainers/runc@$RUNC_VERSION"
  log "runc $RUNC_VERSION: built in $(( $(date +%s) - start ))s, $(size "$runc_dir.tmp/runc") MB"
  rm -rf "$runc_dir" && mv "$runc_dir.tmp" "$runc_dir"
fi

for cmd in $k8s_cmds; do ln -sfn "$k8s_dir/$cmd" "$bin/$cmd"; done
ln -sfn "$cache/kind-$KIND_VERSION/kind" "$bin/kind"
ln -sfn "$cache/crictl-$CRICTL_VERSION/crictl" "$bin/crictl"
ln -sfn "$cache/coredns-$COREDNS_VERSION/coredns" "$bin/coredns"
for cmd in containerd ctr containerd-shim-runc-v2; do ln -sfn "$ctd_dir/$cmd" "$bin/$cmd"; done
if built "$runc_dir/runc"; then ln -sfn "$runc_dir/runc" "$bin/runc"; fi
ln -sfn "$cache/cni-plugins-$CNI_PLUGINS_VERSION" "$cache/cni-bin"
log "kind tools ready in $bin (CNI plugins in $cache/cni-bin)"
