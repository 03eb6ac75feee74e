"""Durable snapshot metadata: SQLite on disk, an index in memory, writes in group commits.

Semantics are those of containerd's snapshots/storage (one key namespace for
active, view and committed snapshots; IDs from a sequence that is never
reused; parent links), with two differences that the snapshotter relies on:

* Reads (``get``, ``walk``, ``ancestors``) are answered from memory and see
  only durable state: a change becomes visible after its transaction has been
  fsync'ed, never before.
* Writes are queued and applied by one writer task, many to a transaction
  (storage.writer); a write that fails validation fails alone.

The parts: ``writes`` validates and applies each write to a ``batch``; the
``writer`` groups them into transactions; ``sqlite`` makes a transaction durable;
the ``index`` shows it afterwards. ``MetaStore`` puts them together.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path

from obdsnap.errors import SnapshotError
from obdsnap.storage import writes
from obdsnap.storage.index import Index
from obdsnap.storage.model import (
    Clock,
    Info,
    Intent,
    Kind,
    Operation,
    Record,
    Usage,
    from_unix_nanos,
    now_ns,
)
from obdsnap.storage.sqlite import SqliteDatabase
from obdsnap.storage.writer import UNOBSERVED, CommitObserver, Writer

log = logging.getLogger(__name__)


class MetaStore:
    """Snapshot metadata in ``metadata.db``; see the module docstring for the model.

    ``clock`` gives the time of every write (created, updated, an intent's start);
    ``database`` is where transactions go, by default the SQLite file at ``path``.
    """

    def __init__(
        self,
        path: Path,
        observer: CommitObserver = UNOBSERVED,
        *,
        clock: Clock = now_ns,
        database: SqliteDatabase | None = None,
    ) -> None:
        self.path = path
        self._clock = clock
        self._database = SqliteDatabase(path) if database is None else database
        self._index = Index()
        self._writer = Writer(self._index, self._database.persist, observer)

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Open the file and load it; StoreError if it is not a usable store."""
        stored = await self._database.open()
        self._index.load(stored.records, stored.intents, stored.last_id)
        self._writer.start()

    async def close(self) -> None:
        """Commit what is queued, then close the database."""
        await self._writer.stop()
        await self._database.close()

    # ------------------------------------------------------------------ reads

    def get(self, key: str) -> Record:
        return self._index.get(key)

    def find(self, key: str) -> Record | None:
        return self._index.find(key)

    def ancestors(self, record: Record) -> list[Record]:
        """The parent chain of a snapshot, nearest parent first."""
        return self._index.ancestors(record)

    def has_children(self, key: str) -> bool:
        return self._index.has_children(key)

    def children(self, key: str) -> list[Record]:
        """The snapshots whose parent is ``key``, of every kind."""
        return self._index.children(key)

    def records(self) -> list[Record]:
        """A point-in-time list of every record (records are immutable)."""
        return self._index.records()

    def ids(self) -> set[int]:
        return self._index.ids()

    def __len__(self) -> int:
        return len(self._index)

    @property
    def last_id(self) -> int:
        """The last ID handed out: the next is above it."""
        return self._index.last_id

    def intents(self) -> list[Intent]:
        """Operations begun and not ended; at start-up, those a crash cut short."""
        return self._index.intents()

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
        return await self._writer.write(
            lambda batch: writes.create(
                batch, self._clock(), kind, key, parent, labels, rw_mode, ready
            )
        )

    async def mark_ready(self, key: str) -> Record:
        """The snapshot's set-up is complete: it survives a restart as it is."""
        return await self._writer.write(lambda batch: writes.mark_ready(batch, key))

    async def commit(self, key: str, name: str, usage: Usage, labels: Mapping[str, str]) -> Record:
        return await self._writer.write(
            lambda batch: writes.commit(batch, self._clock(), key, name, usage, labels)
        )

    async def remove(self, key: str) -> Record:
        return await self._writer.write(lambda batch: writes.remove(batch, key))

    async def update(self, key: str, labels: Mapping[str, str], paths: Sequence[str]) -> Info:
        return await self._writer.write(
            lambda batch: writes.update(batch, self._clock(), key, labels, paths)
        )

    @contextlib.asynccontextmanager
    async def intent(self, snapshot_id: int, operation: Operation) -> AsyncIterator[None]:
        """Record the intent durably, run the operation, clear it however the operation ends.

        Only a crash leaves it: the operation undoes its own failures before raising.
        A clear that cannot be written is left to start-up, which finds the operation done.
        """
        key = (snapshot_id, operation)
        await self._writer.write(
            lambda batch: batch.set_intent(key, Intent(*key, from_unix_nanos(self._clock())))
        )
        try:
            yield
        finally:
            try:
                await self._writer.write(lambda batch: batch.set_intent(key, None))
            except SnapshotError as exc:
                log.warning(
                    "intent %s of snapshot %d not cleared: %s", operation.value, snapshot_id, exc
                )

    async def clear_intent(self, intent: Intent) -> None:
        """Start-up has finished or rolled back what the intent was for."""
        key = (intent.snapshot_id, intent.operation)
        await self._writer.write(lambda batch: batch.set_intent(key, None))
