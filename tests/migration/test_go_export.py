"""obdsnap migrate --to go: the root handed back to the Go snapshotter, read by containerd's
own MetaStore and checked by bbolt's tx.Check."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest
from grpclib.client import Channel
from support.server_process import ServerProcess
from support.snapshots import commit, own_id, prepare

from obdsnap.genproto.containerd.services.snapshots import v1 as api

from .gohelpers import (
    dump_facts,
    dump_snapshots,
    go_dump,
    gometa,
    info_facts,
    migrate_to_go,
    nano_list,
    start_serving,
    stored_rows,
    write_go_root,
)
from .test_go_import import deep_ops, kinds_ops

pytestmark = pytest.mark.slow


def assert_go_check_passes(db: Path) -> None:
    assert gometa("check", db).stdout.strip() == "ok"


@pytest.mark.parametrize("ops", [kinds_ops, deep_ops], ids=["kinds", "deep"])
def test_round_trip_reads_identically_in_go(server: ServerProcess, ops: object) -> None:
    """Go root -> obdsnap -> Go root: containerd reads every byte of meaning back."""
    assert callable(ops)
    write_go_root(server.root, ops())
    original = go_dump(server.root / "metadata.db")
    start_serving(server)
    assert server.stop() == 0
    done = migrate_to_go(server.root)
    assert done.returncode == 0, done.stderr
    kept = server.root / "metadata.db.obdsnap-sqlite"
    count = len(original["snapshots"])
    assert done.stdout.startswith(
        f"wrote the Go snapshotter's metadata to {server.root / 'metadata.db'}: {count} snapshots"
    )
    assert done.stdout.strip().endswith(f"obdsnap's SQLite store is kept as {kept}")
    assert len(done.stdout.strip().splitlines()) == 1
    assert go_dump(server.root / "metadata.db") == original
    assert_go_check_passes(server.root / "metadata.db")
    assert stored_rows(kept).keys() == original["snapshots"].keys()
    leftovers = {p.name for p in server.root.iterdir()} - {
        "metadata.db",
        "metadata.db.go-bbolt",
        "metadata.db.obdsnap-sqlite",
        "obdsnap.lock",
        "snapshots",
        "status.json",
    }
    assert leftovers == set()


async def test_what_obdsnap_did_reaches_go(server: ServerProcess, channel: Channel) -> None:
    """Snapshots made, committed, relabelled and removed by obdsnap, in Go's terms."""
    write_go_root(server.root, kinds_ops())
    sequence = go_dump(server.root / "metadata.db")["sequence"]
    start_serving(server)
    client = api.SnapshotsStub(channel)
    new_id = own_id(await prepare(client, "new", "mid", {"ünï": "✓"}), server.root)
    await commit(client, "new-layer", "new", {"a": "1"})
    await prepare(client, "on-new", "new-layer")
    await client.remove(api.RemoveSnapshotRequest(key="ctr"))
    await client.update(api.UpdateSnapshotRequest(info=api.Info(name="base", labels={"x": "y"})))
    listed = {info.name: info_facts(info) for info in await nano_list(channel)}
    assert server.stop() == 0
    rows = stored_rows(server.root / "metadata.db")
    done = migrate_to_go(server.root)
    assert done.returncode == 0, done.stderr
    dump = go_dump(server.root / "metadata.db")
    snapshots = dump_snapshots(dump)
    assert {key: dump_facts(value) for key, value in snapshots.items()} == listed
    assert {key: int(value["id"]) for key, value in snapshots.items()} == {
        key: row["id"] for key, row in rows.items()
    }
    assert snapshots["new-layer"]["id"] == str(new_id) and new_id == sequence + 1
    assert (snapshots["new-layer"]["size"], snapshots["new-layer"]["inodes"]) == (
        rows["new-layer"]["size"],
        rows["new-layer"]["inodes"],
    )
    assert dump["sequence"] == new_id + 1
    assert {(link["parent"], link["child"], link["key"]) for link in dump["parents"]} == {
        (int(snapshots[v["parent"]]["id"]), int(v["id"]), key)
        for key, v in snapshots.items()
        if v["parent"]
    }
    assert_go_check_passes(server.root / "metadata.db")

    # Back to obdsnap: a second import, keeping the new bolt file under a free name.
    start_serving(server)
    again = Channel(path=str(server.address))
    try:
        assert {i.name: info_facts(i) for i in await nano_list(again)} == listed
    finally:
        again.close()
    assert (server.root / "metadata.db.go-bbolt.1").exists()


def test_refused_while_obdsnap_runs(server: ServerProcess) -> None:
    write_go_root(server.root, kinds_ops())
    start_serving(server)
    done = migrate_to_go(server.root)
    assert done.returncode == 1
    assert (
        done.stderr.strip() == f"obdsnap: root {server.root} is in use by obdsnap pid {server.pid}"
    )
    assert done.stdout == ""
    assert (server.root / "metadata.db").read_bytes().startswith(b"SQLite format 3\0")


def test_refused_with_open_intents(server: ServerProcess) -> None:
    write_go_root(server.root, kinds_ops())
    start_serving(server)
    assert server.stop() == 0
    db = server.root / "metadata.db"
    with contextlib.closing(sqlite3.connect(db)) as connection, connection:
        connection.execute(
            "INSERT INTO intents VALUES (?, 'attach', 0)", (stored_rows(db)["ctr"]["id"],)
        )
    before = db.read_bytes()
    done = migrate_to_go(server.root)
    assert done.returncode == 1
    assert done.stderr.strip().startswith(
        f"obdsnap: {db}: 1 operations were cut short (attach of snapshot "
    )
    assert done.stderr.strip().endswith(
        "start obdsnap once to settle them, then stop it and migrate"
    )
    assert db.read_bytes()[:16] == before[:16]
    assert not (server.root / "metadata.db.obdsnap-sqlite").exists()
    assert not (server.root / "metadata.db.exporting").exists()


def test_a_go_root_is_not_migrated_twice(server: ServerProcess) -> None:
    write_go_root(server.root, kinds_ops())
    before = (server.root / "metadata.db").read_bytes()
    done = migrate_to_go(server.root)
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"obdsnap: {server.root / 'metadata.db'}: already a bbolt file; nothing to migrate"
    )
    assert (server.root / "metadata.db").read_bytes() == before
