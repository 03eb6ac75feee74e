"""DESIGN-v1 §9 and §22: Remove with the parent-in-use guard, the refusal of a snapshot whose
mountpoint is still mounted, asyncRemove, and Cleanup, over gRPC on the simulator."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from grpclib.const import Status
from support.block import Obd
from support.block_fixtures import Images, StartObd, WritableRootfs
from support.mounts import mount_at
from support.processes import run
from support.simulator import MISSING
from support.snapshots import expect_status

from obdsnap.genproto.containerd.types import Mount

pytestmark = [pytest.mark.root, pytest.mark.skipif(MISSING is not None, reason=MISSING or "")]

GUARD_LOG = "device is parent to someone else, ignore umount"
ASYNC_LOG = "asyncRemove enabled, remove snapshots in Cleanup() method."
IMAGE_FILES = {
    "three.txt": "layer 3\n",
    "etc/os-release": "layer3\n",
    "bin/hello": "hello from layer 1\n",
}


def assert_files(root: Path, files: dict[str, str]) -> None:
    for name, content in files.items():
        assert (root / name).read_text() == content, name


def mount_tmpfs(obd: Obd, point: Path) -> None:
    """Mount a tmpfs by hand (torn down with the test's other real mounts)."""
    point.mkdir(parents=True, exist_ok=True)
    run("mount", "-t", "tmpfs", "tmpfs", point)
    obd.real_mounts.append(point)


async def test_s9_same_image_twice_keeps_the_device_for_the_other_container(
    start_obd: StartObd, images: Images, tmp_path: Path
) -> None:
    """DESIGN-v1 §9 guard: removing one of two containers on an image leaves the other intact."""
    obd = await start_obd(autoRemoveDev=True)
    top, top_id = await obd.unpack_top(images.three)
    first, second = tmp_path / "first", tmp_path / "second"
    await obd.mount_container("first", top, first)
    await obd.mount_container("second", top, second)
    (second / "mine.txt").write_text("written by the second container\n")
    device = obd.assert_attached(top_id, mounted="ro")
    # containerd unmounts a container's rootfs before it removes the snapshot: no overlay
    # mount keeps the device, only the other container's snapshot does.
    obd.umount_for_real(first)
    obd.umount_for_real(second)

    await obd.remove("first")
    assert obd.assert_attached(top_id, mounted="ro") == device
    assert GUARD_LOG in obd.server.log()
    obd.mount_for_real((await obd.mounts("second"))[0], second)
    assert_files(second, {**IMAGE_FILES, "mine.txt": "written by the second container\n"})

    obd.umount_for_real(second)
    await obd.remove("second")
    obd.assert_detached(top_id)
    assert device not in obd.sim.loop_devices()
    assert (await obd.stat(top)).kind.name == "COMMITTED"


async def test_s9_guard_a_committed_child_does_not_keep_the_parents_device(
    start_obd: StartObd, images: Images
) -> None:
    """DESIGN-v1 §9 guard: committed children of the parent do not count as its users."""
    obd = await start_obd(autoRemoveDev=True)
    top, top_id = await obd.unpack_top(images.single)
    await obd.prepare("to-commit", top)
    await obd.commit("committed-child", "to-commit")
    await obd.prepare("container", top)
    obd.assert_attached(top_id, mounted="ro")
    await obd.remove("container")
    obd.assert_detached(top_id)
    assert (await obd.stat("committed-child")).kind.name == "COMMITTED"


async def test_s9_guard_a_view_child_keeps_the_parents_device(
    start_obd: StartObd, images: Images, tmp_path: Path
) -> None:
    """DESIGN-v1 §9 guard: a view of the parent is a user of its device."""
    obd = await start_obd(autoRemoveDev=True)
    top, top_id = await obd.unpack_top(images.single)
    view = await obd.view("view", top)
    await obd.prepare("container", top)
    device = obd.assert_attached(top_id, mounted="ro")
    await obd.remove("container")
    assert obd.assert_attached(top_id, mounted="ro") == device
    obd.mount_for_real(view[0], tmp_path / "view")
    assert (tmp_path / "view" / "single.txt").read_text() == "single\n"


async def test_s9_remove_refuses_a_snapshot_whose_mountpoint_is_mounted(
    start_obd: StartObd, images: Images, tmp_path: Path
) -> None:
    """DESIGN-v1 §9 step 5: FAILED_PRECONDITION; nothing removed, not even the parent's device."""
    obd = await start_obd(autoRemoveDev=True)
    top, top_id = await obd.unpack_top(images.single)
    own = obd.own_id(await obd.prepare("container", top))
    device = obd.assert_attached(top_id, mounted="ro")
    mountpoint = obd.mountpoint(own)
    mount_tmpfs(obd, mountpoint)
    (mountpoint / "held").write_text("held\n")

    error = await expect_status(obd.remove("container"), Status.FAILED_PRECONDITION)
    assert error.message == f"try to remove snapshot {own} which still have mountpoint"
    assert (await obd.stat("container")).kind.name == "ACTIVE"
    assert (mountpoint / "held").read_text() == "held\n"
    assert obd.fs(own).is_dir()
    assert obd.assert_attached(top_id, mounted="ro") == device

    obd.umount_for_real(mountpoint)
    await obd.remove("container")
    await expect_status(obd.stat("container"), Status.NOT_FOUND)
    obd.assert_detached(top_id)
    await obd.wait_gone(own)


async def test_s9_async_remove_leaves_the_directory_until_cleanup(start_obd: StartObd) -> None:
    """DESIGN-v1 §9 asyncRemove: the directory stays, the key is free at once, Cleanup sweeps."""
    obd = await start_obd(asyncRemove=True)
    old = obd.own_id(await obd.prepare("key"))
    (obd.fs(old) / "data").write_text("old\n")
    await obd.remove("key")
    await asyncio.sleep(0.3)  # the background remover would have had its chance
    assert (obd.fs(old) / "data").read_text() == "old\n"
    assert ASYNC_LOG in obd.server.log()

    new = obd.own_id(await obd.prepare("key"))
    assert new != old
    (obd.fs(new) / "data").write_text("new\n")
    await obd.cleanup()
    assert not obd.snapshot_dir(old).exists()
    assert (obd.fs(new) / "data").read_text() == "new\n"
    assert obd.ids() == {new}


async def test_s9_async_remove_detaches_the_device_and_leaves_the_directory(
    writable_rootfs: WritableRootfs,
) -> None:
    """DESIGN-v1 §9 asyncRemove: devices go with Remove; only the directory waits for Cleanup."""
    rootfs = await writable_rootfs(asyncRemove=True)
    obd, own = rootfs.obd, rootfs.id
    await obd.remove(rootfs.key)
    obd.assert_detached(own)
    assert obd.sim.loop_devices() == []
    assert obd.block(own).is_dir()
    await obd.cleanup()
    assert not obd.snapshot_dir(own).exists()


async def test_s9_without_async_remove_the_directory_goes_after_the_row(obd: Obd) -> None:
    """DESIGN-v1 §9 / §22 quirk 7: without asyncRemove the directory goes once the row is gone."""
    own = obd.own_id(await obd.prepare("key"))
    await obd.remove("key")
    await expect_status(obd.stat("key"), Status.NOT_FOUND)
    await obd.wait_gone(own)
    assert ASYNC_LOG not in obd.server.log()


async def test_s9_cleanup_racing_prepares_never_removes_a_snapshot_in_creation(
    start_obd: StartObd,
) -> None:
    """DESIGN-v1 §22 quirk 7: Cleanup never sweeps a new-* directory whose create is in flight."""
    obd = await start_obd(asyncRemove=True)
    await obd.prepare("base-active")
    await obd.commit("base", "base-active")
    for index in range(10):  # orphans for the Cleanups to sweep meanwhile
        await obd.prepare(f"gone-{index}")
        await obd.remove(f"gone-{index}")
    keys = [f"c{index}" for index in range(50)]
    done = asyncio.Event()
    cleanups = 0

    async def keep_cleaning() -> None:
        nonlocal cleanups
        while not done.is_set():
            await obd.cleanup()
            cleanups += 1

    async def prepare(index: int, key: str) -> list[Mount]:
        await asyncio.sleep(index * 0.01)  # spread over many Cleanups, overlapping each other
        return await obd.prepare(key, "base" if index % 2 else "")

    cleaner = asyncio.create_task(keep_cleaning())
    try:
        answers = await asyncio.gather(*(prepare(index, key) for index, key in enumerate(keys)))
    finally:
        done.set()
        await cleaner
    await obd.cleanup()
    assert cleanups >= 5
    for key, mounts in zip(keys, answers, strict=True):
        own = obd.own_id(mounts)
        for part in (obd.fs(own), obd.snapshot_dir(own) / "work", obd.mountpoint(own)):
            assert part.is_dir(), part
        assert await obd.mounts(key) == mounts
    assert len(obd.ids()) == len(keys) + 1


async def test_s9_cleanup_skips_a_directory_with_a_mount_inside(start_obd: StartObd) -> None:
    """DESIGN-v1 §9 Cleanup: never removed through a mount; a later Cleanup takes it once free."""
    obd = await start_obd(asyncRemove=True)
    own = obd.own_id(await obd.prepare("key"))
    await obd.remove("key")
    mountpoint = obd.mountpoint(own)
    mount_tmpfs(obd, mountpoint)
    with (mountpoint / "open").open("w") as busy:
        busy.write("in use\n")
        busy.flush()
        await obd.cleanup()
        assert mount_at(mountpoint) is not None
        assert (mountpoint / "open").read_text() == "in use\n"
        assert obd.snapshot_dir(own).is_dir()
    # Free now: the next Cleanup unmounts what no snapshot owns, then sweeps.
    await obd.cleanup()
    assert mount_at(mountpoint) is None
    obd.real_mounts.remove(mountpoint)
    assert not obd.snapshot_dir(own).exists()
