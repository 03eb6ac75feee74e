"""Mounts exactly as containerd's overlayfs snapshotter, the snapshot directory layout, and
(as root) the returned mounts really mounted."""

from __future__ import annotations

import errno
import os
import stat as stat_module
from pathlib import Path

import pytest
from grpclib import GRPCError
from grpclib.const import Status
from support.mounts import mount, umount
from support.server_process import ServerProcess
from support.snapshots import (
    INDEX_OFF,
    commit,
    commit_chain,
    commit_layer,
    fs_dir,
    numeric_ids,
    own_id,
    prepare,
    view,
)

from obdsnap.genproto.containerd.services.snapshots import v1 as api
from obdsnap.genproto.containerd.types import Mount

INDEX = ["index=off"] if INDEX_OFF else []


def work_dir(root: Path, snapshot_id: int) -> Path:
    return root / "snapshots" / str(snapshot_id) / "work"


def as_tuple(mounts: list[Mount]) -> list[tuple[str, str, str, list[str]]]:
    return [(m.type, m.source, m.target, list(m.options)) for m in mounts]


# ---------------------------------------------------------------------- mount specs


async def test_active_without_parent_is_a_rw_bind_of_fs(
    client: api.SnapshotsStub, server: ServerProcess
) -> None:
    mounts = await prepare(client, "a")
    (snapshot_id,) = numeric_ids(server.root)
    assert as_tuple(mounts) == [
        ("bind", str(fs_dir(server.root, snapshot_id)), "", ["rw", "rbind"])
    ]


async def test_view_without_parent_is_a_ro_bind_of_its_fs(
    client: api.SnapshotsStub, server: ServerProcess
) -> None:
    mounts = await view(client, "v")
    (snapshot_id,) = numeric_ids(server.root)
    assert as_tuple(mounts) == [
        ("bind", str(fs_dir(server.root, snapshot_id)), "", ["ro", "rbind"])
    ]


async def test_active_with_one_parent_is_an_overlay(
    client: api.SnapshotsStub, server: ServerProcess
) -> None:
    root = server.root
    (base,) = await commit_chain(client, root, ["base"])
    mounts = await prepare(client, "a", "base")
    own = own_id(mounts, root)
    assert own > base
    options = [
        *INDEX,
        f"workdir={work_dir(root, own)}",
        f"upperdir={fs_dir(root, own)}",
        f"lowerdir={fs_dir(root, base)}",
    ]
    assert as_tuple(mounts) == [("overlay", "overlay", "", options)]


async def test_active_with_parents_lists_lowers_nearest_first(
    client: api.SnapshotsStub, server: ServerProcess
) -> None:
    root = server.root
    ids = await commit_chain(client, root, ["l1", "l2", "l3", "l4"])
    mounts = await prepare(client, "a", "l4")
    own = own_id(mounts, root)
    lowerdir = ":".join(str(fs_dir(root, i)) for i in reversed(ids))
    options = [
        *INDEX,
        f"workdir={work_dir(root, own)}",
        f"upperdir={fs_dir(root, own)}",
        f"lowerdir={lowerdir}",
    ]
    assert as_tuple(mounts) == [("overlay", "overlay", "", options)]
    # A prepare on a middle layer only sees the layers below it.
    mounts = await prepare(client, "b", "l2")
    assert mounts[0].options[-1] == f"lowerdir={fs_dir(root, ids[1])}:{fs_dir(root, ids[0])}"


async def test_mounts_follow_a_key_removed_and_prepared_again_elsewhere(
    client: api.SnapshotsStub, server: ServerProcess
) -> None:
    """Mounts of a snapshot without a device are kept between calls: never past the
    snapshot they were made for."""
    root = server.root
    first, second = await commit_chain(client, root, ["l1", "l2"])
    prepared = await prepare(client, "a", "l1")
    for _ in range(2):
        asked = (await client.mounts(api.MountsRequest(key="a"))).mounts
        assert as_tuple(asked) == as_tuple(prepared)
    await client.remove(api.RemoveSnapshotRequest(key="a"))
    again = await prepare(client, "a", "l2")
    asked = (await client.mounts(api.MountsRequest(key="a"))).mounts
    assert as_tuple(asked) == as_tuple(again)
    assert own_id(asked, root) not in (own_id(prepared, root), first, second)
    assert asked[0].options[-1] == f"lowerdir={fs_dir(root, second)}:{fs_dir(root, first)}"
    # Committed, the key has no mounts any more.
    await commit(client, "c", "a")
    with pytest.raises(GRPCError) as error:
        await client.mounts(api.MountsRequest(key="a"))
    assert error.value.status is Status.NOT_FOUND


async def test_view_of_one_parent_is_a_ro_bind_of_the_parent(
    client: api.SnapshotsStub, server: ServerProcess
) -> None:
    (base,) = await commit_chain(client, server.root, ["base"])
    mounts = await view(client, "v", "base")
    assert as_tuple(mounts) == [("bind", str(fs_dir(server.root, base)), "", ["ro", "rbind"])]


async def test_view_of_several_parents_is_a_lower_only_overlay(
    client: api.SnapshotsStub, server: ServerProcess
) -> None:
    root = server.root
    ids = await commit_chain(client, root, ["l1", "l2", "l3"])
    mounts = await view(client, "v", "l3")
    lowerdir = ":".join(str(fs_dir(root, i)) for i in reversed(ids))
    assert as_tuple(mounts) == [("overlay", "overlay", "", [*INDEX, f"lowerdir={lowerdir}"])]


