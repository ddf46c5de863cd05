# shellcheck shell=bash
# The hooks both of e2e/run's nodes share (hooks/kubelet.sh and
# hooks/node-agent.sh source this): their pods' processes run on this
# host, their addresses are on the bridge kvde2e0, and their volumes are
# the provisioner's directories under $E2E_WORK/node/volumes.

ectl() { "$ETCDCTL" "$@"; }

# member_pid NAME: this host's pid of the kvd named NAME (a member pod, or
# any pod running kvd --name=NAME).
member_pid() { pgrep -f -- "--name=$1( |$)" | head -1; }

kill_member_process() {
  local pid
  pid=$(member_pid "$1")
  [ -n "$pid" ] || fail "no process of member $1"
  kill -KILL "$pid"
}

volume_dirs() { find "$E2E_WORK/node/volumes" -mindepth 1 -maxdepth 1 -type d | wc -l; }
