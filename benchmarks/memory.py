#!/usr/bin/env python3
"""Resident memory of obdsnap and the reference server holding the same store.

Starts each server on a fresh root, builds the same store in it through the
gRPC API (chains of committed layers, active snapshots on top, a few labels
on each), reads it all back once (List, then Stat and Mounts of every key)
and reports the server process's VmRSS and VmHWM from /proc/<pid>/status,
with the ratios obdsnap/reference, as JSON on stdout.

    python3 benchmarks/memory.py [--snapshots 5000] [--depth 8] [--labels 3]

The servers run one after the other, from the repository root; the reference
is built (cached) by benchmarks/gobuild.sh. Needs Linux (/proc).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from grpclib.client import Channel
from populate import Plan
from proc import proc_status
from report import publish, ratio

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))  # this checkout's obdsnap, wherever we are run from

from obdsnap.genproto.containerd.services.snapshots import v1 as api  # noqa: E402

OBDSNAP_CMD = (
    f"{shlex.quote(sys.executable)} -m obdsnap serve --root {{root}} --address {{address}}"
)
# containerd sends the proxy plugin's name and the namespace with every call.
SNAPSHOTTER = "obdsnap"
METADATA = {"containerd-namespace": "bench"}


@dataclass
class Figures:
    """One server's memory, in KiB, and how long building the store took."""

    command: str
    pid: int
    idle_rss_kib: int = 0
    rss_kib: int = 0
    hwm_kib: int = 0
    build_s: float = 0.0
    read_s: float = 0.0
    snapshots: int = 0


class Server:
    """A server started from a command template on a fresh root under ``workdir``."""

    def __init__(self, name: str, template: str, workdir: Path, start_timeout: float) -> None:
        self.name = name
        self.root = workdir / "root"
        self.address = workdir / "snapshots.sock"
        self.log_path = workdir / "server.log"
        self.command = template.replace("{root}", shlex.quote(str(self.root))).replace(
            "{address}", shlex.quote(str(self.address))
        )
        self.root.mkdir(parents=True)
        with self.log_path.open("ab") as log:
            # exec: the measured pid is the server itself, not a shell around it.
            self.process = subprocess.Popen(
                ["bash", "-c", f"exec {self.command}"],
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + start_timeout
        while not self._accepts():
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"{name} not listening after {start_timeout}s:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def _accepts(self) -> bool:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(self.address))
            except OSError:
                return False
            return True

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, size: int = 4096) -> str:
        try:
            return self.log_path.read_bytes()[-size:].decode(errors="replace")
        except OSError:
            return "(no log)"

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM to the process group, SIGKILL after ``grace``."""
        if self.process.poll() is None:
            os.killpg(self.pid, signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                print(f"memory.py: {self.name} ignored SIGTERM; killing it", file=sys.stderr)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)  # and whatever it left behind
        self.process.wait()


async def gather_limited(calls: Sequence[Callable[[], Awaitable[None]]], limit: int) -> None:
    """Runs the calls, at most ``limit`` at a time; the first failure propagates."""
    slots = asyncio.Semaphore(limit)

    async def one(call: Callable[[], Awaitable[None]]) -> None:
        async with slots:
            await call()

    async with asyncio.TaskGroup() as group:
        for call in calls:
            group.create_task(one(call))


async def build_store(
    address: Path, plan: Plan, concurrency: int, call_timeout: float
) -> tuple[float, float]:
    """Creates the plan's snapshots, then reads them all back; returns both durations."""
    channel = Channel(path=str(address))
    try:
        client = api.SnapshotsStub(channel, metadata=METADATA, timeout=call_timeout)
        chains = plan.chains

        def unpack(chain: list[str]) -> Callable[[], Awaitable[None]]:
            async def run() -> None:  # like containerd unpacking an image's layers
                parent = ""
                for name in chain:
                    active = f"{name}-unpack"
                    await client.prepare(
                        api.PrepareSnapshotRequest(
                            snapshotter=SNAPSHOTTER,
                            key=active,
                            parent=parent,
                            labels=plan.label_set(name),
                        )
                    )
                    await client.commit(
                        api.CommitSnapshotRequest(
                            snapshotter=SNAPSHOTTER,
                            name=name,
                            key=active,
                            labels=plan.label_set(name),
                        )
                    )
                    parent = name

            return run

        def container(index: int) -> Callable[[], Awaitable[None]]:
            key, parent = plan.container(index)

            async def run() -> None:
                await client.prepare(
                    api.PrepareSnapshotRequest(
                        snapshotter=SNAPSHOTTER, key=key, parent=parent, labels=plan.label_set(key)
                    )
                )

            return run

        began = time.monotonic()
        await gather_limited([unpack(chain) for chain in chains], concurrency)
        await gather_limited([container(i) for i in range(plan.active)], concurrency)
        built = time.monotonic() - began

        # Read everything once, so caches a server fills on reads count too.
        began = time.monotonic()
        names: list[str] = []
        async for reply in client.list(api.ListSnapshotsRequest(snapshotter=SNAPSHOTTER)):
            names.extend(info.name for info in reply.info)
        expected = plan.committed + plan.active
        if len(names) != expected:
            raise RuntimeError(f"List returned {len(names)} snapshots, {expected} were created")

        def read(name: str) -> Callable[[], Awaitable[None]]:
            async def run() -> None:
                await client.stat(api.StatSnapshotRequest(snapshotter=SNAPSHOTTER, key=name))
                if name.startswith("container-"):
                    await client.mounts(api.MountsRequest(snapshotter=SNAPSHOTTER, key=name))

            return run

        await gather_limited([read(name) for name in names], concurrency)
        return built, time.monotonic() - began
    finally:
        channel.close()


