"""Reading /proc/self/mountinfo: is a path mounted, and does an overlay use it.

The process's own mount table is read once and kept until the kernel signals a
change (POLLPRI on the open file): a node may have thousands of mounts, and
reading them all costs milliseconds per question. A question that waited while
another thread read the table takes that reading, which began after it was asked,
so a hundred questions after one change cost one reading. Whether a path is
mounted on, and whether a given device is, is answered from statx(2) and stat(2)
where they can.
"""

from __future__ import annotations

import bisect
import ctypes
import ctypes.util
import errno
import functools
import itertools
import os
import re
import select
import threading
from dataclasses import dataclass
from pathlib import Path

MOUNTINFO = Path("/proc/self/mountinfo")
_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class MountEntry:
    mount_point: str
    fs_type: str
    source: str
    super_options: str
    options: str = ""  # the per-mount options: ro/rw, noatime...


_READ_CHUNK = 1 << 16
_AT_FDCWD = -100
_AT_SYMLINK_NOFOLLOW = 0x100
_AT_NO_AUTOMOUNT = 0x800
_STATX_TYPE = 0x1
_STATX_ATTR_MOUNT_ROOT = 0x2000
_STATX_SIZE = 256
_STATX_ATTRIBUTES = 8  # offset of stx_attributes (u64)
_STATX_ATTRIBUTES_MASK = 56  # offset of stx_attributes_mask (u64)

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_statx = getattr(_libc, "statx", None)


class MountSnapshot:
    """One reading of a mount table, with indexes made on first use: at thousands of
    mounts a scan per question costs milliseconds."""

    def __init__(self, entries: tuple[MountEntry, ...]) -> None:
        self.entries = entries

    @functools.cached_property
    def _topmost(self) -> dict[str, MountEntry]:
        return {entry.mount_point: entry for entry in self.entries}  # a later line is on top

    @functools.cached_property
    def _by_point(self) -> list[tuple[str, int]]:
        return sorted((entry.mount_point, index) for index, entry in enumerate(self.entries))

    @functools.cached_property
    def _overlay_options(self) -> tuple[str, ...]:
        return tuple(entry.super_options for entry in self.entries if entry.fs_type == "overlay")

    def mount_at(self, path: Path) -> MountEntry | None:
        return self._topmost.get(str(path))

    def mounts_under(self, path: Path) -> list[str]:
        """Mount points at or below ``path``, in the table's order."""
        top = str(path).rstrip("/")
        # ``top`` itself, then those below: from top + "/" up to top + "0" ("0" follows "/").
        found = sorted(
            self._indexes_between(top, top + "\0") + self._indexes_between(top + "/", top + "0")
        )
        return [self.entries[index].mount_point for index in found]

    def _indexes_between(self, low: str, high: str) -> list[int]:
        start = bisect.bisect_left(self._by_point, (low, -1))
        end = bisect.bisect_left(self._by_point, (high, -1))
        return [index for _, index in self._by_point[start:end]]

    def overlay_uses(self, path: Path) -> bool:
        target = str(path)
        return any(target in options for options in self._overlay_options)


class MountTable:
    """The mount table of ``/proc/self/mountinfo``, read again only after the kernel's
    mount-change signal. Safe to share between threads."""

    def __init__(self, path: Path = MOUNTINFO) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._owner = -1  # the process whose table is kept: a forked child reads its own
        self._descriptor = -1
        self._poller = select.poll()
        self._snapshot = MountSnapshot(())
        self._tickets = itertools.count()  # questions in the order they were asked
        self._read_after = -1  # the last ticket handed out before the kept reading began

    def snapshot(self) -> MountSnapshot:
        """Blocking: the mount table as it was at this call or later."""
        ticket = next(self._tickets)
        with self._lock:
            if self._owner != os.getpid():
                self._open()
            elif self._read_after < ticket and self._changed():
                self._reread()
            return self._snapshot

    def _reread(self) -> None:
        self._read_after = next(self._tickets)
        self._snapshot = self._read()

    def _open(self) -> None:
        # Opened before the first read: a change while reading is signalled by the next poll.
        self._descriptor = os.open(self._path, os.O_RDONLY | os.O_CLOEXEC)
        self._poller = select.poll()
        self._poller.register(self._descriptor, select.POLLPRI | select.POLLERR)
        self._owner = os.getpid()
        self._reread()

    def _changed(self) -> bool:
        return any(events & (select.POLLPRI | select.POLLERR) for _, events in self._poller.poll(0))

    def _read(self) -> MountSnapshot:
        os.lseek(self._descriptor, 0, os.SEEK_SET)
        chunks = []
        while chunk := os.read(self._descriptor, _READ_CHUNK):
            chunks.append(chunk)
        return MountSnapshot(parse_table(b"".join(chunks).decode(errors="surrogateescape")))


