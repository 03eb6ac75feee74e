"""DESIGN-v1 §11: attaching a device robustly (enable errors, discovery, SCSI timeout, mount retry).

Faults are simulator knobs restricted to one device; each test's server is fresh,
so its snapshot IDs start at 1.
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import pytest
from grpclib.const import Status
from support.block import Obd
from support.block_fixtures import Images, StartObd
from support.mounts import mount_at
from support.simulator import MISSING
from support.snapshots import expect_status

from tcmusim.testing import only

pytestmark = [pytest.mark.root, pytest.mark.skipif(MISSING is not None, reason=MISSING or "")]

COMMAND_TIMEOUT = "2147483"


def read(path: Path) -> str:
    with open(path) as attribute:
        return attribute.read().strip()


async def assert_undone(obd: Obd, snapshot_id: int, key: str) -> None:
    """The failed Prepare left no snapshot, configfs entry, mount or loop device."""
    await expect_status(obd.stat(key), Status.NOT_FOUND)
    await obd.wait_gone(snapshot_id)
    assert obd.configfs_entries(snapshot_id) == []
    assert obd.leftovers() == []


async def test_s11_enable_eagain_is_retried_until_the_target_enables(start_obd: StartObd) -> None:
    """DESIGN-v1 §11 enable: EAGAIN → retry every 50 ms, up to 100 times."""
    obd = await start_obd(rwMode="dir")
    obd.sim.control.set(eagain=only(99, 1))
    log_start = len(obd.sim.log())
    started = time.monotonic()
    mounts = await obd.prepare("rootfs")
    assert time.monotonic() - started >= 99 * 0.05
    obd.assert_attached(obd.own_id(mounts), mounted="rw")
    assert obd.sim.log()[log_start:].count("dev_1: EAGAIN") == 99


async def test_s11_enable_eagain_100_times_fails_with_the_result_file_text(
    start_obd: StartObd,
) -> None:
    """DESIGN-v1 §11 enable: after 100 EAGAINs, ``failed to enable target for <dir>, <text>``."""
    obd = await start_obd(rwMode="dir")
    obd.sim.control.set(eagain=only(100, 1))
    error = await expect_status(obd.prepare("rootfs"), Status.UNKNOWN)
    assert (error.message or "").startswith(f"failed to enable target for {obd.target_dir(1)}, ")
    await assert_undone(obd, 1, "rootfs")


async def test_s22_q9_enable_error_keeps_overlaybds_reason(start_obd: StartObd) -> None:
    """DESIGN-v1 §22 quirk 9: a non-EAGAIN enable error says so at once, with the result file."""
    obd = await start_obd(rwMode="dir")
    obd.sim.control.set(fail_open=only("manifest digest mismatch", 1))
    error = await expect_status(obd.prepare("rootfs"), Status.UNKNOWN)
    assert error.message == (
        f"failed to write enable for {obd.target_dir(1)}: {os.strerror(errno.EIO)}: "
        "failed:manifest digest mismatch"
    )
    await assert_undone(obd, 1, "rootfs")


async def test_s11_enable_error_without_a_reason_fails_at_once(start_obd: StartObd) -> None:
    """DESIGN-v1 §11 enable: any other errno fails at once with ``failed to write enable``."""
    obd = await start_obd(rwMode="dir")
    obd.sim.control.set(enable_errno=only(errno.ENOMEM, 1))
    log_start = len(obd.sim.log())
    error = await expect_status(obd.prepare("rootfs"), Status.UNKNOWN)
    expected = f"failed to write enable for {obd.target_dir(1)}: {os.strerror(errno.ENOMEM)}"
    assert error.message == expected
    assert obd.sim.log()[log_start:].count("enable fails with errno") == 1  # no retry
    await assert_undone(obd, 1, "rootfs")


async def test_s22_q8_a_device_that_never_appears_is_an_error_and_undone(
    obd: Obd, images: Images
) -> None:
    """DESIGN-v1 §22 quirk 8: no device after discovery fails with the discovery error, undone."""
    top_chain, top = await obd.unpack_top(images.single)
    obd.sim.control.set(never_appear=only(True, top))
    error = await expect_status(obd.prepare("c1", top_chain), Status.UNAVAILABLE)
    assert "did not appear" in (error.message or "")
    assert obd.configfs_entries(top) == [] and obd.mark(top) is None
    assert mount_at(obd.mountpoint(top)) is None
    obd.sim.control.clear()
    await obd.prepare("c1", top_chain)
    obd.assert_attached(top, mounted="ro")


async def test_s11_a_late_device_is_found(obd: Obd, images: Images) -> None:
    """DESIGN-v1 §11 discovery: a disk that shows up late is waited for."""
    top_chain, top = await obd.unpack_top(images.single)
    obd.sim.control.set(appear_delay=only(0.4, top))
    await obd.prepare("c1", top_chain)
    obd.assert_attached(top, mounted="ro")


async def test_s11_scsi_timeout_is_written_before_any_mount(start_obd: StartObd) -> None:
    """DESIGN-v1 §11 discovery: the device ``timeout`` is written before mounting (dev: none)."""
    obd = await start_obd(rwMode="dev")
    mounts = await obd.prepare("rootfs")
    device = obd.assert_attached(obd.own_id(mounts), mounted=None)
    disk = Path(device).name
    assert read(obd.sim.sysfs / "block" / disk / "device/timeout") == COMMAND_TIMEOUT


async def test_s11_mount_is_retried_while_the_new_disk_is_busy(obd: Obd, images: Images) -> None:
    """DESIGN-v1 §11 mount: retried 50 times 10 ms apart (a prober holds the disk 0.2 s)."""
    top_chain, top = await obd.unpack_top(images.single)
    obd.sim.control.set(busy_after_appear=only(0.2, top))
    log_start = len(obd.sim.log())
    mounts = await obd.prepare("c1", top_chain)
    assert "held exclusively" in obd.sim.log()[log_start:]
    obd.assert_attached(top, mounted="ro")
    target = obd.server.workdir / "c1-rootfs"
    obd.mount_for_real(mounts[0], target)
    assert (target / "single.txt").read_text() == "single\n"
    obd.umount_for_real(target)


async def test_s11_mount_failing_every_retry_reports_the_last_error_and_undoes(
    obd: Obd, images: Images
) -> None:
    """DESIGN-v1 §11: a mount that still fails after 50 tries fails the attach, which is undone."""
    top_chain, top = await obd.unpack_top(images.single)
    obd.sim.control.set(busy_after_appear=only(5.0, top))
    error = await expect_status(obd.prepare("c1", top_chain), Status.UNKNOWN)
    assert "mount" in (error.message or "") and "busy" in (error.message or "")
    assert obd.configfs_entries(top) == [] and obd.mark(top) is None
    assert mount_at(obd.mountpoint(top)) is None
    await expect_status(obd.stat("c1"), Status.NOT_FOUND)
