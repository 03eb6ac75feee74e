"""Tests of obdsnap.storage.metastore: containerd's snapshots/storage semantics on SQLite.

Every test runs against a real ``metadata.db`` in ``tmp_path``; persistence is checked by
closing the store and opening a new one on the same file.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sqlite3
import sys
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from grpclib.const import Status

from obdsnap.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    SnapshotError,
    Unavailable,
)
from obdsnap.storage import Info, Kind, MetaStore, Operation, Record, Usage
from obdsnap.storage.batch import Batch
from obdsnap.storage.model import Clock, now_ns, unix_nanos
from obdsnap.storage.sqlite import SqliteDatabase, _statements

PROJECT_ROOT = Path(__file__).resolve().parents[2]
BASE_TIME = datetime(2024, 2, 29, 23, 59, 58, 123457, tzinfo=UTC)


# ---------------------------------------------------------------------- fixtures, helpers


class FakeClock:
    """Stands in for the system clock: every call is one second and two microseconds later."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> int:
        self.calls += 1
        return unix_nanos(BASE_TIME + self.calls * timedelta(seconds=1, microseconds=2))


@pytest.fixture
def clock() -> FakeClock:
    """The fake clock, which the ``store`` of a test that asks for it reads."""
    return FakeClock()


class PersistGate:
    """After ``hold``, holds every transaction at the door of the database until
    ``release``."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.released = asyncio.Event()
        self.released.set()

    def hold(self) -> None:
        self.entered.clear()
        self.released.clear()

    async def wait_entered(self) -> None:
        await asyncio.wait_for(self.entered.wait(), 5)

    def release(self) -> None:
        self.released.set()

    async def pass_through(self) -> None:
        if not self.released.is_set():
            self.entered.set()
        await self.released.wait()


class ScriptedDatabase(SqliteDatabase):
    """The real SQLite database, whose transactions a test can record, hold or fail."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.batches: list[Batch] | None = None
        self.gate = PersistGate()
        self.failures: list[Exception] = []

    def record_batches(self) -> list[Batch]:
        """From now on, every batch (transaction) persisted is appended to the list returned."""
        self.batches = []
        return self.batches

    def fail_next(self, error: Exception) -> None:
        """The next transaction fails with ``error`` before anything of it is written."""
        self.failures.append(error)

    async def persist(self, batch: Batch) -> None:
        if self.batches is not None:
            self.batches.append(batch)
        await self.gate.pass_through()
        if self.failures:
            raise self.failures.pop(0)
        await super().persist(batch)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "metadata.db"


@pytest.fixture
def database(db_path: Path) -> ScriptedDatabase:
    return ScriptedDatabase(db_path)


@pytest.fixture
async def store(
    request: pytest.FixtureRequest, database: ScriptedDatabase
) -> AsyncIterator[MetaStore]:
    # A test that asks for the fake clock gets a store on it; the others, the real one.
    clock: Clock = request.getfixturevalue("clock") if "clock" in request.fixturenames else now_ns
    opened = MetaStore(database.path, clock=clock, database=database)
    await opened.open()
    try:
        yield opened
    finally:
        # A wedged writer must fail the test, not hang the run.
        await asyncio.wait_for(opened.close(), 10)


async def reopen(store: MetaStore) -> MetaStore:
    """Close ``store`` and open a fresh one on the same file (the caller closes it)."""
    await store.close()
    fresh = MetaStore(store.path)
    await fresh.open()
    return fresh


@pytest.fixture
async def reopened(store: MetaStore) -> AsyncIterator[Callable[[], Awaitable[MetaStore]]]:
    """A function that reopens ``store``; every store it opened is closed at teardown."""
    opened: list[MetaStore] = []

    async def do_reopen() -> MetaStore:
        current = opened[-1] if opened else store
        fresh = await reopen(current)
        opened.append(fresh)
        return fresh

    try:
        yield do_reopen
    finally:
        for fresh in opened:
            await fresh.close()


async def committed(store: MetaStore, name: str, parent: str = "") -> Record:
    """A committed snapshot ``name`` made through an active ``name-active``."""
    await store.create(Kind.ACTIVE, f"{name}-active", parent, {})
    return await store.commit(f"{name}-active", name, Usage(), {})


@pytest.fixture
def persist_gate(database: ScriptedDatabase) -> Iterator[PersistGate]:
    """Request it after ``store``: its teardown (first) opens the gate so close() can finish."""
    try:
        yield database.gate
    finally:
        database.gate.release()


def sorted_records(store: MetaStore) -> list[Record]:
    return sorted(store.records(), key=lambda record: record.id)


