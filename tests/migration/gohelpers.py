"""Go roots for the migration tests: metadata written by containerd's own MetaStore (gometa),
the snapshot directories the Go snapshotter leaves, and nanosecond-exact reads over gRPC."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import betterproto
from betterproto.lib.google.protobuf import Timestamp
from grpclib.client import Channel, UnaryStreamMethod, UnaryUnaryMethod
from support.gobuild import build_go_program
from support.processes import run
from support.server_process import ServerProcess

from obdsnap.genproto.containerd.services.snapshots import v1 as api
from obdsnap.overlaybd.storage_type import LSMT_MAGIC, ZFILE_MAGIC

GOMETA_SOURCE = Path(__file__).parent / "gometa"
SERVICE = "/containerd.services.snapshots.v1.Snapshots"
KINDS = {"Active": "active", "View": "view", "Committed": "committed"}
# The layer files' first 24 bytes (DESIGN §3).
LSMT_HEADER = b"".join(part.to_bytes(8, "little") for part in LSMT_MAGIC).ljust(64, b"\0")
ZFILE_HEADER = b"".join(part.to_bytes(8, "little") for part in ZFILE_MAGIC).ljust(64, b"\0")


def gometa_binary() -> Path:
    return build_go_program(GOMETA_SOURCE, "gometa")


def gometa(*argv: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run(gometa_binary(), *argv, check=check)


# ---------------------------------------------------------------------- writing a Go root


@dataclass
class GoOps:
    """Operations for gometa write, in order."""

    ops: list[dict[str, Any]] = field(default_factory=list)

    def prepare(self, key: str, parent: str = "", labels: Mapping[str, str] | None = None) -> None:
        self.ops.append({"op": "prepare", "key": key, "parent": parent, "labels": labels or {}})

    def view(self, key: str, parent: str = "", labels: Mapping[str, str] | None = None) -> None:
        self.ops.append({"op": "view", "key": key, "parent": parent, "labels": labels or {}})

    def commit(
        self,
        name: str,
        key: str,
        labels: Mapping[str, str] | None = None,
        usage: tuple[int, int] = (0, 0),
    ) -> None:
        size, inodes = usage
        self.ops.append(
            {"op": "commit", "key": key, "name": name, "labels": labels or {}, "size": size}
            | {"inodes": inodes}
        )

    def layer(self, name: str, parent: str = "", labels: Mapping[str, str] | None = None) -> None:
        """A committed layer, as containerd unpacks one: prepare, then commit."""
        self.prepare(f"extract-{name}", parent)
        self.commit(name, f"extract-{name}", labels, usage=(4096 * len(name), len(name)))

    def remove(self, key: str) -> None:
        self.ops.append({"op": "remove", "key": key})

    def update(self, key: str, labels: Mapping[str, str], paths: Sequence[str] = ()) -> None:
        self.ops.append({"op": "update", "key": key, "labels": dict(labels), "paths": list(paths)})


def write_go_metadata(db: Path, ops: GoOps) -> dict[str, int]:
    """A metadata.db written by containerd's MetaStore; the IDs of the snapshots in it."""
    spec = db.with_name(db.name + ".spec.json")
    spec.write_text(json.dumps({"ops": ops.ops}))
    try:
        ids = json.loads(gometa("write", db, spec).stdout)["ids"]
    finally:
        spec.unlink()
    return {key: int(value) for key, value in ids.items()}


def make_snapshot_dirs(root: Path, kinds: Mapping[int, str]) -> None:
    """The directories the Go snapshotter makes for each snapshot (DESIGN §2)."""
    for snapshot_id, kind in kinds.items():
        directory = root / "snapshots" / str(snapshot_id)
        (directory / "fs").mkdir(parents=True, exist_ok=True)
        if kind == "active":
            (directory / "work").mkdir(exist_ok=True)
        (directory / "block" / "mountpoint").mkdir(parents=True, exist_ok=True)
        (directory / "block" / "init-debug.log").touch()
    os.chmod(root, 0o700)


def write_go_root(root: Path, ops: GoOps) -> dict[str, int]:
    """A whole Go root: metadata.db and a directory per snapshot; the IDs."""
    (root / "snapshots").mkdir(parents=True, exist_ok=True)
    ids = write_go_metadata(root / "metadata.db", ops)
    dump = go_dump(root / "metadata.db")
    make_snapshot_dirs(root, {ids[key]: s["kind"] for key, s in dump_snapshots(dump).items()})
    return ids


# ---------------------------------------------------------------------- reading it back


def go_dump(db: Path) -> dict[str, Any]:
    """What containerd's MetaStore reads from ``db``: snapshots, ID sequence, parents index."""
    dump: dict[str, Any] = json.loads(gometa("dump", db).stdout)
    return dump


