# shellcheck shell=bash
# The e2e scenarios, each a function run by e2e/run in its own subshell with
# `set -e`: a failing command or assertion fails the scenario. `kubectl`,
# `helm` and `etcdctl` (against the kvd member that stores the cluster) are
# functions of e2e/run; $root is the repository. What depends on where the
# pods run (how to reach a member, kill its process, count volumes, read
# its log) are the hooks of e2e/hooks/node-agent.sh (e2e/run) or
# e2e/hooks/kind.sh (e2e/kind/run), named in that file.

# "name:description" in the order they run.
SCENARIOS=(
  "kubernetes_on_kvd:Kubernetes stores itself in kvd"
  "operator_installs_cluster:helm installs the operator; a 3-member KvCluster becomes Available and serves etcdctl"
  "quiet_reconciles:reconciles stay at a few a minute for an idle cluster and one under writes"
  "node_runs_images:the member image runs as 65532 on a read-only root with its limits; exec and gRPC probes run for real"
  "secure_by_default:the cluster runs on the operator's certificates: https only, clients need one; a rotation restarts no member"
  "namespace_scoped:the operator watches its namespaces only, with a Role and no ClusterRole"
  "auth_enabled:spec.auth turns etcd authentication on: root has its Secret, certificates map to users, roles are enforced"
  "member_process_killed:a killed member process is restarted and rejoins"
  "node_drain:kubectl drain evicts the leader with no failed write, then stops at the PodDisruptionBudget; the member returns on uncordon"
  "cluster_scales:the cluster scales 3 -> 5 -> 3; scaled-in claims are retained"
  "released_volumes_deleted:deleting the retained claims deletes their volumes and directories"
  "claims_deleted_on_scale_in:with whenScaled Delete, scale-in deletes the claims and their volumes"
  "volumes_expanded:a grown storage size expands every member's claim in place, with no restart; a shrink is refused"
  "kubernetes_failover:kube-apiserver on the 3 members over mTLS keeps serving through a leader kill, a paused follower and a replaced member; its watch misses nothing"
  "member_replaced:a member that lost its volume is removed and added back as a learner"
  "quorum_recovered:two of three volumes lost; with quorumLossRecovery the survivor restarts alone and the others rejoin"
  "nospace_remediated:a full quota raises NOSPACE; the operator compacts, defragments and disarms"
  "maintenance_cronjobs:the compaction and defrag CronJobs run and record lastCompaction and lastDefrag"
  "scheduled_backups:backups to a real S3 server on schedule and on demand; retention prunes them"
  "rolling_upgrade:an upgrade skipping a minor version is refused; the next version rolls through after a backup, with no failed write"
  "tls_cluster:a KvCluster with client and peer TLS serves only clients with a certificate"
  "cert_manager_tls:with spec.tls.certManager, cert-manager's controller issues the members' and clients' certificates"
  "cluster_deleted:deleting a KvCluster removes its objects; claims follow whenDeleted"
  "etcd_import:an etcd 3.6 snapshot becomes a KvCluster; kube-apiserver moved onto it serves its objects with their resourceVersions"
  "restore_from_backup:a new KvCluster from the deleted one's last backup has its keys and revisions; a damaged backup creates nothing"
  "storage_log_clean:the API server logged no storage errors"
)

# fail MESSAGE: ends the scenario, after what the KvCluster says of itself.
fail() {
  echo "assertion failed: $*" >&2
  kvc_conditions >&2 || true
  exit 1
}

# kvc_conditions: the KvCluster's conditions, one per line, if there is one.
kvc_conditions() {
  kubectl -n "$OP_NS" get kvc demo -o jsonpath='{range .status.conditions[*]}    {.type}={.status} {.reason}: {.message}{"\n"}{end}' 2>/dev/null
}

# eventually SECONDS COMMAND...: retries COMMAND until it succeeds.
eventually() {
  local secs=$1
  shift
  local deadline=$(($(date +%s) + secs))
  until "$@"; do
    [ "$(date +%s)" -lt "$deadline" ] || fail "not within ${secs}s: $*"
    sleep 0.5
  done
}

