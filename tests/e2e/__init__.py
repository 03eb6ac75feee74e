"""containerd end-to-end tests of obdsnap, and their reusable helpers."""
