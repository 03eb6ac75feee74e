"""containerd's snapshots/storage schema in a bbolt tree, to obdsnap's records and back.

The Go snapshotter keeps its metadata with containerd's MetaStore
(``snapshots/storage/bolt.go``, ``metadata/boltutil``)::

    v1/
      snapshots/            bucket sequence: the ID sequence
        <key>/              id (uvarint), kind (1 byte), parent (key), createdat and
                            updatedat (Go time.MarshalBinary), size and inodes
                            (varints, committed only), labels/ (one value a label)
      parents/              uvarint(parent ID) 0x00 uvarint(child ID) -> child key

Times are kept to the nanosecond; ``rw_mode`` of the records made here is left
empty for the caller, which knows the files on disk.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from obdsnap.storage.bolt import Bucket
from obdsnap.storage.model import Info, Kind, Record, Usage

V1 = b"v1"
SNAPSHOTS = b"snapshots"
PARENTS = b"parents"
ID, KIND, PARENT = b"id", b"kind", b"parent"
CREATED, UPDATED = b"createdat", b"updatedat"
SIZE, INODES, LABELS = b"size", b"inodes", b"labels"

# Go's time.Time counts seconds from 1 January of year 1; Unix time from 1970.
_UNIX_TO_GO_SECONDS = 62_135_596_800
_NANOS = 1_000_000_000
_GO_TIME_V1, _GO_TIME_V2 = 1, 2
_GO_UTC_OFFSET = -1  # offsetMin that time.MarshalBinary writes for UTC
# The store keeps 64-bit nanoseconds since 1970: years 1678 to 2262.
_MIN_NANOS, _MAX_NANOS = -(2**63), 2**63 - 1


class GoMetadataError(Exception):
    """The bbolt tree does not hold containerd's snapshot schema; the message says where."""


@dataclass(frozen=True)
class GoMetadata:
    records: list[Record]
    sequence: int  # the bucket sequence of v1/snapshots

    @property
    def last_id(self) -> int:
        """Where the ID sequence goes on from: above every ID and the bucket sequence."""
        return max([self.sequence, *(record.id for record in self.records)])


def records_from_bolt(root: Bucket) -> GoMetadata:
    """The snapshots of a MetaStore's bbolt tree; a tree without ``v1`` holds none."""
    version = root.buckets.get(V1)
    if version is None:
        return GoMetadata([], 0)
    snapshots = version.buckets.get(SNAPSHOTS)
    if snapshots is None:
        return GoMetadata([], 0)
    records = [_record(key, bucket) for key, bucket in sorted(snapshots.buckets.items())]
    seen: dict[int, str] = {}
    for record in records:
        if record.id in seen:
            raise GoMetadataError(
                f"snapshots {seen[record.id]!r} and {record.key!r} have the same id {record.id}"
            )
        seen[record.id] = record.key
    return GoMetadata(records, snapshots.sequence)


def bolt_from_records(records: Iterable[Record], sequence: int) -> Bucket:
    """The bbolt tree containerd's MetaStore would hold for these snapshots."""
    by_key = {record.key: record for record in records}
    snapshots = Bucket(sequence=sequence)
    parents = Bucket()
    for key, record in by_key.items():
        snapshots.buckets[key.encode()] = _snapshot_bucket(record)
        if record.parent:
            parent_id = by_key[record.parent].id
            parents.values[parent_key(parent_id, record.id)] = key.encode()
    version = Bucket(buckets={SNAPSHOTS: snapshots, PARENTS: parents})
    return Bucket(buckets={V1: version})


def parent_key(parent_id: int, child_id: int) -> bytes:
    """bolt.go's parentKey: the parent's ID, a zero byte, the child's ID."""
    return uvarint(parent_id) + b"\0" + uvarint(child_id)


# ---------------------------------------------------------------------- one snapshot


