// Package conformance runs containerd 1.6's snapshotter test suite
// (snapshots/testsuite) against obdsnap, or any proxy snapshotter server,
// through containerd's own snapshots/proxy client.
//
// Environment (tests/conformance/run.sh sets it):
//
//	OBDSNAP_SERVER_CMD     server command template with {root} and {address}, and
//	                       {config}, a JSON file {"root": ..., "address": ...}
//	                       plus the keys of OBDSNAP_EXTRA_CONFIG
//	                       (default: python3 -m obdsnap serve --config {config})
//	OBDSNAP_EXTRA_CONFIG   a JSON object of boot config keys for every server,
//	                       e.g. {"rwMode": "dir", "configfsRoot": ...}; the
//	                       command template must then use {config}
//	OBDSNAP_START_TIMEOUT  how long to wait for the server's socket (default 20s)
//	OBDSNAP_TEST_LOG_DIR   where each server's output goes (default: a new temp dir)
//	OBDSNAP_SERVER_TMPDIR  where each server's directory (socket, config, root)
//	                       is made (default /tmp; keep it short)
//
// After each test every snapshot left is removed, children first, before the
// server is stopped; a removal that fails fails the test.
package conformance

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/log"
	"github.com/containerd/containerd/snapshots"
	"github.com/containerd/containerd/snapshots/testsuite"
)

const (
	// --config, not --root/--address: obdsnap then reads no config of the host's.
	defaultServerCmd = "python3 -m obdsnap serve --config {config}"
	snapshotterName  = "obdsnap"
	stopGrace        = 5 * time.Second
	teardownTimeout  = 2 * time.Minute
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
	extraConfig, err := parseExtraConfig(os.Getenv("OBDSNAP_EXTRA_CONFIG"))
	if err != nil {
		t.Fatalf("OBDSNAP_EXTRA_CONFIG: %v", err)
	}
	if len(extraConfig) > 0 && !strings.Contains(template, "{config}") {
		t.Fatalf("OBDSNAP_EXTRA_CONFIG is set but the server command does not use {config}: %s", template)
	}
	t.Logf("server command: %s", template)
	if len(extraConfig) > 0 {
		t.Logf("extra config: %s", os.Getenv("OBDSNAP_EXTRA_CONFIG"))
	}
	t.Logf("server logs: %s", logDir)

	serverTmpDir := envOr("OBDSNAP_SERVER_TMPDIR", "/tmp")

	// The suite calls this once per test with a fresh, empty suiteRoot. The
	// server gets a root of its own, in a short directory with its socket:
	// on failure the suite dumps its temp dir and reads every file there in
	// full, and a writable overlaybd layer is a 64 GiB sparse file.
	newSnapshotter := func(ctx context.Context, suiteRoot string) (snapshots.Snapshotter, func() error, error) {
		serverDir, err := os.MkdirTemp(serverTmpDir, "obdct-")
		if err != nil {
			return nil, nil, err
		}
		root := filepath.Join(serverDir, "root")
		address := filepath.Join(serverDir, "snap.sock")
		logPath := filepath.Join(logDir, filepath.Base(filepath.Dir(suiteRoot))+".log")
		log.G(ctx).Infof("server log: %s, root: %s", logPath, root)

		srv, err := startServer(template, root, address, extraConfig, logPath, startTimeout)
		if err != nil {
			os.RemoveAll(serverDir)
			return nil, nil, err
		}
		conn, err := dialLikeContainerd(address)
		if err != nil {
			_ = srv.stop(stopGrace)
			os.RemoveAll(serverDir)
			return nil, nil, err
		}
		sn := proxySnapshotter(conn, snapshotterName)
		cleanup := func() error {
			removeCtx, cancel := context.WithTimeout(ctx, teardownTimeout)
			removeErr := removeAllSnapshots(removeCtx, sn)
			cancel()
			closeErr := conn.Close()
			stopErr := srv.stop(stopGrace)
			if removeErr != nil || stopErr != nil {
				// What the server left (mounts, devices) stays for a look.
				return fmt.Errorf("teardown (server root %s kept): %s", root, joinErrors(stopErr, removeErr))
			}
			os.RemoveAll(serverDir)
			return closeErr
		}
		return sn, cleanup, nil
	}

	testsuite.SnapshotterSuite(t, snapshotterName, newSnapshotter)
}

// joinErrors is the text of the errors that are not nil (Go 1.19 has no errors.Join).
func joinErrors(errs ...error) string {
	var texts []string
	for _, err := range errs {
		if err != nil {
			texts = append(texts, err.Error())
		}
	}
	return strings.Join(texts, "; ")
}
