"""The snapshotter: snapshot directories, overlaybd devices, and the mounts containerd gets.

The model is containerd's overlayfs snapshotter (snapshots/overlay): a plain
OCI layer is a directory ``fs/`` and a container's rootfs an overlay of its
parents' ``fs/``. On top of that come overlaybd block layers (DESIGN §3-§8):
a layer whose device config says which blobs or layer files make up its
disk, and a rootfs that is an overlay on the parent's mounted device, or a
writable device of its own (rwMode ``dir``/``dev``).

Metadata lives in the MetaStore; this module keeps the directories and devices
in step with it and never holds a metadata transaction while it touches the
disk or a device.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path

from obdsnap import filters
from obdsnap import labels as L
from obdsnap.blocking import BlockingRunner, CompletionGuard
from obdsnap.device.filesystem import FsSpec, fs_spec
from obdsnap.device.manager import DeviceManager, MountMode
from obdsnap.device.mounter import Mounter
from obdsnap.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    SnapshotError,
)
from obdsnap.fsutil import disk_usage, remove_tree
from obdsnap.labels import validate_key, validate_labels
from obdsnap.layout import NEW_DIR_PREFIX, Layout
from obdsnap.locks import KeyedLocks
from obdsnap.mounts import Mount, bind_mount, overlay_mount
from obdsnap.overlaybd.layers import BlockLayers
from obdsnap.overlaybd.storage_type import StorageType, is_remote_layer
from obdsnap.overlaybd.tools import ZFileConfig, parse_zfile_config
from obdsnap.storage import Info, Kind, MetaStore, Operation, Record, Usage

log = logging.getLogger(__name__)

LIST_CHUNK = 100
OVERLAYFS, DIR, DEV = "overlayfs", "dir", "dev"


@dataclass
class CleanupReport:
    directories_removed: int = 0
    devices_released: int = 0
    mounts_removed: int = 0
    kept: list[str] = field(default_factory=list)  # busy, or failed to go

    def __str__(self) -> str:
        kept = f", kept (busy) {', '.join(self.kept)}" if self.kept else ""
        return (
            f"{self.directories_removed} orphan directories removed, "
            f"{self.devices_released} orphan devices released, "
            f"{self.mounts_removed} stray mounts removed{kept}"
        )


@dataclass(frozen=True)
class ReconcileReport:
    """What the start-up reconcile did."""

    snapshots: int
    settled: list[str]  # interrupted operations, and how each was settled
    creates_dropped: int
    cleanup: CleanupReport


@dataclass(frozen=True)
class SnapshotterOptions:
    rw_mode: str = OVERLAYFS  # the boot config's default for new rootfs snapshots
    auto_remove_dev: bool = False
    index_off: bool = False


class Snapshotter:
    def __init__(
        self,
        layout: Layout,
        store: MetaStore,
        layers: BlockLayers,
        devices: DeviceManager,
        mounter: Mounter,
        options: SnapshotterOptions,
        blocking: BlockingRunner,
    ) -> None:
        self._layout = layout
        self._store = store
        self._layers = layers
        self._devices = devices
        self._mounter = mounter
        self._options = options
        self._blocking = blocking
        self._guard = CompletionGuard()
        self._locks = KeyedLocks()
        self._building: set[Path] = set()
        self._removals: asyncio.Queue[Path] = asyncio.Queue()
        self._remover: asyncio.Task[None] | None = None

    async def start(self) -> ReconcileReport:
        """Reconcile the disk and the devices with the metadata before serving.

        Operations a crash cut short are finished or rolled back first, then creates
        that never finished are dropped, then Cleanup reclaims what no snapshot owns.
        """
        settled = await self._settle_intents()
        dropped = await self._drop_unfinished_creates()
        report = await self.cleanup()
        log.info(
            "reconciled at start-up: %d snapshots; %d interrupted operations%s; "
            "%d unfinished creates dropped; %s",
            len(self._store),
            len(settled),
            f" ({'; '.join(settled)})" if settled else "",
            dropped,
            report,
        )
        self._remover = asyncio.create_task(self._remove_dirs(), name="snapshot-dir-remover")
        return ReconcileReport(len(self._store), settled, dropped, report)

    async def close(self) -> None:
        await self._guard.drain()
        if self._remover is not None:
            self._remover.cancel()
            self._remover = None

    # ------------------------------------------------------------------ create

    async def prepare(self, key: str, parent: str, labels: Mapping[str, str]) -> list[Mount]:
        return await self._create(Kind.ACTIVE, key, parent, labels)

    async def view(self, key: str, parent: str, labels: Mapping[str, str]) -> list[Mount]:
        return await self._create(Kind.VIEW, key, parent, labels)

    async def _create(
        self, kind: Kind, key: str, parent: str, labels: Mapping[str, str]
    ) -> list[Mount]:
        validate_key(key)
        validate_labels(labels)
        L.validate_trace_path(labels, str(self._layout.root))
        parent_record = self._committed_parent(parent) if parent else None
        if self._store.find(key) is not None:
            raise AlreadyExists(f"snapshot {key!r} already exists")
        # An unpack (containerd writes a layer into it) is never a container's rootfs.
        unpacking = L.is_unpack(key, labels)
        rw_mode = OVERLAYFS if unpacking else await self._writable_mode(parent_record, labels)
        parent_id = parent_record.id if parent_record else None
        # Until its set-up is done, a snapshot with a device or config of its own is
        # not ready: after a crash, start-up rolls it back instead of keeping half of it.
        ready = rw_mode not in (DIR, DEV) and not (
            L.is_acceleration_unpack(labels) or is_remote_layer(labels)
        )
        record = await self._guard.run(
            self._create_snapshot(kind, key, parent, labels, parent_id, rw_mode, ready)
        )
        return await self._guard.run(self._set_up_snapshot(record, parent_record))

    def _committed_parent(self, parent: str) -> Record:
        record = self._store.get(parent)
        if record.kind != Kind.COMMITTED:
            raise InvalidArgument(f"parent {parent!r} is not a committed snapshot")
        return record

    async def _writable_mode(self, parent: Record | None, labels: Mapping[str, str]) -> str:
        """DESIGN §5: plain parents give overlayfs; else the label, else the boot config.

        A committed parent has a device config exactly when it is a block layer.
        """
        if parent is not None and not await self._layers.is_block(parent):
            return OVERLAYFS
        if L.WRITABLE in labels:
            return labels[L.WRITABLE] if labels[L.WRITABLE] in (DIR, DEV) else OVERLAYFS
        return self._options.rw_mode

    async def _create_snapshot(
        self,
        kind: Kind,
        key: str,
        parent: str,
        labels: Mapping[str, str],
        parent_id: int | None,
        rw_mode: str,
        ready: bool,
    ) -> Record:
        # Named here, on the loop, so Cleanup never mistakes it for an orphan.
        new_dir = self._layout.snapshots / f"{NEW_DIR_PREFIX}{secrets.token_hex(8)}"
        self._building.add(new_dir)
        try:
            # The directory is built while the row is committed; it takes the row's ID after both.
            built = asyncio.ensure_future(
                self._blocking(
                    self._layout.build_new_snapshot_dir,
                    new_dir,
                    active=kind == Kind.ACTIVE,
                    parent_id=parent_id,
                )
            )
            row = asyncio.ensure_future(
                self._store.create(kind, key, parent, labels, rw_mode, ready=ready)
            )
            await asyncio.wait([built, row])
            build_error = built.exception()
            row_error = row.exception()
            if row_error is not None:
                await self._blocking(remove_tree, new_dir)
                raise row_error
            record = row.result()
            try:
                if build_error is not None:
                    raise build_error
                await self._blocking(os.rename, new_dir, self._layout.snapshot_dir(record.id))
            except Exception as exc:
                # The row goes again; its ID is never handed out a second time.
                await self._store.remove(key)
                await self._blocking(remove_tree, new_dir)
                raise SnapshotError(
                    f"failed to create the directory of {key!r}: {exc}"
                ).add_context(snapshot_id=record.id, step="snapshot-dir") from exc
            return record
        finally:
            self._building.discard(new_dir)

    async def _set_up_snapshot(self, record: Record, parent: Record | None) -> list[Mount]:
        """Everything after the row and directory exist; a failure removes the snapshot again."""
        try:
            if L.is_unpack(record.key, record.info.labels):
                mounts = await self._set_up_unpack(record, parent)
            else:
                async with await self._device_locks(record, parent):
                    mounts = await self._set_up_rootfs(record, parent)
            if not record.ready:
                await self._store.mark_ready(record.key)
            return mounts
        except AlreadyExists:
            raise  # the remote-layer answer: the snapshot was committed on purpose
        except BaseException:
            await self._undo_create(record)
            raise

    async def _set_up_unpack(self, record: Record, parent: Record | None) -> list[Mount]:
        """containerd is unpacking a layer: acceleration layer, remote layer, or a plain one."""
        labels = record.info.labels
        if L.is_acceleration_unpack(labels):
            await self._layers.write_acceleration_config(record, parent)
            return [Mount("bind", str(self._layout.fs_dir(record.id)), ("rw", "bind"))]
        if not is_remote_layer(labels):
            return self._overlay_mounts(record, self._store.ancestors(record))
        target = labels[L.TARGET_SNAPSHOT_REF]
        await self._layers.write_remote_config(record, parent)
        try:
            await self._store.commit(
                record.key, target, Usage(), {**labels, L.REMOTE: L.REMOTE_VALUE}
            )
        except AlreadyExists:
            await self._undo_create(record)
        raise AlreadyExists(f'target snapshot "{target}": already exists')

    async def _set_up_rootfs(self, record: Record, parent: Record | None) -> list[Mount]:
        writable = record.rw_mode in (DIR, DEV)
        parent_is_block = await self._layers.is_block(parent)
        if writable:
            await self._layers.create_writable_layer(record, parent if parent_is_block else None)
        if parent is not None and parent_is_block:
            own_id = record.id if writable else None
            await self._layers.set_trace_flags(parent, record.info.labels, own_id)
        return await self._mounts(record, new=True)

    async def _undo_create(self, record: Record) -> None:
        await self._store.remove(record.key)
        self._removals.put_nowait(self._layout.snapshot_dir(record.id))

    # ------------------------------------------------------------------ mounts

    async def mounts(self, key: str) -> list[Mount]:
        validate_key(key)
        record = self._store.get(key)
        if record.kind not in (Kind.ACTIVE, Kind.VIEW):
            raise FailedPrecondition(f"snapshot {key!r} is not active or view")
        parent = self._store.find(record.parent) if record.parent else None
        async with await self._device_locks(record, parent):
            # A Remove that held the locks first has taken the snapshot away.
            current = self._store.get(key)
            if current.id != record.id:
                raise NotFound(f"snapshot {key!r} does not exist")
            return await self._mounts(current)

    async def _mounts(self, record: Record, *, new: bool = False) -> list[Mount]:
        """What the snapshot is mounted with, attaching the device that needs if it is missing.

        ``new``: the snapshot is being prepared, so a writable device with no parent
        is fresh and gets a filesystem; attaching it again later must never mkfs.
        """
        readonly = record.kind == Kind.VIEW
        labels = record.info.labels
        parents = self._store.ancestors(record)
        if L.is_unpack(record.key, labels):
            if L.is_acceleration_unpack(labels):
                return [Mount("bind", str(self._layout.fs_dir(record.id)), ("rw", "bind"))]
            return self._overlay_mounts(record, parents)
        parent = parents[0] if parents else None
        if record.rw_mode in (DIR, DEV):
            spec = fs_spec(labels)
            device = await self._attach(record, spec, own=True, mkfs=new and parent is None)
            if record.rw_mode == DEV:
                return [Mount(spec.fs_type, str(device), ("ro" if readonly else "rw", "discard"))]
            return [bind_mount(self._layout.block(record.id).mountpoint, readonly=readonly)]
        if parent is not None and await self._layers.is_block(parent):
            await self._attach(parent, fs_spec(parent.info.labels), own=False, mkfs=False)
            lower = self._layout.block(parent.id).mountpoint
            if readonly:
                return [bind_mount(lower, readonly=True)]
            return [self._overlay(record, [lower])]
        return self._overlay_mounts(record, parents)

    async def _attach(self, owner: Record, spec: FsSpec, *, own: bool, mkfs: bool) -> Path:
        """The device of ``owner`` attached if need be: its own writable one, or a parent's.

        The caller holds the locks of the snapshot and its parent.
        """
        mode = MountMode.READ_ONLY
        if own:
            mode = MountMode.NONE if owner.rw_mode == DEV else MountMode.READ_WRITE
        return await self._devices.attach(owner.id, spec, mkfs=mkfs, mode=mode)

    def _overlay_mounts(self, record: Record, parents: list[Record]) -> list[Mount]:
        fs = self._layout.fs_dir
        if not parents:
            return [bind_mount(fs(record.id), readonly=record.kind == Kind.VIEW)]
        if record.kind == Kind.ACTIVE:
            return [self._overlay(record, [fs(parent.id) for parent in parents])]
        if len(parents) == 1:
            return [bind_mount(fs(parents[0].id), readonly=True)]
        return [overlay_mount([fs(p.id) for p in parents], index_off=self._options.index_off)]

    def _overlay(self, record: Record, lowers: list[Path]) -> Mount:
        return overlay_mount(
            lowers,
            upper=self._layout.fs_dir(record.id),
            work=self._layout.work_dir(record.id),
            index_off=self._options.index_off,
        )

    # ------------------------------------------------------------------ commit, remove

    async def commit(self, name: str, key: str, labels: Mapping[str, str]) -> None:
        validate_key(name, "name")
        validate_key(key)
        validate_labels(labels)
        active = self._store.get(key)
        if self._store.find(name) is not None:
            raise AlreadyExists(f"snapshot {name!r} already exists")
        if active.kind != Kind.ACTIVE:
            raise FailedPrecondition(f"snapshot {key!r} is not active")
        zfile = parse_zfile_config({**active.info.labels, **labels}.get(L.ZFILE_CONFIG, ""))
        await self._guard.run(self._commit(active, name, labels, zfile))

    async def _commit(
        self, active: Record, name: str, labels: Mapping[str, str], zfile: ZFileConfig
    ) -> None:
        writable = active.rw_mode in (DIR, DEV)
        if not writable or active.info.labels.get(L.ACCELERATION_LAYER) == "yes":
            await self._commit_record(active, name, labels)
            return
        # The lock keeps a Mounts from attaching the device again half-way.
        async with self._locks.hold(active.id), self._store.intent(active.id, Operation.COMMIT):
            try:
                await self._commit_writable(active, name, labels, zfile)
            finally:
                committed = self._store.find(name)
                done = committed is not None and committed.id == active.id
                await asyncio.shield(self._settle_commit(active.id, committed=done))

    async def _settle_commit(self, snapshot_id: int, *, committed: bool) -> str:
        """After a writable commit, however it ended: finish it or roll it back.

        The row decides: committed, the writable layer is dropped (the layer file has
        its data); still active, the writable layer and its config are as before.
        """
        if not committed:
            await self._layers.roll_back_commit(snapshot_id)
            return "rolled back"
        try:
            await self._layers.drop_writable_layer(snapshot_id)
        except OSError as exc:  # the commit stands all the same
            log.warning("snapshot %d: writable layer not dropped: %s", snapshot_id, exc)
        return "finished"

    async def _commit_writable(
        self, active: Record, name: str, labels: Mapping[str, str], zfile: ZFileConfig
    ) -> None:
        """DESIGN §7: the writable layer becomes a local layer file, then the row commits."""
        await self._devices.detach(active.id)
        await self._layers.commit_writable_layer(active, zfile)
        await self._layers.keep_writable_config(active.id)
        await self._commit_record(active, name, labels)

    async def _commit_record(self, active: Record, name: str, labels: Mapping[str, str]) -> None:
        committed_labels = dict(labels)
        if await self._layers.storage_type(active) is StorageType.LOCAL_BLOCK:
            parent = self._store.find(active.parent) if active.parent else None
            await self._layers.write_local_config(active, parent)
            committed_labels[L.LOCAL_COMMIT_PATH] = str(self._layout.commit_file(active.id))
        usage = await self._blocking(disk_usage, self._layout.fs_dir(active.id))
        await self._store.commit(active.key, name, usage, committed_labels)

    async def remove(self, key: str) -> None:
        validate_key(key)
        record = self._store.get(key)
        if self._store.has_children(key):
            raise FailedPrecondition(f"cannot remove snapshot {key!r}: it has children")
        await self._guard.run(self._remove(record))

    async def _remove(self, record: Record) -> None:
        """Devices first (DESIGN §7), then the row; the directory goes in the background."""
        parent = self._store.find(record.parent) if record.parent else None
        async with await self._device_locks(record, parent):
            await self._detach_unless_busy(record)
            if self._options.auto_remove_dev and record.kind == Kind.ACTIVE and parent:
                await self._detach_unless_busy(parent)
            await self._store.remove(record.key)
        self._layers.forget(record.id)
        self._removals.put_nowait(self._layout.snapshot_dir(record.id))

    async def _device_locks(
        self, record: Record, parent: Record | None
    ) -> AbstractAsyncContextManager[None]:
        """The locks of the snapshot and its parent (DESIGN §7), when a device is involved.

        Plain overlayfs snapshots have no device: they take no lock, so their calls
        (e.g. many containers on one base layer) stay concurrent.
        """
        if await self._may_have_device(record) or (
            parent is not None and await self._may_have_device(parent)
        ):
            return self._locks.hold(record.id, *([parent.id] if parent else []))
        return contextlib.nullcontext()

    async def _may_have_device(self, record: Record) -> bool:
        """Only writable snapshots and block layers ever get a device."""
        if record.rw_mode in (DIR, DEV):
            return True
        return record.kind == Kind.COMMITTED and await self._layers.is_block(record)

    async def _detach_unless_busy(self, record: Record) -> None:
        if not await self._may_have_device(record):
            return
        if not await self._devices.is_marked(record.id):
            return
        if record.rw_mode != DEV and await self._blocking(
            self._mounter.overlay_uses, self._layout.block(record.id).mountpoint
        ):
            log.info("snapshot %r: device still used by an overlay mount; kept", record.key)
            return
        await self._devices.detach(record.id)

    async def _remove_dirs(self) -> None:
        while True:
            directory = await self._removals.get()
            try:
                await self._blocking(remove_tree, directory)
            except OSError as exc:
                log.warning("could not remove %s (Cleanup will retry): %s", directory, exc)

    # ------------------------------------------------------------------ info

    def stat(self, key: str) -> Info:
        validate_key(key)
        return self._store.get(key).info

    async def update(self, info: Info, paths: Sequence[str]) -> Info:
        validate_key(info.name)
        validate_labels(info.labels)
        return await self._guard.run(self._store.update(info.name, info.labels, paths))

    def walk(self, filter_strings: Sequence[str]) -> Iterator[list[Info]]:
        """Matching infos in chunks of LIST_CHUNK; a bad filter raises before the first chunk."""
        selected = filters.parse_all(filter_strings)
        return _chunks(
            (record.info for record in self._store.records()),
            lambda info: selected.match(info_fields(info)),
        )

    async def usage(self, key: str) -> Usage:
        validate_key(key)
        record = self._store.get(key)
        if record.kind == Kind.ACTIVE:
            return await self._blocking(disk_usage, self._layout.fs_dir(record.id))
        return record.usage

    # ------------------------------------------------------------------ cleanup

    async def cleanup(self) -> CleanupReport:
        """Remove what no snapshot owns: devices, then directories; what is busy stays.

        One failure does not stop it: the rest is still cleaned up.
        """
        report = CleanupReport()
        names = await self._blocking(self._layout.entries)
        attached = await self._devices.attached_ids()
        # Judged after the listing: a directory takes its ID only once its row is
        # durable, and a new-* directory is registered before it is made.
        orphans = self._layout.orphans(names, self._store.ids(), self._building)
        for orphan in orphans:
            if orphan.name.isdigit() and await self._has_device(int(orphan.name), attached):
                attached.discard(int(orphan.name))
                if not await self._release_orphan_device(int(orphan.name)):
                    report.kept.append(orphan.name)
                    continue
                report.devices_released += 1
            if not await self._unmount_strays(orphan, report):
                report.kept.append(orphan.name)
                continue
            log.info("cleanup: removing %s, which no snapshot owns", orphan)
            try:
                await self._blocking(remove_tree, orphan)
                report.directories_removed += 1
            except OSError as exc:
                log.warning("cleanup: could not remove %s: %s", orphan, exc)
                report.kept.append(orphan.name)
        for snapshot_id in attached - self._store.ids():
            # Only our own: another snapshotter on this host may use the same HBA.
            if await self._devices.owns(snapshot_id):
                if await self._release_orphan_device(snapshot_id):
                    report.devices_released += 1
                else:
                    report.kept.append(f"dev_{snapshot_id}")
        return report

    async def _unmount_strays(self, orphan: Path, report: CleanupReport) -> bool:
        """Unmount what is mounted under an orphan directory; False if one is still in use."""
        points = await self._blocking(self._mounter.mounts_under, orphan)
        for point in sorted(points, key=len, reverse=True):
            if await self._blocking(self._mounter.overlay_uses, Path(point)):
                log.info("cleanup: %s is the lower of an overlay; kept", point)
                return False
            try:
                await self._mounter.unmount(Path(point))
            except SnapshotError as exc:
                log.warning("cleanup: could not unmount %s: %s", point, exc)
                return False
            log.info("cleanup: unmounted %s, which no snapshot owns", point)
            report.mounts_removed += 1
        return True

    async def _has_device(self, snapshot_id: int, attached: set[int]) -> bool:
        if snapshot_id in attached and await self._devices.may_own(snapshot_id):
            return True
        return await self._devices.is_marked(snapshot_id)

    async def _release_orphan_device(self, snapshot_id: int) -> bool:
        """Detach the device of a snapshot that is gone; False if an overlay still uses it."""
        async with self._locks.hold(snapshot_id):
            mountpoint = self._layout.block(snapshot_id).mountpoint
            if await self._blocking(self._mounter.overlay_uses, mountpoint):
                log.info("cleanup: device of removed snapshot %d is still in use", snapshot_id)
                return False
            try:
                await self._devices.detach(snapshot_id)
            except (OSError, SnapshotError) as exc:
                log.warning("cleanup: could not detach device %d: %s", snapshot_id, exc)
                return False
        return True

    async def _settle_intents(self) -> list[str]:
        """Finish or roll back every operation with an open intent; what was done to each.

        Device operations go first: a commit cut short during its detach finds the
        device detached. An intent that cannot be settled stays for the next start.
        """
        by_id = {record.id: record for record in self._store.records()}
        settled: list[str] = []
        for intent in sorted(self._store.intents(), key=lambda i: i.operation is Operation.COMMIT):
            what = f"{intent.operation.value} of snapshot {intent.snapshot_id}"
            try:
                if intent.operation is Operation.COMMIT:
                    record = by_id.get(intent.snapshot_id)
                    committed = record is not None and record.kind == Kind.COMMITTED
                    outcome = await self._settle_commit(intent.snapshot_id, committed=committed)
                else:
                    outcome = await self._devices.reconcile(intent)
                await self._store.clear_intent(intent)
            except (OSError, SnapshotError) as exc:
                log.warning("%s, interrupted, could not be settled: %s", what, exc)
                settled.append(f"{what}: failed, {exc}")
                continue
            log.warning("%s was interrupted: %s", what, outcome)
            settled.append(f"{what} {outcome}")
        return settled

    async def _drop_unfinished_creates(self) -> int:
        """Roll back the creates a crash interrupted; none of them was acknowledged.

        A row without its directory died before the rename; a row not ready died
        during its set-up. The rows go here; their directories and devices are
        orphans that the Cleanup run after this reclaims. Returns how many.
        """
        present = set(await self._blocking(self._layout.entries))
        dropped = 0
        for record in self._store.records():
            finished = record.ready and str(record.id) in present
            if finished or self._store.has_children(record.key):
                continue
            log.warning("rolling back snapshot %r: its create never finished", record.key)
            await self._store.remove(record.key)
            dropped += 1
        return dropped


def info_fields(info: Info) -> filters.Lookup:
    def lookup(path: Sequence[str]) -> str | None:
        if not path:
            return None
        field = path[0]
        if field == "name":
            return info.name
        if field == "parent":
            return info.parent
        if field == "kind":
            return info.kind.label if info.kind != Kind.UNKNOWN else None
        if field == "labels" and info.labels:
            return info.labels.get(".".join(path[1:]))
        return None

    return lookup


def _chunks(infos: Iterable[Info], keep: Callable[[Info], bool]) -> Iterator[list[Info]]:
    chunk: list[Info] = []
    for info in infos:
        if keep(info):
            chunk.append(info)
            if len(chunk) == LIST_CHUNK:
                yield chunk
                chunk = []
    if chunk:
        yield chunk