def _record(key_bytes: bytes, bucket: Bucket) -> Record:
    key = _text(key_bytes, "snapshot key", key_bytes)
    where = f"snapshot {key!r}"
    if ID not in bucket.values:
        raise GoMetadataError(f"{where} has no id")
    snapshot_id = _read_uvarint(bucket.values[ID], f"{where}: id")
    kind_byte = bucket.values.get(KIND, b"")
    # readKind: anything but one byte is Kind 0 (unknown).
    kind_value = kind_byte[0] if len(kind_byte) == 1 else 0
    if kind_value not in set(Kind):
        raise GoMetadataError(f"{where} has kind {kind_value}, which is none of containerd's")
    labels_bucket = bucket.buckets.get(LABELS)
    labels = {
        _text(name, f"{where}: label key", key_bytes): _text(value, f"{where}: label", key_bytes)
        for name, value in (labels_bucket.values.items() if labels_bucket else ())
    }
    info = Info(
        key,
        _text(bucket.values.get(PARENT, b""), f"{where}: parent", key_bytes),
        Kind(kind_value),
        labels,
        _time(bucket.values.get(CREATED), f"{where}: createdat"),
        _time(bucket.values.get(UPDATED), f"{where}: updatedat"),
    )
    usage = Usage(
        _read_varint(bucket.values.get(SIZE, b""), f"{where}: size"),
        _read_varint(bucket.values.get(INODES, b""), f"{where}: inodes"),
    )
    return Record(snapshot_id, info, usage, rw_mode="", ready=True)


def _snapshot_bucket(record: Record) -> Bucket:
    """putSnapshot (and putUsage for a committed snapshot) of bolt.go."""
    info = record.info
    values = {ID: uvarint(record.id), KIND: bytes([int(info.kind)])}
    if info.parent:
        values[PARENT] = info.parent.encode()
    values[CREATED] = go_time_binary(info.created_ns)
    values[UPDATED] = go_time_binary(info.updated_ns)
    if info.kind == Kind.COMMITTED:
        values[INODES] = varint(record.usage.inodes)
        values[SIZE] = varint(record.usage.size)
    bucket = Bucket(values=values)
    labels = {name.encode(): value.encode() for name, value in info.labels.items() if value}
    if labels:
        bucket.buckets[LABELS] = Bucket(values=labels)
    return bucket


def _text(data: bytes, what: str, key: bytes) -> str:
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise GoMetadataError(f"{what} of snapshot {key!r} is not UTF-8") from None


# ---------------------------------------------------------------------- Go encodings


def go_time_binary(nanos: int) -> bytes:
    """time.Time.MarshalBinary of a UTC time (version 1, offset -1), as containerd writes it."""
    seconds, nsec = divmod(nanos, _NANOS)
    return (
        bytes([_GO_TIME_V1])
        + (seconds + _UNIX_TO_GO_SECONDS).to_bytes(8, "big", signed=True)
        + nsec.to_bytes(4, "big", signed=True)
        + _GO_UTC_OFFSET.to_bytes(2, "big", signed=True)
    )


def _time(data: bytes | None, what: str) -> int:
    """Nanoseconds since the Unix epoch of time.UnmarshalBinary's input (versions 1 and 2).

    The zone offset does not change the instant; UTC is what comes back.
    """
    if data is None:
        raise GoMetadataError(f"{what}: missing")
    if not data or data[0] not in (_GO_TIME_V1, _GO_TIME_V2):
        raise GoMetadataError(f"{what}: unsupported time encoding version")
    if len(data) != (15 if data[0] == _GO_TIME_V1 else 16):
        raise GoMetadataError(f"{what}: invalid time length {len(data)}")
    seconds = int.from_bytes(data[1:9], "big", signed=True) - _UNIX_TO_GO_SECONDS
    nsec = int.from_bytes(data[9:13], "big", signed=True)
    nanos = seconds * _NANOS + nsec
    if not _MIN_NANOS <= nanos <= _MAX_NANOS:
        # containerd writes time.Now(); only a hand-made file gets here.
        raise GoMetadataError(f"{what}: out of the range obdsnap stores (years 1678 to 2262)")
    return nanos


def uvarint(value: int) -> bytes:
    """encoding/binary.PutUvarint."""
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def varint(value: int) -> bytes:
    """encoding/binary.PutVarint (zig-zag)."""
    return uvarint((value << 1) ^ (value >> 63) if value < 0 else value << 1)


def _read_uvarint(data: bytes, what: str) -> int:
    value = shift = 0
    for index, byte in enumerate(data):
        if index == 10:
            break
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value
        shift += 7
    raise GoMetadataError(f"{what}: invalid varint {data.hex()}")


def _read_varint(data: bytes, what: str) -> int:
    """binary.Varint as getUsage reads it: an absent value is 0."""
    if not data:
        return 0
    zigzag = _read_uvarint(data, what)
    return (zigzag >> 1) ^ -(zigzag & 1)
