"""Taking a root over from the Go snapshotter, and giving it back.

At start-up, a ``metadata.db`` that is a bbolt file (containerd's MetaStore, as
the Go snapshotter writes it) is imported into a new SQLite store in one step
that a crash cannot tear: the store is built and fsync'ed under a temporary
name, the bolt file gets a second name (a hard link, so ``metadata.db`` stays
the bolt file until the end), then the store is renamed over ``metadata.db``.
A crash before that rename leaves the bolt file as the store, and the next
start imports again.

``obdsnap migrate --to go`` does the reverse with the same steps.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import sqlite3
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path

from obdsnap.fsutil import fsync_path
from obdsnap.layout import Layout
from obdsnap.overlaybd.storage_type import detect_storage_type, writable_dir_of
from obdsnap.overlaybd.writable import adopt_found_layer
from obdsnap.role import ParentLayer, RwMode, StorageType, new_rw_mode
from obdsnap.storage.bolt import BoltError, looks_like_bolt, read_bolt, write_bolt
from obdsnap.storage.gometa import (
    GoMetadata,
    GoMetadataError,
    bolt_from_records,
    records_from_bolt,
)
from obdsnap.storage.metastore import MetaStore
from obdsnap.storage.model import Kind, Record
from obdsnap.storage.sqlite import StoreError, write_new_store

log = logging.getLogger(__name__)

SQLITE_MAGIC = b"SQLite format 3\0"
HEAD_SIZE = 4096
GO_KEPT_SUFFIX = ".go-bbolt"  # the Go snapshotter's bolt file, kept after an import
SQLITE_KEPT_SUFFIX = ".obdsnap-sqlite"  # obdsnap's store, kept after an export
IMPORTING_SUFFIX = ".importing"
EXPORTING_SUFFIX = ".exporting"


class MigrationError(Exception):
    """The metadata cannot be migrated; one line that names the file and the problem."""


# ---------------------------------------------------------------------- Go -> obdsnap


def import_go_metadata(layout: Layout, rw_mode: RwMode) -> str | None:
    """Blocking: import a bbolt ``metadata.db`` into SQLite; what was done, or None.

    ``rw_mode`` is the boot config's: with it the imported rootfs snapshots get the
    writable mode the Go snapshotter gives them with the same config. Refuses,
    changing nothing, a file that is neither SQLite nor bbolt, a damaged bolt file,
    and a bolt file that a running Go snapshotter holds.
    """
    path = layout.metadata_db
    staging = _sibling(path, IMPORTING_SUFFIX)
    head = _head(path)
    if head is None or not head or head.startswith(SQLITE_MAGIC):
        for leftover in (staging, _sibling(path, EXPORTING_SUFFIX)):  # of a try cut short
            _remove_leftovers(leftover)
        return None
    if not looks_like_bolt(head):
        raise MigrationError(f"{path}: neither an SQLite database nor a bbolt file")
    started = time.monotonic()
    with _shared_lock(path):
        metadata = _read_go_metadata(path)
        records = adopted_records(metadata.records, layout, rw_mode)
        _remove_leftovers(staging)  # an earlier try that a crash cut short
        try:
            write_new_store(staging, records, metadata.last_id)
            for stale in ("-wal", "-shm", "-journal"):  # of an older SQLite store, not the bolt's
                _sibling(path, stale).unlink(missing_ok=True)
            kept = _replace_keeping(path, staging, GO_KEPT_SUFFIX)
        except (OSError, sqlite3.Error) as exc:  # e.g. a full disk: the bolt file stays the store
            _remove_leftovers(staging)
            raise MigrationError(f"{path}: the import failed, nothing changed: {exc}") from None
    summary = (
        f"imported the Go snapshotter's metadata into {path}: {_counts(records)}; "
        f"highest ID {max((r.id for r in records), default=0)}, "
        f"ID sequence {metadata.sequence}; the bbolt file is kept as {kept} "
        f"({time.monotonic() - started:.2f}s)"
    )
    log.info("%s", summary)
    return summary


def _head(path: Path) -> bytes | None:
    try:
        with path.open("rb") as file:
            return file.read(HEAD_SIZE)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise MigrationError(f"{path}: cannot read it: {exc.strerror}") from None


@contextlib.contextmanager
def _shared_lock(path: Path) -> Iterator[None]:
    """A shared flock of the bolt file: bbolt holds an exclusive one while it is open."""
    descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise MigrationError(
                f"{path}: the bbolt file is locked by another process "
                "(is the Go snapshotter still running? stop it first)"
            ) from None
        yield
    finally:
        os.close(descriptor)


def _read_go_metadata(path: Path) -> GoMetadata:
    try:
        return records_from_bolt(read_bolt(path))
    except BoltError as exc:
        raise MigrationError(f"{path}: damaged bbolt file: {exc}") from None
    except GoMetadataError as exc:
        raise MigrationError(f"{path}: not the Go snapshotter's metadata: {exc}") from None
    except OSError as exc:
        raise MigrationError(f"{path}: cannot read it: {exc.strerror}") from None


def adopted_records(records: list[Record], layout: Layout, rw_mode: RwMode) -> list[Record]:
    """Blocking: the records as obdsnap would have made them: their writable mode, ready.

    The rules are the Go snapshotter's (DESIGN §5): a rootfs on a plain parent is
    overlayfs; on a block parent, or none, the snapshot's writable label decides,
    else the boot config's ``rw_mode``. A dir/dev snapshot has the writable layer
    its Prepare made, in ``block/`` or in ``overlay.active.path`` (recorded as found
    there, for obdsnap never to delete); without one it never had a device of its own.
    """
    by_key = {record.key: record for record in records}
    parents: dict[str, ParentLayer] = {}

    def parent_layer(key: str) -> ParentLayer:
        """A parent the metadata lacks counts as a plain layer."""
        if key not in parents:
            parent = by_key.get(key)
            parents[key] = (
                ParentLayer({}, StorageType.NORMAL)
                if parent is None
                else ParentLayer(
                    parent.info.labels, detect_storage_type(parent.info.labels, layout, parent.id)
                )
            )
        return parents[key]

    def mode(record: Record) -> str:
        if record.kind == Kind.COMMITTED:
            return ""
        parent = parent_layer(record.parent) if record.parent else None
        chosen = new_rw_mode(record.key, record.info.labels, parent, rw_mode)
        if not chosen.writable:
            return chosen.value
        place = writable_dir_of(record.info.labels, layout, record.id)
        if not place.data.exists():
            return RwMode.OVERLAYFS.value
        adopt_found_layer(layout.block(record.id), place)
        return chosen.value

    return [replace(record, rw_mode=mode(record), ready=True) for record in records]


def _counts(records: Iterable[Record]) -> str:
    kinds = Counter(record.kind for record in records)
    total = sum(kinds.values())
    parts = ", ".join(
        f"{kinds[kind]} {kind.label}" for kind in (Kind.ACTIVE, Kind.VIEW, Kind.COMMITTED)
    )
    unknown = kinds[Kind.UNKNOWN]
    return f"{total} snapshots ({parts}{f', {unknown} of unknown kind' if unknown else ''})"


# ---------------------------------------------------------------------- obdsnap -> Go


async def export_to_go(layout: Layout) -> str:
    """Write the store as the Go snapshotter's bbolt ``metadata.db``; what was done.

    The caller holds the root's lock, so no obdsnap serves the root meanwhile.
    """
    path = layout.metadata_db
    head = _head(path)
    if head is None:
        raise MigrationError(f"{path}: no such file")
    if looks_like_bolt(head):
        raise MigrationError(f"{path}: already a bbolt file; nothing to migrate")
    if not head.startswith(SQLITE_MAGIC):
        raise MigrationError(f"{path}: not an SQLite database")
    store = MetaStore(path)
    try:
        await store.open()
    except StoreError as exc:
        raise MigrationError(str(exc)) from None
    try:
        records, last_id = store.records(), store.last_id
        _check_settled(path, store)
    finally:
        await store.close()
    _check_parents(path, records)
    return await asyncio.to_thread(_write_go_metadata, path, records, last_id)


def _write_go_metadata(path: Path, records: list[Record], last_id: int) -> str:
    """Blocking: the bolt file in place of the (closed) SQLite store, which is kept."""
    _leave_wal_mode(path)
    staging = _sibling(path, EXPORTING_SUFFIX)
    _remove_leftovers(staging)
    try:
        write_bolt(staging, bolt_from_records(records, last_id))
        kept = _replace_keeping(path, staging, SQLITE_KEPT_SUFFIX)
    except (OSError, ValueError) as exc:  # a full disk; a key bbolt cannot hold
        _remove_leftovers(staging)
        raise MigrationError(
            f"{path}: not written as a bbolt file, nothing changed: {exc}"
        ) from None
    return (
        f"wrote the Go snapshotter's metadata to {path}: {_counts(records)}, "
        f"ID sequence {last_id}; obdsnap's SQLite store is kept as {kept}"
    )


def _check_settled(path: Path, store: MetaStore) -> None:
    intents = store.intents()
    unready = [record.key for record in store.records() if not record.ready]
    if intents or unready:
        what = [f"{i.operation.value} of snapshot {i.snapshot_id}" for i in intents]
        what += [f"create of {key!r}" for key in unready]
        raise MigrationError(
            f"{path}: {len(what)} operations were cut short ({'; '.join(what[:5])}): "
            "start obdsnap once to settle them, then stop it and migrate"
        )


def _check_parents(path: Path, records: list[Record]) -> None:
    keys = {record.key for record in records}
    for record in records:
        if record.parent and record.parent not in keys:
            raise MigrationError(
                f"{path}: snapshot {record.key!r} names parent {record.parent!r}, which is missing"
            )


def _leave_wal_mode(path: Path) -> None:
    """Blocking: everything in the main file and no -wal/-shm, so one file is the store."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        db.execute("PRAGMA journal_mode=DELETE").fetchall()
    except sqlite3.OperationalError as exc:  # e.g. "database is locked": open elsewhere
        raise MigrationError(f"{path}: {exc} (is another process using it?)") from None
    finally:
        db.close()
    for suffix in ("-wal", "-shm"):
        _sibling(path, suffix).unlink(missing_ok=True)


# ---------------------------------------------------------------------- files


def _sibling(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def _remove_leftovers(staging: Path) -> None:
    for leftover in (staging, _sibling(staging, "-journal")):
        leftover.unlink(missing_ok=True)


def _replace_keeping(path: Path, staging: Path, kept_suffix: str) -> Path:
    """Blocking: give ``path`` a second name, then rename ``staging`` over it; the name.

    ``path`` is the old store up to the rename, which is atomic: a crash anywhere
    leaves either the old store or the new one, never neither.
    """
    kept = _keep(path, kept_suffix)
    fsync_path(path.parent)
    os.rename(staging, path)
    fsync_path(path.parent)
    return kept


def _keep(path: Path, suffix: str) -> Path:
    """A hard link to ``path`` under a free name; one an earlier try left is reused."""
    for attempt in range(1000):
        kept = _sibling(path, suffix if attempt == 0 else f"{suffix}.{attempt}")
        try:
            os.link(path, kept)
            return kept
        except FileExistsError:
            if os.path.samefile(path, kept):
                return kept
    raise MigrationError(f"{path}: no free name to keep it under ({suffix}.N)")