def measure(
    name: str, template: str, tmpdir: Path | None, plan: Plan, args: argparse.Namespace
) -> Figures:
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-mem-{name}-", dir=tmpdir))
    try:
        server = Server(name, template, workdir, args.start_timeout)
        try:
            time.sleep(args.settle)  # let start-up allocations settle
            figures = Figures(command=server.command, pid=server.pid)
            figures.idle_rss_kib = proc_status(server.pid)["VmRSS"]
            build_s, read_s = asyncio.run(
                build_store(server.address, plan, args.concurrency, args.op_timeout)
            )
            figures.build_s, figures.read_s = round(build_s, 3), round(read_s, 3)
            figures.snapshots = plan.committed + plan.active
            time.sleep(args.settle)  # background work (group commits, removals) winds down
            status = proc_status(server.pid)
            figures.rss_kib, figures.hwm_kib = status["VmRSS"], status["VmHWM"]
            if server.process.poll() is not None:
                raise RuntimeError(f"{name} died:\n{server.log_tail()}")
            return figures
        finally:
            server.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def build_reference() -> str:
    """Builds the reference server (cached) and returns its command template."""
    binary = subprocess.run(
        [str(HERE / "gobuild.sh"), "reference"], check=True, stdout=subprocess.PIPE, text=True
    ).stdout.strip()
    return f"{shlex.quote(binary)} --root {{root}} --address {{address}}"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--snapshots", type=int, default=5000, help="snapshots in the store (default 5000)")
    add("--depth", type=int, default=8, help="layers per committed chain (default 8)")
    add("--labels", type=int, default=3, help="labels per snapshot (default 3)")
    add("--concurrency", type=int, default=16, help="calls in flight while building (16)")
    add("--settle", type=float, default=1.0, help="seconds to wait before reading RSS (1)")
    add("--op-timeout", type=float, default=30.0, help="timeout of each call, seconds (30)")
    add("--start-timeout", type=float, default=20.0, help="seconds a server may take to listen")
    add("--tmpdir", type=Path, help="where the servers' roots go (default $TMPDIR)")
    add("--obdsnap-cmd", default=OBDSNAP_CMD, help="obdsnap's command ({root}, {address})")
    add("--reference-cmd", help="the reference's command (default: benchmarks/reference)")
    add("--out", type=Path, help="also write memory.json here")
    args = parser.parse_args(argv)
    if args.snapshots < 2 or args.depth < 1 or args.labels < 0 or args.concurrency < 1:
        parser.error("need --snapshots >= 2, --depth >= 1, --labels >= 0, --concurrency >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    plan = Plan.for_total(args.snapshots, args.depth, args.labels)
    servers = {"obdsnap": args.obdsnap_cmd, "reference": args.reference_cmd or build_reference()}
    results: dict[str, Figures] = {}
    for name, template in servers.items():
        print(f"memory.py: {name}: building {args.snapshots} snapshots", file=sys.stderr)
        results[name] = measure(name, template, args.tmpdir, plan, args)
    obdsnap, reference = results["obdsnap"], results["reference"]
    report = {
        "store": {
            "snapshots": plan.committed + plan.active,
            "committed": plan.committed,
            "active": plan.active,
            "chain_depth": plan.depth,
            "labels_per_snapshot": plan.labels,
        },
        "servers": {name: asdict(figures) for name, figures in results.items()},
        "ratio_obdsnap_to_reference": {
            "idle_rss": ratio(obdsnap.idle_rss_kib, reference.idle_rss_kib),
            "rss": ratio(obdsnap.rss_kib, reference.rss_kib),
            "hwm": ratio(obdsnap.hwm_kib, reference.hwm_kib),
            "rss_growth": ratio(
                obdsnap.rss_kib - obdsnap.idle_rss_kib, reference.rss_kib - reference.idle_rss_kib
            ),
        },
    }
    if args.out is not None:
        publish(args.out, "memory", report)
    else:
        print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
