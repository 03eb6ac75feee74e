"""What the test suites share: obdsnap servers, gRPC calls, processes, mounts, the simulator."""
