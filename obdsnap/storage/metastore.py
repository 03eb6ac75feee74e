"""Durable snapshot metadata: SQLite on disk, an index in memory, writes in group commits.

Semantics are those of containerd's snapshots/storage (one key namespace for
active, view and committed snapshots; IDs from a sequence that is never
reused; parent links), with two differences that the snapshotter relies on:

* Reads (``get``, ``walk``, ``ancestors``) are answered from memory and see
  only durable state: a change becomes visible after its transaction has been
  fsync'ed, never before.
* Writes are queued and applied by one writer task. Every write queued while
  the previous transaction was being fsync'ed goes into the next transaction,
  so N concurrent RPCs cost one fsync, not N. Each write is validated against
  the state left by the writes before it in the same batch; a write that fails
  validation is rolled back alone and the others still commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import aiosqlite

from obdsnap.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    SnapshotError,
    Unavailable,
)
from obdsnap.storage.model import (
    Info,
    Intent,
    Kind,
    Operation,
    Record,
    Usage,
    now_ns,
    utc_now,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshots (
    id         INTEGER PRIMARY KEY,
    key        TEXT NOT NULL UNIQUE,
    parent     TEXT NOT NULL,
    kind       INTEGER NOT NULL,
    labels     TEXT NOT NULL,
    created_ns INTEGER NOT NULL,
    updated_ns INTEGER NOT NULL,
    size       INTEGER NOT NULL,
    inodes     INTEGER NOT NULL,
    rw_mode    TEXT NOT NULL,
    ready      INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS sequence (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO sequence (name, value) VALUES ('snapshot_id', 0);
-- Operations under way (storage.model.Intent); what is left at start-up was cut short.
CREATE TABLE IF NOT EXISTS intents (
    snapshot_id INTEGER NOT NULL,
    operation   TEXT NOT NULL,
    started_us  INTEGER NOT NULL,
    PRIMARY KEY (snapshot_id, operation)
);
-- The ID sequence follows every insert, so it never goes back, even after deletes.
CREATE TRIGGER IF NOT EXISTS snapshot_id_sequence AFTER INSERT ON snapshots BEGIN
    UPDATE sequence SET value = NEW.id WHERE name = 'snapshot_id' AND value < NEW.id;
END;
"""
# Columns added since the first schema, with the value rows written before them get.
_ADDED_COLUMNS = (("rw_mode", "TEXT NOT NULL DEFAULT ''"), ("ready", "INTEGER NOT NULL DEFAULT 1"))
# Timestamp columns that held microseconds before they held nanoseconds.
_MICROSECOND_COLUMNS = (("created_us", "created_ns"), ("updated_us", "updated_ns"))
_ID_SEQUENCE = "snapshot_id"
# REPLACE drops the row holding the same ID or key: a commit renames its row this way.
_UPSERT = "INSERT OR REPLACE INTO snapshots VALUES "
_ROW_PLACEHOLDERS = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_DELETE = "DELETE FROM snapshots WHERE id IN ({})"
# SQLite binds at most 32766 parameters per statement; 11 per row.
_MAX_ROWS_PER_STATEMENT = 1000
_ADVANCE_SEQUENCE = "UPDATE sequence SET value = ? WHERE name = ? AND value < ?"
_RECORD_INTENT = "INSERT OR REPLACE INTO intents VALUES (?, ?, ?)"
_CLEAR_INTENT = "DELETE FROM intents WHERE snapshot_id = ? AND operation = ?"
# The reads of a whole store; rows decode with record_from_row and intent_from_row.
SELECT_RECORDS = "SELECT * FROM snapshots"
SELECT_INTENTS = "SELECT snapshot_id, operation, started_us FROM intents"


_IntentKey = tuple[int, Operation]
_Checkpoint = tuple[
    dict[str, Record | None], dict[str, frozenset[str]], dict[_IntentKey, Intent | None], int
]


