# shellcheck shell=bash
# Starting and stopping a Kubernetes control plane whose storage is kvd:
# one kvd member, kube-apiserver with that member as its --etcd-servers, and
# kube-controller-manager beside it, and the pod network the node agent
# (e2e/node-agent) puts pods on. Sourced by e2e/run; every process logs into
# $E2E_WORK/logs and is stopped by cp_down.
#
# Addresses: kvd on 127.0.0.240 (2379/2380); the pod bridge kvde2e0 with
# 10.244.0.1/24 (pods get 10.244.0.2 and up); kube-apiserver on
# 10.244.0.1:6443, so pods reach it too (its certificate also names
# 127.0.0.241, 10.96.0.1 and kubernetes.default.svc);
# kube-controller-manager on 127.0.0.241:10257. The test suite's own
# clusters use other 127.0.0.x addresses and 10.77.x.0/24.

CP_KVD_IP=127.0.0.240
CP_API_IP=127.0.0.241
CP_BRIDGE=kvde2e0
CP_NODE_IP=10.244.0.1
CP_ETCD_URL="http://$CP_KVD_IP:2379"
CP_API_URL="https://$CP_NODE_IP:6443"
CP_PIDS=()

# cp_wait SECONDS DESCRIPTION COMMAND...: retries COMMAND every 0.5 s.
cp_wait() {
  local secs=$1 what=$2
  shift 2
  local deadline=$(($(date +%s) + secs))
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      echo "timed out after ${secs}s waiting for $what" >&2
      return 1
    fi
    sleep 0.5
  done
}

# spawn PIDS NAME COMMAND...: starts a process in the background, logging
# to $E2E_WORK/logs/NAME.log; its pid goes into the array named PIDS (which
# the matching *_down stops) and into $E2E_WORK/NAME.pid.
spawn() {
  local -n spawned=$1
  local name=$2
  shift 2
  "$@" >"$E2E_WORK/logs/$name.log" 2>&1 &
  spawned+=($!)
  echo "$!" >"$E2E_WORK/$name.pid"
}

# cp_start NAME COMMAND...: a process of the control plane, stopped by cp_down.
cp_start() { spawn CP_PIDS "$@"; }

# Keys and credentials: the service-account signing key, a static token for
# the admin (system:masters) that kubectl, the controller manager and the
# node agent use, and a CA with the API server's serving certificate (the
# CA is the pods' ca.crt, through the controller manager's --root-ca-file).
cp_credentials() {
  local w=$E2E_WORK
  openssl genrsa -out "$w/sa.key" 2048 2>/dev/null
  openssl rsa -in "$w/sa.key" -pubout -out "$w/sa.pub" 2>/dev/null
  CP_ADMIN_TOKEN=$(openssl rand -hex 16)
  echo "$CP_ADMIN_TOKEN,e2e-admin,e2e-admin,\"system:masters\"" >"$w/tokens.csv"
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=kvd-e2e-ca \
    -keyout "$w/ca.key" -out "$w/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj /CN=kube-apiserver \
    -keyout "$w/apiserver.key" -out "$w/apiserver.csr" 2>/dev/null
  printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\n' \
    "IP:$CP_NODE_IP,IP:$CP_API_IP,IP:10.96.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost" \
    >"$w/apiserver.ext"
  openssl x509 -req -in "$w/apiserver.csr" -CA "$w/ca.crt" -CAkey "$w/ca.key" -CAcreateserial \
    -days 2 -extfile "$w/apiserver.ext" -out "$w/apiserver.crt" 2>/dev/null
}

# The pod bridge with the node's address (a leftover of a killed run is
# replaced). The node agent adds one veth per pod.
cp_net_up() {
  ip link del "$CP_BRIDGE" 2>/dev/null || true
  ip link add "$CP_BRIDGE" type bridge
  ip addr add "$CP_NODE_IP/24" dev "$CP_BRIDGE"
  ip link set "$CP_BRIDGE" up
}

