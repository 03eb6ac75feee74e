"""The durable state of a store, in memory: what reads answer and what batches start from."""

from __future__ import annotations

from collections.abc import Iterable

from obdsnap.errors import NotFound
from obdsnap.storage.batch import Batch, IntentKey
from obdsnap.storage.model import Intent, Record


class Index:
    """Records by key, each parent's children, open intents and the last ID handed out.

    It changes only by ``apply``, once a batch is durable, so it never shows a write
    that a crash could still take back.
    """

    def __init__(self) -> None:
        self._records: dict[str, Record] = {}
        self._children: dict[str, frozenset[str]] = {}
        self._intents: dict[IntentKey, Intent] = {}
        self._last_id = 0
        self._sequence = 0  # the last ID handed out as the file records it

    def load(self, records: Iterable[Record], intents: Iterable[Intent], last_id: int) -> None:
        """Fill the index with what a store holds on disk."""
        self._records = {record.key: record for record in records}
        # Never behind a stored ID, whatever happened to the stored sequence.
        self._last_id = max([last_id, *(record.id for record in self._records.values())])
        self._sequence = last_id
        children: dict[str, set[str]] = {}
        for record in self._records.values():
            if record.parent:
                children.setdefault(record.parent, set()).add(record.key)
        self._children = {parent: frozenset(keys) for parent, keys in children.items()}
        self._intents = {(intent.snapshot_id, intent.operation): intent for intent in intents}

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

    def children(self, key: str) -> list[Record]:
        """The snapshots whose parent is ``key``, of every kind."""
        return [self._records[child] for child in self._children.get(key, ())]

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
        return list(self._intents.values())

    # ------------------------------------------------------------------ changes

    def batch(self) -> Batch:
        """An empty batch over the current state."""
        return Batch(self._records, self._children, self._last_id, self._sequence)

    def apply(self, batch: Batch) -> None:
        """The batch is durable: show its changes."""
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
        self._last_id = self._sequence = batch.last_id

    def use_up_ids(self, batch: Batch) -> None:
        """The batch failed, but the IDs it drew stay used up: never hand one out twice."""
        self._last_id = max(self._last_id, batch.last_id)
