"""obdsnap takes over roots written by the Go snapshotter (containerd's MetaStore, in Go).

Every fixture's metadata.db is written by containerd's own snapshots/storage code
(gometa); what obdsnap answers is compared with what that code reads back.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from grpclib.client import Channel
from support.mounts import mount_options
from support.processes import run
from support.server_process import ServerProcess, refusal
from support.snapshots import commit, lower_ids, own_id, prepare, stat, usage

from obdsnap.fsutil import disk_usage
from obdsnap.genproto.containerd.services.snapshots import v1 as api
from obdsnap.layout import Layout
from obdsnap.mounts import overlay_has_index_param
from obdsnap.overlaybd.storage_type import detect_storage_type

from .gohelpers import (
    GoOps,
    dump_facts,
    dump_snapshots,
    go_dump,
    info_facts,
    nano_list,
    nano_stat,
    start_serving,
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
    ops.update(
        "mid",
        {"tier": "mid", "containerd.io/gc.root": ""},
        ["labels.tier", "labels.containerd.io/gc.root"],
    )
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


def go_usage(root: Path, snapshot: dict[str, Any]) -> tuple[int, int]:
    """What Go v1.4.4's Usage answers (DESIGN-v1 §10): views and committed normal layers
    their stored value; the rest a walk of fs/, plus block/ (mountpoints left out) for
    block layers."""
    if snapshot["kind"] == "view":
        return (0, 0)
    layout = Layout(root)
    snapshot_id = int(snapshot["id"])
    block = detect_storage_type(snapshot["labels"], layout, snapshot_id).is_block
    if snapshot["kind"] == "committed" and not block:
        return (snapshot["size"], snapshot["inodes"])
    walked = [disk_usage(layout.fs_dir(snapshot_id))]
    if block:
        walked.append(disk_usage(layout.block(snapshot_id).path, skip=frozenset({"mountpoint"})))
    return (sum(part.size for part in walked), sum(part.inodes for part in walked))


async def assert_serves_as_go_reads(
    channel: Channel, server: ServerProcess, dump: dict[str, Any], *, every: int = 1
) -> None:
    """List, Stat, Usage and the stored IDs are what containerd's MetaStore reads.

    List covers every snapshot; Stat and Usage every ``every``-th one.
    """
    snapshots = dump_snapshots(dump)
    listed = {info.name: info_facts(info) for info in await nano_list(channel)}
    assert listed == {key: dump_facts(value) for key, value in snapshots.items()}
    client = api.SnapshotsStub(channel)
    for key, value in list(snapshots.items())[::every]:
        assert info_facts(await nano_stat(channel, key)) == dump_facts(value)
        assert await usage(client, key) == go_usage(server.root, value), key
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
    start_serving(server)
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
    start_serving(server)
    again = Channel(path=str(server.address))
    try:
        assert {info.name: info_facts(info) for info in await nano_list(again)} == before
    finally:
        again.close()
    assert server.log().count("imported the Go snapshotter's metadata") == 1
    assert not (server.root / "metadata.db.go-bbolt.1").exists()


async def test_chain_128_deep(server: ServerProcess, channel: Channel) -> None:
    ids = write_go_root(server.root, deep_ops())
    dump = go_dump(server.root / "metadata.db")
    start_serving(server)
    await assert_serves_as_go_reads(channel, server, dump)
    client = api.SnapshotsStub(channel)
    mounts = (await client.mounts(api.MountsRequest(key="rootfs"))).mounts
    layers = [ids[f"layer-{i:03}"] for i in range(DEPTH)]
    assert lower_ids(mounts[0], server.root) == layers[::-1]
    assert own_id(mounts, server.root) == ids["rootfs"]


# ---------------------------------------------------------------------- overlaybd roots

REMOTE = {
    "containerd.io/snapshot.ref": "sha256:remote",
    "containerd.io/snapshot/image-ref": "registry.example/app:1",
    "containerd.io/snapshot/overlaybd/blob-digest": "sha256:blob",
    "containerd.io/snapshot/overlaybd/blob-size": "4096",
    "containerd.io/snapshot/remote": "remote snapshot",
}
WRITABLE = "containerd.io/snapshot/overlaybd.writable"


def overlaybd_ops() -> GoOps:
    """Remote, local and acceleration layers; dir, dev and overlayfs rootfs snapshots."""
    ops = GoOps()
    ops.prepare("extract-remote", "", REMOTE)
    ops.commit("remote", "extract-remote", REMOTE)
    ops.prepare(
        "extract-accel",
        "remote",
        {
            "containerd.io/snapshot.ref": "accel",
            "containerd.io/snapshot/overlaybd/acceleration-layer": "yes",
        },
    )
    ops.prepare("wdir", "remote", {WRITABLE: "dir"})
    ops.prepare("wdev", "remote", {WRITABLE: "dev"})
    ops.prepare("wlocal", "remote", {WRITABLE: "dir"})
    ops.commit(
        "local",
        "wlocal",
        {"containerd.io/snapshot/overlaybd.localcommitpath": "fs/overlaybd.commit"},
    )
    ops.prepare("on-local", "local")
    ops.prepare("by-config", "remote")
    ops.layer("plain")
    ops.prepare("dir-on-plain", "plain", {WRITABLE: "dir"})
    ops.prepare("fresh-dir", "", {WRITABLE: "dir"})
    return ops


def write_block_files(root: Path, ids: dict[str, int]) -> None:
    """What the Go snapshotter leaves for these snapshots (DESIGN §2, §3, §7)."""
    from .gohelpers import LSMT_HEADER, ZFILE_HEADER

    def block(key: str) -> Path:
        return root / "snapshots" / str(ids[key]) / "block"

    for key in ("remote", "wdir", "wdev", "local", "extract-accel", "by-config", "fresh-dir"):
        config = {
            "repoBlobUrl": "https://registry.example/v2/app/blobs",
            "lowers": [],
            "upper": {},
            "resultFile": str(block(key) / "init-debug.log"),
        }
        (block(key) / "config.v1.json").write_text(json.dumps(config))
    for key in ("wdir", "wdev", "by-config", "fresh-dir"):
        (block(key) / "writable_data").write_bytes(LSMT_HEADER)
        (block(key) / "writable_index").write_bytes(LSMT_HEADER)
    (root / "snapshots" / str(ids["local"]) / "fs" / "overlaybd.commit").write_bytes(ZFILE_HEADER)


@pytest.mark.parametrize("rw_mode", ["overlayfs", "dir"])
async def test_overlaybd_layers_and_writable_modes(workdir: Path, rw_mode: str) -> None:
    server = ServerProcess.with_config(workdir, {"rwMode": rw_mode})
    ids = write_go_root(server.root, overlaybd_ops())
    write_block_files(server.root, ids)
    dump = go_dump(server.root / "metadata.db")
    with server:
        channel = Channel(path=str(server.address))
        try:
            await assert_serves_as_go_reads(channel, server, dump)
            client = api.SnapshotsStub(channel)
            accel = (await client.mounts(api.MountsRequest(key="extract-accel"))).mounts
            assert [(m.type, m.source, list(m.options)) for m in accel] == [
                ("bind", fs_of(server, ids["extract-accel"]), ["rw", "bind"])
            ]
            on_plain = (await client.mounts(api.MountsRequest(key="dir-on-plain"))).mounts
            assert lower_ids(on_plain[0], server.root) == [ids["plain"]]
        finally:
            channel.close()
    modes = {key: row["rw_mode"] for key, row in stored_rows(server.root / "metadata.db").items()}
    assert modes == {
        "remote": "",
        "local": "",
        "plain": "",
        "extract-accel": "overlayfs",
        "wdir": "dir",
        "wdev": "dev",
        "on-local": "overlayfs",  # no writable layer of its own whatever the config says
        "by-config": rw_mode,
        "dir-on-plain": "overlayfs",
        "fresh-dir": "dir",
    }


# ---------------------------------------------------------------------- refusals


def small_go_root(root: Path) -> dict[str, int]:
    ops = GoOps()
    ops.layer("base", labels=UNICODE)
    ops.prepare("ctr", "base")
    return write_go_root(root, ops)


def serve_once(root: Path, workdir: Path) -> subprocess.CompletedProcess[str]:
    """obdsnap serve on ``root``, expected to refuse to start."""
    serve: list[str | Path] = [sys.executable, "-m", "obdsnap", "serve", "--root", root]
    return run(*serve, "--address", workdir / "refused.sock", check=False, timeout=20)


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with a regular file's content."""
    return {
        str(path.relative_to(root)): path.read_bytes() if path.is_file() else None
        for path in sorted(root.rglob("*"))
    }


