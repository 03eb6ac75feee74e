"""The metrics pieces on their own: failure reasons, the counted semaphore, procfs, answers."""

from __future__ import annotations

import asyncio
import errno
import os
import time
from pathlib import Path

import pytest
from aioprometheus.renderer import render
from grpclib import GRPCError
from grpclib.const import Status
from prometheus_client import CollectorRegistry
from prometheus_client.process_collector import ProcessCollector
from support.scrape import Exposition

from obdsnap import __version__
from obdsnap.commands import CommandError, CommandTimedOut
from obdsnap.device.backend import AttachError, DeviceTimeout, OpenFailed, attach_failure_reason
from obdsnap.errors import NotFound, StepFailed, failure_context
from obdsnap.locks import CountedSemaphore
from obdsnap.metrics import Metrics, read_process_stats
from obdsnap.storage import Kind, MetaStore, Operation


def exposition(metrics: Metrics) -> Exposition:
    body, _ = render(metrics.registry, [])
    return Exposition(body.decode())


# ---------------------------------------------------------------------- attach failure reasons


def wrapped(error: OSError, step: str = "configfs") -> StepFailed:
    """An OSError as the device code raises it: a StepFailed from failure_context."""
    with pytest.raises(StepFailed) as caught, failure_context(snapshot_id=3, step=step):
        raise error
    return caught.value


def test_open_failed_is_overlaybds_own_failure() -> None:
    error = OpenFailed("overlaybd could not open the image: failed:bad magic")
    assert attach_failure_reason(error.add_context(snapshot_id=3, step="open")) == "open_failed"


def test_a_disk_that_does_not_appear_is_a_timeout() -> None:
    assert attach_failure_reason(DeviceTimeout("disk did not appear within 10.0s")) == "timeout"


def test_a_command_past_its_time_limit_is_a_timeout() -> None:
    error = CommandTimedOut(("/sbin/mkfs.ext4", "/dev/sdb"), "did not finish", "timed out")
    assert attach_failure_reason(error) == "timeout"


def test_eagain_after_the_retries_is_busy() -> None:
    try:
        raise AttachError("failed to enable the target") from BlockingIOError(
            errno.EAGAIN, "Resource temporarily unavailable"
        )
    except AttachError as error:
        assert attach_failure_reason(error) == "busy"


def test_ebusy_from_configfs_is_busy() -> None:
    assert attach_failure_reason(wrapped(OSError(errno.EBUSY, "Device or resource busy"))) == "busy"


def test_other_configfs_and_mount_failures_are_the_kernels() -> None:
    assert attach_failure_reason(wrapped(OSError(errno.EIO, "I/O error"))) == "kernel"
    assert attach_failure_reason(wrapped(PermissionError(errno.EACCES, "denied"))) == "kernel"
    mount = CommandError(("mount", "/dev/sdb"), "mount failed (exit 32)", "wrong fs type")
    assert attach_failure_reason(mount) == "kernel"
    assert attach_failure_reason(AttachError("set up for another image")) == "kernel"


# ---------------------------------------------------------------------- counted semaphore


async def test_counted_semaphore_reports_holders_and_waiters() -> None:
    cap = CountedSemaphore(2)
    release = asyncio.Event()

    async def hold() -> None:
        async with cap:
            await release.wait()

    tasks = [asyncio.create_task(hold()) for _ in range(5)]
    await asyncio.sleep(0.01)
    assert (cap.in_flight, cap.waiting) == (2, 3)
    tasks[4].cancel()  # a waiter that gives up no longer waits
    await asyncio.sleep(0.01)
    assert (cap.in_flight, cap.waiting) == (2, 2)
    release.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert (cap.in_flight, cap.waiting) == (0, 0)


# ---------------------------------------------------------------------- process


def test_process_stats_match_prometheus_clients_process_collector() -> None:
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    ours = read_process_stats()
    theirs = {
        sample.name: sample.value for family in registry.collect() for sample in family.samples
    }
    assert ours.start_time_seconds == pytest.approx(theirs["process_start_time_seconds"], abs=0.02)
    assert ours.max_fds == theirs["process_max_fds"]
    assert ours.cpu_seconds == pytest.approx(theirs["process_cpu_seconds_total"], abs=0.5)
    assert ours.resident_bytes == pytest.approx(theirs["process_resident_memory_bytes"], rel=0.1)
    assert ours.virtual_bytes == pytest.approx(theirs["process_virtual_memory_bytes"], rel=0.1)
    assert ours.open_fds == pytest.approx(theirs["process_open_fds"], abs=2)


