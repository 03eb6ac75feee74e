"""What a real obdsnap process logs: start-up, a failed call, and nothing for expected answers.

No simulator needed: a writable (``rwMode: dir``) Prepare whose overlaybd tools
are missing fails at the ``overlaybd-create`` step, a failure that is not the
client's fault.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

import pytest
from grpclib.const import Status
from support.server_process import ServerProcess
from support.snapshots import connect, expect_status, start_server

from obdsnap import __version__
from obdsnap.config import parse_config
from obdsnap.genproto.containerd.services.snapshots import v1 as api

SERVE = f"{shlex.quote(sys.executable)} -m obdsnap serve --config {{config}}"


def server_with(workdir: Path, settings: dict[str, Any], flags: str = "") -> ServerProcess:
    config = {
        "root": str(workdir / "root"),
        "address": str(workdir / "obdsnap.sock"),
        "rwMode": "dir",
        "overlaybd_util_bin_dir": str(workdir / "no-tools"),
        **settings,
    }
    return ServerProcess(workdir, f"{SERVE} {flags}", config=json.dumps(config), start_timeout=10)


async def fail_and_miss(server: ServerProcess) -> None:
    """A Prepare that fails at overlaybd-create, then a Stat of a key that is not there."""
    async with connect(server) as client:
        error = await expect_status(
            client.prepare(api.PrepareSnapshotRequest(key="rootfs")), Status.UNKNOWN
        )
        assert "overlaybd-create" in (error.message or "")
        await expect_status(client.stat(api.StatSnapshotRequest(key="missing")), Status.NOT_FOUND)
    assert server.stop() == 0, server.log()


async def test_under_journald_lines_carry_their_priority_and_no_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = server_with(tmp_path, {})
    server.log_path.touch()
    status = os.stat(server.log_path)
    monkeypatch.setenv("JOURNAL_STREAM", f"{status.st_dev}:{status.st_ino}")
    await start_server(server)
    await fail_and_miss(server)
    lines = server.log_path.read_text().splitlines()
    assert all(line[:3] in ("<3>", "<4>", "<6>", "<7>") for line in lines), lines
    starting = [line for line in lines if line.startswith("<6>INFO obdsnap.cli: obdsnap ")]
    assert len(starting) == 1, lines
    prefix = f"<6>INFO obdsnap.cli: obdsnap {__version__} starting with config "
    assert starting[0].startswith(prefix)
    effective = json.loads(starting[0].removeprefix(prefix))
    assert effective == parse_config(effective).as_json()
    assert effective["rwMode"] == "dir" and effective["logFormat"] == "text"
    assert any(
        line.startswith("<6>INFO obdsnap.reconcile: reconciled at start-up: ") for line in lines
    )
    loud = [line for line in lines if line[:3] in ("<3>", "<4>")]
    assert len(loud) == 1, lines
    assert loud[0].startswith("<3>ERROR obdsnap.service: Prepare failed at overlaybd-create: ")
    assert loud[0].endswith(
        ' rpc=Prepare key=rootfs id=1 step=overlaybd-create reason="No such file or directory"'
    )
    assert not any("missing" in line for line in lines), "an expected NOT_FOUND was logged"


async def test_log_format_flag_gives_json_with_the_caller(tmp_path: Path) -> None:
    server = server_with(tmp_path, {"logReportCaller": True}, "--log-format json")
    await start_server(server)
    await fail_and_miss(server)
    documents = [json.loads(line) for line in server.log_path.read_text().splitlines()]
    assert all(doc["file"].endswith(".py:" + doc["file"].rsplit(":", 1)[1]) for doc in documents)
    loud = [doc for doc in documents if doc["level"] in ("warning", "error")]
    assert len(loud) == 1, documents
    failed = loud[0]
    assert failed["func"] == "_log_failure"
    assert {name: failed[name] for name in ("rpc", "key", "id", "step", "reason")} == {
        "rpc": "Prepare",
        "key": "rootfs",
        "id": 1,
        "step": "overlaybd-create",
        "reason": "No such file or directory",
    }
    assert not any("missing" in doc["msg"] for doc in documents)
