# shellcheck shell=bash
# Day-two scenarios on the operator's cluster (KvCluster demo in namespace
# $OP_NS, 3 members, left by e2e/scenarios.sh): a member replaced after
# losing its volume, quorum-loss recovery, NOSPACE remediation, the
# maintenance CronJobs, a rolling image upgrade under load, a TLS cluster,
# and deletion by policy; plus the write load the scaling scenario uses.
# Helpers (eventually, fail, kv, ctl_of, kvc_field, ...) come from
# e2e/scenarios.sh, the hooks (ectl, member_urls, ...) from e2e/hooks/.

# kv_all ARGS: etcdctl to every member of KvCluster demo.
kv_all() { ctl_of demo "$@"; }
member_id_of() { kv_all member list -w json | python3 -c "import json,sys
ms=[m for m in json.load(sys.stdin)['members'] if m.get('name')=='$1' and not m.get('isLearner')]
print('%x' % ms[0]['ID'] if ms else '')"; }
# The member of demo that leads, by name (demo-N), from the members' own
# status (ctl_of names them by DNS name: TLS).
demo_leader() {
  kv_all endpoint status -w json | python3 -c 'import json,sys
for e in json.load(sys.stdin):
    st = e["Status"]
    if st["leader"] == st["header"]["member_id"]:
        print(e["Endpoint"].split("//")[1].split(".")[0])
        break'
}
events_with_reason() { kubectl -n "$OP_NS" get events --field-selector "involvedObject.name=demo,reason=$1" -o name | wc -l; }
has_event() { [ "$(events_with_reason "$1")" -ge 1 ]; }
# event_noted REASON TEXT: an Event of demo with REASON says TEXT.
event_noted() {
  kubectl -n "$OP_NS" get events --field-selector "involvedObject.name=demo,reason=$1" \
    -o jsonpath='{range .items[*]}{.message}{"\n"}{end}' | grep -qF -- "$2"
}
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

# member_said NAME TEXT: member NAME's logs hold TEXT.
member_said() { [[ "$(member_logs "$1")" == *"$2"* ]]; }
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
  # The re-created pod's kvd says why it will not start (read before the
  # operator replaces the pod: a real kubelet keeps no logs of a deleted pod).
  eventually 120 member_said demo-2 "its data is lost"
  eventually 300 replaced "$old"
  eventually 120 kvc_available_with 3
  eventually 60 started_members 3
  eventually 60 no_learners
  kv_all member list
  has_event MemberRemoved || fail "no MemberRemoved event"
  has_event MemberAdded || fail "no MemberAdded event"
  [ "$(kv_all get /e2e/greeting --print-value-only)" = hello ] ||
    fail "key lost"
  # The fresh claim came from the StatefulSet's template; after a grown
  # spec.storage.size (volumes_expanded) it is expanded like the others.
  eventually 90 claims_at "$(kvc_field '{.spec.storage.size}')" 3
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
quota_alarm_is() { [ "$(kvc_field '{.status.conditions[?(@.type=="QuotaAlarm")].status}')" = "$1" ]; }

# Fill an 8 MiB quota with overwrites of one key: NOSPACE rises and puts
# fail; the operator compacts, defragments each member and disarms, and
# writes succeed again. The QuotaAlarm condition went True and back.
nospace_remediated() {
  local value=$E2E_WORK/value t0 i err="" tries=0 p0 full
  p0=$(date +%s)
  kubectl -n "$OP_NS" patch kvc demo --type merge -p '{"spec":{"quotaBackendBytes":8388608}}'
  # A new quota is a new pod template: a rolling restart, one member at a time.
  eventually 60 sts_has_quota 8388608
  eventually 300 template_rolled_out
  eventually 120 kvc_available_with 3
  echo "measured: the new quota rolled out to 3 members in $(($(date +%s) - p0)) s"
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
  full=$(date +%s)
  echo "measured: NOSPACE at put $i, after $((full - t0)) s of puts"
  case "$err" in *"database space exceeded"*) ;; *) fail "no NOSPACE after $i puts of 256 KiB: $err" ;; esac
  eventually 180 no_nospace_alarm
  echo "measured: the operator disarmed NOSPACE $(($(date +%s) - full)) s after it"
  eventually 60 condition_changed_after QuotaAlarm "$t0"
  # The status follows at the next reconcile (a step requeues after 5 s).
  eventually 30 quota_alarm_is False
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

# member_versions: the kvd version each member reports on /version
# (its metrics port), sorted.
member_versions() {
  local ip
  for ip in $(kubectl -n "$OP_NS" get pods -l $MEMBERS -o jsonpath='{.items[*].status.podIP}'); do
    curl -s --max-time 3 "http://$ip:2381/version" | python3 -c 'import json,sys; print(json.load(sys.stdin)["kvd"])'
  done | sort | tr '\n' ' '
}

members_report() { [ "$(member_versions)" = "$1" ]; }