def sequence_value(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as db:
        row = db.execute("SELECT value FROM sequence WHERE name = 'snapshot_id'").fetchone()
    assert row is not None
    return int(row[0])


# ---------------------------------------------------------------------- create


async def test_create_returns_record_with_given_fields(store: MetaStore, clock: FakeClock) -> None:
    parent = await committed(store, "base")
    record = await store.create(Kind.ACTIVE, "work", "base", {"a": "1", "b": "two"})
    assert record.key == "work"
    assert record.parent == "base"
    assert record.kind == Kind.ACTIVE
    assert dict(record.info.labels) == {"a": "1", "b": "two"}
    assert record.usage == Usage(0, 0)
    assert record.id > parent.id
    assert record.info.created_at == record.info.updated_at
    assert record.info.created_at.tzinfo is not None
    assert record.info.created_at.utcoffset() == timedelta(0)
    assert store.get("work") == record
    assert store.find("work") == record


async def test_create_view(store: MetaStore) -> None:
    await committed(store, "base")
    view = await store.create(Kind.VIEW, "v", "base", {})
    assert view.kind == Kind.VIEW
    assert store.get("v").kind == Kind.VIEW


async def test_timestamps_are_utc_now(store: MetaStore) -> None:
    before = datetime.now(UTC)
    record = await store.create(Kind.ACTIVE, "k", "", {})
    after = datetime.now(UTC)
    assert before <= record.info.created_at <= after
    assert record.info.created_at.utcoffset() == timedelta(0)


@pytest.mark.parametrize("kind", [Kind.COMMITTED, Kind.UNKNOWN])
async def test_create_rejects_kinds_other_than_active_or_view(store: MetaStore, kind: Kind) -> None:
    with pytest.raises(InvalidArgument):
        await store.create(kind, "k", "", {})
    assert store.find("k") is None


async def test_create_with_missing_parent_is_not_found(store: MetaStore) -> None:
    with pytest.raises(NotFound):
        await store.create(Kind.ACTIVE, "k", "nope", {})
    assert store.find("k") is None
    assert len(store) == 0


@pytest.mark.parametrize("parent_kind", [Kind.ACTIVE, Kind.VIEW])
async def test_create_with_uncommitted_parent_is_invalid(
    store: MetaStore, parent_kind: Kind
) -> None:
    await store.create(parent_kind, "p", "", {})
    with pytest.raises(InvalidArgument):
        await store.create(Kind.ACTIVE, "k", "p", {})
    with pytest.raises(InvalidArgument):
        await store.create(Kind.VIEW, "k", "p", {})
    assert store.find("k") is None
    assert not store.has_children("p")


@pytest.mark.parametrize("existing_kind", [Kind.ACTIVE, Kind.VIEW, Kind.COMMITTED])
async def test_duplicate_key_is_already_exists_across_kinds(
    store: MetaStore, existing_kind: Kind
) -> None:
    if existing_kind == Kind.COMMITTED:
        await committed(store, "k")
    else:
        await store.create(existing_kind, "k", "", {"keep": "me"})
    before = store.get("k")
    for kind in (Kind.ACTIVE, Kind.VIEW):
        with pytest.raises(AlreadyExists):
            await store.create(kind, "k", "", {"other": "x"})
    assert store.get("k") == before


async def test_missing_key_get_and_find(store: MetaStore) -> None:
    with pytest.raises(NotFound):
        store.get("missing")
    assert store.find("missing") is None


async def test_create_drops_empty_valued_labels(
    store: MetaStore, reopened: Callable[[], Awaitable[MetaStore]]
) -> None:
    record = await store.create(Kind.ACTIVE, "k", "", {"keep": "v", "empty": ""})
    assert dict(record.info.labels) == {"keep": "v"}
    fresh = await reopened()
    assert dict(fresh.get("k").info.labels) == {"keep": "v"}


async def test_create_does_not_alias_callers_labels(store: MetaStore) -> None:
    labels = {"a": "1"}
    record = await store.create(Kind.ACTIVE, "k", "", labels)
    labels["a"] = "changed"
    labels["b"] = "2"
    assert dict(record.info.labels) == {"a": "1"}
    assert dict(store.get("k").info.labels) == {"a": "1"}


# ---------------------------------------------------------------------- commit


async def test_commit_missing_key_is_not_found_even_if_name_taken(store: MetaStore) -> None:
    await store.create(Kind.ACTIVE, "taken", "", {})
    with pytest.raises(NotFound):
        await store.commit("missing", "taken", Usage(), {})
    with pytest.raises(NotFound):
        await store.commit("missing", "free", Usage(), {})


@pytest.mark.parametrize("key_kind", [Kind.ACTIVE, Kind.VIEW, Kind.COMMITTED])
async def test_commit_name_taken_is_already_exists_whatever_the_key_kind(
    store: MetaStore, key_kind: Kind
) -> None:
    await store.create(Kind.ACTIVE, "taken", "", {})
    if key_kind == Kind.COMMITTED:
        await committed(store, "key")
    else:
        await store.create(key_kind, "key", "", {})
    with pytest.raises(AlreadyExists):
        await store.commit("key", "taken", Usage(), {})
    assert store.get("key").kind == key_kind
    assert store.get("taken").kind == Kind.ACTIVE


async def test_commit_onto_its_own_key_is_already_exists(store: MetaStore) -> None:
    await store.create(Kind.ACTIVE, "k", "", {})
    with pytest.raises(AlreadyExists):
        await store.commit("k", "k", Usage(), {})
    assert store.get("k").kind == Kind.ACTIVE


@pytest.mark.parametrize("key_kind", [Kind.VIEW, Kind.COMMITTED])
async def test_commit_of_non_active_is_failed_precondition(
    store: MetaStore, key_kind: Kind
) -> None:
    if key_kind == Kind.COMMITTED:
        await committed(store, "key")
    else:
        await store.create(key_kind, "key", "", {})
    with pytest.raises(FailedPrecondition):
        await store.commit("key", "free", Usage(), {})
    assert store.find("free") is None
    assert store.get("key").kind == key_kind


async def test_commit_keeps_id_and_parent_replaces_labels_records_usage(
    store: MetaStore, clock: FakeClock
) -> None:
    await committed(store, "base")
    active = await store.create(Kind.ACTIVE, "work", "base", {"old": "1", "shared": "a"})
    result = await store.commit(
        "work", "layer", Usage(size=8192, inodes=3), {"new": "2", "shared": "b", "none": ""}
    )
    assert store.find("work") is None
    stored = store.get("layer")
    assert stored == result
    assert stored.id == active.id
    assert stored.parent == "base"
    assert stored.kind == Kind.COMMITTED
    assert dict(stored.info.labels) == {"new": "2", "shared": "b"}
    assert stored.usage == Usage(size=8192, inodes=3)
    assert stored.info.created_at == stored.info.updated_at
    assert stored.info.created_at > active.info.created_at
    assert stored.info.created_at > active.info.updated_at
    assert store.ids() == {store.get("base").id, active.id}


async def test_commit_with_no_labels_drops_the_actives_labels(store: MetaStore) -> None:
    await store.create(Kind.ACTIVE, "work", "", {"a": "1"})
    result = await store.commit("work", "layer", Usage(), {})
    assert dict(result.info.labels) == {}


async def test_commit_then_key_is_free_again(store: MetaStore) -> None:
    first = await store.create(Kind.ACTIVE, "work", "", {})
    await store.commit("work", "layer", Usage(), {})
    again = await store.create(Kind.ACTIVE, "work", "layer", {})
    assert again.id > first.id
    assert store.get("layer").id == first.id
    assert [r.key for r in store.ancestors(again)] == ["layer"]


async def test_parent_back_link_follows_the_commit(
    store: MetaStore, reopened: Callable[[], Awaitable[MetaStore]]
) -> None:
    await committed(store, "parent")
    await store.create(Kind.ACTIVE, "child", "parent", {})
    await store.commit("child", "child-committed", Usage(), {})
    await store.create(Kind.VIEW, "look", "parent", {})
    assert store.has_children("parent")
    assert sorted(r.key for r in store.children("parent")) == ["child-committed", "look"]
    await store.remove("look")
    assert [r.key for r in store.children("parent")] == ["child-committed"]
    with pytest.raises(FailedPrecondition):
        await store.remove("parent")

    fresh = await reopened()
    assert fresh.has_children("parent")
    with pytest.raises(FailedPrecondition):
        await fresh.remove("parent")
    await fresh.remove("child-committed")
    assert not fresh.has_children("parent")
    await fresh.remove("parent")
    assert len(fresh) == 0


async def test_commit_unlinks_the_active_key_from_the_parent(store: MetaStore) -> None:
    await committed(store, "parent")
    await store.create(Kind.ACTIVE, "child", "parent", {})
    await store.commit("child", "child-committed", Usage(), {})
    await store.remove("child-committed")
    # No stale link to "child" may keep the parent alive.
    assert not store.has_children("parent")
    await store.remove("parent")


# ---------------------------------------------------------------------- remove


async def test_remove_missing_is_not_found(store: MetaStore) -> None:
    with pytest.raises(NotFound):
        await store.remove("missing")


async def test_remove_returns_record_and_forgets_it(
    store: MetaStore, reopened: Callable[[], Awaitable[MetaStore]]
) -> None:
    created = await store.create(Kind.ACTIVE, "k", "", {"a": "1"})
    removed = await store.remove("k")
    assert removed == created
    assert store.find("k") is None
    assert len(store) == 0
    with pytest.raises(NotFound):
        await store.remove("k")
    fresh = await reopened()
    assert fresh.find("k") is None


@pytest.mark.parametrize("child_kind", [Kind.ACTIVE, Kind.VIEW])
async def test_remove_with_children_is_failed_precondition(
    store: MetaStore, child_kind: Kind
) -> None:
    await committed(store, "parent")
    await store.create(child_kind, "child", "parent", {})
    with pytest.raises(FailedPrecondition):
        await store.remove("parent")
    assert store.find("parent") is not None
    await store.remove("child")
    await store.remove("parent")
    assert store.find("parent") is None


# ---------------------------------------------------------------------- update


@pytest.fixture
async def labelled(store: MetaStore, clock: FakeClock) -> Record:
    return await store.create(Kind.ACTIVE, "k", "", {"a": "1", "b": "2", "c": "3"})


async def test_update_without_paths_replaces_all_labels(store: MetaStore, labelled: Record) -> None:
    info = await store.update("k", {"x": "9", "empty": ""}, [])
    assert dict(info.labels) == {"x": "9"}
    assert info.created_at == labelled.info.created_at
    assert info.updated_at > labelled.info.updated_at
    assert store.get("k").info == info
    assert store.get("k").id == labelled.id
    assert store.get("k").kind == Kind.ACTIVE


async def test_update_labels_path_replaces_all(store: MetaStore, labelled: Record) -> None:
    info = await store.update("k", {"b": "new", "d": "4"}, ["labels"])
    assert dict(info.labels) == {"b": "new", "d": "4"}
    assert info.updated_at > labelled.info.updated_at


async def test_update_single_label_paths_set_and_delete(store: MetaStore, labelled: Record) -> None:
    info = await store.update(
        "k",
        {"a": "changed", "new": "added", "ignored": "not in paths"},
        ["labels.a", "labels.b", "labels.new"],
    )
    # a set, b deleted (absent from the given labels), c untouched, ignored not written.
    assert dict(info.labels) == {"a": "changed", "c": "3", "new": "added"}
    assert dict(store.get("k").info.labels) == {"a": "changed", "c": "3", "new": "added"}


async def test_update_label_to_empty_value_deletes_it(
    store: MetaStore, labelled: Record, reopened: Callable[[], Awaitable[MetaStore]]
) -> None:
    info = await store.update("k", {"a": ""}, ["labels.a"])
    assert dict(info.labels) == {"b": "2", "c": "3"}
    info = await store.update("k", {"b": "", "z": "26"}, ["labels"])
    assert dict(info.labels) == {"z": "26"}
    fresh = await reopened()
    assert dict(fresh.get("k").info.labels) == {"z": "26"}


async def test_update_label_key_with_dots(store: MetaStore, labelled: Record) -> None:
    key = "containerd.io/gc.root"
    info = await store.update("k", {key: "yes"}, [f"labels.{key}"])
    assert info.labels[key] == "yes"


@pytest.mark.parametrize(
    "path", ["name", "parent", "kind", "created_at", "labelsx", "label.a", "Labels"]
)
async def test_update_other_paths_are_invalid(
    store: MetaStore, labelled: Record, path: str
) -> None:
    with pytest.raises(InvalidArgument):
        await store.update("k", {"a": "x"}, ["labels.a", path])
    assert store.get("k") == labelled


async def test_update_missing_is_not_found(store: MetaStore) -> None:
    with pytest.raises(NotFound):
        await store.update("missing", {"a": "1"}, [])


async def test_update_of_committed_keeps_usage_and_kind(store: MetaStore) -> None:
    await store.create(Kind.ACTIVE, "w", "", {})
    layer = await store.commit("w", "layer", Usage(10, 2), {"a": "1"})
    info = await store.update("layer", {"a": "2"}, ["labels.a"])
    stored = store.get("layer")
    assert stored.info == info
    assert stored.usage == Usage(10, 2)
    assert stored.kind == Kind.COMMITTED
    assert stored.id == layer.id


# ---------------------------------------------------------------------- rw mode


async def test_rw_mode_is_stored_kept_by_commit_and_persisted(
    store: MetaStore, reopened: Callable[[], Awaitable[MetaStore]]
) -> None:
    plain = await store.create(Kind.ACTIVE, "plain", "", {})
    assert plain.rw_mode == ""
    active = await store.create(Kind.ACTIVE, "w", "", {}, rw_mode="dir")
    assert active.rw_mode == "dir"
    view = await store.create(Kind.VIEW, "v", "", {}, rw_mode="dev")
    layer = await store.commit("w", "layer", Usage(1, 1), {})
    assert layer.rw_mode == "dir"
    await store.update("v", {"a": "1"}, [])
    assert store.get("v").rw_mode == "dev"
    fresh = await reopened()
    assert fresh.get("plain").rw_mode == ""
    assert fresh.get("layer").rw_mode == "dir"
    assert fresh.get("v").rw_mode == view.rw_mode


# ---------------------------------------------------------------------- ancestors


async def test_ancestors_nearest_first(store: MetaStore) -> None:
    await committed(store, "l1")
    await committed(store, "l2", "l1")
    await committed(store, "l3", "l2")
    top = await store.create(Kind.ACTIVE, "top", "l3", {})
    assert [r.key for r in store.ancestors(top)] == ["l3", "l2", "l1"]
    assert store.ancestors(store.get("l1")) == []
    assert [r.key for r in store.ancestors(store.get("l2"))] == ["l1"]


# ---------------------------------------------------------------------- IDs


async def test_ids_increase_and_are_not_reused_after_remove(store: MetaStore) -> None:
    first = await store.create(Kind.ACTIVE, "a", "", {})
    second = await store.create(Kind.ACTIVE, "b", "", {})
    assert second.id > first.id
    await store.remove("b")
    third = await store.create(Kind.ACTIVE, "c", "", {})
    assert third.id > second.id


async def test_ids_not_reused_after_removing_highest_and_reopening(
    store: MetaStore, reopened: Callable[[], Awaitable[MetaStore]]
) -> None:
    await store.create(Kind.ACTIVE, "a", "", {})
    highest = await store.create(Kind.ACTIVE, "b", "", {})
    await store.remove("b")
    fresh = await reopened()
    following = await fresh.create(Kind.ACTIVE, "c", "", {})
    assert following.id > highest.id
    assert sequence_value(fresh.path) >= following.id


async def test_ids_not_reused_after_create_and_remove_in_one_batch(
    store: MetaStore,
    reopened: Callable[[], Awaitable[MetaStore]],
    database: ScriptedDatabase,
) -> None:
    await store.create(Kind.ACTIVE, "before", "", {})
    batches = database.record_batches()
    created, removed = await asyncio.gather(
        store.create(Kind.ACTIVE, "k", "", {}), store.remove("k")
    )
    assert len(batches) == 1, "create and remove were meant to share one batch"
    assert removed.id == created.id
    assert store.find("k") is None
    fresh = await reopened()
    assert fresh.find("k") is None
    following = await fresh.create(Kind.ACTIVE, "k", "", {})
    assert following.id > created.id


async def test_ids_not_reused_after_remove_of_only_row_and_reopen(
    store: MetaStore, reopened: Callable[[], Awaitable[MetaStore]]
) -> None:
    gone = await store.create(Kind.ACTIVE, "only", "", {})
    await store.remove("only")
    fresh = await reopened()
    assert len(fresh) == 0
    assert (await fresh.create(Kind.ACTIVE, "next", "", {})).id > gone.id


# ---------------------------------------------------------------------- persistence


async def test_everything_survives_close_and_reopen(
    store: MetaStore, reopened: Callable[[], Awaitable[MetaStore]], clock: FakeClock
) -> None:
    await store.create(Kind.ACTIVE, "base-w", "", {"a": "1", "unicode": "ünïcødé ✓"})
    await store.commit(
        "base-w", "base", Usage(size=123456789, inodes=42), {"containerd.io/gc.root": "x"}
    )
    await store.create(Kind.ACTIVE, "work", "base", {'quote"d': "va\nl"})
    await store.create(Kind.VIEW, "view", "base", {})
    await store.update("view", {"v": "1"}, ["labels.v"])
    before = sorted_records(store)
    assert {r.kind for r in before} == {Kind.COMMITTED, Kind.ACTIVE, Kind.VIEW}
    # The fake clock hands out odd microseconds: reopening must keep them exactly.
    assert all(r.info.updated_at.microsecond % 2 == 1 for r in before)

    fresh = await reopened()
    after = sorted_records(fresh)
    assert after == before
    for old, new in zip(before, after, strict=True):
        assert new.info.created_at == old.info.created_at
        assert new.info.updated_at == old.info.updated_at
        assert new.info.created_at.utcoffset() == timedelta(0)
        assert new.usage == old.usage
        assert new.kind == old.kind
    assert fresh.get("view").info.updated_at > fresh.get("view").info.created_at
    assert [r.key for r in fresh.ancestors(fresh.get("work"))] == ["base"]
    assert fresh.has_children("base")


async def test_database_is_wal_with_full_sync(
    store: MetaStore, database: ScriptedDatabase, db_path: Path
) -> None:
    db = database.connection
    async with db.execute("PRAGMA synchronous") as cursor:
        assert await cursor.fetchone() == (2,)  # FULL: the WAL is fsync'ed at every commit
    with contextlib.closing(sqlite3.connect(db_path)) as other:
        assert other.execute("PRAGMA journal_mode").fetchone() == ("wal",)


async def test_reopen_of_empty_store(
    store: MetaStore, reopened: Callable[[], Awaitable[MetaStore]]
) -> None:
    fresh = await reopened()
    assert len(fresh) == 0
    assert fresh.records() == []
    assert (await fresh.create(Kind.ACTIVE, "k", "", {})).id >= 1


# ---------------------------------------------------------------------- group commit


async def test_concurrent_creates_share_few_transactions(
    store: MetaStore,
    reopened: Callable[[], Awaitable[MetaStore]],
    database: ScriptedDatabase,
) -> None:
    batches = database.record_batches()
    records = await asyncio.gather(
        *(store.create(Kind.ACTIVE, f"k{i}", "", {"i": str(i)}) for i in range(200))
    )
    ids = [record.id for record in records]
    assert len(set(ids)) == 200
    assert [record.key for record in records] == [f"k{i}" for i in range(200)]
    assert len(batches) <= 10, f"200 concurrent creates took {len(batches)} transactions"
    fresh = await reopened()
    assert len(fresh) == 200
    assert {r.key: r.id for r in fresh.records()} == {r.key: r.id for r in records}


async def test_failing_write_in_batch_is_rolled_back_alone(
    store: MetaStore,
    reopened: Callable[[], Awaitable[MetaStore]],
    database: ScriptedDatabase,
) -> None:
    await committed(store, "base")
    await store.create(Kind.ACTIVE, "child", "base", {})
    batches = database.record_batches()
    results = await asyncio.gather(
        store.create(Kind.ACTIVE, "a", "", {}),
        store.create(Kind.ACTIVE, "a", "", {"dup": "1"}),  # duplicate of the line above
        store.create(Kind.ACTIVE, "b", "base", {}),
        store.remove("base"),  # has children
        store.update("b", {"x": "1"}, ["name"]),  # bad path
        store.commit("child", "child-c", Usage(1, 1), {"c": "1"}),
        store.commit("b", "b-c", Usage(), {}),
        store.update("child-c", {"y": "2"}, ["labels.y"]),
        return_exceptions=True,
    )
    assert len(batches) == 1, "the writes were meant to share one batch"
    a, dup, b, remove_base, bad_update, child_c, b_c, updated = results
    assert isinstance(a, Record) and a.key == "a"
    assert isinstance(dup, AlreadyExists)
    assert isinstance(b, Record) and b.parent == "base"
    assert isinstance(remove_base, FailedPrecondition)
    assert isinstance(bad_update, InvalidArgument)
    assert isinstance(child_c, Record) and child_c.key == "child-c"
    assert isinstance(b_c, Record) and b_c.id == b.id
    assert isinstance(updated, Info) and dict(updated.labels) == {"c": "1", "y": "2"}
    assert dict(store.get("a").info.labels) == {}

    expected = sorted_records(store)
    assert {r.key for r in expected} == {"base", "a", "child-c", "b-c"}
    fresh = await reopened()
    assert sorted_records(fresh) == expected


async def test_commit_and_reuse_of_the_key_in_one_batch(
    store: MetaStore,
    reopened: Callable[[], Awaitable[MetaStore]],
    database: ScriptedDatabase,
) -> None:
    await committed(store, "base")
    work = await store.create(Kind.ACTIVE, "work", "base", {})
    await store.create(Kind.ACTIVE, "taken", "", {})
    batches = database.record_batches()
    layer, again, removed, renamed = await asyncio.gather(
        store.commit("work", "layer", Usage(5, 1), {}),
        store.create(Kind.ACTIVE, "work", "layer", {"second": "1"}),
        store.remove("taken"),
        store.commit("work", "taken", Usage(), {}),  # the new "work" onto the freed name
    )
    assert len(batches) == 1, "the writes were meant to share one batch"
    assert layer.id == work.id
    assert renamed.id == again.id
    assert removed.key == "taken"
    expected = sorted_records(store)
    assert {r.key: r.kind for r in expected} == {
        "base": Kind.COMMITTED,
        "layer": Kind.COMMITTED,
        "taken": Kind.COMMITTED,
    }
    assert [r.key for r in store.ancestors(store.get("taken"))] == ["layer", "base"]
    fresh = await reopened()
    assert sorted_records(fresh) == expected
    assert fresh.has_children("layer")
    with pytest.raises(FailedPrecondition):
        await fresh.remove("layer")


async def test_batches_larger_than_one_statement(
    store: MetaStore,
    reopened: Callable[[], Awaitable[MetaStore]],
    database: ScriptedDatabase,
) -> None:
    # 4000 rows of 9 values exceed SQLite's default bound of 32766 parameters per statement
    # (some builds raise it: set it back for this connection).
    db: Any = database.connection
    await db._execute(db._conn.setlimit, sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 32766)
    count = 4000
    batches = database.record_batches()
    created = await asyncio.gather(
        *(store.create(Kind.ACTIVE, f"k{i}", "", {"i": str(i)}) for i in range(count))
    )
    assert len(batches) <= 10
    fresh = await reopened()
    assert len(fresh) == count
    assert {r.key: r.id for r in fresh.records()} == {r.key: r.id for r in created}
    await asyncio.gather(*(fresh.remove(f"k{i}") for i in range(0, count, 2)))
    await asyncio.gather(*(fresh.update(f"k{i}", {"u": "1"}, []) for i in range(1, count, 2)))
    fresh = await reopened()
    assert len(fresh) == count // 2
    assert all(dict(r.info.labels) == {"u": "1"} for r in fresh.records())
    assert (await fresh.create(Kind.ACTIVE, "next", "", {})).id > max(r.id for r in created)


async def test_concurrent_creates_of_one_key_exactly_one_wins(store: MetaStore) -> None:
    results = await asyncio.gather(
        *(store.create(Kind.ACTIVE, "same", "", {"n": str(n)}) for n in range(16)),
        return_exceptions=True,
    )
    winners = [r for r in results if isinstance(r, Record)]
    losers = [r for r in results if isinstance(r, AlreadyExists)]
    assert len(winners) == 1
    assert len(losers) == 15
    assert store.get("same") == winners[0]
    assert len(store) == 1


async def test_reads_do_not_see_a_write_before_it_is_durable(
    store: MetaStore, persist_gate: PersistGate
) -> None:
    await committed(store, "base")
    await store.create(Kind.ACTIVE, "old", "", {"a": "1"})
    gate = persist_gate
    gate.hold()
    pending = asyncio.gather(
        store.create(Kind.ACTIVE, "new", "base", {}),
        store.update("old", {"a": "2"}, []),
        store.update("base", {"b": "1"}, []),
    )
    await gate.wait_entered()
    # The transaction is in flight: memory still shows the durable state only.
    assert store.find("new") is None
    assert "new" not in {r.key for r in store.records()}
    assert not store.has_children("base")
    assert dict(store.get("old").info.labels) == {"a": "1"}
    assert dict(store.get("base").info.labels) == {}
    assert len(store) == 2
    gate.release()
    new, _, _ = await asyncio.wait_for(pending, 5)
    assert store.find("new") == new
    assert store.has_children("base")
    assert dict(store.get("old").info.labels) == {"a": "2"}


async def test_failing_persist_fails_the_whole_batch_and_changes_nothing(
    store: MetaStore,
    reopened: Callable[[], Awaitable[MetaStore]],
    database: ScriptedDatabase,
) -> None:
    await committed(store, "base")
    await store.create(Kind.ACTIVE, "old", "", {"a": "1"})
    await store.create(Kind.VIEW, "gone", "base", {})
    before = sorted_records(store)
    database.fail_next(OSError(28, "No space left on device"))
    results = await asyncio.gather(
        store.create(Kind.ACTIVE, "new", "base", {}),
        store.create(Kind.ACTIVE, "old", "", {}),  # fails validation on its own
        store.update("old", {"a": "2"}, []),
        store.commit("old", "old-c", Usage(), {}),
        store.remove("gone"),
        return_exceptions=True,
    )
    assert database.failures == [], "the transaction never reached the database"
    assert isinstance(results[1], AlreadyExists)
    for result in (results[0], *results[2:]):
        assert isinstance(result, SnapshotError)
        assert not isinstance(result, AlreadyExists | NotFound | FailedPrecondition)
        assert result.status == Status.UNKNOWN
        assert "No space left on device" in str(result)
    assert sorted_records(store) == before
    assert store.has_children("base")
    assert store.find("old-c") is None

    # The store keeps working, and the next ID is above every durable one.
    retried = await store.create(Kind.ACTIVE, "new", "base", {})
    assert retried.id > max(r.id for r in before)
    await store.update("old", {"a": "3"}, [])
    fresh = await reopened()
    assert fresh.get("new") == retried
    assert dict(fresh.get("old").info.labels) == {"a": "3"}
    assert len(fresh) == len(before) + 1


async def test_ids_of_a_failed_transaction_are_not_handed_out_again(
    store: MetaStore, database: ScriptedDatabase
) -> None:
    await store.create(Kind.ACTIVE, "before", "", {})
    batches = database.record_batches()
    database.fail_next(OSError(5, "Input/output error"))
    with pytest.raises(SnapshotError):
        await store.create(Kind.ACTIVE, "lost", "", {})
    [failed] = batches
    following = await store.create(Kind.ACTIVE, "next", "", {})
    assert following.id > failed.last_id


async def test_a_failed_transactions_ids_stay_used_up_after_a_restart(
    store: MetaStore, database: ScriptedDatabase, db_path: Path
) -> None:
    await store.create(Kind.ACTIVE, "before", "", {})
    database.fail_next(OSError(5, "Input/output error"))
    with pytest.raises(SnapshotError):
        await store.create(Kind.ACTIVE, "lost", "", {})
    await store.remove("before")  # a batch without an ID of its own records the lost one
    assert sequence_value(db_path) == store.last_id


async def test_a_remove_is_one_statement(store: MetaStore) -> None:
    await store.create(Kind.ACTIVE, "a", "", {})
    batch = store._index.batch()
    batch.delete("a")
    assert len(_statements(batch)) == 1


async def test_sqlite_failure_mid_transaction_rolls_back_every_statement(
    store: MetaStore,
    database: ScriptedDatabase,
    reopened: Callable[[], Awaitable[MetaStore]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await store.create(Kind.ACTIVE, "doomed", "", {})
    await store.create(Kind.ACTIVE, "old", "", {"a": "1"})
    before = sorted_records(store)
    db: Any = database.connection
    real_execute = db.execute
    failed: list[str] = []

    def execute(sql: str, *args: Any) -> Any:
        if sql.startswith("DELETE") and not failed:
            failed.append(sql)
            raise sqlite3.OperationalError("disk I/O error")
        return real_execute(sql, *args)

    monkeypatch.setattr(db, "execute", execute)
    # One batch with an upsert and a delete: two statements in one transaction.
    results = await asyncio.gather(
        store.update("old", {"a": "2"}, []),
        store.create(Kind.ACTIVE, "new", "", {}),
        store.remove("doomed"),
        return_exceptions=True,
    )
    assert failed, "the batch never reached its DELETE statement"
    assert all(isinstance(r, SnapshotError) for r in results)
    assert sorted_records(store) == before
    monkeypatch.undo()
    fresh = await reopened()
    assert sorted_records(fresh) == before
    assert (await fresh.create(Kind.ACTIVE, "after", "", {})).id > max(r.id for r in before)


async def test_unexpected_error_in_one_write_fails_only_that_write(
    store: MetaStore,
    reopened: Callable[[], Awaitable[MetaStore]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bug raising something else than SnapshotError, after the write changed the batch,
    fails that write alone (UNKNOWN) and must neither leak its half-change nor stop the writer."""
    await committed(store, "base")
    real_link = Batch.link

    def buggy_link(self: Batch, parent: str, child: str) -> None:
        if child == "bad":
            raise RuntimeError("a bug in one write")
        real_link(self, parent, child)

    monkeypatch.setattr(Batch, "link", buggy_link)
    ok1, bad, ok2 = await asyncio.wait_for(
        asyncio.gather(
            store.create(Kind.ACTIVE, "ok1", "base", {}),
            store.create(Kind.ACTIVE, "bad", "base", {}),  # put, then fails in link
            store.create(Kind.VIEW, "ok2", "base", {}),
            return_exceptions=True,
        ),
        5,
    )
    assert isinstance(ok1, Record)
    assert isinstance(ok2, Record)
    assert isinstance(bad, SnapshotError)
    assert bad.status == Status.UNKNOWN
    assert store.find("bad") is None
    later = await asyncio.wait_for(store.create(Kind.ACTIVE, "later", "", {}), 5)
    assert store.find("later") == later
    fresh = await reopened()
    assert {r.key for r in fresh.records()} == {"base", "ok1", "ok2", "later"}


# ---------------------------------------------------------------------- close


async def test_close_commits_what_is_queued(
    db_path: Path, database: ScriptedDatabase, persist_gate: PersistGate
) -> None:
    store = MetaStore(db_path, database=database)
    await store.open()
    persist_gate.hold()
    first = asyncio.ensure_future(store.create(Kind.ACTIVE, "first", "", {}))
    await persist_gate.wait_entered()
    # Queued behind the transaction in flight.
    queued = [asyncio.ensure_future(store.create(Kind.ACTIVE, f"q{i}", "", {})) for i in range(5)]
    await asyncio.sleep(0)
    closing = asyncio.ensure_future(store.close())
    await asyncio.sleep(0)
    assert not closing.done()
    persist_gate.release()
    await asyncio.wait_for(closing, 5)
    records = await asyncio.wait_for(asyncio.gather(first, *queued), 5)
    assert len({r.id for r in records}) == 6

    fresh = MetaStore(db_path)
    await fresh.open()
    try:
        assert {r.key for r in fresh.records()} == {"first", "q0", "q1", "q2", "q3", "q4"}
    finally:
        await fresh.close()


async def test_close_right_after_writes_commits_them(db_path: Path) -> None:
    store = MetaStore(db_path)
    await store.open()
    pending = [asyncio.ensure_future(store.create(Kind.ACTIVE, f"k{i}", "", {})) for i in range(20)]
    await asyncio.sleep(0)  # every create is queued; none has been written yet
    assert len(store) == 0
    await asyncio.wait_for(store.close(), 5)
    assert all(task.done() for task in pending)
    created = [task.result() for task in pending]
    fresh = MetaStore(db_path)
    await fresh.open()
    try:
        assert sorted_records(fresh) == sorted(created, key=lambda r: r.id)
    finally:
        await fresh.close()


async def test_writes_after_close_are_unavailable(store: MetaStore) -> None:
    await committed(store, "base")
    await store.create(Kind.ACTIVE, "k", "", {})
    await store.close()
    with pytest.raises(Unavailable):
        await store.create(Kind.ACTIVE, "other", "", {})
    with pytest.raises(Unavailable):
        await store.commit("k", "c", Usage(), {})
    with pytest.raises(Unavailable):
        await store.remove("k")
    with pytest.raises(Unavailable):
        await store.update("k", {}, [])
    assert Unavailable("x").status == Status.UNAVAILABLE


async def test_close_twice_is_harmless(store: MetaStore) -> None:
    await store.close()
    await store.close()


# ---------------------------------------------------------------------- crash durability

CHILD_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from obdsnap.storage import Kind, MetaStore

    async def one(store, i):
        key = f"k{i}"
        record = await store.create(Kind.ACTIVE, key, "", {"i": str(i)})
        print("+", key, record.id, flush=True)
        if i % 4 == 0:
            await store.remove(key)
            print("-", key, record.id, flush=True)

    async def main():
        store = MetaStore(Path(sys.argv[1]))
        concurrency = int(sys.argv[2])
        await store.open()
        print("ready", flush=True)
        i = 0
        while True:
            await asyncio.gather(*(one(store, i + j) for j in range(concurrency)))
            i += concurrency

    asyncio.run(main())
    """
)


@pytest.fixture
def child_env() -> Iterator[dict[str, str]]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(PROJECT_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    yield env


@pytest.mark.parametrize("concurrency", [1, 8, 64])
async def test_acknowledged_writes_survive_sigkill(
    db_path: Path, child_env: dict[str, str], concurrency: int
) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD_SCRIPT,
        str(db_path),
        str(concurrency),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=PROJECT_ROOT,
        env=child_env,
    )
    assert process.stdout is not None
    created: dict[str, int] = {}
    removed: set[str] = set()
    try:
        async with asyncio.timeout(20):
            while len(created) < 300:
                line = (await process.stdout.readline()).decode()
                if not line:
                    stderr = await process.stderr.read() if process.stderr else b""
                    pytest.fail(f"child exited early: {stderr.decode()}")
                fields = line.split()
                if fields[0] == "+":
                    created[fields[1]] = int(fields[2])
                elif fields[0] == "-":
                    removed.add(fields[1])
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGKILL)
        await process.wait()
    assert process.returncode == -signal.SIGKILL
    assert len(set(created.values())) == len(created)

    with contextlib.closing(sqlite3.connect(db_path)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        rows = dict(db.execute("SELECT key, id FROM snapshots").fetchall())
    sequence = sequence_value(db_path)
    assert all(sequence >= row_id for row_id in rows.values())
    assert sequence >= max(created.values())

    store = MetaStore(db_path)
    await store.open()
    try:
        for key, record_id in created.items():
            if key in removed:
                assert store.find(key) is None, f"acknowledged remove of {key} was lost"
            elif int(key[1:]) % 4 != 0:  # removes of the others may have been in flight
                record = store.find(key)
                assert record is not None, f"acknowledged create of {key} was lost"
                assert record.id == record_id
        following = await store.create(Kind.ACTIVE, "after-crash", "", {})
        assert following.id > max(created.values())
    finally:
        await store.close()


# ---------------------------------------------------------------------- model check

MODEL_KEYS = ["a", "b", "c", "d", "e"]
ExpectedError = type[SnapshotError]


@dataclass
class ModelRow:
    id: int
    kind: Kind
    parent: str
    labels: dict[str, str]
    usage: Usage = field(default_factory=Usage)


def _non_empty(labels: Mapping[str, str]) -> dict[str, str]:
    return {key: value for key, value in labels.items() if value}


class Model:
    """containerd's snapshots/storage semantics, one write at a time, in plain Python."""

    def __init__(self) -> None:
        self.rows: dict[str, ModelRow] = {}
        self.last_id = 0

    def has_children(self, key: str) -> bool:
        return any(row.parent == key for row in self.rows.values())

    def create(
        self, kind: Kind, key: str, parent: str, labels: Mapping[str, str]
    ) -> int | ExpectedError:
        if parent:
            if parent not in self.rows:
                return NotFound
            if self.rows[parent].kind != Kind.COMMITTED:
                return InvalidArgument
        if key in self.rows:
            return AlreadyExists
        self.last_id += 1
        self.rows[key] = ModelRow(self.last_id, kind, parent, _non_empty(labels))
        return self.last_id

    def commit(
        self, key: str, name: str, usage: Usage, labels: Mapping[str, str]
    ) -> int | ExpectedError:
        if key not in self.rows:
            return NotFound
        if name in self.rows:
            return AlreadyExists
        if self.rows[key].kind != Kind.ACTIVE:
            return FailedPrecondition
        row = self.rows.pop(key)
        self.rows[name] = ModelRow(row.id, Kind.COMMITTED, row.parent, _non_empty(labels), usage)
        return row.id

    def remove(self, key: str) -> int | ExpectedError:
        if key not in self.rows:
            return NotFound
        if self.has_children(key):
            return FailedPrecondition
        return self.rows.pop(key).id

    def update(self, key: str, labels: Mapping[str, str], paths: list[str]) -> int | ExpectedError:
        if key not in self.rows:
            return NotFound
        updated = dict(labels) if not paths else dict(self.rows[key].labels)
        for path in paths:
            if path == "labels":
                updated = dict(labels)
            elif path.startswith("labels."):
                label = path.removeprefix("labels.")
                if label in labels:
                    updated[label] = labels[label]
                else:
                    updated.pop(label, None)
            else:
                return InvalidArgument
        self.rows[key].labels = _non_empty(updated)
        return self.rows[key].id


@dataclass
class Op:
    name: str
    args: tuple[Any, ...]

    def run_on_store(self, store: MetaStore) -> Awaitable[Any]:
        method: Callable[..., Awaitable[Any]] = getattr(store, self.name)
        return method(*self.args)

    def run_on_model(self, model: Model) -> int | ExpectedError:
        method: Callable[..., int | ExpectedError] = getattr(model, self.name)
        return method(*self.args)


def random_op(rng: random.Random) -> Op:
    labels = {rng.choice("xyz"): rng.choice(["", "1", "2"]) for _ in range(rng.randint(0, 2))}
    key = rng.choice(MODEL_KEYS)
    match rng.choice(["create", "create", "commit", "remove", "update"]):
        case "create":
            kind = rng.choice([Kind.ACTIVE, Kind.ACTIVE, Kind.VIEW])
            return Op("create", (kind, key, rng.choice(["", "", *MODEL_KEYS]), labels))
        case "commit":
            usage = Usage(rng.randint(0, 1 << 40), rng.randint(0, 99))
            return Op("commit", (key, rng.choice(MODEL_KEYS), usage, labels))
        case "remove":
            return Op("remove", (key,))
        case _:
            paths = rng.choice([[], ["labels"], ["labels.x"], ["labels.y", "labels.z"], ["parent"]])
            return Op("update", (key, labels, paths))


def store_state(store: MetaStore) -> dict[str, ModelRow]:
    return {
        r.key: ModelRow(r.id, r.kind, r.parent, dict(r.info.labels), r.usage)
        for r in store.records()
    }


@pytest.mark.parametrize("seed", range(6))
async def test_concurrent_batches_behave_like_sequential_writes(db_path: Path, seed: int) -> None:
    """Random groups of concurrent writes (one batch each) against a sequential model."""
    rng = random.Random(seed)
    model = Model()
    store = MetaStore(db_path)
    await store.open()
    try:
        for step in range(30):
            group = [random_op(rng) for _ in range(rng.randint(1, 6))]
            results = await asyncio.gather(
                *(op.run_on_store(store) for op in group), return_exceptions=True
            )
            for op, result in zip(group, results, strict=True):
                expected = op.run_on_model(model)
                where = f"step {step}: {op}"
                if isinstance(expected, int):
                    assert not isinstance(result, BaseException), f"{where}: {result!r}"
                    if isinstance(result, Record):
                        assert result.id == expected, where
                else:
                    assert isinstance(result, expected), f"{where}: {result!r}"
            assert store_state(store) == model.rows, f"step {step}"
            for key in model.rows:
                assert store.has_children(key) == model.has_children(key), f"step {step}: {key}"
            if rng.random() < 0.25:
                await store.close()
                store = MetaStore(db_path)
                await store.open()
                assert store_state(store) == model.rows, f"step {step}, reopened"
                probe = await store.create(Kind.ACTIVE, "probe", "", {})
                assert probe.id > model.last_id, f"step {step}: ID {probe.id} reused"
                model.last_id = probe.id
                await store.remove("probe")
    finally:
        await store.close()


async def test_a_snapshot_is_not_ready_until_marked_and_that_is_durable(
    store: MetaStore, reopened: Callable[[], Awaitable[MetaStore]]
) -> None:
    await store.create(Kind.ACTIVE, "setting-up", "", {}, "dir", ready=False)
    await store.create(Kind.ACTIVE, "done", "", {})
    fresh = await reopened()
    assert (fresh.get("setting-up").ready, fresh.get("done").ready) == (False, True)
    marked = await fresh.mark_ready("setting-up")
    assert marked.ready and marked.rw_mode == "dir"
    assert (await reopened()).get("setting-up").ready


async def test_commit_makes_a_snapshot_ready(store: MetaStore) -> None:
    await store.create(Kind.ACTIVE, "extract-1 ref", "", {}, ready=False)
    committed = await store.commit("extract-1 ref", "ref", Usage(), {})
    assert committed.ready


async def test_ids_never_fall_behind_stored_rows_without_a_sequence(db_path: Path) -> None:
    first = MetaStore(db_path)
    await first.open()
    await first.create(Kind.ACTIVE, "a", "", {})
    await first.close()
    connection = sqlite3.connect(db_path)
    connection.execute("DELETE FROM sequence")
    connection.commit()
    connection.close()
    second = MetaStore(db_path)
    await second.open()
    try:
        assert (await second.create(Kind.ACTIVE, "b", "", {})).id > second.get("a").id
    finally:
        await second.close()


# ---------------------------------------------------------------------- intents


def stored_intents(path: Path) -> list[tuple[int, str]]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        rows = db.execute("SELECT snapshot_id, operation FROM intents ORDER BY snapshot_id")
        return [(int(snapshot_id), str(operation)) for snapshot_id, operation in rows]


async def test_an_intent_is_durable_while_its_operation_runs_and_cleared_after(
    store: MetaStore, db_path: Path, clock: FakeClock
) -> None:
    async with store.intent(7, Operation.ATTACH):
        # On disk before the operation's first step, not just in memory.
        assert stored_intents(db_path) == [(7, "attach")]
        [intent] = store.intents()
        assert (intent.snapshot_id, intent.operation) == (7, Operation.ATTACH)
        assert intent.started_at == BASE_TIME + clock.calls * timedelta(seconds=1, microseconds=2)
    assert stored_intents(db_path) == []
    assert store.intents() == []


async def test_an_intent_is_cleared_when_its_operation_fails(
    store: MetaStore, db_path: Path
) -> None:
    with pytest.raises(OSError, match="device gone"):
        async with store.intent(3, Operation.DETACH):
            raise OSError("device gone")
    assert stored_intents(db_path) == []
    assert store.intents() == []


async def test_an_intent_left_by_a_crash_is_found_after_reopening(
    store: MetaStore, reopened: Callable[[], Awaitable[MetaStore]], clock: FakeClock
) -> None:
    # A crash: the operation started and never ended (its context never exits).
    cut = store.intent(5, Operation.COMMIT)
    await cut.__aenter__()
    async with store.intent(6, Operation.ATTACH):
        pass
    fresh = await reopened()
    [found] = fresh.intents()
    assert (found.snapshot_id, found.operation) == (5, Operation.COMMIT)
    assert found.started_at == store.intents()[0].started_at
    assert found.started_at.utcoffset() == timedelta(0)
    await fresh.clear_intent(found)
    assert fresh.intents() == []
    again = await reopened()
    assert again.intents() == []


async def test_intents_of_many_operations_share_transactions(
    store: MetaStore, db_path: Path, database: ScriptedDatabase
) -> None:
    batches = database.record_batches()

    async def operation(snapshot_id: int) -> None:
        async with store.intent(snapshot_id, Operation.ATTACH):
            await asyncio.sleep(0)

    await asyncio.gather(*(operation(i) for i in range(100)))
    assert len(batches) <= 10, f"100 operations' intents took {len(batches)} transactions"
    assert stored_intents(db_path) == []


async def test_intents_and_snapshot_writes_in_one_batch_commit_together(
    store: MetaStore, reopened: Callable[[], Awaitable[MetaStore]]
) -> None:
    cut = store.intent(1, Operation.ATTACH)
    await asyncio.gather(cut.__aenter__(), store.create(Kind.ACTIVE, "k", "", {}))
    fresh = await reopened()
    assert [i.operation for i in fresh.intents()] == [Operation.ATTACH]
    assert fresh.get("k").id == 1
