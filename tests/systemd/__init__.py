"""obdsnap under systemd: the units, readiness notification, socket activation, restarts."""
