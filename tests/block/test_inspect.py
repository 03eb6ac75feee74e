"""The read-only inspection commands against a live obdsnap on the simulator, and a killed one.

The node under test holds an attached device (a container on a remote image),
a failed attach (overlaybd could not open the image: the result file says
``failed:<reason>``), and then an attach cut short by SIGKILL (its intent open).
Every command must leave the root's files and configfs as they were.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import subprocess
import sys
from typing import Any

import pytest
from grpclib.const import Status
from support.block import REPO_ROOT, Obd
from support.block_fixtures import Images
from support.processes import run
from support.simulator import MISSING
from support.snapshots import expect_status, wait_until

from tcmusim.testing import only

pytestmark = [pytest.mark.root, pytest.mark.skipif(MISSING is not None, reason=MISSING or "")]

REASON = "failed to fetch blob: 401 Unauthorized"
ATTACH_HOLD_S = 3.0


def obdsnap(obd: Obd, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "obdsnap", *args, "--config", str(obd.server.config_path)]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return run(*command, check=check, cwd=REPO_ROOT, env=env, timeout=60)


def as_json(obd: Obd, *args: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(obdsnap(obd, *args, "--json").stdout)
    return document


def files_state(obd: Obd) -> dict[str, object]:
    """What a reader must not change: the root's files and the configfs tree."""
    state: dict[str, object] = {}
    for name in ("metadata.db", "metadata.db-wal", "status.json", "obdsnap.lock"):
        path = obd.root / name
        if path.exists():
            state[name] = (path.stat().st_mtime_ns, path.read_bytes())
    shm = obd.root / "metadata.db-shm"
    # Every SQLite reader takes a read mark in the -shm: only its presence and size are fixed.
    state["metadata.db-shm"] = shm.stat().st_size if shm.exists() else None
    state["root entries"] = sorted(os.listdir(obd.root))
    for top in (obd.sim.configfs / "target/core", obd.sim.configfs / "target/loopback"):
        for directory, names, files in os.walk(top):
            state[directory] = (sorted(names), sorted(files), os.stat(directory).st_mtime_ns)
    return state


def run_all(obd: Obd) -> dict[str, dict[str, Any]]:
    """Every command, as a table and as JSON; the JSON documents by command."""
    before = files_state(obd)
    documents = {}
    for command in ("status", "ls", "devices", "intents"):
        table = obdsnap(obd, command).stdout
        print(f"$ obdsnap {command}\n{table}")
        assert table.strip(), command
        documents[command] = as_json(obd, command)
    documents["ls --usage"] = as_json(obd, "ls", "--usage")
    assert files_state(obd) == before
    return documents


def open_intents(obd: Obd) -> list[tuple[int, str]]:
    uri = f"{(obd.root / 'metadata.db').as_uri()}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
        return [
            (int(i), str(op)) for i, op in db.execute("SELECT snapshot_id, operation FROM intents")
        ]


