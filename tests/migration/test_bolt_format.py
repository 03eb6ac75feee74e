"""obdsnap.storage.bolt against go.etcd.io/bbolt itself: each reads what the other writes.

The Go side is tests/migration/gobolt (bbolt's own Open, Update, ForEach and
Tx.Check); trees cross between the two as JSON with hex keys and values.
"""

from __future__ import annotations

import hashlib
import json
import random
import sqlite3
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support.gobuild import build_go_program
from support.processes import run

from obdsnap.storage.bolt import BoltError, Bucket, looks_like_bolt, read_bolt, write_bolt

GOBOLT_SOURCE = Path(__file__).parent / "gobolt"
SCRATCH_BUCKET = b"\xffgobolt-scratch"  # gobolt write --churn creates it, then deletes it

# Offsets in a meta page (page header, then bbolt's meta struct).
META_MAGIC = 16
META_VERSION = 20
META_FREELIST = 48
META_TXID = 64
META_CHECKSUM = 72


def to_json(bucket: Bucket) -> dict[str, Any]:
    return {
        "sequence": bucket.sequence,
        "values": {key.hex(): value.hex() for key, value in bucket.values.items()},
        "buckets": {key.hex(): to_json(child) for key, child in bucket.buckets.items()},
    }


def from_json(tree: dict[str, Any]) -> Bucket:
    return Bucket(
        sequence=tree["sequence"],
        values={bytes.fromhex(k): bytes.fromhex(v) for k, v in tree["values"].items()},
        buckets={bytes.fromhex(k): from_json(child) for k, child in tree["buckets"].items()},
    )


class GoBolt:
    """The gobolt program: bbolt's own writer, reader and consistency check."""

    def __init__(self, binary: Path) -> None:
        self.binary = binary

    def write(
        self, tree: Bucket, db: Path, *, page_size: int = 4096, fill: float = 0.5, churn: int = 0
    ) -> None:
        spec = db.with_suffix(".json")
        spec.write_text(json.dumps(to_json(tree)))
        flags = ["--page-size", str(page_size), "--fill", str(fill), "--churn", str(churn)]
        self._run("write", str(spec), str(db), *flags)

    def dump(self, db: Path) -> Bucket:
        return from_json(json.loads(self._run("dump", str(db))))

    def check(self, db: Path) -> list[str]:
        done = run(self.binary, "check", db, timeout=300, check=False)
        assert done.returncode in (0, 1), done.stderr
        return done.stdout.splitlines()

    def _run(self, *argv: str) -> str:
        return run(self.binary, *argv, timeout=300).stdout


@pytest.fixture(scope="module")
def gobolt() -> GoBolt:
    return GoBolt(build_go_program(GOBOLT_SOURCE, "gobolt"))


# Trees. Keys of the root are bucket names only: bbolt's root holds no plain values.


def tree_empty() -> Bucket:
    return Bucket()


def tree_small() -> Bucket:
    return Bucket(
        buckets={
            b"v1": Bucket(values={b"a": b"1", b"b": b""}, buckets={b"empty": Bucket()}),
            b"other": Bucket(sequence=3, values={b"k": b"v"}),
        }
    )


def tree_inline() -> Bucket:
    """Leaf-only buckets on both sides of bbolt's inline limit (a quarter page at 4096)."""
    return Bucket(
        buckets={
            b"inline": Bucket(sequence=1, values={b"k%02d" % i: b"v" * 20 for i in range(20)}),
            b"just-over": Bucket(values={b"k%02d" % i: b"v" * 40 for i in range(20)}),
            b"holder": Bucket(buckets={b"inner": Bucket(values={b"x": b"y"})}),
        }
    )


def tree_deep() -> Bucket:
    leaf = Bucket(sequence=99, values={b"bottom": b"\x00" * 10})
    for depth in range(60):
        leaf = Bucket(sequence=depth, values={b"depth": b"%d" % depth}, buckets={b"d": leaf})
    return Bucket(buckets={b"deep": leaf})


def tree_binary_unicode() -> Bucket:
    rng = random.Random(7)
    binary = {
        rng.randbytes(rng.randint(1, 64)): rng.randbytes(rng.randint(0, 300)) for _ in range(500)
    }
    binary[b"\x00"] = b"\x00"
    binary[b"\xff" * 32] = b"\xff"
    unicode = {
        "ключ/δοκιμή/鍵/🔑".encode(): "значение ✓ 値".encode(),
        "containerd.io/ラベル".encode(): "é".encode() * 1000,
    }
    return Bucket(
        buckets={
            b"\x00\x01binary": Bucket(values=binary),
            "ünïcödé 桶".encode(): Bucket(values=unicode, buckets={"子".encode(): Bucket()}),
        }
    )


