# shellcheck shell=bash
# A real node for the e2e: kubelet and kube-proxy (built with the control
# plane from the pinned k8s.io/kubernetes module), kube-scheduler, Debian's
# containerd 1.6 with runc and the CNI plugins (bridge, host-local,
# portmap, loopback) on the pod bridge kvde2e0, CoreDNS (e2e/coredns) on
# the node's address for the cluster's names, and the node agent in
# --provisioner-only mode as the volume provisioner. The pods run the
# images of scripts/build-images, imported into containerd; no registry is
# reached. Sourced by e2e/run after control-plane/lib.sh; every process
# logs into $E2E_WORK/logs and node_down stops them.
#
# What this machine needs of kubelet 1.36 and containerd 1.6, and what
# they get here:
#   - cgroup v1 (this kernel mounts the v1 hierarchies): kubelet refuses it
#     unless failCgroupV1 is false; the cgroupfs driver (no systemd).
#   - no CAP_SYS_RESOURCE for root in this sandbox: containerd restricts
#     the pods' oom_score_adj to its own (restrict_oom_score_adj), or runc
#     fails to lower it for Guaranteed pods and sandboxes.
#   - containerd 1.6 lacks the CRI RuntimeConfig call; kubelet logs that
#     and uses its own cgroup driver setting.
#   - no registry: the sandbox image is kvd.local/pause:1, packed here
#     from e2e/control-plane/pause.
#
# Addresses: kubelet on 10.244.0.1:10250, CoreDNS on 10.244.0.1:53 (the
# pods' nameserver), kube-scheduler on 127.0.0.241:10259, kube-proxy's
# health and metrics on 127.0.0.241:10256 and :10249.

NODE_DIR=""
NODE_CTR=""
NODE_PIDS=()
NODE_DNS_IP=$CP_NODE_IP

# node_ctr ARGS: containerd's ctr in the CRI namespace of the node's
# containerd.
node_ctr() { ctr --address "$NODE_CTR" --namespace k8s.io "$@"; }

# node_start NAME COMMAND...: a process of the node, stopped by node_down.
node_start() { spawn NODE_PIDS "$@"; }

# node_images BIN_DIR TAG NEXT: the member and operator images as TAG, the
# member image again as NEXT from BIN_DIR/kvd-NEXT (the rolling upgrade's
# target), and the pause image, imported into containerd.
node_images() {
  local bindir=$1 tag=$2 next=$3 out="$E2E_WORK/images" f
  mkdir -p "$out" "$E2E_WORK/next-bin"
  "$root/scripts/build-images" --bin-dir "$bindir" --tag "$tag" --out "$out" >"$E2E_WORK/logs/build-images.log" 2>&1 ||
    return 1
  for f in kvctl kvd-operator; do ln -sf "$bindir/$f" "$E2E_WORK/next-bin/$f"; done
  ln -sf "$bindir/kvd-$next" "$E2E_WORK/next-bin/kvd"
  "$root/scripts/build-images" --bin-dir "$E2E_WORK/next-bin" --tag "$next" --out "$out/next" \
    >>"$E2E_WORK/logs/build-images.log" 2>&1 || return 1
  node_pause_image "$out" >>"$E2E_WORK/logs/build-images.log" 2>&1 || return 1
  {
    node_ctr images import --base-name ghcr.io/kvd-io/kvd "$out/kvd-$tag.oci.tar" &&
      node_ctr images import --base-name ghcr.io/kvd-io/kvd-operator "$out/kvd-operator-$tag.oci.tar" &&
      node_ctr images import --base-name ghcr.io/kvd-io/kvd "$out/next/kvd-$next.oci.tar" &&
      node_ctr images import --base-name kvd.local/pause "$out/pause.oci.tar"
  } >"$E2E_WORK/logs/images-import.log" 2>&1
}

# node_pause_image DIR: DIR/pause.oci.tar, the sandbox image: the pause
# command (built static by control-plane/build) alone, run as 65535.
node_pause_image() {
  local dir=$1 layout="$1/pause-layout" bundle="$1/pause-bundle"
  umoci init --layout "$layout" &&
    umoci new --image "$layout:1" &&
    umoci unpack --image "$layout:1" "$bundle" >/dev/null &&
    cp "$bin/pause" "$bundle/rootfs/pause" &&
    umoci repack --image "$layout:1" "$bundle" &&
    umoci config --image "$layout:1" --config.entrypoint /pause --config.user 65535:65535 \
      --manifest.annotation org.opencontainers.image.ref.name=1 &&
    tar -C "$layout" -cf "$dir/pause.oci.tar" .
}

node_containerd() {
  local d=$NODE_DIR
  mkdir -p "$d/cni" "$d/containerd"
  cat >"$d/cni/10-kvd-e2e.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "kvd-e2e",
  "plugins": [
    {"type": "bridge", "bridge": "$CP_BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "dataDir": "$d/ipam",
              "ranges": [[{"subnet": "10.244.0.0/24", "gateway": "$CP_NODE_IP"}]],
              "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}},
    {"type": "loopback"}
  ]
}
EOF
  cat >"$d/containerd.toml" <<EOF
version = 2
root = "$d/containerd/root"
state = "$d/containerd/state"
[grpc]
  address = "$NODE_CTR"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "kvd.local/pause:1"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$d/cni"
EOF
  node_start containerd containerd --config "$d/containerd.toml"
  cp_wait 30 "containerd" node_ctr version
}

