#!/usr/bin/env bash
# A kind node image without a registry: gpu-queue-kind-node:v1.35.4-<key>.
#
#   scripts/kind-node-image.sh           # build (cached); prints the tag on stdout
#   scripts/kind-node-image.sh --check   # also: kind create cluster (1 control plane + 1 worker),
#                                        # nodes and kube-system pods Ready, a pod on the worker
#                                        # reaches the API server by DNS name, kind delete cluster
#
# The image follows kind v0.33.0's images/base Dockerfile and pkg/build/nodeimage, from parts made
# on this machine: a debootstrap Debian root (systemd, iptables, nftables, conntrack, ...) with
# kind's base files (entrypoint, containerd config, kubelet units, /kind/bin/*.sh) taken from the
# kind module in GOMODCACHE; the binaries tools/build-kind.sh and tools/build.sh leave in
# ~/.cache/gpu-queue/bin and ~/.cache/gpu-queue/cni-bin; a bridge CNI in place of kindnetd (use
# networking.disableDefaultCNI): kind-cni.service writes tools/kind-node/10-bridge.conflist with
# the node's podCIDR and routes the other nodes' podCIDRs (tools/kind-node/kind-cni.sh); and the
# control-plane images `kubeadm config images list` names, each a tiny `docker import` of its static binary (kube-proxy on the node root, for iptables;
# pause from tools/kind-node/pause.go), preloaded into containerd's k8s.io namespace by a
# containerd run inside a build container that is then `docker commit`ed.
#
# Cached: skipped while the engine has the tag; `docker load`ed from
# ~/.cache/gpu-queue/images/<tag>.tar when the engine lacks it. The intermediate node root
# (gpu-queue-kind-root:<key>) is kept in the engine so a change to the images only rebuilds them.
#
# Cluster config for cgroup v1 hosts: tools/kind-node/cluster.yaml (failCgroupV1: false).
#
# Environment: DEBIAN_SUITE (default bookworm), DEBIAN_MIRROR (default: debootstrap's own),
# KIND_CLUSTER (default gpu-queue-e2e, for --check), GQ_CACHE (default ~/.cache/gpu-queue).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

say() { printf '[kind-node %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { say "error: $*"; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }

check=0
case "${1:-}" in
  "") ;;
  --check) check=1 ;;
  -h | --help) sed -n '2,27p' "$0"; exit 0 ;;
  *) die "unknown argument: $1 (try --help)" ;;
esac

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
k8s_version=v1.35.4
suite="${DEBIAN_SUITE:-bookworm}"
mirror="${DEBIAN_MIRROR:-}"
gq="${GQ_CACHE:-${HOME}/.cache/gpu-queue}"
bin="${gq}/bin"
cni_bin="${gq}/cni-bin"
cache="${gq}/images"
static="${repo}/tools/kind-node"
cluster="${KIND_CLUSTER:-gpu-queue-e2e}"
kind_mod="$(go env GOMODCACHE 2>/dev/null || echo "${HOME}/go/pkg/mod")/sigs.k8s.io/kind@v0.33.0"
kind_files="${kind_mod}/images/base/files"
# kind's base packages (less fuse-overlayfs, nfs-common, open-iscsi, e2fsprogs: not used here).
packages="systemd,conntrack,iptables,nftables,iproute2,ethtool,util-linux,mount,kmod,libseccomp2,pigz,bash,ca-certificates,curl,jq,procps"
# Bump when this recipe changes in a way the keys below cannot see.
recipe=3
root_recipe=1

t_all=$(now)
scripts/docker.sh >/dev/null 2>&1 || docker info >/dev/null 2>&1 || die "no Docker engine (scripts/docker.sh failed)"
export DOCKER_BUILDKIT=0

[ -d "$kind_files" ] || die "kind module files not found at ${kind_files} (go mod download sigs.k8s.io/kind@v0.33.0)"
node_bins="kubelet kubeadm kubectl containerd ctr containerd-shim-runc-v2 crictl runc"
image_bins="kube-apiserver kube-controller-manager kube-scheduler kube-proxy etcd coredns"
for b in $node_bins $image_bins; do
  [ -x "${bin}/${b}" ] || die "${bin}/${b} missing (run tools/build-kind.sh / tools/build.sh)"
done
for p in bridge host-local loopback portmap ptp; do
  [ -x "${cni_bin}/${p}" ] || die "${cni_bin}/${p} missing (run tools/build-kind.sh)"