def tree_sequences() -> Bucket:
    return Bucket(
        buckets={
            b"max": Bucket(sequence=2**64 - 1),
            b"big": Bucket(sequence=10_000, buckets={b"small": Bucket(sequence=5)}),
        }
    )


def tree_big_values() -> Bucket:
    rng = random.Random(11)
    return Bucket(
        buckets={
            b"4k": Bucket(values={b"v%03d" % i: rng.randbytes(4096) for i in range(40)}),
            b"1m": Bucket(values={b"huge": rng.randbytes(1 << 20), b"tiny": b"t"}),
        }
    )


def tree_many_keys() -> Bucket:
    values = {b"key-%08d" % i: b"value-%d" % (i * 7919) for i in range(50_000)}
    return Bucket(buckets={b"many": Bucket(sequence=50_000, values=values)})


def tree_snapshots(count: int = 10_000) -> Bucket:
    """Shaped like containerd's snapshots/storage MetaStore with ``count`` snapshots."""
    snapshots = {}
    for i in range(1, count + 1):
        key = b"default/%d/sha256:%064x" % (i, i)
        values = {
            b"id": b"%d" % i,
            b"kind": b"\x03",
            b"parent": b"default/%d/sha256:%064x" % (i - 1, i - 1),
            b"created": b"\x01\x00\x00\x00\x0e\xdc" + struct.pack(">Q", i),
            b"updated": b"\x01\x00\x00\x00\x0e\xdc" + struct.pack(">Q", i + 1),
            b"size": struct.pack(">q", 4096 * i),
        }
        labels = Bucket(values={b"containerd.io/snapshot.ref": b"sha256:%064x" % i})
        snapshots[key] = Bucket(values=values, buckets={b"labels": labels})
    parents = Bucket(values={b"%d" % i: b"" for i in range(1, count)})
    v1 = Bucket(buckets={b"snapshots": Bucket(sequence=count), b"parents": parents})
    v1.buckets[b"snapshots"].buckets = snapshots
    return Bucket(buckets={b"v1": v1})


SHAPES: dict[str, Callable[[], Bucket]] = {
    "empty": tree_empty,
    "small": tree_small,
    "inline": tree_inline,
    "deep": tree_deep,
    "binary-unicode": tree_binary_unicode,
    "sequences": tree_sequences,
    "big-values": tree_big_values,
    "many-keys": tree_many_keys,
}
PAGE_SIZES = [4096, 16384]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def meta_field(data: bytes, page_size: int, meta: int, offset: int) -> int:
    value: int = struct.unpack_from("<Q", data, meta * page_size + offset)[0]
    return value


# Go writes, Python reads.


@pytest.mark.slow
@pytest.mark.parametrize("page_size", PAGE_SIZES)
@pytest.mark.parametrize("shape", SHAPES)
def test_python_reads_what_go_writes(
    gobolt: GoBolt, tmp_path: Path, shape: str, page_size: int
) -> None:
    tree = SHAPES[shape]()
    db = tmp_path / "metadata.db"
    # A low fill percent makes bbolt split into many pages and branch levels.
    gobolt.write(tree, db, page_size=page_size, fill=0.1 if shape == "many-keys" else 0.5)
    assert read_bolt(db) == tree


@pytest.mark.slow
def test_python_reads_after_many_transactions(gobolt: GoBolt, tmp_path: Path) -> None:
    tree = tree_snapshots(300)
    tree.buckets[b"other"] = Bucket(sequence=2, values={b"k": b"v"})
    db = tmp_path / "metadata.db"
    # init (txids 0, 1), one transaction per top-level bucket, then the churn
    # (an even number of them leaves no scratch bucket): txid 43 is in meta 1.
    gobolt.write(tree, db, page_size=8192, churn=40)
    data = db.read_bytes()
    txids = [meta_field(data, 8192, meta, META_TXID) for meta in (0, 1)]
    assert txids[1] > txids[0]
    freelist = meta_field(data, 8192, 1, META_FREELIST)
    assert struct.unpack_from("<H", data, freelist * 8192 + 10)[0] > 0, "no free pages"
    assert read_bolt(db) == tree


# Python writes, Go reads and checks.


