"""Offline checks of the deploy/ artifacts: the kustomize manifests and the monitoring files."""
