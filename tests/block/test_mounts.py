"""DESIGN §6: Mounts answers what Prepare/View answered, re-attaching a missing device.

After obdsnap restarts (killed or stopped), or after a reboot took the device
down, or after autoRemoveDev detached it, Mounts brings back whatever device
its answer needs: the snapshot's own for dir/dev, the parent's otherwise. A
writable device is never mkfs'ed again: the data written before is still there.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from grpclib.const import Status
from support.block import Obd
from support.block_fixtures import Images, StartObd, WritableRootfs
from support.mounts import umount
from support.simulator import MISSING
from support.snapshots import expect_status, wait_until

from obdsnap.labels import WRITABLE

pytestmark = [pytest.mark.root, pytest.mark.skipif(MISSING is not None, reason=MISSING or "")]


@pytest.mark.parametrize("device_state", ["still-attached", "detached-by-reboot"])
@pytest.mark.parametrize("restart", ["sigkill", "sigterm"])
async def test_mounts_after_restart_reattaches_a_dir_snapshots_device(
    writable_rootfs: WritableRootfs, restart: str, device_state: str
) -> None:
    rootfs = await writable_rootfs(files={"before-restart.txt": "kept\n"})
    obd, mounts, own = rootfs.obd, rootfs.mounts, rootfs.id
    device = obd.assert_attached(own, mounted="rw")

    await obd.restart(kill=restart == "sigkill")
    if device_state == "detached-by-reboot":
        obd.detach_like_reboot(own)
        # The kernel may release an autoclear loop device after its last close returns.
        assert await wait_until(lambda: device not in obd.sim.loop_devices())

    assert await obd.mounts("rootfs") == mounts
    again = obd.assert_attached(own, mounted="rw")
    if device_state == "still-attached":
        assert again == device  # reused, not attached a second time
    assert len(obd.sim.loop_devices()) == 1
    # Not mkfs'ed again: the data is still there, and the device still writable.
    rootfs.assert_holds({"before-restart.txt": "kept\n"})
    (obd.mountpoint(own) / "after-restart.txt").write_text("new\n")
    # The snapshot commits as usual afterwards.
    await obd.commit("layer", "rootfs")
    child = await obd.prepare("child", "layer")
    assert (Path(child[0].source) / "before-restart.txt").read_text() == "kept\n"
    assert (Path(child[0].source) / "after-restart.txt").read_text() == "new\n"


@pytest.mark.parametrize("restart", ["sigkill", "sigterm"])
async def test_mounts_after_reboot_reattaches_the_parent_of_an_overlayfs_container(
    obd: Obd, images: Images, restart: str
) -> None:
    top_chain, top = await obd.unpack_top(images.three)
    mounts = await obd.prepare("rootfs", top_chain)
    view = await obd.view("view", top_chain)
    obd.assert_attached(top, mounted="ro")

    await obd.restart(kill=restart == "sigkill")
    obd.detach_like_reboot(top)

    assert await obd.mounts("rootfs") == mounts
    obd.assert_attached(top, mounted="ro")
    assert (obd.mountpoint(top) / "three.txt").read_text() == "layer 3\n"
    obd.detach_like_reboot(top)
    assert await obd.mounts("view") == view
    obd.assert_attached(top, mounted="ro")


async def test_mounts_reattaches_a_dev_snapshots_device(
    writable_rootfs: WritableRootfs, tmp_path: Path
) -> None:
    rootfs = await writable_rootfs(mode="dev", key="vm", files={"data.txt": "vm data\n"})
    obd, own = rootfs.obd, rootfs.id
    target = tmp_path / "vm"

    await obd.restart(kill=True)
    obd.detach_like_reboot(own)
    again = await obd.mounts("vm")
    device = obd.assert_attached(own, mounted=None)
    assert [(m.type, m.source, list(m.options)) for m in again] == [
        ("ext4", device, ["rw", "discard"])
    ]
    obd.mount_for_real(again[0], target)
    assert (target / "data.txt").read_text() == "vm data\n"
    obd.umount_for_real(target)


async def test_mounts_finds_the_device_auto_remove_dev_kept_for_another_container(
    start_obd: StartObd, images: Images
) -> None:
    """DESIGN-v1 §9 guard: removing one container leaves the device the other one mounts."""
    obd = await start_obd(autoRemoveDev=True)
    top_chain, top = await obd.unpack_top(images.single)
    await obd.prepare("first", top_chain)
    second = await obd.prepare("second", top_chain)
    device = obd.assert_attached(top, mounted="ro")
    await obd.remove("first")  # nothing mounts "second" yet, but it is active: the device stays
    assert obd.assert_attached(top, mounted="ro") == device
    assert await obd.mounts("second") == second
    assert obd.assert_attached(top, mounted="ro") == device


async def test_mounts_mounts_a_device_that_is_attached_but_not_mounted(
    writable_rootfs: WritableRootfs,
) -> None:
    rootfs = await writable_rootfs()
    device = rootfs.obd.assert_attached(rootfs.id, mounted="rw")
    await rootfs.obd.restart(kill=True)
    umount(rootfs.mountpoint)  # the device stays attached in configfs
    assert await rootfs.obd.mounts("rootfs") == rootfs.mounts
    assert rootfs.obd.assert_attached(rootfs.id, mounted="rw") == device
    rootfs.assert_holds()


async def test_mounts_of_a_committed_snapshot_is_failed_precondition(
    start_obd: StartObd, images: Images
) -> None:
    obd = await start_obd(rwMode="dir")
    chain = await obd.unpack_remote(images.single)
    await expect_status(obd.mounts(chain[-1]), Status.FAILED_PRECONDITION)
    await obd.prepare("layer-active")
    await obd.commit("layer", "layer-active")
    await expect_status(obd.mounts("layer"), Status.FAILED_PRECONDITION)
    await expect_status(obd.mounts("layer-active"), Status.NOT_FOUND)
    # Nothing was attached for it.
    assert obd.sim.loop_devices() == []


async def test_mounts_of_a_missing_snapshot_is_not_found(obd: Obd) -> None:
    await expect_status(obd.mounts("missing"), Status.NOT_FOUND)


async def test_mounts_answers_exactly_what_prepare_did(obd: Obd, images: Images) -> None:
    chain = await obd.unpack_remote(images.single)
    answers = {
        "overlay": await obd.prepare("overlay", chain[-1]),
        "dir": await obd.prepare("dir", chain[-1], {WRITABLE: "dir"}),
        "dev": await obd.prepare("dev", chain[-1], {WRITABLE: "dev"}),
        "view": await obd.view("view", chain[-1]),
        "view-dir": await obd.view("view-dir", chain[-1], {WRITABLE: "dir"}),
    }
    for key, mounts in answers.items():
        assert await obd.mounts(key) == mounts, key