pods_of_web() { [ "$(kubectl -n e2e get pods -l app=web -o name | wc -l)" -eq 2 ]; }
namespace_gone() { ! kubectl get namespace e2e >/dev/null 2>&1; }
no_e2e_keys() { [ -z "$(etcdctl get /registry/ --prefix --keys-only | grep -E '^/registry/[^/]+/e2e/')" ]; }
kvc_established() {
  [ "$(kubectl get crd kvclusters.kvd.io -o jsonpath='{.status.conditions[?(@.type=="Established")].status}')" = True ]
}

# The API server is ready with kvd as its storage; objects written through it
# are keys in kvd, a controller acting on watches creates more, and a deleted
# namespace takes its keys with it.
kubernetes_on_kvd() {
  kubectl get --raw '/readyz?verbose' | grep -x '\[+\]etcd ok'
  kubectl get --raw '/livez?verbose' | grep -x '\[+\]etcd ok'

  kubectl create namespace e2e
  kubectl -n e2e create configmap cm1 --from-literal=greeting=hello
  [ "$(kubectl -n e2e get configmap cm1 -o jsonpath='{.data.greeting}')" = hello ] || fail "configmap read back"
  # Kubernetes stores objects as protobuf behind a "k8s\0" magic prefix.
  etcdctl get /registry/configmaps/e2e/cm1 --print-value-only | head -c 3 | grep -qx k8s || fail "configmap not in kvd"
  local rev
  rev=$(kubectl -n e2e get configmap cm1 -o jsonpath='{.metadata.resourceVersion}')
  [ "$(etcdctl get /registry/configmaps/e2e/cm1 -w json | python3 -c 'import json,sys; print(json.load(sys.stdin)["kvs"][0]["mod_revision"])')" = "$rev" ] ||
    fail "resourceVersion $rev is not kvd's mod_revision"

  # A Deployment: the controller manager, watching through the API server,
  # creates its ReplicaSet and two Pods (bound to the node, whose agent has
  # no binary for this image: ErrImagePull).
  kubectl -n e2e create deployment web --image=registry.invalid/web --replicas=2
  eventually 60 pods_of_web
  [ -n "$(etcdctl get /registry/replicasets/e2e/ --prefix --keys-only)" ] || fail "no ReplicaSet in kvd"

  # A CRD (the operator's) and a custom resource.
  kubectl apply -f "$root/crds/kvcluster.yaml"
  eventually 30 kvc_established
  kubectl -n e2e apply -f - <<'EOF'
apiVersion: kvd.io/v1alpha1
kind: KvCluster
metadata: {name: demo}
spec: {replicas: 3}
EOF
  kubectl -n e2e get kvc demo
  [ -n "$(etcdctl get /registry/kvd.io/kvclusters/e2e/demo --keys-only)" ] || fail "KvCluster not in kvd"

  # Deleting the namespace: the namespace controller removes every object,
  # and the keys leave kvd.
  kubectl delete namespace e2e --wait=false
  eventually 120 namespace_gone
  eventually 30 no_e2e_keys
  kubectl delete -f "$root/crds/kvcluster.yaml"
}

# The operator scenarios share one cluster: KvCluster demo in namespace
# kvd-e2e, from the kvd-cluster chart; the operator in kvd-system.
OP_NS=kvd-e2e

# kvc_field JSONPATH: a field of the KvCluster.
kvc_field() { kubectl -n "$OP_NS" get kvc demo -o jsonpath="$1"; }
kvc_available_with() {
  [ "$(kvc_field '{.status.conditions[?(@.type=="Available")].status}')" = True ] &&
    [ "$(kvc_field '{.status.members[*].name}' | wc -w)" -eq "$1" ] &&
    [ "$(kvc_field '{.status.readyReplicas}')" = "$1" ]
}
client_ip_known() { [ -n "$(client_ip)" ]; }

