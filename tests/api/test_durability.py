"""Restarts: a clean SIGTERM and a SIGKILL right after an acknowledged change lose nothing."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from grpclib import GRPCError
from grpclib.const import Status
from grpclib.exceptions import StreamTerminatedError
from support.server_process import ServerProcess
from support.snapshots import (
    commit,
    commit_layer,
    connect,
    expect_status,
    fs_dir,
    is_dir,
    numeric_ids,
    own_id,
    prepare,
    start_server,
    stat,
    store_state,
    usage,
    view,
    wait_until,
)

from obdsnap.genproto.containerd.services.snapshots import v1 as api


@pytest.fixture
async def first(tmp_path: Path) -> AsyncIterator[ServerProcess]:
    server = ServerProcess(tmp_path)
    await start_server(server)
    try:
        yield server
    finally:
        server.kill()


async def restarted(old: ServerProcess, how: signal.Signals) -> ServerProcess:
    if how == signal.SIGKILL:
        old.kill()
        assert old.address.is_socket()  # a crash leaves the socket behind
    else:
        assert old.stop() == 0
        assert not old.address.exists()
    return await start_server(ServerProcess(old.workdir))


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
async def test_everything_survives_a_restart(first: ServerProcess, how: signal.Signals) -> None:
    root = first.root
    async with connect(first) as client:
        await commit_layer(client, root, "base", files={"f": "base" * 1000}, labels={"a": "1"})
        await commit_layer(client, root, "mid", "base", labels={"b": "2"})
        active_mounts = await prepare(client, "active", "mid", {"c": "3"})
        view_mounts = await view(client, "view", "mid")
        bare_mounts = await prepare(client, "bare")
        await client.update(
            api.UpdateSnapshotRequest(info=api.Info(name="mid", labels={"b": "updated"}))
        )
        state = await store_state(client)
        base_usage = await usage(client, "base")
        entries = numeric_ids(root)
    second = await restarted(first, how)
    try:
        async with connect(second) as client:
            assert await store_state(client) == state  # names, kinds, parents, labels, times
            assert (await stat(client, "mid")).labels == {"b": "updated"}
            for key, mounts in (
                ("active", active_mounts),
                ("view", view_mounts),
                ("bare", bare_mounts),
            ):
                reply = await client.mounts(api.MountsRequest(key=key))
                assert reply.mounts == mounts, key
            assert await usage(client, "base") == base_usage
            assert await usage(client, "view") == (0, 0)
            assert numeric_ids(root) == entries
            # The parent links came back too.
            await expect_status(
                client.remove(api.RemoveSnapshotRequest(key="mid")), Status.FAILED_PRECONDITION
            )
            # And the ID sequence: the next ID is above every earlier one.
            new = own_id(await prepare(client, "new"), root)
            assert new > max(entries)
    finally:
        assert second.stop() == 0


async def test_ids_are_not_reused_after_a_restart(first: ServerProcess) -> None:
    async with connect(first) as client:
        await prepare(client, "a")
        newest = own_id(await prepare(client, "b"), first.root)
        await client.remove(api.RemoveSnapshotRequest(key="b"))
    second = await restarted(first, signal.SIGTERM)
    try:
        async with connect(second) as client:
            assert own_id(await prepare(client, "c"), second.root) > newest
    finally:
        assert second.stop() == 0


async def test_prepare_acknowledged_survives_sigkill(first: ServerProcess) -> None:
    async with connect(first) as client:
        mounts = await prepare(client, "a", labels={"x": "y"})
    second = await restarted(first, signal.SIGKILL)
    try:
        async with connect(second) as client:
            info = await stat(client, "a")
            assert (info.kind, info.labels) == (api.Kind.ACTIVE, {"x": "y"})
            assert (await client.mounts(api.MountsRequest(key="a"))).mounts == mounts
            assert fs_dir(second.root, own_id(mounts, second.root)).is_dir()
    finally:
        assert second.stop() == 0


async def test_commit_acknowledged_survives_sigkill(first: ServerProcess) -> None:
    async with connect(first) as client:
        snapshot_id = own_id(await prepare(client, "a"), first.root)
        (fs_dir(first.root, snapshot_id) / "file").write_text("data")
        await commit(client, "layer", "a", {"l": "1"})
    second = await restarted(first, signal.SIGKILL)
    try:
        async with connect(second) as client:
            info = await stat(client, "layer")
            assert (info.kind, info.labels) == (api.Kind.COMMITTED, {"l": "1"})
            await expect_status(client.stat(api.StatSnapshotRequest(key="a")), Status.NOT_FOUND)
            assert (fs_dir(second.root, snapshot_id) / "file").read_text() == "data"
            mounts = await prepare(client, "child", "layer")
            assert f"lowerdir={fs_dir(second.root, snapshot_id)}" in mounts[0].options
    finally:
        assert second.stop() == 0


async def test_remove_and_update_acknowledged_survive_sigkill(first: ServerProcess) -> None:
    async with connect(first) as client:
        await prepare(client, "gone")
        await prepare(client, "kept")
        await client.remove(api.RemoveSnapshotRequest(key="gone"))
        await client.update(
            api.UpdateSnapshotRequest(info=api.Info(name="kept", labels={"new": "label"}))
        )
    second = await restarted(first, signal.SIGKILL)
    try:
        async with connect(second) as client:
            await expect_status(client.stat(api.StatSnapshotRequest(key="gone")), Status.NOT_FOUND)
            assert (await stat(client, "kept")).labels == {"new": "label"}
            state = await store_state(client)
            assert set(state) == {"kept"}
    finally:
        assert second.stop() == 0


async def test_many_acknowledged_prepares_survive_sigkill(first: ServerProcess) -> None:
    async with connect(first) as client:
        keys = [f"k{i}" for i in range(40)]
        await asyncio.gather(*(prepare(client, key) for key in keys))
    second = await restarted(first, signal.SIGKILL)
    try:
        async with connect(second) as client:
            assert set(await store_state(client)) == set(keys)
            assert len(numeric_ids(second.root)) == len(keys)
    finally:
        assert second.stop() == 0


async def test_sigterm_during_a_burst_loses_no_acknowledged_prepare(first: ServerProcess) -> None:
    keys = [f"burst-{i}" for i in range(100)]
    async with connect(first) as client:
        calls = asyncio.gather(
            *(client.prepare(api.PrepareSnapshotRequest(key=key), timeout=10) for key in keys),
            return_exceptions=True,
        )
        await asyncio.sleep(0.01)
        first.signal(signal.SIGTERM)
        results = await calls
    # One SIGTERM only: wait for the exit instead of letting stop() send another.
    assert await wait_until(lambda: not first.running(), within=15), first.log()
    assert first.stop() == 0
    assert not first.address.exists()
    acknowledged = set()
    for key, result in zip(keys, results, strict=True):
        if not isinstance(result, BaseException):
            acknowledged.add(key)
        elif isinstance(result, GRPCError):
            # Refused while shutting down; never a half-done create.
            assert result.status in (Status.UNAVAILABLE, Status.CANCELLED), result
        else:
            # The connection went away before an answer (client side).
            lost = (OSError, StreamTerminatedError, TimeoutError)
            assert isinstance(result, lost), repr(result)
    second = await start_server(ServerProcess(first.workdir))
    try:
        async with connect(second) as client:
            state = await store_state(client)
            assert acknowledged <= set(state)
            for key in acknowledged:
                mounts = (await client.mounts(api.MountsRequest(key=key))).mounts
                assert is_dir(mounts[0].source), key
    finally:
        assert second.stop() == 0
