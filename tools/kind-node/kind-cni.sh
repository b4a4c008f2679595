#!/bin/sh
# The pod network without kindnetd: once the node has a podCIDR, write a bridge CNI config for
# that range (/etc/cni/net.d/10-bridge.conflist) and route every other node's podCIDR via its
# InternalIP (all kind nodes share one Docker network). Runs as kind-cni.service, polling.
set -u
kc="kubectl --kubeconfig=/etc/kubernetes/kubelet.conf"
node=$(hostname)
conf=/etc/cni/net.d/10-bridge.conflist
rbac=0
while :; do
  # Kubernetes 1.35's Node authorizer lets a kubelet read only its own Node: on a control-plane
  # node (admin.conf), let the system:nodes group list nodes through RBAC, once.
  if [ "$rbac" -eq 0 ] && [ -s /etc/kubernetes/admin.conf ]; then
    ka="kubectl --kubeconfig=/etc/kubernetes/admin.conf"
    if { $ka get clusterrole kind-cni-node-reader >/dev/null 2>&1 \
          || $ka create clusterrole kind-cni-node-reader --verb=get,list,watch --resource=nodes; } \
        && { $ka get clusterrolebinding kind-cni-node-reader >/dev/null 2>&1 \
          || $ka create clusterrolebinding kind-cni-node-reader --clusterrole=kind-cni-node-reader \
               --group=system:nodes; }; then
      rbac=1
    fi
  fi
  if [ -s /etc/kubernetes/kubelet.conf ]; then
    cidr=$($kc get node "$node" -o jsonpath='{.spec.podCIDR}' 2>/dev/null || true)
    if [ -n "$cidr" ]; then
      want=$(sed "s#10.244.0.0/16#${cidr}#" /kind/cni/10-bridge.conflist.template)
      if [ "$(cat "$conf" 2>/dev/null)" != "$want" ]; then
        printf '%s\n' "$want" >"${conf}.tmp" && mv "${conf}.tmp" "$conf"
        echo "wrote ${conf} for podCIDR ${cidr}"
      fi
      $kc get nodes -o jsonpath='{range .items[*]}{.metadata.name} {.spec.podCIDR} {.status.addresses[?(@.type=="InternalIP")].address}{"\n"}{end}' 2>/dev/null \
        | while read -r n c ip; do
            [ "$n" = "$node" ] || [ -z "$c" ] || [ -z "$ip" ] || ip route replace "$c" via "$ip" 2>/dev/null || true
          done
    fi
  fi
  sleep 3
done