# tls_files NAME: the users' client certificate of KvCluster NAME (Secret
# NAME-client-tls, which the operator issues in TLS mode Operator), copied
# once into $E2E_WORK/tls-NAME; fails for a plain-text cluster. Renewals
# keep the CA, so the first copy stays valid.
tls_files() {
  local d=$E2E_WORK/tls-$1 k
  [ -s "$d/tls.key" ] && return 0
  kubectl -n "$OP_NS" get secret "$1-client-tls" >/dev/null 2>&1 || return 1
  mkdir -p "$d"
  for k in ca.crt tls.crt tls.key; do
    kubectl -n "$OP_NS" get secret "$1-client-tls" -o "jsonpath={.data.${k/./\\.}}" | base64 -d >"$d/$k.tmp"
    mv "$d/$k.tmp" "$d/$k"
  done
}
# tls_flags NAME: etcdctl's flags for that certificate.
tls_flags() {
  local d=$E2E_WORK/tls-$1
  echo "--cacert=$d/ca.crt --cert=$d/tls.crt --key=$d/tls.key"
}
# ctl_of NAME ARGS: etcdctl to every member of KvCluster NAME (re-read each
# time: pod addresses change when a pod is re-created): over mutual TLS by
# the members' names with its client certificate, or in plain text.
ctl_of() {
  local name=$1
  shift
  if tls_files "$name"; then
    # shellcheck disable=SC2046
    ectl_by_name --endpoints "$(member_urls "$name" https)" $(tls_flags "$name") --command-timeout 5s "$@"
  else
    ectl --endpoints "$(member_urls "$name" http)" --command-timeout 5s "$@"
  fi
}
# kv ARGS: etcdctl through the client Service of KvCluster demo.
kv() {
  if tls_files demo; then
    # shellcheck disable=SC2046
    ectl_by_name --endpoints "https://demo-client.$OP_NS.svc:2379" $(tls_flags demo) --command-timeout 5s "$@"
  else
    ectl --endpoints "http://$(client_ip):2379" --command-timeout 5s "$@"
  fi
}
started_members() { [ "$(kv member list | grep -c ', started, ')" -eq "$1" ]; }
operator_ready() {
  [ "$(kubectl -n kvd-system get deploy kvd-operator -o jsonpath='{.status.readyReplicas}')" = 1 ]
}

# The operator chart installs the operator (its image maps to the locally
# built kvd-operator) scoped to namespace $OP_NS (a Role there, no
# ClusterRole: every scenario runs on those permissions), the kvd-cluster
# chart a 3-member KvCluster; the
# operator bootstraps it through the StatefulSet, claims are provisioned,
# members find each other by their peer names, and the cluster is
# Available with 3 members, serving etcdctl through its client Service.
operator_installs_cluster() {
  # The namespace first: the operator's Role goes there.
  kubectl create namespace "$OP_NS"
  helm install kvd-operator "$root/charts/kvd-operator" --namespace kvd-system --create-namespace \
    --set image.repository=ghcr.io/kvd-io/kvd-operator --set logJson=false --set "watchNamespaces={$OP_NS}" \
    "${OPERATOR_HELM_ARGS[@]}"
  eventually 90 operator_ready
  helm install demo "$root/charts/kvd-cluster" --namespace "$OP_NS" --create-namespace --set storage.size=1Gi \
    "${CLUSTER_HELM_ARGS[@]}"
  eventually 240 kvc_available_with 3
  kubectl -n "$OP_NS" get pods,pvc -o wide
  [ "$(kubectl -n "$OP_NS" get pvc -o jsonpath='{.items[*].status.phase}')" = "Bound Bound Bound" ] || fail "claims not bound"
  # The EndpointSlice controller marks the members ready a moment after
  # the pods are; then the hosts file names the client Service.
  eventually 30 client_ip_known
  kv put /e2e/greeting hello
  [ "$(kv get /e2e/greeting --print-value-only)" = hello ] || fail "read back through the client Service"
  # A member shows as started once its name and client URLs are published
  # through raft, which can trail its readiness by seconds on a busy machine.
  eventually 60 started_members 3
  kv member list

}

