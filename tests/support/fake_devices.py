"""In-process stand-ins for the device backend and the mounter: no root, no kernel.

``FakeDeviceBackend`` keeps, per snapshot ID, what the TCMU backend keeps in
configfs: whether anything is set up (even half), the owner token recorded at
set-up, and whether the disk is there. Like overlaybd-tcmu it opens the
snapshot's device config and writes ``success`` or ``failed:<reason>`` to the
result file. ``FakeMounter`` keeps a mount table: mounts made through it, and
overlays a test adds as a container's rootfs would be.

Either can be told to fail at a step (``fail_at``); the failure is raised once,
at the next attach that gets there, as the real component would raise it.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from obdsnap.commands import CommandError
from obdsnap.device.backend import AttachError, DeviceTimeout, OpenFailed
from obdsnap.device.filesystem import FsSpec
from obdsnap.errors import SnapshotError
from obdsnap.layout import BlockDir

# The steps of an attach, in order, where the fakes can be told to fail.
BACKEND_STEPS = ("set-up", "open", "disk")
MOUNTER_STEPS = ("mkfs", "mount", "unmount")
OTHER_OWNER = "overlaybd//another/root/snapshots/7/block/config.v1.json"


@dataclass
class FakeDevice:
    owner: str | None  # None: set up, but no owner recorded yet (a set-up cut short)
    node: Path | None = None  # the disk, once it appeared


@dataclass
class FakeDeviceBackend:
    devices: dict[int, FakeDevice] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)  # step -> overlaybd's reason
    attaches: list[int] = field(default_factory=list)  # IDs of every completed set-up
    detaches: list[int] = field(default_factory=list)  # IDs of every tear-down that had work

    def fail_at(self, step: str, reason: str = "injected failure") -> None:
        """The next attach fails at ``step`` (one of BACKEND_STEPS)."""
        assert step in BACKEND_STEPS, step
        self.failures[step] = reason

    def set_up_by_other(self, snapshot_id: int, owner: str = OTHER_OWNER) -> None:
        """A device another snapshotter set up under the same ID: attached, its owner not ours."""
        self.devices[snapshot_id] = FakeDevice(owner, _node(snapshot_id))

    def leave_half_set_up(self, snapshot_id: int, owner: str | None = None) -> None:
        """What a set-up cut short leaves: entries, no disk (and no owner, unless given)."""
        self.devices[snapshot_id] = FakeDevice(owner)

    # ------------------------------------------------------------------ DeviceBackend

    def describe(self, snapshot_id: int) -> str:
        return f"fake device {snapshot_id}"

    async def attach(self, snapshot_id: int, block: BlockDir) -> Path:
        try:
            return self._attach(snapshot_id, block)
        except BaseException:
            self.devices.pop(snapshot_id, None)  # undone on failure, as TCMU's is
            raise

    def _attach(self, snapshot_id: int, block: BlockDir) -> Path:
        self._maybe_fail("set-up", lambda r: AttachError(f"cannot set up: {r}"), errno.EIO)
        device = self.devices.setdefault(snapshot_id, FakeDevice(None))
        device.owner = self.owner_token(block)
        block.result_file.write_text("")
        if not block.config.is_file():
            block.result_file.write_text("failed:config.v1.json not found")
            raise OpenFailed("overlaybd could not open the image: failed:config not found")
        reason = self.failures.pop("open", None)
        if reason is not None:
            block.result_file.write_text(f"failed:{reason}")
            raise OpenFailed(f"overlaybd could not open the image: failed:{reason}").add_context(
                reason=reason
            )
        block.result_file.write_text("success")
        if self.failures.pop("disk", None) is not None:
            raise DeviceTimeout(f"disk of {self.describe(snapshot_id)} did not appear")
        device.node = _node(snapshot_id)
        self.attaches.append(snapshot_id)
        return device.node

    async def detach(self, snapshot_id: int) -> None:
        if self.devices.pop(snapshot_id, None) is not None:
            self.detaches.append(snapshot_id)

    async def is_attached(self, snapshot_id: int) -> bool:
        device = self.devices.get(snapshot_id)
        return device is not None and device.node is not None

    async def has_entries(self, snapshot_id: int) -> bool:
        return snapshot_id in self.devices

    async def find_device(self, snapshot_id: int) -> Path | None:
        device = self.devices.get(snapshot_id)
        return device.node if device is not None else None

    async def owner(self, snapshot_id: int) -> str | None:
        device = self.devices.get(snapshot_id)
        return device.owner if device is not None else None

    def owner_token(self, block: BlockDir) -> str:
        return f"overlaybd/{block.config}"

    async def attached_ids(self) -> set[int]:
        return set(self.devices)

    def _maybe_fail(self, step: str, error: Callable[[str], SnapshotError], code: int) -> None:
        reason = self.failures.pop(step, None)
        if reason is not None:
            raise error(reason) from OSError(code, reason)

    def node(self, snapshot_id: int) -> Path:
        return _node(snapshot_id)


@dataclass(frozen=True)
class FakeMount:
    source: str
    target: Path
    fs_type: str
    options: str = ""


@dataclass
class FakeMounter:
    """A mount table in memory; mounts of a device need the device to be set up."""

    backend: FakeDeviceBackend
    table: list[FakeMount] = field(default_factory=list)
    filesystems: dict[Path, str] = field(default_factory=dict)  # node -> fs type made on it
    flushed: list[Path] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)

    def fail_at(self, step: str, reason: str = "injected failure") -> None:
        """The next ``step`` (one of MOUNTER_STEPS) fails as the command would."""
        assert step in MOUNTER_STEPS, step
        self.failures[step] = reason

    def add_overlay(self, target: Path, lowers: list[Path]) -> None:
        """An overlay mounted elsewhere (a container's rootfs) on ``lowers``."""
        lowerdir = ":".join(str(lower) for lower in lowers)
        self.table.append(FakeMount("overlay", target, "overlay", f"rw,lowerdir={lowerdir}"))

    def add_mount(self, source: str, target: Path, fs_type: str = "ext4") -> None:
        self.table.append(FakeMount(source, target, fs_type))

    def is_mounted(self, target: Path) -> bool:
        return self.mounted_source(target) is not None

    # ------------------------------------------------------------------ Mounter

    def mounted_source(self, path: Path) -> str | None:
        found = [mount.source for mount in self.table if mount.target == path]
        return found[-1] if found else None

    def device_mounted_on(self, device: Path, path: Path) -> bool:
        return self.mounted_source(path) == str(device)

    def mounts_under(self, path: Path) -> list[str]:
        return [str(m.target) for m in self.table if m.target == path or path in m.target.parents]

    def overlay_uses(self, path: Path) -> bool:
        return any(m.fs_type == "overlay" and str(path) in m.options for m in self.table)

    async def make_filesystem(self, device: Path, spec: FsSpec, *, mounted_rw_next: bool) -> None:
        self._maybe_fail("mkfs", ("mkfs", "-t", spec.fs_type, str(device)))
        self._require_device(device)
        self.filesystems[device] = spec.fs_type

    async def mount(self, device: Path, mountpoint: Path, spec: FsSpec, *, readonly: bool) -> None:
        self._maybe_fail("mount", ("mount", str(device), str(mountpoint)))
        self._require_device(device)
        if not _is_real_directory(mountpoint):
            raise CommandError(("mount",), f"mount point {mountpoint} does not exist", "")
        options = "ro" if readonly else "rw"
        self.table.append(FakeMount(str(device), mountpoint, spec.fs_type, options))

    async def unmount(self, mountpoint: Path) -> None:
        self._maybe_fail("unmount", ("umount", str(mountpoint)))
        for index in range(len(self.table) - 1, -1, -1):
            if self.table[index].target == mountpoint:
                del self.table[index]
                return
        raise CommandError(("umount",), f"umount: {mountpoint}: not mounted", "not mounted")

    async def flush(self, device: Path) -> None:
        self._require_device(device)
        self.flushed.append(device)

    def _require_device(self, device: Path) -> None:
        nodes = {d.node for d in self.backend.devices.values() if d.node is not None}
        if device not in nodes:
            raise CommandError(("blockdev",), f"{device}: no such device", "no such device")

    def _maybe_fail(self, step: str, argv: tuple[str, ...]) -> None:
        reason = self.failures.pop(step, None)
        if reason is not None:
            raise CommandError(argv, f"{argv[0]} failed: {reason}", reason)


def _is_real_directory(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


def _node(snapshot_id: int) -> Path:
    return Path(f"/dev/fake{snapshot_id}")
