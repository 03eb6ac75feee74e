"""Tests of obdsnap.snapshot_mounts: the mounts of every role (DESIGN §6 4.)."""

from __future__ import annotations

from pathlib import Path

import pytest

from obdsnap.errors import FailedPrecondition
from obdsnap.layout import Layout
from obdsnap.mounts import Mount
from obdsnap.role import (
    AccelerationUnpack,
    BlockRootfs,
    CommittedLayer,
    DockerContainer,
    DockerInit,
    OverlayRootfs,
    PlainUnpack,
    RemoteUnpack,
    Role,
    RwMode,
    StorageType,
    TraceFlags,
    WritableRootfs,
)
from obdsnap.snapshot_mounts import AttachedDevice, MountedSnapshot, snapshot_mounts
from obdsnap.storage import Kind

LAYOUT = Layout(Path("/r"))
SNAPSHOTS = "/r/snapshots"


def writable(mode: RwMode) -> WritableRootfs:
    return WritableRootfs(
        mode=mode, block_parent=True, fresh_filesystem=False, trace=None, commits_layer_file=True
    )


def mounts(
    role: Role, kind: Kind, parents: list[int], device: AttachedDevice | None = None
) -> list[Mount]:
    snapshot = MountedSnapshot(7, kind, parents)
    return snapshot_mounts(role, snapshot, LAYOUT, index_off=True, device=device)


def container_overlay(lowerdir: str) -> Mount:
    """The overlay of snapshot 7, an active one, on ``lowerdir``."""
    options = ("index=off", f"workdir={SNAPSHOTS}/7/work", f"upperdir={SNAPSHOTS}/7/fs")
    return Mount("overlay", "overlay", (*options, f"lowerdir={lowerdir}"))


@pytest.mark.parametrize("role", [PlainUnpack(), OverlayRootfs(), RemoteUnpack("t")])
def test_plain_layers_mount_as_containerd_overlay(role: Role) -> None:
    assert mounts(role, Kind.ACTIVE, []) == [Mount("bind", f"{SNAPSHOTS}/7/fs", ("rw", "rbind"))]
    assert mounts(role, Kind.VIEW, []) == [Mount("bind", f"{SNAPSHOTS}/7/fs", ("ro", "rbind"))]
    assert mounts(role, Kind.ACTIVE, [5, 3]) == [
        container_overlay(f"{SNAPSHOTS}/5/fs:{SNAPSHOTS}/3/fs")
    ]
    assert mounts(role, Kind.VIEW, [5]) == [Mount("bind", f"{SNAPSHOTS}/5/fs", ("ro", "rbind"))]
    assert mounts(role, Kind.VIEW, [5, 3]) == [
        Mount("overlay", "overlay", ("index=off", f"lowerdir={SNAPSHOTS}/5/fs:{SNAPSHOTS}/3/fs"))
    ]


def test_acceleration_unpack_is_a_rw_bind_of_its_fs() -> None:
    assert mounts(AccelerationUnpack(block_parent=True), Kind.ACTIVE, [5]) == [
        Mount("bind", f"{SNAPSHOTS}/7/fs", ("rw", "bind"))
    ]


def test_block_rootfs_is_an_overlay_on_the_parent_device() -> None:
    role = BlockRootfs(TraceFlags())
    assert mounts(role, Kind.ACTIVE, [5, 3]) == [
        container_overlay(f"{SNAPSHOTS}/5/block/mountpoint")
    ]
    assert mounts(role, Kind.VIEW, [5, 3]) == [
        Mount("bind", f"{SNAPSHOTS}/5/block/mountpoint", ("ro", "rbind"))
    ]


@pytest.mark.parametrize(("kind", "flag"), [(Kind.ACTIVE, "rw"), (Kind.VIEW, "ro")])
def test_writable_dir_is_a_bind_of_its_own_mountpoint(kind: Kind, flag: str) -> None:
    assert mounts(writable(RwMode.DIR), kind, [5]) == [
        Mount("bind", f"{SNAPSHOTS}/7/block/mountpoint", (flag, "rbind"))
    ]


@pytest.mark.parametrize(("kind", "flag"), [(Kind.ACTIVE, "rw"), (Kind.VIEW, "ro")])
def test_writable_dev_is_the_device_itself(kind: Kind, flag: str) -> None:
    device = AttachedDevice(Path("/dev/sdx"), "xfs")
    assert mounts(writable(RwMode.DEV), kind, [5], device) == [
        Mount("xfs", "/dev/sdx", (flag, "discard"))
    ]
    with pytest.raises(ValueError, match="needs its device"):
        mounts(writable(RwMode.DEV), kind, [5])


def test_a_committed_layer_has_no_mounts() -> None:
    with pytest.raises(FailedPrecondition):
        mounts(CommittedLayer(StorageType.LOCAL_BLOCK), Kind.COMMITTED, [])


@pytest.mark.parametrize("block_parent", [True, False])
@pytest.mark.parametrize(("kind", "flag"), [(Kind.ACTIVE, "rw"), (Kind.VIEW, "ro")])
def test_s17_init_layer_is_a_bind_of_its_fs(block_parent: bool, kind: Kind, flag: str) -> None:
    """DESIGN-v1 §17: an init layer answers a bind of its own fs/ (a view's read-only)."""
    assert mounts(DockerInit(block_parent=block_parent), kind, [5, 3]) == [
        Mount("bind", f"{SNAPSHOTS}/7/fs", (flag, "rbind"))
    ]


def test_s17_container_layer_on_a_block_image() -> None:
    """DESIGN-v1 §17: lowerdir is the init layer's fs/, then the image top's mountpoint."""
    role = DockerContainer(block_image=True)
    assert mounts(role, Kind.ACTIVE, [6, 5, 3]) == [
        container_overlay(f"{SNAPSHOTS}/6/fs:{SNAPSHOTS}/5/block/mountpoint")
    ]
    assert mounts(role, Kind.VIEW, [6, 5, 3]) == [
        Mount(
            "overlay",
            "overlay",
            ("index=off", f"lowerdir={SNAPSHOTS}/6/fs:{SNAPSHOTS}/5/block/mountpoint"),
        )
    ]


def test_s17_container_layer_on_a_normal_image_is_the_standard_overlay() -> None:
    """DESIGN-v1 §17 (v1.4.4 fix): the init layer's fs/, then the image layers', nearest first."""
    role = DockerContainer(block_image=False)
    for parents in ([6, 5, 3], [6]):
        assert mounts(role, Kind.ACTIVE, parents) == mounts(OverlayRootfs(), Kind.ACTIVE, parents)
    assert mounts(role, Kind.ACTIVE, [6, 5, 3]) == [
        container_overlay(f"{SNAPSHOTS}/6/fs:{SNAPSHOTS}/5/fs:{SNAPSHOTS}/3/fs")
    ]
    assert mounts(role, Kind.VIEW, [6]) == [Mount("bind", f"{SNAPSHOTS}/6/fs", ("ro", "rbind"))]
