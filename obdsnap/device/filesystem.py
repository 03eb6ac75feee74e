"""The filesystem on an overlaybd device: which one, how to make it, how to mount it.

The ``blob-fs-type`` label is ``fstype[;mount-options[;mkfs-options]]`` (default
ext4). Its fields are parsed into an allow-listed form and handed to mkfs and
mount as separate arguments, never to a shell.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from obdsnap import labels as L
from obdsnap.blocking import BlockingRunner
from obdsnap.commands import CommandError, run_command
from obdsnap.device import syscalls
from obdsnap.errors import InvalidArgument

# Mounted by a userspace helper (mount.ntfs...), which only the mount command runs.
HELPER_MOUNTED = frozenset({"ntfs"})

_blocking = BlockingRunner()
_OPTION = re.compile(r"^[A-Za-z0-9_.,:=/+^-]+$")


@dataclass(frozen=True)
class FsDefaults:
    mkfs_options: tuple[str, ...]
    mount_options: tuple[str, ...]


FILESYSTEMS: dict[str, FsDefaults] = {
    "ext4": FsDefaults(
        ("-O", "^has_journal,sparse_super,flex_bg", "-G", "1", "-E", "discard", "-F"), ("discard",)
    ),
    "xfs": FsDefaults(("-f", "-l", "size=4m", "-m", "crc=0"), ("nouuid", "discard")),
    "f2fs": FsDefaults(("-S", "-w", "4096"), ()),
    "ntfs": FsDefaults(("-F", "-f"), ()),
    "erofs": FsDefaults((), ()),  # read-only: images hold it, obdsnap never makes one
}


@dataclass(frozen=True)
class FsSpec:
    fs_type: str = "ext4"
    mount_options: tuple[str, ...] = FILESYSTEMS["ext4"].mount_options
    mkfs_options: tuple[str, ...] = FILESYSTEMS["ext4"].mkfs_options


def fs_spec(labels: Mapping[str, str]) -> FsSpec:
    """The filesystem a layer's ``blob-fs-type`` label asks for (InvalidArgument if unusable)."""
    value = labels.get(L.BLOB_FS_TYPE, "")
    if not value:
        return FsSpec()
    fields = value.split(";")
    if len(fields) > 3:
        raise InvalidArgument(f"{L.BLOB_FS_TYPE}: at most 3 fields, got {value!r}")
    fs_type = fields[0]
    defaults = FILESYSTEMS.get(fs_type)
    if defaults is None:
        raise InvalidArgument(
            f"{L.BLOB_FS_TYPE}: filesystem {fs_type!r} is not one of {', '.join(FILESYSTEMS)}"
        )
    mount_options = defaults.mount_options
    if len(fields) > 1:
        mount_options = tuple(option for option in fields[1].split(",") if option)
    mkfs_options = defaults.mkfs_options
    if len(fields) > 2:
        mkfs_options = tuple(option for option in fields[2].split(" ") if option)
    for option in (*mount_options, *mkfs_options):
        if not _OPTION.match(option):
            raise InvalidArgument(f"{L.BLOB_FS_TYPE}: option {option!r} is not allowed")
    return FsSpec(fs_type, mount_options, mkfs_options)


def spec_for(fs_type: str) -> FsSpec:
    """A file system with its default options (none for one obdsnap has no defaults for)."""
    defaults = FILESYSTEMS.get(fs_type)
    if defaults is None:
        return FsSpec(fs_type, (), ())
    return FsSpec(fs_type, defaults.mount_options, defaults.mkfs_options)


async def make_filesystem(device: Path, spec: FsSpec) -> None:
    await run_command("mkfs", "-t", spec.fs_type, *spec.mkfs_options, str(device))


# mkfs.ext4 makes /lost+found, but a fresh snapshot is empty (e2fsck recreates it).


async def remove_lost_and_found_unmounted(device: Path, spec: FsSpec) -> None:
    """From a filesystem nothing mounts: debugfs (slow: a fresh rw mount uses the one below)."""
    if spec.fs_type == "ext4":
        await run_command("debugfs", "-w", "-R", "rmdir lost+found", str(device))


def remove_lost_and_found(mountpoint: Path, spec: FsSpec) -> None:
    """Blocking: from the fresh filesystem mounted read-write on ``mountpoint``."""
    if spec.fs_type == "ext4":
        with contextlib.suppress(FileNotFoundError):
            (mountpoint / "lost+found").rmdir()


async def flush_device(device: Path) -> None:
    """Write back the device's buffers and the filesystem on it, wherever it is mounted:
    BLKFLSBUF in the executor, as ``blockdev --flushbufs`` would, without its process."""
    try:
        await _blocking(syscalls.flush_buffers, device)
    except OSError as exc:
        message = f"blockdev --flushbufs {device}: {exc.strerror}"
        raise CommandError(("blockdev",), message, str(exc.strerror)) from exc


async def mount_device(device: Path, mountpoint: Path, spec: FsSpec, *, readonly: bool) -> None:
    """mount(2) in the executor; the mount command for a filesystem that needs a helper."""
    options = [*spec.mount_options, "ro" if readonly else "rw"]
    if spec.fs_type in HELPER_MOUNTED:
        await run_command(
            "mount", "-t", spec.fs_type, "-o", ",".join(options), str(device), str(mountpoint)
        )
        return
    try:
        await _blocking(syscalls.mount, device, mountpoint, spec.fs_type, options)
    except OSError as exc:
        message = f"mount {device} {mountpoint} ({spec.fs_type}): {exc.strerror}"
        raise CommandError(("mount",), message, str(exc.strerror)) from exc


async def unmount(mountpoint: Path) -> None:
    """umount2(2) in the executor, without flags: what umount(8) does."""
    try:
        await _blocking(syscalls.umount, mountpoint)
    except OSError as exc:
        message = f"umount {mountpoint}: {exc.strerror}"
        raise CommandError(("umount",), message, str(exc.strerror)) from exc