def damage_truncated(data: bytes) -> bytes:
    return data[: len(data) // 2 + 100]


def damage_checksums(data: bytes) -> bytes:
    """One byte of the checksum in both meta pages (page header 16 + meta fields 56)."""
    out = bytearray(data)
    page = int.from_bytes(data[24:28], "little")
    for meta in (0, page):
        out[meta + 16 + 56] ^= 0xFF
    return bytes(out)


def damage_magic(data: bytes) -> bytes:
    out = bytearray(data)
    page = int.from_bytes(data[24:28], "little")
    for meta in (0, page):
        out[meta + 16] ^= 0x01
    return bytes(out)


def damage_random(data: bytes) -> bytes:
    return os.urandom(len(data))


def damage_sqlite(_: bytes) -> bytes:
    """An SQLite header and pages of garbage: the file obdsnap would find after a disk fault."""
    return b"SQLite format 3\0" + b"\x10\x00\x01\x01" + os.urandom(40000)


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (damage_truncated, "damaged bbolt file"),
        (damage_checksums, "damaged bbolt file"),
        (damage_magic, "neither an SQLite database nor a bbolt file"),
        (damage_random, "neither an SQLite database nor a bbolt file"),
        (damage_sqlite, ""),
    ],
)
def test_damaged_metadata_is_refused_unchanged(workdir: Path, damage: Any, problem: str) -> None:
    root = workdir / "root"
    small_go_root(root)
    db = root / "metadata.db"
    db.write_bytes(damage(db.read_bytes()))
    before = tree(root)
    done = serve_once(root, workdir)
    assert done.returncode == 1, done.stderr
    assert refusal(done.stderr).startswith(f"obdsnap: {db}: {problem}"), done.stderr
    after = tree(root)
    assert after.pop("obdsnap.lock") is not None  # the root's lock, taken before anything else
    assert after == before
    assert not (workdir / "refused.sock").exists()


