"""A chain of 128 committed layers under one container rootfs, mounted for real."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support.mounts import mount_options, umount
from support.processes import run_async
from support.server_process import ServerProcess
from support.snapshots import (
    INDEX_OFF,
    commit,
    fs_dir,
    lower_ids,
    own_id,
    prepare,
)

from obdsnap.genproto.containerd.services.snapshots import v1 as api

DEPTH = 128


async def build_chain(client: api.SnapshotsStub, root: Path) -> list[int]:
    """layer-000 ... layer-127, each writing layer-NNN.txt and overwriting top.txt."""
    ids: list[int] = []
    parent = ""
    for i in range(DEPTH):
        name = f"layer-{i:03}"
        mounts = await prepare(client, f"extract-{i}", parent)
        snapshot_id = own_id(mounts, root)
        if parent:
            assert lower_ids(mounts[0], root) == ids[::-1]
        (fs_dir(root, snapshot_id) / f"{name}.txt").write_text(name)
        (fs_dir(root, snapshot_id) / "top.txt").write_text(name)
        await commit(client, name, f"extract-{i}")
        ids.append(snapshot_id)
        parent = name
    return ids


def relative_overlay_options(options: list[str], snapshots: Path) -> str:
    """The options with paths relative to ``snapshots``, as containerd shortens long ones."""

    def shorten(path: str) -> str:
        return str(Path(path).relative_to(snapshots))

    out = []
    for option in options:
        key, _, value = option.partition("=")
        if key in ("workdir", "upperdir"):
            out.append(f"{key}={shorten(value)}")
        elif key == "lowerdir":
            out.append("lowerdir=" + ":".join(shorten(p) for p in value.split(":")))
        else:
            out.append(option)
    return ",".join(out)


@pytest.mark.root
async def test_128_layers(client: api.SnapshotsStub, server: ServerProcess, tmp_path: Path) -> None:
    root = server.root
    ids = await build_chain(client, root)
    assert len(set(ids)) == DEPTH and ids == sorted(ids)

    mounts = await prepare(client, "rootfs", f"layer-{DEPTH - 1:03}")
    assert len(mounts) == 1 and mounts[0].type == "overlay"
    top = own_id(mounts, root)
    options = mount_options(mounts[0])
    assert options["upperdir"] == str(fs_dir(root, top))
    assert options["workdir"] == str(root / "snapshots" / str(top) / "work")
    lowers = options["lowerdir"].split(":")
    assert len(lowers) == DEPTH
    assert lowers == [str(fs_dir(root, i)) for i in reversed(ids)]
    assert ("index=off" in mounts[0].options) == INDEX_OFF
    # Too long for one page of mount options: mount from snapshots/ with relative paths.
    assert len(",".join(mounts[0].options)) > os.sysconf("SC_PAGE_SIZE")

    snapshots = root / "snapshots"
    short = relative_overlay_options(list(mounts[0].options), snapshots)
    assert len(short) < os.sysconf("SC_PAGE_SIZE")
    target = tmp_path / "rootfs"
    target.mkdir()
    await run_async("mount", "-t", "overlay", "overlay", "-o", short, target, cwd=snapshots)
    try:
        assert (target / "layer-000.txt").read_text() == "layer-000"
        assert (target / "layer-063.txt").read_text() == "layer-063"
        assert (target / f"layer-{DEPTH - 1:03}.txt").read_text() == f"layer-{DEPTH - 1:03}"
        assert (target / "top.txt").read_text() == f"layer-{DEPTH - 1:03}"
        assert len(list(target.iterdir())) == DEPTH + 1
        (target / "layer-000.txt").write_text("changed")
        assert (fs_dir(root, top) / "layer-000.txt").read_text() == "changed"
        assert (fs_dir(root, ids[0]) / "layer-000.txt").read_text() == "layer-000"
    finally:
        umount(target)

    # Mounts answers the same 128 lowers.
    reply = await client.mounts(api.MountsRequest(key="rootfs"))
    assert list(reply.mounts[0].options) == list(mounts[0].options)