@pytest.mark.slow
@pytest.mark.parametrize("page_size", PAGE_SIZES)
@pytest.mark.parametrize("shape", [*SHAPES, "snapshots"])
def test_go_reads_and_checks_what_python_writes(
    gobolt: GoBolt, tmp_path: Path, shape: str, page_size: int
) -> None:
    tree = tree_snapshots() if shape == "snapshots" else SHAPES[shape]()
    db = tmp_path / "metadata.db"
    write_bolt(db, tree, page_size=page_size)
    assert gobolt.check(db) == []
    assert gobolt.dump(db) == tree


@pytest.mark.slow
def test_go_writes_on_top_of_what_python_writes(gobolt: GoBolt, tmp_path: Path) -> None:
    tree = tree_snapshots(500)
    db = tmp_path / "metadata.db"
    write_bolt(db, tree)
    gobolt.write(Bucket(), db, churn=7)  # seven write transactions by bbolt on the same file
    assert gobolt.check(db) == []
    tree.buckets[SCRATCH_BUCKET] = Bucket(values={b"k%06d" % i: bytes(100) for i in range(200)})
    assert gobolt.dump(db) == tree
    assert read_bolt(db) == tree


@pytest.mark.slow
@pytest.mark.parametrize("shape", ["inline", "big-values", "many-keys"])
def test_go_python_go_round_trip(gobolt: GoBolt, tmp_path: Path, shape: str) -> None:
    tree = SHAPES[shape]()
    go_db, python_db = tmp_path / "go.db", tmp_path / "python.db"
    gobolt.write(tree, go_db, page_size=16384, fill=0.1)
    write_bolt(python_db, read_bolt(go_db))
    assert gobolt.check(python_db) == []
    assert gobolt.dump(python_db) == tree


# Python alone.


@pytest.mark.parametrize("page_size", [4096, 8192])
@pytest.mark.parametrize("shape", SHAPES)
def test_python_round_trip(tmp_path: Path, shape: str, page_size: int) -> None:
    tree = SHAPES[shape]()
    db = tmp_path / "metadata.db"
    write_bolt(db, tree, page_size=page_size)
    assert read_bolt(db) == tree


def test_small_buckets_are_inlined(tmp_path: Path) -> None:
    buckets = {
        b"%05d" % i: Bucket(values={b"id": b"%d" % i, b"kind": b"\x01"}) for i in range(3000)
    }
    db = tmp_path / "metadata.db"
    write_bolt(db, Bucket(buckets={b"v1": Bucket(buckets=buckets)}))
    # About 100 bytes per bucket inline: some 75 pages instead of a page each.
    assert db.stat().st_size // 4096 < 100


