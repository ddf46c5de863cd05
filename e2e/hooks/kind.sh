# shellcheck shell=bash
# Hooks of the scenarios for e2e/kind/run: pods run in a kind cluster, whose
# nodes are docker containers. Pod and Service addresses are reachable
# from the nodes, not from this host, so etcdctl runs on the control-plane
# node (e2e/kind/run copies the pinned binary there). The hooks are listed
# in e2e/hooks/node-agent.sh.

# The images e2e/kind/run built and loaded into the nodes.
OPERATOR_HELM_ARGS=(--set "image.tag=$KIND_TAG")
# Plain text: the TLS certificates name the cluster's DNS names, which the
# node running etcdctl cannot resolve.
CLUSTER_HELM_ARGS=(--set "image=ghcr.io/kvd-io/kvd:$KIND_TAG" --set tls.mode=Disabled)

ectl() { docker exec -i "$KIND_NODE" /usr/local/bin/etcdctl "$@"; }

# Not here: the nodes cannot resolve the cluster's DNS names, which TLS
# verification needs (e2e/kind/run skips the TLS scenario).
ectl_by_name() { fail "ectl_by_name is not available on kind"; }
by_name() { fail "by_name is not available on kind"; }

client_ip() { kubectl -n "$OP_NS" get svc demo-client -o jsonpath='{.spec.clusterIP}' 2>/dev/null || true; }

# Plain text only (by address): the clusters run with tls.mode Disabled here.
member_urls() {
  kubectl -n "$OP_NS" get pods -l "app.kubernetes.io/name=kvd,app.kubernetes.io/instance=$1" \
    -o jsonpath='{range .items[*]}{.status.podIP}{"\n"}{end}' |
    awk 'NF {printf "%shttp://%s:2379", sep, $1; sep=","}'
}

# kind nodes are containers whose process tree holds the pods' processes.
kill_member_process() {
  local node
  node=$(kubectl -n "$OP_NS" get pod "$1" -o jsonpath='{.spec.nodeName}')
  docker exec "$node" pkill -KILL -f -- "--name=$1( |\$)" || fail "no process of member $1 on $node"
}

# local-path-provisioner keeps each volume in a directory named after its claim.
volume_dirs() {
  local node
  for node in $(kind get nodes --name "$KIND_CLUSTER"); do
    docker exec "$node" sh -c "ls -d /var/local-path-provisioner/*_${OP_NS}_data-demo-* 2>/dev/null" || true
  done | grep -c . || true
}

member_logs() {
  kubectl -n "$OP_NS" logs "$1" --previous 2>/dev/null || true
  kubectl -n "$OP_NS" logs "$1" 2>/dev/null || true
}