def dump_snapshots(dump: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The dump's snapshots with kinds as containerd's filters name them."""
    return {
        key: {**value, "kind": KINDS[value["kind"]]} for key, value in dump["snapshots"].items()
    }


def rfc3339_nanos(text: str) -> int:
    """Nanoseconds since the Unix epoch of Go's RFC3339Nano (UTC, 'Z')."""
    whole, _, fraction = text.rstrip("Z").partition(".")
    seconds = int(datetime.fromisoformat(whole + "+00:00").timestamp())
    return seconds * 1_000_000_000 + int(fraction.ljust(9, "0") if fraction else 0)


def stored_rows(db: Path) -> dict[str, dict[str, Any]]:
    """obdsnap's rows (read with SQLite itself), by key."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as connection:
        connection.row_factory = sqlite3.Row
        rows = connection.execute("SELECT * FROM snapshots").fetchall()
    return {row["key"]: dict(row) for row in rows}


def stored_sequence(db: Path) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as connection:
        (value,) = connection.execute(
            "SELECT value FROM sequence WHERE name = 'snapshot_id'"
        ).fetchone()
    return int(value)


# ---------------------------------------------------------------------- gRPC, to the nanosecond


@dataclass(eq=False, repr=False)
class NanoInfo(betterproto.Message):
    """containerd's Info with Timestamp messages, which keep nanoseconds (datetimes do not)."""

    name: str = betterproto.string_field(1)
    parent: str = betterproto.string_field(2)
    kind: api.Kind = betterproto.enum_field(3)  # noqa: RUF009 - betterproto's fields
    created_at: Timestamp = betterproto.message_field(4)  # noqa: RUF009 - betterproto's fields
    updated_at: Timestamp = betterproto.message_field(5)  # noqa: RUF009 - betterproto's fields
    labels: dict[str, str] = betterproto.map_field(  # noqa: RUF009 - betterproto's fields
        6, betterproto.TYPE_STRING, betterproto.TYPE_STRING
    )


@dataclass(eq=False, repr=False)
class NanoStatResponse(betterproto.Message):
    info: NanoInfo = betterproto.message_field(1)  # noqa: RUF009 - betterproto's fields


@dataclass(eq=False, repr=False)
class NanoListResponse(betterproto.Message):
    info: list[NanoInfo] = betterproto.message_field(1)  # noqa: RUF009 - betterproto's fields


def nanos(timestamp: Timestamp) -> int:
    return timestamp.seconds * 1_000_000_000 + timestamp.nanos


def info_facts(info: NanoInfo) -> dict[str, Any]:
    """An info in the dump's terms (without id and usage)."""
    kind = {api.Kind.ACTIVE: "active", api.Kind.VIEW: "view", api.Kind.COMMITTED: "committed"}
    return {
        "kind": kind.get(info.kind, str(info.kind)),
        "parent": info.parent,
        "labels": dict(info.labels),
        "created": nanos(info.created_at),
        "updated": nanos(info.updated_at),
    }


def dump_facts(snapshot: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "kind": snapshot["kind"],
        "parent": snapshot["parent"],
        "labels": snapshot["labels"],
        "created": rfc3339_nanos(snapshot["created"]),
        "updated": rfc3339_nanos(snapshot["updated"]),
    }


async def nano_stat(channel: Channel, key: str) -> NanoInfo:
    method = UnaryUnaryMethod(channel, f"{SERVICE}/Stat", api.StatSnapshotRequest, NanoStatResponse)
    reply = await method(api.StatSnapshotRequest(key=key))
    return reply.info


async def nano_list(channel: Channel) -> list[NanoInfo]:
    method = UnaryStreamMethod(
        channel, f"{SERVICE}/List", api.ListSnapshotsRequest, NanoListResponse
    )
    return [info for reply in await method(api.ListSnapshotsRequest()) for info in reply.info]


def start_serving(server: ServerProcess) -> ServerProcess:
    """Start and wait for the "serving" line: signal handlers are in place only then."""
    offset = server.log_path.stat().st_size if server.log_path.exists() else 0
    server.start()
    deadline = time.monotonic() + 20
    while b"obdsnap serving on" not in server.log_path.read_bytes()[offset:]:
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.02)
    return server


def many_ops(count: int = 10_000, depth: int = 50) -> GoOps:
    """``count`` snapshots as a node accumulates them: half committed layers in chains of
    ``depth``, 40% containers on them, 10% views, and gaps left by removed ones."""
    ops = GoOps()
    layers: list[str] = []
    for index in range(count // 2):
        parent = layers[-1] if index % depth else ""
        name = f"sha256:{index:064x}"
        ops.layer(name, parent, {"containerd.io/snapshot.ref": name, "n": str(index)})
        layers.append(name)
        if index % 50 == 0:
            ops.prepare(f"gap-{index}", name)
            ops.remove(f"gap-{index}")
    for index in range(count * 2 // 5):
        ops.prepare(f"default/{index}/ctr-{index}", layers[index % len(layers)], {"c": "1"})
    for index in range(count - len(layers) - count * 2 // 5):
        ops.view(f"default/{index}/view-{index}", layers[(index * 7) % len(layers)])
    return ops


def migrate_to_go(root: Path) -> subprocess.CompletedProcess[str]:
    migrate: list[str | Path] = [sys.executable, "-m", "obdsnap", "migrate", "--root", root]
    return run(*migrate, "--to", "go", check=False, timeout=120)