class _Batch:
    """The changes of one transaction, layered over the durable state."""

    def __init__(
        self, records: Mapping[str, Record], children: Mapping[str, frozenset[str]], last_id: int
    ) -> None:
        self._durable_records = records
        self._durable_children = children
        self.records: dict[str, Record | None] = {}
        self.children: dict[str, frozenset[str]] = {}
        self.intents: dict[_IntentKey, Intent | None] = {}  # None: cleared
        self.last_id = last_id

    def get(self, key: str) -> Record | None:
        if key in self.records:
            return self.records[key]
        return self._durable_records.get(key)

    def children_of(self, key: str) -> frozenset[str]:
        found = self.children.get(key)
        return self._durable_children.get(key, frozenset()) if found is None else found

    def put(self, record: Record) -> None:
        self.records[record.key] = record

    def delete(self, key: str) -> None:
        self.records[key] = None

    def link(self, parent: str, child: str) -> None:
        if parent:
            self.children[parent] = self.children_of(parent) | {child}

    def unlink(self, parent: str, child: str) -> None:
        if parent:
            self.children[parent] = self.children_of(parent) - {child}

    def next_id(self) -> int:
        self.last_id += 1
        return self.last_id

    def checkpoint(self) -> _Checkpoint:
        return dict(self.records), dict(self.children), dict(self.intents), self.last_id

    def restore(self, mark: _Checkpoint) -> None:
        self.records, self.children = dict(mark[0]), dict(mark[1])
        self.intents, self.last_id = dict(mark[2]), mark[3]


@dataclass
class _Write(Generic[T]):
    apply: Callable[[_Batch], T]
    done: asyncio.Future[T]


class StoreError(Exception):
    """The metadata file cannot be opened as a store; the message names it."""


class CommitObserver(Protocol):
    """Told of every transaction the writer commits (the metrics)."""

    def committed(self, writes: int, seconds: float) -> None:
        """A transaction of ``writes`` writes was committed and fsync'ed in ``seconds``."""
        ...


class _Unobserved:
    def committed(self, writes: int, seconds: float) -> None:
        pass


_UNOBSERVED = _Unobserved()


