"""The SQLite file of a store: its schema, its rows, and the transactions that write it.

Every transaction is fsync'ed before it counts (WAL, ``synchronous=FULL``): a write a
caller saw succeed survives a crash.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from obdsnap.storage.batch import Batch
from obdsnap.storage.model import Info, Intent, Kind, Operation, Record, Usage

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
_SELECT_SEQUENCE = "SELECT value FROM sequence WHERE name = ?"
_RECORD_INTENT = "INSERT OR REPLACE INTO intents VALUES (?, ?, ?)"
_CLEAR_INTENT = "DELETE FROM intents WHERE snapshot_id = ? AND operation = ?"
# The reads of a whole store; rows decode with record_from_row and intent_from_row.
SELECT_RECORDS = "SELECT * FROM snapshots"
SELECT_INTENTS = "SELECT snapshot_id, operation, started_us FROM intents"

Statement = tuple[str, tuple[Any, ...]]


class StoreError(Exception):
    """The metadata file cannot be opened as a store; the message names it."""


@dataclass(frozen=True)
class Stored:
    """Everything a store holds on disk, as read when it is opened."""

    records: list[Record]
    intents: list[Intent]
    last_id: int


class SqliteDatabase:
    """The store's file at ``path``, open from ``open`` to ``close``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: aiosqlite.Connection | None = None

    @property
    def connection(self) -> aiosqlite.Connection:
        assert self._db is not None, "the database is not open"
        return self._db

    async def open(self) -> Stored:
        """Open the file (created if missing, its schema brought up to date) and read it.

        Raises StoreError for a file that is not SQLite or is damaged.
        """
        db = await aiosqlite.connect(self.path, isolation_level=None)
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            # FULL: the WAL is fsync'ed at every commit, so an acknowledged write survives a crash.
            await db.execute("PRAGMA synchronous=FULL")
            await db.executescript(_SCHEMA)
            await _add_missing_columns(db)
            await _timestamps_to_nanos(db)
            stored = await _read(db)
        except sqlite3.DatabaseError as exc:  # not SQLite, or damaged: say so, no traceback
            await db.close()
            raise StoreError(f"{self.path}: {exc}") from exc
        self._db = db
        return stored

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def persist(self, batch: Batch) -> None:
        """Write the batch in one transaction, fsync'ed; on failure nothing of it is written."""
        statements = _statements(batch)
        if not statements:
            return
        db = self.connection
        if len(statements) == 1:
            # One statement is its own transaction (autocommit): one round trip, one fsync.
            await db.execute(*statements[0])
            return
        await db.execute("BEGIN IMMEDIATE")
        try:
            for statement in statements:
                await db.execute(*statement)
            await db.execute("COMMIT")
        except BaseException:
            await db.execute("ROLLBACK")
            raise


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


async def _read(db: aiosqlite.Connection) -> Stored:
    async with db.execute(_SELECT_SEQUENCE, (_ID_SEQUENCE,)) as cursor:
        row = await cursor.fetchone()
        last_id = int(row[0]) if row else 0
    async with db.execute(SELECT_RECORDS) as cursor:
        records = [record_from_row(row) async for row in cursor]
    async with db.execute(SELECT_INTENTS) as cursor:
        intents = [intent_from_row(row) async for row in cursor]
    return Stored(records, intents, last_id)


def _statements(batch: Batch) -> list[Statement]:
    """The SQL of a batch: multi-row statements, as few as the batch allows."""
    stored = [_row_from_record(record) for record in batch.stored()]
    statements: list[Statement] = []
    for rows in _slices(stored, _MAX_ROWS_PER_STATEMENT):
        values = ", ".join([_ROW_PLACEHOLDERS] * len(rows))
        statements.append((_UPSERT + values, tuple(v for row in rows for v in row)))
    for ids in _slices(batch.deleted_ids(), _MAX_ROWS_PER_STATEMENT):
        statements.append((_DELETE.format(", ".join("?" * len(ids))), tuple(ids)))
    for (snapshot_id, operation), intent in batch.intents.items():
        if intent is None:
            statements.append((_CLEAR_INTENT, (snapshot_id, operation.value)))
        else:
            row = (snapshot_id, operation.value, _micros(intent.started_at))
            statements.append((_RECORD_INTENT, row))
    if batch.last_id > max([batch.sequence, *(row[0] for row in stored)]):
        # An ID went to a row this batch also deleted, or to a failed batch: keep it used up.
        statements.append((_ADVANCE_SEQUENCE, (batch.last_id, _ID_SEQUENCE, batch.last_id)))
    return statements


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
