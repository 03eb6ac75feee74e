"""The host's filesystems on a real loop device: mount(2)/umount2(2), mkfs and lost+found."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.mounts import mount_at
from support.processes import run

from obdsnap.commands import CommandError
from obdsnap.device.filesystem import FsSpec, mount_device, remove_lost_and_found, unmount
from obdsnap.device.mounter import HostMounter

pytestmark = pytest.mark.root


@pytest.fixture
def ext4_device(tmp_path: Path) -> Iterator[Path]:
    image = tmp_path / "disk.img"
    with image.open("wb") as file:
        file.truncate(64 << 20)
    run("mkfs.ext4", "-q", "-F", image)
    device = Path(run("losetup", "--find", "--show", image).stdout.strip())
    try:
        yield device
    finally:
        run("losetup", "-d", device)


@pytest.fixture
def mountpoint(tmp_path: Path) -> Iterator[Path]:
    point = tmp_path / "mnt"
    point.mkdir()
    yield point
    if mount_at(point) is not None:
        run("umount", point)


async def test_read_only_with_flag_and_filesystem_options(
    ext4_device: Path, mountpoint: Path
) -> None:
    spec = FsSpec("ext4", ("noatime", "nodev", "nosuid", "discard"), ())
    await mount_device(ext4_device, mountpoint, spec, readonly=True)
    entry = mount_at(mountpoint)
    assert entry is not None and entry.fs_type == "ext4" and entry.source == str(ext4_device)
    assert {"ro", "noatime", "nodev", "nosuid"} <= set(entry.options.split(","))
    assert "discard" in entry.super_options.split(",")
    await unmount(mountpoint)
    assert mount_at(mountpoint) is None


async def test_read_write_by_default(ext4_device: Path, mountpoint: Path) -> None:
    await mount_device(ext4_device, mountpoint, FsSpec(), readonly=False)
    entry = mount_at(mountpoint)
    assert entry is not None and "rw" in entry.options.split(",")
    (mountpoint / "file").write_text("written")
    await unmount(mountpoint)


async def test_a_bad_option_says_what_failed(ext4_device: Path, mountpoint: Path) -> None:
    spec = FsSpec("ext4", ("no_such_option",), ())
    with pytest.raises(CommandError) as caught:
        await mount_device(ext4_device, mountpoint, spec, readonly=True)
    assert str(caught.value) == f"mount {ext4_device} {mountpoint} (ext4): Invalid argument"
    assert caught.value.step == "mount" and caught.value.reason == "Invalid argument"
    assert mount_at(mountpoint) is None


async def test_unmounting_what_is_not_mounted_fails(mountpoint: Path) -> None:
    with pytest.raises(CommandError) as caught:
        await unmount(mountpoint)
    assert str(caught.value) == f"umount {mountpoint}: Invalid argument"
    assert caught.value.step == "umount"


@pytest.mark.parametrize("mounted_rw_next", [False, True])
async def test_a_fresh_ext4_root_is_empty_either_way(
    ext4_device: Path, mountpoint: Path, mounted_rw_next: bool
) -> None:
    """Without a read-write mount to come, debugfs empties it; with one, the mount does."""
    spec = FsSpec()
    await HostMounter().make_filesystem(ext4_device, spec, mounted_rw_next=mounted_rw_next)
    await mount_device(ext4_device, mountpoint, spec, readonly=False)
    assert names(mountpoint) == (["lost+found"] if mounted_rw_next else [])
    remove_lost_and_found(mountpoint, spec)
    assert names(mountpoint) == []
    remove_lost_and_found(mountpoint, spec)  # already gone: nothing to do
    await unmount(mountpoint)


def names(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))
