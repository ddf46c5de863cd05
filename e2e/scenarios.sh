# shellcheck shell=bash
# The e2e scenarios, each a function run by e2e/run in its own subshell with
# `set -e`: a failing command or assertion fails the scenario. `kubectl` and
# `etcdctl` (against the kvd member that stores the cluster) are functions of
# e2e/run; $root is the repository.

# "name:description" in the order they run.
SCENARIOS=(
  "kubernetes_on_kvd:Kubernetes stores itself in kvd"
  "storage_log_clean:the API server logged no storage errors"
)

# fail MESSAGE: ends the scenario.
fail() {
  echo "assertion failed: $*" >&2
  exit 1
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
  # creates its ReplicaSet and two Pods (Pending: no node runs them here).
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

# Last: nothing the API server logged as an error came from its storage.
storage_log_clean() {
  local errors
  errors=$(grep -E '^E[0-9]{4} ' "$E2E_WORK/logs/kube-apiserver.log" | grep -iE 'etcd|rpc error|watch chan|storage|compact' || true)
  [ -z "$errors" ] || fail "storage errors in the kube-apiserver log:
$errors"
}
