package conformance

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/defaults"
	"github.com/containerd/containerd/pkg/dialer"
	"github.com/containerd/containerd/snapshots"
	"github.com/containerd/containerd/snapshots/proxy"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
)

// maxSocketPath is the usable length of sockaddr_un.sun_path on Linux,
// including the terminating NUL byte.
const maxSocketPath = 108

// serverProcess is one snapshotter server started from a command template.
type serverProcess struct {
	command string
	logPath string
	cmd     *exec.Cmd
	exited  chan struct{}
	waitErr error
}

// expandTemplate fills the {root}, {address} and {config} placeholders of a
// server command template.
func expandTemplate(template, root, address, config string) string {
	return strings.NewReplacer("{root}", root, "{address}", address, "{config}", config).Replace(template)
}

// serverConfig is the content of the {config} file: the keys of extra
// (OBDSNAP_EXTRA_CONFIG) with this server's root and address.
func serverConfig(extra map[string]any, root, address string) ([]byte, error) {
	config := make(map[string]any, len(extra)+2)
	for key, value := range extra {
		config[key] = value
	}
	config["root"] = root
	config["address"] = address
	return json.MarshalIndent(config, "", "  ")
}

// parseExtraConfig reads OBDSNAP_EXTRA_CONFIG: empty, or a JSON object whose
// keys go into every server's {config} file. root and address are the
// driver's to choose, per test.
func parseExtraConfig(text string) (map[string]any, error) {
	extra := map[string]any{}
	if strings.TrimSpace(text) == "" {
		return extra, nil
	}
	if err := json.Unmarshal([]byte(text), &extra); err != nil || extra == nil {
		return nil, fmt.Errorf("must be a JSON object (%v): %s", err, text)
	}
	for _, key := range []string{"root", "address"} {
		if _, found := extra[key]; found {
			return nil, fmt.Errorf("must not set %q, every test gets its own: %s", key, text)
		}
	}
	return extra, nil
}

// startServer runs the command with `bash -c` in its own process group,
// appending its output to logPath, and returns once the unix socket accepts
// connections. {config} in the template names a JSON file with root, address
// and the keys of extraConfig, written next to root.
func startServer(template, root, address string, extraConfig map[string]any, logPath string, startTimeout time.Duration) (*serverProcess, error) {
	if len(address) >= maxSocketPath {
		return nil, fmt.Errorf("socket path is %d bytes, the limit is %d: %s", len(address), maxSocketPath-1, address)
	}
	configPath := filepath.Join(filepath.Dir(root), "server-config.json")
	config, err := serverConfig(extraConfig, root, address)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(configPath, config, 0o644); err != nil {
		return nil, err
	}
	logFile, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logFile.Close()

	command := expandTemplate(template, root, address, configPath)
	// bash execs a lone command, so then the server itself is our child.
	cmd := exec.Command("bash", "-c", command)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	// Own process group: teardown signals reach any helpers the server
	// spawned. Pdeathsig: no orphaned server if the test binary dies.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %q: %w", command, err)
	}
	srv := &serverProcess{command: command, logPath: logPath, cmd: cmd, exited: make(chan struct{})}
	go func() {
		srv.waitErr = cmd.Wait()
		close(srv.exited)
	}()

	deadline := time.Now().Add(startTimeout)
	for {
		conn, err := net.DialTimeout("unix", address, 250*time.Millisecond)
		if err == nil {
			conn.Close()
			return srv, nil
		}
		if time.Now().After(deadline) {
			_ = srv.stop(2 * time.Second)
			return nil, fmt.Errorf("server not listening on %s after %v\ncommand: %s\n%s",
				address, startTimeout, command, srv.logTail())
		}
		select {
		case <-srv.exited:
			return nil, fmt.Errorf("server exited (%v) before listening on %s\ncommand: %s\n%s",
				srv.waitErr, address, command, srv.logTail())
		case <-time.After(25 * time.Millisecond):
		}
	}
}

func (s *serverProcess) hasExited() bool {
	select {
	case <-s.exited:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM to the process group and SIGKILL after grace. It reports
// an error when the server had already died by itself or ignored SIGTERM.
func (s *serverProcess) stop(grace time.Duration) error {
	if s.hasExited() {
		return fmt.Errorf("server died during the test (%v)\ncommand: %s\n%s", s.waitErr, s.command, s.logTail())
	}
	pgid := s.cmd.Process.Pid
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-s.exited:
		// Reap helpers that may have outlived the leader.
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		return nil
	case <-time.After(grace):
	}
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	<-s.exited
	return fmt.Errorf("server did not exit within %v of SIGTERM and was killed\ncommand: %s\n%s", grace, s.command, s.logTail())
}

// logTail returns the end of the server's output for error messages.
func (s *serverProcess) logTail() string {
	const tailBytes = 4096
	f, err := os.Open(s.logPath)
	if err != nil {
		return fmt.Sprintf("(no server log: %v)", err)
	}
	defer f.Close()
	if info, err := f.Stat(); err == nil && info.Size() > tailBytes {
		if _, err := f.Seek(-tailBytes, io.SeekEnd); err != nil {
			return fmt.Sprintf("(cannot read server log: %v)", err)
		}
	}
	data, err := io.ReadAll(f)
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Sprintf("(cannot read server log: %v)", err)
	}
	return fmt.Sprintf("--- server log %s (tail) ---\n%s", s.logPath, data)
}

// dialLikeContainerd connects the way containerd 1.6 connects to a
// proxy_plugins entry (services/server/server.go, proxyClients.getClient).
func dialLikeContainerd(address string) (*grpc.ClientConn, error) {
	backoffConfig := backoff.DefaultConfig
	backoffConfig.MaxDelay = 3 * time.Second
	options := []grpc.DialOption{
		grpc.WithInsecure(),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoffConfig}),
		grpc.WithContextDialer(dialer.ContextDialer),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(defaults.DefaultMaxRecvMsgSize)),
		grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(defaults.DefaultMaxSendMsgSize)),
	}
	conn, err := grpc.Dial(dialer.DialAddress(address), options...)
	if err != nil {
		return nil, fmt.Errorf("failed to dial %q: %w", address, err)
	}
	return conn, nil
}

// proxySnapshotter wraps a connection in containerd's own proxy client.
func proxySnapshotter(conn *grpc.ClientConn, name string) snapshots.Snapshotter {
	return proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), name)
}

// removeAllSnapshots removes every snapshot a test left behind, children
// before their parents, so that the server releases what they hold: obdsnap
// keeps block devices attached across restarts, so a server that is only
// stopped would leave its devices and their mounts behind.
func removeAllSnapshots(ctx context.Context, sn snapshots.Snapshotter) error {
	for {
		var names []string
		parents := map[string]bool{}
		err := sn.Walk(ctx, func(_ context.Context, info snapshots.Info) error {
			names = append(names, info.Name)
			if info.Parent != "" {
				parents[info.Parent] = true
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("listing the snapshots left: %w", err)
		}
		if len(names) == 0 {
			return nil
		}
		removed := 0
		var failures []string
		for _, name := range names {
			if parents[name] {
				continue
			}
			if err := sn.Remove(ctx, name); err != nil {
				failures = append(failures, fmt.Sprintf("%q: %v", name, err))
				continue
			}
			removed++
		}
		if removed == 0 {
			return fmt.Errorf("cannot remove the %d snapshots left: %s", len(names), strings.Join(failures, "; "))
		}
	}
}
