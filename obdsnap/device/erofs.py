"""EROFS on this host: whether a device holds one, and whether the kernel can mount one.

EROFS is read-only: an image that holds it is never mkfs'ed and never mounted
read-write (DESIGN-v1 §11, §14).
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
from pathlib import Path

from obdsnap.blocking import BlockingRunner
from obdsnap.commands import run_command
from obdsnap.device.filesystem import FsSpec, spec_for
from obdsnap.errors import FailedPrecondition, SnapshotError

log = logging.getLogger(__name__)

EROFS = "erofs"
EROFS_MAGIC = 0xE0F5E1E2
SUPERBLOCK_OFFSET = 1024
_MAGIC = struct.Struct("<I")
PROC_FILESYSTEMS_LINE = "\terofs"  # /proc/filesystems names block filesystems after a tab


def has_erofs_magic(device: Path) -> bool:
    """Blocking: whether the device's little-endian u32 at byte 1024 is the EROFS magic.

    An unreadable device says no, as Go's ``IsErofsFilesystem`` does: the
    filesystem the labels chose is mounted, and its mount says what is wrong.
    """
    try:
        descriptor = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        log.debug("%s: not sniffed for EROFS: %s", device, exc)
        return False
    try:
        raw = os.pread(descriptor, _MAGIC.size, SUPERBLOCK_OFFSET)
    except OSError as exc:
        log.debug("%s: not sniffed for EROFS: %s", device, exc)
        return False
    finally:
        os.close(descriptor)
    return len(raw) == _MAGIC.size and _MAGIC.unpack(raw)[0] == EROFS_MAGIC


def sniffed(spec: FsSpec, *, erofs_found: bool) -> FsSpec:
    """The spec after the sniff: EROFS when the device holds it, else as chosen."""
    if erofs_found and spec.fs_type != EROFS:
        return spec_for(EROFS)
    return spec


def refuse_writable_erofs(snapshot_id: int, spec: FsSpec) -> None:
    """EROFS is read-only: no writable layer (rwMode dir/dev) on it, and no mkfs."""
    if spec.fs_type == EROFS:
        raise FailedPrecondition(
            f"snapshot {snapshot_id}: the image's file system is erofs, which is read-only: "
            "a writable layer (rwMode dir or dev) cannot be used on it"
        )


def lists_erofs(proc_filesystems: Path) -> bool:
    """Blocking: whether the kernel's filesystem list has EROFS; an unreadable list has not."""
    try:
        text = proc_filesystems.read_text()
    except OSError as exc:
        log.warning("cannot read %s: %s", proc_filesystems, exc)
        return False
    return PROC_FILESYSTEMS_LINE in text.splitlines()


class ErofsKernel:
    """DESIGN-v1 §12 rule 4: the kernel's EROFS support, asked once per process.

    Not listed: the module is loaded (``modprobe erofs``) and the list read again.
    """

    def __init__(self, proc_filesystems: Path, modprobe: str, blocking: BlockingRunner) -> None:
        self._proc_filesystems = proc_filesystems
        self._modprobe = modprobe
        self._blocking = blocking
        self._lock = asyncio.Lock()
        self._supported: bool | None = None

    async def supported(self) -> bool:
        async with self._lock:
            if self._supported is None:
                self._supported = await self._check()
                log.info("kernel EROFS support: %s", "yes" if self._supported else "no")
            return self._supported

    async def _check(self) -> bool:
        if await self._blocking(lists_erofs, self._proc_filesystems):
            return True
        try:
            await run_command(self._modprobe, EROFS, time_limit_s=60.0)
        except SnapshotError as exc:
            log.warning("cannot load the erofs module: %s", exc)
        return await self._blocking(lists_erofs, self._proc_filesystems)
