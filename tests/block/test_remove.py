"""DESIGN §7: Remove and devices.

NOT_FOUND and FAILED_PRECONDITION come before any device is touched. A block
snapshot's device is detached on Remove unless an overlay mount still uses its
mountpoint: the device stays, and so does a layer whose mountpoint is then still
mounted (DESIGN-v1 §9 step 5). With ``autoRemoveDev``,
removing an active snapshot also detaches its parent's device when nothing
else uses it. ``dev`` devices have no mount to check.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from grpclib.const import Status
from support.block import Obd
from support.block_fixtures import Images, StartObd, WritableRootfs
from support.processes import run
from support.simulator import MISSING
from support.snapshots import expect_status

from obdsnap.labels import WRITABLE

pytestmark = [pytest.mark.root, pytest.mark.skipif(MISSING is not None, reason=MISSING or "")]


async def test_remove_of_a_missing_snapshot_is_not_found(obd: Obd) -> None:
    await expect_status(obd.remove("nothing"), Status.NOT_FOUND)


async def test_remove_of_a_parent_with_children_keeps_its_device(
    start_obd: StartObd, images: Images
) -> None:
    obd = await start_obd(autoRemoveDev=True)
    top, top_id = await obd.unpack_top(images.single)
    await obd.prepare("rootfs", top)
    device = obd.assert_attached(top_id, mounted="ro")
    error = await expect_status(obd.remove(top), Status.FAILED_PRECONDITION)
    # DESIGN-v1 §22 quirk 6: the children answer first, though the mountpoint is mounted too.
    assert "children" in (error.message or "")
    # The device is untouched and the child still works.
    assert obd.assert_attached(top_id, mounted="ro") == device
    assert (obd.mountpoint(top_id) / "single.txt").read_text() == "single\n"
    assert (await obd.stat(top)).kind.name == "COMMITTED"


async def test_remove_of_a_committed_parent_with_a_writable_child_keeps_the_childs_device(
    writable_rootfs: WritableRootfs,
) -> None:
    rootfs = await writable_rootfs(key="a-active")
    obd, a = rootfs.obd, rootfs.id
    await obd.commit("A", "a-active")
    child = obd.own_id(await obd.prepare("child", "A"))
    await expect_status(obd.remove("A"), Status.FAILED_PRECONDITION)
    obd.assert_attached(child, mounted="rw")
    assert obd.config_path(a).exists()


async def test_remove_detaches_a_block_layers_device(obd: Obd, images: Images) -> None:
    top, top_id = await obd.unpack_top(images.single)
    await obd.prepare("rootfs", top)
    obd.assert_attached(top_id, mounted="ro")
    await obd.remove("rootfs")
    # autoRemoveDev is off: the parent's device stays until the parent goes.
    obd.assert_attached(top_id, mounted="ro")
    await obd.remove(top)
    obd.assert_detached(top_id)
    assert obd.sim.loop_devices() == []
    await obd.wait_gone(top_id)


@pytest.mark.parametrize("mode", ["dir", "dev"])
async def test_remove_detaches_a_writable_snapshots_own_device(
    writable_rootfs: WritableRootfs, mode: str
) -> None:
    rootfs = await writable_rootfs(mode=mode, files={})
    obd, own = rootfs.obd, rootfs.id
    obd.assert_attached(own, mounted="rw" if mode == "dir" else None)
    await obd.remove("rootfs")
    obd.assert_detached(own)
    assert obd.sim.loop_devices() == []
    await obd.wait_gone(own)


async def test_dev_mode_remove_detaches_without_a_mount_check(
    writable_rootfs: WritableRootfs, tmp_path: Path
) -> None:
    """The VM runtime may still have the device mounted elsewhere: dev mode does not look."""
    rootfs = await writable_rootfs(mode="dev", key="vm", files={})
    obd, own = rootfs.obd, rootfs.id
    # An overlay whose options name the mountpoint would keep a dir/overlayfs device.
    lower = tmp_path / "lower"
    lower.mkdir()
    fake = tmp_path / "overlay"
    fake.mkdir()
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    # mountpoint is an (empty) directory in dev mode: usable as an overlay lower.
    options = f"lowerdir={obd.mountpoint(own)}:{lower},upperdir={upper},workdir={work}"
    run("mount", "-t", "overlay", "-o", options, "overlay", fake)
    obd.real_mounts.append(fake)
    await obd.remove("vm")
    obd.umount_for_real(fake)
    assert obd.configfs_entries(own) == []
    assert obd.sim.loop_devices() == []


async def test_a_device_used_by_an_overlay_mount_stays_and_so_does_its_layer(
    start_obd: StartObd, images: Images, tmp_path: Path
) -> None:
    """DESIGN-v1 §9 step 5: a layer whose device is busy is refused, not removed under it."""
    obd = await start_obd(autoRemoveDev=True)
    top, top_id = await obd.unpack_top(images.single)
    rootfs = tmp_path / "rootfs"
    await obd.mount_container("rootfs", top, rootfs)
    device = obd.assert_attached(top_id, mounted="ro")

    # The container's snapshot goes; its overlay (still mounted) keeps the parent's device.
    await obd.remove("rootfs")
    await expect_status(obd.stat("rootfs"), Status.NOT_FOUND)
    assert obd.assert_attached(top_id, mounted="ro") == device
    # The parent cannot go while its device is mounted and busy.
    error = await expect_status(obd.remove(top), Status.FAILED_PRECONDITION)
    assert error.message == f"try to remove snapshot {top_id} which still have mountpoint"
    assert (await obd.stat(top)).kind.name == "COMMITTED"
    assert obd.assert_attached(top_id, mounted="ro") == device
    assert (rootfs / "single.txt").read_text() == "single\n"
    # Once the container's mount is gone, so is the layer, with its device.
    obd.umount_for_real(rootfs)
    await obd.remove(top)
    obd.assert_detached(top_id)
    assert obd.sim.loop_devices() == []
    await obd.wait_gone(top_id)


async def test_auto_remove_dev_detaches_the_parent_with_its_last_user(
    start_obd: StartObd, images: Images, tmp_path: Path
) -> None:
    obd = await start_obd(autoRemoveDev=True)
    top, top_id = await obd.unpack_top(images.single)
    rootfs = tmp_path / "first"
    await obd.mount_container("first", top, rootfs)
    await obd.prepare("second", top)
    device = obd.assert_attached(top_id, mounted="ro")

    # "second" goes, "first" still has its overlay mounted: the device stays.
    await obd.remove("second")
    assert obd.assert_attached(top_id, mounted="ro") == device
    # "first" is unmounted and removed: nothing uses the device any more.
    obd.umount_for_real(rootfs)
    await obd.remove("first")
    obd.assert_detached(top_id)
    assert device not in obd.sim.loop_devices()
    assert obd.configfs_entries(top_id) == []
    assert (await obd.stat(top)).kind.name == "COMMITTED"

    # The next container attaches it again.
    await obd.prepare("third", top)
    obd.assert_attached(top_id, mounted="ro")


async def test_auto_remove_dev_leaves_parents_of_views_and_commits_alone(
    start_obd: StartObd, images: Images
) -> None:
    """Only removing an *active* snapshot detaches the parent."""
    obd = await start_obd(autoRemoveDev=True)
    top, top_id = await obd.unpack_top(images.single)
    await obd.view("view", top)
    obd.assert_attached(top_id, mounted="ro")
    await obd.remove("view")
    obd.assert_attached(top_id, mounted="ro")


async def test_without_auto_remove_dev_the_parent_keeps_its_device(
    obd: Obd, images: Images
) -> None:
    top, top_id = await obd.unpack_top(images.single)
    await obd.prepare("only", top)
    await obd.remove("only")
    obd.assert_attached(top_id, mounted="ro")


async def test_auto_remove_dev_with_a_dir_mode_child(start_obd: StartObd, images: Images) -> None:
    """A dir child has its own device; its parent's was never attached and stays so."""
    obd = await start_obd(autoRemoveDev=True)
    top, top_id = await obd.unpack_top(images.single)
    own = obd.own_id(await obd.prepare("rootfs", top, {WRITABLE: "dir"}))
    obd.assert_detached(top_id)
    await obd.remove("rootfs")
    obd.assert_detached(own)
    obd.assert_detached(top_id)
    await obd.wait_gone(own)
