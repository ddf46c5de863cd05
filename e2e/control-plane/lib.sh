# shellcheck shell=bash
# Starting and stopping a Kubernetes control plane whose storage is kvd:
# one kvd member, kube-apiserver with that member as its --etcd-servers, and
# kube-controller-manager beside it. Sourced by e2e/run; every process logs
# into $E2E_WORK/logs and is stopped by cp_down.
#
# Addresses: kvd on 127.0.0.240 (2379/2380), kube-apiserver on
# 127.0.0.241:6443, kube-controller-manager on 127.0.0.241:10257. The test
# suite's own clusters use other 127.0.0.x addresses.

CP_KVD_IP=127.0.0.240
CP_API_IP=127.0.0.241
CP_ETCD_URL="http://$CP_KVD_IP:2379"
CP_API_URL="https://$CP_API_IP:6443"
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

# cp_start NAME COMMAND...: starts a process in the background, logging to
# $E2E_WORK/logs/NAME.log.
cp_start() {
  local name=$1
  shift
  "$@" >"$E2E_WORK/logs/$name.log" 2>&1 &
  CP_PIDS+=($!)
  echo "$!" >"$E2E_WORK/$name.pid"
}

# Keys and credentials: the service-account signing key, and a static token
# for the admin (system:masters) that kubectl and the controller manager use.
cp_credentials() {
  local w=$E2E_WORK
  openssl genrsa -out "$w/sa.key" 2048 2>/dev/null
  openssl rsa -in "$w/sa.key" -pubout -out "$w/sa.pub" 2>/dev/null
  CP_ADMIN_TOKEN=$(openssl rand -hex 16)
  echo "$CP_ADMIN_TOKEN,e2e-admin,e2e-admin,\"system:masters\"" >"$w/tokens.csv"
}

# cp_kubeconfig FILE: an admin kubeconfig trusting the API server's
# self-signed serving certificate.
cp_kubeconfig() {
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster:
    server: $CP_API_URL
    certificate-authority: $E2E_WORK/apiserver-certs/apiserver.crt
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
  mkdir -p "$E2E_WORK/logs" "$E2E_WORK/apiserver-certs"
  cp_credentials
  cp_start kvd "$kvd" --name cp --data-dir "$E2E_WORK/kvd" \
    --listen-client-urls "$CP_ETCD_URL" --advertise-client-urls "$CP_ETCD_URL" \
    --listen-peer-urls "http://$CP_KVD_IP:2380" --initial-advertise-peer-urls "http://$CP_KVD_IP:2380" \
    --initial-cluster "cp=http://$CP_KVD_IP:2380"
  cp_wait 30 "kvd" "$ETCDCTL" --endpoints "$CP_ETCD_URL" endpoint health
  cp_start kube-apiserver "$bin/kube-apiserver" \
    --etcd-servers "$CP_ETCD_URL" \
    --bind-address "$CP_API_IP" --advertise-address "$CP_API_IP" --secure-port 6443 \
    --cert-dir "$E2E_WORK/apiserver-certs" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$E2E_WORK/sa.pub" \
    --service-account-signing-key-file "$E2E_WORK/sa.key" \
    --token-auth-file "$E2E_WORK/tokens.csv" \
    --authorization-mode RBAC \
    --service-cluster-ip-range 10.96.0.0/16 \
    --endpoint-reconciler-type none \
    --allow-privileged
  # The serving certificate appears when the API server starts listening.
  cp_wait 60 "the API server's certificate" test -s "$E2E_WORK/apiserver-certs/apiserver.crt"
  export KUBECONFIG="$E2E_WORK/kubeconfig"
  cp_kubeconfig "$KUBECONFIG"
  cp_wait 120 "kube-apiserver /readyz" "$bin/kubectl" get --raw /readyz
  cp_start kube-controller-manager "$bin/kube-controller-manager" \
    --kubeconfig "$KUBECONFIG" \
    --bind-address "$CP_API_IP" --secure-port 10257 \
    --leader-elect=false \
    --service-account-private-key-file "$E2E_WORK/sa.key" \
    --root-ca-file "$E2E_WORK/apiserver-certs/apiserver.crt" \
    --controllers '*'
  cp_wait 60 "kube-controller-manager /healthz" curl -sfk "https://$CP_API_IP:10257/healthz"
}

cp_down() {
  # Last started, first stopped: the controller manager, the API server, kvd.
  local i pid
  for ((i = ${#CP_PIDS[@]} - 1; i >= 0; i--)); do
    pid=${CP_PIDS[$i]}
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  CP_PIDS=()
}
