"""What a snapshot is for, decided once: the one place that reads rwMode, labels and storage types.

A snapshot's role follows from its key and labels, its writable mode and its
parent's storage type (DESIGN §3-§7). The snapshotter computes it once per call
and branches on it with ``match`` for set-up, mounts, commit, remove and
locking, so a new kind of layer is one new class here and one case there.

    PlainUnpack         containerd unpacks a plain OCI layer into ``fs/``
    AccelerationUnpack  containerd unpacks an acceleration layer (a trace) into ``fs/``
    RemoteUnpack        an overlaybd blob: committed at once, fetched lazily by the device
    DownloadUnpack      an overlaybd blob containerd downloads into ``fs/`` (DESIGN-v1 §18)
    OverlayRootfs       a rootfs on plain parents (or none): overlay of their ``fs/``
    BlockRootfs         a rootfs or view on a block parent: overlay on (ro bind of) its device
    WritableRootfs      a rootfs with a writable device of its own (rwMode dir or dev)
    CommittedLayer      a committed layer: plain, or a block layer whose device children use
    DockerInit          Docker mode: moby's ``<id>-init`` layer on the image top (DESIGN-v1 §17)
    DockerContainer     Docker mode: a container layer on an init layer
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeAlias

from obdsnap import labels as L


class RwMode(enum.Enum):
    """How a container's rootfs is set up (the boot config's ``rwMode``, DESIGN §5)."""

    OVERLAYFS = "overlayfs"  # an overlay: upper dir of its own, lowers of its parents
    DIR = "dir"  # a writable device of its own, mounted; the rootfs is a bind of it
    DEV = "dev"  # a writable device of its own, handed over unmounted (VM runtimes)

    @classmethod
    def stored(cls, value: str) -> RwMode:
        """The mode a metadata row records; "" (committed, or made before modes were kept)."""
        return cls(value) if value else cls.OVERLAYFS

    @property
    def writable(self) -> bool:
        return self is not RwMode.OVERLAYFS


class StorageType(enum.Enum):
    """Which kind of layer a snapshot is (DESIGN-v1 §4); detected by overlaybd/storage_type.py."""

    NORMAL = "normal"  # a plain OCI layer, served by overlayfs
    LOCAL_BLOCK = "local"  # an overlaybd layer file on this node
    REMOTE_BLOCK = "remote"  # an overlaybd blob fetched lazily from the registry
    LOCAL_LAYER = "local layer"  # a layer.tar, converted to TurboOCI at Commit (DESIGN-v1 §13)

    @property
    def is_block(self) -> bool:
        """An overlaybd layer: it has a device config, and a device once a child needs it."""
        return self in (StorageType.LOCAL_BLOCK, StorageType.REMOTE_BLOCK)


LOCAL_LAYER_REFUSED = "it holds a layer.tar that its commit did not convert (DESIGN-v1 §13)"


# containerd's snapshots.UnpackKeyFormat is "extract-%s %s" (ctr import unpacks without
# labels), and its metadata store hands proxies keys as "<namespace>/<id>/<key>".
UNPACK_KEY_PREFIX = "extract-"
_UNPACK_KEY = re.compile(r"(?:[^/]+/[0-9]+/)?" + re.escape(UNPACK_KEY_PREFIX))


def is_unpack(key: str, labels: Mapping[str, str]) -> bool:
    """Whether containerd is unpacking a layer into this snapshot (never a container's rootfs).

    An image layer prepared without ``snapshot.ref`` says so with ``snapshot/type=image``
    (DESIGN-v1 §2, §5): no device, no quota, unpacked as a plain layer.
    """
    return (
        L.TARGET_SNAPSHOT_REF in labels
        or labels.get(L.SNAPSHOT_TYPE) == L.SNAPSHOT_TYPE_IMAGE
        or _UNPACK_KEY.match(key) is not None
    )


def is_rootfs(key: str, labels: Mapping[str, str]) -> bool:
    """DESIGN-v1 §5: a container's rootfs (views too), the snapshots a rootfs quota applies to."""
    return not is_unpack(key, labels)


def is_acceleration_unpack(labels: Mapping[str, str]) -> bool:
    """containerd unpacks an acceleration layer (its files list what to prefetch)."""
    return L.TARGET_SNAPSHOT_REF in labels and is_acceleration_layer(labels)


def is_acceleration_layer(labels: Mapping[str, str]) -> bool:
    return labels.get(L.ACCELERATION_LAYER) == "yes"


def is_remote_layer(labels: Mapping[str, str]) -> bool:
    """The labels of an overlaybd blob that containerd would otherwise download (DESIGN §3)."""
    return (
        L.TARGET_SNAPSHOT_REF in labels
        and L.BLOB_DIGEST in labels
        and L.BLOB_SIZE in labels
        and (L.IMAGE_REF in labels or L.CRI_IMAGE_REF in labels)
    )


@dataclass(frozen=True)
class ParentLayer:
    """What a snapshot's role needs to know of its (committed) parent."""

    labels: Mapping[str, str]
    storage: StorageType


@dataclass(frozen=True)
class TraceFlags:
    """A block parent's device flags for the child's start (DESIGN §6 3.)."""

    acceleration_layer: bool = False  # the parent is an acceleration layer: prefetch
    record_trace_path: str = ""  # record the child's start into this file


def trace_flags(parent: ParentLayer, labels: Mapping[str, str]) -> TraceFlags:
    """Acceleration when the parent is an acceleration layer, else trace recording if asked."""
    if is_acceleration_layer(parent.labels):
        return TraceFlags(acceleration_layer=True)
    if labels.get(L.RECORD_TRACE) == "yes":
        return TraceFlags(record_trace_path=labels.get(L.RECORD_TRACE_PATH, ""))
    return TraceFlags()


@dataclass(frozen=True)
class PlainUnpack:
    to_turbo_oci: bool = False  # convert2turbo-oci: a differ writes layer.tar (DESIGN-v1 §13)


@dataclass(frozen=True)
class AccelerationUnpack:
    block_parent: bool  # its config is the parent's plus its files: without one, refused


@dataclass(frozen=True)
class RemoteUnpack:
    target: str  # the name the layer is committed under at once


@dataclass(frozen=True)
class DownloadUnpack:
    pass


@dataclass(frozen=True)
class OverlayRootfs:
    pass


@dataclass(frozen=True)
class BlockRootfs:
    trace: TraceFlags  # set on the parent's config before its device is attached


@dataclass(frozen=True)
class WritableRootfs:
    mode: RwMode  # DIR or DEV
    block_parent: bool  # the writable layer stacks on the parent's lowers (else: none)
    fresh_filesystem: bool  # no parent at all: the new device gets mkfs'ed
    trace: TraceFlags | None  # with a block parent: its flags, on the parent and own config
    commits_layer_file: bool  # Commit turns the writable layer into fs/overlaybd.commit


@dataclass(frozen=True)
class CommittedLayer:
    storage: StorageType
    was_writable: bool = False  # committed from a dir/dev rootfs: it had a device of its own


@dataclass(frozen=True)
class DockerInit:
    block_parent: bool  # the image top is a block layer: its device is attached, mounted ro


@dataclass(frozen=True)
class DockerContainer:
    block_image: bool  # the image top (the init layer's parent) is a block layer


Role: TypeAlias = (
    PlainUnpack
    | AccelerationUnpack
    | RemoteUnpack
    | DownloadUnpack
    | OverlayRootfs
    | BlockRootfs
    | WritableRootfs
    | CommittedLayer
    | DockerInit
    | DockerContainer
)


def new_rw_mode(
    key: str, labels: Mapping[str, str], parent: ParentLayer | None, default: RwMode
) -> RwMode:
    """DESIGN §5: the writable mode a new snapshot is created with, and keeps.

    An unpack is never a rootfs; plain parents give overlayfs; otherwise the
    writable label (any value but dir/dev meaning overlayfs), else the boot config's.
    """
    if is_unpack(key, labels) or (parent is not None and not parent.storage.is_block):
        return RwMode.OVERLAYFS
    if L.WRITABLE not in labels:
        return default
    chosen = labels[L.WRITABLE]
    if chosen in (RwMode.DIR.value, RwMode.DEV.value):
        return RwMode(chosen)
    return RwMode.OVERLAYFS


@dataclass(frozen=True)
class DockerLineage:
    """What Docker mode (DESIGN-v1 §17) needs of a snapshot's parents; only given in that mode."""

    parent_key: str  # "" without a parent
    image_top: ParentLayer | None  # under a container layer: its init layer's parent


# moby prepares "<id>-init-key" on the image top, commits it as "<id>-init", and prepares
# the container "<id>" on that; containerd adds its "<namespace>/<n>/" to every key. Keys
# are matched without that prefix, so that a namespace named "x-init-y" does not make
# every snapshot an init layer (Go matches the whole key).
DOCKER_INIT_SUFFIX = "-init"
_CONTAINERD_KEY_PREFIX = re.compile(r"[^/]+/[0-9]+/")


def client_key(key: str) -> str:
    """The key as containerd's client chose it, without the metadata store's prefix."""
    prefix = _CONTAINERD_KEY_PREFIX.match(key)
    return key[prefix.end() :] if prefix else key


def is_docker_init_key(key: str) -> bool:
    """An init layer's key: ends with ``-init`` or has ``-init-`` anywhere, as Go matches."""
    own = client_key(key)
    return own.endswith(DOCKER_INIT_SUFFIX) or f"{DOCKER_INIT_SUFFIX}-" in own


def is_docker_init_parent(parent_key: str) -> bool:
    """A container layer's parent: a committed init layer (``<id>-init``)."""
    return client_key(parent_key).endswith(DOCKER_INIT_SUFFIX)


def docker_role(
    key: str, parent: ParentLayer | None, docker: DockerLineage | None
) -> DockerInit | DockerContainer | None:
    """DESIGN-v1 §17: an init layer by its key, a container layer by its parent's."""
    if docker is None:
        return None
    if is_docker_init_key(key):
        return DockerInit(block_parent=parent is not None and parent.storage.is_block)
    if is_docker_init_parent(docker.parent_key):
        image_top = docker.image_top
        return DockerContainer(block_image=image_top is not None and image_top.storage.is_block)
    return None


def role_of(
    key: str,
    labels: Mapping[str, str],
    rw_mode: RwMode,
    parent: ParentLayer | None,
    docker: DockerLineage | None = None,
) -> Role:
    """The role of an active or view snapshot, from its kept writable mode.

    ``docker`` is given in Docker mode only; its layers come after unpacks and
    writable rootfs, before the overlay rootfs (DESIGN-v1 §6 step 4).
    """
    block_parent = parent is not None and parent.storage.is_block
    if is_unpack(key, labels):
        if is_acceleration_unpack(labels):
            return AccelerationUnpack(block_parent=block_parent)
        if is_remote_layer(labels):
            return remote_unpack_role(labels)
        return PlainUnpack(to_turbo_oci=L.CONVERT_TO_TURBO_OCI in labels)
    trace = trace_flags(parent, labels) if parent is not None and block_parent else None
    if rw_mode.writable:
        return WritableRootfs(
            mode=rw_mode,
            block_parent=block_parent,
            fresh_filesystem=parent is None,
            trace=trace,
            commits_layer_file=not is_acceleration_layer(labels),
        )
    docker_layer = docker_role(key, parent, docker)
    if docker_layer is not None:
        return docker_layer
    if trace is not None:
        return BlockRootfs(trace=trace)
    return OverlayRootfs()


def remote_unpack_role(labels: Mapping[str, str]) -> RemoteUnpack | DownloadUnpack | PlainUnpack:
    """DESIGN-v1 §6 steps 2.3-2.5: downloaded when asked; a TurboOCI meta layer is unpacked
    as a plain layer (its config comes at Commit, §12); else committed at once."""
    if labels.get(L.DOWNLOAD_REMOTE_BLOB) == L.DOWNLOAD_REMOTE_BLOB_VALUE:
        return DownloadUnpack()
    if L.turbo_oci_target(labels) is not None:
        return PlainUnpack()
    return RemoteUnpack(target=labels[L.TARGET_SNAPSHOT_REF])


def committed_role(storage: StorageType, rw_mode: RwMode) -> CommittedLayer:
    """The role of a committed snapshot, from its own storage type and its kept mode."""
    return CommittedLayer(storage=storage, was_writable=rw_mode.writable)


def ready_at_create(role: Role) -> bool:
    """False for a snapshot with a device or config of its own until its set-up is done.

    After a crash, start-up rolls a snapshot that is not ready back instead of
    keeping half of it.
    """
    match role:
        case WritableRootfs() | AccelerationUnpack() | RemoteUnpack() | DownloadUnpack():
            return False
        case _:
            return True


def has_own_device(role: Role) -> bool:
    """Only writable snapshots and block layers ever get a device of their own."""
    match role:
        case WritableRootfs():
            return True
        case CommittedLayer(storage=storage, was_writable=was_writable):
            return storage.is_block or was_writable
        case _:
            return False


def device_is_mounted(role: Role) -> bool:
    """Whether the snapshot's own device is mounted on its mountpoint (not in dev mode)."""
    match role:
        case WritableRootfs(mode=RwMode.DEV):
            return False
        case _:
            return has_own_device(role)


def commits_local_layer(storage: StorageType) -> bool:
    """A layer committed with an overlaybd layer file in ``fs/`` gets a device config."""
    return storage is StorageType.LOCAL_BLOCK