done

# --- keys -------------------------------------------------------------------------------------
sum_files() { sha256sum "$@" | cut -c1-64; }
ca_bundle=/etc/ssl/certs/ca-certificates.crt
root_key=$( {
  printf '%s\n' "root_recipe=${root_recipe}" "suite=${suite}" "mirror=${mirror}" "include=${packages}"
  (cd "$kind_files" && find . -type f | LC_ALL=C sort | xargs sha256sum)
  for b in $node_bins; do sum_files "$(readlink -f "${bin}/${b}")"; done
  for p in bridge host-local loopback portmap ptp; do sum_files "$(readlink -f "${cni_bin}/${p}")"; done
  sum_files "${static}/10-bridge.conflist" "${static}/default-storage.yaml"
  if [ -r "$ca_bundle" ]; then sum_files "$ca_bundle"; fi
} | sha256sum | cut -c1-12)
root_image="gpu-queue-kind-root:${root_key}"
key=$( {
  printf '%s\n' "recipe=${recipe}" "root=${root_key}"
  for b in $image_bins; do sum_files "$(readlink -f "${bin}/${b}")"; done
  sum_files "${static}/pause.go" "${static}/kind-cni.sh" "${static}/kind-cni.service"
} | sha256sum | cut -c1-12)
tag="gpu-queue-kind-node:${k8s_version}-${key}"
tarball="${cache}/${tag//:/_}.tar"
mkdir -p "$cache"

work=""
build_ctr=""
cleanup() {
  [ -n "$build_ctr" ] && docker rm -f "$build_ctr" >/dev/null 2>&1 || true
  [ -n "$work" ] && [ -d "$work" ] || return 0
  awk -v d="$work" 'index($2, d) == 1 { print $2 }' /proc/mounts | sort -r \
    | while read -r m; do $sudo umount -l "$m" || true; done
  $sudo rm -rf --one-file-system "$work"
}
trap cleanup EXIT

