"""The writes of containerd's snapshots/storage, each validated and applied to a batch.

``now`` is the write's time in nanoseconds since the Unix epoch, from the store's clock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from obdsnap.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from obdsnap.storage.batch import Batch
from obdsnap.storage.model import Info, Kind, Record, Usage


def create(
    batch: Batch,
    now: int,
    kind: Kind,
    key: str,
    parent: str,
    labels: Mapping[str, str],
    rw_mode: str,
    ready: bool,
) -> Record:
    if kind not in (Kind.ACTIVE, Kind.VIEW):
        raise InvalidArgument(f"snapshot type {kind.name} invalid; only active or view")
    if parent:
        found = batch.get(parent)
        if found is None:
            raise NotFound(f"missing parent {parent!r}")
        if found.kind != Kind.COMMITTED:
            raise InvalidArgument(f"parent {parent!r} is not a committed snapshot")
    if batch.get(key) is not None:
        raise AlreadyExists(f"snapshot {key!r} already exists")
    info = Info(key, parent, kind, _stored_labels(labels), now, now)
    record = Record(batch.next_id(), info, rw_mode=rw_mode, ready=ready)
    batch.put(record)
    batch.link(parent, key)
    return record


def commit(
    batch: Batch, now: int, key: str, name: str, usage: Usage, labels: Mapping[str, str]
) -> Record:
    active = batch.get(key)
    if active is None:
        raise NotFound(f"active snapshot {key!r} does not exist")
    if batch.get(name) is not None:
        raise AlreadyExists(f"snapshot {name!r} already exists")
    if active.kind != Kind.ACTIVE:
        raise FailedPrecondition(f"snapshot {key!r} is not active")
    info = Info(name, active.parent, Kind.COMMITTED, _stored_labels(labels), now, now)
    committed = Record(active.id, info, usage, active.rw_mode, ready=True)
    batch.delete(key)
    batch.put(committed)
    batch.unlink(active.parent, key)
    batch.link(active.parent, name)
    return committed


def mark_ready(batch: Batch, key: str) -> Record:
    record = batch.get(key)
    if record is None:
        raise NotFound(f"snapshot {key!r} does not exist")
    ready = replace(record, ready=True)
    batch.put(ready)
    return ready


def remove(batch: Batch, key: str) -> Record:
    record = batch.get(key)
    if record is None:
        raise NotFound(f"snapshot {key!r} does not exist")
    if batch.children_of(key):
        raise FailedPrecondition(f"cannot remove snapshot {key!r}: it has children")
    batch.delete(key)
    batch.unlink(record.parent, key)
    return record


def update(
    batch: Batch, now: int, key: str, labels: Mapping[str, str], paths: Sequence[str]
) -> Info:
    record = batch.get(key)
    if record is None:
        raise NotFound(f"snapshot {key!r} does not exist")
    updated = dict(record.info.labels)
    if not paths:
        updated = dict(labels)
    for path in paths:
        if path == "labels":
            updated = dict(labels)
        elif path.startswith("labels."):
            label = path[len("labels.") :]
            if label in labels:
                updated[label] = labels[label]
            else:
                updated.pop(label, None)
        else:
            raise InvalidArgument(f"cannot update {path!r} field on snapshot {key!r}")
    info = replace(record.info, labels=_stored_labels(updated), updated_ns=now)
    batch.put(replace(record, info=info))
    return info


def _stored_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """A label with an empty value is never stored (containerd's boltutil does the same)."""
    return {key: value for key, value in labels.items() if value}
