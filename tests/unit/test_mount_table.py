"""The process's own mount table, kept until the kernel signals a change, and the stat(2)
answers to "is this device mounted here" (real mounts: needs root)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.mounts import deepest_first, umount
from support.processes import run

from obdsnap.mountinfo import (
    MountSnapshot,
    MountTable,
    device_mounted_on,
    is_mounted,
    mounted_source,
    mounts_under,
    overlay_uses,
)

pytestmark = pytest.mark.root


@pytest.fixture(autouse=True)
def unmount_leftovers(tmp_path: Path) -> Iterator[None]:
    yield
    for point in deepest_first(tmp_path):
        umount(point)


@pytest.fixture
def loop_device(tmp_path: Path, unmount_leftovers: None) -> Iterator[Path]:
    image = tmp_path / "disk.img"
    with image.open("wb") as f:
        f.truncate(16 << 20)
    run("mkfs.ext4", "-q", image)
    node = Path(run("losetup", "--find", "--show", image).stdout.strip())
    yield node
    run("losetup", "-d", node)


@pytest.fixture
def mountpoint(tmp_path: Path) -> Path:
    path = tmp_path / "block" / "mountpoint"
    path.mkdir(parents=True)
    return path


def test_a_device_mounted_on_the_path_is_seen(loop_device: Path, mountpoint: Path) -> None:
    assert not device_mounted_on(loop_device, mountpoint)
    run("mount", loop_device, mountpoint)
    assert device_mounted_on(loop_device, mountpoint)
    assert is_mounted(mountpoint)
    assert mounted_source(mountpoint) == str(loop_device)


def test_a_path_below_the_devices_mount_is_not_its_mountpoint(
    loop_device: Path, mountpoint: Path
) -> None:
    run("mount", loop_device, mountpoint)
    inner = mountpoint / "inner"
    inner.mkdir()
    assert not device_mounted_on(loop_device, inner)
    assert not is_mounted(inner)


def test_another_file_system_on_the_path_is_not_the_device(
    loop_device: Path, mountpoint: Path
) -> None:
    run("mount", loop_device, mountpoint)
    run("mount", "-t", "tmpfs", "tmpfs", mountpoint)
    assert not device_mounted_on(loop_device, mountpoint)
    assert is_mounted(mountpoint)
    assert mounted_source(mountpoint) == "tmpfs"


def test_a_bind_mount_of_the_same_file_system_is_mounted(tmp_path: Path, mountpoint: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    run("mount", "--bind", source, mountpoint)
    assert is_mounted(mountpoint)
    assert mounts_under(tmp_path) == [str(mountpoint)]


def test_a_bind_mount_of_the_devices_file_system_is_the_device(
    tmp_path: Path, loop_device: Path, mountpoint: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run("mount", loop_device, elsewhere)
    run("mount", "--bind", elsewhere, mountpoint)
    assert device_mounted_on(loop_device, mountpoint)


def test_after_umount_the_kept_table_sees_the_change(loop_device: Path, mountpoint: Path) -> None:
    table = MountTable()
    run("mount", loop_device, mountpoint)
    assert str(mountpoint) in [entry.mount_point for entry in table.snapshot().entries]
    assert device_mounted_on(loop_device, mountpoint)
    umount(mountpoint)
    assert str(mountpoint) not in [entry.mount_point for entry in table.snapshot().entries]
    assert not device_mounted_on(loop_device, mountpoint)
    assert not is_mounted(mountpoint)
    assert mounts_under(mountpoint.parent) == []


def test_an_unchanged_table_is_not_read_again(mountpoint: Path) -> None:
    table = MountTable()
    # Other processes of the host may mount meanwhile: a few tries to catch a quiet moment.
    assert any(table.snapshot() is table.snapshot() for _ in range(20))
    first = table.snapshot()
    run("mount", "-t", "tmpfs", "tmpfs", mountpoint)
    assert table.snapshot() is not first


class SlowTable(MountTable):
    """Always changed; its second reading waits until ``go`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.readings = 0
        self.go = threading.Event()

    def _changed(self) -> bool:
        return True

    def _read(self) -> MountSnapshot:
        self.readings += 1
        if self.readings == 2:
            self.go.wait(10)
        return super()._read()


def test_questions_that_waited_for_a_reading_share_the_next_one() -> None:
    table = SlowTable()
    table.snapshot()  # the first reading, at open
    first = threading.Thread(target=table.snapshot)
    first.start()  # the second reading, held up
    time.sleep(0.1)
    waiting = [threading.Thread(target=table.snapshot) for _ in range(5)]
    for thread in waiting:
        thread.start()
    time.sleep(0.2)  # all five asked before the held-up reading ends
    table.go.set()
    for thread in [first, *waiting]:
        thread.join(10)
    # Each of the five asked after the second reading began: one more reading for them all.
    assert table.readings == 3


def test_a_bind_mount_is_a_mount_root_for_statx_too(tmp_path: Path, mountpoint: Path) -> None:
    run("mount", "--bind", tmp_path / "block", mountpoint)
    assert is_mounted(mountpoint)
    assert not is_mounted(tmp_path / "block")
    assert not is_mounted(tmp_path / "missing")


def test_an_overlay_on_the_mountpoint_is_seen_until_it_goes(
    tmp_path: Path, mountpoint: Path
) -> None:
    upper, work, merged = (tmp_path / name for name in ("upper", "work", "merged"))
    for directory in (upper, work, merged):
        directory.mkdir()
    options = f"lowerdir={mountpoint},upperdir={upper},workdir={work}"
    assert not overlay_uses(mountpoint)
    run("mount", "-t", "overlay", "overlay", "-o", options, merged)
    assert overlay_uses(mountpoint)
    umount(merged)
    assert not overlay_uses(mountpoint)