@pytest.mark.parametrize(
    ("tree", "problem"),
    [
        (Bucket(buckets={b"": Bucket()}), "key of 0 bytes"),
        (Bucket(buckets={b"b": Bucket(values={b"x" * 40000: b""})}), "key of 40000 bytes"),
        (Bucket(buckets={b"b": Bucket(values={b"k": b""}, buckets={b"k": Bucket()})}), "both"),
        (Bucket(values={b"k": b"v"}), "root"),
        (Bucket(buckets={b"b": Bucket(sequence=-1)}), "sequence"),
    ],
)
def test_write_refuses_what_bbolt_cannot_hold(tmp_path: Path, tree: Bucket, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        write_bolt(tmp_path / "metadata.db", tree)


# Damaged files: refused with BoltError, never changed.


def _branch_page(data: bytearray, page_size: int) -> int:
    for pgid in range(3, len(data) // page_size):
        if struct.unpack_from("<H", data, pgid * page_size + 8)[0] == 0x01:
            return pgid
    raise AssertionError("no branch page")


def _set(data: bytearray, offset: int, fmt: str, value: int) -> None:
    struct.pack_into(fmt, data, offset, value)


def _both_metas(offset: int, fmt: str, value: int) -> Callable[[bytearray], None]:
    def damage(data: bytearray) -> None:
        for meta in (0, 1):
            _set(data, meta * 4096 + offset, fmt, value)

    return damage


def _child_of_branch(child: Callable[[int, int], int]) -> Callable[[bytearray], None]:
    """Point the first element of the first branch page at child(branch pgid, page count)."""

    def damage(data: bytearray) -> None:
        branch = _branch_page(data, 4096)
        _set(data, branch * 4096 + 16 + 8, "<Q", child(branch, len(data) // 4096))

    return damage


def _leaf_element_past_page(data: bytearray) -> None:
    branch = _branch_page(data, 4096)
    leaf = struct.unpack_from("<Q", data, branch * 4096 + 16 + 8)[0]
    _set(data, leaf * 4096 + 16 + 4, "<I", 1 << 20)  # pos of the first element


DAMAGES: dict[str, tuple[Callable[[bytearray], None], str]] = {
    "both-checksums": (_both_metas(META_CHECKSUM, "<Q", 12345), "both meta pages"),
    "wrong-magic": (_both_metas(META_MAGIC, "<I", 0xDEADBEEF), "wrong magic"),
    "version-1": (_both_metas(META_VERSION, "<I", 1), "version 1"),
    "page-past-end": (_child_of_branch(lambda _, pages: pages + 5), "out of range"),
    "page-to-itself": (_child_of_branch(lambda branch, _: branch), "twice"),
    "element-past-page": (_leaf_element_past_page, "outside its data"),
}


@pytest.fixture
def bolt_file(tmp_path: Path) -> Path:
    db = tmp_path / "metadata.db"
    write_bolt(db, tree_snapshots(200))
    return db


def assert_refused(db: Path, problem: str) -> None:
    before = sha256(db)
    with pytest.raises(BoltError, match=problem) as raised:
        read_bolt(db)
    assert str(db) not in str(raised.value)
    assert sha256(db) == before


@pytest.mark.parametrize("damage", DAMAGES)
def test_damaged_file_is_refused_unchanged(bolt_file: Path, damage: str) -> None:
    change, problem = DAMAGES[damage]
    data = bytearray(bolt_file.read_bytes())
    change(data)
    bolt_file.write_bytes(data)
    assert_refused(bolt_file, problem)


@pytest.mark.parametrize(
    "keep",
    [lambda _: 0, lambda _: 100, lambda size: size // 2, lambda size: size - 1],
    ids=["empty", "100-bytes", "half", "last-byte"],
)
def test_truncated_file_is_refused_unchanged(bolt_file: Path, keep: Callable[[int], int]) -> None:
    data = bolt_file.read_bytes()
    bolt_file.write_bytes(data[: keep(len(data))])
    assert_refused(bolt_file, "truncated")


@pytest.mark.parametrize("page_size", [4096, 16384])
@pytest.mark.parametrize("meta", [0, 1])
def test_one_damaged_meta_reads_from_the_other(tmp_path: Path, meta: int, page_size: int) -> None:
    db = tmp_path / "metadata.db"
    tree = tree_snapshots(50)
    write_bolt(db, tree, page_size=page_size)
    data = bytearray(db.read_bytes())
    data[meta * page_size + META_CHECKSUM] ^= 0x40
    db.write_bytes(data)
    assert read_bolt(db) == tree


def test_random_damage_gives_bolt_error_or_a_tree(tmp_path: Path) -> None:
    db = tmp_path / "metadata.db"
    write_bolt(db, tree_snapshots(40), page_size=4096)
    pristine = db.read_bytes()
    rng = random.Random(2024)
    outcomes = {"tree": 0, "refused": 0}
    for _ in range(400):
        data = bytearray(pristine)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data) if rng.random() < 0.5 else 4 * 4096)] = rng.randrange(256)
        db.write_bytes(data)
        try:
            read_bolt(db)
            outcomes["tree"] += 1
        except BoltError:
            outcomes["refused"] += 1
    assert outcomes["refused"] > 0


def _sqlite_file(path: Path) -> Path:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE t (x)")
        db.execute("INSERT INTO t VALUES (randomblob(8000))")
    return path


@pytest.mark.parametrize("kind", ["sqlite", "text"])
def test_other_files_are_refused_unchanged(tmp_path: Path, kind: str) -> None:
    db = tmp_path / "metadata.db"
    if kind == "sqlite":
        _sqlite_file(db)
    else:
        db.write_text("not a database\n" * 1000)
    assert not looks_like_bolt(db.read_bytes()[:4096])
    assert_refused(db, "wrong magic")


def test_looks_like_bolt(tmp_path: Path, bolt_file: Path) -> None:
    assert looks_like_bolt(bolt_file.read_bytes()[:4096])
    assert not looks_like_bolt(_sqlite_file(tmp_path / "s.db").read_bytes()[:4096])
    assert not looks_like_bolt(b"")
    assert not looks_like_bolt(b"\xed\xda\x0c\xed")
    assert not looks_like_bolt(random.Random(3).randbytes(4096))
