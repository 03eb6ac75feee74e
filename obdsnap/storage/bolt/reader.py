"""Reading a bbolt file into a tree of buckets, with every page and offset checked."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from obdsnap.storage.bolt.page import (
    BRANCH_ELEMENT,
    BRANCH_PAGE,
    BUCKET_HEADER,
    BUCKET_LEAF_FLAG,
    CHECKSUM,
    LEAF_ELEMENT,
    LEAF_PAGE,
    MAGIC,
    MAX_PAGE_SIZE,
    META,
    MIN_PAGE_SIZE,
    PAGE_HEADER,
    VERSION,
    BoltError,
    Bucket,
    fnv64a,
)


def read_bolt(path: Path) -> Bucket:
    """Blocking: the whole database as a tree.

    The returned root bucket holds the top-level buckets in ``.buckets``
    (bbolt's root has no plain values). Raises BoltError for a truncated or
    corrupt file, a wrong magic, an unknown version, a bad checksum on both
    metas, page ids out of range, loops.
    """
    # Read, not mapped: a file that shrinks under a mapping kills the process (SIGBUS).
    return _Reader(path.read_bytes()).read()


class _ChecksumError(BoltError):
    pass


@dataclass(frozen=True)
class _Meta:
    page_size: int
    root: int
    sequence: int
    freelist: int
    high_water: int
    txid: int


def _parse_meta(data: bytes, offset: int) -> _Meta:
    """The meta at page ``offset``, or BoltError saying why it is not valid."""
    start = offset + PAGE_HEADER.size
    if len(data) < start + META.size + CHECKSUM.size:
        raise BoltError("truncated: a meta page is incomplete")
    fields = META.unpack_from(data, start)
    magic, version, page_size, _, root, sequence, freelist, high_water, txid = fields
    if magic != MAGIC:
        raise BoltError("not a bbolt database (wrong magic)")
    if version != VERSION:
        raise BoltError(f"unsupported bbolt format version {version} (expected {VERSION})")
    (checksum,) = CHECKSUM.unpack_from(data, start + META.size)
    if checksum != 0 and checksum != fnv64a(data[start : start + META.size]):
        raise _ChecksumError("meta page checksum mismatch")
    if not MIN_PAGE_SIZE <= page_size <= MAX_PAGE_SIZE:
        raise BoltError(f"implausible page size {page_size} in the meta page")
    return _Meta(page_size, root, sequence, freelist, high_water, txid)


def _current_meta(data: bytes) -> _Meta:
    """The valid meta with the highest txid, as bbolt's DB.meta chooses it."""
    try:
        first: _Meta | BoltError = _parse_meta(data, 0)
    except BoltError as error:
        first = error
    # Where meta 1 is depends on the page size, which only a valid meta 0 gives.
    sizes = [first.page_size] if isinstance(first, _Meta) else _candidate_page_sizes(data)
    second: _Meta | BoltError = BoltError("truncated: the second meta page is missing")
    for size in sizes:
        try:
            second = _parse_meta(data, size)
        except BoltError as error:
            second = error
            continue
        if second.page_size == size:
            break
        second = BoltError("the second meta page disagrees on the page size")
    valid = [meta for meta in (first, second) if isinstance(meta, _Meta)]
    if not valid:
        assert isinstance(first, BoltError)
        if isinstance(first, _ChecksumError):
            raise BoltError("both meta pages are damaged (checksum mismatch)")
        raise first
    return max(valid, key=lambda meta: meta.txid)


def _candidate_page_sizes(data: bytes) -> list[int]:
    sizes = []
    size = MIN_PAGE_SIZE
    while size <= MAX_PAGE_SIZE and size < len(data):
        sizes.append(size)
        size *= 2
    return sizes


class _Reader:
    """One pass over the pages of a database held in memory, with every offset checked."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.seen: set[int] = set()
        self.page_size = 0
        self.high_water = 0

    def read(self) -> Bucket:
        if not self.data:
            raise BoltError("truncated: the file is empty")
        meta = _current_meta(self.data)
        self.page_size = meta.page_size
        self.high_water = meta.high_water
        if len(self.data) < 2 * meta.page_size:
            raise BoltError("truncated: smaller than its two meta pages")
        if meta.high_water * meta.page_size > len(self.data):
            raise BoltError(
                f"truncated: the meta counts {meta.high_water} pages, "
                f"the file holds {len(self.data) // meta.page_size}"
            )
        root = Bucket(sequence=meta.sequence)
        if meta.root == 0:
            raise BoltError("the root bucket has no page")
        # An explicit stack, not recursion: a damaged file may nest without end.
        stack: list[tuple[int, int, Bucket]] = [(meta.root, 0, root)]
        while stack:
            pgid, inline_end, bucket = stack.pop()
            if inline_end:
                self._leaf(pgid, inline_end, bucket, stack)
            else:
                self._page(pgid, bucket, stack)
        return root

    def _page(self, pgid: int, bucket: Bucket, stack: list[tuple[int, int, Bucket]]) -> None:
        if pgid < 2 or pgid >= self.high_water:
            raise BoltError(f"page id {pgid} out of range (2..{self.high_water - 1})")
        if pgid in self.seen:
            raise BoltError(f"page {pgid} is referenced twice (a loop)")
        offset = pgid * self.page_size
        page_id, flags, count, overflow = PAGE_HEADER.unpack_from(self.data, offset)
        if page_id != pgid:
            raise BoltError(f"page {pgid} has id {page_id} in its header")
        if pgid + overflow >= self.high_water:
            raise BoltError(f"page {pgid} overflows past the end ({overflow} more pages)")
        self.seen.update(range(pgid, pgid + overflow + 1))
        end = offset + (overflow + 1) * self.page_size
        if flags & LEAF_PAGE:
            self._leaf(offset, end, bucket, stack)
        elif flags & BRANCH_PAGE:
            children = self._branch_children(offset, end, count)
            stack.extend((child, 0, bucket) for child in reversed(children))
        else:
            raise BoltError(f"page {pgid} is not a branch or leaf page (flags {flags:#x})")

    def _leaf(
        self, offset: int, end: int, bucket: Bucket, stack: list[tuple[int, int, Bucket]]
    ) -> None:
        """The leaf page at ``offset`` (its data ending by ``end``) into ``bucket``."""
        if offset + PAGE_HEADER.size > end:
            raise BoltError("truncated inline bucket")
        _, flags, count, _ = PAGE_HEADER.unpack_from(self.data, offset)
        if not flags & LEAF_PAGE:
            raise BoltError(f"expected a leaf page, found flags {flags:#x}")
        data = self.data
        for element_flags, key, value_start, value_end in self._elements(offset, end, count):
            if key in bucket.values or key in bucket.buckets:
                raise BoltError(f"key {key!r} appears twice in a bucket")
            if not element_flags & BUCKET_LEAF_FLAG:
                bucket.values[key] = data[value_start:value_end]
                continue
            if value_end - value_start < BUCKET_HEADER.size:
                raise BoltError(f"bucket {key!r} has a short header")
            root, sequence = BUCKET_HEADER.unpack_from(data, value_start)
            child = bucket.buckets[key] = Bucket(sequence=sequence)
            if root == 0:
                stack.append((value_start + BUCKET_HEADER.size, value_end, child))
            else:
                stack.append((root, 0, child))

    def _table(self, offset: int, end: int, count: int) -> bytes:
        """The element table of the page at ``offset``."""
        first = offset + PAGE_HEADER.size
        table_end = first + count * LEAF_ELEMENT.size
        if table_end > end:
            raise BoltError(f"page at offset {offset} has more elements than room")
        return self.data[first:table_end]

    def _branch_children(self, offset: int, end: int, count: int) -> list[int]:
        at = offset + PAGE_HEADER.size
        floor = at + count * BRANCH_ELEMENT.size
        children = []
        for position, key_size, child in BRANCH_ELEMENT.iter_unpack(
            self._table(offset, end, count)
        ):
            key_start = at + position
            if key_start < floor or key_start + key_size > end:
                raise BoltError(f"branch element at offset {at} points outside its data")
            floor = key_start + key_size
            children.append(child)
            at += BRANCH_ELEMENT.size
        return children

    def _elements(self, offset: int, end: int, count: int) -> list[tuple[int, bytes, int, int]]:
        """The elements of a leaf page: (flags, key, value start, value end)."""
        data = self.data
        at = offset + PAGE_HEADER.size
        # node.write lays keys and values out in element order after the table;
        # holding a file to that keeps elements from sharing (and re-reading) data.
        floor = at + count * LEAF_ELEMENT.size
        elements = []
        for flags, position, key_size, value_size in LEAF_ELEMENT.iter_unpack(
            self._table(offset, end, count)
        ):
            key_start = at + position
            value_start = key_start + key_size
            value_end = value_start + value_size
            if key_start < floor or value_end > end:
                raise BoltError(f"leaf element at offset {at} points outside its data")
            floor = value_end
            elements.append((flags, data[key_start:value_start], value_start, value_end))
            at += LEAF_ELEMENT.size
        return elements
