# shellcheck shell=bash
# Hooks of the scenarios for e2e/run on the real node (control-plane/node.sh:
# kubelet, containerd and runc running the images of scripts/build-images,
# CoreDNS as the cluster's DNS, kube-proxy for Service addresses). Pod
# addresses are on the bridge kvde2e0, so this host reaches them; a pod's
# processes are this host's processes. The hooks are listed in
# e2e/hooks/node-agent.sh.

# The images node_up imported, under the tags the charts name by default.
OPERATOR_HELM_ARGS=()
CLUSTER_HELM_ARGS=()
# The rolling upgrade's image (ghcr.io/kvd-io/kvd:<next>) holds the second
# kvd build, which reports the next version.
UPGRADE_REPORTS_VERSION=1
# kubelet refreshes Secret volumes in running pods (secure_by_default
# checks that members then serve the renewed certificates).
NODE_REFRESHES_SECRETS=1

# ectl, member_pid, kill_member_process and volume_dirs: the pods' processes and
# volumes are on this host.
# shellcheck source=local.sh
source "$root/e2e/hooks/local.sh"

# by_name COMMAND...: COMMAND in a mount namespace of its own whose
# resolv.conf names CoreDNS, so the cluster's DNS names resolve.
# (BY_NAME is that prefix, for a command started in the background: its
# pid is then the command's.)
BY_NAME=(unshare -m sh -c 'mount --bind "$1" /etc/resolv.conf && shift && exec "$@"' _ "$E2E_WORK/node/host-resolv.conf")
by_name() { "${BY_NAME[@]}" "$@"; }
ectl_by_name() { by_name "$ETCDCTL" "$@"; }

client_ip() { kubectl -n "$OP_NS" get svc demo-client -o jsonpath='{.spec.clusterIP}' 2>/dev/null || true; }

# By address for http, by the headless Service's name for https.
member_urls() {
  kubectl -n "$OP_NS" get pods -l "app.kubernetes.io/name=kvd,app.kubernetes.io/instance=$1" \
    -o jsonpath='{range .items[*]}{.metadata.name} {.status.podIP}{"\n"}{end}' |
    awk -v c="$1" -v ns="$OP_NS" -v scheme="$2" 'NF == 2 {
      printf "%s%s://%s:2379", sep, scheme, (scheme == "https" ? $1 "." c "-peer." ns ".svc" : $2); sep=","
    }'
}

member_logs() {
  kubectl -n "$OP_NS" logs "$1" --previous 2>/dev/null || true
  kubectl -n "$OP_NS" logs "$1" 2>/dev/null || true
}
