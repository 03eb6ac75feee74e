"""DESIGN §8: how a device is set up through configfs and found in sysfs.

HBA 999999999, target ``dev_<ID>`` with ``dev_config=overlaybd/<config>``,
``max_data_area_mb=4``, enabled, ``cmd_time_out`` 2147483; a tcm_loop LUN on
WWN ``naa.199<ID, 13 digits>`` linking the target; the disk's SCSI timeout
2147483 once mounted. Configs are rewritten only when they change.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support.block import Obd
from support.block_fixtures import Images, WritableRootfs
from support.mounts import mount_at
from support.simulator import HBA, MISSING, wwn

from obdsnap.labels import RECORD_TRACE, RECORD_TRACE_PATH

pytestmark = [pytest.mark.root, pytest.mark.skipif(MISSING is not None, reason=MISSING or "")]

COMMAND_TIMEOUT = "2147483"


def read(path: os.PathLike[str]) -> str:
    with open(path) as attribute:
        return attribute.read().strip()


async def test_device_configfs_and_sysfs_setup(writable_rootfs: WritableRootfs) -> None:
    rootfs = await writable_rootfs(files={})
    obd, own = rootfs.obd, rootfs.id
    device = obd.assert_attached(own, mounted="rw")

    target = obd.sim.configfs / "target/core" / HBA / f"dev_{own}"
    assert read(target / "attrib/dev_config") == f"overlaybd/{obd.config_path(own)}"
    assert read(target / "attrib/max_data_area_mb") == "4"
    assert read(target / "attrib/cmd_time_out") == COMMAND_TIMEOUT
    assert read(target / "enable") == "1"

    name = wwn(own)
    assert name == f"naa.199{own:013d}" and len(name) == len("naa.1990000000000128")
    tpg = obd.sim.configfs / "target/loopback" / name / "tpgt_1"
    assert read(tpg / "nexus") == name
    link = tpg / "lun/lun_0" / f"dev_{own}"
    assert link.is_symlink()
    assert link.resolve() == target.resolve()

    disk = Path(device).name
    assert read(obd.sim.sysfs / "block" / disk / "device/timeout") == COMMAND_TIMEOUT


async def test_device_config_is_rewritten_only_when_it_changes(obd: Obd, images: Images) -> None:
    top_chain, top = await obd.unpack_top(images.single)
    await obd.prepare("c1", top_chain)
    before = os.stat(obd.config_path(top))
    await obd.prepare("c2", top_chain)
    await obd.view("v1", top_chain)
    after = os.stat(obd.config_path(top))
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    # A change is written (atomically: a new file, mode 0600).
    await obd.prepare("c3", top_chain, {RECORD_TRACE: "yes", RECORD_TRACE_PATH: "/tmp/obd.trace"})
    changed = os.stat(obd.config_path(top))
    assert changed.st_ino != before.st_ino
    assert changed.st_mode & 0o777 == 0o600
    assert sorted(p.name for p in obd.block(top).iterdir() if p.name.startswith(".")) == []


async def test_remove_after_a_restart_detaches_the_device(
    writable_rootfs: WritableRootfs,
) -> None:
    """Detaching needs nothing kept in memory: a new obdsnap process does it."""
    rootfs = await writable_rootfs(files={})
    obd, own = rootfs.obd, rootfs.id
    obd.assert_attached(own, mounted="rw")
    await obd.restart(kill=True)
    await obd.remove("rootfs")
    obd.assert_detached(own)
    assert obd.sim.loop_devices() == []


async def test_symlinks_planted_in_a_snapshots_block_dir_are_replaced_not_followed(
    writable_rootfs: WritableRootfs, tmp_path: Path
) -> None:
    """obdsnap is root: its mark, result file and mount must never land where a link points."""
    rootfs = await writable_rootfs()
    obd, own = rootfs.obd, rootfs.id
    obd.detach_like_reboot(own)
    victim_file = tmp_path / "victim-file"
    victim_file.write_text("precious")
    victim_dir = tmp_path / "victim-dir"
    victim_dir.mkdir()
    (victim_dir / "keep").write_text("keep")
    block = obd.block(own)
    for name in ("backstore_mark", "init-debug.log"):
        (block / name).unlink(missing_ok=True)
        (block / name).symlink_to(victim_file)
    obd.mountpoint(own).rmdir()
    obd.mountpoint(own).symlink_to(victim_dir)
    # The re-attach writes the result file and the mark and mounts: none through a link.
    assert await obd.mounts("rootfs") == rootfs.mounts
    assert victim_file.read_text() == "precious"
    assert mount_at(victim_dir) is None
    assert sorted(os.listdir(victim_dir)) == ["keep"]
    for path in (block / "backstore_mark", block / "init-debug.log", obd.mountpoint(own)):
        assert not path.is_symlink(), path
    obd.assert_attached(own, mounted="rw")
    rootfs.assert_holds()
