//go:build tools

// Package tools pins the upstream Go programs the test suite runs against kvd.
// scripts/install-deps builds them into .tools/bin; nothing here is vendored.
package tools

import (
	// etcdctl 3.6: the client the tests drive kvd and etcd with.
	_ "go.etcd.io/etcd/etcdctl/v3"
	// etcd 3.6 (the server): the current etcd that scripts/bench-vs-etcd
	// compares against beside Debian's etcd 3.4.
	_ "go.etcd.io/etcd/server/v3"
	// etcd's own benchmark tool: a cross-check of `kvctl bench`.
	_ "go.etcd.io/etcd/v3/tools/benchmark"
)
