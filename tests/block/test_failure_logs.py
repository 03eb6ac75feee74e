"""What obdsnap logs, at its default level, through a real server on the simulator.

A failed attach leaves one warning or error line that says which call, which
key and snapshot, which step and overlaybd's reason, in the text and in the JSON
format; the answers containerd expects and metrics scrapes leave nothing.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import urllib.request
from typing import Any

import pytest
from grpclib.const import Status
from support.block import Obd
from support.block_fixtures import StartObd
from support.simulator import MISSING
from support.snapshots import expect_status

from tcmusim.testing import only

pytestmark = [pytest.mark.root, pytest.mark.skipif(MISSING is not None, reason=MISSING or "")]

REASON = "bad image magic: not an overlaybd layer"
TEXT_LINE = re.compile(r"^\S+ \S+ (?P<level>[A-Z]+) (?P<logger>\S+): (?P<rest>.*)$")


def log_lines(obd: Obd) -> list[str]:
    return obd.server.log_path.read_text(errors="replace").splitlines()


def scrape(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as reply:
        body: bytes = reply.read()
        return body


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def fail_an_attach(obd: Obd) -> list[str]:
    """A Prepare whose device cannot open its image; the log lines it added."""
    before = len(log_lines(obd))
    obd.sim.control.set(fail_open=only(REASON, 1))
    error = await expect_status(obd.prepare("rootfs"), Status.UNKNOWN)
    assert REASON in (error.message or "")
    obd.sim.control.clear()
    await obd.wait_gone(1)
    return log_lines(obd)[before:]


async def test_a_failed_attach_is_one_error_line_in_text(start_obd: StartObd) -> None:
    obd = await start_obd(rwMode="dir")
    added = await fail_an_attach(obd)
    parsed = [TEXT_LINE.match(line) for line in added]
    assert all(parsed), added
    loud = [
        line
        for line, match in zip(added, parsed, strict=True)
        if match and match["level"] in ("WARNING", "ERROR", "CRITICAL")
    ]
    assert len(loud) == 1, added
    line = loud[0]
    print(f"failed attach, text: {line}")
    assert " ERROR obdsnap.service: Prepare failed at open: UNKNOWN: " in line
    assert line.endswith(f' rpc=Prepare key=rootfs id=1 step=open reason="{REASON}"')


async def test_a_failed_attach_is_one_error_object_in_json(start_obd: StartObd) -> None:
    obd = await start_obd(rwMode="dir", logFormat="json")
    added = await fail_an_attach(obd)
    documents: list[dict[str, Any]] = [json.loads(line) for line in added]
    loud = [doc for doc in documents if doc["level"] in ("warning", "error", "critical")]
    assert len(loud) == 1, added
    document = loud[0]
    print(f"failed attach, json: {json.dumps(document)}")
    assert document["level"] == "error"
    assert document["logger"] == "obdsnap.service"
    assert document["msg"].startswith("Prepare failed at open: UNKNOWN: ")
    assert REASON in document["msg"]
    assert {name: document[name] for name in ("rpc", "key", "id", "step", "reason")} == {
        "rpc": "Prepare",
        "key": "rootfs",
        "id": 1,
        "step": "open",
        "reason": REASON,
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", document["ts"])
    # Every line of the log is one JSON object, start-up included.
    everything = [json.loads(line) for line in log_lines(obd)]
    starting = [doc for doc in everything if doc["msg"].startswith("obdsnap ")]
    assert starting and '"logFormat":"json"' in starting[0]["msg"]
    assert any(doc["msg"].startswith("reconciled at start-up: ") for doc in everything)


async def test_a_failed_mkfs_names_the_step_and_the_tools_output(start_obd: StartObd) -> None:
    obd = await start_obd(rwMode="dir", logFormat="json")
    before = len(log_lines(obd))
    await expect_status(
        obd.prepare("rootfs", "", {"containerd.io/snapshot/overlaybd/blob-fs-type": "ext4;;-Z"}),
        Status.UNKNOWN,
    )
    await obd.wait_gone(1)
    loud = [
        doc
        for doc in map(json.loads, log_lines(obd)[before:])
        if doc["level"] in ("warning", "error")
    ]
    assert len(loud) == 1, loud
    assert (loud[0]["rpc"], loud[0]["key"], loud[0]["id"], loud[0]["step"]) == (
        "Prepare",
        "rootfs",
        1,
        "mkfs",
    )
    assert "invalid option -- 'Z'" in loud[0]["reason"]


async def test_expected_answers_and_metrics_scrapes_log_nothing(start_obd: StartObd) -> None:
    port = free_port()
    obd = await start_obd(exporterConfig={"enable": True, "port": port})
    before = log_lines(obd)
    await expect_status(obd.stat("no-such-key"), Status.NOT_FOUND)
    await expect_status(obd.remove("no-such-key"), Status.NOT_FOUND)
    await obd.prepare("plain")
    await expect_status(obd.prepare("plain"), Status.ALREADY_EXISTS)
    url = f"http://127.0.0.1:{port}/metrics"
    for _ in range(3):
        assert b"grpc_latency_seconds" in await asyncio.to_thread(scrape, url)
    await expect_status(obd.stat("still-missing"), Status.NOT_FOUND)  # after the scrapes
    assert log_lines(obd) == before
