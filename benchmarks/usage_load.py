#!/usr/bin/env python3
"""A storm under the CRI's background load: Walk plus Usage of every snapshot, every 10 s.

containerd's CRI plugin refreshes its snapshot stats on a timer: a Walk of the
store, then a Usage of each snapshot, one after the other. On a root holding
``--snapshots`` snapshots (written by populate.py), each storm of storm.py runs
twice on a fresh obdsnap: quiet, then with that load running from the storm's
start to its end (a pass every ``--interval`` seconds, the first at once).

- the ``usage`` scenario: one pass (Walk + Usage of every snapshot) on the
  otherwise idle server, after the quiet storm: ``pass_s``, Usage p50/p99;
- the storm's p99 under the load against its p99 without (target: at most 2x).

JSON on stdout and in ``--out``/usage_load.json, chart usage_load.png.

    python3 benchmarks/usage_load.py [--snapshots 5000] [--interval 10]
        [--concurrency 100] [--mode overlayfs|dir|both] [--out .build/bench]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grpclib import GRPCError
from node import cannot_run
from populate import Plan, fill_root
from report import bar_chart, latency_ms, ratio
from storm import (
    Load,
    Populate,
    Result,
    Storm,
    add_storm_arguments,
    finish,
    modes,
    run_storms,
)

from obdsnap.genproto.containerd.services.snapshots import v1 as api

P99_UNDER_LOAD = 2.0  # target: storm p99 under the load over its p99 without


@dataclass
class Passes:
    """What the load did: complete passes, the Usage calls' latencies, failed calls."""

    seconds: list[float] = field(default_factory=list)
    usage: list[float] = field(default_factory=list)
    errors: int = 0

    def figures(self) -> dict[str, Any]:
        return {
            "passes": len(self.seconds),
            "pass_s": [round(seconds, 3) for seconds in self.seconds],
            "usage_calls": len(self.usage),
            "usage": latency_ms(self.usage) if self.usage else None,
            "errors": self.errors,
        }


async def one_pass(stub: api.SnapshotsStub, passes: Passes, stop: asyncio.Event | None) -> None:
    """Walk, then Usage of each snapshot in turn; cut short (not counted) once ``stop`` is set."""
    started = time.monotonic()
    request = api.ListSnapshotsRequest()
    keys = [info.name async for reply in stub.list(request) for info in reply.info]
    for key in keys:
        if stop is not None and stop.is_set():
            return
        called = time.monotonic()
        try:
            await stub.usage(api.UsageRequest(key=key))
        except GRPCError:  # a storm's snapshot removed, or not ready, between Walk and Usage
            passes.errors += 1
        passes.usage.append(time.monotonic() - called)
    passes.seconds.append(time.monotonic() - started)


def cri_load(interval: float) -> Load:
    async def run(stub: api.SnapshotsStub, stop: asyncio.Event) -> dict[str, Any]:
        passes = Passes()
        while not stop.is_set():
            started = time.monotonic()
            await one_pass(stub, passes, stop)
            wait = max(0.0, interval - (time.monotonic() - started))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)
        return passes.figures()

    return run


async def pass_after_storm(stub: api.SnapshotsStub, stop: asyncio.Event) -> dict[str, Any]:
    """The usage scenario alone: one pass once the storm is over."""
    await stop.wait()
    passes = Passes()
    await one_pass(stub, passes, None)
    return passes.figures()


def populate(snapshots: int) -> Populate:
    def fill(root: Path) -> None:
        fill_root(root, Plan.for_total(snapshots))

    return fill


def pair(quiet: Result, loaded: Result) -> dict[str, Any]:
    change = ratio(loaded.latency["p99_ms"], quiet.latency["p99_ms"])
    return {
        "mode": quiet.mode,
        "concurrency": quiet.concurrency,
        "round": quiet.round,
        "p99_quiet_ms": quiet.latency["p99_ms"],
        "p99_loaded_ms": loaded.latency["p99_ms"],
        "p99_ratio": change,
        "met": change is not None and change <= P99_UNDER_LOAD,
        "storm_quiet_s": quiet.storm_s,
        "storm_loaded_s": loaded.storm_s,
        "usage_scenario": quiet.load,
        "load": loaded.load,
    }


def chart(out: Path, pairs: Sequence[dict[str, Any]]) -> str:
    path = out / "usage_load.png"
    groups = [f"{row['mode']} K={row['concurrency']}" for row in pairs]
    series = {
        "p99 quiet": [float(row["p99_quiet_ms"]) for row in pairs],
        "p99 under Walk+Usage": [float(row["p99_loaded_ms"]) for row in pairs],
    }
    bar_chart(path, "storm p99 under the CRI stats load", "ms", groups, series)
    return str(path)


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    add_storm_arguments(parser, "100", "overlayfs")
    parser.add_argument("--snapshots", type=int, default=5000, help="store size (5000)")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between passes")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    if cannot_run("usage_load"):
        return 2
    fill, load = populate(arguments.snapshots), cri_load(arguments.interval)
    storms = [
        Storm(mode, k, arguments.open_latency, fill, quiet_or_loaded)
        for mode in modes(arguments.mode)
        for k in arguments.concurrency
        for quiet_or_loaded in (pass_after_storm, load)
    ]
    results = asyncio.run(run_storms(storms, 1, arguments.open_latency))
    pairs = [pair(quiet, loaded) for quiet, loaded in zip(results[::2], results[1::2], strict=True)]
    document = {
        "snapshots": arguments.snapshots,
        "interval_s": arguments.interval,
        "pairs": pairs,
        "chart": chart(arguments.out, pairs),
    }
    return finish(arguments.out, "usage_load", document, results)


if __name__ == "__main__":
    sys.exit(main())