build_image() {
  work=$(mktemp -d "${cache}/kind-node.XXXXXX")

  # --- 1. the node root ------------------------------------------------------------------------
  local t
  t=$(now)
  if docker image inspect "$root_image" >/dev/null 2>&1; then
    say "node root ${root_image}: present"
  else
    local rootfs="${work}/rootfs" dlog="${cache}/kind-node-debootstrap.log"
    say "node root ${root_image}: debootstrap --variant=minbase ${suite} (${packages})"
    # shellcheck disable=SC2086  # $mirror is empty or one word
    if ! $sudo env PATH="/usr/sbin:/sbin:${PATH}" debootstrap --variant=minbase \
        --include="$packages" "$suite" "$rootfs" $mirror >"$dlog" 2>&1; then
      tail -n 20 "$dlog" >&2
      die "debootstrap failed (log: ${dlog})"
    fi
    say "debootstrap done in $(since "$t")"
    local t2
    t2=$(now)
    # debootstrap leaves proc/sys mounted in some versions: unmount before editing.
    awk -v d="$rootfs" 'index($2, d) == 1 { print $2 }' /proc/mounts | sort -r \
      | while read -r m; do $sudo umount -l "$m" || true; done
    # kind's base files (images/base/Dockerfile COPY lines).
    $sudo install -d -m 0755 "${rootfs}/usr/local/bin" "${rootfs}/kind" "${rootfs}/kind/bin" \
      "${rootfs}/kind/manifests" "${rootfs}/LICENSES" "${rootfs}/etc/containerd" \
      "${rootfs}/etc/systemd/system/kubelet.service.d" "${rootfs}/opt/cni/bin" "${rootfs}/etc/cni/net.d" \
      "${rootfs}/usr/local/sbin" "${rootfs}/etc/kubernetes/manifests"
    $sudo install -m 0755 "${kind_files}"/usr/local/bin/* "${rootfs}/usr/local/bin/"
    $sudo install -m 0644 "${kind_files}"/kind/README.txt "${rootfs}/kind/"
    $sudo install -m 0755 "${kind_files}"/kind/bin/* "${rootfs}/kind/bin/"
    $sudo install -m 0644 "${kind_files}"/LICENSES/* "${rootfs}/LICENSES/"
    $sudo install -m 0644 "${kind_files}"/etc/crictl.yaml "${rootfs}/etc/"
    $sudo install -m 0644 "${kind_files}"/etc/containerd/* "${rootfs}/etc/containerd/"
    $sudo install -m 0644 "${kind_files}"/etc/default/* "${rootfs}/etc/default/"
    $sudo install -m 0644 "${kind_files}"/etc/sysctl.d/* "${rootfs}/etc/sysctl.d/"
    $sudo install -m 0644 "${kind_files}"/etc/systemd/system/*.service "${kind_files}"/etc/systemd/system/*.slice \
      "${rootfs}/etc/systemd/system/"
    $sudo install -m 0644 "${kind_files}"/etc/systemd/system/kubelet.service.d/* \
      "${rootfs}/etc/systemd/system/kubelet.service.d/"
    # The Dockerfile's RUN: trim systemd to what a node container needs.
    $sudo find "${rootfs}/lib/systemd/system/sysinit.target.wants/" -name "systemd-tmpfiles-setup.service" -delete
    $sudo sh -c "rm -f '${rootfs}'/lib/systemd/system/multi-user.target.wants/* \
      '${rootfs}'/etc/systemd/system/*.wants/* \
      '${rootfs}'/lib/systemd/system/local-fs.target.wants/* \
      '${rootfs}'/lib/systemd/system/sockets.target.wants/*udev* \
      '${rootfs}'/lib/systemd/system/sockets.target.wants/*initctl* \
      '${rootfs}'/lib/systemd/system/basic.target.wants/*"
    echo "ReadKMsg=no" | $sudo tee -a "${rootfs}/etc/systemd/journald.conf" >/dev/null
    $sudo ln -sf /usr/lib/systemd/systemd "${rootfs}/sbin/init"
    # Binaries (pkg/build/nodeimage and the base's build stages).
    for b in kubelet kubeadm kubectl; do $sudo install -m 0755 "${bin}/${b}" "${rootfs}/usr/bin/${b}"; done
    for b in containerd ctr containerd-shim-runc-v2 crictl; do
      $sudo install -m 0755 "${bin}/${b}" "${rootfs}/usr/local/bin/${b}"
    done
    $sudo install -m 0755 "${bin}/runc" "${rootfs}/usr/local/sbin/runc"
    for p in bridge host-local loopback portmap ptp; do
      $sudo install -m 0755 "${cni_bin}/${p}" "${rootfs}/opt/cni/bin/${p}"
    done
    $sudo install -m 0644 "${static}/10-bridge.conflist" "${rootfs}/etc/cni/net.d/10-bridge.conflist"
    $sudo install -m 0644 "${static}/default-storage.yaml" "${rootfs}/kind/manifests/default-storage.yaml"
    "${bin}/ctr" oci spec \
      | jq '.hooks.createContainer[.hooks.createContainer| length] |= . + {"path": "/kind/bin/mount-product-files.sh"}' \
      | jq 'del(.process.rlimits)' | $sudo tee "${rootfs}/etc/containerd/cri-base.json" >/dev/null
    printf '%s' "$k8s_version" | $sudo tee "${rootfs}/kind/version" >/dev/null
    [ -r "$ca_bundle" ] && $sudo install -m 0644 "$ca_bundle" "${rootfs}/etc/ssl/certs/ca-certificates.crt"
    # Enable / disable services (systemctl works offline on a root with --root).
    $sudo systemctl --root="$rootfs" enable kubelet.service containerd.service undo-mount-hacks.service >/dev/null 2>&1 \
      || die "systemctl --root enable failed"
    $sudo systemctl --root="$rootfs" mask systemd-binfmt.service >/dev/null 2>&1 || true
    $sudo rm -rf "${rootfs}"/var/cache/apt/archives/*.deb "${rootfs}"/var/lib/apt/lists/* \
      "${rootfs}"/var/log/*.log "${rootfs}"/tmp/* 2>/dev/null || true
    $sudo tar -C "$rootfs" --numeric-owner -c . \
      | docker import \
          --change 'ENV container=docker' \
          --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
          --change 'ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]' \
          --message "kind node root: debootstrap ${suite} + kind v0.33.0 base files + ${k8s_version}" \
          - "${root_image}-import" >/dev/null \
      || die "docker import of the node root failed"
    # docker import/commit cannot set STOPSIGNAL: a one-line legacy build does.
    mkdir -p "${work}/stopsignal"
    printf 'FROM %s\nSTOPSIGNAL SIGRTMIN+3\n' "${root_image}-import" >"${work}/stopsignal/Dockerfile"
    docker build -q -t "$root_image" "${work}/stopsignal" >/dev/null 2>>"${cache}/kind-node-build.log" || die "docker build (STOPSIGNAL) failed"
    docker rmi "${root_image}-import" >/dev/null 2>&1 || true
    $sudo rm -rf --one-file-system "$rootfs"
    say "node root ${root_image} imported in $(since "$t2") (total $(since "$t"))"
  fi

  # --- 2. the preloaded images -----------------------------------------------------------------
  t=$(now)
  local reg=registry.k8s.io imgs=() one
  mk_static_image() { # name binary entrypoint-json
    local d="${work}/img-${1//[\/:]/_}"
    mkdir -p "${d}/usr/local/bin" "${d}/tmp" "${d}/etc" "${d}/var/run"
    chmod 1777 "${d}/tmp"
    install -m 0755 "$2" "${d}/usr/local/bin/$(basename "$2")"
    printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/:/sbin/nologin\n' >"${d}/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"${d}/etc/group"
    [ -r "$ca_bundle" ] && install -D -m 0644 "$ca_bundle" "${d}/etc/ssl/certs/ca-certificates.crt"
    tar -C "$d" --numeric-owner --owner=0 --group=0 -c . \
      | docker import --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' --change "ENTRYPOINT $3" \
          - "$1" >/dev/null || die "docker import $1 failed"
    rm -rf "$d"
    imgs+=("$1")
  }
  for one in kube-apiserver kube-controller-manager kube-scheduler; do
    mk_static_image "${reg}/${one}:${k8s_version}" "${bin}/${one}" "[\"/usr/local/bin/${one}\"]"
  done
  mk_static_image "${reg}/etcd:3.6.6-0" "${bin}/etcd" '["/usr/local/bin/etcd"]'
  # CoreDNS: the Deployment runs the image's entrypoint, /coredns.
  local cdir="${work}/img-coredns"
  mkdir -p "${cdir}/etc" "${cdir}/tmp"
  install -m 0755 "${bin}/coredns" "${cdir}/coredns"
  [ -r "$ca_bundle" ] && install -D -m 0644 "$ca_bundle" "${cdir}/etc/ssl/certs/ca-certificates.crt"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/:/sbin/nologin\n' >"${cdir}/etc/passwd"
  tar -C "$cdir" --numeric-owner --owner=0 --group=0 -c . \
    | docker import --change 'ENTRYPOINT ["/coredns"]' - "${reg}/coredns/coredns:v1.13.1" >/dev/null \
    || die "docker import coredns failed"
  imgs+=("${reg}/coredns/coredns:v1.13.1")
  # pause: a tiny static Go program.
  local pdir="${work}/pause"
  mkdir -p "${pdir}/src" "${pdir}/root"
  cp "${static}/pause.go" "${pdir}/src/main.go"
  (cd "${pdir}/src" && printf 'module pause\n\ngo 1.22\n' >go.mod \
    && CGO_ENABLED=0 GOFLAGS=-trimpath go build -ldflags='-s -w' -o "${pdir}/root/pause" .) \
    || die "go build pause failed"
  tar -C "${pdir}/root" --numeric-owner --owner=0 --group=0 -c . \
    | docker import --change 'ENTRYPOINT ["/pause"]' --change 'USER 65535:65535' - "${reg}/pause:3.10.1" >/dev/null \
    || die "docker import pause failed"
  docker tag "${reg}/pause:3.10.1" "${reg}/pause:3.10"
  imgs+=("${reg}/pause:3.10.1" "${reg}/pause:3.10")
  # kube-proxy needs iptables/nft/conntrack: the node root plus the binary.
  local kdir="${work}/img-kube-proxy"
  mkdir -p "$kdir"
  install -m 0755 "${bin}/kube-proxy" "${kdir}/kube-proxy"
  printf 'FROM %s\nCOPY kube-proxy /usr/local/bin/kube-proxy\nENTRYPOINT ["/usr/local/bin/kube-proxy"]\nCMD []\n' \
    "$root_image" >"${kdir}/Dockerfile"
  docker build -q -t "${reg}/kube-proxy:${k8s_version}" "$kdir" >/dev/null 2>>"${cache}/kind-node-build.log" || die "docker build kube-proxy failed"
  imgs+=("${reg}/kube-proxy:${k8s_version}")
  say "component images built in $(since "$t")"
  local t2
  t2=$(now)
  docker save -o "${work}/images.tar" "${imgs[@]}" || die "docker save of the component images failed"
  say "component images saved ($(du -h "${work}/images.tar" | cut -f1)) in $(since "$t2")"

  # --- 3. preload into the node's containerd, commit ---------------------------------------------
  t=$(now)
  build_ctr="gpu-queue-kind-node-build-$$"
  docker run -d --privileged --name "$build_ctr" --entrypoint sleep "$root_image" infinity >/dev/null \
    || die "docker run of the build container failed"
  docker cp "${work}/images.tar" "${build_ctr}:/images.tar" >/dev/null
  docker exec "$build_ctr" sh -c 'mkdir -p /run/containerd; nohup containerd >/tmp/containerd.log 2>&1 &'
  local i
  for i in $(seq 1 60); do
    docker exec "$build_ctr" ctr version >/dev/null 2>&1 && break
    sleep 0.5
  done
  docker exec "$build_ctr" ctr version >/dev/null 2>&1 \
    || { docker exec "$build_ctr" tail -20 /tmp/containerd.log >&2; die "containerd in the build container did not start"; }
  docker exec "$build_ctr" ctr -n k8s.io images import --label=io.cri-containerd.pinned=pinned \
      --all-platforms --no-unpack --digests /images.tar >/dev/null \
    || { docker exec "$build_ctr" tail -20 /tmp/containerd.log >&2; die "ctr images import failed"; }
  docker exec "$build_ctr" ctr -n k8s.io images ls -q | grep -v '^sha256:' | sed 's/^/  preloaded: /' >&2
  # This host's capability bounding set lacks CAP_SYS_RESOURCE, so runc cannot lower a pod's
  # oom_score_adj below containerd's (pause asks for -998): "nsexec: failed to update
  # /proc/self/oom_score_adj: Permission denied". restrict_oom_score_adj clamps it instead (what
  # kind's entrypoint does for rootless nodes).
  docker exec "$build_ctr" sed -i 's/^\( *restrict_oom_score_adj *=\).*/\1 true/' /etc/containerd/config.toml
  docker exec "$build_ctr" grep -q 'restrict_oom_score_adj = true' /etc/containerd/config.toml \
    || die "could not set restrict_oom_score_adj in /etc/containerd/config.toml"
  # Per-node pod CIDRs: kind-cni.service replaces the root's static /16 config (tools/kind-node).
  docker exec "$build_ctr" sh -c 'mkdir -p /kind/cni && mv /etc/cni/net.d/10-bridge.conflist /kind/cni/10-bridge.conflist.template'
  docker cp "${static}/kind-cni.sh" "${build_ctr}:/kind/bin/kind-cni.sh" >/dev/null
  docker cp "${static}/kind-cni.service" "${build_ctr}:/etc/systemd/system/kind-cni.service" >/dev/null
  docker exec "$build_ctr" sh -c 'chown root:root /kind/bin/kind-cni.sh /etc/systemd/system/kind-cni.service &&
    chmod 0755 /kind/bin/kind-cni.sh && chmod 0644 /etc/systemd/system/kind-cni.service &&
    mkdir -p /etc/systemd/system/multi-user.target.wants &&
    ln -sf /etc/systemd/system/kind-cni.service /etc/systemd/system/multi-user.target.wants/kind-cni.service'
  docker exec "$build_ctr" sh -c 'pkill containerd; for i in $(seq 1 50); do pgrep containerd >/dev/null || break; sleep 0.2; done;
    rm -f /images.tar /tmp/containerd.log; rm -rf /run/containerd' || true
  docker commit \
      --change 'ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]' \
      --change 'CMD []' \
      --change 'ENV container=docker' \
      "$build_ctr" "$tag" >/dev/null || die "docker commit failed"
  docker rm -f "$build_ctr" >/dev/null
  build_ctr=""
  say "images preloaded and ${tag} committed in $(since "$t")"
  # The component images stay only inside the node image.
  docker rmi "${imgs[@]}" >/dev/null 2>&1 || true

  t=$(now)
  docker save -o "${tarball}.tmp" "$tag" || die "docker save ${tag} failed"
  mv "${tarball}.tmp" "$tarball"
  say "cached ${tarball} ($(du -h "$tarball" | cut -f1)) in $(since "$t")"
  cleanup
  work=""
}

