"""Block devices of overlaybd snapshots: the TCMU backend, filesystems and mounts on them."""
