# shellcheck shell=bash
# Kubernetes on a replicated kvd through failover: a second kube-apiserver
# (mig_apiserver_up, e2e/scenarios_ops.sh) stores its objects in KvCluster
# demo's 3 members over mutual TLS, with the client certificate the
# operator issued. A writer creates and updates ConfigMaps through kubectl
# and a `kubectl get -w` watches them while the cluster's leader is killed
# with SIGKILL, a follower is paused (SIGSTOP) for 10 s, and a member loses
# its volume and is replaced by the operator. Kubernetes must keep serving:
# the longest gap between successful writes is recorded and bounded, and
# the watch must see every write, with resourceVersions only going up.

# The longest allowed gap between two successful writes, in seconds. The
# API server's etcd client spreads calls over the members and a call sent
# to the paused member waits for it (as it would on etcd), so the pause
# (10 s) bounds the gap, plus an election and room for a busy machine.
FAILOVER_PAUSE=10
FAILOVER_MAX_GAP=15

fo_kubectl() { mig_kubectl -n failover --request-timeout=20s "$@"; }

# fo_write NAME KUBECTL-ARGS: one write of ConfigMap NAME, logged as
# "<epoch ms> <name> <resourceVersion>", or "fail <epoch ms> <error>".
fo_write() {
  local name=$1 rv log=$E2E_WORK/logs/failover-writes.log err=$E2E_WORK/failover.err
  shift
  if rv=$(fo_kubectl "$@" -o jsonpath='{.metadata.resourceVersion}' 2>"$err"); then
    echo "$(date +%s%3N) $name $rv" >>"$log"
  else
    echo "fail $(date +%s%3N) $(tr '\n' ' ' <"$err")" >>"$log"
  fi
}
# The failover writer: ConfigMap c<i> created, then c<i-1> updated, until
# $E2E_WORK/failover.stop exists.
fo_writer() {
  local i=0
  : >"$E2E_WORK/logs/failover-writes.log"
  while [ ! -e "$E2E_WORK/failover.stop" ]; do
    i=$((i + 1))
    fo_write "c$i" create configmap "c$i" --from-literal=v=0
    [ "$i" -gt 1 ] && fo_write "c$((i - 1))" patch configmap "c$((i - 1))" --type merge -p "{\"data\":{\"v\":\"$i\"}}"
  done
}

# The raft term the members agree on (the highest reported).
fo_term() {
  ctl_of demo endpoint status -w json | python3 -c 'import json,sys
print(max(e["Status"]["raft_term"] for e in json.load(sys.stdin)))'
}

kubernetes_failover() {
  tls_files demo || fail "no client certificate for KvCluster demo"
  local d=$E2E_WORK/tls-demo
  mig_apiserver_up "$(member_urls demo https)" failover \
    --etcd-cafile "$d/ca.crt" --etcd-certfile "$d/tls.crt" --etcd-keyfile "$d/tls.key"
  mig_kubectl create namespace failover
  rm -f "$E2E_WORK/failover.stop"
  mig_kubectl -n failover get configmaps -w --watch-only --no-headers \
    -o custom-columns=NAME:.metadata.name,RV:.metadata.resourceVersion >"$E2E_WORK/logs/failover-watch.log" 2>&1 &
  local watcher=$!
  # The watch is open before the first write.
  sleep 5
  fo_writer &
  local writer=$!
  sleep 10

  # 1. SIGKILL to the leader's process.
  local leader
  leader=$(demo_leader)
  [ -n "$leader" ] || fail "no leader among the members"
  echo "killing the leader $leader"
  kill_member_process "$leader"
  eventually 90 pod_ready "$leader"
  eventually 90 kvc_available_with 3
  sleep 5

  # 2. A follower paused, then let go: with Pre-Vote it does not depose
  # the leader when it comes back.
  local follower pid
  leader=$(demo_leader)
  follower=$(for m in demo-0 demo-1 demo-2; do [ "$m" != "$leader" ] && echo "$m"; done | head -1)
  pid=$(member_pid "$follower")
  [ -n "$pid" ] || fail "no process of $follower"
  echo "pausing the follower $follower (leader $leader)"
  local term_before
  term_before=$(fo_term)
  kill -STOP "$pid"
  sleep "$FAILOVER_PAUSE"
  kill -CONT "$pid"
  sleep 5
  [ "$(demo_leader)" = "$leader" ] && [ "$(fo_term)" = "$term_before" ] ||
    fail "the paused follower deposed the leader: leader $(demo_leader) (was $leader), term $(fo_term) (was $term_before)"
  eventually 90 kvc_available_with 3
  sleep 5

  # 3. A follower loses its volume: the operator removes and re-adds it.
  kubectl -n "$OP_NS" patch kvc demo --type merge -p '{"spec":{"failedMemberTimeoutSeconds":30}}'
  leader=$(demo_leader)
  follower=$(for m in demo-2 demo-1 demo-0; do [ "$m" != "$leader" ] && echo "$m"; done | head -1)
  local old
  old=$(member_id_of "$follower")
  echo "replacing the follower $follower ($old)"
  kubectl -n "$OP_NS" delete pvc "data-$follower" --wait=false
  kubectl -n "$OP_NS" delete pod "$follower" --wait=false
  eventually 300 member_renewed "$follower" "$old"
  eventually 120 kvc_available_with 3
  eventually 60 no_learners
  sleep 5

  touch "$E2E_WORK/failover.stop"
  wait "$writer" || true
  sleep 3
  kill "$watcher" 2>/dev/null || true
  wait "$watcher" 2>/dev/null || true
  mig_apiserver_down
  fo_check
}

member_renewed() {
  local id
  id=$(member_id_of "$1")
  [ -n "$id" ] && [ "$id" != "$2" ]
}

# The writes and the watch, checked: the gap bound, every acknowledged
# write seen by the watch, and the watch's resourceVersions increasing.
fo_check() {
  python3 - "$E2E_WORK/logs/failover-writes.log" "$E2E_WORK/logs/failover-watch.log" "$FAILOVER_MAX_GAP" <<'PY'
import sys
writes, watch, max_gap = sys.argv[1], sys.argv[2], float(sys.argv[3])
ok, failed = [], 0
for line in open(writes):
    f = line.split()
    if f and f[0] == "fail":
        failed += 1
    elif len(f) == 3 and f[0].isdigit() and f[2].isdigit():
        ok.append((int(f[0]), f[1], int(f[2])))
assert len(ok) > 50, f"only {len(ok)} writes succeeded"
times = [t for t, _, _ in ok]
gaps = [(b - a) / 1000 for a, b in zip(times, times[1:])]
gap = max(gaps)
print(f"measured: {len(ok)} writes acknowledged, {failed} failed; longest gap between acknowledged writes {gap:.1f} s")
seen = []
for line in open(watch):
    f = line.split()
    if len(f) == 2 and f[1].isdigit():
        seen.append((f[0], int(f[1])))
rvs = [rv for _, rv in seen]
back = [(a, b) for a, b in zip(rvs, rvs[1:]) if b <= a]
assert not back, f"the watch's resourceVersion went back: {back[:5]}"
seen_set = set(seen)
missed = [(n, rv) for _, n, rv in ok if (n, rv) not in seen_set]
assert not missed, f"the watch missed {len(missed)} acknowledged writes, e.g. {missed[:5]}"
print(f"measured: the watch saw all {len(ok)} acknowledged writes among {len(seen)} events, in order")
assert gap <= max_gap, f"a gap of {gap:.1f} s without a successful write (bound {max_gap} s)"
PY
}
