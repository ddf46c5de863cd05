# shellcheck shell=bash
# Day-two scenarios on the operator's cluster (KvCluster demo in namespace
# $OP_NS, 3 members, left by e2e/scenarios.sh): a member replaced after
# losing its volume, quorum-loss recovery, NOSPACE remediation, the
# maintenance CronJobs, a rolling image upgrade under load, a TLS cluster,
# and deletion by policy; plus the write load the scaling scenario uses.
# Helpers (eventually, fail, kv, kvc_field, ...) come from e2e/scenarios.sh,
# the hooks (ectl, member_endpoints, ...) from e2e/hooks/.

# kv_all ARGS: etcdctl with every member's address (read again each time:
# pod addresses change when a pod is re-created).
kv_all() { ectl --endpoints "$(member_endpoints)" --command-timeout 5s "$@"; }
member_id_of() { kv_all member list -w json | python3 -c "import json,sys
ms=[m for m in json.load(sys.stdin)['members'] if m.get('name')=='$1' and not m.get('isLearner')]
print('%x' % ms[0]['ID'] if ms else '')"; }
events_with_reason() { kubectl -n "$OP_NS" get events --field-selector "involvedObject.name=demo,reason=$1" -o name | wc -l; }
has_event() { [ "$(events_with_reason "$1")" -ge 1 ]; }
# condition_changed_after TYPE EPOCH: TYPE's lastTransitionTime is later than EPOCH.
condition_changed_after() {
  local t
  t=$(kvc_field "{.status.conditions[?(@.type==\"$1\")].lastTransitionTime}")
  [ -n "$t" ] && [ "$(date -d "$t" +%s)" -ge "$2" ]
}

# The writer: a light load of one put every 0.2 s through every member's
# address (re-read each time), each put retried once a second later; a put
# that fails twice is a failed write. Started in the background; stopped by
# writer_stop, which prints the number of writes and of failed ones.
writer_start() {
  local log=$E2E_WORK/logs/writer-$1.log
  : >"$log"
  (
    i=0
    while [ ! -e "$E2E_WORK/writer.stop" ]; do
      i=$((i + 1))
      if kv_all put "/e2e/load/$1/$i" "$i" >/dev/null 2>>"$log" ||
        { sleep 1 && kv_all put "/e2e/load/$1/$i" "$i" >/dev/null 2>>"$log"; }; then
        echo "ok $i" >>"$log"
      else
        echo "FAILED $i" >>"$log"
      fi
      sleep 0.2
    done
  ) &
  WRITER_PID=$!
}
# writer_stop NAME: stops the writer; fails the scenario on a failed write
# or a write not readable afterwards.
writer_stop() {
  local log=$E2E_WORK/logs/writer-$1.log ok failed stored
  touch "$E2E_WORK/writer.stop"
  wait "$WRITER_PID" || true
  rm -f "$E2E_WORK/writer.stop"
  ok=$(grep -c '^ok ' "$log" || true)
  failed=$(grep -c '^FAILED ' "$log" || true)
  stored=$(kv_all get "/e2e/load/$1/" --prefix --keys-only | grep -c . || true)
  echo "writer $1: $ok writes acknowledged, $failed failed, $stored stored"
  [ "$failed" -eq 0 ] || fail "failed writes under load: $(grep -v '^ok ' "$log" | tail -5)"
  [ "$ok" -ge 10 ] || fail "the writer barely wrote ($ok)"
  [ "$stored" -ge "$ok" ] || fail "acknowledged writes lost: $ok acknowledged, $stored stored"
}

replaced() {
  local id
  id=$(member_id_of demo-2)
  [ -n "$id" ] && [ "$id" != "$1" ]
}

# Member demo-2 loses its volume: its pod and claim are deleted, the
# StatefulSet brings it back on a fresh volume, kvd refuses to rejoin as the
# member whose data is gone, and after failedMemberTimeoutSeconds the
# operator removes it and adds it back as a learner that catches up.
member_replaced() {
  kubectl -n "$OP_NS" patch kvc demo --type merge -p '{"spec":{"failedMemberTimeoutSeconds":30}}'
  local old
  old=$(member_id_of demo-2)
  [ -n "$old" ] || fail "no voting member demo-2: $(kv_all member list)"
  kubectl -n "$OP_NS" delete pvc data-demo-2 --wait=false
  kubectl -n "$OP_NS" delete pod demo-2 --wait=false
  eventually 300 replaced "$old"
  eventually 120 kvc_available_with 3
  eventually 60 started_members 3
  eventually 60 no_learners
  kv_all member list
  has_event MemberRemoved || fail "no MemberRemoved event"
  has_event MemberAdded || fail "no MemberAdded event"
  # The re-created pod's kvd said why it would not start.
  [[ "$(member_logs demo-2)" == *"its data is lost"* ]] ||
    fail "kvd on the fresh volume did not refuse to rejoin"
  [ "$(kv_all get /e2e/greeting --print-value-only)" = hello ] ||
    fail "key lost"
}

degraded_because() { [ "$(kvc_field '{.status.conditions[?(@.type=="Degraded")].reason}')" = "$1" ]; }

# Members demo-1 and demo-2 lose their volumes at once: they come back
# empty and refuse to rejoin, so quorum is lost (Degraded, QuorumLost).
# With quorumLossRecovery, after failedMemberTimeoutSeconds the operator
# restarts demo-0 (the most advanced survivor) as a cluster of its own
# (kvd --force-new-cluster-member), recycles the others and adds them back
# as learners; what demo-0 held is still there.
quorum_recovered() {
  kubectl -n "$OP_NS" patch kvc demo --type merge -p '{"spec":{"quorumLossRecovery":true,"failedMemberTimeoutSeconds":30}}'
  kv_all put /e2e/before-loss kept >/dev/null
  local one two
  one=$(member_id_of demo-1)
  two=$(member_id_of demo-2)
  # The leader goes with the lost volumes: the survivor is a follower, and
  # behind the old leader if an entry had not reached it yet.
  kv_all move-leader "$one" >/dev/null
  kubectl -n "$OP_NS" delete pvc data-demo-1 data-demo-2 --wait=false
  kubectl -n "$OP_NS" delete pod demo-1 demo-2 --wait=false
  eventually 120 degraded_because QuorumLost
  kvc_field '{.status.conditions[?(@.type=="Degraded")].message}'
  echo
  eventually 400 kvc_available_with 3
  eventually 60 started_members 3
  eventually 60 no_learners
  kv_all member list
  has_event QuorumRecovery || fail "no QuorumRecovery event"
  has_event QuorumRecovered || fail "no QuorumRecovered event"
  [ "$(member_id_of demo-1)" != "$one" ] && [ "$(member_id_of demo-2)" != "$two" ] || fail "demo-1 and demo-2 kept their ids"
  [ "$(kv_all get /e2e/before-loss --print-value-only)" = kept ] || fail "the survivor lost a write"
  local cm
  cm=$(kubectl -n "$OP_NS" get cm demo-config -o json)
  [[ "$cm" == *initial-cluster-state* && "$cm" != *force-new-cluster-member* ]] || fail "the recovery key is still set: $cm"
  kubectl -n "$OP_NS" patch kvc demo --type merge -p '{"spec":{"quorumLossRecovery":false}}'
}

no_nospace_alarm() { [ -z "$(kv_all alarm list)" ]; }

# Fill an 8 MiB quota with overwrites of one key: NOSPACE rises and puts
# fail; the operator compacts, defragments each member and disarms, and
# writes succeed again. The QuotaAlarm condition went True and back.
nospace_remediated() {
  kubectl -n "$OP_NS" patch kvc demo --type merge -p '{"spec":{"quotaBackendBytes":8388608}}'
  # A new quota is a new pod template: a rolling restart, one member at a time.
  eventually 60 sts_has_quota 8388608
  eventually 300 template_rolled_out
  eventually 120 kvc_available_with 3
  local value=$E2E_WORK/value t0 i err="" tries=0
  head -c 196608 /dev/urandom | base64 -w0 >"$value"
  t0=$(date +%s)
  for i in $(seq 1 200); do
    until err=$(kv_all put /e2e/big <"$value" 2>&1 >/dev/null); do
      # Only NOSPACE ends the filling; anything else is retried a few times.
      case "$err" in *"database space exceeded"*) break 2 ;; esac
      tries=$((tries + 1))
      [ "$tries" -lt 5 ] || fail "put $i: $err"
      sleep 1
    done
  done
  echo "put $i: $err"
  case "$err" in *"database space exceeded"*) ;; *) fail "no NOSPACE after $i puts of 256 KiB: $err" ;; esac
  eventually 180 no_nospace_alarm
  eventually 60 condition_changed_after QuotaAlarm "$t0"
  [ "$(kvc_field '{.status.conditions[?(@.type=="QuotaAlarm")].status}')" = False ] || fail "QuotaAlarm still True"
  kv_all put /e2e/after-nospace yes
  has_event Compacted || fail "no Compacted event"
  has_event Defragmented || fail "no Defragmented event"
  has_event AlarmDisarmed || fail "no AlarmDisarmed event"
  kubectl -n "$OP_NS" get events --field-selector involvedObject.name=demo --sort-by=.lastTimestamp | tail -12
}

