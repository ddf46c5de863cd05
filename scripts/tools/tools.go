//go:build tools

// Package tools pins the upstream Go programs the test suite runs against kvd.
// scripts/install-deps builds them into .tools/bin; nothing here is vendored.
package tools

import (
	_ "go.etcd.io/etcd/etcdctl/v3"
)
