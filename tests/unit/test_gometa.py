"""containerd's snapshot schema in bbolt trees (the encodings; the files are tested against Go
in tests/migration)."""

from __future__ import annotations

import pytest

from obdsnap.storage.bolt import Bucket
from obdsnap.storage.gometa import (
    GoMetadataError,
    bolt_from_records,
    go_time_binary,
    parent_key,
    records_from_bolt,
    uvarint,
    varint,
)
from obdsnap.storage.model import Info, Kind, Record, Usage

# time.Date(2024, 2, 29, 23, 59, 58, 123456789, time.UTC).MarshalBinary() in Go 1.19.
GO_UTC = bytes.fromhex("010000000edd73117e075bcd15ffff")
GO_UTC_NS = 1_709_251_198_123_456_789


def test_go_time_binary_is_what_go_writes() -> None:
    assert go_time_binary(GO_UTC_NS) == GO_UTC


def test_go_times_decode_to_the_nanosecond() -> None:
    # The same instant in a zone 60 min 30 s east of UTC: version 2, with offset seconds.
    in_zone = bytes.fromhex("020000000edd73117e075bcd15003c1e")
    (record,) = records_from_bolt(go_tree({b"createdat": GO_UTC, b"updatedat": in_zone})).records
    assert (record.info.created_ns, record.info.updated_ns) == (GO_UTC_NS, GO_UTC_NS)


def test_times_beyond_64_bit_nanoseconds_are_refused() -> None:
    """Go's zero time (year 1), which ReadTimestamps gives for an absent time."""
    with pytest.raises(GoMetadataError, match="createdat: missing"):
        records_from_bolt(go_tree({b"createdat": b"", b"updatedat": GO_UTC}))
    with pytest.raises(GoMetadataError, match="updatedat: out of the range"):
        records_from_bolt(
            go_tree(
                {
                    b"createdat": GO_UTC,
                    b"updatedat": go_time_binary(0)[:1] + (0).to_bytes(8, "big") + GO_UTC[9:],
                }
            )
        )


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 2**63 - 1, -1, -64, -65, -(2**63)])
def test_varints_are_go_varints(value: int) -> None:
    tree = go_tree({b"size": varint(value), b"kind": b"\x03"})
    (record,) = records_from_bolt(tree).records
    assert record.usage.size == value


def test_parent_key_is_bolt_go_parent_key() -> None:
    assert parent_key(1, 300) == b"\x01\x00\xac\x02"
    assert uvarint(2**64 - 1) == b"\xff" * 9 + b"\x01"


def test_round_trip_of_a_tree() -> None:
    records = [
        Record(1, Info("base", "", Kind.COMMITTED, {"a": "ü"}, 5, 6), Usage(-1, 2)),
        Record(4, Info("ctr", "base", Kind.ACTIVE, {}, GO_UTC_NS, GO_UTC_NS + 1)),
    ]
    tree = bolt_from_records(records, 9)
    assert tree.buckets[b"v1"].buckets[b"parents"].values == {parent_key(1, 4): b"ctr"}
    assert b"size" not in tree.buckets[b"v1"].buckets[b"snapshots"].buckets[b"ctr"].values
    found = records_from_bolt(tree)
    assert (found.records, found.sequence, found.last_id) == (records, 9, 9)


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ({b"kind": b"\x09"}, "kind 9"),
        ({b"createdat": b"\x03" + GO_UTC[1:]}, "unsupported time encoding"),
        ({b"createdat": GO_UTC[:-1]}, "invalid time length"),
        ({b"size": b"\xff"}, "invalid varint"),
        ({b"parent": b"\xff\xfe"}, "not UTF-8"),
    ],
)
def test_bad_values_are_named(values: dict[bytes, bytes], problem: str) -> None:
    with pytest.raises(GoMetadataError, match=problem):
        records_from_bolt(go_tree(values))


def test_duplicate_ids_are_refused() -> None:
    tree = go_tree({})
    snapshots = tree.buckets[b"v1"].buckets[b"snapshots"]
    snapshots.buckets[b"other"] = Bucket(
        values={b"id": b"\x07", b"createdat": GO_UTC, b"updatedat": GO_UTC}
    )
    with pytest.raises(GoMetadataError, match="same id 7"):
        records_from_bolt(tree)


def test_no_v1_bucket_is_an_empty_store() -> None:
    found = records_from_bolt(Bucket())
    assert (found.records, found.last_id) == ([], 0)


def go_tree(values: dict[bytes, bytes]) -> Bucket:
    times = {b"createdat": GO_UTC, b"updatedat": GO_UTC}
    snapshot = Bucket(values={b"id": b"\x07", b"kind": b"\x02", **times, **values})
    snapshot.values = {key: value for key, value in snapshot.values.items() if value}
    snapshots = Bucket(sequence=7, buckets={b"k": snapshot})
    return Bucket(buckets={b"v1": Bucket(buckets={b"snapshots": snapshots})})
