"""bbolt (go.etcd.io/bbolt) database files, read and written in pure Python.

The Go overlaybd snapshotter keeps its metadata in a bbolt file; obdsnap reads
one to take a root over and writes one to hand it back. A database is handled
as a whole, as a tree of :class:`Bucket` values.

The file is a sequence of pages of ``page_size`` bytes. Pages 0 and 1 hold the
two meta pages (the valid one with the highest transaction id is current); the
meta names the freelist page and the root bucket's page. A bucket is a B+tree
of branch and leaf pages; a page that needs more room spans ``overflow``
following pages. A leaf element flagged as a bucket holds the sub-bucket's
header (root page id, sequence); a small bucket without sub-buckets has root 0
and its single leaf page stored inline after that header.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

# The layout of bbolt's page.go and db.go (file format version 2), little-endian.
MAGIC = 0xED0CDAED
VERSION = 2
PAGE_HEADER = struct.Struct("<QHHI")  # id, flags, count, overflow
META = struct.Struct("<IIIIQQQQQ")  # magic, version, page size, flags, root, sequence,
#                                     freelist, high-water page id, txid
CHECKSUM = struct.Struct("<Q")  # FNV-64a of the META fields, right after them
LEAF_ELEMENT = struct.Struct("<IIII")  # flags, pos, key size, value size
BRANCH_ELEMENT = struct.Struct("<IIQ")  # pos, key size, child page id
BUCKET_HEADER = struct.Struct("<QQ")  # root page id (0: inline), sequence

BRANCH_PAGE = 0x01
LEAF_PAGE = 0x02
META_PAGE = 0x04
FREELIST_PAGE = 0x10
BUCKET_LEAF_FLAG = 0x01
MIN_KEYS_PER_PAGE = 2
MAX_KEY_SIZE = 32768
MAX_VALUE_SIZE = (1 << 31) - 2
MIN_PAGE_SIZE = 512
MAX_PAGE_SIZE = 1 << 20
MAX_SEQUENCE = (1 << 64) - 1

# What write_bolt lays out: metas on pages 0 and 1, an empty freelist, then the buckets.
FREELIST_PGID = 2
FIRST_DATA_PGID = 3
FILL_PERCENT = 1.0  # pages packed as bbolt's compaction packs them (a bbolt write: 0.5)

_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_MASK64 = (1 << 64) - 1


class BoltError(Exception):
    """The file is not a usable bbolt database.

    The message says what is wrong, without the path.
    """


@dataclass
class Bucket:
    sequence: int = 0
    values: dict[bytes, bytes] = field(default_factory=dict)
    buckets: dict[bytes, Bucket] = field(default_factory=dict)


def looks_like_bolt(head: bytes) -> bool:
    """True when ``head`` (the file's first bytes, at least 4096 of them if the file has
    them) starts with a bbolt meta page (magic 0xED0CDAED at its place)."""
    if len(head) < PAGE_HEADER.size + 4:
        return False
    (magic,) = struct.unpack_from("<I", head, PAGE_HEADER.size)
    return bool(magic == MAGIC)


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


def _fnv64a(data: bytes) -> int:
    digest = _FNV_OFFSET
    for byte in data:
        digest = ((digest ^ byte) * _FNV_PRIME) & _MASK64
    return digest


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
    if checksum != 0 and checksum != _fnv64a(data[start : start + META.size]):
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


def write_bolt(path: Path, root: Bucket, *, page_size: int = 4096) -> None:
    """Blocking: write ``root`` as a new bbolt file at ``path``.

    The file is created or truncated, written and fsync'ed; the caller makes it
    atomic by writing a temporary name and renaming. Raises ValueError, the
    file left incomplete, for a tree bbolt cannot hold: an empty or oversized
    key, a key that is both a value and a bucket, plain values at the root, a
    sequence out of range.
    """
    if not MIN_PAGE_SIZE <= page_size <= MAX_PAGE_SIZE:
        raise ValueError(f"page size {page_size} out of range")
    if root.values:
        raise ValueError("bbolt's root bucket holds buckets only")
    _check_sequence(root)
    with path.open("wb") as file:
        file.seek(FIRST_DATA_PGID * page_size)
        writer = _Writer(file, page_size)
        root_page = writer.bucket_pages(root)
        file.seek(0)
        # After one write transaction bbolt leaves txid 2 in meta 0 and txid 1
        # in meta 1; both name the same pages here, so either one is usable.
        for pgid, txid in ((0, 2), (1, 1)):
            file.write(
                _meta_page(page_size, pgid, root_page, root.sequence, writer.next_pgid, txid)
            )
        file.write(_empty_freelist_page(page_size))
        file.flush()
        os.fsync(file.fileno())


_Item = tuple[bytes, bytes, int]  # key, value (a child page id for a branch), element flags


class _Writer:
    """Writes buckets on pages 3 and up in order, children before parents as bbolt spills."""

    def __init__(self, file: BinaryIO, page_size: int) -> None:
        self.file = file
        self.page_size = page_size
        self.next_pgid = FIRST_DATA_PGID

    def bucket_pages(self, bucket: Bucket) -> int:
        """Write a bucket as a B+tree of pages (never inline); its root page id."""
        return self._tree(self._items(bucket))

    def _items(self, bucket: Bucket) -> list[_Item]:
        """A bucket's leaf elements in key order, with its sub-buckets written first."""
        both = bucket.values.keys() & bucket.buckets.keys()
        if both:
            raise ValueError(f"key {min(both)!r} is both a value and a bucket")
        items: list[_Item] = []
        for key in sorted(bucket.values.keys() | bucket.buckets.keys()):
            if not 0 < len(key) <= MAX_KEY_SIZE:
                raise ValueError(f"key of {len(key)} bytes (bbolt takes 1..{MAX_KEY_SIZE})")
            child = bucket.buckets.get(key)
            if child is None:
                value = bucket.values[key]
                if len(value) > MAX_VALUE_SIZE:
                    raise ValueError(f"value of {len(value)} bytes under key {key!r}")
                items.append((key, value, 0))
            else:
                items.append((key, self._bucket_value(child), BUCKET_LEAF_FLAG))
        return items

    def _bucket_value(self, bucket: Bucket) -> bytes:
        """The bucket's header, followed by its leaf where bbolt's Bucket.inlineable says so."""
        _check_sequence(bucket)
        items = self._items(bucket)
        if bucket.buckets or _node_size(items, LEAF_ELEMENT.size) > self.page_size // 4:
            return BUCKET_HEADER.pack(self._tree(items), bucket.sequence)
        return BUCKET_HEADER.pack(0, bucket.sequence) + _node_bytes(0, LEAF_PAGE, 0, items)

    def _tree(self, items: list[_Item]) -> int:
        """Write leaves, then levels of branches up to a single root; its page id."""
        nodes = self._split(items, LEAF_ELEMENT.size)
        flags = LEAF_PAGE
        while True:
            level = [(node[0][0] if node else b"", self._page(flags, node)) for node in nodes]
            if len(level) == 1:
                return level[0][1]
            nodes = self._split([(key, b"", pgid) for key, pgid in level], BRANCH_ELEMENT.size)
            flags = BRANCH_PAGE

    def _split(self, items: list[_Item], element_size: int) -> list[list[_Item]]:
        """Items cut into nodes where bbolt's node.split cuts them."""
        ends = [0]
        for key, value, _ in items:
            ends.append(ends[-1] + element_size + len(key) + len(value))
        threshold = int(self.page_size * FILL_PERCENT)
        nodes = []
        start, count = 0, len(items)
        while (
            count - start > 2 * MIN_KEYS_PER_PAGE
            and PAGE_HEADER.size + ends[count] - ends[start] >= self.page_size
        ):
            index = start
            for index in range(start, count - MIN_KEYS_PER_PAGE):
                fits = PAGE_HEADER.size + ends[index + 1] - ends[start] <= threshold
                if index - start >= MIN_KEYS_PER_PAGE and not fits:
                    break
            nodes.append(items[start:index])
            start = index
        nodes.append(items[start:])
        return nodes

    def _page(self, flags: int, items: list[_Item]) -> int:
        """Write one node on as many pages as it needs; its page id."""
        element_size = LEAF_ELEMENT.size if flags & LEAF_PAGE else BRANCH_ELEMENT.size
        pages = -(-_node_size(items, element_size) // self.page_size)
        pgid = self.next_pgid
        self.next_pgid += pages
        body = _node_bytes(pgid, flags, pages - 1, items)
        self.file.write(body.ljust(pages * self.page_size, b"\0"))
        return pgid


def _check_sequence(bucket: Bucket) -> None:
    if not 0 <= bucket.sequence <= MAX_SEQUENCE:
        raise ValueError(f"bucket sequence {bucket.sequence} out of range")


def _node_size(items: list[_Item], element_size: int) -> int:
    return PAGE_HEADER.size + sum(element_size + len(key) + len(value) for key, value, _ in items)


def _node_bytes(pgid: int, flags: int, overflow: int, items: list[_Item]) -> bytes:
    """A page header, the element table and the keys and values, as node.write lays them."""
    table = bytearray(PAGE_HEADER.pack(pgid, flags, len(items), overflow))
    data = bytearray()
    # An element's pos counts from the element itself to its key.
    to_data = len(items) * LEAF_ELEMENT.size
    for key, value, extra in items:
        if flags & LEAF_PAGE:
            table += LEAF_ELEMENT.pack(extra, to_data + len(data), len(key), len(value))
        else:
            table += BRANCH_ELEMENT.pack(to_data + len(data), len(key), extra)
        to_data -= LEAF_ELEMENT.size
        data += key
        data += value
    return bytes(table + data)


def _meta_page(
    page_size: int, pgid: int, root: int, sequence: int, high_water: int, txid: int
) -> bytes:
    meta = META.pack(MAGIC, VERSION, page_size, 0, root, sequence, FREELIST_PGID, high_water, txid)
    body = PAGE_HEADER.pack(pgid, META_PAGE, 0, 0) + meta + CHECKSUM.pack(_fnv64a(meta))
    return body.ljust(page_size, b"\0")


def _empty_freelist_page(page_size: int) -> bytes:
    return PAGE_HEADER.pack(FREELIST_PGID, FREELIST_PAGE, 0, 0).ljust(page_size, b"\0")
