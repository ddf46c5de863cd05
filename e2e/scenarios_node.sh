# shellcheck shell=bash
# Scenarios that need a real kubelet and container runtime (e2e/run on the
# real node of control-plane/node.sh); e2e/run skips them on the node
# agent, which runs no images, probes nothing and ignores cordons.

# Run only on a real node (by function name).
REAL_NODE_SCENARIOS="node_runs_images node_drain"

# The member image's tag the node imported (the chart's appVersion).
node_image_tag() { awk '/^appVersion:/ { gsub(/"/, "", $2); print $2 }' "$root/charts/kvd-cluster/Chart.yaml"; }

# probe_pod NAME PORT: a one-member kvd from the member image, as the
# operator runs members (uid 65532, read-only root, no privilege
# escalation, RuntimeDefault seccomp, limits), with an exec readiness
# probe (kvctl in the image, against PORT) and a gRPC liveness probe
# (grpc.health.v1 on PORT). kvd listens on 2379.
probe_pod() {
  kubectl -n e2e-node apply -f - <<EOF
apiVersion: v1
kind: Pod
metadata: {name: $1}
spec:
  terminationGracePeriodSeconds: 2
  securityContext:
    runAsNonRoot: true
    runAsUser: 65532
    runAsGroup: 65532
    fsGroup: 65532
    seccompProfile: {type: RuntimeDefault}
  containers:
  - name: kvd
    image: ghcr.io/kvd-io/kvd:$(node_image_tag)
    args: [--name=$1, --data-dir=/var/lib/kvd/data, "--listen-client-urls=http://0.0.0.0:2379",
           "--advertise-client-urls=http://127.0.0.1:2379"]
    resources:
      requests: {cpu: 100m, memory: 64Mi}
      limits: {cpu: 500m, memory: 200Mi}
    securityContext:
      readOnlyRootFilesystem: true
      allowPrivilegeEscalation: false
      capabilities: {drop: [ALL]}
    readinessProbe:
      exec:
        command: [kvctl, compact, --endpoints, "http://127.0.0.1:$2", --retain-revisions, "1000000", --timeout, 1s]
      periodSeconds: 2
      timeoutSeconds: 3
    livenessProbe:
      grpc: {port: $2}
      initialDelaySeconds: 3
      periodSeconds: 2
      failureThreshold: 2
    volumeMounts: [{name: data, mountPath: /var/lib/kvd}]
  volumes: [{name: data, emptyDir: {}}]
EOF
}