sts_has_quota() { [[ "$(kubectl -n "$OP_NS" get sts demo -o yaml)" == *"--quota-backend-bytes=$1"* ]]; }
template_rolled_out() {
  local want
  want=$(kubectl -n "$OP_NS" get sts demo -o jsonpath='{.status.updateRevision}')
  [ -n "$want" ] &&
    [ "$(kubectl -n "$OP_NS" get pods -l "controller-revision-hash=$want" -o name | wc -l)" -eq 3 ]
}
cronjob_exists() { kubectl -n "$OP_NS" get cronjob "$1" >/dev/null 2>&1; }
cronjob_gone() { ! cronjob_exists "$1"; }
# recorded FIELD EPOCH: status.FIELD.time is EPOCH or later.
recorded() {
  local t
  t=$(kvc_field "{.status.$1.time}")
  [ -n "$t" ] && [ "$(date -d "$t" +%s)" -ge "$2" ]
}

# Compaction and defragmentation every minute: the CronJobs' Jobs run kvctl
# in pods, and their results reach status.lastCompaction and lastDefrag.
# Unscheduled again, the CronJobs go.
maintenance_cronjobs() {
  local t0 i
  t0=$(date +%s)
  # Revisions beyond the retention and beyond any earlier compaction (a run
  # with nothing to compact records nothing).
  for i in $(seq 1 12); do kv_all put "/e2e/revs/$i" "$i" >/dev/null; done
  kubectl -n "$OP_NS" patch kvc demo --type merge -p \
    '{"spec":{"compaction":{"schedule":"* * * * *","retentionRevisions":5},"defrag":{"schedule":"* * * * *","freeThreshold":0}}}'
  eventually 60 cronjob_exists demo-compact
  eventually 60 cronjob_exists demo-defrag
  eventually 240 recorded lastCompaction "$t0"
  eventually 240 recorded lastDefrag "$t0"
  local rev
  rev=$(kvc_field '{.status.lastCompaction.revision}')
  [ "$rev" -gt 0 ] || fail "lastCompaction: $(kvc_field '{.status.lastCompaction}')"
  local out
  out=$(kv_all get /e2e/greeting --rev=$((rev - 1)) 2>&1 || true)
  case "$out" in *"required revision has been compacted"*) ;; *) fail "revision $((rev - 1)) is not compacted: $out" ;; esac
  kvc_field '{.status.lastDefrag}'
  echo
  [ -n "$(kvc_field '{.status.lastDefrag.member}')" ] || fail "lastDefrag names no member"
  kubectl -n "$OP_NS" get jobs
  kubectl -n "$OP_NS" patch kvc demo --type merge -p '{"spec":{"compaction":null,"defrag":null}}'
  eventually 60 cronjob_gone demo-compact
  eventually 60 cronjob_gone demo-defrag
}

