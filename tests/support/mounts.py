"""Mounts as a test handles them: containerd's Mount messages, mount(8), the mount table.

The mount table is read by obdsnap's own reader (:mod:`obdsnap.mountinfo`).
"""

from __future__ import annotations

from pathlib import Path

from obdsnap.genproto.containerd.types import Mount
from obdsnap.mountinfo import MountEntry, mount_at, mounts_under
from support.processes import run

__all__ = [
    "MountEntry",
    "deepest_first",
    "mount",
    "mount_at",
    "mount_options",
    "mounts_under",
    "umount",
]


def mount_options(mount: Mount) -> dict[str, str]:
    """The options of a mount by key; a flag without ``=`` maps to ""."""
    return {key: value for key, _, value in (option.partition("=") for option in mount.options)}


def mount(spec: Mount, target: Path, cwd: Path | None = None) -> None:
    """Mount one containerd Mount on ``target`` as containerd would (mount(8))."""
    target.mkdir(parents=True, exist_ok=True)
    options = ",".join(spec.options)
    if spec.type == "bind":
        run("mount", "-o", options, spec.source, target, cwd=cwd)
    else:
        run("mount", "-t", spec.type, "-o", options, spec.source, target, cwd=cwd)


def umount(target: Path | str, *, lazy: bool = False) -> None:
    run("umount", *(["-l"] if lazy else []), target)


def deepest_first(path: Path) -> list[str]:
    """Mount points at or below ``path``, the deepest first (the order to unmount them)."""
    return sorted(mounts_under(path), key=len, reverse=True)
