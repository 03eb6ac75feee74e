"""Each RPC on its own: Prepare, View, Mounts, Commit, Remove, Stat, Usage, Cleanup."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from grpclib.const import Status
from support.processes import run
from support.server_process import ServerProcess
from support.snapshots import (
    assert_recent_utc,
    commit,
    commit_layer,
    dir_entries,
    expect_status,
    fs_dir,
    list_names,
    own_id,
    prepare,
    stat,
    usage,
    utc_now,
    view,
    wait_until,
)

from obdsnap.genproto.containerd.services.snapshots import v1 as api
from obdsnap.mountinfo import is_mounted


def walk_usage(top: Path) -> tuple[int, int]:
    """st_blocks x 512 and inodes of a tree, top included, hard links once."""
    seen: dict[tuple[int, int], int] = {}
    for directory, dirs, files in os.walk(top):
        for name in [directory, *(os.path.join(directory, n) for n in dirs + files)]:
            st = os.lstat(name)
            seen[(st.st_dev, st.st_ino)] = st.st_blocks * 512
    return sum(seen.values()), len(seen)


# ---------------------------------------------------------------------- create, stat


async def test_prepare_creates_an_active_snapshot(client: api.SnapshotsStub) -> None:
    before = utc_now()
    mounts = await prepare(client, "a", labels={"x": "1", "containerd.io/gc.root": "now"})
    after = utc_now()
    assert len(mounts) == 1
    info = await stat(client, "a")
    assert info.name == "a"
    assert info.parent == ""
    assert info.kind == api.Kind.ACTIVE
    assert info.labels == {"x": "1", "containerd.io/gc.root": "now"}
    assert_recent_utc(info.created_at, before, after)
    assert_recent_utc(info.updated_at, before, after)
    assert info.created_at <= info.updated_at


async def test_view_creates_a_view(client: api.SnapshotsStub, server: ServerProcess) -> None:
    await commit_layer(client, server.root, "base")
    before = utc_now()
    await view(client, "v", "base", {"purpose": "inspect"})
    info = await stat(client, "v")
    assert (info.name, info.parent, info.kind) == ("v", "base", api.Kind.VIEW)
    assert info.labels == {"purpose": "inspect"}
    assert_recent_utc(info.created_at, before, utc_now())


async def test_prepare_on_a_committed_parent(
    client: api.SnapshotsStub, server: ServerProcess
) -> None:
    await commit_layer(client, server.root, "base")
    await prepare(client, "child", "base")
    info = await stat(client, "child")
    assert (info.parent, info.kind) == ("base", api.Kind.ACTIVE)


async def test_view_without_parent(client: api.SnapshotsStub) -> None:
    await view(client, "empty-view")
    info = await stat(client, "empty-view")
    assert (info.parent, info.kind) == ("", api.Kind.VIEW)


async def test_key_may_be_long_and_odd(client: api.SnapshotsStub) -> None:
    key = "k8s.io/12/extract-123456789-" + "ü/ .:=,~" * 40
    await prepare(client, key)
    assert (await stat(client, key)).name == key
    assert await list_names(client) == {key}


async def test_snapshotter_field_is_ignored(client: api.SnapshotsStub) -> None:
    await client.prepare(api.PrepareSnapshotRequest(snapshotter="whatever", key="a"))
    reply = await client.stat(api.StatSnapshotRequest(snapshotter="overlaybd", key="a"))
    assert reply.info.name == "a"


# ---------------------------------------------------------------------- mounts


async def test_mounts_answer_what_prepare_and_view_answered(
    client: api.SnapshotsStub, server: ServerProcess
) -> None:
    await commit_layer(client, server.root, "base")
    await commit_layer(client, server.root, "top", "base")
    answered = {
        "a": await prepare(client, "a"),
        "b": await prepare(client, "b", "base"),
        "c": await prepare(client, "c", "top"),
        "v0": await view(client, "v0"),
        "v1": await view(client, "v1", "base"),
        "v2": await view(client, "v2", "top"),
    }
    for key, mounts in answered.items():
        reply = await client.mounts(api.MountsRequest(key=key))
        assert reply.mounts == mounts, key


# ---------------------------------------------------------------------- commit


async def test_commit_replaces_the_active_snapshot(
    client: api.SnapshotsStub, server: ServerProcess
) -> None:
    await commit_layer(client, server.root, "base")
    await prepare(client, "work", "base", {"old": "label"})
    active = await stat(client, "work")
    before = utc_now()
    await commit(client, "layer", "work", {"new": "label"})
    after = utc_now()
    await expect_status(client.stat(api.StatSnapshotRequest(key="work")), Status.NOT_FOUND)
    info = await stat(client, "layer")
    assert (info.name, info.parent, info.kind) == ("layer", "base", api.Kind.COMMITTED)
    assert info.labels == {"new": "label"}
    assert_recent_utc(info.created_at, before, after)
    assert info.created_at >= before > active.created_at
    assert await list_names(client) == {"base", "layer"}


async def test_commit_keeps_the_directory_and_its_content(
    client: api.SnapshotsStub, server: ServerProcess
) -> None:
    snapshot_id = own_id(await prepare(client, "work"), server.root)
    (fs_dir(server.root, snapshot_id) / "hello").write_text("world")
    await commit(client, "layer", "work")
    assert (fs_dir(server.root, snapshot_id) / "hello").read_text() == "world"
    # A child sees the committed layer as its lower, under the same ID.
    mounts = await prepare(client, "child", "layer")
    assert f"lowerdir={fs_dir(server.root, snapshot_id)}" in mounts[0].options


async def test_commit_then_prepare_the_same_key_again(client: api.SnapshotsStub) -> None:
    await prepare(client, "extract")
    await commit(client, "layer-1", "extract")
    await prepare(client, "extract", "layer-1")
    await commit(client, "layer-2", "extract")
    assert (await stat(client, "layer-2")).parent == "layer-1"
    assert await list_names(client) == {"layer-1", "layer-2"}


# ---------------------------------------------------------------------- remove


@pytest.mark.parametrize("kind", ["active", "view", "committed"])
async def test_remove(client: api.SnapshotsStub, server: ServerProcess, kind: str) -> None:
    await commit_layer(client, server.root, "base")
    before = dir_entries(server.root)
    if kind == "active":
        await prepare(client, "target", "base")
    elif kind == "view":
        await view(client, "target", "base")
    else:
        await commit_layer(client, server.root, "target", "base")
    (created,) = dir_entries(server.root) - before
    await client.remove(api.RemoveSnapshotRequest(key="target"))
    await expect_status(client.stat(api.StatSnapshotRequest(key="target")), Status.NOT_FOUND)
    assert await list_names(client) == {"base"}
    gone = server.root / "snapshots" / created
    assert await wait_until(lambda: not gone.exists()), f"{gone} was not removed"
    assert fs_dir(server.root, int(sorted(before)[0])).is_dir()
    # The key is free again.
    await prepare(client, "target", "base")


async def test_remove_parent_only_after_its_children(
    client: api.SnapshotsStub, server: ServerProcess
) -> None:
    await commit_layer(client, server.root, "base")
    await commit_layer(client, server.root, "mid", "base")
    await prepare(client, "c1", "mid")
    await view(client, "c2", "mid")
    for key in ("base", "mid"):
        await expect_status(
            client.remove(api.RemoveSnapshotRequest(key=key)), Status.FAILED_PRECONDITION
        )
    await client.remove(api.RemoveSnapshotRequest(key="c1"))
    await expect_status(
        client.remove(api.RemoveSnapshotRequest(key="mid")), Status.FAILED_PRECONDITION
    )
    await client.remove(api.RemoveSnapshotRequest(key="c2"))
    await expect_status(
        client.remove(api.RemoveSnapshotRequest(key="base")), Status.FAILED_PRECONDITION
    )
    await client.remove(api.RemoveSnapshotRequest(key="mid"))
    await client.remove(api.RemoveSnapshotRequest(key="base"))
    assert await list_names(client) == set()


# ---------------------------------------------------------------------- usage


async def test_usage_of_an_active_snapshot_walks_its_fs(
    client: api.SnapshotsStub, server: ServerProcess
) -> None:
    fs = fs_dir(server.root, own_id(await prepare(client, "a"), server.root))
    size, inodes = await usage(client, "a")
    assert inodes == 1  # fs/ itself
    assert size == os.lstat(fs).st_blocks * 512

    (fs / "data").write_bytes(os.urandom(100_000))
    (fs / "sub").mkdir()
    (fs / "sub" / "small").write_text("x")
    (fs / "empty").touch()
    grown_size, grown_inodes = await usage(client, "a")
    assert grown_inodes == 5
    assert grown_size >= size + 100_000
    assert (grown_size, grown_inodes) == walk_usage(fs)

    # A hard link is one inode and its blocks count once; a symlink is an inode of its own.
    os.link(fs / "data", fs / "sub" / "data-link")
    (fs / "symlink").symlink_to("data")
    assert await usage(client, "a") == (grown_size + os.lstat(fs / "symlink").st_blocks * 512, 6)
    assert await usage(client, "a") == walk_usage(fs)


async def test_usage_of_a_committed_snapshot_is_recorded_at_commit(
    client: api.SnapshotsStub, server: ServerProcess
) -> None:
    fs = fs_dir(server.root, own_id(await prepare(client, "a"), server.root))
    (fs / "data").write_bytes(os.urandom(50_000))
    (fs / "dir").mkdir()
    measured = await usage(client, "a")
    assert measured[1] == 3
    await commit(client, "layer", "a")
    assert await usage(client, "layer") == measured
    # The stored value, not a new walk.
    (fs / "later").write_bytes(os.urandom(50_000))
    assert await usage(client, "layer") == measured


async def test_usage_of_a_view_is_zero(client: api.SnapshotsStub, server: ServerProcess) -> None:
    await commit_layer(client, server.root, "base", files={"f": "x" * 10_000})
    await view(client, "v", "base")
    await view(client, "v0")
    assert await usage(client, "v") == (0, 0)
    assert await usage(client, "v0") == (0, 0)


# ---------------------------------------------------------------------- cleanup


async def test_cleanup_removes_directories_nobody_owns(
    client: api.SnapshotsStub, server: ServerProcess
) -> None:
    await commit_layer(client, server.root, "base", files={"keep.txt": "keep"})
    await prepare(client, "active", "base")
    await view(client, "view", "base")
    await prepare(client, "solo")
    known = dir_entries(server.root)
    assert len(known) == 4

    snapshots = server.root / "snapshots"
    planted = ["orphan", "new-0123456789abcdef", "999999", "new-"]
    for name in planted:
        (snapshots / name / "fs" / "deep").mkdir(parents=True)
        (snapshots / name / "fs" / "deep" / "file").write_text("junk")
    assert dir_entries(server.root) == known | set(planted)

    await client.cleanup(api.CleanupRequest())
    assert dir_entries(server.root) == known
    assert await list_names(client) == {"base", "active", "view", "solo"}
    assert (server.root / "metadata.db").is_file()
    base_id = min(int(name) for name in known)
    assert (fs_dir(server.root, base_id) / "keep.txt").read_text() == "keep"
    # Everything still works after a Cleanup.
    await commit(client, "solo-layer", "solo")
    await prepare(client, "after", "solo-layer")


@pytest.mark.root
async def test_cleanup_unmounts_what_is_mounted_in_orphans_unless_an_overlay_uses_it(
    client: api.SnapshotsStub, server: ServerProcess, tmp_path: Path
) -> None:
    await prepare(client, "live")
    known = dir_entries(server.root)
    snapshots = server.root / "snapshots"
    stray = snapshots / "777" / "block" / "mountpoint"
    used = snapshots / "778" / "block" / "mountpoint"
    mounted: list[Path] = []
    overlay = tmp_path / "overlay"
    try:
        for point in (stray, used):
            point.mkdir(parents=True)
            run_root("mount", "-t", "tmpfs", "tmpfs", str(point))
            mounted.append(point)
        (used / "file").write_text("in use")
        upper, work = tmp_path / "upper", tmp_path / "work"
        for directory in (upper, work, overlay):
            directory.mkdir()
        options = f"lowerdir={used},upperdir={upper},workdir={work}"
        run_root("mount", "-t", "overlay", "overlay", "-o", options, str(overlay))
        await client.cleanup(api.CleanupRequest())
        # The stray mount and its directory are gone; the one an overlay uses stays.
        assert dir_entries(server.root) == known | {"778"}
        assert not is_mounted(stray)
        assert (overlay / "file").read_text() == "in use"
        run_root("umount", str(overlay))
        await client.cleanup(api.CleanupRequest())
        assert dir_entries(server.root) == known
    finally:
        for point in (overlay, *mounted):
            if is_mounted(point):
                run_root("umount", str(point))
    assert await list_names(client) == {"live"}


def run_root(*argv: str) -> None:
    run(*argv)


async def test_cleanup_of_an_empty_store(client: api.SnapshotsStub, server: ServerProcess) -> None:
    await client.cleanup(api.CleanupRequest())
    await client.cleanup(api.CleanupRequest(snapshotter="overlaybd"))
    assert dir_entries(server.root) == set()


async def test_cleanup_with_a_stray_file(client: api.SnapshotsStub, server: ServerProcess) -> None:
    await prepare(client, "a")
    known = dir_entries(server.root)
    snapshots = server.root / "snapshots"
    (snapshots / "stray-file").write_text("not a directory")
    (snapshots / "orphan").mkdir()
    await client.cleanup(api.CleanupRequest())
    assert not (snapshots / "orphan").exists()
    assert dir_entries(server.root) == known
