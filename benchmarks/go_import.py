#!/usr/bin/env python3
"""Taking over a Go snapshotter's root: import time and obdsnap's peak memory.

Writes a root whose metadata.db holds ``--snapshots`` snapshots, written by
containerd's own snapshots/storage MetaStore (the tests' gometa program, built
in GOPATH mode against Debian's containerd sources): half committed layers in
chains, 40% containers, 10% views, gaps left by removed ones, with a directory
per snapshot as the Go snapshotter leaves them. Then, ``--rounds`` times on a
fresh copy, starts obdsnap on it and measures:

- ``serving_s``: from the start of the process to the socket accepting calls
  (interpreter start, import, start-up reconcile);
- ``import_s``: the import alone, as its log line reports it;
- ``hwm_kib``: obdsnap's peak RSS (VmHWM) once it serves, ``rss_kib`` its RSS.

Prints JSON with every round and the medians.

    python3 benchmarks/go_import.py [--snapshots 10000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]  # this checkout's obdsnap and test helpers

from migration.gohelpers import (  # noqa: E402
    dump_snapshots,
    go_dump,
    make_snapshot_dirs,
    many_ops,
    write_go_metadata,
)
from proc import proc_status  # noqa: E402
from support.server_process import ServerProcess  # noqa: E402

IMPORT_LINE = re.compile(r"imported the Go snapshotter's metadata .*\((\d+\.\d+)s\)")


def write_go_root(template: Path, snapshots: int) -> int:
    """The Go root to copy for every round; the number of snapshots in it."""
    (template / "snapshots").mkdir(parents=True)
    write_go_metadata(template / "metadata.db", many_ops(snapshots))
    found = dump_snapshots(go_dump(template / "metadata.db"))
    make_snapshot_dirs(template, {int(s["id"]): s["kind"] for s in found.values()})
    return len(found)


def one_round(template: Path, workdir: Path) -> dict[str, Any]:
    server = ServerProcess(workdir, start_timeout=300)
    shutil.copytree(template, server.root, symlinks=True)
    started = time.monotonic()
    server.start()
    serving = time.monotonic() - started
    status = proc_status(server.pid)
    try:
        match = IMPORT_LINE.search(server.log())
        if match is None:
            raise RuntimeError(f"no import line in the log:\n{server.log()}")
        return {
            "serving_s": round(serving, 3),
            "import_s": float(match.group(1)),
            "hwm_kib": status["VmHWM"],
            "rss_kib": status["VmRSS"],
        }
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--snapshots", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="obd-go-import-", dir="/tmp"))
    try:
        template = scratch / "template"
        started = time.monotonic()
        count = write_go_root(template, args.snapshots)
        print(
            f"Go root of {count} snapshots written in {time.monotonic() - started:.1f}s",
            file=sys.stderr,
        )
        rounds = [one_round(template, scratch / f"round-{i}") for i in range(args.rounds)]
        medians = {
            key: statistics.median(r[key] for r in rounds)
            for key in ("serving_s", "import_s", "hwm_kib", "rss_kib")
        }
        print(json.dumps({"snapshots": count, "rounds": rounds, "median": medians}, indent=2))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
