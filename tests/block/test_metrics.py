"""The device metrics of a live obdsnap on the simulator, scraped over HTTP.

Queues at both caps while attaches are held by slow image opens, attach times,
failures by reason, devices and intents.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from grpclib.const import Status
from support.block import Obd, remote_labels
from support.block_fixtures import Images, StartObd
from support.scrape import Exposition, free_port, scrape
from support.simulator import MISSING
from support.snapshots import expect_status

from tcmusim.testing import only

pytestmark = [pytest.mark.root, pytest.mark.skipif(MISSING is not None, reason=MISSING or "")]

REASONS = ("open_failed", "timeout", "busy", "kernel")


async def start_with_exporter(start_obd: StartObd, **settings: object) -> tuple[Obd, int]:
    port = free_port()
    obd = await start_obd(exporterConfig={"enable": True, "port": port}, **settings)
    return obd, port


async def remote_images(obd: Obd, images: Images, count: int) -> list[str]:
    """``count`` one-layer overlaybd images (the same blob), unpacked: their chain IDs."""
    layer = images.single.layers[0]
    chain_ids = [f"sha256:{index + 1:064x}" for index in range(count)]
    for index, chain_id in enumerate(chain_ids):
        labels = remote_labels(chain_id, layer, images.single.ref)
        await expect_status(
            obd.prepare(f"extract-{index} {chain_id}", "", labels), Status.ALREADY_EXISTS
        )
    return chain_ids


async def scrape_until(port: int, done: object, within: float = 15.0) -> Exposition:
    """Scrape every 50 ms until ``done(exposition)`` holds; the last scrape."""
    assert callable(done)
    deadline = time.monotonic() + within
    while True:
        scraped = await scrape(port)
        if done(scraped) or time.monotonic() > deadline:
            return scraped
        await asyncio.sleep(0.05)


def queues(scraped: Exposition) -> dict[str, float]:
    return {
        f"{name}_{state}": scraped.value(f"obdsnap_{name}_{state}")
        for name in ("requests", "device_ops")
        for state in ("in_flight", "waiting")
    }


async def test_prepares_held_at_the_caps_show_as_waiting(
    start_obd: StartObd, images: Images
) -> None:
    """20 container Prepares on 20 images, 4 calls at a time and 2 image opens at a time."""
    obd, port = await start_with_exporter(
        start_obd, maxConcurrentRequests=4, maxConcurrentDeviceOps=2
    )
    chain_ids = await remote_images(obd, images, 20)
    obd.sim.control.set(open_latency=1.0)
    prepares = asyncio.gather(
        *(obd.prepare(f"container-{index}", chain) for index, chain in enumerate(chain_ids))
    )
    held = await scrape_until(port, lambda s: s.value("obdsnap_device_ops_waiting") == 2)
    obd.sim.control.set(open_latency=0.0)  # the rest need not wait
    assert queues(held) == {
        "requests_in_flight": 4,
        "requests_waiting": 16,
        "device_ops_in_flight": 2,
        "device_ops_waiting": 2,
    }
    # Each call in flight is attaching its image: its intent is open.
    assert held.value("obdsnap_intents_open") == 4
    await prepares

    done = await scrape(port)
    assert queues(done) == dict.fromkeys(queues(done), 0)
    assert done.value("obdsnap_intents_open") == 0
    assert done.value("obdsnap_attach_seconds_count") == 20
    # The first two opens took a second each.
    assert done.value("obdsnap_attach_seconds_sum") >= 2 * 1.0
    assert done.value("obdsnap_attach_seconds_bucket", le="0.005") < 20
    assert done.value("obdsnap_devices_attached") == 20
    assert done.by_label("obdsnap_snapshots", "kind") == {
        "view": 0,
        "active": 20,
        "committed": 20,
    }
    assert done.value("obdsnap_requests_total", function="Prepare", code="OK") == 20
    assert done.value("obdsnap_requests_total", function="Prepare", code="ALREADY_EXISTS") == 20

    await obd.remove_all()
    gone = await scrape(port)
    assert gone.value("obdsnap_devices_attached") == 0
    assert gone.by_label("obdsnap_snapshots", "kind") == {"view": 0, "active": 0, "committed": 0}


async def test_attach_failures_are_counted_by_reason(start_obd: StartObd) -> None:
    obd, port = await start_with_exporter(start_obd, rwMode="dir")
    obd.sim.control.set(fail_open=only("bad image magic", 1), eagain=only(1000, 2))
    await expect_status(obd.prepare("rootfs-1"), Status.UNKNOWN)  # snapshot 1: open failed
    after_open = await scrape(port)
    await expect_status(obd.prepare("rootfs-2"), Status.UNKNOWN)  # snapshot 2: EAGAIN to the end
    after_busy = await scrape(port)
    await obd.prepare("rootfs-3")
    after_success = await scrape(port)

    def failures(scraped: Exposition) -> dict[str, float]:
        return scraped.by_label("obdsnap_attach_failures_total", "reason")

    assert failures(after_open) == {**dict.fromkeys(REASONS, 0), "open_failed": 1}
    assert failures(after_busy) == {**dict.fromkeys(REASONS, 0), "open_failed": 1, "busy": 1}
    assert failures(after_success) == failures(after_busy)
    assert after_busy.value("obdsnap_attach_seconds_count") == 0
    assert after_success.value("obdsnap_attach_seconds_count") == 1
    assert after_success.value("obdsnap_devices_attached") == 1
    assert after_success.value("obdsnap_requests_total", function="Prepare", code="UNKNOWN") == 2
    assert after_success.value("obdsnap_intents_open") == 0