probe_ready_is() {
  [ "$(kubectl -n e2e-node get pod "$1" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = "$2" ]
}
probe_restarts() { kubectl -n e2e-node get pod "$1" -o jsonpath='{.status.containerStatuses[0].restartCount}'; }
probe_restarted() { [ "$(probe_restarts "$1")" -ge 1 ]; }
# probe_failed POD KIND: an Event that KIND ("Readiness", "Liveness") probe failed for POD.
probe_failed() {
  kubectl -n e2e-node get events --field-selector "involvedObject.name=$1,reason=Unhealthy" \
    -o jsonpath='{range .items[*]}{.message}{"\n"}{end}' | grep -q "^$2 probe failed"
}

# Pods of the member image run under containerd and runc as the images and
# security contexts say: uid 65532, a read-only root file system, the
# memory limit in the container's cgroup. Their exec probes run kvctl in
# the container and their gRPC probes ask kvd's health service: a pod
# whose probes reach its kvd becomes Ready and stays up; one whose probes
# point elsewhere is never Ready and is restarted by its liveness probe.
node_runs_images() {
  kubectl create namespace e2e-node
  probe_pod probe-good 2379
  probe_pod probe-bad 2399
  eventually 60 probe_ready_is probe-good True
  local pid
  pid=$(member_pid probe-good)
  [ -n "$pid" ] || fail "no kvd process of probe-good on this host"
  grep -E '^Uid:' "/proc/$pid/status"
  [ "$(awk '/^Uid:/ {print $2 $3 $4 $5}' "/proc/$pid/status")" = 65532655326553265532 ] ||
    fail "kvd does not run as 65532: $(grep -E '^Uid:' "/proc/$pid/status")"
  awk '$5 == "/" {print "root mount options: " $6}' "/proc/$pid/mountinfo"
  awk '$5 == "/" {print $6}' "/proc/$pid/mountinfo" | grep -qE '(^|,)ro(,|$)' || fail "the root file system is writable"
  local cg limit
  if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
    # cgroup v2 (not this machine's): one hierarchy.
    cg=$(awk -F: '$1 == "0" {print $3}' "/proc/$pid/cgroup")
    limit=$(cat "/sys/fs/cgroup$cg/memory.max")
  else
    cg=$(awk -F: '$2 == "memory" {print $3}' "/proc/$pid/cgroup")
    limit=$(cat "/sys/fs/cgroup/memory$cg/memory.limit_in_bytes")
  fi
  echo "memory cgroup $cg: limit $limit"
  [ "$limit" -eq $((200 * 1024 * 1024)) ] || fail "the memory limit is not the container's cgroup's"
  "$ETCDCTL" --endpoints "http://$(kubectl -n e2e-node get pod probe-good -o jsonpath='{.status.podIP}'):2379" put /e2e/node yes
  eventually 60 probe_failed probe-bad Readiness
  eventually 60 probe_failed probe-bad Liveness
  eventually 60 probe_restarted probe-bad
  probe_ready_is probe-bad False || fail "probe-bad became Ready"
  [ "$(probe_restarts probe-good)" -eq 0 ] || fail "probe-good was restarted ($(probe_restarts probe-good))"
  probe_ready_is probe-good True || fail "probe-good is no longer Ready"
  echo "measured: exec and gRPC probes ran: probe-good Ready, probe-bad restarts $(probe_restarts probe-bad):" \
    "$(kubectl -n e2e-node get events --field-selector involvedObject.name=probe-bad,reason=Unhealthy \
      -o jsonpath='{.items[0].message}' | head -c 160)"
  kubectl delete namespace e2e-node --wait=false
}

demo_members_ready() {
  kubectl -n "$OP_NS" get pods -l "$MEMBERS" -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' |
    grep -c True
}
pending_members() { kubectl -n "$OP_NS" get pods -l "$MEMBERS" --field-selector status.phase=Pending -o name | wc -l; }
one_pending() { [ "$(pending_members)" -eq 1 ]; }
# kubectl drain of the node, for the demo members, under the writer's load.
# First only the leader's pod: the eviction is allowed (minAvailable is the
# quorum, 2 of 3), kubelet stops the leader with SIGTERM, and kvd hands
# leadership over before it exits, so no write fails. Its replacement
# cannot be scheduled on the cordoned node. Then every member: the budget
# refuses each further eviction and drain gives up, with quorum kept and
# writes served. Once the node is uncordoned the member comes back on its
# volume.
node_drain() {
  local node out first
  node=$(kubectl -n "$OP_NS" get pod demo-0 -o jsonpath='{.spec.nodeName}')
  kubectl -n "$OP_NS" get pdb demo -o jsonpath='{.spec.minAvailable} {.status.disruptionsAllowed}{"\n"}'
  [ "$(kubectl -n "$OP_NS" get pdb demo -o jsonpath='{.status.disruptionsAllowed}')" -eq 1 ] ||
    fail "the budget does not allow exactly one disruption"
  first=$(demo_leader)
  [ -n "$first" ] || fail "no leader among the members"
  writer_start drain
  kubectl drain "$node" --pod-selector "statefulset.kubernetes.io/pod-name=$first" --timeout 60s ||
    fail "the leader $first was not evicted"
  eventually 30 one_pending
  if out=$(kubectl drain "$node" --pod-selector "$MEMBERS" --timeout 20s 2>&1); then
    kubectl uncordon "$node"
    fail "drain evicted every member: $out"
  fi
  echo "$out" | tail -5
  [[ "$out" == *"disruption budget"* ]] || fail "drain did not stop at the disruption budget"
  one_pending || fail "not exactly one member evicted and waiting: $(kubectl -n "$OP_NS" get pods -l "$MEMBERS" -o wide)"
  [ "$(demo_members_ready)" -eq 2 ] || fail "the two other members are not both Ready"
  kv put /e2e/drained yes
  kubectl uncordon "$node"
  eventually 120 kvc_available_with 3
  writer_stop drain
  [ "$(kv get /e2e/drained --print-value-only)" = yes ] || fail "the write during the drain is lost"
  echo "measured: drain evicted the leader $first (no write failed: it handed leadership over), then stopped at the budget"
}
