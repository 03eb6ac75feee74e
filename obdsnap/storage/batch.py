"""The changes of one transaction, layered over the durable state they start from."""

from __future__ import annotations

from collections.abc import Mapping

from obdsnap.storage.model import Intent, Operation, Record

IntentKey = tuple[int, Operation]
Checkpoint = tuple[
    dict[str, Record | None], dict[str, frozenset[str]], dict[IntentKey, Intent | None], int
]


class Batch:
    """What the writes of one transaction change: records by key (None: deleted), the
    parents' sets of children, intents (None: cleared) and the last ID handed out
    (``sequence``: the one the file knows of, which a failed batch's IDs may be above).

    Each write reads through the batch, so it sees the writes before it in the same
    transaction; the durable state underneath is left alone until the commit.
    """

    def __init__(
        self,
        records: Mapping[str, Record],
        children: Mapping[str, frozenset[str]],
        last_id: int,
        sequence: int,
    ) -> None:
        self._durable_records = records
        self._durable_children = children
        self.records: dict[str, Record | None] = {}
        self.children: dict[str, frozenset[str]] = {}
        self.intents: dict[IntentKey, Intent | None] = {}
        self.last_id = last_id
        self.sequence = sequence  # the last ID the store's file has recorded as handed out

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

    def set_intent(self, key: IntentKey, intent: Intent | None) -> None:
        self.intents[key] = intent

    def next_id(self) -> int:
        self.last_id += 1
        return self.last_id

    def stored(self) -> list[Record]:
        """The records the batch writes."""
        return [record for record in self.records.values() if record is not None]

    def deleted_ids(self) -> list[int]:
        """IDs of durable records the batch deletes and does not store again under another
        key (a commit renames a record: its row is replaced, not deleted)."""
        kept_ids = {record.id for record in self.stored()}
        return [
            record.id
            for key, change in self.records.items()
            if change is None
            and (record := self._durable_records.get(key)) is not None
            and record.id not in kept_ids
        ]

    def checkpoint(self) -> Checkpoint:
        return dict(self.records), dict(self.children), dict(self.intents), self.last_id

    def restore(self, mark: Checkpoint) -> None:
        self.records, self.children = dict(mark[0]), dict(mark[1])
        self.intents, self.last_id = dict(mark[2]), mark[3]
