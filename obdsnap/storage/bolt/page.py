"""The layout of a bbolt file (page.go and db.go, file format version 2) and its tree."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

# Every field is little-endian.
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


def fnv64a(data: bytes) -> int:
    digest = _FNV_OFFSET
    for byte in data:
        digest = ((digest ^ byte) * _FNV_PRIME) & _MASK64
    return digest
