"""obdsnap: a containerd proxy snapshotter for overlaybd block-device images."""

__version__ = "0.1.0"