if docker image inspect "$tag" >/dev/null 2>&1; then
  say "${tag}: present"
elif [ -s "$tarball" ]; then
  t=$(now)
  say "${tag}: loading ${tarball}"
  docker load -i "$tarball" >/dev/null || die "docker load -i ${tarball} failed (delete it to rebuild)"
  say "loaded in $(since "$t")"
else
  say "building ${tag}"
  build_image
  say "built ${tag} in $(since "$t_all")"
fi
find "$cache" -maxdepth 1 -name 'gpu-queue-kind-node_*.tar' ! -name "${tarball##*/}" -delete 2>/dev/null || true
say "${tag}: size $(docker image inspect --format '{{.Size}}' "$tag" | awk '{ printf "%.0f MB", $1 / 1e6 }')"

if [ "$check" -eq 1 ]; then
  export PATH="${bin}:${PATH}"
  kubeconfig="${cache}/kind-${cluster}.kubeconfig"
  t=$(now)
  kind delete cluster --name "$cluster" >/dev/null 2>&1 || true
  say "kind create cluster --name ${cluster} --image ${tag}"
  if ! kind create cluster --name "$cluster" --image "$tag" --config "${static}/cluster.yaml" \
      --kubeconfig "$kubeconfig" --wait 5m --retain; then
    kind export logs --name "$cluster" "${cache}/kind-logs-${cluster}" >/dev/null 2>&1 || true
    die "kind create cluster failed (logs: ${cache}/kind-logs-${cluster}; cluster left for inspection)"
  fi
  say "cluster up in $(since "$t")"
  # Running is not enough: wait for Ready (CoreDNS is Ready only once it reaches the API server
  # through the kubernetes Service, i.e. kube-proxy and the bridge CNI work).
  if ! kubectl --kubeconfig "$kubeconfig" wait --for=condition=Ready nodes --all --timeout=3m >&2 \
      || ! kubectl --kubeconfig "$kubeconfig" -n kube-system wait --for=condition=Ready pods --all --timeout=3m >&2; then
    kubectl --kubeconfig "$kubeconfig" get nodes -o wide >&2 || true
    kubectl --kubeconfig "$kubeconfig" -n kube-system get pods -o wide >&2 || true
    kind export logs --name "$cluster" "${cache}/kind-logs-${cluster}" >/dev/null 2>&1 || true
    die "nodes or kube-system pods not Ready (logs: ${cache}/kind-logs-${cluster}; cluster left for inspection)"
  fi
  kubectl --kubeconfig "$kubeconfig" get nodes -o wide >&2
  kubectl --kubeconfig "$kubeconfig" -n kube-system get pods -o wide >&2
  say "all nodes Ready, all kube-system pods Running and Ready in $(since "$t")"
  # Cross-node pod network: a pod on the worker resolves and reaches the API server through
  # CoreDNS and the kubernetes Service (CoreDNS runs on the control-plane node).
  worker=$(kubectl --kubeconfig "$kubeconfig" get nodes --no-headers -l '!node-role.kubernetes.io/control-plane' \
    -o custom-columns=N:.metadata.name | head -n1)
  kubectl --kubeconfig "$kubeconfig" run nettest --image="registry.k8s.io/kube-proxy:${k8s_version}" \
    --image-pull-policy=Never --restart=Never --overrides="{\"spec\":{\"nodeName\":\"${worker}\"}}" \
    --command -- curl -sk -m 10 -o /dev/null -w '%{http_code}' https://kubernetes.default.svc.cluster.local/livez >/dev/null
  kubectl --kubeconfig "$kubeconfig" wait --for=jsonpath='{.status.phase}'=Succeeded pod/nettest --timeout=90s >/dev/null 2>&1 || true
  code=$(kubectl --kubeconfig "$kubeconfig" logs nettest 2>/dev/null || true)
  [ "$code" = "200" ] || die "pod on ${worker}: kubernetes.default.svc.cluster.local/livez gave '${code}' (cluster left for inspection)"
  say "pod on ${worker} reached https://kubernetes.default.svc.cluster.local/livez (200) via CoreDNS"
  t2=$(now)
  kind delete cluster --name "$cluster" --kubeconfig "$kubeconfig" >&2
  rm -f "$kubeconfig"
  say "cluster deleted in $(since "$t2"); check done in $(since "$t")"
fi
say "done in $(since "$t_all")"
printf '%s\n' "$tag"
