"""Fixtures of the gRPC-level tests: a shared server with a known set of snapshots."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from support.server_process import ServerProcess
from support.snapshots import (
    Snap,
    commit_layer,
    connect,
    dir_entries,
    prepare,
    store_state,
    view,
)

from obdsnap.genproto.containerd.services.snapshots import v1 as api

GC_ROOT = "containerd.io/gc.root"


@dataclass
class Populated:
    """A server holding::

    base (committed) <- layer2 (committed) <- active (active), view (view)
    solo (active, no parent), solo-view (view, no parent)
    """

    server: ServerProcess
    client: api.SnapshotsStub
    initial: dict[str, Snap]
    dirs: set[str]

    @property
    def root(self) -> Path:
        return self.server.root


async def populate(client: api.SnapshotsStub, root: Path) -> None:
    base_labels = {GC_ROOT: "2024", "foo": "bar"}
    await commit_layer(client, root, "base", files={"base.txt": "base"}, labels=base_labels)
    layer2_labels = {"foo": "baz", "tier": "mid"}
    await commit_layer(client, root, "layer2", "base", files={"l2": "l2"}, labels=layer2_labels)
    await prepare(client, "active", "layer2", {"team": "a"})
    await view(client, "view", "layer2", {"team": "b"})
    await prepare(client, "solo")
    await view(client, "solo-view")


@pytest_asyncio.fixture
async def client(server: ServerProcess) -> AsyncIterator[api.SnapshotsStub]:
    async with connect(server) as stub:
        yield stub


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def populated(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Populated]:
    """One server per test module; the tests using it must not change its snapshots."""
    server = ServerProcess(tmp_path_factory.mktemp("populated")).start()
    try:
        async with connect(server) as client:
            await populate(client, server.root)
            initial = await store_state(client)
            yield Populated(server, client, initial, dir_entries(server.root))
    finally:
        status = server.stop()
    assert status == 0, f"obdsnap exited with {status}:\n{server.log()}"
