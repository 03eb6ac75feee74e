"""A snapshot's block device from start to end: attach, mkfs, mount, mark; and back.

Everything a failed attach did is undone before the error is raised: no
configfs entry, mount or device is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from obdsnap.blocking import BlockingRunner
from obdsnap.device.backend import AttachError, DeviceBackend
from obdsnap.device.erofs import has_erofs_magic, refuse_writable_erofs, sniffed
from obdsnap.device.filesystem import FsSpec, remove_lost_and_found
from obdsnap.device.mounter import Mounter
from obdsnap.errors import failure_context
from obdsnap.fsutil import make_real_directory, write_file_no_follow
from obdsnap.layout import PRIVATE_DIR_MODE, BlockDir, Layout
from obdsnap.locks import CountedSemaphore
from obdsnap.storage import Intent, Operation

log = logging.getLogger(__name__)


class MountMode(enum.Enum):
    READ_ONLY = "ro"  # rwMode overlayfs: the lower of an overlay
    READ_WRITE = "rw"  # rwMode dir: the container's rootfs itself
    NONE = "none"  # rwMode dev: the device goes to a VM runtime unmounted

    @property
    def mounts(self) -> bool:
        return self is not MountMode.NONE

    @property
    def writable(self) -> bool:
        return self is not MountMode.READ_ONLY


class IntentJournal(Protocol):
    def intent(self, snapshot_id: int, operation: Operation) -> AbstractAsyncContextManager[None]:
        """Durably note the operation before it starts; clear the note when it ends."""
        ...


class AttachObserver(Protocol):
    """Told how each fresh attach went (the metrics)."""

    def attached(self, seconds: float) -> None:
        """An attach set up a device, from the end of its wait at the cap to its mark."""
        ...

    def attach_failed(self, error: Exception) -> None:
        """An attach failed with ``error``; everything it did is being undone."""
        ...


class _Unobserved:
    def attached(self, seconds: float) -> None:
        pass

    def attach_failed(self, error: Exception) -> None:
        pass


_UNOBSERVED = _Unobserved()


class DeviceManager:
    def __init__(
        self,
        backend: DeviceBackend,
        layout: Layout,
        mounter: Mounter,
        blocking: BlockingRunner,
        journal: IntentJournal,
        max_attaching: int,
        observer: AttachObserver = _UNOBSERVED,
    ) -> None:
        self._backend = backend
        self._layout = layout
        self._mounter = mounter
        self._blocking = blocking
        self._journal = journal
        self._observer = observer
        # Image opens beyond this many wait their turn instead of all hitting the kernel.
        self.attaching = CountedSemaphore(max_attaching)

    async def attach(self, snapshot_id: int, spec: FsSpec, *, mkfs: bool, mode: MountMode) -> Path:
        """The device of a snapshot, attached and mounted as far as it is not already.

        A device that is still set up (the snapshotter died before mounting it, or
        the mount went away) is mounted again, not set up a second time. Only an
        attach with work to do is recorded as an intent.
        """
        with failure_context(snapshot_id=snapshot_id, step="attach"):
            done = await self._finished_attach(snapshot_id, mode)
            if done is not None:
                return done
            async with self._journal.intent(snapshot_id, Operation.ATTACH):
                leftovers = await self._backend.has_entries(snapshot_id)
                device = await self._existing_device(snapshot_id) if leftovers else None
                return await self._attach(
                    snapshot_id, device, spec, mkfs=mkfs, mode=mode, leftovers=leftovers
                )

    async def _finished_attach(self, snapshot_id: int, mode: MountMode) -> Path | None:
        """The device, if its attach is done: marked, and mounted where a mount is wanted."""
        if mode is MountMode.NONE:
            return await self._marked_device(snapshot_id)
        # The common case, e.g. the next container on an image: one hop, no configfs.
        return await self._blocking(self._marked_and_mounted, self._layout.block(snapshot_id))

    def _marked_and_mounted(self, block: BlockDir) -> Path | None:
        """Blocking: the marked device, if it is what is mounted on the mountpoint."""
        device = _read_mark(block.mark)
        if device is None or not self._mounter.device_mounted_on(device, block.mountpoint):
            return None
        return device

    async def _marked_device(self, snapshot_id: int) -> Path | None:
        """The set-up device, if the mark (an attach's last step) names it."""
        device = await self._set_up_device(snapshot_id)
        mark = self._layout.block(snapshot_id).mark
        if device is None or device != await self._blocking(_read_mark, mark):
            return None
        return device

    async def _set_up_device(self, snapshot_id: int) -> Path | None:
        """The node of the snapshot's device if it is set up; refuses another image's."""
        if not await self._backend.has_entries(snapshot_id):
            return None
        return await self._existing_device(snapshot_id)

    async def _existing_device(self, snapshot_id: int) -> Path | None:
        """The node of the device whose configfs entries exist, if it is set up all the way;
        refuses another image's."""
        if not await self.may_own(snapshot_id):
            raise AttachError(
                f"{self._backend.describe(snapshot_id)} is set up for another image "
                f"({await self._backend.owner(snapshot_id)}): "
                "is another snapshotter using this host's devices?"
            )
        if not await self._backend.is_attached(snapshot_id):
            return None
        return await self._backend.find_device(snapshot_id)

    async def _attach(
        self,
        snapshot_id: int,
        device: Path | None,
        spec: FsSpec,
        *,
        mkfs: bool,
        mode: MountMode,
        leftovers: bool,
    ) -> Path:
        """On from where ``device`` (set up, or None) left off: set up, mkfs, mount, mark.
        ``leftovers``: configfs entries of the snapshot exist."""
        block = self._layout.block(snapshot_id)
        if device is None and leftovers:
            # A set-up or tear-down that died half-way: start over.
            await self._backend.detach(snapshot_id)
        fresh = device is None
        started = time.perf_counter()
        if device is None:
            device, started = await self._new_device(snapshot_id, block)
        try:
            fresh_fs = mkfs and fresh
            found = await self._blocking(
                self._before_mount, device, block, sniff=not fresh_fs, mount=mode.mounts
            )
            spec = self._filesystem(snapshot_id, spec, found, writable=mode.writable)
            fresh_rw = fresh_fs and mode is MountMode.READ_WRITE
            if fresh_fs:
                await self._mounter.make_filesystem(device, spec, mounted_rw_next=fresh_rw)
            if mode.mounts and not found.mounted:
                readonly = not mode.writable
                await self._mounter.mount(device, block.mountpoint, spec, readonly=readonly)
            await self._blocking(_finish_attach, block, device, spec, fresh_rw=fresh_rw)
        except BaseException as exc:
            if fresh:
                if isinstance(exc, Exception):
                    self._observer.attach_failed(exc)
                await asyncio.shield(self._undo_attach(snapshot_id, block.mountpoint))
            raise
        if fresh:
            self._observer.attached(time.perf_counter() - started)
            log.info("snapshot %d: device %s attached (%s)", snapshot_id, device, mode.value)
        return device

    def _before_mount(
        self, device: Path, block: BlockDir, *, sniff: bool, mount: bool
    ) -> _DeviceFound:
        """Blocking: the EROFS sniff (DESIGN-v1 §11) unless the filesystem is made now, and,
        where a mount is wanted, whether it is there already, else its mountpoint made."""
        erofs = sniff and has_erofs_magic(device)
        if not mount:
            return _DeviceFound(erofs=erofs, mounted=False)
        if self._mounter.is_mounted(block.mountpoint):
            return _DeviceFound(erofs=erofs, mounted=True)
        with failure_context(step="mountpoint"):
            make_real_directory(block.mountpoint, PRIVATE_DIR_MODE)
        return _DeviceFound(erofs=erofs, mounted=False)

    @staticmethod
    def _filesystem(
        snapshot_id: int, spec: FsSpec, found: _DeviceFound, *, writable: bool
    ) -> FsSpec:
        """The chosen file system, EROFS if the sniff found it; refused for a writable device."""
        spec = sniffed(spec, erofs_found=found.erofs)
        if writable:
            refuse_writable_erofs(snapshot_id, spec)
        return spec

    async def _new_device(self, snapshot_id: int, block: BlockDir) -> tuple[Path, float]:
        """Set up the device, in turn at the cap; the node, and when its turn came."""
        async with self.attaching:
            started = time.perf_counter()
            try:
                device = await self._backend.attach(snapshot_id, block)
            except Exception as exc:
                self._observer.attach_failed(exc)
                raise
        return device, started

    async def detach(self, snapshot_id: int) -> None:
        """Unmount and tear down the device; its data is on the layer files when this returns."""
        with failure_context(snapshot_id=snapshot_id, step="detach"):
            async with self._journal.intent(snapshot_id, Operation.DETACH):
                await self._detach(snapshot_id)

    async def reconcile(self, intent: Intent) -> str:
        """Finish or roll back an attach or detach a crash cut short; what was done.

        An attach that got as far as its mark (its last step) is kept: a container
        may use it. Anything less is torn down; the next Mounts attaches afresh.
        A detach is finished.
        """
        if intent.operation is Operation.ATTACH:
            if await self._marked_device(intent.snapshot_id) is not None:
                return "kept: it had finished"
            await self._detach(intent.snapshot_id)
            return "rolled back"
        await self._detach(intent.snapshot_id)
        return "finished"

    async def _detach(self, snapshot_id: int) -> None:
        block = self._layout.block(snapshot_id)
        device, mounted = await self._blocking(self._mark_and_mount, block)
        ours = await self.may_own(snapshot_id)
        if not ours:
            log.warning(
                "%s belongs to another image; left alone", self._backend.describe(snapshot_id)
            )
        if ours and device is not None and await self._backend.is_attached(snapshot_id):
            # The filesystem may still be mounted elsewhere (a container's namespace):
            # its dirty data must reach the device before the device goes.
            await self._mounter.flush(device)
        if mounted:
            await self._mounter.unmount(block.mountpoint)
        if ours:
            await self._backend.detach(snapshot_id)
        await self._blocking(_remove_mark, block.mark)
        log.info("snapshot %d: device detached", snapshot_id)

    def _mark_and_mount(self, block: BlockDir) -> tuple[Path | None, bool]:
        """Blocking: the device the mark names, and whether the mountpoint is mounted on."""
        return _read_mark(block.mark), self._mounter.is_mounted(block.mountpoint)

    async def is_marked(self, snapshot_id: int) -> bool:
        """Whether an attach got to its end and no detach has undone it since."""
        return await self._blocking(self._layout.block(snapshot_id).mark.exists)

    async def marked_device(self, snapshot_id: int) -> Path | None:
        """The device the mark names: the node a finished attach made (maybe gone since)."""
        return await self._blocking(_read_mark, self._layout.block(snapshot_id).mark)

    async def _is_mounted(self, path: Path) -> bool:
        return await self._blocking(self._mounter.is_mounted, path)

    async def attached_ids(self) -> set[int]:
        return await self._backend.attached_ids()

    def describe(self, snapshot_id: int) -> str:
        """The snapshot's device as messages name it."""
        return self._backend.describe(snapshot_id)

    async def owns(self, snapshot_id: int) -> bool:
        """Whether the snapshot's device was set up from this snapshot's block directory."""
        owner = await self._backend.owner(snapshot_id)
        return owner == self._own_token(snapshot_id)

    async def may_own(self, snapshot_id: int) -> bool:
        """Ours, or no owner yet (a set-up that died before recording its owner)."""
        owner = await self._backend.owner(snapshot_id)
        return owner is None or owner == self._own_token(snapshot_id)

    def _own_token(self, snapshot_id: int) -> str:
        return self._backend.owner_token(self._layout.block(snapshot_id))

    async def _undo_attach(self, snapshot_id: int, mountpoint: Path) -> None:
        if await self._is_mounted(mountpoint):
            with contextlib.suppress(Exception):
                await self._mounter.unmount(mountpoint)
        await self._backend.detach(snapshot_id)


@dataclass(frozen=True)
class _DeviceFound:
    erofs: bool  # the sniff found EROFS's magic
    mounted: bool  # the mountpoint has its mount already


def _finish_attach(block: BlockDir, device: Path, spec: FsSpec, *, fresh_rw: bool) -> None:
    """Blocking: a fresh read-write filesystem emptied of lost+found, then the mark."""
    if fresh_rw:
        with failure_context(step="mkfs"):
            remove_lost_and_found(block.mountpoint, spec)
    with failure_context(step="mark"):
        _write_mark(block.mark, device)


def _write_mark(path: Path, device: Path) -> None:
    write_file_no_follow(path, str(device).encode())


def _read_mark(path: Path) -> Path | None:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    return Path(text) if text else None


def _remove_mark(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