MEMBERS=app.kubernetes.io/name=kvd,app.kubernetes.io/instance=demo
pods_run_image() {
  [ "$(kubectl -n "$OP_NS" get pods -l $MEMBERS -o jsonpath='{.items[*].spec.containers[0].image}' |
    tr ' ' '\n' | grep -c "^$1$")" -eq 3 ]
}
ready_members() {
  kubectl -n "$OP_NS" get pods -l $MEMBERS \
    -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -c True || true
}

# A new image tag (the same binary under another name) rolls through the
# members one at a time: never fewer than 2 ready, no failed write.
rolling_upgrade() {
  local image=ghcr.io/kvd-io/kvd:e2e-next least=3 n
  writer_start upgrade
  kubectl -n "$OP_NS" patch kvc demo --type merge -p "{\"spec\":{\"image\":\"$image\"}}"
  local deadline=$(($(date +%s) + 300))
  until pods_run_image "$image" && kvc_available_with 3; do
    n=$(ready_members)
    [ "$n" -lt "$least" ] && least=$n
    [ "$(date +%s)" -lt "$deadline" ] || fail "upgrade not done in 300 s"
    sleep 0.5
  done
  eventually 60 started_members 3
  writer_stop upgrade
  echo "fewest ready members during the upgrade: $least"
  [ "$least" -ge 2 ] || fail "only $least members were ready at one point"
  has_event PodRestarted || fail "no PodRestarted event"
}

