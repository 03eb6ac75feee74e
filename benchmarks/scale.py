#!/usr/bin/env python3
"""obdsnap holding many snapshots: start-up reconcile, List, resident memory.

Per size N (``--snapshots``), a fresh root is filled with N snapshots through
obdsnap's storage layer (populate.py: half committed layers in chains of 8,
half active snapshots on them, 3 digest-sized labels each, a directory per
snapshot), then obdsnap starts on it. Measured:

- ``serving_s``: process start to the socket accepting calls; ``reconcile_s``:
  the start-up reconcile alone, from the status file obdsnap writes;
- ``list_s``: a List (Walk) of the whole store, as containerd's GC does;
- ``rss_mib`` once serving and after the List, ``hwm_mib`` (peak RSS).

JSON on stdout and in ``--out``/scale.json, chart scale.png.

    python3 benchmarks/scale.py [--snapshots 10000,100000] [--out .build/bench]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from grpclib.client import Channel
from populate import Plan, fill_root
from proc import proc_status
from report import bar_chart, publish

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "tests")]  # obdsnap, test helpers

from support.server_process import ServerProcess  # noqa: E402

from obdsnap.genproto.containerd.services.snapshots import v1 as api  # noqa: E402

# N: figure: target. The reconcile target is checked against serving_s, which holds it
# and everything else start-up does before the socket accepts calls.
TARGETS: dict[int, dict[str, float]] = {
    10_000: {"rss_mib": 70.0, "list_s": 1.0},
    100_000: {"rss_mib": 300.0, "list_s": 8.0, "serving_s": 10.0},
}


async def list_all(address: Path) -> tuple[int, float]:
    """A Walk of the whole store: how many snapshots, and the seconds it took."""
    channel = Channel(path=str(address))
    try:
        stub = api.SnapshotsStub(channel, timeout=600)
        started = time.monotonic()
        count = 0
        async for reply in stub.list(api.ListSnapshotsRequest()):
            count += len(reply.info)
        return count, time.monotonic() - started
    finally:
        channel.close()


def mib(kib: int) -> float:
    return round(kib / 1024, 1)


def measure(size: int, workdir: Path) -> dict[str, Any]:
    server = ServerProcess(workdir, start_timeout=600)
    started = time.monotonic()
    stored = fill_root(server.root, Plan.for_total(size))
    fill = time.monotonic() - started
    started = time.monotonic()
    server.start()
    serving = time.monotonic() - started
    try:
        status = json.loads((server.root / "status.json").read_text())
        serving_rss = proc_status(server.pid)["VmRSS"]
        listed, list_seconds = asyncio.run(list_all(server.address))
        memory = proc_status(server.pid)
    finally:
        server.stop()
    return {
        "snapshots": stored,
        "listed": listed,
        "fill_s": round(fill, 2),
        "serving_s": round(serving, 3),
        "reconcile_s": status["reconcile"]["seconds"],
        "list_s": round(list_seconds, 3),
        "serving_rss_mib": mib(serving_rss),
        "rss_mib": mib(memory["VmRSS"]),
        "hwm_mib": mib(memory["VmHWM"]),
    }


def target_checks(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "name": f"{figure} N={row['snapshots']}",
            "value": row[figure],
            "target": target,
            "met": row[figure] <= target,
        }
        for row in rows
        for figure, target in TARGETS.get(row["snapshots"], {}).items()
    ]


def charts(out: Path, rows: Sequence[dict[str, Any]]) -> list[str]:
    groups = [f"N={row['snapshots']}" for row in rows]
    seconds = {name: [float(row[name]) for row in rows] for name in ("reconcile_s", "list_s")}
    memory = {name: [float(row[name]) for row in rows] for name in ("rss_mib", "hwm_mib")}
    bar_chart(out / "scale-time.png", "start-up reconcile and List", "seconds", groups, seconds)
    bar_chart(out / "scale-rss.png", "resident memory", "MiB", groups, memory)
    return [str(out / "scale-time.png"), str(out / "scale-rss.png")]


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--snapshots",
        type=lambda text: [int(value) for value in text.split(",")],
        default=[10_000, 100_000],
        help="comma-separated store sizes (default 10000,100000)",
    )
    parser.add_argument("--out", type=Path, default=Path(".build/bench"), help="results dir")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    scratch = Path(tempfile.mkdtemp(prefix="obd-scale-", dir="/tmp"))
    try:
        rows = [measure(size, scratch / f"n{size}") for size in arguments.snapshots]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    document: dict[str, Any] = {"sizes": rows, "targets": target_checks(rows)}
    document["charts"] = charts(arguments.out, rows)
    publish(arguments.out, "scale", document)
    return 0 if all(row["listed"] == row["snapshots"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
