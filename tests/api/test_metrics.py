"""The metrics of a live obdsnap, scraped over HTTP: each series moves when it should."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from grpclib.const import Status
from prometheus_client import CollectorRegistry
from prometheus_client.process_collector import ProcessCollector
from support.scrape import Exposition, free_port, scrape
from support.server_process import ServerProcess
from support.snapshots import commit, connect, expect_status, prepare, start_server, stat, view

from obdsnap import __version__
from obdsnap.genproto.containerd.services.snapshots import v1 as api

KINDS = ("view", "active", "committed")


@dataclass
class Live:
    server: ServerProcess
    client: api.SnapshotsStub
    port: int

    async def scrape(self) -> Exposition:
        return await scrape(self.port)

    async def snapshots(self) -> dict[str, float]:
        return (await self.scrape()).by_label("obdsnap_snapshots", "kind")


@pytest_asyncio.fixture
async def live(tmp_path: Path) -> AsyncIterator[Live]:
    port = free_port()
    config = {"exporterConfig": {"enable": True, "port": port}, "maxConcurrentRequests": 4}
    server = await start_server(ServerProcess.with_config(tmp_path, config))
    try:
        async with connect(server) as client:
            yield Live(server, client, port)
    finally:
        assert server.stop() == 0


async def test_expected_answers_are_counted_by_code_not_only_as_errors(live: Live) -> None:
    await prepare(live.client, "a")
    await stat(live.client, "a")
    for _ in range(3):
        await expect_status(live.client.stat(api.StatSnapshotRequest(key="nope")), Status.NOT_FOUND)
    await expect_status(prepare(live.client, "a"), Status.ALREADY_EXISTS)
    scraped = await live.scrape()
    requests = {
        (sample.labels["function"], sample.labels["code"]): sample.value
        for sample in scraped.samples["obdsnap_requests_total"]
    }
    assert requests == {
        ("Prepare", "OK"): 1,
        ("Prepare", "ALREADY_EXISTS"): 1,
        ("Stat", "OK"): 1,
        ("Stat", "NOT_FOUND"): 3,
    }
    assert scraped.types["obdsnap_requests"] == "counter"
    # The Go snapshotter's series, unchanged: every answer but OK is an error there.
    # (prometheus_client's parser names every counter sample ..._total.)
    assert 'grpc_error_count{function="Stat"} 3' in scraped.text.splitlines()
    assert scraped.by_label("grpc_error_count_total", "function") == {"Stat": 3, "Prepare": 1}


async def test_snapshots_by_kind_follow_prepare_commit_and_remove(live: Live) -> None:
    assert await live.snapshots() == dict.fromkeys(KINDS, 0)
    await prepare(live.client, "layer-active")
    assert await live.snapshots() == {"view": 0, "active": 1, "committed": 0}
    await commit(live.client, "layer", "layer-active")
    assert await live.snapshots() == {"view": 0, "active": 0, "committed": 1}
    await prepare(live.client, "container", "layer")
    await view(live.client, "look", "layer")
    assert await live.snapshots() == {"view": 1, "active": 1, "committed": 1}
    for key in ("container", "look", "layer"):
        await live.client.remove(api.RemoveSnapshotRequest(key=key))
    assert await live.snapshots() == dict.fromkeys(KINDS, 0)
    scraped = await live.scrape()
    assert scraped.value("obdsnap_intents_open") == 0
    assert scraped.value("obdsnap_devices_attached") == 0


async def test_every_metadata_transaction_is_observed(live: Live) -> None:
    before = await live.scrape()
    for index in range(5):
        await prepare(live.client, f"c{index}")
    after = await live.scrape()
    transactions = after.value("obdsnap_metadata_commit_batch_size_count") - before.value(
        "obdsnap_metadata_commit_batch_size_count"
    )
    writes = after.value("obdsnap_metadata_commit_batch_size_sum") - before.value(
        "obdsnap_metadata_commit_batch_size_sum"
    )
    # One write per Prepare (its row), each in its own transaction: one after the other.
    assert (transactions, writes) == (5, 5)
    assert after.value("obdsnap_metadata_commit_seconds_count") == after.value(
        "obdsnap_metadata_commit_batch_size_count"
    )
    assert after.value("obdsnap_metadata_commit_seconds_sum") > before.value(
        "obdsnap_metadata_commit_seconds_sum"
    )


async def test_process_series_are_those_of_the_server_process(live: Live) -> None:
    scraped = await live.scrape()
    registry = CollectorRegistry()
    ProcessCollector(pid=lambda: live.server.pid, registry=registry)
    theirs = {sample.name: sample.value for f in registry.collect() for sample in f.samples}
    assert scraped.value("process_start_time_seconds") == theirs["process_start_time_seconds"]
    assert scraped.value("process_max_fds") == theirs["process_max_fds"]
    assert scraped.value("process_resident_memory_bytes") > 10 << 20
    assert scraped.value("process_virtual_memory_bytes") >= scraped.value(
        "process_resident_memory_bytes"
    )
    open_fds = scraped.value("process_open_fds")
    # Give or take the scrape's own connection and the directory read to count them.
    assert 0 < open_fds == pytest.approx(len(os.listdir(f"/proc/{live.server.pid}/fd")), abs=3)
    # Read before theirs; 0.01 s: one clock tick, and their sum rounds otherwise than ours.
    cpu = scraped.value("process_cpu_seconds_total")
    assert 0 < cpu <= theirs["process_cpu_seconds_total"] + 0.01
    assert scraped.types["process_cpu_seconds"] == "counter"
    later = await live.scrape()  # read at each scrape, not once
    assert later.value("process_cpu_seconds_total") >= scraped.value("process_cpu_seconds_total")


async def test_build_info_and_idle_queues(live: Live) -> None:
    scraped = await live.scrape()
    assert scraped.by_label("obdsnap_build_info", "version") == {__version__: 1}
    for name in ("requests", "device_ops"):
        assert scraped.value(f"obdsnap_{name}_waiting") == 0
        assert scraped.value(f"obdsnap_{name}_in_flight") == 0
    assert scraped.value("obdsnap_attach_seconds_count") == 0
    assert scraped.by_label("obdsnap_attach_failures_total", "reason") == dict.fromkeys(
        ("open_failed", "timeout", "busy", "kernel"), 0
    )
    assert scraped.value("is_alive") == 1
