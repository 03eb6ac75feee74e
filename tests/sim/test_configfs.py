"""configfs semantics of the simulator: what the kernel allows and refuses."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from obdsnap.device.tcmu import dev_config
from tcmusim.testing import RunningSimulator

from .protocol import HBA, Protocol, Snapshot, must, read_attr, write_attr, write_config, wwn

pytestmark = pytest.mark.root


def expect_errno(code: int, action: Callable[..., object], *args: object) -> None:
    with pytest.raises(OSError) as caught:
        action(*args)
    assert caught.value.errno == code, (
        f"{errno.errorcode[caught.value.errno or 0]} != {errno.errorcode[code]}"
    )


def test_initial_tree(sim: RunningSimulator, proto: Protocol) -> None:
    target = sim.configfs / "target"
    assert sorted(os.listdir(target)) == ["core", "dbroot", "loopback", "version"]
    assert (target / "loopback").is_dir()
    assert "Loopback" in read_attr(target / "loopback/version")
    for sub in ("class/scsi_device", "block"):
        assert (sim.sysfs / sub).is_dir()


def test_mkdir_device_creates_its_attributes(sim: RunningSimulator, proto: Protocol) -> None:
    target = proto.target_dir(1)
    os.makedirs(target, exist_ok=True)  # MkdirAll: creates the HBA too
    try:
        names = set(os.listdir(target))
        assert {"control", "enable", "info", "attrib"} <= names
        assert (target / "attrib").is_dir()
        assert read_attr(target / "attrib/cmd_time_out") == "30\n"
        assert read_attr(target / "enable") == "0\n"
        assert "DEACTIVATED" in read_attr(target / "info")
        expect_errno(errno.EEXIST, os.mkdir, target)
        os.makedirs(target, exist_ok=True)
        write_attr(target / "attrib/cmd_time_out", "2147483")
        assert read_attr(target / "attrib/cmd_time_out") == "2147483\n"
        expect_errno(errno.EINVAL, write_attr, target / "attrib/cmd_time_out", "soon")
    finally:
        os.rmdir(target)
    assert not target.exists()


def test_attribute_files_are_fixed(sim: RunningSimulator, proto: Protocol) -> None:
    target = proto.target_dir(2)
    os.makedirs(target)
    try:
        expect_errno(errno.EACCES, os.open, target / "new_attr", os.O_WRONLY | os.O_CREAT, 0o644)
        expect_errno(errno.EPERM, os.unlink, target / "control")
        expect_errno(errno.EPERM, os.rename, target / "enable", target / "enabled")
        expect_errno(errno.EACCES, os.open, target / "control", os.O_RDONLY)  # write-only
        expect_errno(errno.EACCES, os.open, target / "info", os.O_WRONLY)  # read-only
        expect_errno(errno.EPERM, os.mkdir, target / "attrib/extra")
        expect_errno(errno.EPERM, os.rmdir, target / "attrib")
        with open(target / "control", "w") as f:  # O_TRUNC on an attribute is fine
            f.write("max_data_area_mb=4")
        expect_errno(errno.ENOTEMPTY, os.rmdir, target.parent)
    finally:
        os.rmdir(target)


def test_enable_needs_a_config(sim: RunningSimulator, proto: Protocol) -> None:
    target = proto.target_dir(3)
    os.makedirs(target)
    try:
        expect_errno(errno.EINVAL, write_attr, target / "enable", "1")
        expect_errno(errno.EINVAL, write_attr, target / "enable", "0")
        write_attr(target / "control", f"dev_config=overlaybd/{sim.root}/missing.json")
        expect_errno(errno.EIO, write_attr, target / "enable", "1")
        assert read_attr(target / "enable") == "0\n"
    finally:
        os.rmdir(target)


def test_dev_config_is_cut_like_the_kernel_does(sim: RunningSimulator, proto: Protocol) -> None:
    target = proto.target_dir(4)
    os.makedirs(target)
    try:
        long_path = "/" + "x" * 300
        write_attr(target / "control", f"dev_config=overlaybd{long_path}")
        config = read_attr(target / "attrib/dev_config").rstrip("\n")
        assert len(config) == 255
        # Bytes, not characters: 245 "é" after "overlaybd/" cut 255 bytes inside one.
        write_attr(target / "control", "dev_config=overlaybd/" + "é" * 245)
        config = read_attr(target / "attrib/dev_config").rstrip("\n")
        assert config == "overlaybd/" + "é" * 122 + "\ufffd"
        assert config == dev_config(Path("é" * 245))
    finally:
        os.rmdir(target)


def test_invalid_json_fails_without_result(
    sim: RunningSimulator, proto: Protocol, tmp_path: Path
) -> None:
    snap = Snapshot(tmp_path / "s").make()
    snap.config.write_text("{not json")
    proto.create(5, snap.config)
    try:
        expect_errno(errno.EIO, proto.enable, 5)
        assert snap.result.read_text() == ""
    finally:
        proto.detach(5)


def test_loopback_target_address_appears_with_the_nexus(
    sim: RunningSimulator, proto: Protocol
) -> None:
    lun = proto.lun_dir(6)
    os.makedirs(lun)  # tpgt_1 comes with lun/, which MkdirAll then finds
    tpgt = proto.tpgt_dir(6)
    try:
        assert {"lun", "nexus", "acls"} <= set(os.listdir(tpgt))
        assert not (tpgt / "address").exists()
        expect_errno(errno.ENODEV, read_attr, tpgt / "nexus")
        expect_errno(errno.EINVAL, write_attr, tpgt / "nexus", "iqn.2003-01.org.x:1")
        write_attr(tpgt / "nexus", wwn(6))
        address = read_attr(tpgt / "address")
        host, channel, target = address.strip().split(":")
        assert (channel, target) == ("0", "1") and address.endswith("\n")
        assert read_attr(tpgt / "nexus") == wwn(6) + "\n"
        expect_errno(errno.EEXIST, write_attr, tpgt / "nexus", wwn(6))
        # Another WWN is another SCSI host.
        other = proto.lun_dir(7)
        os.makedirs(other)
        write_attr(proto.tpgt_dir(7) / "nexus", wwn(7))
        assert read_attr(proto.tpgt_dir(7) / "address").split(":")[0] != host
        assert (sim.sysfs / "class/scsi_host" / f"host{host}").exists()
    finally:
        proto.detach(6)
        proto.detach(7)
    assert not proto.loopback_dir(6).exists()
    assert not (sim.sysfs / "class/scsi_host" / f"host{host}").exists()


def test_loopback_names_are_checked(sim: RunningSimulator, proto: Protocol) -> None:
    loopback = sim.configfs / "target/loopback"
    expect_errno(errno.EINVAL, os.mkdir, loopback / "bogus")
    os.mkdir(loopback / wwn(8))
    try:
        expect_errno(errno.EINVAL, os.mkdir, loopback / wwn(8) / "tpg1")
        os.mkdir(loopback / wwn(8) / "tpgt_1")
        expect_errno(errno.EINVAL, os.mkdir, loopback / wwn(8) / "tpgt_1/lun/0")
        expect_errno(errno.ENOTEMPTY, os.rmdir, loopback / wwn(8))
    finally:
        proto.detach(8)
    expect_errno(errno.EINVAL, os.mkdir, sim.configfs / "target/core/iblock_0")
    expect_errno(errno.EPERM, os.mkdir, sim.configfs / "target/core/alua/x")


def test_lun_link_needs_an_enabled_device(sim: RunningSimulator, proto: Protocol) -> None:
    os.makedirs(proto.target_dir(9))
    os.makedirs(proto.lun_dir(9))
    try:
        link = proto.lun_dir(9) / "dev_9"
        expect_errno(errno.ENODEV, os.symlink, proto.target_dir(9), link)
        expect_errno(errno.EPERM, os.symlink, "/etc", link)
        expect_errno(errno.ENOENT, os.symlink, sim.configfs / "target/core/nope", link)
        expect_errno(errno.EPERM, os.unlink, proto.tpgt_dir(9) / "nexus")
    finally:
        proto.detach(9)
    assert not (sim.configfs / "target/core" / HBA / "dev_9").exists()


def test_lun_link_lifecycle(sim: RunningSimulator, proto: Protocol, tmp_path: Path) -> None:
    snap = Snapshot(tmp_path / "s").make()
    must(sim.tools_dir / "overlaybd-create", snap.data, snap.index, "1")
    write_config(snap.config, upper=snap.upper(), result_file=snap.result)
    proto.create(10, snap.config)
    proto.enable(10)
    address = proto.export(10)
    try:
        link = proto.lun_dir(10) / "dev_10"
        assert os.readlink(link) == "../../../../../core/user_999999999/dev_10"
        assert os.path.realpath(link) == str(proto.target_dir(10))
        expect_errno(errno.EEXIST, os.symlink, proto.target_dir(10), proto.lun_dir(10) / "again")
        expect_errno(errno.EBUSY, os.rmdir, proto.target_dir(10))
        expect_errno(errno.ENOTEMPTY, os.rmdir, proto.lun_dir(10))
        expect_errno(errno.EPERM, write_attr, proto.tpgt_dir(10) / "nexus", "NULL")
        expect_errno(errno.EINVAL, write_attr, proto.target_dir(10) / "attrib/cmd_time_out", "5")
        expect_errno(errno.EEXIST, write_attr, proto.target_dir(10) / "enable", "1")
        expect_errno(
            errno.EINVAL, write_attr, proto.target_dir(10) / "control", "max_data_area_mb=8"
        )
        name = proto.wait_disk(address)
        assert (sim.sysfs / "block" / name / "device/timeout").read_text() == "30\n"
        # A relative link target works as well.
        os.unlink(link)
        assert proto.find_disk(address) is None
        os.symlink("../../../../../core/user_999999999/dev_10", link)
        assert proto.wait_disk(address) == name
    finally:
        proto.detach(10)
    assert proto.find_disk(address) is None
    assert sim.loop_devices() == []
