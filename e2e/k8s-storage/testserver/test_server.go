// Package testserver stands in for k8s.io/apiserver's
// pkg/storage/etcd3/testserver when scripts/k8s-storage-suite builds
// Kubernetes' etcd3 storage tests: the build's -overlay replaces upstream's
// test_server.go with this file, so every test that asked for an embedded
// etcd gets a fresh kvd process instead (kine runs the same suite against its
// backend the same way). The exported API matches upstream's.
//
//	KVD_BIN    the kvd binary to start for each test (default: kvd on PATH)
package testserver

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/kubernetes"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	storagetesting "k8s.io/apiserver/pkg/storage/testing"
)

// NewTestConfig returns upstream's config type; RunEtcd honours its Dir and
// WatchProgressNotifyInterval.
func NewTestConfig(t testing.TB) *embed.Config {
	cfg := embed.NewConfig()
	cfg.Dir = t.TempDir()
	cfg.WatchProgressNotifyInterval = 5 * time.Second
	return cfg
}

// freeURL reserves a loopback port long enough to name it.
func freeURL(t testing.TB) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return fmt.Sprintf("http://%s", l.Addr())
}

// startKvd runs a single-member kvd in cfg.Dir until the test ends.
func startKvd(t testing.TB, cfg *embed.Config) string {
	bin := os.Getenv("KVD_BIN")
	if bin == "" {
		bin = "kvd"
	}
	client, peer := freeURL(t), freeURL(t)
	args := []string{
		"--name", "default",
		"--data-dir", filepath.Join(cfg.Dir, "default.kvd"),
		"--listen-client-urls", client, "--advertise-client-urls", client,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
		"--initial-cluster", "default=" + peer,
		"--log-level", "warn",
	}
	if d := cfg.WatchProgressNotifyInterval; d > 0 {
		args = append(args, "--experimental-watch-progress-notify-interval", d.String())
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", bin, err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	return client
}

// RunEtcd starts kvd and returns a client to it, wrapped in the recorders
// the storage tests inspect; both are closed when the test ends.
func RunEtcd(t testing.TB, cfg *embed.Config) *kubernetes.Client {
	t.Helper()
	if cfg == nil {
		cfg = NewTestConfig(t)
	}
	endpoint := startKvd(t, cfg)
	client, err := kubernetes.New(clientv3.Config{
		Endpoints:   []string{endpoint},
		DialTimeout: 10 * time.Second,
		Logger:      zaptest.NewLogger(t, zaptest.Level(zapcore.ErrorLevel)).Named("etcd-client"),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() })
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err = client.Client.Get(ctx, "ready")
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("kvd at %s not serving after 30 s: %v", endpoint, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	client.KV = storagetesting.NewKVRecorder(client.KV)
	client.Kubernetes = storagetesting.NewKubernetesRecorder(client.Kubernetes)
	return client
}
