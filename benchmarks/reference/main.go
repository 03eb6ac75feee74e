// Command reference is the baseline obdsnap is measured against: containerd's
// own overlayfs snapshotter (snapshots/overlay) served as a proxy snapshotter
// on a unix socket.
//
//	reference --root DIR --address SOCK [--sync-remove]
//
// It is served exactly the way the Go overlaybd snapshotter serves its
// snapshotter (grpc.NewServer + snapshotservice.FromSnapshotter), so the
// comparison isolates the snapshotter implementation rather than the
// transport: both sides speak the same gRPC service through the same kind of
// server stack.
package main

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/contrib/snapshotservice"
	"github.com/containerd/containerd/snapshots/overlay"
	"google.golang.org/grpc"
)

// stopGrace bounds how long in-flight calls may run after SIGTERM before
// the server closes their connections anyway.
const stopGrace = 10 * time.Second

func main() {
	root := flag.String("root", "", "snapshotter root directory (created if missing)")
	address := flag.String("address", "", "unix socket to listen on")
	syncRemove := flag.Bool("sync-remove", false,
		"delete snapshot directories inside Remove instead of at Cleanup")
	flag.Parse()
	if *root == "" || *address == "" || flag.NArg() != 0 {
		fmt.Fprintln(os.Stderr, "usage: reference --root DIR --address SOCK [--sync-remove]")
		os.Exit(2)
	}
	if err := serve(*root, *address, *syncRemove); err != nil {
		fmt.Fprintln(os.Stderr, "reference:", err)
		os.Exit(1)
	}
}

func serve(root, address string, syncRemove bool) error {
	// containerd's overlayfs plugin always passes AsynchronousRemove: Remove
	// only drops the metadata and the directories go at the next Cleanup
	// (containerd's GC calls it). Mirroring that keeps the baseline honest;
	// --sync-remove is there to measure the cost of deleting in-line.
	var opts []overlay.Opt
	if !syncRemove {
		opts = append(opts, overlay.AsynchronousRemove)
	}
	if err := os.MkdirAll(root, 0o700); err != nil {
		return err
	}
	sn, err := overlay.NewSnapshotter(root, opts...)
	if err != nil {
		return fmt.Errorf("overlay snapshotter: %w", err)
	}
	defer sn.Close()

	if err := os.MkdirAll(filepath.Dir(address), 0o700); err != nil {
		return err
	}
	// A socket left by a killed predecessor would make Listen fail.
	if err := os.Remove(address); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	listener, err := net.Listen("unix", address)
	if err != nil {
		return err
	}

	srv := grpc.NewServer()
	snapshotsapi.RegisterSnapshotsServer(srv, snapshotservice.FromSnapshotter(sn))

	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		sig := <-signals
		fmt.Fprintf(os.Stderr, "reference: %v: stopping\n", sig)
		// GracefulStop lets in-flight calls finish, but it also waits for
		// clients to hang up, which a client that keeps its connection open
		// never does; Stop after the grace period cuts them off.
		timer := time.AfterFunc(stopGrace, srv.Stop)
		srv.GracefulStop()
		timer.Stop()
	}()

	fmt.Fprintf(os.Stderr, "reference: containerd overlayfs snapshotter, root %s, listening on %s (sync remove: %v)\n",
		root, address, syncRemove)
	// Serve returns nil once (Graceful)Stop was called; closing the listener
	// also unlinks the socket file.
	return srv.Serve(listener)
}
