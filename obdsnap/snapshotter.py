"""The snapshotter: snapshot directories, overlaybd devices, and the mounts containerd gets.

The model is containerd's overlayfs snapshotter (snapshots/overlay): a plain
OCI layer is a directory ``fs/`` and a container's rootfs an overlay of its
parents' ``fs/``. On top of that come overlaybd block layers (DESIGN §3-§8):
a layer whose device config says which blobs or layer files make up its
disk, and a rootfs that is an overlay on the parent's mounted device, or a
writable device of its own (rwMode ``dir``/``dev``). What a snapshot is, is
its ``Role`` (role.py); its mounts come from snapshot_mounts.py; start-up
reconciliation and Cleanup are reconcile.py's.

Metadata lives in the MetaStore; this module keeps the directories and devices
in step with it and never holds a metadata transaction while it touches the
disk or a device.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

from obdsnap import labels as L
from obdsnap.blocking import BlockingRunner, CompletionGuard
from obdsnap.commit_flow import CommitFlow
from obdsnap.device.manager import DeviceManager, MountMode
from obdsnap.device.mounter import Mounter
from obdsnap.docker_mode import DockerLayers
from obdsnap.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from obdsnap.labels import validate_key, validate_labels
from obdsnap.layout import Layout
from obdsnap.listing import LIST_CHUNK, info_fields, matching_chunks
from obdsnap.local_layer_commit import LocalLayerCommit
from obdsnap.locks import KeyedLocks
from obdsnap.mounts import Mount
from obdsnap.overlaybd.fs_choice import DeviceFs
from obdsnap.overlaybd.layers import BlockLayers
from obdsnap.overlaybd.tools import ZFileConfig, commit_zfile_config
from obdsnap.quota import NO_QUOTA_CONFIG, QuotaSettings, check_quota_label
from obdsnap.reconcile import CleanupReport, Reconciler, ReconcileReport
from obdsnap.remote_unpack import commit_remote_layer
from obdsnap.removal import DeviceRelease
from obdsnap.role import (
    LOCAL_LAYER_REFUSED,
    AccelerationUnpack,
    BlockRootfs,
    CommittedLayer,
    DockerContainer,
    DockerInit,
    DownloadUnpack,
    OverlayRootfs,
    ParentLayer,
    PlainUnpack,
    RemoteUnpack,
    Role,
    RwMode,
    StorageType,
    WritableRootfs,
    committed_role,
    device_is_mounted,
    has_own_device,
    new_rw_mode,
    ready_at_create,
    role_of,
)
from obdsnap.snapshot_dirs import SnapshotDirs
from obdsnap.snapshot_mounts import AttachedDevice, MountedSnapshot, snapshot_mounts
from obdsnap.storage import Info, Kind, MetaStore, Record, Usage
from obdsnap.usage import snapshot_usage

__all__ = [
    "LIST_CHUNK",
    "CleanupReport",
    "ReconcileReport",
    "Snapshotter",
    "SnapshotterOptions",
    "info_fields",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DevicelessMounts:
    """The mounts of a snapshot without a device: they follow from its record and its
    parent's alone, so they hold while the store keeps both records as they are."""

    record: Record
    parent: Record | None
    mounts: tuple[Mount, ...]


