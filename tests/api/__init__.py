"""gRPC-level tests of obdsnap: a real server process, a real client, a real unix socket."""
