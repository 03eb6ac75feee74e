"""A Go root of 10,000 snapshots: taken over whole, and after a crash in the middle."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from grpclib.client import Channel
from support.server_process import ServerProcess
from support.snapshots import own_id, prepare

from obdsnap.genproto.containerd.services.snapshots import v1 as api

from .conftest import MANY, copy_go_root
from .gohelpers import dump_snapshots, make_snapshot_dirs, start_serving
from .test_go_import import assert_serves_as_go_reads

pytestmark = pytest.mark.slow


@pytest.fixture
def go_root(
    tmp_path: Path, many_snapshots_db: tuple[Path, dict[str, Any]]
) -> Iterator[tuple[ServerProcess, dict[str, Any]]]:
    db, dump = many_snapshots_db
    server = ServerProcess(tmp_path, start_timeout=120)
    copy_go_root(db, server.root)
    snapshots = dump_snapshots(dump)
    make_snapshot_dirs(server.root, {int(s["id"]): s["kind"] for s in snapshots.values()})
    yield server, dump
    if server.running():
        assert server.stop() == 0, server.log()


async def test_ten_thousand_snapshots(go_root: tuple[ServerProcess, dict[str, Any]]) -> None:
    server, dump = go_root
    assert len(dump["snapshots"]) == MANY
    start_serving(server)
    channel = Channel(path=str(server.address))
    try:
        await assert_serves_as_go_reads(channel, server, dump, every=97)
        client = api.SnapshotsStub(channel)
        layer = next(k for k, v in dump["snapshots"].items() if v["kind"] == "Committed")
        assert own_id(await prepare(client, "after-import", layer), server.root) == (
            dump["sequence"] + 1
        )
    finally:
        channel.close()
    assert "10000 snapshots (4000 active, 1000 view, 5000 committed)" in server.log()


def kill_mid_import(server: ServerProcess) -> None:
    """Start obdsnap on the root and SIGKILL it once it builds the SQLite store."""
    staging = server.root / "metadata.db.importing"
    argv = [sys.executable, "-m", "obdsnap", "serve", "--root", str(server.root)]
    process = subprocess.Popen(
        [*argv, "--address", str(server.workdir / "killed.sock")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not staging.exists():
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.001)
        process.kill()
    finally:
        process.wait()


async def test_killed_mid_import_imports_again(
    go_root: tuple[ServerProcess, dict[str, Any]],
) -> None:
    """SIGKILL while the SQLite store is being built: the bolt file is still the store."""
    server, dump = go_root
    db = server.root / "metadata.db"
    staging = server.root / "metadata.db.importing"
    bolt = db.read_bytes()
    await asyncio.to_thread(kill_mid_import, server)
    assert db.read_bytes() == bolt, "a crash during the import changed the bolt file"

    start_serving(server)
    channel = Channel(path=str(server.address))
    try:
        await assert_serves_as_go_reads(channel, server, dump, every=997)
    finally:
        channel.close()
    assert not staging.exists()
    assert (server.root / "metadata.db.go-bbolt").read_bytes() == bolt
