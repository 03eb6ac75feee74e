// Package conformance runs containerd 1.6's snapshotter test suite
// (snapshots/testsuite) against obdsnap, or any proxy snapshotter server,
// through containerd's own snapshots/proxy client.
//
// Environment (tests/conformance/run.sh sets it):
//
//	OBDSNAP_SERVER_CMD     server command template with {root} and {address}, and
//	                       optionally {config}, a JSON file {"root": ..., "address": ...}
//	                       (default: python3 -m obdsnap serve --root {root} --address {address})
//	OBDSNAP_START_TIMEOUT  how long to wait for the server's socket (default 20s)
//	OBDSNAP_TEST_LOG_DIR   where each server's output goes (default: a new temp dir)
package conformance

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/containerd/containerd/log"
	"github.com/containerd/containerd/snapshots"
	"github.com/containerd/containerd/snapshots/testsuite"
)

const (
	defaultServerCmd = "python3 -m obdsnap serve --root {root} --address {address}"
	snapshotterName  = "obdsnap"
	stopGrace        = 5 * time.Second
)

func envOr(key, fallback string) string {
	if value := os.Getenv(key); value != "" {
		return value
	}
	return fallback
}

func TestSnapshotterSuite(t *testing.T) {
	template := envOr("OBDSNAP_SERVER_CMD", defaultServerCmd)
	startTimeout, err := time.ParseDuration(envOr("OBDSNAP_START_TIMEOUT", "20s"))
	if err != nil {
		t.Fatalf("OBDSNAP_START_TIMEOUT: %v", err)
	}
	logDir := os.Getenv("OBDSNAP_TEST_LOG_DIR")
	if logDir == "" {
		if logDir, err = os.MkdirTemp("", "obdsnap-conformance-"); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Logf("server command: %s", template)
	t.Logf("server logs: %s", logDir)

	// The suite calls this once per test with a fresh, empty root.
	newSnapshotter := func(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
		// The suite's temp dirs can be long; sockets live in a short dir.
		sockDir, err := os.MkdirTemp("/tmp", "obdct-")
		if err != nil {
			return nil, nil, err
		}
		address := filepath.Join(sockDir, "snap.sock")
		logPath := filepath.Join(logDir, filepath.Base(filepath.Dir(root))+".log")
		log.G(ctx).Infof("server log: %s", logPath)

		srv, err := startServer(template, root, address, logPath, startTimeout)
		if err != nil {
			os.RemoveAll(sockDir)
			return nil, nil, err
		}
		conn, err := dialLikeContainerd(address)
		if err != nil {
			_ = srv.stop(stopGrace)
			os.RemoveAll(sockDir)
			return nil, nil, err
		}
		cleanup := func() error {
			closeErr := conn.Close()
			stopErr := srv.stop(stopGrace)
			os.RemoveAll(sockDir)
			if stopErr != nil {
				return stopErr
			}
			return closeErr
		}
		return proxySnapshotter(conn, snapshotterName), cleanup, nil
	}

	testsuite.SnapshotterSuite(t, snapshotterName, newSnapshotter)
}