class MetaStore:
    """Snapshot metadata in ``metadata.db``; see the module docstring for the model."""

    def __init__(self, path: Path, observer: CommitObserver = _UNOBSERVED) -> None:
        self.path = path
        self._observer = observer
        self._db: aiosqlite.Connection | None = None
        self._records: dict[str, Record] = {}
        self._children: dict[str, frozenset[str]] = {}
        self._intents: dict[_IntentKey, Intent] = {}
        self._last_id = 0
        self._queue: list[_Write[Any]] = []
        self._wakeup = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closing = False

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        db = await aiosqlite.connect(self.path, isolation_level=None)
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            # FULL: the WAL is fsync'ed at every commit, so an acknowledged write survives a crash.
            await db.execute("PRAGMA synchronous=FULL")
            await db.executescript(_SCHEMA)
            await _add_missing_columns(db)
            await _timestamps_to_nanos(db)
            self._db = db
            await self._load()
        except sqlite3.DatabaseError as exc:  # not SQLite, or damaged: say so, no traceback
            self._db = None
            await db.close()
            raise StoreError(f"{self.path}: {exc}") from exc
        self._writer = asyncio.create_task(self._write_loop(), name="metastore-writer")

    async def close(self) -> None:
        """Commit what is queued, then close the database."""
        self._closing = True
        self._wakeup.set()
        if self._writer is not None:
            await self._writer
            self._writer = None
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def _load(self) -> None:
        assert self._db is not None
        async with self._db.execute(
            "SELECT value FROM sequence WHERE name = ?", (_ID_SEQUENCE,)
        ) as c:
            row = await c.fetchone()
            self._last_id = int(row[0]) if row else 0
        async with self._db.execute(SELECT_RECORDS) as cursor:
            async for row in cursor:
                record = record_from_row(row)
                self._records[record.key] = record
        # Never behind a stored ID, whatever happened to the sequence row.
        self._last_id = max([self._last_id, *(r.id for r in self._records.values())])
        children: dict[str, set[str]] = {}
        for record in self._records.values():
            if record.parent:
                children.setdefault(record.parent, set()).add(record.key)
        self._children = {parent: frozenset(keys) for parent, keys in children.items()}
        async with self._db.execute(SELECT_INTENTS) as c:
            async for row in c:
                intent = intent_from_row(row)
                self._intents[(intent.snapshot_id, intent.operation)] = intent

    # ------------------------------------------------------------------ reads

    def get(self, key: str) -> Record:
        record = self._records.get(key)
        if record is None:
            raise NotFound(f"snapshot {key!r} does not exist")
        return record

    def find(self, key: str) -> Record | None:
        return self._records.get(key)

    def ancestors(self, record: Record) -> list[Record]:
        """The parent chain of a snapshot, nearest parent first."""
        chain: list[Record] = []
        parent = record.parent
        while parent:
            found = self._records.get(parent)
            if found is None:
                raise NotFound(f"parent {parent!r} of snapshot {record.key!r} does not exist")
            chain.append(found)
            parent = found.parent
        return chain

    def has_children(self, key: str) -> bool:
        return bool(self._children.get(key))

    def records(self) -> list[Record]:
        """A point-in-time list of every record (records are immutable)."""
        return list(self._records.values())

    def ids(self) -> set[int]:
        return {record.id for record in self._records.values()}

    def __len__(self) -> int:
        return len(self._records)

    @property
    def last_id(self) -> int:
        """The last ID handed out: the next is above it."""
        return self._last_id

    def intents(self) -> list[Intent]:
        """Operations begun and not ended; at start-up, those a crash cut short."""
        return list(self._intents.values())

    # ------------------------------------------------------------------ writes

    async def create(
        self,
        kind: Kind,
        key: str,
        parent: str,
        labels: Mapping[str, str],
        rw_mode: str = "",
        *,
        ready: bool = True,
    ) -> Record:
        return await self._write(
            lambda batch: _create(batch, kind, key, parent, labels, rw_mode, ready)
        )

    async def mark_ready(self, key: str) -> Record:
        """The snapshot's set-up is complete: it survives a restart as it is."""
        return await self._write(lambda batch: _mark_ready(batch, key))

    async def commit(self, key: str, name: str, usage: Usage, labels: Mapping[str, str]) -> Record:
        return await self._write(lambda batch: _commit(batch, key, name, usage, labels))

    async def remove(self, key: str) -> Record:
        return await self._write(lambda batch: _remove(batch, key))

    async def update(self, key: str, labels: Mapping[str, str], paths: Sequence[str]) -> Info:
        return await self._write(lambda batch: _update(batch, key, labels, paths))

    @contextlib.asynccontextmanager
    async def intent(self, snapshot_id: int, operation: Operation) -> AsyncIterator[None]:
        """Record the intent durably, run the operation, clear it however the operation ends.

        Only a crash leaves it: the operation undoes its own failures before raising.
        A clear that cannot be written is left to start-up, which finds the operation done.
        """
        key = (snapshot_id, operation)
        await self._write(lambda batch: _set_intent(batch, key, Intent(*key, utc_now())))
        try:
            yield
        finally:
            try:
                await self._write(lambda batch: _set_intent(batch, key, None))
            except SnapshotError as exc:
                log.warning(
                    "intent %s of snapshot %d not cleared: %s", operation.value, snapshot_id, exc
                )

    async def clear_intent(self, intent: Intent) -> None:
        """Start-up has finished or rolled back what the intent was for."""
        await self._write(
            lambda batch: _set_intent(batch, (intent.snapshot_id, intent.operation), None)
        )

    async def _write(self, apply: Callable[[_Batch], T]) -> T:
        if self._closing:
            raise Unavailable("metadata store is closing")
        done: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append(_Write(apply, done))
        self._wakeup.set()
        return await asyncio.shield(done)

    async def _write_loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                writes, self._queue = self._queue, []
                await self._commit_batch(writes)
            if self._closing:
                return

    async def _commit_batch(self, writes: list[_Write[Any]]) -> None:
        batch = _Batch(self._records, self._children, self._last_id)
        outcomes: list[tuple[_Write[Any], Any, BaseException | None]] = []
        for write in writes:
            mark = batch.checkpoint()
            try:
                outcomes.append((write, write.apply(batch), None))
            except SnapshotError as exc:
                batch.restore(mark)
                outcomes.append((write, None, exc))
            except Exception as exc:  # a bug in one write must not stop the writer
                log.exception("metadata write failed")
                batch.restore(mark)
                outcomes.append((write, None, SnapshotError(f"metadata write failed: {exc}")))
        started = time.perf_counter()
        try:
            await self._persist(batch)
        except Exception as exc:  # disk full, I/O error: nothing of this batch happened
            log.exception("metadata transaction failed")
            failure = SnapshotError(f"metadata write failed: {exc}")
            outcomes = [(write, None, error or failure) for write, _, error in outcomes]
            # The IDs it drew stay used up: never hand one out twice.
            self._last_id = batch.last_id
        else:
            self._apply(batch)
            written = sum(1 for _, _, error in outcomes if error is None)
            if written:  # each write that passed validation changed the batch
                self._observer.committed(written, time.perf_counter() - started)
        for write, result, error in outcomes:
            if write.done.done():
                continue
            if error is None:
                write.done.set_result(result)
            else:
                write.done.set_exception(error)

    async def _persist(self, batch: _Batch) -> None:
        statements = self._statements(batch)
        if not statements:
            return
        assert self._db is not None
        if len(statements) == 1:
            # One statement is its own transaction (autocommit): one round trip, one fsync.
            await self._db.execute(*statements[0])
            return
        await self._db.execute("BEGIN IMMEDIATE")
        try:
            for statement in statements:
                await self._db.execute(*statement)
            await self._db.execute("COMMIT")
        except BaseException:
            await self._db.execute("ROLLBACK")
            raise

    def _statements(self, batch: _Batch) -> list[tuple[str, tuple[Any, ...]]]:
        """The SQL of a batch: multi-row statements, as few as the batch allows."""
        stored = [_row_from_record(r) for r in batch.records.values() if r is not None]
        deleted = [record.id for record in self._deleted_records(batch)]
        statements: list[tuple[str, tuple[Any, ...]]] = []
        for rows in _slices(stored, _MAX_ROWS_PER_STATEMENT):
            values = ", ".join([_ROW_PLACEHOLDERS] * len(rows))
            statements.append((_UPSERT + values, tuple(v for row in rows for v in row)))
        for ids in _slices(deleted, _MAX_ROWS_PER_STATEMENT):
            statements.append((_DELETE.format(", ".join("?" * len(ids))), tuple(ids)))
        for (snapshot_id, operation), intent in batch.intents.items():
            if intent is None:
                statements.append((_CLEAR_INTENT, (snapshot_id, operation.value)))
            else:
                row = (snapshot_id, operation.value, _micros(intent.started_at))
                statements.append((_RECORD_INTENT, row))
        if batch.last_id > max((row[0] for row in stored), default=0):
            # An ID went to a row this batch also deleted: keep it used up all the same.
            statements.append((_ADVANCE_SEQUENCE, (batch.last_id, _ID_SEQUENCE, batch.last_id)))
        return statements

    def _deleted_records(self, batch: _Batch) -> list[Record]:
        """Durable records the batch deletes and does not store again under another key."""
        kept_ids = {record.id for record in batch.records.values() if record is not None}
        return [
            record
            for key, change in batch.records.items()
            if change is None
            and (record := self._records.get(key)) is not None
            and record.id not in kept_ids
        ]

    def _apply(self, batch: _Batch) -> None:
        for key, record in batch.records.items():
            if record is None:
                self._records.pop(key, None)
            else:
                self._records[key] = record
        for parent, keys in batch.children.items():
            if keys:
                self._children[parent] = keys
            else:
                self._children.pop(parent, None)
        for intent_key, intent in batch.intents.items():
            if intent is None:
                self._intents.pop(intent_key, None)
            else:
                self._intents[intent_key] = intent
        self._last_id = batch.last_id


