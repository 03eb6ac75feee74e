"""Fixtures shared by obdsnap's tests: a live server on a real unix socket and a gRPC client."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from support.server_process import ServerProcess
from support.snapshots import connect

from obdsnap.genproto.containerd.services.snapshots import v1 as api

# The simulator and the block-device fixtures, for every suite that runs obdsnap on devices.
pytest_plugins = ["support.simulator", "support.block_fixtures"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (mounts, loop devices)")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A running obdsnap; the test fails if it does not stop cleanly on SIGTERM."""
    process = ServerProcess(tmp_path).start()
    try:
        yield process
    finally:
        status = process.stop()
    assert status == 0, f"obdsnap exited with {status}:\n{process.log()}"


@pytest.fixture
async def client(server: ServerProcess) -> AsyncIterator[api.SnapshotsStub]:
    async with connect(server) as stub:
        yield stub