def test_refused_while_the_go_snapshotter_holds_the_file(workdir: Path) -> None:
    root = workdir / "root"
    small_go_root(root)
    before = tree(root)
    with (root / "metadata.db").open("rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what bbolt does while it is open
        done = serve_once(root, workdir)
    assert done.returncode == 1
    assert refusal(done.stderr) == (
        f"obdsnap: {root / 'metadata.db'}: the bbolt file is locked by another process "
        "(is the Go snapshotter still running? stop it first)"
    )
    after = tree(root)
    after.pop("obdsnap.lock")
    assert after == before


async def test_an_import_cut_short_is_done_again(server: ServerProcess, channel: Channel) -> None:
    """A crash after the store was built and the bolt file linked, before the rename."""
    small_go_root(server.root)
    dump = go_dump(server.root / "metadata.db")
    bolt = (server.root / "metadata.db").read_bytes()
    (server.root / "metadata.db.importing").write_bytes(b"half an SQLite file")
    (server.root / "metadata.db.importing-journal").write_bytes(b"its journal")
    os.link(server.root / "metadata.db", server.root / "metadata.db.go-bbolt")
    start_serving(server)
    await assert_serves_as_go_reads(channel, server, dump)
    names = {path.name for path in server.root.iterdir()}
    expected = {"metadata.db", "metadata.db.go-bbolt", "obdsnap.lock", "snapshots", "status.json"}
    assert names == expected | {name for name in names if name.startswith("metadata.db-")}
    assert (server.root / "metadata.db.go-bbolt").read_bytes() == bolt
