"""Slow I/O: a FUSE passthrough that sleeps on every read and write.

A device opened while its ``slow_io_ms`` knob is set gets its loop device bound
to the backing file *through* this mount, so every block I/O that reaches the
backing file (direct_io: no page cache in between) waits the knob's current
value, re-read from the control file on each operation.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import itertools
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tcmusim.fusemount import FuseMount, FuseOps, fs_error

log = logging.getLogger("tcmusim.slowio")

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]


@dataclass
class _Exposed:
    real: str
    device: str
    writable: bool


class _SlowOps(FuseOps):
    def __init__(self, delay_for: Callable[[str], float]) -> None:
        super().__init__()
        self._delay_for = delay_for
        self._files: dict[str, _Exposed] = {}
        self._fds: dict[int, str] = {}
        self._lock = threading.Lock()

    def expose(self, name: str, entry: _Exposed) -> None:
        with self._lock:
            self._files[name] = entry

    def withdraw(self, name: str) -> None:
        with self._lock:
            self._files.pop(name, None)

    def _entry(self, path: str) -> _Exposed:
        with self._lock:
            entry = self._files.get(path.lstrip("/"))
        if entry is None:
            raise fs_error(errno.ENOENT)
        return entry

    def _sleep(self, fh: int) -> None:
        with self._lock:
            device = self._fds.get(fh, "")
        delay = self._delay_for(device)
        if delay > 0:
            time.sleep(delay)

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        if path == "/":
            return {"st_mode": stat.S_IFDIR | 0o755, "st_nlink": 2}
        entry = self._entry(path)
        st = os.stat(entry.real)
        mode = stat.S_IFREG | (0o644 if entry.writable else 0o444)
        return {
            "st_mode": mode,
            "st_nlink": 1,
            "st_size": st.st_size,
            "st_blocks": st.st_blocks,
            "st_atime": st.st_atime_ns,
            "st_mtime": st.st_mtime_ns,
            "st_ctime": st.st_ctime_ns,
        }

    def readdir(self, path: str, fh: int) -> list[str]:
        with self._lock:
            return [".", "..", *self._files]

    def open(self, path: str, flags: int) -> int:
        entry = self._entry(path)
        access = flags & os.O_ACCMODE
        if access != os.O_RDONLY and not entry.writable:
            raise fs_error(errno.EROFS)
        fd = os.open(entry.real, access)
        with self._lock:
            self._fds[fd] = entry.device
        return fd

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        self._sleep(fh)
        return os.pread(fh, size, offset)

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        self._sleep(fh)
        return os.pwrite(fh, data, offset)

    def fallocate(self, path: str, mode: int, offset: int, size: int, fh: int) -> int:
        if _libc.fallocate(fh, mode, offset, size) != 0:
            raise fs_error(ctypes.get_errno())
        return 0

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        raise fs_error(errno.EPERM)

    def flush(self, path: str, fh: int) -> int:
        return 0

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        if datasync:
            os.fdatasync(fh)
        else:
            os.fsync(fh)
        return 0

    def release(self, path: str, fh: int) -> int:
        with self._lock:
            self._fds.pop(fh, None)
        os.close(fh)
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        return {"f_bsize": 4096, "f_frsize": 4096, "f_namemax": 255}


class SlowIO:
    """The passthrough mount and the files exposed through it."""

    def __init__(self, mountpoint: Path, delay_for: Callable[[str], float]) -> None:
        self._ops = _SlowOps(delay_for)
        self._mount = FuseMount(self._ops, mountpoint, "tcmusim-slowio", "tcmusim-slowio")
        self._names = itertools.count(1)
        self.mountpoint = mountpoint

    def start(self) -> None:
        self._mount.start()

    def stop(self) -> None:
        self._mount.stop()

    def expose(self, real: str, device: str, *, writable: bool) -> str:
        name = f"{device}-{next(self._names)}"
        self._ops.expose(name, _Exposed(real, device, writable))
        log.info("%s: backing %s served slowly as %s", device, real, name)
        return str(self.mountpoint / name)

    def withdraw(self, exposed: str) -> None:
        self._ops.withdraw(Path(exposed).name)