kvc_gone() { ! kubectl -n "$OP_NS" get kvc "$1" >/dev/null 2>&1; }
# owned_left NAME: objects of cluster NAME still there (the garbage
# collector removes what the KvCluster owns once it is gone).
owned_left() {
  kubectl -n "$OP_NS" get sts,svc,cm,pdb,cronjob,pod -l "app.kubernetes.io/instance=$1" -o name
}
owned_gone() { [ -z "$(owned_left "$1")" ]; }
claims_of() { kubectl -n "$OP_NS" get pvc -o name | grep -cE "/data-$1-[0-9]+$" || true; }
no_claims_left() { [ "$(claims_of "$1")" -eq 0 ]; }
solo_available() {
  [ "$(kubectl -n "$OP_NS" get kvc solo -o jsonpath='{.status.conditions[?(@.type=="Available")].status}')" = True ]
}

# helm uninstall deletes KvCluster demo: the finalizer runs, every owned
# object goes, and its claims stay (whenDeleted Retain, the chart's
# default). A one-member KvCluster with whenDeleted Delete takes its claim
# and volume with it.
cluster_deleted() {
  helm uninstall demo --namespace "$OP_NS"
  eventually 120 kvc_gone demo
  eventually 120 owned_gone demo
  [ "$(claims_of demo)" -eq 3 ] || fail "claims after deletion with whenDeleted Retain: $(kubectl -n "$OP_NS" get pvc)"
  has_event DeleteRequested || fail "no DeleteRequested event"

  kubectl -n "$OP_NS" apply -f - <<'YAML'
apiVersion: kvd.io/v1alpha1
kind: KvCluster
metadata: {name: solo}
spec: {replicas: 1, storage: {size: 1Gi, whenDeleted: Delete}}
YAML
  eventually 180 solo_available
  [ "$(claims_of solo)" -eq 1 ] || fail "solo has no claim"
  local pv
  pv=$(kubectl -n "$OP_NS" get pvc data-solo-0 -o jsonpath='{.spec.volumeName}')
  kubectl -n "$OP_NS" delete kvc solo
  eventually 120 kvc_gone solo
  eventually 120 owned_gone solo
  eventually 120 no_claims_left solo
  eventually 60 no_pv "$pv"
}
no_pv() { ! kubectl get pv "$1" >/dev/null 2>&1; }

