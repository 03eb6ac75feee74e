package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
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

// sunPathMax is the size of sockaddr_un.sun_path on Linux, NUL included.
const sunPathMax = 108

// stopGrace is how long a server may take to exit after SIGTERM; obdsnap
// gives in-flight calls up to 10 s.
const stopGrace = 15 * time.Second

// serverProc is a snapshots server we started from a command template, in a
// scratch directory of its own that holds its root, socket and log.
type serverProc struct {
	label   string
	command string // the expanded template
	dir     string // removed by stop
	root    string
	address string
	logPath string

	cmd     *exec.Cmd
	exited  chan struct{} // closed once the process has been reaped
	waitErr error
	stopped bool
}

// live tracks started servers so that the watchdog and fatal errors can
// take them down: a leaked server would skew whatever runs next.
var live = struct {
	sync.Mutex
	servers map[*serverProc]bool
}{servers: map[*serverProc]bool{}}

// expand fills the {root} and {address} placeholders of a command template.
func expand(template, root, address string) string {
	return strings.NewReplacer("{root}", root, "{address}", address).Replace(template)
}

// startServer runs template on a fresh root under parent (or $TMPDIR) and
// returns once its socket accepts connections.
func startServer(label, template, parent string, timeout time.Duration) (*serverProc, error) {
	dir, err := os.MkdirTemp(parent, "bench-"+strings.ToLower(label)+"-")
	if err != nil {
		return nil, err
	}
	s := &serverProc{
		label:   label,
		dir:     dir,
		root:    filepath.Join(dir, "root"),
		address: filepath.Join(dir, "snapshots.sock"),
		logPath: filepath.Join(dir, "server.log"),
		exited:  make(chan struct{}),
	}
	if len(s.address) >= sunPathMax {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("socket path %s is %d bytes, more than a unix socket allows; use a shorter --tmpdir",
			s.address, len(s.address))
	}
	if err := os.Mkdir(s.root, 0o700); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	logFile, err := os.Create(s.logPath)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	defer logFile.Close() // the child has its own copy

	s.command = expand(template, s.root, s.address)
	s.cmd = exec.Command("bash", "-c", s.command)
	s.cmd.Stdout, s.cmd.Stderr = logFile, logFile
	// A process group of its own lets stop reach wrapper scripts' children
	// too; Pdeathsig keeps a server from outliving a crashed loadgen.
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := s.cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("start %q: %w", s.command, err)
	}
	go func() { s.waitErr = s.cmd.Wait(); close(s.exited) }()
	live.Lock()
	live.servers[s] = true
	live.Unlock()

	deadline := time.Now().Add(timeout)
	for {
		if c, err := net.DialTimeout("unix", s.address, 250*time.Millisecond); err == nil {
			c.Close()
			return s, nil
		}
		select {
		case <-s.exited:
			err := fmt.Errorf("%s exited (%v) before listening on %s\ncommand: %s\n%s",
				label, s.waitErr, s.address, s.command, s.logTail())
			s.stop()
			return nil, err
		case <-time.After(25 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			err := fmt.Errorf("%s not listening on %s after %v\ncommand: %s\n%s",
				label, s.address, timeout, s.command, s.logTail())
			s.stop()
			return nil, err
		}
	}
}

// hasExited reports whether the process is gone (crashed, if we did not
// stop it).
func (s *serverProc) hasExited() bool {
	select {
	case <-s.exited:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM to the process group, SIGKILL after stopGrace, and
// removes the scratch directory. It reports a server that had died on its
// own, ignored SIGTERM or exited with a failure status.
func (s *serverProc) stop() error {
	if s.stopped {
		return nil
	}
	s.stopped = true
	defer func() {
		live.Lock()
		delete(live.servers, s)
		live.Unlock()
		os.RemoveAll(s.dir)
	}()
	if s.hasExited() {
		return fmt.Errorf("%s died (%v)\ncommand: %s\n%s", s.label, s.waitErr, s.command, s.logTail())
	}
	pgid := s.cmd.Process.Pid
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-s.exited:
		_ = syscall.Kill(-pgid, syscall.SIGKILL) // helpers that outlived the leader
		if s.waitErr != nil {
			return fmt.Errorf("%s exited with %v after SIGTERM\n%s", s.label, s.waitErr, s.logTail())
		}
		return nil
	case <-time.After(stopGrace):
	}
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	<-s.exited
	return fmt.Errorf("%s ignored SIGTERM for %v and was killed", s.label, stopGrace)
}

// killAll stops every started server at once; for the watchdog and fatal
// errors, where no grace is affordable.
func killAll() {
	live.Lock()
	defer live.Unlock()
	for s := range live.servers {
		_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
		os.RemoveAll(s.dir)
	}
}

// logTail returns the end of the server's output, for error messages.
func (s *serverProc) logTail() string {
	const tail = 4096
	f, err := os.Open(s.logPath)
	if err != nil {
		return "(no server log)"
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.Size() > tail {
		_, _ = f.Seek(-tail, io.SeekEnd)
	}
	b, err := io.ReadAll(f)
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Sprintf("(server log unreadable: %v)", err)
	}
	return "--- server log (tail) ---\n" + string(b)
}

// dialLikeContainerd opens a connection with the options containerd 1.6
// uses for a proxy_plugins entry (services/server/server.go,
// proxyClients.getClient), so servers see the client containerd would be:
// one HTTP/2 connection that every caller multiplexes onto.
func dialLikeContainerd(address string) (*grpc.ClientConn, error) {
	backoffConfig := backoff.DefaultConfig
	backoffConfig.MaxDelay = 3 * time.Second
	conn, err := grpc.Dial(dialer.DialAddress(address),
		grpc.WithInsecure(),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoffConfig}),
		grpc.WithContextDialer(dialer.ContextDialer),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(defaults.DefaultMaxRecvMsgSize)),
		grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(defaults.DefaultMaxSendMsgSize)),
	)
	if err != nil {
		return nil, fmt.Errorf("failed to dial %q: %w", address, err)
	}
	return conn, nil
}

// target is one snapshotter under test: a connection through containerd's
// proxy client, and the server behind it when we started it.
type target struct {
	label   string
	address string
	srv     *serverProc // nil for --address
	conn    *grpc.ClientConn
	sn      snapshots.Snapshotter
}

// openTarget starts template (if not empty) on a fresh root under parent,
// or else connects to address.
func openTarget(label, template, address, parent, name string, startTimeout time.Duration) (*target, error) {
	t := &target{label: label, address: address}
	if template != "" {
		srv, err := startServer(label, template, parent, startTimeout)
		if err != nil {
			return nil, err
		}
		t.srv, t.address = srv, srv.address
	}
	conn, err := dialLikeContainerd(t.address)
	if err != nil {
		t.close()
		return nil, err
	}
	t.conn = conn
	t.sn = proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), name)
	return t, nil
}

// healthy returns an error if the server we started has died.
func (t *target) healthy() error {
	if t.srv != nil && t.srv.hasExited() {
		return fmt.Errorf("%s died (%v)\n%s", t.label, t.srv.waitErr, t.srv.logTail())
	}
	return nil
}

// close hangs up and stops the server, if ours.
func (t *target) close() error {
	if t.conn != nil {
		t.conn.Close()
		t.conn = nil
	}
	if t.srv == nil {
		return nil
	}
	err := t.srv.stop()
	t.srv = nil
	return err
}
