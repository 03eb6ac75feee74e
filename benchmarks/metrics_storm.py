#!/usr/bin/env python3
"""A storm of container starts as obdsnap's metrics show it, scraped every ~100 ms.

On the TCMU simulator (node.py; image opens take ``--open-latency`` seconds), with
obdsnap's default caps unless told otherwise, what containerd and kubelet do
when ``--containers`` pods land on a node at once:

1. the images are pulled: per image a Stat of its layer (NOT_FOUND, the first
   time) and the Prepare of the remote layer (ALREADY_EXISTS: the layer is
   remote), ``--images`` images of one layer each;
2. every container at once: Prepare of an active snapshot on its image (which
   attaches the image's device, once per image) and Mounts;
3. everything is removed again: the containers at once, then the images.

Meanwhile /metrics is scraped every ``--interval`` seconds. Prints JSON: peak
``obdsnap_requests_waiting`` and ``obdsnap_device_ops_waiting`` (and the peaks
in flight), attach p50/p99 from the ``obdsnap_attach_seconds`` histogram (as
Prometheus' histogram_quantile estimates them), the client's own p50/p99 of
Prepare+Mounts for comparison, requests by code, and the wall times.

    python3 benchmarks/metrics_storm.py [--containers 100] [--images 100]
        [--open-latency 0.1] [--interval 0.1] [--max-requests N] [--max-device-ops N]

Needs root, /dev/fuse, loop devices and mfusepy (see tcmusim.testing).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from grpclib.client import Channel
from node import (
    Blob,
    Server,
    build_blob,
    cannot_run,
    pull_images,
    remove_all,
    scratch_dir,
)
from report import percentile
from storm import start_container

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]  # this checkout's obdsnap and test helpers

from support.scrape import Exposition, fetch  # noqa: E402

from obdsnap.config import BootConfig  # noqa: E402
from obdsnap.genproto.containerd.services.snapshots import v1 as api  # noqa: E402
from tcmusim.testing import RunningSimulator, running_simulator  # noqa: E402

IMAGE_REF = "docker.io/library/storm:1"
DEFAULTS = BootConfig()
QUEUES = ("requests_waiting", "requests_in_flight", "device_ops_waiting", "device_ops_in_flight")


@dataclass
class Peaks:
    scrapes: int = 0
    peak: dict[str, float] = field(default_factory=lambda: dict.fromkeys(QUEUES, 0.0))

    def note(self, scraped: Exposition) -> None:
        self.scrapes += 1
        for name in QUEUES:
            self.peak[name] = max(self.peak[name], scraped.value(f"obdsnap_{name}"))


@dataclass(frozen=True)
class Report:
    containers: int
    images: int
    open_latency_s: float
    caps: dict[str, int]
    scrapes: int
    peak: dict[str, float]
    attaches: int
    attach_p50_ms: float
    attach_p99_ms: float
    client_p50_ms: float
    client_p99_ms: float
    requests_by_code: dict[str, float]
    errors: int
    pull_s: float
    storm_s: float
    removal_s: float
    wall_s: float


def histogram_quantile(quantile: float, scraped: Exposition, name: str) -> float:
    """Prometheus' histogram_quantile over the cumulative buckets of ``name``."""
    buckets = sorted(
        (float(sample.labels["le"]), sample.value)
        for sample in scraped.samples.get(f"{name}_bucket", [])
    )
    if not buckets or buckets[-1][1] == 0:
        return math.nan
    rank = quantile * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for upper_bound, count in buckets:
        if count >= rank:
            if math.isinf(upper_bound):
                return lower_bound  # the highest finite bound, as Prometheus answers
            share = (rank - lower_count) / (count - lower_count) if count > lower_count else 0
            return lower_bound + (upper_bound - lower_bound) * share
        lower_bound, lower_count = upper_bound, count
    return lower_bound


