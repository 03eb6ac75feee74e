"""The mounts a snapshot answers with, from its role and its parents (DESIGN §6 4.).

One function, like ``mounts()`` of containerd's overlay snapshotter: plain
layers get exactly its answer; block layers an overlay on (or a bind of) a
device's mountpoint, or the device itself; Docker's layers (DESIGN-v1 §17) a
bind of the init layer, and the container an overlay on it and the image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from obdsnap.errors import FailedPrecondition
from obdsnap.layout import Layout
from obdsnap.mounts import Mount, bind_mount, overlay_mount
from obdsnap.role import (
    AccelerationUnpack,
    BlockRootfs,
    CommittedLayer,
    DockerContainer,
    DockerInit,
    DownloadUnpack,
    OverlayRootfs,
    PlainUnpack,
    RemoteUnpack,
    Role,
    RwMode,
    WritableRootfs,
)
from obdsnap.storage import Kind


@dataclass(frozen=True)
class AttachedDevice:
    """The snapshot's own device, for a ``dev`` mode rootfs that gets it unmounted."""

    path: Path
    fs_type: str


@dataclass(frozen=True)
class MountedSnapshot:
    id: int
    kind: Kind
    parent_ids: Sequence[int]  # nearest first


def snapshot_mounts(
    role: Role,
    snapshot: MountedSnapshot,
    layout: Layout,
    *,
    index_off: bool,
    device: AttachedDevice | None = None,
) -> list[Mount]:
    readonly = snapshot.kind == Kind.VIEW
    match role:
        case PlainUnpack(to_turbo_oci=True):  # DESIGN-v1 §6 step 7: the differ writes next to fs/
            return [bind_mount(layout.fs_dir(snapshot.id), readonly=False)]
        case PlainUnpack() | RemoteUnpack() | OverlayRootfs():
            return overlay_mounts(snapshot, layout, index_off=index_off)
        case AccelerationUnpack() | DownloadUnpack():
            # containerd unpacks the layer's files into fs/ itself.
            return [Mount("bind", str(layout.fs_dir(snapshot.id)), ("rw", "bind"))]
        case BlockRootfs():
            lower = layout.block(snapshot.parent_ids[0]).mountpoint
            if readonly:
                return [bind_mount(lower, readonly=True)]
            return [_writable_overlay(snapshot.id, [lower], layout, index_off=index_off)]
        case WritableRootfs(mode=RwMode.DEV):
            if device is None:
                raise ValueError(f"snapshot {snapshot.id}: a dev mode rootfs needs its device")
            options = ("ro" if readonly else "rw", "discard")
            return [Mount(device.fs_type, str(device.path), options)]
        case WritableRootfs():
            return [bind_mount(layout.block(snapshot.id).mountpoint, readonly=readonly)]
        case DockerInit():
            # moby writes its init files into fs/; the image top's device is not needed here.
            return [bind_mount(layout.fs_dir(snapshot.id), readonly=readonly)]
        case DockerContainer(block_image=block_image):
            return _mounts_on(
                snapshot, _docker_lowers(snapshot, layout, block_image), layout, index_off=index_off
            )
        case CommittedLayer():
            raise FailedPrecondition(f"snapshot {snapshot.id} is committed: it has no mounts")


def overlay_mounts(snapshot: MountedSnapshot, layout: Layout, *, index_off: bool) -> list[Mount]:
    """containerd's overlay snapshotter: a bind without parents, else an overlay of their fs/."""
    parents = [layout.fs_dir(parent_id) for parent_id in snapshot.parent_ids]
    if not parents:
        return [bind_mount(layout.fs_dir(snapshot.id), readonly=snapshot.kind == Kind.VIEW)]
    return _mounts_on(snapshot, parents, layout, index_off=index_off)


def _docker_lowers(snapshot: MountedSnapshot, layout: Layout, block_image: bool) -> list[Path]:
    """The init layer's fs/, then the image: its top's device, or its layers' fs/."""
    init, *image = snapshot.parent_ids
    if block_image:
        return [layout.fs_dir(init), layout.block(image[0]).mountpoint]
    return [layout.fs_dir(parent_id) for parent_id in snapshot.parent_ids]


def _mounts_on(
    snapshot: MountedSnapshot, lowers: list[Path], layout: Layout, *, index_off: bool
) -> list[Mount]:
    """An active snapshot's overlay on ``lowers``; a view's read-only mount of them."""
    if snapshot.kind == Kind.ACTIVE:
        return [_writable_overlay(snapshot.id, lowers, layout, index_off=index_off)]
    if len(lowers) == 1:
        return [bind_mount(lowers[0], readonly=True)]
    return [overlay_mount(lowers, index_off=index_off)]


def _writable_overlay(
    snapshot_id: int, lowers: list[Path], layout: Layout, *, index_off: bool
) -> Mount:
    return overlay_mount(
        lowers,
        upper=layout.fs_dir(snapshot_id),
        work=layout.work_dir(snapshot_id),
        index_off=index_off,
    )
