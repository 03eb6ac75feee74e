"""The tree configfs serves: groups, their attribute files and links, and the tree lock.

What a directory *means* (a TCMU device, a loopback target, ...) is up to the
:class:`Group` subclasses in :mod:`tcmusim.target`, :mod:`tcmusim.tcmu` and
:mod:`tcmusim.tcmloop`; the hooks below are where they refuse or accept a
change. :mod:`tcmusim.configfs` serves the tree over FUSE with configfs's rules.
"""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from tcmusim.fusemount import fs_error

TREE_LOCK = threading.RLock()

Show = Callable[[], str]
Store = Callable[[str], None]


class Attribute:
    """A configfs attribute file."""

    def __init__(self, name: str, *, show: Show | None = None, store: Store | None = None) -> None:
        self.name = name
        self.show = show
        self.store = store
        self.mode = (0o444 if show else 0) | (0o200 if store else 0)


class Group:
    """A configfs directory: a group (user-made or default) with attributes and children."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.parent: Group | None = None
        self.children: dict[str, Group | Link] = {}
        self.attributes: dict[str, Attribute] = {}
        self.is_default = False
        self.incoming_links = 0
        self.dead = False
        self.mtime_ns = time.time_ns()

    # -- building ---------------------------------------------------------------

    def attribute(self, name: str, *, show: Show | None = None, store: Store | None = None) -> None:
        with TREE_LOCK:
            self.attributes[name] = Attribute(name, show=show, store=store)
            self.mtime_ns = time.time_ns()

    def remove_attribute(self, name: str) -> None:
        with TREE_LOCK:
            self.attributes.pop(name, None)
            self.mtime_ns = time.time_ns()

    def default_group(self, group: Group) -> Group:
        group.is_default = True
        group.parent = self
        self.children[group.name] = group
        return group

    # -- hooks for subclasses -----------------------------------------------------

    def make_group(self, name: str) -> Group:
        """mkdir of ``name`` in this group (tree lock held)."""
        raise fs_error(errno.EPERM)

    def before_drop(self) -> None:
        """rmdir of this group is about to happen: raise to refuse (tree lock held)."""

    def dropped(self) -> None:
        """This group was removed from the tree: release what it holds (no lock held)."""

    def allow_link(self, name: str, target: Group) -> None:
        """symlink ``name`` -> ``target`` in this group: raise to refuse (tree lock held)."""
        raise fs_error(errno.EPERM)

    def drop_link(self, name: str, target: Group) -> None:
        """The link ``name`` -> ``target`` is being removed (tree lock held)."""

    def link_dropped(self, name: str, target: Group) -> None:
        """The link ``name`` -> ``target`` was removed: release what it held (no lock held),
        before the unlink(2) returns."""

    # -- helpers ----------------------------------------------------------------------

    def path(self) -> str:
        parts: list[str] = []
        node: Group | None = self
        while node is not None and node.parent is not None:
            parts.append(node.name)
            node = node.parent
        return "/" + "/".join(reversed(parts))

    def holds_user_items(self) -> bool:
        """Whether rmdir must say ENOTEMPTY: anything but default groups, at any depth."""
        for child in self.children.values():
            if isinstance(child, Link) or not child.is_default or child.holds_user_items():
                return True
        return False

    def mark_dead(self) -> None:
        self.dead = True
        for child in self.children.values():
            if isinstance(child, Group):
                child.mark_dead()


@dataclass
class Link:
    name: str
    parent: Group
    target: Group
    mtime_ns: int