# An upgrade to the next version (e2e/next-version): first one that skips a
# minor version, refused (Degraded UpgradeRefused, no pod restarted); then
# the next one, with spec.backup set: a backup is taken first (an
# UpgradeBackup Event and a new object in the bucket), then the members
# restart one at a time under the writer, never fewer than 2 ready and no
# failed write, and each then reports the new version (where the next
# image is a second kvd build that says so: UPGRADE_REPORTS_VERSION).
rolling_upgrade() {
  local next skip image least=3 n uids
  next=$(cat "$root/e2e/next-version")
  skip=$(echo "$next" | awk -F. '{printf "%d.%d.0", $1, $2 + 1}')
  image=ghcr.io/kvd-io/kvd:$next
  uids=$(member_pod_uids)
  kubectl -n "$OP_NS" patch kvc demo --type merge -p "{\"spec\":{\"image\":\"ghcr.io/kvd-io/kvd:$skip\"}}"
  eventually 60 degraded_because UpgradeRefused
  kvc_field '{.status.conditions[?(@.type=="Degraded")].message}'
  echo
  sleep 10
  [ "$(member_pod_uids)" = "$uids" ] || fail "a refused upgrade restarted members"
  s3_up
  kubectl -n "$OP_NS" patch kvc demo --type merge -p '{"spec":{"backup":{"schedule":"0 0 1 1 *",
    "store":{"url":"s3://kvd-backups/upgrade","credentialsSecret":"s3-creds"}}}}'
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
  has_event UpgradeBackup || fail "no UpgradeBackup event"
  [ -n "$(find "$S3_ROOT/kvd-backups/upgrade/$OP_NS/demo" -name '*.snap*' 2>/dev/null)" ] ||
    fail "no backup was taken before the upgrade"
  # The last pod (the old leader's) may still be starting: the status read
  # above can trail it by a reconcile.
  if [ -n "${UPGRADE_REPORTS_VERSION:-}" ]; then
    eventually 90 members_report "$next $next $next "
  fi
  echo "measured: upgrade to $next: fewest ready members $least; members report $(member_versions)"
  kubectl -n "$OP_NS" patch kvc demo --type merge -p '{"spec":{"backup":null}}'
}

