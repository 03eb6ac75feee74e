"""The parent-in-use guard's rule (DESIGN-v1 §9): which children keep a parent's device."""

from __future__ import annotations

import pytest
from support.inprocess import InProcess, remote_layer_labels

from obdsnap.errors import AlreadyExists
from obdsnap.removal import DeviceRelease, is_device_user
from obdsnap.role import RwMode, StorageType, committed_role
from obdsnap.storage import Info, Kind, Record

REMOTE_LABELS = remote_layer_labels(
    "remote-layer", "sha256:" + "cd" * 32, 4096, "registry.example/library/app:1"
)


def child(key: str, kind: Kind) -> Record:
    return Record(7, Info(key, "image-top", kind, {}, 1, 1))


@pytest.mark.parametrize(
    ("kind", "user"), [(Kind.ACTIVE, True), (Kind.VIEW, True), (Kind.COMMITTED, False)]
)
def test_s9_guard_active_and_view_children_are_users_committed_ones_not(
    kind: Kind, user: bool
) -> None:
    """DESIGN-v1 §9 guard: only active and view snapshots count."""
    assert is_device_user(child("other", kind), exclude="removed") is user


@pytest.mark.parametrize("kind", [Kind.ACTIVE, Kind.VIEW, Kind.COMMITTED])
def test_s9_guard_the_snapshot_being_removed_is_never_a_user(kind: Kind) -> None:
    """DESIGN-v1 §9 guard: the excluded key does not keep the device, whatever counts."""
    assert not is_device_user(child("removed", kind), "removed", also_user=lambda _: True)


def test_s9_guard_an_extra_predicate_adds_users() -> None:
    """DESIGN-v1 §17 / §22 quirk 11: a caller may count committed children too."""
    committed = child("abc-init", Kind.COMMITTED)
    assert is_device_user(committed, "xyz-init", also_user=lambda c: c.key.endswith("-init"))
    assert not is_device_user(child("layer", Kind.COMMITTED), "xyz-init", lambda c: False)


async def _image_with_children(obd: InProcess) -> Record:
    """A remote image top with a committed child and an active one; its device attached."""
    with pytest.raises(AlreadyExists):
        await obd.snapshotter.prepare("extract-remote", "", REMOTE_LABELS)
    await obd.snapshotter.prepare("old-init-active", "remote-layer", {})
    await obd.snapshotter.commit("old-init", "old-init-active", {})
    await obd.snapshotter.prepare("container", "remote-layer", {})
    top = obd.store.get("remote-layer")
    assert top.id in obd.backend.devices
    return top


def _committed(child: Record) -> bool:
    return child.kind == Kind.COMMITTED


def _release(obd: InProcess) -> DeviceRelease:
    return DeviceRelease(obd.layout, obd.store, obd.devices, obd.mounter, obd.blocking)


async def test_s9_guard_releases_the_parent_when_only_committed_children_are_left(
    obd: InProcess,
) -> None:
    """DESIGN-v1 §9 guard: with the removed key excluded, committed children keep nothing."""
    top = await _image_with_children(obd)
    role = committed_role(StorageType.REMOTE_BLOCK, RwMode.OVERLAYFS)
    await _release(obd).release_parent_device(top, role, exclude="container")
    assert top.id not in obd.backend.devices


async def test_s9_guard_keeps_the_parent_for_children_an_extra_predicate_counts(
    obd: InProcess,
) -> None:
    """DESIGN-v1 §17 / §22 quirk 11: a caller counting committed children keeps the device."""
    top = await _image_with_children(obd)
    role = committed_role(StorageType.REMOTE_BLOCK, RwMode.OVERLAYFS)
    await _release(obd).release_parent_device(top, role, exclude="container", also_user=_committed)
    assert top.id in obd.backend.devices
