"""obdsnap takes over roots written by the Go snapshotter (containerd's MetaStore, in Go).

Every fixture's metadata.db is written by containerd's own snapshots/storage code
(gometa); what obdsnap answers is compared with what that code reads back.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from grpclib.client import Channel
from server_process import ServerProcess

from obdsnap.fsutil import disk_usage
from obdsnap.genproto.containerd.services.snapshots import v1 as api
from obdsnap.mounts import overlay_has_index_param

from api.helpers import commit, lower_ids, mount_options, own_id, prepare, stat, usage
from .gohelpers import (
    GoOps,
    dump_facts,
    dump_snapshots,
    go_dump,
    info_facts,
    nano_list,
    nano_stat,
    stored_rows,
    stored_sequence,
    write_go_root,
)

pytestmark = pytest.mark.slow

UNICODE = {"ünïcødé ✓": "värde 🚀 ≠ ascii", "containerd.io/gc.ref.content.l.0": "sha256:ab"}
BIG_KEY = "big"
BIG = {BIG_KEY: "x" * (4096 - len(BIG_KEY))}  # containerd's limit: key + value = 4 KiB
DEPTH = 128


def kinds_ops() -> GoOps:
    """Every kind, labels with unicode and 4 KiB values, gaps left by removed snapshots."""
    ops = GoOps()
    ops.layer("base", labels={**UNICODE, **BIG})
    ops.layer("mid", "base", labels={"containerd.io/gc.root": "2024"})
    ops.prepare("gone-1", "mid")
    ops.layer("side", "base")
    ops.remove("gone-1")
    ops.prepare("ctr", "mid", {"team": "a", **UNICODE})
    ops.view("ro", "mid", {"team": "b"})
    ops.view("ro-1", "base")
    ops.prepare("solo")
    ops.view("solo-view")
    ops.update("mid", {"tier": "mid", "containerd.io/gc.root": ""}, ["labels.tier", "labels.containerd.io/gc.root"])
    ops.prepare("gone-2", "side")
    ops.prepare("gone-3")
    ops.remove("gone-2")
    ops.remove("gone-3")  # the sequence ends above the highest ID
    return ops


def deep_ops() -> GoOps:
    ops = GoOps()
    parent = ""
    for i in range(DEPTH):
        ops.layer(f"layer-{i:03}", parent)
        parent = f"layer-{i:03}"
    ops.prepare("rootfs", parent)
    return ops


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def server(workdir: Path) -> Iterator[ServerProcess]:
    process = ServerProcess(workdir)
    yield process
    if process.running():
        assert process.stop() == 0, process.log()


@pytest.fixture
async def channel(server: ServerProcess) -> AsyncIterator[Channel]:
    channel = Channel(path=str(server.address))
    yield channel
    channel.close()


async def assert_serves_as_go_reads(
    channel: Channel, server: ServerProcess, dump: dict[str, Any]
) -> None:
    """List, Stat, Usage and the stored IDs are what containerd's MetaStore reads."""
    snapshots = dump_snapshots(dump)
    listed = {info.name: info_facts(info) for info in await nano_list(channel)}
    assert listed == {key: dump_facts(value) for key, value in snapshots.items()}
    client = api.SnapshotsStub(channel)
    for key, value in snapshots.items():
        assert info_facts(await nano_stat(channel, key)) == dump_facts(value)
        if value["kind"] == "committed":
            expected = (value["size"], value["inodes"])
        elif value["kind"] == "view":
            expected = (0, 0)
        else:
            measured = disk_usage(server.root / "snapshots" / value["id"] / "fs")
            expected = (measured.size, measured.inodes)
        assert await usage(client, key) == expected, key
    rows = stored_rows(server.root / "metadata.db")
    assert {key: row["id"] for key, row in rows.items()} == {
        key: int(value["id"]) for key, value in snapshots.items()
    }
    assert all(row["ready"] == 1 for row in rows.values())
    highest = max((int(value["id"]) for value in snapshots.values()), default=0)
    assert stored_sequence(server.root / "metadata.db") == max(highest, dump["sequence"])


def fs_of(server: ServerProcess, snapshot_id: int | str) -> str:
    return str(server.root / "snapshots" / str(snapshot_id) / "fs")


async def test_every_kind_carries_over(
    server: ServerProcess, channel: Channel, workdir: Path
) -> None:
    ids = write_go_root(server.root, kinds_ops())
    dump = go_dump(server.root / "metadata.db")
    bolt_copy = (server.root / "metadata.db").read_bytes()
    assert dump["sequence"] > max(ids.values()), "the fixture must end with a gap"
    assert sorted(ids.values()) != list(range(1, len(ids) + 1)), "the fixture must have gaps"
    (Path(fs_of(server, ids["ctr"])) / "file").write_bytes(b"x" * 10000)
    server.start()
    await assert_serves_as_go_reads(channel, server, dump)
    assert (server.root / "metadata.db.go-bbolt").read_bytes() == bolt_copy
    assert server.log().count("imported the Go snapshotter's metadata") == 1

    client = api.SnapshotsStub(channel)
    index = ["index=off"] if overlay_has_index_param() else []
    ctr = (await client.mounts(api.MountsRequest(key="ctr"))).mounts
    assert [(m.type, list(m.options)) for m in ctr] == [
        (
            "overlay",
            [
                *index,
                f"workdir={server.root / 'snapshots' / str(ids['ctr']) / 'work'}",
                f"upperdir={fs_of(server, ids['ctr'])}",
                f"lowerdir={fs_of(server, ids['mid'])}:{fs_of(server, ids['base'])}",
            ],
        )
    ]
    ro = (await client.mounts(api.MountsRequest(key="ro"))).mounts
    assert lower_ids(ro[0], server.root) == [ids["mid"], ids["base"]]
    ro1 = (await client.mounts(api.MountsRequest(key="ro-1"))).mounts
    assert [(m.type, m.source, list(m.options)) for m in ro1] == [
        ("bind", fs_of(server, ids["base"]), ["ro", "rbind"])
    ]
    solo = (await client.mounts(api.MountsRequest(key="solo"))).mounts
    assert [(m.type, m.source, list(m.options)) for m in solo] == [
        ("bind", fs_of(server, ids["solo"]), ["rw", "rbind"])
    ]

    # It goes on: new IDs above every old one and above the bucket sequence.
    mounts = await prepare(client, "new", "mid")
    new_id = own_id(mounts, server.root)
    assert new_id == dump["sequence"] + 1
    assert mount_options(mounts[0])["lowerdir"] == ro[0].options[-1].partition("=")[2]
    await commit(client, "new-layer", "new", {"a": "1"})
    assert (await stat(client, "new-layer")).parent == "mid"
    await client.remove(api.RemoveSnapshotRequest(key="ctr"))
    await client.remove(api.RemoveSnapshotRequest(key="ro"))
    assert new_id < own_id(await prepare(client, "newer", "new-layer"), server.root)

    # A second start serves the SQLite store: nothing is imported again.
    before = {info.name: info_facts(info) for info in await nano_list(channel)}
    assert server.stop() == 0
    server.start()
    again = Channel(path=str(server.address))
    try:
        assert {info.name: info_facts(info) for info in await nano_list(again)} == before
    finally:
        again.close()
    assert server.log().count("imported the Go snapshotter's metadata") == 1
    assert not (server.root / "metadata.db.go-bbolt.1").exists()
