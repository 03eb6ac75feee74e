"""Blocking filesystem helpers; callers run them in an executor, never on the event loop."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
import tempfile
from pathlib import Path

from obdsnap.mountinfo import mounts_under
from obdsnap.storage import Usage

log = logging.getLogger(__name__)


def disk_usage(path: Path, skip: frozenset[str] = frozenset()) -> Usage:
    """Blocks used and inodes of a tree, the tree's root included; hard links count once.

    Entries below the root named in ``skip`` are left out with all they hold.
    """
    seen: set[tuple[int, int]] = set()
    size = 0
    pending = [str(path)]
    while pending:
        current = pending.pop()
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            continue
        identity = (st.st_dev, st.st_ino)
        if identity in seen:
            continue
        seen.add(identity)
        size += st.st_blocks * 512
        if stat.S_ISDIR(st.st_mode):
            try:
                with os.scandir(current) as entries:
                    pending.extend(entry.path for entry in entries if entry.name not in skip)
            except FileNotFoundError:
                continue
    return Usage(size=size, inodes=len(seen))


def remove_tree(path: Path) -> None:
    """Remove a directory tree; parts of it (or all) that are already gone are fine.

    A tree with something mounted inside is refused (EBUSY): deleting through a
    mount would destroy the mounted filesystem's contents, e.g. a device's.
    """
    busy = mounts_under(path)
    if busy:
        raise OSError(errno.EBUSY, f"{busy[0]} is mounted", str(path))
    if not path.is_dir() or path.is_symlink():
        path.unlink(missing_ok=True)
        return
    shutil.rmtree(path, onerror=_ignore_vanished)


def _ignore_vanished(
    function: object, path: str, exc_info: tuple[type, BaseException, object]
) -> None:
    if not isinstance(exc_info[1], FileNotFoundError):
        raise exc_info[1]


def write_file_no_follow(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Blocking: replace the contents of ``path``; a symlink there is replaced, never followed.

    obdsnap runs as root: a symlink planted under its root must not turn one of
    its writes into a write to, say, /etc/passwd.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        descriptor = os.open(path, flags, mode)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        log.warning("%s was a symlink (to %s): replaced", path, os.readlink(path))
        os.unlink(path)
        descriptor = os.open(path, flags | os.O_EXCL, mode)
    try:
        os.write(descriptor, data)
    finally:
        os.close(descriptor)


def write_file_durably(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Blocking: replace ``path`` with ``data``, atomically and durably.

    After a crash, a SIGKILL as much as a power loss, ``path`` holds its old contents
    or all of the new ones, never a part: a record a restart reads must never be
    half a record. Like a rename, this replaces a symlink at ``path``, never follows it.
    """
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as out:
            os.fchmod(out.fileno(), mode)
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
    fsync_path(path.parent)


def fsync_path(path: Path) -> None:
    """Blocking: fsync a file or a directory (after a rename in it)."""
    descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def make_real_directory(path: Path, mode: int) -> None:
    """Blocking: ``path`` as a directory of its own; a symlink or file there is replaced.

    A mount follows a symlinked mountpoint: it must never land where a link points.
    """
    try:
        if stat.S_ISDIR(os.lstat(path).st_mode):
            return
        log.warning("%s was not a directory: replaced", path)
        os.unlink(path)
    except FileNotFoundError:
        pass
    os.mkdir(path, mode)
