"""Reading /proc/self/mountinfo: is a path mounted, and does an overlay use it."""

from __future__ import annotations

import re
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


def read_mounts(mountinfo: Path = MOUNTINFO) -> list[MountEntry]:
    """Blocking: the current mount table."""
    return [entry for line in mountinfo.read_text().splitlines() if (entry := parse_line(line))]


def is_mounted(path: Path, mountinfo: Path = MOUNTINFO) -> bool:
    """Blocking: whether something is mounted exactly on ``path``."""
    return mounted_source(path, mountinfo) is not None


def mounted_source(path: Path, mountinfo: Path = MOUNTINFO) -> str | None:
    """Blocking: the source of what is mounted on ``path`` (the topmost mount), if any."""
    entry = mount_at(path, mountinfo)
    return None if entry is None else entry.source


def mount_at(path: Path, mountinfo: Path = MOUNTINFO) -> MountEntry | None:
    """Blocking: the topmost mount exactly on ``path``, if any."""
    target = str(path)
    entries = [entry for entry in read_mounts(mountinfo) if entry.mount_point == target]
    return entries[-1] if entries else None


def mounts_under(path: Path, mountinfo: Path = MOUNTINFO) -> list[str]:
    """Blocking: mount points at or below ``path``."""
    top = str(path).rstrip("/")
    return [
        entry.mount_point
        for entry in read_mounts(mountinfo)
        if entry.mount_point == top or entry.mount_point.startswith(top + "/")
    ]


def overlay_uses(path: Path, mountinfo: Path = MOUNTINFO) -> bool:
    """Blocking: whether an overlay mount has ``path`` in its options (e.g. as a lowerdir)."""
    target = str(path)
    return any(
        entry.fs_type == "overlay" and target in entry.super_options
        for entry in read_mounts(mountinfo)
    )


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