# Removes what the node agent may have left (it removes its namespaces
# itself when it stops) and the bridge.
cp_net_down() {
  local ns
  for ns in $(ip netns list 2>/dev/null | awk '$1 ~ /^kvdpod-/ {print $1}'); do
    ip netns del "$ns" 2>/dev/null || true
  done
  ip link del "$CP_BRIDGE" 2>/dev/null || true
}

# cp_kubeconfig FILE: an admin kubeconfig trusting the e2e CA.
cp_kubeconfig() {
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster:
    server: $CP_API_URL
    certificate-authority: $E2E_WORK/ca.crt
users:
- name: e2e-admin
  user:
    token: $CP_ADMIN_TOKEN
contexts:
- name: e2e
  context: {cluster: e2e, user: e2e-admin}
current-context: e2e
EOF
}

cp_up() {
  local bin=$1 kvd=$2
  mkdir -p "$E2E_WORK/logs"
  cp_credentials
  cp_net_up
  cp_start kvd "$kvd" --name cp --data-dir "$E2E_WORK/kvd" \
    --listen-client-urls "$CP_ETCD_URL" --advertise-client-urls "$CP_ETCD_URL" \
    --listen-peer-urls "http://$CP_KVD_IP:2380" --initial-advertise-peer-urls "http://$CP_KVD_IP:2380" \
    --initial-cluster "cp=http://$CP_KVD_IP:2380"
  cp_wait 30 "kvd" "$ETCDCTL" --endpoints "$CP_ETCD_URL" endpoint health
  cp_start kube-apiserver "$bin/kube-apiserver" \
    --etcd-servers "$CP_ETCD_URL" \
    --bind-address "$CP_NODE_IP" --advertise-address "$CP_NODE_IP" --secure-port 6443 \
    --tls-cert-file "$E2E_WORK/apiserver.crt" --tls-private-key-file "$E2E_WORK/apiserver.key" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$E2E_WORK/sa.pub" \
    --service-account-signing-key-file "$E2E_WORK/sa.key" \
    --token-auth-file "$E2E_WORK/tokens.csv" \
    --authorization-mode RBAC \
    --service-cluster-ip-range 10.96.0.0/16 \
    --kubelet-preferred-address-types InternalIP,Hostname \
    --allow-privileged
  export KUBECONFIG="$E2E_WORK/kubeconfig"
  cp_kubeconfig "$KUBECONFIG"
  cp_wait 120 "kube-apiserver /readyz" "$bin/kubectl" get --raw /readyz
  cp_start kube-controller-manager "$bin/kube-controller-manager" \
    --kubeconfig "$KUBECONFIG" \
    --bind-address "$CP_API_IP" --secure-port 10257 \
    --leader-elect=false \
    --service-account-private-key-file "$E2E_WORK/sa.key" \
    --root-ca-file "$E2E_WORK/ca.crt" \
    --controllers '*'
  cp_wait 60 "kube-controller-manager /healthz" curl -sfk "https://$CP_API_IP:10257/healthz"
}

# cp_node AGENT BIN_DIR: starts the node agent (e2e/node-agent) and waits
# for its Node to be Ready.
cp_node() {
  local agent=$1 bindir=$2
  cp_start node-agent "$agent" --bin-dir "$bindir" --work-dir "$E2E_WORK/node" \
    --bridge "$CP_BRIDGE" --gateway "$CP_NODE_IP" --api-port 6443
  cp_wait 60 "the node agent's Node" cp_node_ready
}

cp_node_ready() {
  [ "$(kubectl get node e2e-node -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ]
}

cp_down() {
  # Last started, first stopped: the node agent (which stops every pod), the
  # controller manager, the API server, kvd.
  local i pid
  for ((i = ${#CP_PIDS[@]} - 1; i >= 0; i--)); do
    pid=${CP_PIDS[$i]}
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  CP_PIDS=()
  cp_net_down
}