def write_new_store(path: Path, records: Iterable[Record], last_id: int) -> None:
    """Blocking: a new store at ``path`` holding these records, in one transaction.

    Rollback journal, not WAL: the file is complete on its own once this returns
    (fsync'ed), so it can be renamed into place without a ``-wal`` file to follow.
    """
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=DELETE")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(_SCHEMA)  # the file is not in place yet: its own transactions will do
        db.execute("BEGIN IMMEDIATE")
        rows = [_row_from_record(record) for record in records]
        db.executemany(_UPSERT + _ROW_PLACEHOLDERS, rows)
        db.execute(_ADVANCE_SEQUENCE, (last_id, _ID_SEQUENCE, last_id))
        db.execute("COMMIT")
    finally:
        db.close()
    descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


# ---------------------------------------------------------------------- operations


def _create(
    batch: _Batch,
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
    now = now_ns()
    info = Info(key, parent, kind, _stored_labels(labels), now, now)
    record = Record(batch.next_id(), info, rw_mode=rw_mode, ready=ready)
    batch.put(record)
    batch.link(parent, key)
    return record


def _commit(batch: _Batch, key: str, name: str, usage: Usage, labels: Mapping[str, str]) -> Record:
    active = batch.get(key)
    if active is None:
        raise NotFound(f"active snapshot {key!r} does not exist")
    if batch.get(name) is not None:
        raise AlreadyExists(f"snapshot {name!r} already exists")
    if active.kind != Kind.ACTIVE:
        raise FailedPrecondition(f"snapshot {key!r} is not active")
    now = now_ns()
    info = Info(name, active.parent, Kind.COMMITTED, _stored_labels(labels), now, now)
    committed = Record(active.id, info, usage, active.rw_mode, ready=True)
    batch.delete(key)
    batch.put(committed)
    batch.unlink(active.parent, key)
    batch.link(active.parent, name)
    return committed


def _mark_ready(batch: _Batch, key: str) -> Record:
    record = batch.get(key)
    if record is None:
        raise NotFound(f"snapshot {key!r} does not exist")
    ready = replace(record, ready=True)
    batch.put(ready)
    return ready


def _set_intent(batch: _Batch, key: _IntentKey, intent: Intent | None) -> None:
    batch.intents[key] = intent


def _remove(batch: _Batch, key: str) -> Record:
    record = batch.get(key)
    if record is None:
        raise NotFound(f"snapshot {key!r} does not exist")
    if batch.children_of(key):
        raise FailedPrecondition(f"cannot remove snapshot {key!r}: it has children")
    batch.delete(key)
    batch.unlink(record.parent, key)
    return record


def _update(batch: _Batch, key: str, labels: Mapping[str, str], paths: Sequence[str]) -> Info:
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
    info = replace(record.info, labels=_stored_labels(updated), updated_ns=now_ns())
    batch.put(replace(record, info=info))
    return info


async def _add_missing_columns(db: aiosqlite.Connection) -> None:
    async with db.execute("PRAGMA table_info(snapshots)") as cursor:
        present = {row[1] async for row in cursor}
    for name, declaration in _ADDED_COLUMNS:
        if name not in present:
            await db.execute(f"ALTER TABLE snapshots ADD COLUMN {name} {declaration}")


async def _timestamps_to_nanos(db: aiosqlite.Connection) -> None:
    """A store written before timestamps had nanoseconds: convert it in one transaction."""
    async with db.execute("PRAGMA table_info(snapshots)") as cursor:
        present = {row[1] async for row in cursor}
    renames = [(old, new) for old, new in _MICROSECOND_COLUMNS if old in present]
    if not renames:
        return
    await db.execute("BEGIN IMMEDIATE")
    try:
        for old, new in renames:
            await db.execute(f"ALTER TABLE snapshots RENAME COLUMN {old} TO {new}")
            await db.execute(f"UPDATE snapshots SET {new} = {new} * 1000")
        await db.execute("COMMIT")
    except BaseException:
        await db.execute("ROLLBACK")
        raise


def _stored_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """A label with an empty value is never stored (containerd's boltutil does the same)."""
    return {key: value for key, value in labels.items() if value}


# ---------------------------------------------------------------------- rows


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _micros(moment: datetime) -> int:
    return (moment - _EPOCH) // _MICROSECOND


def _from_micros(micros: int) -> datetime:
    return _EPOCH + micros * _MICROSECOND


def _row_from_record(record: Record) -> tuple[Any, ...]:
    info = record.info
    return (
        record.id,
        info.name,
        info.parent,
        int(info.kind),
        json.dumps(dict(info.labels), separators=(",", ":")),
        info.created_ns,
        info.updated_ns,
        record.usage.size,
        record.usage.inodes,
        record.rw_mode,
        int(record.ready),
    )


def record_from_row(row: Any) -> Record:
    """A record from a row of SELECT_RECORDS."""
    record_id, key, parent, kind, labels, created, updated, size, inodes, rw_mode, ready = row
    info = Info(key, parent, Kind(kind), json.loads(labels), created, updated)
    return Record(record_id, info, Usage(size, inodes), rw_mode, bool(ready))


def intent_from_row(row: Any) -> Intent:
    """An intent from a row of SELECT_INTENTS."""
    snapshot_id, operation, started_us = row
    return Intent(snapshot_id, Operation(operation), _from_micros(started_us))


def _slices(items: list[T], size: int) -> list[list[T]]:
    return [items[start : start + size] for start in range(0, len(items), size)]
