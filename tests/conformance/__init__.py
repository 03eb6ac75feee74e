"""containerd 1.6's snapshotter conformance suite (Go) run against obdsnap."""
