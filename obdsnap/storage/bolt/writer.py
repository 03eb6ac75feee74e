"""Writing a tree of buckets as a new bbolt file, laid out as bbolt's compaction lays it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

from obdsnap.storage.bolt.page import (
    BRANCH_ELEMENT,
    BRANCH_PAGE,
    BUCKET_HEADER,
    BUCKET_LEAF_FLAG,
    CHECKSUM,
    FILL_PERCENT,
    FIRST_DATA_PGID,
    FREELIST_PAGE,
    FREELIST_PGID,
    LEAF_ELEMENT,
    LEAF_PAGE,
    MAGIC,
    MAX_KEY_SIZE,
    MAX_PAGE_SIZE,
    MAX_SEQUENCE,
    MAX_VALUE_SIZE,
    META,
    META_PAGE,
    MIN_KEYS_PER_PAGE,
    MIN_PAGE_SIZE,
    PAGE_HEADER,
    VERSION,
    Bucket,
    fnv64a,
)


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
    body = PAGE_HEADER.pack(pgid, META_PAGE, 0, 0) + meta + CHECKSUM.pack(fnv64a(meta))
    return body.ljust(page_size, b"\0")


def _empty_freelist_page(page_size: int) -> bytes:
    return PAGE_HEADER.pack(FREELIST_PGID, FREELIST_PAGE, 0, 0).ljust(page_size, b"\0")
