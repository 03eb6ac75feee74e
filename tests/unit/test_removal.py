"""The parent-in-use guard's rule (DESIGN-v1 §9): which children keep a parent's device."""

from __future__ import annotations

import pytest

from obdsnap.removal import is_device_user
from obdsnap.storage import Info, Kind, Record


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
