"""Nanosecond timestamps in the metadata store: the schema change, new stores, bad files."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path

import pytest

from obdsnap.storage import Info, Kind, MetaStore, Record, StoreError, Usage
from obdsnap.storage.sqlite import write_new_store

# The schema before timestamps had nanoseconds (and before rw_mode and ready).
MICROSECOND_SCHEMA = """
CREATE TABLE snapshots (
    id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, parent TEXT NOT NULL,
    kind INTEGER NOT NULL, labels TEXT NOT NULL,
    created_us INTEGER NOT NULL, updated_us INTEGER NOT NULL,
    size INTEGER NOT NULL, inodes INTEGER NOT NULL
);
CREATE TABLE sequence (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT INTO sequence VALUES ('snapshot_id', 7);
"""


async def test_a_microsecond_store_is_converted(tmp_path: Path) -> None:
    db = tmp_path / "metadata.db"
    with contextlib.closing(sqlite3.connect(db)) as connection, connection:
        connection.executescript(MICROSECOND_SCHEMA)
        connection.execute(
            "INSERT INTO snapshots VALUES (5, 'base', '', 3, ?, ?, ?, 10, 2)",
            (json.dumps({"a": "1"}), 1_700_000_000_123_456, 1_700_000_001_000_001),
        )
    store = MetaStore(db)
    await store.open()
    try:
        record = store.get("base")
        assert (record.info.created_ns, record.info.updated_ns) == (
            1_700_000_000_123_456_000,
            1_700_000_001_000_001_000,
        )
        assert record.info.created_at.microsecond == 123_456
        assert (record.id, record.usage, record.rw_mode, record.ready) == (
            5,
            Usage(10, 2),
            "",
            True,
        )
        assert store.last_id == 7
    finally:
        await store.close()
    with contextlib.closing(sqlite3.connect(db)) as connection:
        columns = [row[1] for row in connection.execute("PRAGMA table_info(snapshots)")]
    assert "created_ns" in columns and "created_us" not in columns
    # Opened again: converted once, not twice.
    again = MetaStore(db)
    await again.open()
    try:
        assert again.get("base").info.created_ns == 1_700_000_000_123_456_000
    finally:
        await again.close()


async def test_nanoseconds_survive_a_new_store(tmp_path: Path) -> None:
    db = tmp_path / "metadata.db"
    records = [
        Record(
            3,
            Info("base", "", Kind.COMMITTED, {"ü": "✓"}, 1_000_000_001, 2_999_999_999),
            Usage(4096, 1),
            rw_mode="",
            ready=True,
        ),
        Record(
            9,
            Info("ctr", "base", Kind.ACTIVE, {}, -(2**63), 2**63 - 1),
            rw_mode="dir",
            ready=True,
        ),
    ]
    write_new_store(db, records, 12)
    assert not (tmp_path / "metadata.db-wal").exists()
    store = MetaStore(db)
    await store.open()
    try:
        assert sorted(store.records(), key=lambda r: r.id) == records
        assert store.last_id == 12
        created = await store.create(Kind.ACTIVE, "next", "base", {})
        assert created.id == 13
    finally:
        await store.close()


@pytest.mark.parametrize(
    "content",
    [b"not a database at all, not even close" * 200, b"SQLite format 3\0" + b"\xff" * 8000],
)
async def test_a_file_that_is_no_store_is_one_error(tmp_path: Path, content: bytes) -> None:
    db = tmp_path / "metadata.db"
    db.write_bytes(content)
    with pytest.raises(StoreError) as caught:
        await MetaStore(db).open()
    assert str(caught.value).startswith(f"{db}: ")
    assert "\n" not in str(caught.value)
    assert db.read_bytes() == content


async def test_new_timestamps_have_nanoseconds(tmp_path: Path) -> None:
    store = MetaStore(tmp_path / "metadata.db")
    await store.open()
    try:
        records = [await store.create(Kind.ACTIVE, f"k{i}", "", {}) for i in range(10)]
    finally:
        await store.close()
    # As Go's time.Now(): not all of them fall on a whole microsecond.
    assert any(record.info.created_ns % 1000 for record in records)