node_kubelet() {
  local d=$NODE_DIR
  cat >"$d/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://$NODE_CTR
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
address: $CP_NODE_IP
port: 10250
healthzBindAddress: 127.0.0.1
clusterDNS: [$NODE_DNS_IP]
clusterDomain: cluster.local
resolvConf: $d/resolv.conf
failSwapOn: false
syncFrequency: 10s
fileCheckFrequency: 5s
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
maxPods: 60
EOF
  # The pods' DNS is CoreDNS only: a name outside cluster.local fails at
  # once, rather than after the machine's resolver times out.
  printf 'nameserver %s\noptions timeout:1 attempts:2\n' "$NODE_DNS_IP" >"$d/resolv.conf"
  node_start kubelet "$bin/kubelet" --config "$d/kubelet.yaml" --kubeconfig "$KUBECONFIG" \
    --root-dir "$d/kubelet" --hostname-override e2e-node --node-ip "$CP_NODE_IP" -v 1
}

# The cluster's DNS: CoreDNS's kubernetes plugin, answering for
# cluster.local (Services, headless Services' pods, pod addresses) from the
# API server; any other name is NXDOMAIN at once. This host's own lookups
# of those names (by_name) use host-resolv.conf.
node_dns() {
  printf 'nameserver %s\nsearch cluster.local\noptions timeout:1 attempts:2\n' "$NODE_DNS_IP" >"$NODE_DIR/host-resolv.conf"
  cat >"$NODE_DIR/Corefile" <<EOF
cluster.local:53 in-addr.arpa:53 {
  bind $NODE_DNS_IP
  errors
  kubernetes cluster.local in-addr.arpa {
    kubeconfig $KUBECONFIG e2e
    pods insecure
    ttl 5
  }
}
.:53 {
  bind $NODE_DNS_IP
  template ANY ANY {
    rcode NXDOMAIN
  }
}
EOF
  node_start coredns "$CP_COREDNS" -conf "$NODE_DIR/Corefile" || return 1
  cp_wait 30 "CoreDNS" node_resolves kubernetes.default.svc.cluster.local
}

# node_resolves NAME: CoreDNS answers NAME with an address.
node_resolves() {
  [ -n "$(by_name getent hosts "$1")" ]
}

# node_up BIN_DIR: the real node, with the images of the binaries in
# BIN_DIR; waits for the Node to be Ready.
node_up() {
  local bindir=$1 tag next
  NODE_DIR="$E2E_WORK/node"
  NODE_CTR="$NODE_DIR/containerd.sock"
  mkdir -p "$NODE_DIR"
  tag=$(awk '/^appVersion:/ { gsub(/"/, "", $2); print $2 }' "$root/charts/kvd-cluster/Chart.yaml")
  next=$(cat "$root/e2e/next-version")
  node_containerd || return 1
  node_images "$bindir" "$tag" "$next" || return 1
  node_kubelet
  node_start kube-scheduler "$bin/kube-scheduler" --kubeconfig "$KUBECONFIG" \
    --bind-address "$CP_API_IP" --secure-port 10259 --leader-elect=false
  node_start kube-proxy "$bin/kube-proxy" --kubeconfig "$KUBECONFIG" --hostname-override e2e-node \
    --proxy-mode iptables --cluster-cidr 10.244.0.0/24 --conntrack-max-per-core 0 \
    --healthz-bind-address "$CP_API_IP:10256" --metrics-bind-address "$CP_API_IP:10249"
  node_start provisioner "$bindir/kvd-node-agent" --provisioner-only --bin-dir "$bindir" --work-dir "$NODE_DIR"
  node_dns || return 1
  cp_wait 90 "kubelet's Node" cp_node_ready
}

# Stops the node's processes, last started first: CoreDNS, the
# provisioner, kube-proxy, kube-scheduler, kubelet (so nothing restarts a
# container), then every container, then containerd. Unmounts what kubelet
# and containerd mounted under the work dir and removes the pods' network
# namespaces and kube-proxy's rules.
node_down() {
  [ -n "$NODE_DIR" ] || return 0
  local i pid id m ns
  for ((i = ${#NODE_PIDS[@]} - 1; i >= 0; i--)); do
    pid=${NODE_PIDS[$i]}
    case "$(cat "$E2E_WORK/containerd.pid" 2>/dev/null)" in
      "$pid")
        # containerd, last: its containers go first.
        for id in $(node_ctr tasks ls -q 2>/dev/null); do node_ctr tasks kill -s KILL "$id" 2>/dev/null || true; done
        sleep 1
        for id in $(node_ctr tasks ls -q 2>/dev/null); do node_ctr tasks delete -f "$id" 2>/dev/null || true; done
        ;;
    esac
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  NODE_PIDS=()
  pkill -f "containerd-shim-runc-v2 -namespace k8s.io -id [0-9a-f]+ -address $NODE_CTR" 2>/dev/null || true
  awk -v d="$NODE_DIR/" 'index($2, d) == 1 {print $2}' /proc/mounts | sort -r | while read -r m; do
    umount -l "$m" 2>/dev/null || true
  done
  for ns in $(ip netns list 2>/dev/null | awk '$1 ~ /^cni-/ {print $1}'); do
    ip netns del "$ns" 2>/dev/null || true
  done
  "$bin/kube-proxy" --cleanup >/dev/null 2>&1 || true
}
