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

Unless ``--no-reference``, the reference (containerd's overlayfs snapshotter,
benchmarks/reference) is measured the same way on a Go root of the same
snapshots written by containerd's MetaStore, and ``ratio_to_reference`` gives
obdsnap/reference for each figure.

JSON on stdout and in ``--out``/scale.json, chart scale.png.

    python3 benchmarks/scale.py [--snapshots 10000,100000] [--out .build/bench]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from grpclib.client import Channel
from memory import build_reference
from node import scratch_dir
from populate import Plan, fill_go_root, fill_root
from proc import proc_status
from report import bar_chart, publish, ratio

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


def measure(size: int, workdir: Path, reference: str | None = None) -> dict[str, Any]:
    """obdsnap on a store of ``size`` (or, given its command, the reference on a Go root)."""
    server = ServerProcess(workdir, reference, start_timeout=600)
    fill = fill_go_root if reference else fill_root
    started = time.monotonic()
    stored = fill(server.root, Plan.for_total(size))
    filled = time.monotonic() - started
    started = time.monotonic()
    server.start()
    serving = time.monotonic() - started
    try:
        status_file = server.root / "status.json"
        status = json.loads(status_file.read_text()) if status_file.exists() else None
        serving_rss = proc_status(server.pid)["VmRSS"]
        listed, list_seconds = asyncio.run(list_all(server.address))
        memory = proc_status(server.pid)
    finally:
        server.stop()
    return {
        "snapshots": size,
        "stored": stored,
        "listed": listed,
        "fill_s": round(filled, 2),
        "serving_s": round(serving, 3),
        "reconcile_s": status["reconcile"]["seconds"] if status else None,
        "list_s": round(list_seconds, 3),
        "serving_rss_mib": mib(serving_rss),
        "rss_mib": mib(memory["VmRSS"]),
        "hwm_mib": mib(memory["VmHWM"]),
    }


def with_reference(row: dict[str, Any], theirs: dict[str, Any]) -> dict[str, Any]:
    """The row with the reference's figures and the ratios obdsnap/reference."""
    figures = ("serving_s", "list_s", "rss_mib", "hwm_mib")
    return {
        **row,
        "reference": theirs,
        "ratio_to_reference": {name: ratio(row[name], theirs[name]) for name in figures},
    }


def one_size(size: int, scratch: Path, reference: str | None) -> dict[str, Any]:
    row = measure(size, scratch / f"obdsnap-{size}")
    if reference is None:
        return row
    return with_reference(row, measure(size, scratch / f"reference-{size}", reference))


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

    def series(name: str) -> dict[str, list[float]]:
        figures = {f"obdsnap {name}": [float(row[name]) for row in rows]}
        if all("reference" in row for row in rows):
            figures[f"reference {name}"] = [float(row["reference"][name]) for row in rows]
        return figures

    bar_chart(out / "scale-time.png", "start-up and List", "seconds", groups,
              {**series("serving_s"), **series("list_s")})  # fmt: skip
    bar_chart(out / "scale-rss.png", "resident memory after a List", "MiB", groups,
              series("rss_mib"))  # fmt: skip
    return [str(out / "scale-time.png"), str(out / "scale-rss.png")]


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--snapshots",
        type=lambda text: [int(value) for value in text.split(",")],
        default=[10_000, 100_000],
        help="comma-separated store sizes (default 10000,100000)",
    )
    parser.add_argument(
        "--no-reference", action="store_true", help="obdsnap alone, not the reference beside it"
    )
    parser.add_argument("--out", type=Path, default=Path(".build/bench"), help="results dir")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    with scratch_dir() as scratch:
        reference = None if arguments.no_reference else build_reference()
        rows = [one_size(size, scratch, reference) for size in arguments.snapshots]
    document: dict[str, Any] = {"sizes": rows, "targets": target_checks(rows)}
    document["charts"] = charts(arguments.out, rows)
    publish(arguments.out, "scale", document)
    return 0 if all(row["listed"] == row["stored"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