pod_restarted() { [ "$(kubectl -n "$OP_NS" get pod demo-1 -o jsonpath='{.status.containerStatuses[0].restartCount}')" -ge 1 ]; }
pod_ready() {
  [ "$(kubectl -n "$OP_NS" get pod "$1" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ]
}

# SIGKILL to member demo-1's process: the node agent restarts the container
# (restartPolicy Always), the member rejoins with its data, and the cluster
# is Available with 3 started members again; the key written before is there.
member_process_killed() {
  kill_member_process demo-1
  eventually 60 pod_restarted
  eventually 90 pod_ready demo-1
  eventually 90 kvc_available_with 3
  eventually 30 started_members 3
  [ "$(kv get /e2e/greeting --print-value-only)" = hello ] || fail "key lost"
  kubectl -n "$OP_NS" get pod demo-1 -o jsonpath='{.status.containerStatuses[0].lastState}'
  echo
}

no_learners() { ! kv member list | grep -q ', true$'; }
pods_gone() {
  local p
  for p in "$@"; do
    ! kubectl -n "$OP_NS" get pod "$p" >/dev/null 2>&1 || return 1
  done
}
set_replicas() { kubectl -n "$OP_NS" patch kvc demo --type merge -p "{\"spec\":{\"replicas\":$1}}"; }

# Scaling out adds members one at a time (learner, then promoted) until 5
# voters serve; scaling in removes the highest ordinals again, all under a
# light write load that sees no failed write (writer_start, in
# scenarios_ops.sh). The chart's whenScaled is Retain: the claims of demo-3
# and demo-4 stay Bound.
cluster_scales() {
  writer_start scale
  set_replicas 5
  eventually 300 kvc_available_with 5
  eventually 60 started_members 5
  eventually 60 no_learners
  kv member list
  [ "$(kubectl -n "$OP_NS" get pvc -o jsonpath='{.items[*].status.phase}')" = "Bound Bound Bound Bound Bound" ] ||
    fail "claims after scale-out: $(kubectl -n "$OP_NS" get pvc)"
  kv put /e2e/scaled yes
  set_replicas 3
  eventually 300 kvc_available_with 3
  eventually 60 started_members 3
  eventually 120 pods_gone demo-3 demo-4
  kv member list
  [ "$(kubectl -n "$OP_NS" get pvc data-demo-3 data-demo-4 -o jsonpath='{.items[*].status.phase}')" = "Bound Bound" ] ||
    fail "retained claims: $(kubectl -n "$OP_NS" get pvc)"
  [ "$(kv get /e2e/scaled --print-value-only)" = yes ] || fail "key lost"
  writer_stop scale
}

pvs_of_claims() {
  kubectl get pv -o jsonpath='{range .items[*]}{.spec.claimRef.name}{"\n"}{end}' | grep -cE "^data-demo-($1)$" || true
}
no_pvs_of() { [ "$(pvs_of_claims "$1")" -eq 0 ]; }

# Deleting the claims retained at scale-in releases their volumes, which
# the node agent deletes with their directories (reclaim policy Delete).
released_volumes_deleted() {
  [ "$(pvs_of_claims "3|4")" -eq 2 ] || fail "no volumes of the retained claims"
  [ "$(volume_dirs)" -eq 5 ] || fail "volume directories: $(volume_dirs)"
  kubectl -n "$OP_NS" delete pvc data-demo-3 data-demo-4
  eventually 60 no_pvs_of "3|4"
  [ "$(volume_dirs)" -eq 3 ] || fail "volume directories left: $(volume_dirs)"
  [ "$(kubectl get pv -o jsonpath='{.items[*].status.phase}')" = "Bound Bound Bound" ] || fail "volumes: $(kubectl get pv)"
  kvc_available_with 3 || fail "the cluster is not Available"
}

no_claims_of() { [ -z "$(kubectl -n "$OP_NS" get pvc -o name | grep -E "data-demo-($1)$")" ]; }
sts_retention() { kubectl -n "$OP_NS" get sts demo -o jsonpath='{.spec.persistentVolumeClaimRetentionPolicy.whenScaled}'; }

# whenScaled Delete: the operator carries it into the StatefulSet at once
# (before, only with the next resize), and scaling 5 -> 3 then deletes the
# claims of demo-3 and demo-4, and the node agent their volumes and
# directories.
sts_retention_is_delete() { [ "$(sts_retention)" = Delete ]; }

claims_deleted_on_scale_in() {
  kubectl -n "$OP_NS" patch kvc demo --type merge -p '{"spec":{"storage":{"whenScaled":"Delete"}}}'
  # The operator applies a retention change at once, not at the next resize.
  eventually 60 sts_retention_is_delete
  set_replicas 5
  eventually 300 kvc_available_with 5
  eventually 60 no_learners
  [ "$(sts_retention)" = Delete ] || fail "StatefulSet whenScaled is $(sts_retention) after the resize"
  [ "$(pvs_of_claims "3|4")" -eq 2 ] || fail "no volumes for demo-3 and demo-4"
  set_replicas 3
  eventually 300 kvc_available_with 3
  eventually 120 pods_gone demo-3 demo-4
  eventually 120 no_claims_of "3|4"
  eventually 60 no_pvs_of "3|4"
  [ "$(volume_dirs)" -eq 3 ] || fail "volume directories left: $(volume_dirs)"
  eventually 30 started_members 3
  [ "$(kv get /e2e/scaled --print-value-only)" = yes ] || fail "key lost"
}

# claims_at SIZE N: N member claims of demo have SIZE, asked and given.
claims_at() {
  [ "$(kubectl -n "$OP_NS" get pvc -l app.kubernetes.io/instance=demo,app.kubernetes.io/name=kvd \
    -o jsonpath='{range .items[*]}{.spec.resources.requests.storage}/{.status.capacity.storage}{"\n"}{end}' |
    grep -cx "$1/$1")" -eq "$2" ]
}
member_pod_uids() { kubectl -n "$OP_NS" get pods -l app.kubernetes.io/instance=demo,app.kubernetes.io/name=kvd -o jsonpath='{.items[*].metadata.uid}'; }
kvc_settled() { [ "$(kvc_field '{.status.conditions[?(@.type=="Progressing")].status}')" = False ]; }

# spec.storage.size 1Gi -> 2Gi: the operator asks each member's claim for
# the new size, one per step, and the provisioner (external-resizer's part)
# grows them; no member restarts, the StatefulSet keeps its claim template
# (which cannot change), and a smaller size is refused by the CRD's rule.
volumes_expanded() {
  local before after out started
  eventually 60 kvc_available_with 3
  claims_at 1Gi 3 || fail "the claims are not at 1Gi to start with"
  before=$(member_pod_uids)
  started=$(date +%s)
  kubectl -n "$OP_NS" patch kvc demo --type merge -p '{"spec":{"storage":{"size":"2Gi"}}}'
  eventually 120 claims_at 2Gi 3
  echo "measured: 3 claims expanded to 2Gi in $(($(date +%s) - started)) s"
  eventually 60 kvc_settled
  after=$(member_pod_uids)
  [ "$before" = "$after" ] || fail "members restarted while their volumes grew: $before -> $after"
  [ "$(kubectl -n "$OP_NS" get sts demo -o jsonpath='{.spec.volumeClaimTemplates[0].spec.resources.requests.storage}')" = 1Gi ] ||
    fail "the StatefulSet's claim template changed"
  # (the recorder folds repeats of one reason into a series: one Event)
  [ "$(events_with_reason VolumeExpansion)" -ge 1 ] || fail "no VolumeExpansion event"
  if out=$(kubectl -n "$OP_NS" patch kvc demo --type merge -p '{"spec":{"storage":{"size":"1Gi"}}}' 2>&1); then
    fail "a smaller size was accepted: $out"
  fi
  echo "$out" | grep -q "can grow but not shrink" || fail "shrink refused with: $out"
  kv put /e2e/expanded yes
  [ "$(kv get /e2e/expanded --print-value-only)" = yes ] || fail "the cluster does not serve after the expansion"
}

# Last: nothing the API server logged as an error came from its storage.
storage_log_clean() {
  local errors
  errors=$(grep -E '^E[0-9]{4} ' "$E2E_WORK/logs/kube-apiserver.log" | grep -iE 'etcd|rpc error|watch chan|storage|compact' || true)
  [ -z "$errors" ] || fail "storage errors in the kube-apiserver log:
$errors"
}