kvc_gone() { ! kubectl -n "$OP_NS" get kvc "$1" >/dev/null 2>&1; }
# owned_left NAME: objects of cluster NAME still there (the garbage
# collector removes what the KvCluster owns once it is gone). The root
# password Secret of spec.auth is left out: it stays with retained claims.
owned_left() {
  kubectl -n "$OP_NS" get sts,svc,cm,pdb,cronjob,pod,secret -l "app.kubernetes.io/instance=$1" -o name |
    grep -vx "secret/$1-root" || true
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
  # The retained data keeps its root password (spec.auth was on).
  kubectl -n "$OP_NS" get secret demo-root >/dev/null || fail "the root password went while the claims stay"

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

# cert-manager's controller (e2e/cert-manager/build), run on the machine
# against the API server, with its CRDs; started once, stopped at the end.
cm_up() {
  local dir
  dir="$("$root/e2e/cert-manager/build")"
  kubectl apply --server-side -f "$dir/crds" >/dev/null
  if ! [ -s "$E2E_WORK/cert-manager.pid" ]; then
    "$dir/controller" --kubeconfig "$KUBECONFIG" --leader-elect=false --cluster-resource-namespace "$OP_NS" \
      --enable-certificate-owner-ref >"$E2E_WORK/logs/cert-manager.log" 2>&1 &
    echo $! >"$E2E_WORK/cert-manager.pid"
  fi
}
cm_down() {
  [ -s "$E2E_WORK/cert-manager.pid" ] && kill "$(cat "$E2E_WORK/cert-manager.pid")" 2>/dev/null || true
}
kvc_of() { kubectl -n "$OP_NS" get kvc "$1" -o jsonpath="$2"; }
# condition_reason_is NAME TYPE REASON: KvCluster NAME's condition TYPE has REASON.
condition_reason_is() { [ "$(kvc_of "$1" "{.status.conditions[?(@.type==\"$2\")].reason}")" = "$3" ]; }
managed_available() {
  [ "$(kvc_of managed '{.status.conditions[?(@.type=="Available")].status}')" = True ] &&
    [ "$(kvc_of managed '{.status.readyReplicas}')" = 3 ]
}
certificates_ready() {
  [ "$(kubectl -n "$OP_NS" get certificates.cert-manager.io -l app.kubernetes.io/instance=managed \
    -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -cx True)" -eq 4 ]
}

# TLS mode CertManager: a CA Issuer of cert-manager's own controller issues
# the four certificates of KvCluster managed through the Certificates the
# operator asks for (the first members wait for them: CertificatesPending
# until the Issuer exists), the members form over mutual TLS on them, and a
# client needs managed-client-tls, a cert-manager Secret.
cert_manager_tls() {
  local d=$E2E_WORK/cm-ca out
  cm_up
  mkdir -p "$d"
  # An issuer and Secrets of your own at once: refused by the CRD.
  if out=$(kubectl -n "$OP_NS" apply -f - 2>&1 <<'YAML'
apiVersion: kvd.io/v1alpha1
kind: KvCluster
metadata: {name: managed}
spec:
  replicas: 3
  tls: {certManager: {issuerRef: {name: managed-ca}}, clientSecretName: mine}
YAML
  ); then
    fail "certManager with clientSecretName was accepted"
  fi
  grep -q "exclude each other" <<<"$out" || fail "refused with: $out"
  kubectl -n "$OP_NS" apply -f - <<'YAML'
apiVersion: kvd.io/v1alpha1
kind: KvCluster
metadata: {name: managed}
spec:
  replicas: 3
  storage: {size: 1Gi, whenDeleted: Delete}
  tls: {certManager: {issuerRef: {name: managed-ca}}}
YAML
  # No Issuer yet: the operator asks for the Certificates and waits.
  eventually 60 condition_reason_is managed Progressing CertificatesPending
  [ -z "$(kubectl -n "$OP_NS" get sts managed -o name 2>/dev/null)" ] || fail "members created before their certificates"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=kvd-e2e-cm-ca \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
    -keyout "$d/ca.key" -out "$d/ca.crt" 2>/dev/null
  kubectl -n "$OP_NS" create secret tls managed-ca --cert="$d/ca.crt" --key="$d/ca.key"
  kubectl -n "$OP_NS" apply -f - <<'YAML'
apiVersion: cert-manager.io/v1
kind: Issuer
metadata: {name: managed-ca}
spec: {ca: {secretName: managed-ca}}
YAML
  eventually 120 certificates_ready
  eventually 240 managed_available
  [ "$(kvc_of managed '{.status.tls.mode}')" = CertManager ] || fail "status.tls.mode is $(kvc_of managed '{.status.tls.mode}')"
  [ -n "$(kvc_of managed '{.status.tls.notAfter}')" ] || fail "no status.tls.notAfter"
  [ "$(kubectl -n "$OP_NS" get secret managed-client-tls -o jsonpath='{.metadata.annotations.cert-manager\.io/certificate-name}')" = managed-client-tls ] ||
    fail "managed-client-tls was not written by cert-manager"
  ctl_of managed put /e2e/cert-manager yes
  [ "$(ctl_of managed get /e2e/cert-manager --print-value-only)" = yes ] || fail "read back over TLS"
  out=$(ctl_of managed member list)
  [ "$(grep -c "https://managed-[0-2].managed-peer.$OP_NS.svc:2380" <<<"$out")" -eq 3 ] || fail "peers not on https: $out"
  # The members' chain is cert-manager's CA.
  openssl verify -CAfile "$d/ca.crt" "$E2E_WORK/tls-managed/tls.crt" || fail "the client certificate is not the Issuer's"
  if ectl_by_name --endpoints "https://managed-0.managed-peer.$OP_NS.svc:2379" --command-timeout 3s \
    --cacert "$d/ca.crt" get /e2e/cert-manager >/dev/null 2>&1; then
    fail "a client without a certificate was served"
  fi
  kubectl -n "$OP_NS" delete kvc managed
  eventually 120 kvc_gone managed
  eventually 120 no_claims_left managed
}

# The operator, installed for $OP_NS only, holds a Role there and no
# ClusterRole, and leaves a KvCluster in another namespace alone (no
# finalizer, no status, no StatefulSet) while it runs demo.
namespace_scoped() {
  kubectl -n "$OP_NS" get role kvd-operator >/dev/null || fail "no Role in $OP_NS"
  ! kubectl get clusterrole kvd-operator >/dev/null 2>&1 || fail "a ClusterRole was installed"
  kubectl create namespace kvd-elsewhere
  kubectl -n kvd-elsewhere apply -f - <<'YAML'
apiVersion: kvd.io/v1alpha1
kind: KvCluster
metadata: {name: ignored}
spec: {replicas: 1}
YAML
  # Long enough for several reconciles of demo (one a minute when idle,
  # sooner after the annotation).
  kubectl -n "$OP_NS" annotate kvc demo --overwrite e2e/poke="$(date +%s)"
  sleep 20
  [ -z "$(kubectl -n kvd-elsewhere get kvc ignored -o jsonpath='{.metadata.finalizers}{.status}')" ] ||
    fail "the operator acted on a KvCluster outside its namespaces: $(kubectl -n kvd-elsewhere get kvc ignored -o yaml)"
  ! kubectl -n kvd-elsewhere get sts ignored >/dev/null 2>&1 || fail "a StatefulSet was made outside its namespaces"
  kvc_available_with 3 || fail "demo is not Available"
  kubectl delete namespace kvd-elsewhere --wait=false
}

auth_on() { [ "$(kvc_field '{.status.authEnabled}')" = true ]; }

# spec.auth.enabled on demo: the operator creates root (password in Secret
# demo-root) and the users of its own and the Jobs' certificates, then
# turns authentication on. The users' certificate (CN kvd-client, role
# root) still writes; root with its password reads, a wrong password is
# refused, and a user without a role is denied. Every later scenario runs
# with authentication on: the operator, its Jobs and the second API
# server authenticate by certificate.
auth_enabled() {
  kubectl -n "$OP_NS" patch kvc demo --type merge -p '{"spec":{"auth":{"enabled":true}}}'
  eventually 120 auth_on
  kv auth status
  [[ "$(kv auth status)" == *"Authentication Status: true"* ]] || fail "authentication is off"
  has_event AuthEnabled || fail "no AuthEnabled event"
  kv put /e2e/auth yes
  local pw out
  pw=$(secret_field demo-root password)
  [ -n "$pw" ] || fail "no root password in Secret demo-root"
  [ "$(kv --user "root:$pw" get /e2e/auth --print-value-only)" = yes ] || fail "root with its password cannot read"
  if kv --user root:wrong get /e2e/auth >/dev/null 2>&1; then fail "a wrong password was accepted"; fi
  kv user add reader --new-user-password=pw1
  if out=$(kv --user reader:pw1 get /e2e/auth 2>&1); then fail "a user without a role read: $out"; fi
  [[ "$out" == *"permission denied"* ]] || fail "not denied for want of permission: $out"
  kv user list
  eventually 60 kvc_available_with 3
}

# secret_field SECRET KEY: a key of a Secret, decoded.
secret_field() { kubectl -n "$OP_NS" get secret "$1" -o "jsonpath={.data.${2/./\\.}}" | base64 -d; }
rotated_to() {
  local s
  for s in server peer client operator; do
    [ "$(kubectl -n "$OP_NS" get secret "demo-$s-tls" -o 'jsonpath={.metadata.annotations.kvd\.io/rotation}')" = "$1" ] ||
      return 1
  done
}

# KvCluster demo (the chart's defaults) runs on certificates the operator
# issued: status.tls says mode Operator and when they expire; members
# advertise https for clients and peers; a client without a certificate,
# or in plain text, is refused; the operator's certificate is its own.
# kvd.io/rotate-certificates renews the four certificates (not the CA):
# Events say so, no member pod is re-created, the cluster stays Available,
# and the renewed client certificate is accepted. On a real node, whose
# kubelet refreshes Secret volumes, every running member then presents the
# renewed serving certificate.
secure_by_default() {
  [ "$(kvc_field '{.status.tls.mode}')" = Operator ] || fail "status.tls: $(kvc_field '{.status.tls}')"
  [ -n "$(kvc_field '{.status.tls.notAfter}')" ] || fail "no certificate expiry in status.tls"
  local out
  out=$(kv member list)
  echo "$out"
  [ "$(grep -c "https://demo-[0-9].demo-peer.$OP_NS.svc:2380, https://demo-[0-9].demo-peer.$OP_NS.svc:2379" <<<"$out")" -eq 3 ] ||
    fail "members do not advertise https URLs"
  if ectl_by_name --endpoints "https://demo-client.$OP_NS.svc:2379" --cacert "$E2E_WORK/tls-demo/ca.crt" \
    --command-timeout 3s get /e2e/greeting >/dev/null 2>&1; then
    fail "a client without a certificate was served"
  fi
  if ectl_by_name --endpoints "http://demo-client.$OP_NS.svc:2379" --command-timeout 3s get /e2e/greeting >/dev/null 2>&1; then
    fail "a plaintext client was served"
  fi
  [ "$(secret_field demo-operator-tls tls.crt)" != "$(secret_field demo-client-tls tls.crt)" ] ||
    fail "the operator presents the users' certificate"
  secret_field demo-client-tls tls.crt | openssl x509 -noout -subject -enddate

  local uids before_server
  uids=$(member_pod_uids)
  before_server=$(secret_field demo-server-tls tls.crt)
  local rotated_at
  rotated_at=$(date +%s)
  kubectl -n "$OP_NS" annotate kvc demo kvd.io/rotate-certificates=e2e-1
  eventually 60 rotated_to e2e-1
  [ "$(secret_field demo-server-tls tls.crt)" != "$before_server" ] || fail "the serving certificate was not renewed"
  [ "$(secret_field demo-server-tls ca.crt)" = "$(cat "$E2E_WORK/tls-demo/ca.crt")" ] || fail "the CA changed"
  # Events of one reason are aggregated (a count and the first note).
  eventually 30 event_noted CertificateRenewed "rotation requested (kvd.io/rotate-certificates=e2e-1)"
  # The renewed client certificate works.
  rm -rf "$E2E_WORK/tls-demo"
  tls_files demo
  kv put /e2e/rotated yes
  [ "$(kv get /e2e/rotated --print-value-only)" = yes ] || fail "read back with the renewed certificate"
  kvc_available_with 3 || fail "not Available after the rotation"
  [ "$(member_pod_uids)" = "$uids" ] || fail "a rotation re-created member pods"
  if [ -n "${NODE_REFRESHES_SECRETS:-}" ]; then
    # kubelet refreshes the Secret volumes; each running member reloads the
    # files and presents the renewed certificate.
    local renewed
    renewed=$(secret_field demo-server-tls tls.crt | openssl x509 -noout -fingerprint -sha256)
    eventually 120 members_present "$renewed"
    echo "measured: every running member presented the renewed certificate $(($(date +%s) - rotated_at)) s after the rotation"
  fi
}

# members_present FINGERPRINT: every member pod's client port presents the
# certificate of that SHA-256 fingerprint.
members_present() {
  local ip
  for ip in $(kubectl -n "$OP_NS" get pods -l "$MEMBERS" -o jsonpath='{.items[*].status.podIP}'); do
    [ "$(openssl s_client -connect "$ip:2379" </dev/null 2>/dev/null | openssl x509 -noout -fingerprint -sha256)" = "$1" ] ||
      return 1
  done
}

# An S3 server (s3s-fs from scripts/install-deps, checking SigV4) on the pod
# bridge, serving $E2E_WORK/s3 (bucket kvd-backups), and the Secret of its
# credentials in $OP_NS. Started once; it runs until the e2e ends.
S3_PORT=9000
S3_ROOT=
s3_up() {
  S3_ROOT=$E2E_WORK/s3
  mkdir -p "$S3_ROOT/kvd-backups"
  if ! [ -s "$E2E_WORK/s3.pid" ]; then
    "$root/.tools/bin/s3s-fs" --host 10.244.0.1 --port $S3_PORT --access-key e2e-access --secret-key e2e-secret \
      "$S3_ROOT" >"$E2E_WORK/logs/s3s-fs.log" 2>&1 &
    echo $! >"$E2E_WORK/s3.pid"
  fi
  kubectl -n "$OP_NS" create secret generic s3-creds --dry-run=client -o yaml \
    --from-literal=AWS_ACCESS_KEY_ID=e2e-access --from-literal=AWS_SECRET_ACCESS_KEY=e2e-secret \
    --from-literal=AWS_REGION=us-east-1 --from-literal=AWS_ENDPOINT_URL=http://10.244.0.1:$S3_PORT \
    --from-literal=AWS_ALLOW_HTTP=true | kubectl apply -f -
}
s3_down() {
  [ -s "$E2E_WORK/s3.pid" ] && kill "$(cat "$E2E_WORK/s3.pid")" 2>/dev/null || true
}
# backups_stored: the backup objects of KvCluster demo, oldest first.
backups_stored() { find "$E2E_WORK/s3/kvd-backups/e2e/$OP_NS/demo" -name '*.snap*' -printf '%f\n' 2>/dev/null | sort; }
backup_count_is() { [ "$(backups_stored | wc -l)" -eq "$1" ]; }
backup_requested_done() {
  [ "$(kvc_field '{.status.backupRequest}')" = "$1" ] && recorded lastBackup "$2" &&
    [ "$(kvc_field '{.status.lastBackup.key}')" != "$3" ]
}

# Backups every minute to the S3 server, keeping 2: the first scheduled one
# lands in the bucket and in status.lastBackup (with a BackupSucceeded
# Event); two on-demand ones (kvd.io/backup-now) follow, and the oldest is
# pruned. A backup read back from the bucket is checked with kvctl. A
# wrong secret key fails the Job: status.lastBackupFailure, a BackupFailed
# Event, and nothing more in the bucket.
scheduled_backups() {
  local t0 key first
  s3_up
  t0=$(date +%s)
  kv_all put /e2e/backup/marker before >/dev/null
  kubectl -n "$OP_NS" patch kvc demo --type merge -p '{"spec":{"backup":{"schedule":"* * * * *",
    "store":{"url":"s3://kvd-backups/e2e","credentialsSecret":"s3-creds"},"keepLast":2}}}'
  eventually 60 cronjob_exists demo-backup
  eventually 180 recorded lastBackup "$t0"
  first=$(kvc_field '{.status.lastBackup.key}')
  kvc_field '{.status.lastBackup}'
  echo
  [ "$(kvc_field '{.status.lastBackup.revision}')" -gt 0 ] || fail "lastBackup has no revision"
  has_event BackupSucceeded || fail "no BackupSucceeded event"
  backups_stored | grep -q . || fail "nothing in the bucket"
  # Scheduling stops; two on demand, one after the other.
  kubectl -n "$OP_NS" patch kvc demo --type merge -p '{"spec":{"backup":{"schedule":"0 0 1 1 *"}}}'
  for token in one two; do
    kv_all put /e2e/backup/marker "$token" >/dev/null
    key=$(kvc_field '{.status.lastBackup.key}')
    t0=$(date +%s)
    kubectl -n "$OP_NS" annotate kvc demo --overwrite "kvd.io/backup-now=$token"
    eventually 120 backup_requested_done "$token" "$t0" "$key"
  done
  backups_stored
  eventually 30 backup_count_is 2
  ! backups_stored | grep -qF "$(basename "$first")" || fail "the oldest backup was not pruned"
  # The newest, read back from the bucket with kvctl: intact, of the revision recorded.
  local out
  out=$(AWS_ACCESS_KEY_ID=e2e-access AWS_SECRET_ACCESS_KEY=e2e-secret AWS_ENDPOINT_URL=http://10.244.0.1:$S3_PORT \
    AWS_ALLOW_HTTP=true AWS_REGION=us-east-1 "$bindir/kvctl" backup verify --from s3://kvd-backups/e2e --cluster "$OP_NS/demo")
  echo "$out"
  [ "$(echo "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["revision"])')" = "$(kvc_field '{.status.lastBackup.revision}')" ] ||
    fail "the newest backup in the bucket is not status.lastBackup"
  # A wrong key: the Job fails, the failure is reported, nothing is stored.
  kubectl -n "$OP_NS" create secret generic s3-wrong --from-literal=AWS_ACCESS_KEY_ID=e2e-access \
    --from-literal=AWS_SECRET_ACCESS_KEY=wrong --from-literal=AWS_REGION=us-east-1 \
    --from-literal=AWS_ENDPOINT_URL=http://10.244.0.1:$S3_PORT --from-literal=AWS_ALLOW_HTTP=true
  kubectl -n "$OP_NS" patch kvc demo --type merge -p '{"spec":{"backup":{"store":{"credentialsSecret":"s3-wrong"}}}}'
  kubectl -n "$OP_NS" annotate kvc demo --overwrite kvd.io/backup-now=wrong
  eventually 180 has_failure_with SignatureDoesNotMatch
  has_event BackupFailed || fail "no BackupFailed event"
  backup_count_is 2 || fail "a failed backup left an object: $(backups_stored)"
  kubectl -n "$OP_NS" patch kvc demo --type merge -p '{"spec":{"backup":null}}'
  eventually 60 cronjob_gone demo-backup
  # What the restore scenario checks after the cluster is gone.
  kv_all get /e2e/ --prefix -w json >"$E2E_WORK/backed-up.json"
}
has_failure_with() { [[ "$(kvc_field '{.status.lastBackupFailure.message}')" == *"$1"* ]]; }

restored_available() {
  [ "$(kubectl -n "$OP_NS" get kvc restored -o jsonpath='{.status.conditions[?(@.type=="Available")].status}')" = True ] &&
    [ "$(kubectl -n "$OP_NS" get kvc restored -o jsonpath='{.status.readyReplicas}')" = 3 ]
}
kvc_degraded_reason() { kubectl -n "$OP_NS" get kvc "$1" -o jsonpath='{.status.conditions[?(@.type=="Degraded")].reason}'; }
bad_restore_refused() { [ "$(kvc_degraded_reason badrestore)" = BackupInvalid ]; }
# restored_kv ARGS: etcdctl to KvCluster restored's members.
restored_kv() { ctl_of restored "$@"; }
# kvs FILE: key, create and mod revision, version and value of every key in an etcdctl JSON answer.
kvs_of() {
  python3 -c 'import json,sys; d=json.load(open(sys.argv[1]))
for kv in d.get("kvs", []): print(kv["key"], kv["create_revision"], kv["mod_revision"], kv["version"], kv["value"])' "$1"
}

# KvCluster demo is gone; a new KvCluster starts from its last backup (a
# Job checks it first; every member restores it): its keys come back with
# their create and mod revisions and versions, and the revision goes on
# from the backup's. A KvCluster naming a damaged backup gets Degraded
# BackupInvalid and no StatefulSet.
restore_from_backup() {
  s3_up
  kubectl -n "$OP_NS" apply -f - <<'YAML'
apiVersion: kvd.io/v1alpha1
kind: KvCluster
metadata: {name: restored}
spec:
  replicas: 3
  storage: {size: 1Gi, whenDeleted: Delete}
  bootstrap:
    fromBackup:
      store: {url: "s3://kvd-backups/e2e", credentialsSecret: s3-creds}
      cluster: kvd-e2e/demo
YAML
  eventually 300 restored_available
  kubectl -n "$OP_NS" get kvc restored -o jsonpath='{.status.restoredFrom}'
  echo
  local rev
  rev=$(kubectl -n "$OP_NS" get kvc restored -o jsonpath='{.status.restoredFrom.revision}')
  restored_kv get /e2e/ --prefix -w json >"$E2E_WORK/restored.json"
  diff <(kvs_of "$E2E_WORK/backed-up.json") <(kvs_of "$E2E_WORK/restored.json") ||
    fail "the restored cluster's keys differ from those backed up"
  [ "$(restored_kv get /e2e/backup/marker --print-value-only)" = two ] || fail "marker not restored"
  local next
  next=$(restored_kv put /e2e/after-restore 1 -w json | python3 -c 'import json,sys; print(json.load(sys.stdin)["header"]["revision"])')
  [ "$next" -eq $((rev + 1)) ] || fail "the first write after the restore has revision $next, not $((rev + 1))"
  [ "$(restored_kv member list | grep -c ', started, ')" -eq 3 ] || fail "$(restored_kv member list)"

  # A damaged backup: one byte flipped in the newest object.
  local obj
  obj=$(find "$E2E_WORK/s3/kvd-backups/e2e/$OP_NS/demo" -name '*.snap*' | sort | tail -1)
  mkdir -p "$E2E_WORK/s3/kvd-backups/bad/$OP_NS/demo"
  python3 -c 'import sys; b=bytearray(open(sys.argv[1],"rb").read()); b[len(b)//2]^=1; open(sys.argv[2],"wb").write(b)' \
    "$obj" "$E2E_WORK/s3/kvd-backups/bad/$OP_NS/demo/$(basename "$obj")"
  kubectl -n "$OP_NS" apply -f - <<'YAML'
apiVersion: kvd.io/v1alpha1
kind: KvCluster
metadata: {name: badrestore}
spec:
  replicas: 1
  bootstrap:
    fromBackup:
      store: {url: "s3://kvd-backups/bad", credentialsSecret: s3-creds}
      cluster: kvd-e2e/demo
YAML
  eventually 180 bad_restore_refused
  kubectl -n "$OP_NS" get kvc badrestore -o jsonpath='{.status.conditions[?(@.type=="Degraded")].message}'
  echo
  ! kubectl -n "$OP_NS" get sts badrestore >/dev/null 2>&1 || fail "a StatefulSet was created from a damaged backup"
  kubectl -n "$OP_NS" delete kvc badrestore restored
  eventually 120 kvc_gone restored
  eventually 120 owned_gone restored
}

# A second kube-apiserver on 127.0.0.241:6444 (its certificate names that
# address), with the control plane's keys, over the --etcd-servers given
# (mig_apiserver_up URLS LOGNAME [ETCD-TLS-FLAGS...]), resolving the
# cluster's names as etcdctl does (by_name).
MIG_API=https://127.0.0.241:6444
mig_kubectl() { "$bin/kubectl" --server "$MIG_API" "$@"; }
mig_apiserver_up() {
  local urls=$1 logname=$2
  shift 2
  "${BY_NAME[@]}" "$bin/kube-apiserver" --etcd-servers "$urls" "$@" \
    --bind-address 127.0.0.241 --advertise-address 127.0.0.241 --secure-port 6444 \
    --tls-cert-file "$E2E_WORK/apiserver.crt" --tls-private-key-file "$E2E_WORK/apiserver.key" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$E2E_WORK/sa.pub" --service-account-signing-key-file "$E2E_WORK/sa.key" \
    --token-auth-file "$E2E_WORK/tokens.csv" --authorization-mode RBAC \
    --service-cluster-ip-range 10.96.0.0/16 >"$E2E_WORK/logs/kube-apiserver-$logname.log" 2>&1 &
  echo $! >"$E2E_WORK/mig-apiserver.pid"
  eventually 120 mig_kubectl get --raw /readyz
}
mig_apiserver_down() {
  local pid
  pid=$(cat "$E2E_WORK/mig-apiserver.pid")
  kill "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
  rm -f "$E2E_WORK/mig-apiserver.pid"
}
rv_of() { mig_kubectl -n moved get configmap "$1" -o jsonpath='{.metadata.resourceVersion}'; }
imported_available() {
  [ "$(kubectl -n "$OP_NS" get kvc imported -o jsonpath='{.status.conditions[?(@.type=="Available")].status}')" = True ] &&
    [ "$(kubectl -n "$OP_NS" get kvc imported -o jsonpath='{.status.readyReplicas}')" = 3 ]
}

# kube-apiserver runs on etcd 3.6 (from the pinned module) and stores
# ConfigMaps; the etcd snapshot goes into the bucket, and a KvCluster
# starts from it (spec.bootstrap.fromBackup with its key). The API server,
# restarted on the KvCluster's members, serves the same objects with the
# same resourceVersions, a list at a resourceVersion from before the move
# gives that older state, and new writes get later resourceVersions.
etcd_import() {
  s3_up
  local etcd_url=http://127.0.0.242:2379
  "$root/.tools/bin/etcd" --name mig --data-dir "$E2E_WORK/etcd36" \
    --listen-client-urls "$etcd_url" --advertise-client-urls "$etcd_url" \
    --listen-peer-urls http://127.0.0.242:2380 --initial-advertise-peer-urls http://127.0.0.242:2380 \
    --initial-cluster mig=http://127.0.0.242:2380 >"$E2E_WORK/logs/etcd36.log" 2>&1 &
  local etcd_pid=$!
  eventually 30 ectl --endpoints "$etcd_url" endpoint health
  mig_apiserver_up "$etcd_url" etcd
  mig_kubectl create namespace moved
  mig_kubectl -n moved create configmap a --from-literal=v=1
  local rv_a1 rv_a2 rv_b
  rv_a1=$(rv_of a)
  mig_kubectl -n moved create configmap b --from-literal=v=1
  mig_kubectl -n moved patch configmap a --type merge -p '{"data":{"v":"2"}}'
  rv_a2=$(rv_of a)
  rv_b=$(rv_of b)
  echo "on etcd: a at $rv_a1 then $rv_a2, b at $rv_b"
  mig_apiserver_down
  ectl --endpoints "$etcd_url" snapshot save "$E2E_WORK/etcd36.db"
  kill "$etcd_pid"
  mkdir -p "$S3_ROOT/kvd-backups/import/$OP_NS/imported"
  cp "$E2E_WORK/etcd36.db" "$S3_ROOT/kvd-backups/import/$OP_NS/imported/etcd36.db"

  kubectl -n "$OP_NS" apply -f - <<'YAML'
apiVersion: kvd.io/v1alpha1
kind: KvCluster
metadata: {name: imported}
spec:
  replicas: 3
  storage: {size: 1Gi, whenDeleted: Delete}
  bootstrap:
    fromBackup:
      store: {url: "s3://kvd-backups/import", credentialsSecret: s3-creds}
      key: etcd36.db
YAML
  eventually 300 imported_available
  kubectl -n "$OP_NS" get kvc imported -o jsonpath='{.status.restoredFrom}'
  echo
  # Over mutual TLS, with the client certificate the operator issued.
  tls_files imported || fail "no client certificate for KvCluster imported"
  local d=$E2E_WORK/tls-imported
  mig_apiserver_up "$(member_urls imported https)" kvd \
    --etcd-cafile "$d/ca.crt" --etcd-certfile "$d/tls.crt" --etcd-keyfile "$d/tls.key"
  [ "$(rv_of a)" = "$rv_a2" ] || fail "configmap a: resourceVersion $(rv_of a), was $rv_a2 on etcd"
  [ "$(rv_of b)" = "$rv_b" ] || fail "configmap b: resourceVersion $(rv_of b), was $rv_b on etcd"
  [ "$(mig_kubectl -n moved get configmap a -o jsonpath='{.data.v}')" = 2 ] || fail "configmap a lost its data"
  # The state at a resourceVersion from before the move: only a, at v=1.
  local old
  old=$(mig_kubectl get --raw "/api/v1/namespaces/moved/configmaps?resourceVersion=$rv_a1&resourceVersionMatch=Exact")
  echo "$old" | python3 -c 'import json,sys; d=json.load(sys.stdin); names=[(i["metadata"]["name"], i["data"]["v"]) for i in d["items"] if i["metadata"]["name"] in "ab"]; print(names); assert names == [("a","1")], names' ||
    fail "the list at resourceVersion $rv_a1 is not the old state"
  mig_kubectl -n moved create configmap c --from-literal=v=1
  [ "$(rv_of c)" -gt "$rv_b" ] || fail "a new object's resourceVersion $(rv_of c) is not after $rv_b"
  mig_apiserver_down
  kubectl -n "$OP_NS" delete kvc imported
  eventually 120 kvc_gone imported
}

# The operator's metrics, read through the API server's pod proxy.
operator_metrics() {
  local pod
  pod=$(kubectl -n kvd-system get pods -l app.kubernetes.io/name=kvd-operator -o jsonpath='{.items[0].metadata.name}')
  kubectl get --raw "/api/v1/namespaces/kvd-system/pods/$pod:8080/proxy/metrics"
}
# The operator's reconcile count.
reconciles() {
  operator_metrics | awk '$1 == "kvd_operator_reconcile_runs_total" {print $2}'
}
# observations SOURCE: reconciles that read their objects from SOURCE (cache or api).
observations() {
  operator_metrics | awk -v s="kvd_operator_observe_total{source=\"$1\"}" '$1 == s {print $2 + 0; found = 1} END {if (!found) print 0}'
}
# reconciles_in SECONDS: reconciles during the next SECONDS.
reconciles_in() {
  local before after
  before=$(reconciles)
  sleep "$1"
  after=$(reconciles)
  echo $((after - before))
}

# A settled cluster is reconciled about once a minute (the periodic
# requeue), not after each of its own status writes: idle, and under a
# put every 0.2 s (each put moves the members' revisions, which the status
# used to carry, so every status write triggered the next reconcile).
# Those reconciles read the objects from the operator's caches: none of
# them lists or gets from the API server (only a reconcile within 10 s of a
# step of its own does).
quiet_reconciles() {
  local idle busy api0 cache0 api cache
  eventually 60 kvc_available_with 3
  sleep 10
  api0=$(observations api)
  cache0=$(observations cache)
  idle=$(reconciles_in 60)
  writer_start quiet
  busy=$(reconciles_in 60)
  writer_stop quiet
  api=$(($(observations api) - api0))
  cache=$(($(observations cache) - cache0))
  echo "measured: reconciles in 60 s: $idle idle, $busy under writes; objects read from the caches $cache times, from the API server $api"
  [ "$idle" -le 4 ] || fail "$idle reconciles in a minute of an idle cluster"
  [ "$busy" -le 4 ] || fail "$busy reconciles in a minute of a cluster under writes"
  [ "$api" -eq 0 ] || fail "$api reconciles of a settled cluster read the API server instead of the caches"
  [ "$cache" -ge 1 ] || fail "no reconcile read the caches"
}
