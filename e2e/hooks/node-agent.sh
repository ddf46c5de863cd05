# shellcheck shell=bash
# Hooks of the scenarios for e2e/run, where the node agent runs the pods as
# local processes in network namespaces on the bridge kvde2e0, and its
# hosts file ($E2E_WORK/node/hosts) is the cluster's DNS. e2e/kind/run has
# the same hooks for a kind cluster (e2e/hooks/kind.sh).
#
#   ectl ARGS                  etcdctl (the pinned one) from where the pods are reachable
#   ectl_by_name ARGS          the same, resolving the cluster's DNS names (for TLS)
#   by_name COMMAND...         any command, resolving the cluster's DNS names
#   client_ip                  an address of the client Service of KvCluster demo
#   member_urls NAME SCHEME    client URLs of every member pod of KvCluster NAME,
#                              comma-separated: by address for http, by name for
#                              https (the certificates name no address)
#   kill_member_process NAME   SIGKILL to member NAME's kvd process
#   member_pid NAME            this host's pid of member NAME's kvd (e2e/run's
#                              nodes only: the failover and real-node scenarios)
#   volume_dirs                how many provisioned volume directories exist
#   member_logs NAME           the logs of member NAME's containers, past and present

# Helm values the scenarios add: none here (the node agent maps any tag of
# the images to the local binaries).
OPERATOR_HELM_ARGS=()
CLUSTER_HELM_ARGS=()
# The node agent runs image tag T from kvd-T when there is one: the second
# build scripts/test makes reports the next version (e2e/next-version).
UPGRADE_REPORTS_VERSION=1

# ectl, member_pid, kill_member_process and volume_dirs: the pods' processes and
# volumes are on this host.
# shellcheck source=local.sh
source "$root/e2e/hooks/local.sh"

# In a mount namespace of its own, with the node agent's hosts file as /etc/hosts.
# (BY_NAME is that prefix, for a command started in the background: its
# pid is then the command's.)
BY_NAME=(unshare -m sh -c 'mount --bind "$1" /etc/hosts && shift && exec "$@"' _ "$E2E_WORK/node/hosts")
by_name() { "${BY_NAME[@]}" "$@"; }
ectl_by_name() { by_name "$ETCDCTL" "$@"; }

# The hosts file names the client Service after one ready endpoint.
client_ip() { awk -v n="demo-client.$OP_NS.svc" '$3 == n {print $1; exit}' "$E2E_WORK/node/hosts"; }

member_urls() {
  awk -v re="^$1-[0-9]+\\\\.$1-peer\\\\.$OP_NS\\\\.svc$" -v scheme="$2" '$3 ~ re {
      printf "%s%s://%s:2379", sep, scheme, (scheme == "https" ? $3 : $1); sep=","
    }' "$E2E_WORK/node/hosts"
}

member_logs() { cat "$E2E_WORK/node/pods/${OP_NS}_$1_"*/*.log 2>/dev/null || true; }
