"""Loop devices: the real block devices under the simulated disks.

Bound and freed with the ioctls ``losetup --find --show`` and ``losetup --detach``
make (LOOP_CTL_GET_FREE, LOOP_CONFIGURE, LOOP_CLR_FD), without a process each:
a storm binds hundreds at once.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("tcmusim.loop")

# The lowest free device goes to every binder that asks at once: ours ask one at a time
# (two ioctls, no process), and one another process took first is tried around.
_SETUP_LOCK = threading.Lock()
_ATTEMPTS = 20
LOOP_JOURNAL = "loops.log"  # in the simulator's state dir
LOOP_CONTROL = "/dev/loop-control"
LOOP_CTL_GET_FREE = 0x4C82
LOOP_CONFIGURE = 0x4C0A
LOOP_CLR_FD = 0x4C01
LO_FLAGS_READ_ONLY = 1
# struct loop_config: fd, block_size, struct loop_info64 (device, inode, rdevice, offset,
# sizelimit, number, encrypt_type, encrypt_key_size, flags, file_name, crypt_name,
# encrypt_key, init[2]), reserved[8]
_LOOP_CONFIG = struct.Struct("=II5Q4I64s64s32s2Q8Q")
_GONE = frozenset({errno.ENXIO, errno.ENOENT, errno.ENODEV})


class LoopError(Exception):
    pass


@dataclass(frozen=True)
class LoopDevice:
    path: str  # /dev/loopN

    @property
    def name(self) -> str:
        return Path(self.path).name


def _loop_config(backing_fd: int, backing: str, offset: int, sizelimit: int, flags: int) -> bytes:
    name = os.fsencode(backing)[:63]
    return _LOOP_CONFIG.pack(
        backing_fd, 0, 0, 0, 0, offset, sizelimit, 0, 0, 0, flags, name, b"", b"", 0, 0,
        *[0] * 8,
    )  # fmt: skip


def _bind_free_device(config: bytes) -> LoopDevice:
    """A free loop device bound with ``config``; another binder's pick is tried around."""
    control = os.open(LOOP_CONTROL, os.O_RDWR | os.O_CLOEXEC)
    try:
        for attempt in range(1, _ATTEMPTS + 1):
            with _SETUP_LOCK:
                device = LoopDevice(f"/dev/loop{fcntl.ioctl(control, LOOP_CTL_GET_FREE)}")
                if _configured(device, config):
                    return device
            time.sleep(0.001 * attempt)
    finally:
        os.close(control)
    raise LoopError(f"no free loop device after {_ATTEMPTS} attempts")


def _configured(device: LoopDevice, config: bytes) -> bool:
    """Bind ``device`` with ``config``; false if someone bound it first."""
    loop = os.open(device.path, os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(loop, LOOP_CONFIGURE, config)
    except OSError as exc:
        if exc.errno != errno.EBUSY:
            raise
        return False
    finally:
        os.close(loop)
    return True


def attach(backing: str, *, offset: int, sizelimit: int, read_only: bool) -> LoopDevice:
    started = time.monotonic()
    try:
        backing_fd = os.open(backing, (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC)
        try:
            flags = LO_FLAGS_READ_ONLY if read_only else 0
            device = _bind_free_device(_loop_config(backing_fd, backing, offset, sizelimit, flags))
        finally:
            os.close(backing_fd)
    except OSError as exc:
        raise LoopError(f"loop device for {backing}: {exc.strerror}") from exc
    log.info(
        "loop %s <- %s (offset %d, size %d, %s) in %.1f ms",
        device.path,
        backing,
        offset,
        sizelimit,
        "ro" if read_only else "rw",
        (time.monotonic() - started) * 1000,
    )
    return device


def detach(device: LoopDevice) -> None:
    """Detach; a device still open (mounted) is left to autoclear by the kernel."""
    started = time.monotonic()
    try:
        loop = os.open(device.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.ioctl(loop, LOOP_CLR_FD)
        finally:
            os.close(loop)
    except OSError as exc:
        if exc.errno in _GONE:
            return
        raise LoopError(f"{device.path}: {exc.strerror}") from exc
    log.info("loop %s detached in %.1f ms", device.path, (time.monotonic() - started) * 1000)


class Journal:
    """An append-only record of the loop devices bound and freed (``attach DEV FILE``)."""

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._lock = threading.Lock()

    def _append(self, line: str) -> None:
        if self._path is None:
            return
        with self._lock, self._path.open("a") as f:
            f.write(line + "\n")

    def attached(self, device: LoopDevice, backing: str) -> None:
        self._append(f"attach {device.path} {os.path.realpath(backing)}")

    def detached(self, device: LoopDevice) -> None:
        self._append(f"detach {device.path}")


def journal_backing_files(path: Path) -> set[str]:
    """Every backing file a journal says was bound."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return set()
    return {line.split(" ", 2)[2] for line in lines if line.startswith("attach ")}


def backing_files() -> dict[str, str]:
    """Every bound loop device and its backing file (as the kernel reports it)."""
    found: dict[str, str] = {}
    for entry in Path("/sys/block").glob("loop*"):
        try:
            backing = (entry / "loop" / "backing_file").read_text().strip()
        except OSError:
            continue
        found[f"/dev/{entry.name}"] = backing
    return found


def devices_backed_under(*roots: Path) -> list[str]:
    """Loop devices whose backing file lies under one of ``roots``."""
    prefixes = [str(root.resolve()).rstrip("/") + "/" for root in roots]
    return sorted(
        device
        for device, backing in backing_files().items()
        if any(backing.startswith(prefix) for prefix in prefixes)
    )
