"""mount(2), umount2(2) and the BLKFLSBUF ioctl called directly, as the Go snapshotter does,
not through mount(8) or blockdev(8).

Options are split the way util-linux splits them: the generic ones become
``MS_*`` flags, every other one goes to the filesystem in the data string.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import os
from collections.abc import Iterable
from pathlib import Path
from typing import NoReturn

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_SYNCHRONOUS = 16
MS_REMOUNT = 32
MS_MANDLOCK = 64
MS_DIRSYNC = 128
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_REC = 16384
MS_SILENT = 32768
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MS_LAZYTIME = 1 << 25
BLKFLSBUF = 0x1261  # _IO(0x12, 97)

# option -> (whether it sets or clears the flags, the flags)
FLAG_OPTIONS: dict[str, tuple[bool, int]] = {
    "defaults": (True, 0),
    "ro": (True, MS_RDONLY),
    "rw": (False, MS_RDONLY),
    "nosuid": (True, MS_NOSUID),
    "suid": (False, MS_NOSUID),
    "nodev": (True, MS_NODEV),
    "dev": (False, MS_NODEV),
    "noexec": (True, MS_NOEXEC),
    "exec": (False, MS_NOEXEC),
    "sync": (True, MS_SYNCHRONOUS),
    "async": (False, MS_SYNCHRONOUS),
    "remount": (True, MS_REMOUNT),
    "mand": (True, MS_MANDLOCK),
    "nomand": (False, MS_MANDLOCK),
    "dirsync": (True, MS_DIRSYNC),
    "noatime": (True, MS_NOATIME),
    "atime": (False, MS_NOATIME),
    "nodiratime": (True, MS_NODIRATIME),
    "diratime": (False, MS_NODIRATIME),
    "bind": (True, MS_BIND),
    "rbind": (True, MS_BIND | MS_REC),
    "relatime": (True, MS_RELATIME),
    "norelatime": (False, MS_RELATIME),
    "strictatime": (True, MS_STRICTATIME),
    "nostrictatime": (False, MS_STRICTATIME),
    "lazytime": (True, MS_LAZYTIME),
    "nolazytime": (False, MS_LAZYTIME),
    "silent": (True, MS_SILENT),
    "loud": (False, MS_SILENT),
}

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.mount.argtypes = (
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)


def parse_options(options: Iterable[str]) -> tuple[int, str]:
    """The ``MS_*`` flags and the filesystem's data string of mount(8)-style options."""
    flags = 0
    data: list[str] = []
    for option in options:
        known = FLAG_OPTIONS.get(option)
        if known is None:
            data.append(option)
        elif known[0]:
            flags |= known[1]
        else:
            flags &= ~known[1]
    return flags, ",".join(data)


def mount(source: Path, target: Path, fs_type: str, options: Iterable[str]) -> None:
    """Blocking mount(2); OSError with the errno on failure."""
    flags, data = parse_options(options)
    result = _libc.mount(
        os.fsencode(source), os.fsencode(target), fs_type.encode(), flags, data.encode() or None
    )
    if result != 0:
        _raise_errno(target)


def umount(target: Path, flags: int = 0) -> None:
    """Blocking umount2(2); OSError with the errno on failure."""
    if _libc.umount2(os.fsencode(target), flags) != 0:
        _raise_errno(target)


def flush_buffers(device: Path) -> None:
    """Blocking BLKFLSBUF, what ``blockdev --flushbufs`` does: the filesystem on the device is
    synced wherever it is mounted, then the device's buffers written back and dropped."""
    descriptor = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(descriptor, BLKFLSBUF, 0)
    finally:
        os.close(descriptor)


def _raise_errno(path: Path) -> NoReturn:
    errno = ctypes.get_errno()
    raise OSError(errno, os.strerror(errno), str(path))