async def test_index_off_follows_the_kernel(
    client: api.SnapshotsStub, server: ServerProcess
) -> None:
    await commit_chain(client, server.root, ["l1", "l2"])
    for mounts in (await prepare(client, "a", "l2"), await view(client, "v", "l2")):
        options = list(mounts[0].options)
        assert (options[:1] == ["index=off"]) == INDEX_OFF, options
        assert options.count("index=off") == (1 if INDEX_OFF else 0), options
        # Never metacopy (detected by v0.6.0, never used) and no rootless userxattr.
        assert not any(o.startswith(("metacopy", "userxattr")) for o in options), options


# ---------------------------------------------------------------------- layout


def mode(path: Path) -> int:
    return stat_module.S_IMODE(os.lstat(path).st_mode)


def assert_layout(root: Path, snapshot_id: int, *, work: bool) -> None:
    top = root / "snapshots" / str(snapshot_id)
    assert mode(top / "fs") == 0o755
    assert (top / "fs").is_dir()
    assert mode(top / "block") == 0o711
    assert mode(top / "block" / "mountpoint") == 0o711
    assert (top / "block" / "mountpoint").is_dir()
    log = top / "block" / "init-debug.log"
    assert log.is_file() and not log.is_symlink()
    assert log.stat().st_size == 0
    if work:
        assert mode(top / "work") == 0o711
        assert (top / "work").is_dir()
    else:
        assert not (top / "work").exists()


async def test_root_layout(client: api.SnapshotsStub, server: ServerProcess) -> None:
    await prepare(client, "a")
    assert mode(server.root) == 0o700
    assert mode(server.root / "snapshots") == 0o700
    assert (server.root / "metadata.db").is_file()


async def test_layout_of_an_active_snapshot(
    client: api.SnapshotsStub, server: ServerProcess
) -> None:
    assert_layout(server.root, own_id(await prepare(client, "a"), server.root), work=True)


async def test_layout_of_views(client: api.SnapshotsStub, server: ServerProcess) -> None:
    await commit_layer(client, server.root, "base")
    for key, parent in (("v0", ""), ("v1", "base")):
        before = numeric_ids(server.root)
        await view(client, key, parent)
        (snapshot_id,) = numeric_ids(server.root) - before
        assert_layout(server.root, snapshot_id, work=False)


async def test_layout_after_commit_keeps_work(
    client: api.SnapshotsStub, server: ServerProcess
) -> None:
    snapshot_id = own_id(await prepare(client, "a"), server.root)
    await commit(client, "c", "a")
    assert_layout(server.root, snapshot_id, work=True)


async def test_child_fs_takes_the_owner_of_the_parent_fs(
    client: api.SnapshotsStub, server: ServerProcess
) -> None:
    root = server.root
    base = await commit_layer(client, root, "base")
    os.chown(fs_dir(root, base), 1234, 5678)
    child = own_id(await prepare(client, "child", "base"), root)
    st = os.lstat(fs_dir(root, child))
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    before = numeric_ids(root)
    await view(client, "v", "base")
    (view_id,) = numeric_ids(root) - before
    st = os.lstat(fs_dir(root, view_id))
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    # Without a parent, fs/ belongs to the server's user.
    solo = os.lstat(fs_dir(root, own_id(await prepare(client, "solo"), root)))
    assert (solo.st_uid, solo.st_gid) == (os.geteuid(), os.getegid())


# ---------------------------------------------------------------------- real mounts


@pytest.mark.root
async def test_mount_what_prepare_and_view_return(
    client: api.SnapshotsStub, server: ServerProcess, tmp_path: Path
) -> None:
    root = server.root
    await commit_layer(client, root, "l1", files={"bottom.txt": "l1", "shadowed.txt": "l1"})
    await commit_layer(client, root, "l2", "l1", files={"shadowed.txt": "l2"})
    active = await prepare(client, "rootfs", "l2")
    upper = fs_dir(root, own_id(active, root))
    several = await view(client, "v2", "l2")
    one = await view(client, "v1", "l1")
    bare = await prepare(client, "bare")
    targets = {name: tmp_path / name for name in ("active", "v2", "v1", "bare")}
    mounted: list[Path] = []
    try:
        for name, mounts in (("active", active), ("v2", several), ("v1", one), ("bare", bare)):
            targets[name].mkdir()
            mount(mounts[0], targets[name])
            mounted.append(targets[name])

        rootfs = targets["active"]
        assert (rootfs / "bottom.txt").read_text() == "l1"
        assert (rootfs / "shadowed.txt").read_text() == "l2"
        (rootfs / "written.txt").write_text("container")
        assert (upper / "written.txt").read_text() == "container"

        assert (targets["v2"] / "shadowed.txt").read_text() == "l2"
        assert (targets["v1"] / "shadowed.txt").read_text() == "l1"
        for name in ("v2", "v1"):
            with pytest.raises(OSError) as raised:
                (targets[name] / "new.txt").write_text("x")
            assert raised.value.errno == errno.EROFS

        (targets["bare"] / "file").write_text("bind")
        assert (fs_dir(root, own_id(bare, root)) / "file").read_text() == "bind"
    finally:
        for target in reversed(mounted):
            umount(target)