_OWN_TABLE = MountTable()


def read_mounts(mountinfo: Path = MOUNTINFO) -> list[MountEntry]:
    """Blocking: the current mount table (the process's own kept until it changes)."""
    return list(_snapshot(mountinfo).entries)


def _snapshot(mountinfo: Path) -> MountSnapshot:
    if mountinfo == MOUNTINFO:
        return _OWN_TABLE.snapshot()
    return MountSnapshot(parse_table(mountinfo.read_text()))


def parse_table(text: str) -> tuple[MountEntry, ...]:
    """The entries of a mountinfo file's text."""
    return tuple(entry for line in text.splitlines() if (entry := parse_line(line)))


def is_mounted(path: Path, mountinfo: Path = MOUNTINFO) -> bool:
    """Blocking: whether something is mounted exactly on ``path``.

    From stat(2) and statx(2) where the process's own table is asked: ``path`` on
    another file system than its parent, or the root of a mount (a bind mount of
    the same file system too); from the table where statx cannot tell.
    """
    if mountinfo == MOUNTINFO:
        if _crosses_mount(path):
            return True
        mount_root = _is_mount_root(path)
        if mount_root is not None:
            return mount_root
    return mounted_source(path, mountinfo) is not None


def _is_mount_root(path: Path) -> bool | None:
    """Blocking: whether ``path`` (not followed if a symlink) is the root of a mount;
    None where statx does not say (an old kernel or C library)."""
    if _statx is None:
        return None
    buffer = ctypes.create_string_buffer(_STATX_SIZE)
    flags = _AT_SYMLINK_NOFOLLOW | _AT_NO_AUTOMOUNT
    if _statx(_AT_FDCWD, os.fsencode(path), flags, _STATX_TYPE, buffer) != 0:
        return False if ctypes.get_errno() == errno.ENOENT else None
    supported = int.from_bytes(buffer.raw[_STATX_ATTRIBUTES_MASK:][:8], "little")
    if not supported & _STATX_ATTR_MOUNT_ROOT:
        return None
    attributes = int.from_bytes(buffer.raw[_STATX_ATTRIBUTES:][:8], "little")
    return bool(attributes & _STATX_ATTR_MOUNT_ROOT)


def device_mounted_on(device: Path, path: Path) -> bool:
    """Blocking: whether the topmost mount exactly on ``path`` is one of ``device``'s.

    From stat(2) when it decides: ``path`` is on another file system than the
    device's, or it is the root of a mount of it. Otherwise (a device node that is
    gone, the device mounted on the parent as well) from the mount table.
    """
    try:
        on_device = os.stat(path).st_dev == os.stat(device).st_rdev
    except OSError:
        return mounted_source(path) == str(device)
    if not on_device:
        return False
    return _crosses_mount(path) or mounted_source(path) == str(device)


def _crosses_mount(path: Path) -> bool:
    """Blocking: whether ``path`` is on another file system than its parent directory
    (a mount of the same file system, e.g. a bind mount, is not seen)."""
    try:
        return os.stat(path).st_dev != os.stat(path.parent).st_dev
    except OSError:
        return False


def mounted_source(path: Path, mountinfo: Path = MOUNTINFO) -> str | None:
    """Blocking: the source of what is mounted on ``path`` (the topmost mount), if any."""
    entry = mount_at(path, mountinfo)
    return None if entry is None else entry.source


def mount_at(path: Path, mountinfo: Path = MOUNTINFO) -> MountEntry | None:
    """Blocking: the topmost mount exactly on ``path``, if any."""
    return _snapshot(mountinfo).mount_at(path)


def mounts_under(path: Path, mountinfo: Path = MOUNTINFO) -> list[str]:
    """Blocking: mount points at or below ``path``."""
    return _snapshot(mountinfo).mounts_under(path)


def overlay_uses(path: Path, mountinfo: Path = MOUNTINFO) -> bool:
    """Blocking: whether an overlay mount has ``path`` in its options (e.g. as a lowerdir)."""
    return _snapshot(mountinfo).overlay_uses(path)


def parse_line(line: str) -> MountEntry | None:
    """One line of a mountinfo file; None for a line that is not one."""
    fields = line.split()
    try:
        separator = fields.index("-", 6)
    except ValueError:
        return None
    if len(fields) < separator + 3:
        return None
    fs_type, source = fields[separator + 1], fields[separator + 2]
    super_options = fields[separator + 3] if len(fields) > separator + 3 else ""
    return MountEntry(
        _unescape(fields[4]), fs_type, _unescape(source), _unescape(super_options), fields[5]
    )


def _unescape(field: str) -> str:
    return _OCTAL_ESCAPE.sub(lambda match: chr(int(match.group(1), 8)), field)
