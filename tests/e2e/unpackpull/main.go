// Command unpackpull pulls an image the way CRI and nerdctl do: containerd's
// client.Pull with WithPullUnpack, whose unpacker passes each layer
// descriptor's "containerd.io/snapshot/" annotations to the snapshotter as
// labels (and skips fetching a layer whose snapshot already exists). ctr 1.6's
// "image pull" fetches everything and unpacks through Image.Unpack instead,
// which passes no labels, so it cannot exercise a remote-snapshot flow.
//
//	unpackpull [-label KEY=VALUE]... ADDRESS NAMESPACE SNAPSHOTTER REF
//
// Each -label is added to the labels of every layer's Prepare and Commit, as
// "ctr rpull --download-blobs" adds overlaybd's download-remote-blob. Registries are spoken to over plain HTTP. Prints "<name> <manifest digest>".
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/containerd/containerd"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/remotes/docker"
	"github.com/containerd/containerd/snapshots"
)

// labelFlags collects repeated -label KEY=VALUE options.
type labelFlags map[string]string

func (l labelFlags) String() string { return fmt.Sprint(map[string]string(l)) }

func (l labelFlags) Set(value string) error {
	key, val, found := strings.Cut(value, "=")
	if !found || key == "" {
		return fmt.Errorf("want KEY=VALUE, got %q", value)
	}
	l[key] = val
	return nil
}

func main() {
	labels := labelFlags{}
	flag.Var(labels, "label", "KEY=VALUE added to every layer's snapshot labels (repeatable)")
	flag.Parse()
	if flag.NArg() != 4 {
		fmt.Fprintln(os.Stderr, "usage: unpackpull [-label KEY=VALUE]... ADDRESS NAMESPACE SNAPSHOTTER REF")
		os.Exit(2)
	}
	address, namespace, snapshotter, ref := flag.Arg(0), flag.Arg(1), flag.Arg(2), flag.Arg(3)
	if err := pull(address, namespace, snapshotter, ref, labels); err != nil {
		fmt.Fprintln(os.Stderr, "unpackpull:", err)
		os.Exit(1)
	}
}

func pull(address, namespace, snapshotter, ref string, labels map[string]string) error {
	client, err := containerd.New(address)
	if err != nil {
		return err
	}
	defer client.Close()
	ctx := namespaces.WithNamespace(context.Background(), namespace)
	resolver := docker.NewResolver(docker.ResolverOptions{
		Hosts: docker.ConfigureDefaultRegistries(docker.WithPlainHTTP(docker.MatchAllHosts)),
	})
	image, err := client.Pull(ctx, ref,
		containerd.WithPullUnpack,
		containerd.WithPullSnapshotter(snapshotter, snapshots.WithLabels(labels)),
		containerd.WithResolver(resolver))
	if err != nil {
		return err
	}
	fmt.Println(image.Name(), image.Target().Digest)
	return nil
}
