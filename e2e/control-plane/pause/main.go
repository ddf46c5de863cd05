// Command pause is the pod sandbox of the e2e's real node: containerd runs
// it as each pod's first process, which holds the pod's namespaces while
// its containers come and go. It reaps the children it inherits and exits
// on SIGINT or SIGTERM. e2e/control-plane/node.sh packs it, built static,
// as the image kvd.local/pause (no registry is reachable here, so
// registry.k8s.io/pause cannot be pulled).
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 16)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range signals {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var status syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
