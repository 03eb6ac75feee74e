"""Label values that become paths or options are refused at the edge, before anything is made."""

from __future__ import annotations

from pathlib import Path

import pytest
from grpclib.const import Status
from support.server_process import ServerProcess
from support.snapshots import expect_status, list_names

from obdsnap.genproto.containerd.services.snapshots import v1 as api

TRACE = "containerd.io/snapshot/overlaybd/record-trace"
TRACE_PATH = "containerd.io/snapshot/overlaybd/record-trace-path"


@pytest.mark.parametrize(
    "path", ["relative", "/tmp/../etc/shadow", "/proc/self/mem", "/sys/x", "ROOT/metadata.db"]
)
async def test_record_trace_path_is_checked_before_anything_is_made(
    client: api.SnapshotsStub, server: ServerProcess, path: str
) -> None:
    path = path.replace("ROOT", str(server.root))
    request = api.PrepareSnapshotRequest(key="c", labels={TRACE: "yes", TRACE_PATH: path})
    error = await expect_status(client.prepare(request), Status.INVALID_ARGUMENT)
    assert "record-trace-path" in (error.message or "")
    assert await list_names(client) == set()
    assert sorted(p.name for p in (server.root / "snapshots").iterdir()) == []


async def test_a_clean_trace_path_is_accepted(client: api.SnapshotsStub, tmp_path: Path) -> None:
    labels = {TRACE: "yes", TRACE_PATH: str(tmp_path / "trace")}
    await client.prepare(api.PrepareSnapshotRequest(key="c", labels=labels))
    assert await list_names(client) == {"c"}
