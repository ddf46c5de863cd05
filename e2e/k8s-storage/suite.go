//go:build tools

// Package suite pins the Kubernetes storage tests that
// scripts/k8s-storage-suite builds and runs against kvd: k8s.io/apiserver's
// pkg/storage/etcd3, at the version in go.mod, from the Go module proxy.
// Nothing of Kubernetes is copied here; the build swaps upstream's embedded
// etcd test server for testserver/test_server.go with go's -overlay.
package suite

import (
	_ "k8s.io/apiserver/pkg/storage/etcd3"
)
