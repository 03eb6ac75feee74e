// Command unpackpull pulls an image the way CRI and nerdctl do: containerd's
// client.Pull with WithPullUnpack, whose unpacker passes each layer
// descriptor's "containerd.io/snapshot/" annotations to the snapshotter as
// labels (and skips fetching a layer whose snapshot already exists). ctr 1.6's
// "image pull" fetches everything and unpacks through Image.Unpack instead,
// which passes no labels, so it cannot exercise a remote-snapshot flow.
//
//	unpackpull ADDRESS NAMESPACE SNAPSHOTTER REF
//
// Registries are spoken to over plain HTTP. Prints "<name> <manifest digest>".
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/containerd/containerd"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/remotes/docker"
)

func main() {
	if len(os.Args) != 5 {
		fmt.Fprintln(os.Stderr, "usage: unpackpull ADDRESS NAMESPACE SNAPSHOTTER REF")
		os.Exit(2)
	}
	address, namespace, snapshotter, ref := os.Args[1], os.Args[2], os.Args[3], os.Args[4]
	if err := pull(address, namespace, snapshotter, ref); err != nil {
		fmt.Fprintln(os.Stderr, "unpackpull:", err)
		os.Exit(1)
	}
}

func pull(address, namespace, snapshotter, ref string) error {
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
		containerd.WithPullSnapshotter(snapshotter),
		containerd.WithResolver(resolver))
	if err != nil {
		return err
	}
	fmt.Println(image.Name(), image.Target().Digest)
	return nil
}