@dataclass(frozen=True)
class SnapshotterOptions:
    rw_mode: RwMode = RwMode.OVERLAYFS  # the boot config's default for new rootfs snapshots
    auto_remove_dev: bool = False
    index_off: bool = False
    async_remove: bool = False  # Remove leaves the directory to Cleanup (DESIGN-v1 §9)
    seal_writable: bool = False  # writableCommit "seal": v1.4.4's Commit (DESIGN-v1 §8)
    docker_mode: bool = False  # runtimeType "docker" in overlayfs mode (DESIGN-v1 §17)
    default_fs_type: str = "ext4"  # a device's fs without a blob-fs-type label (DESIGN-v1 §11)
    quota: QuotaSettings = NO_QUOTA_CONFIG  # rootfsQuota and how it is set (DESIGN-v1 §16)


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
        self._deviceless_mounts: dict[str, DevicelessMounts] = {}
        self._dirs = SnapshotDirs(layout, store, blocking, options.quota)
        self._fs = DeviceFs(layers, options.default_fs_type)
        self._docker = DockerLayers(store, layers, devices, self._fs, enabled=options.docker_mode)
        self._release = DeviceRelease(layout, store, devices, mounter, blocking)
        self._reconciler = Reconciler(
            layout, store, layers, devices, mounter, blocking, self._locks, self._dirs.building
        )
        self._commits = CommitFlow(
            layout, store, layers, devices, blocking, self._locks, seal=options.seal_writable
        )
        self._conversions = LocalLayerCommit(store, layers, self._commits, options.default_fs_type)

    async def start(self) -> ReconcileReport:
        """Reconcile the disk and the devices with the metadata before serving."""
        report = await self._reconciler.reconcile()
        self._dirs.start()
        return report

    async def close(self) -> None:
        await self._guard.drain()
        await self._dirs.close()

    async def cleanup(self) -> CleanupReport:
        return await self._reconciler.cleanup()

    # ------------------------------------------------------------------ roles

    async def _role(self, record: Record, parent: Record | None) -> Role:
        """What the snapshot is (role.py), from its record and its parent's storage type."""
        if record.kind == Kind.COMMITTED:
            storage = await self._layers.storage_type(record)
            return committed_role(storage, RwMode.stored(record.rw_mode))
        rw_mode, docker = RwMode.stored(record.rw_mode), await self._docker.lineage(parent)
        parent_layer = await self._parent_layer(parent)
        return role_of(record.key, record.info.labels, rw_mode, parent_layer, docker)

    async def _parent_layer(self, parent: Record | None) -> ParentLayer | None:
        if parent is None:
            return None
        return ParentLayer(parent.info.labels, await self._layers.storage_type(parent))

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
        check_quota_label(key, labels)
        parent_record = self._committed_parent(parent) if parent else None
        if self._store.find(key) is not None:
            raise AlreadyExists(f"snapshot {key!r} already exists")
        parent_layer = await self._parent_layer(parent_record)
        if parent_layer is not None and parent_layer.storage is StorageType.LOCAL_LAYER:
            raise FailedPrecondition(f"parent {parent!r}: {LOCAL_LAYER_REFUSED}")
        rw_mode = new_rw_mode(key, labels, parent_layer, self._options.rw_mode)
        docker = await self._docker.lineage(parent_record)
        role = role_of(key, labels, rw_mode, parent_layer, docker)
        parent_id = parent_record.id if parent_record else None
        record = await self._guard.run(
            self._dirs.create(kind, key, parent, labels, parent_id, rw_mode, ready_at_create(role))
        )
        return await self._guard.run(self._set_up_snapshot(record, parent_record, role))

    def _committed_parent(self, parent: str) -> Record:
        record = self._store.get(parent)
        if record.kind != Kind.COMMITTED:
            raise InvalidArgument(f"parent {parent!r} is not a committed snapshot")
        return record

    async def _set_up_snapshot(
        self, record: Record, parent: Record | None, role: Role
    ) -> list[Mount]:
        """Everything after the row and directory exist; a failure removes the snapshot again."""
        try:
            async with await self._device_locks(record, parent, role):
                await self._set_up(record, parent, role)
                mounts = await self._mounts(record, parent, role, new=True)
            await self._erase_writable_label(record, role)
            if not record.ready:
                await self._store.mark_ready(record.key)
            return mounts
        except AlreadyExists:
            raise  # the remote-layer answer: the snapshot was committed on purpose
        except BaseException:
            await self._undo_create(record)
            raise

    async def _set_up(self, record: Record, parent: Record | None, role: Role) -> None:
        """What the snapshot needs before its first mounts (DESIGN §6)."""
        match role:
            case RemoteUnpack(target=target):
                await commit_remote_layer(
                    self._layers, self._store, record, parent, target, self._undo_create
                )
            case DownloadUnpack():  # DESIGN-v1 §18: containerd downloads the blob into fs/
                await self._layers.write_remote_config(record, parent)
            case AccelerationUnpack(block_parent=True) if parent is not None:
                await self._layers.write_acceleration_config(record, parent)
            case AccelerationUnpack():
                raise InvalidArgument(
                    f"acceleration layer {record.key!r} needs an overlaybd parent layer"
                )
            case WritableRootfs(block_parent=block_parent, trace=trace):
                await self._layers.create_writable_layer(record, parent if block_parent else None)
                if parent is not None and trace is not None:
                    await self._layers.set_trace_flags(parent.id, record.id, trace)
            case BlockRootfs(trace=trace) if parent is not None:
                await self._layers.set_trace_flags(parent.id, None, trace)
            case PlainUnpack() | OverlayRootfs() | BlockRootfs() | CommittedLayer():
                pass
            case DockerInit() | DockerContainer():
                pass  # the image top's device is attached for the mounts

    async def _erase_writable_label(self, record: Record, role: Role) -> None:
        """DESIGN-v1 §6 step 6: only an overlaybd layer keeps ``overlaybd.writable``.

        The snapshot's mode is kept in its row: the label is not read again.
        """
        match role:
            case WritableRootfs() | AccelerationUnpack() | RemoteUnpack() | DownloadUnpack():
                return
        if L.WRITABLE in record.info.labels:
            await self._store.update(record.key, {}, [f"labels.{L.WRITABLE}"])

    async def _undo_create(self, record: Record) -> None:
        await self._store.remove(record.key)
        await self._layers.writable.remove_created(record.id)
        self._dirs.remove_later(record.id)

    # ------------------------------------------------------------------ mounts

    async def mounts(self, key: str) -> list[Mount]:
        validate_key(key)
        record = self._store.get(key)
        if record.kind not in (Kind.ACTIVE, Kind.VIEW):
            raise FailedPrecondition(f"snapshot {key!r} is not active or view")
        parent = self._store.find(record.parent) if record.parent else None
        known = self._deviceless_mounts.get(key)
        if known is not None and known.record is record and known.parent is parent:
            return list(known.mounts)
        role = await self._role(record, parent)
        lock_ids = await self._device_lock_ids(record, parent, role)
        if not lock_ids:
            mounts = await self._mounts(record, parent, role)
            if isinstance(role, OverlayRootfs | PlainUnpack):
                self._deviceless_mounts[key] = DevicelessMounts(record, parent, tuple(mounts))
            return mounts
        async with self._locks.hold(*lock_ids):
            # A Remove that held the locks first has taken the snapshot away.
            current = self._store.get(key)
            if current.id != record.id:
                raise NotFound(f"snapshot {key!r} does not exist")
            return await self._mounts(current, parent, role)

    async def _mounts(
        self, record: Record, parent: Record | None, role: Role, *, new: bool = False
    ) -> list[Mount]:
        """What the snapshot is mounted with, attaching the device that needs if it is missing.

        ``new``: the snapshot is being prepared, so a writable device with no parent
        is fresh and gets a filesystem; attaching it again later must never mkfs.
        The caller holds the locks of the snapshot and its parent.
        """
        device = None
        match role:
            case WritableRootfs(fresh_filesystem=fresh):
                spec = await self._fs.spec(record)
                mode = MountMode.READ_WRITE if device_is_mounted(role) else MountMode.NONE
                # A reused layer (overlay.active.path) has its filesystem already.
                mkfs = new and fresh and (await self._layers.writable.location(record.id)).created
                path = await self._devices.attach(record.id, spec, mkfs=mkfs, mode=mode)
                device = AttachedDevice(path, spec.fs_type)
            case BlockRootfs() if parent is not None:
                spec = await self._fs.spec(parent)
                await self._devices.attach(parent.id, spec, mkfs=False, mode=MountMode.READ_ONLY)
            case DockerInit() | DockerContainer():
                await self._docker.attach_image(role, parent, new=new)
        parent_ids = [ancestor.id for ancestor in self._store.ancestors(record)]
        snapshot = MountedSnapshot(record.id, record.kind, parent_ids)
        return snapshot_mounts(
            role, snapshot, self._layout, index_off=self._options.index_off, device=device
        )

    # ------------------------------------------------------------------ commit, remove

    async def commit(self, name: str, key: str, labels: Mapping[str, str]) -> None:
        validate_key(name, "name")
        validate_key(key)
        self._deviceless_mounts.pop(key, None)
        validate_labels(labels)
        active = self._store.get(key)
        if self._store.find(name) is not None:
            raise AlreadyExists(f"snapshot {name!r} already exists")
        if active.kind != Kind.ACTIVE:
            raise FailedPrecondition(f"snapshot {key!r} is not active")
        zfile = commit_zfile_config({**active.info.labels, **labels}, self._options.seal_writable)
        await self._guard.run(self._commit(active, name, labels, zfile))

    async def _commit(
        self, active: Record, name: str, labels: Mapping[str, str], zfile: ZFileConfig
    ) -> None:
        """Every check before the first side effect (DESIGN-v1 §22 quirks 2 and 3)."""
        parent = self._store.find(active.parent) if active.parent else None
        storage = await self._layers.storage_type(active)
        local_layer = storage is StorageType.LOCAL_LAYER and L.turbo_oci_target(labels) is None
        with self._commits.reserve(name):
            match await self._role(active, parent):
                case _ if local_layer:  # layer.tar converted (DESIGN-v1 §13), TurboOCI first (§8)
                    await self._conversions.commit(active, parent, name, labels)
                case WritableRootfs(commits_layer_file=True):
                    await self._commits.commit_writable(active, parent, name, labels, zfile)
                case _:
                    await self._commits.commit_record(active, parent, name, labels, storage)

    async def remove(self, key: str) -> None:
        validate_key(key)
        self._deviceless_mounts.pop(key, None)
        record = self._store.get(key)
        if self._store.has_children(key):
            raise FailedPrecondition(f"cannot remove snapshot {key!r}: it has children")
        await self._guard.run(self._remove(record))

    async def _remove(self, record: Record) -> None:
        """Devices first (DESIGN-v1 §9), then the row; the directory goes later.

        A snapshot whose mountpoint is still mounted once its own device is done
        with is refused before the parent's device or the row is touched.
        """
        parent = self._store.find(record.parent) if record.parent else None
        role = await self._role(record, parent)
        async with await self._device_locks(record, parent, role):
            await self._release.detach_unless_busy(record, role)
            await self._release.refuse_if_mounted(record)
            await self._docker.release_image(record, parent, self._release.detach_unless_busy)
            if self._options.auto_remove_dev and record.kind == Kind.ACTIVE and parent:
                parent_role = await self._role(parent, None)
                await self._release.release_parent_device(
                    parent, parent_role, exclude=record.key, also_user=self._docker.extra_users
                )
            await self._store.remove(record.key)
        self._layers.forget(record.id)
        if record.rw_mode != RwMode.OVERLAYFS.value:  # only a writable layer has files outside
            await self._layers.writable.remove_created(record.id)
        if self._options.async_remove:
            log.info("asyncRemove enabled, remove snapshots in Cleanup() method.")
        else:
            self._dirs.remove_later(record.id)

    async def _device_locks(
        self, record: Record, parent: Record | None, role: Role
    ) -> AbstractAsyncContextManager[None]:
        """The locks of the snapshot and its parent (DESIGN §7), when a device is involved.

        Plain overlayfs snapshots have no device: they take no lock, so their calls
        (e.g. many containers on one base layer) stay concurrent.
        """
        lock_ids = await self._device_lock_ids(record, parent, role)
        return self._locks.hold(*lock_ids) if lock_ids else contextlib.nullcontext()

    async def _device_lock_ids(
        self, record: Record, parent: Record | None, role: Role
    ) -> tuple[int, ...]:
        """IDs whose locks a call on the snapshot takes; none when no device is involved."""
        parent_role = None if parent is None else await self._role(parent, None)
        if has_own_device(role) or (parent_role is not None and has_own_device(parent_role)):
            return (record.id, *([parent.id] if parent else []))
        image_top = self._docker.image_to_attach(role, parent, new=False)
        if image_top is not None:  # a Docker container layer's Mounts may attach it
            return (record.id, image_top.id)
        return ()

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
        return matching_chunks((record.info for record in self._store.records()), filter_strings)

    async def usage(self, key: str) -> Usage:
        validate_key(key)
        record = self._store.get(key)
        return await snapshot_usage(record, self._layers, self._layout, self._blocking)