secure_available() {
  [ "$(kubectl -n "$OP_NS" get kvc secure -o jsonpath='{.status.conditions[?(@.type=="Available")].status}')" = True ] &&
    [ "$(kubectl -n "$OP_NS" get kvc secure -o jsonpath='{.status.readyReplicas}')" = 3 ]
}
# secure_ctl ARGS: etcdctl to KvCluster secure by the members' DNS names
# (their certificates name no address), with the client certificate.
secure_ctl() {
  local d=$E2E_WORK/tls eps
  eps="https://secure-0.secure-peer.$OP_NS.svc:2379,https://secure-1.secure-peer.$OP_NS.svc:2379"
  ectl_by_name --endpoints "$eps" --command-timeout 5s --cacert "$d/ca.crt" --cert "$d/tls.crt" --key "$d/tls.key" "$@"
}

# A CA and one certificate for server and client use (SANs: the members'
# peer names and the client Service), in a Secret the KvCluster names for
# client and peer traffic. The members form over mutual TLS, the operator
# reaches them with the certificate (Available), and clients must present
# it: with it etcdctl writes and reads, without it or in plaintext it fails.
tls_cluster() {
  local d=$E2E_WORK/tls out
  mkdir -p "$d"
  openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=kvd-e2e-ca -keyout "$d/ca.key" -out "$d/ca.crt" 2>/dev/null
  cat >"$d/ext" <<EXT
basicConstraints=CA:FALSE
keyUsage=digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth,clientAuth
subjectAltName=DNS:*.secure-peer.$OP_NS.svc,DNS:*.secure-peer.$OP_NS.svc.cluster.local,DNS:secure-client.$OP_NS.svc
EXT
  openssl req -newkey rsa:2048 -nodes -subj /CN=kvd-e2e -keyout "$d/tls.key" -out "$d/tls.csr" 2>/dev/null
  openssl x509 -req -in "$d/tls.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial -days 1 \
    -extfile "$d/ext" -out "$d/tls.crt" 2>/dev/null
  kubectl -n "$OP_NS" create secret generic secure-tls \
    --from-file=ca.crt="$d/ca.crt" --from-file=tls.crt="$d/tls.crt" --from-file=tls.key="$d/tls.key"
  kubectl -n "$OP_NS" apply -f - <<'YAML'
apiVersion: kvd.io/v1alpha1
kind: KvCluster
metadata: {name: secure}
spec:
  replicas: 3
  storage: {size: 1Gi, whenDeleted: Delete}
  tls: {clientSecretName: secure-tls, peerSecretName: secure-tls}
YAML
  eventually 240 secure_available
  secure_ctl put /e2e/tls yes
  [ "$(secure_ctl get /e2e/tls --print-value-only)" = yes ] || fail "read back over TLS"
  out=$(secure_ctl member list)
  echo "$out"
  [ "$(grep -c "https://secure-[0-2].secure-peer.$OP_NS.svc:2380, https://secure-[0-2].secure-peer.$OP_NS.svc:2379" <<<"$out")" -eq 3 ] ||
    fail "members do not advertise https URLs"
  # Without the client certificate, and in plaintext: refused.
  if ectl_by_name --endpoints "https://secure-0.secure-peer.$OP_NS.svc:2379" --command-timeout 3s \
    --cacert "$d/ca.crt" get /e2e/tls >/dev/null 2>&1; then
    fail "a client without a certificate was served"
  fi
  if ectl_by_name --endpoints "http://secure-0.secure-peer.$OP_NS.svc:2379" --command-timeout 3s get /e2e/tls >/dev/null 2>&1; then
    fail "a plaintext client was served"
  fi
  kubectl -n "$OP_NS" delete kvc secure
  eventually 120 kvc_gone secure
  eventually 120 no_claims_left secure
}