async def scrape_loop(url: str, interval: float, peaks: Peaks, stop: asyncio.Event) -> None:
    while not stop.is_set():
        peaks.note(Exposition(await asyncio.to_thread(fetch, url)))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def storm(
    sim: RunningSimulator, blob: Blob, work: Path, arguments: argparse.Namespace
) -> Report:
    port = free_port()
    caps = {
        key: value
        for key, value in (
            ("maxConcurrentRequests", arguments.max_requests),
            ("maxConcurrentDeviceOps", arguments.max_device_ops),
        )
        if value is not None
    }
    settings: dict[str, object] = {"exporterConfig": {"enable": True, "port": port}, **caps}
    workdir = Path(tempfile.mkdtemp(prefix="storm-", dir=work))
    server = Server(workdir, sim, "overlayfs", settings)
    url = f"http://127.0.0.1:{port}/metrics"
    peaks, stop = Peaks(), asyncio.Event()
    try:
        await server.wait_listening()
        channel = Channel(path=str(server.address))
        stub = api.SnapshotsStub(channel)
        scraping = asyncio.create_task(scrape_loop(url, arguments.interval, peaks, stop))
        try:
            started = time.monotonic()
            images = await pull_images(stub, blob, arguments.images, IMAGE_REF)
            pulled = time.monotonic()
            outcomes = await asyncio.gather(
                *(
                    start_container(stub, f"container-{index}", images[index % len(images)], {})
                    for index in range(arguments.containers)
                )
            )
            stormed = time.monotonic()
            at_peak = Exposition(await asyncio.to_thread(fetch, url))
            await remove_all(stub)
            removed = time.monotonic()
            final = Exposition(await asyncio.to_thread(fetch, url))
        finally:
            stop.set()
            await scraping
            channel.close()
    finally:
        status = server.stop()
        if status != 0:
            print(f"obdsnap exited with {status}; log in {workdir}", file=sys.stderr)
    latencies = [seconds for seconds, _ in outcomes]
    attach = "obdsnap_attach_seconds"
    return Report(
        containers=arguments.containers,
        images=arguments.images,
        open_latency_s=arguments.open_latency,
        caps={
            "maxConcurrentRequests": caps.get(
                "maxConcurrentRequests", DEFAULTS.max_concurrent_requests
            ),
            "maxConcurrentDeviceOps": caps.get(
                "maxConcurrentDeviceOps", DEFAULTS.max_concurrent_device_ops
            ),
        },
        scrapes=peaks.scrapes,
        peak=peaks.peak,
        attaches=int(at_peak.value(f"{attach}_count")),
        attach_p50_ms=round(histogram_quantile(0.5, at_peak, attach) * 1000, 1),
        attach_p99_ms=round(histogram_quantile(0.99, at_peak, attach) * 1000, 1),
        client_p50_ms=round(percentile(latencies, 0.5) * 1000, 1),
        client_p99_ms=round(percentile(latencies, 0.99) * 1000, 1),
        requests_by_code=requests_by_code(final),
        errors=sum(1 for _, ok in outcomes if not ok),
        pull_s=round(pulled - started, 3),
        storm_s=round(stormed - pulled, 3),
        removal_s=round(removed - stormed, 3),
        wall_s=round(removed - started, 3),
    )


def requests_by_code(scraped: Exposition) -> dict[str, float]:
    totals: dict[str, float] = {}
    for sample in scraped.samples.get("obdsnap_requests_total", []):
        code = sample.labels["code"]
        totals[code] = totals.get(code, 0) + sample.value
    return dict(sorted(totals.items()))


async def main_async(arguments: argparse.Namespace) -> Report:
    with (
        scratch_dir() as work,
        running_simulator(work / "sim", open_latency=arguments.open_latency) as sim,
    ):
        blob = build_blob(sim, work)
        report = await storm(sim, blob, work, arguments)
        leftover = sim.loop_devices()
        if leftover:
            print(f"loop devices left: {leftover}", file=sys.stderr)
    return report


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--containers", type=int, default=100, help="containers started (100)")
    parser.add_argument("--images", type=int, default=100, help="images they start from (100)")
    parser.add_argument(
        "--open-latency", type=float, default=0.1, help="seconds an image open takes (0.1)"
    )
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between scrapes")
    parser.add_argument(
        "--max-requests",
        type=int,
        help=f"maxConcurrentRequests (obdsnap's default {DEFAULTS.max_concurrent_requests})",
    )
    parser.add_argument(
        "--max-device-ops",
        type=int,
        help=f"maxConcurrentDeviceOps (obdsnap's default {DEFAULTS.max_concurrent_device_ops})",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    if cannot_run("metrics_storm"):
        return 2
    report = asyncio.run(main_async(arguments))
    json.dump(asdict(report), sys.stdout, indent=2)
    print()
    return 0 if report.errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
