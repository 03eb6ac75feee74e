"""A configfs look-alike served over FUSE.

The generic rules of Linux configfs live here; the tree it serves (groups,
attributes, links) is :mod:`tcmusim.configtree`, and what a directory *means*
(a TCMU device, a loopback target, ...) is up to its :class:`Group` subclasses
in :mod:`tcmusim.target`, :mod:`tcmusim.tcmu` and :mod:`tcmusim.tcmloop`:

- ``mkdir`` asks the parent group to make the child (``make_group``); a new
  group arrives with its attribute files and default groups;
- attribute files can be read (``show``) and written (``store``, one call per
  write(2), whatever the offset), never created, removed or renamed;
- ``rmdir`` removes a user-made group holding nothing but its defaults
  (``ENOTEMPTY`` otherwise, ``EBUSY`` while a link points at it, ``EPERM`` for
  a default group);
- ``symlink`` inside a group that accepts links (``allow_link``) must point
  at a group of this tree; ``unlink`` removes only links;
- every read of an open file shows the value as it was at the first read.

Structure changes hold one tree lock; attribute stores run without it, so a
store that blocks (``enable``) only blocks its own writer.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import posixpath
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tcmusim.configtree import TREE_LOCK, Attribute, Group, Link
from tcmusim.fusemount import FuseOps, fs_error, traced

log = logging.getLogger("tcmusim.configfs")


@dataclass
class _AttrRef:
    group: Group
    attribute: Attribute


@dataclass
class _Handle:
    ref: _AttrRef
    buffer: bytes | None = None


Node = Group | Link | _AttrRef


class ConfigFS(FuseOps):
    """FUSE operations over a tree of :class:`Group` objects."""

    def __init__(self, root: Group, mountpoint: Path) -> None:
        super().__init__()
        self.root = root
        self.mountpoints = {str(mountpoint), str(mountpoint.resolve())}
        self._handles: dict[int, _Handle] = {}
        self._next_handle = itertools.count(1)
        self._handles_lock = threading.Lock()

    # -- resolution -----------------------------------------------------------------

    def _lookup(self, path: str) -> Node:
        node: Node = self.root
        for part in (p for p in path.split("/") if p):
            if not isinstance(node, Group):
                raise fs_error(errno.ENOTDIR)
            child = node.children.get(part)
            if child is not None:
                node = child
                continue
            attribute = node.attributes.get(part)
            if attribute is None:
                raise fs_error(errno.ENOENT)
            node = _AttrRef(node, attribute)
        return node

    def _parent_and_name(self, path: str) -> tuple[Group, str]:
        parent_path, name = posixpath.split(path.rstrip("/"))
        parent = self._lookup(parent_path)
        if not isinstance(parent, Group):
            raise fs_error(errno.ENOTDIR)
        return parent, name

    def _resolve_target(self, link_dir: str, target: str) -> Group:
        if target.startswith("/"):
            for mountpoint in self.mountpoints:
                if target == mountpoint or target.startswith(mountpoint.rstrip("/") + "/"):
                    inner = target[len(mountpoint) :] or "/"
                    break
            else:
                raise fs_error(errno.EPERM, "symlink target outside configfs")
        else:
            inner = posixpath.join(link_dir, target)
        inner = posixpath.normpath(inner)
        if inner.startswith("//"):
            inner = inner[1:]
        node = self._lookup(inner)
        while isinstance(node, Link):
            node = node.target
        if not isinstance(node, Group):
            raise fs_error(errno.ENOENT)
        return node

    # -- metadata -----------------------------------------------------------------------

    @traced(log, logging.DEBUG)
    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        with TREE_LOCK:
            node = self._lookup(path)
            if isinstance(node, Group):
                subdirs = sum(isinstance(c, Group) for c in node.children.values())
                mode, nlink, size, mtime = stat.S_IFDIR | 0o755, 2 + subdirs, 0, node.mtime_ns
            elif isinstance(node, Link):
                mode, nlink, mtime = stat.S_IFLNK | 0o777, 1, node.mtime_ns
                size = len(self._link_text(node))
            else:
                mode, nlink, size = stat.S_IFREG | node.attribute.mode, 1, 4096
                mtime = node.group.mtime_ns
        return {
            "st_mode": mode,
            "st_nlink": nlink,
            "st_size": size,
            "st_uid": 0,
            "st_gid": 0,
            "st_atime": mtime,
            "st_mtime": mtime,
            "st_ctime": mtime,
        }

    @traced(log, logging.DEBUG)
    def readdir(self, path: str, fh: int) -> list[str]:
        with TREE_LOCK:
            node = self._lookup(path)
            if not isinstance(node, Group):
                raise fs_error(errno.ENOTDIR)
            return [".", "..", *node.attributes, *node.children]

    @traced(log, logging.DEBUG)
    def readlink(self, path: str) -> str:
        with TREE_LOCK:
            node = self._lookup(path)
            if not isinstance(node, Link):
                raise fs_error(errno.EINVAL)
            return self._link_text(node)

    @staticmethod
    def _link_text(link: Link) -> str:
        # configfs answers a path relative to the link's directory.
        return posixpath.relpath(link.target.path(), link.parent.path())

    def statfs(self, path: str) -> dict[str, int]:
        return {"f_bsize": 4096, "f_frsize": 4096, "f_namemax": 255}

    def access(self, path: str, amode: int) -> int:
        with TREE_LOCK:
            self._lookup(path)
        return 0

    def chmod(self, path: str, mode: int) -> int:
        with TREE_LOCK:
            self._lookup(path)
        return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        with TREE_LOCK:
            self._lookup(path)
        return 0

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        with TREE_LOCK:
            self._lookup(path)
        return 0

    # -- structure ---------------------------------------------------------------------

    @traced(log)
    def mkdir(self, path: str, mode: int) -> int:
        with TREE_LOCK:
            parent, name = self._parent_and_name(path)
            if name in parent.children or name in parent.attributes:
                raise fs_error(errno.EEXIST)
            child = parent.make_group(name)
            child.parent = parent
            child.is_default = False
            parent.children[name] = child
            parent.mtime_ns = time.time_ns()
        return 0

    @traced(log)
    def rmdir(self, path: str) -> int:
        with TREE_LOCK:
            node = self._lookup(path)
            if not isinstance(node, Group):
                raise fs_error(errno.ENOTDIR)
            parent = node.parent
            if parent is None:
                raise fs_error(errno.EBUSY)
            if node.is_default:
                raise fs_error(errno.EPERM)
            if node.holds_user_items():
                raise fs_error(errno.ENOTEMPTY)
            if node.incoming_links:
                raise fs_error(errno.EBUSY)
            node.before_drop()
            del parent.children[node.name]
            parent.mtime_ns = time.time_ns()
            node.mark_dead()
        node.dropped()
        return 0

    @traced(log)
    def symlink(self, path: str, target: str) -> int:
        with TREE_LOCK:
            parent, name = self._parent_and_name(path)
            if name in parent.children or name in parent.attributes:
                raise fs_error(errno.EEXIST)
            group = self._resolve_target(posixpath.dirname(path.rstrip("/")) or "/", target)
            parent.allow_link(name, group)
            parent.children[name] = Link(name, parent, group, time.time_ns())
            group.incoming_links += 1
            parent.mtime_ns = time.time_ns()
        return 0

    @traced(log)
    def unlink(self, path: str) -> int:
        with TREE_LOCK:
            node = self._lookup(path)
            if isinstance(node, Group):
                raise fs_error(errno.EISDIR)
            if not isinstance(node, Link):
                raise fs_error(errno.EPERM)
            node.parent.drop_link(node.name, node.target)
            del node.parent.children[node.name]
            node.target.incoming_links -= 1
            node.parent.mtime_ns = time.time_ns()
        node.parent.link_dropped(node.name, node.target)
        return 0

    @traced(log)
    def create(self, path: str, mode: int, flags: int = 0) -> int:
        raise fs_error(errno.EACCES)

    @traced(log)
    def mknod(self, path: str, mode: int, dev: int) -> int:
        raise fs_error(errno.EPERM)

    @traced(log)
    def rename(self, old: str, new: str) -> int:
        raise fs_error(errno.EPERM)

    @traced(log)
    def link(self, path: str, target: str) -> int:
        raise fs_error(errno.EPERM)

    # -- attribute files -------------------------------------------------------------------

    @traced(log, logging.DEBUG)
    def open(self, path: str, flags: int) -> int:
        with TREE_LOCK:
            node = self._lookup(path)
        if isinstance(node, Group):
            raise fs_error(errno.EISDIR)
        if not isinstance(node, _AttrRef):
            raise fs_error(errno.ELOOP)
        access = flags & os.O_ACCMODE
        if access in (os.O_RDONLY, os.O_RDWR) and node.attribute.show is None:
            raise fs_error(errno.EACCES)
        if access in (os.O_WRONLY, os.O_RDWR) and node.attribute.store is None:
            raise fs_error(errno.EACCES)
        with self._handles_lock:
            handle = next(self._next_handle)
            self._handles[handle] = _Handle(node)
        return handle

    def _handle(self, fh: int) -> _Handle:
        with self._handles_lock:
            handle = self._handles.get(fh)
        if handle is None:
            raise fs_error(errno.EBADF)
        return handle

    @traced(log)
    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        handle = self._handle(fh)
        if handle.buffer is None:
            if handle.ref.group.dead:
                raise fs_error(errno.ENODEV)
            show = handle.ref.attribute.show
            if show is None:
                raise fs_error(errno.EACCES)
            handle.buffer = show().encode()
        return handle.buffer[offset : offset + size]

    @traced(log)
    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        handle = self._handle(fh)
        if handle.ref.group.dead:
            raise fs_error(errno.ENODEV)
        store = handle.ref.attribute.store
        if store is None:
            raise fs_error(errno.EACCES)
        try:
            text = data.decode()
        except UnicodeDecodeError as exc:
            raise fs_error(errno.EINVAL) from exc
        store(text)
        handle.buffer = None
        return len(data)

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        with TREE_LOCK:
            node = self._lookup(path)
        if isinstance(node, Group):
            raise fs_error(errno.EISDIR)
        return 0  # O_TRUNC on an attribute: configfs ignores it

    # No flush: its ENOSYS tells the kernel to send none on any later close(2), as
    # configfs needs none (a request less per attribute access).

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        return 0

    def release(self, path: str, fh: int) -> int:
        with self._handles_lock:
            self._handles.pop(fh, None)
        return 0