async def test_inspection_of_attached_failed_and_interrupted_devices(
    obd: Obd, images: Images
) -> None:
    # An attached device: a container on the three-layer remote image.
    chain = await obd.unpack_remote(images.three)
    await obd.prepare("ctr-running", chain[-1])
    attached = obd.latest_id() - 1  # the top layer; the container is the latest snapshot
    assert obd.mark(attached) is not None
    # A failed attach: overlaybd cannot open the single-layer image.
    (single,) = await obd.unpack_remote(images.single)
    failed = obd.latest_id()
    obd.sim.control.set(fail_open=only(REASON, failed))
    error = await expect_status(obd.prepare("ctr-failed", single), Status.UNKNOWN)
    assert REASON in (error.message or "")
    obd.sim.control.clear()
    assert (obd.block(failed) / "init-debug.log").read_text().strip() == f"failed:{REASON}"

    live = run_all(obd)
    check_status(live["status"], serving=True, intents=0)
    assert live["status"]["process"]["pid"] == obd.server.pid
    assert live["status"]["process"]["reconcile"]["snapshots"] == 0
    check_ls(obd, live["ls"], attached, failed)
    sizes = {row["key"]: row["usage"] for row in live["ls --usage"]["snapshots"]}
    assert sizes["ctr-running"]["inodes"] >= 1 and all(sizes.values())
    check_devices(obd, live["devices"], attached, failed)
    assert live["intents"] == {"intents": []}
    filtered = as_json(obd, "ls", "--filter", "kind==active")["snapshots"]
    assert [row["key"] for row in filtered] == ["ctr-running"]
    by_image = 'labels."containerd.io/snapshot/image-ref"==' + images.three.ref
    layers = as_json(obd, "ls", "--filter", by_image)["snapshots"]
    assert [row["key"] for row in layers] == chain
    by_name = as_json(obd, "ls", "--filter", "name~=running", "--filter", "id==none")
    assert [row["key"] for row in by_name["snapshots"]] == ["ctr-running"]
    bad = obdsnap(obd, "ls", "--filter", "kind==", check=False)
    assert bad.returncode == 1 and bad.stderr.startswith("obdsnap: bad filter: ")
    assert len(bad.stderr.strip().splitlines()) == 1

    # An attach held by overlaybd, and obdsnap killed meanwhile: its intent stays open.
    (zchain,) = await obd.unpack_remote(images.zfile)
    held = obd.latest_id()
    obd.sim.control.set(open_latency=only(ATTACH_HOLD_S, held))
    preparing = asyncio.ensure_future(obd.prepare("ctr-killed", zchain))
    assert await wait_until(lambda: open_intents(obd) == [(held, "attach")], 10.0)
    obd.close_channel()
    obd.server.kill()
    with contextlib.suppress(Exception):
        await preparing
    stopped = run_all(obd)
    check_status(stopped["status"], serving=False, intents=1)
    (intent,) = stopped["intents"]["intents"]
    assert (intent["snapshotId"], intent["operation"], intent["key"]) == (held, "attach", zchain)
    assert 0 <= intent["ageSeconds"] < 60
    table = obdsnap(obd, "intents").stdout.splitlines()
    assert table[0].split() == ["ID", "OPERATION", "STARTED", "AGE", "KEY"]
    assert table[1].split()[:2] == [str(held), "attach"] and table[1].endswith(zchain)

    # Started again, it settles the intent; the status says what its reconcile did.
    await asyncio.sleep(ATTACH_HOLD_S)
    obd.sim.control.clear()
    await obd.start()
    again = as_json(obd, "status")
    assert again["intentsOpen"] == 0
    assert again["process"]["pid"] == obd.server.pid
    (settled,) = again["process"]["reconcile"]["interrupted_operations"]
    assert settled.startswith(f"attach of snapshot {held} ")
    text = obdsnap(obd, "status").stdout
    assert "1 interrupted operations settled" in text and "serving" in text

    # Stopped cleanly with nothing left: reading creates no -wal or -shm file.
    await obd.remove_all()
    assert await obd.stop() == 0
    assert not (obd.root / "metadata.db-wal").exists()
    assert run_all(obd)["ls"] == {"snapshots": []}
    assert not (obd.root / "metadata.db-wal").exists()
    assert not (obd.root / "metadata.db-shm").exists()


def check_status(document: dict[str, Any], *, serving: bool, intents: int) -> None:
    assert document["serving"] is serving
    # Killed during its attach, ctr-killed's row is there, not ready; so is its parent layer.
    committed = 4 + (not serving)
    assert document["snapshots"] == {"active": 1 + (not serving), "view": 0, "committed": committed}
    assert document["devices"]["ours"] == 1 + (not serving)
    assert document["devices"]["failed"] == 1
    assert document["intentsOpen"] == intents


def check_ls(obd: Obd, document: dict[str, Any], attached: int, failed: int) -> None:
    rows = {row["id"]: row for row in document["snapshots"]}
    assert rows[attached]["storageType"] == "remote"
    assert rows[attached]["kind"] == "committed"
    assert rows[attached]["device"] == obd.mark(attached)
    assert rows[attached]["mounted"] is True
    assert rows[attached]["mountpoint"] == str(obd.mountpoint(attached))
    assert rows[failed]["device"] == "" and rows[failed]["mounted"] is False
    (running,) = [row for row in rows.values() if row["key"] == "ctr-running"]
    assert (running["kind"], running["parent"], running["rwMode"]) == (
        "active",
        rows[attached]["key"],
        "overlayfs",
    )
    assert running["storageType"] == "normal"
    assert all(row["usage"] is None for row in rows.values())


def check_devices(obd: Obd, document: dict[str, Any], attached: int, failed: int) -> None:
    rows = {row["snapshotId"]: row for row in document["devices"]}
    assert set(rows) == {attached, failed}
    assert rows[attached] == {
        "snapshotId": attached,
        "key": rows[attached]["key"],
        "target": True,
        "deviceNode": obd.device_of(attached),
        "ours": True,
        "state": "attached",
        "orphan": False,
        "mountpoint": str(obd.mountpoint(attached)),
        "mounted": True,
        "result": "success",
    }
    assert rows[failed]["state"] == "failed" and rows[failed]["target"] is False
    assert rows[failed]["result"] == f"failed:{REASON}"
    assert rows[failed]["orphan"] is False