def test_open_fds_follow_the_files_opened(tmp_path: Path) -> None:
    before = read_process_stats().open_fds
    descriptors = [os.open(tmp_path, os.O_RDONLY) for _ in range(10)]
    try:
        assert read_process_stats().open_fds == before + 10
    finally:
        for descriptor in descriptors:
            os.close(descriptor)


async def test_process_series_are_read_at_each_refresh() -> None:
    metrics = Metrics()
    assert exposition(metrics).value("process_resident_memory_bytes") == 0
    await metrics.refresh()
    scraped = exposition(metrics)
    assert scraped.value("process_resident_memory_bytes") > 1 << 20
    assert scraped.value("process_open_fds") > 0
    assert abs(scraped.value("process_start_time_seconds") - time.time()) < 3600


# ---------------------------------------------------------------------- answers and state


async def answer(metrics: Metrics, function: str, error: BaseException | None) -> None:
    metrics.answered(function, error)
    if error is not None:
        raise error


async def test_answers_are_counted_by_their_status_code() -> None:
    metrics = Metrics()
    await answer(metrics, "Stat", None)
    await answer(metrics, "Stat", None)
    for error in (GRPCError(Status.NOT_FOUND), GRPCError(Status.UNAVAILABLE), RuntimeError("x")):
        with pytest.raises(type(error)):
            await answer(metrics, "Prepare", error)
    with pytest.raises(asyncio.CancelledError):
        await answer(metrics, "Mounts", asyncio.CancelledError())
    scraped = exposition(metrics)
    assert scraped.value("obdsnap_requests_total", function="Stat", code="OK") == 2
    assert scraped.by_label("obdsnap_requests_total", "code") == {
        "OK": 2,
        "NOT_FOUND": 1,
        "UNAVAILABLE": 1,
        "UNKNOWN": 1,
        "CANCELLED": 1,
    }


async def test_state_gauges_read_the_watched_sources(tmp_path: Path) -> None:
    metrics = Metrics()
    store = MetaStore(tmp_path / "metadata.db", metrics)
    await store.open()
    try:
        await store.create(Kind.ACTIVE, "layer", "", {})
        await store.commit("layer", "base", store.get("layer").usage, {})
        # Queued together: one transaction of three writes.
        await asyncio.gather(
            store.create(Kind.ACTIVE, "a", "base", {}),
            store.create(Kind.ACTIVE, "b", "base", {}),
            store.create(Kind.VIEW, "v", "base", {}),
        )
        device_ops = CountedSemaphore(1)
        await device_ops.acquire()

        async def two_devices() -> int:
            return 2

        metrics.watch_store(store)
        metrics.watch_devices(device_ops, two_devices)
        async with store.intent(5, Operation.ATTACH):
            await metrics.refresh()
            scraped = exposition(metrics)
    finally:
        await store.close()
    assert scraped.by_label("obdsnap_snapshots", "kind") == {"view": 1, "active": 2, "committed": 1}
    assert scraped.value("obdsnap_intents_open") == 1
    assert scraped.value("obdsnap_devices_attached") == 2
    assert scraped.value("obdsnap_device_ops_in_flight") == 1
    assert scraped.value("obdsnap_requests_waiting") == 0
    # create, commit, the three creates, the intent.
    assert scraped.value("obdsnap_metadata_commit_batch_size_count") == 4
    assert scraped.value("obdsnap_metadata_commit_batch_size_sum") == 6
    assert scraped.value("obdsnap_metadata_commit_seconds_count") == 4
    assert scraped.value("obdsnap_metadata_commit_seconds_sum") > 0


async def test_a_batch_of_failed_writes_is_no_transaction(tmp_path: Path) -> None:
    metrics = Metrics()
    store = MetaStore(tmp_path / "metadata.db", metrics)
    await store.open()
    try:
        with pytest.raises(NotFound):
            await store.remove("nothing")
    finally:
        await store.close()
    assert exposition(metrics).value("obdsnap_metadata_commit_batch_size_count") == 0


def test_build_info_names_the_version() -> None:
    assert exposition(Metrics()).by_label("obdsnap_build_info", "version") == {__version__: 1}
