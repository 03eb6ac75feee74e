#!/usr/bin/env python3
"""Container-start storms: K containers start at once on the TCMU simulator.

Per K and mode, on a fresh obdsnap root (image opens take ``--open-latency``):

- ``overlayfs``: K images are pulled first (untimed), then K containers, one per
  image, each an overlay on its image's read-only device;
- ``dir``: K containers with a writable device each (overlaybd-create, mkfs,
  mount read-write).

Each container start is a Prepare then Mounts, all K at once. Measured:
``storm_s`` from the first start to the last one done, per-container p50/p99,
CPU per device (obdsnap, the simulator, and the children both waited for, from
/proc/<pid>/stat), then the Remove of the K containers at once and of the
images. JSON on stdout and in ``--out``/storm.json, charts storm.png and
storm-cpu.png.

    python3 benchmarks/storm.py [--concurrency 1,16,100,300] [--mode overlayfs|dir|both]
        [--open-latency 0.1] [--rounds 1] [--out .build/bench] [--profile DIR]

``--profile DIR``: py-spy (the ``bench`` extra) samples obdsnap and the
simulator during each storm and writes their stacks to DIR in its raw
(collapsed) format, one file a process and run.

Needs root, /dev/fuse, loop devices and mfusepy (see tcmusim.testing).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from grpclib import GRPCError
from grpclib.client import Channel
from node import (
    WRITABLE,
    Blob,
    Server,
    build_blob,
    cannot_run,
    pull_images,
    remove_all,
    scratch_dir,
)
from proc import CpuTimes, cpu_times, per_device_ms
from report import bar_chart, latency_ms, publish, spread

from obdsnap.genproto.containerd.services.snapshots import v1 as api
from tcmusim.testing import RunningSimulator, running_simulator

# Runs beside the storm until the event is set; returns its own figures.
Load = Callable[[api.SnapshotsStub, asyncio.Event], Coroutine[Any, Any, dict[str, Any]]]
# Fills a root before obdsnap starts on it.
Populate = Callable[[Path], None]

TARGETS = {  # (mode, K): seconds from the first start to the last
    ("overlayfs", 100): 1.0,
    ("overlayfs", 300): 3.0,
    ("dir", 100): 3.0,
}
ONE_START_MS = {"overlayfs": 120.0, "dir": 180.0}
CPU_PER_ATTACH_MS = 6.0
REMOVE_300_S = 2.5


@dataclass(frozen=True)
class Storm:
    mode: str
    concurrency: int
    open_latency_s: float
    populate: Populate | None = None
    load: Load | None = None
    profile: Path | None = None  # py-spy's stacks of obdsnap and the simulator go there


@dataclass(frozen=True)
class Result:
    mode: str
    concurrency: int
    round: int
    storm_s: float
    latency: dict[str, float]
    errors: int
    cpu_ms_per_device: dict[str, float | None]
    remove_containers_s: float
    remove_images_s: float
    load: dict[str, Any] | None


@dataclass(frozen=True)
class During:
    """What a storm measured while it ran."""

    outcomes: list[tuple[float, bool]]  # per container: seconds, success
    seconds: float
    cpu_ms_per_device: dict[str, float | None]
    load: dict[str, Any] | None


async def start_container(
    stub: api.SnapshotsStub, key: str, parent: str, labels: dict[str, str]
) -> tuple[float, bool]:
    """Prepare the container's rootfs and ask for its mounts; seconds taken, success."""
    started = time.monotonic()
    try:
        await stub.prepare(api.PrepareSnapshotRequest(key=key, parent=parent, labels=labels))
        await stub.mounts(api.MountsRequest(key=key))
    except GRPCError as exc:
        print(f"{key}: {exc.status.name}: {exc.message}", file=sys.stderr)
        return time.monotonic() - started, False
    return time.monotonic() - started, True


async def timed_removes(stub: api.SnapshotsStub, keys: Sequence[str]) -> float:
    started = time.monotonic()
    await asyncio.gather(*(stub.remove(api.RemoveSnapshotRequest(key=key)) for key in keys))
    return time.monotonic() - started


def cpu_pair(server: Server, sim: RunningSimulator) -> tuple[CpuTimes, CpuTimes]:
    return cpu_times(server.process.pid), cpu_times(sim.process.pid)


@contextmanager
def profiled(storm: Storm, name: str, pids: dict[str, int]) -> Iterator[None]:
    """py-spy recording each process of ``pids`` while the block runs, if ``storm.profile``."""
    if storm.profile is None:
        yield
        return
    storm.profile.mkdir(parents=True, exist_ok=True)
    sampling = ["--format", "raw", "--rate", "250", "--nonblocking"]
    recorders = [
        subprocess.Popen(
            ["py-spy", "record", "--pid", str(pid), *sampling, "-o", f"{name}-{process}.txt"],
            cwd=storm.profile,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for process, pid in pids.items()
    ]
    time.sleep(0.5)  # py-spy attaches before the first sample it should take
    try:
        yield
    finally:
        for recorder in recorders:
            recorder.send_signal(signal.SIGINT)
        for recorder in recorders:
            recorder.wait()


async def storm_on(
    stub: api.SnapshotsStub, storm: Storm, server: Server, sim: RunningSimulator, blob: Blob
) -> During:
    parents = [""] * storm.concurrency
    if storm.mode == "overlayfs":
        parents = await pull_images(stub, blob, storm.concurrency)
    pids = {"obdsnap": server.process.pid, "simulator": sim.process.pid}
    with profiled(storm, f"{storm.mode}-k{storm.concurrency}-{time.time_ns()}", pids):
        return await containers_started(stub, storm, server, sim, parents)


async def containers_started(
    stub: api.SnapshotsStub,
    storm: Storm,
    server: Server,
    sim: RunningSimulator,
    parents: Sequence[str],
) -> During:
    labels = {WRITABLE: "dir"} if storm.mode == "dir" else {}
    stop = asyncio.Event()
    before = cpu_pair(server, sim)
    load = asyncio.create_task(storm.load(stub, stop)) if storm.load else None
    started = time.monotonic()
    outcomes = await asyncio.gather(
        *(
            start_container(stub, f"container-{index}", parent, labels)
            for index, parent in enumerate(parents)
        )
    )
    seconds = time.monotonic() - started
    after = cpu_pair(server, sim)
    stop.set()
    load_figures = await load if load else None
    cpu = per_device_ms(after[0] - before[0], after[1] - before[1], storm.concurrency)
    return During(outcomes, seconds, cpu, load_figures)


async def run_one(
    sim: RunningSimulator, blob: Blob, work: Path, storm: Storm, round_number: int
) -> Result:
    workdir = Path(tempfile.mkdtemp(prefix=f"k{storm.concurrency}-", dir=work))
    if storm.populate:
        storm.populate(workdir / "root")
    server = Server(workdir, sim, "overlayfs")
    try:
        await server.wait_listening()
        channel = Channel(path=str(server.address))
        stub = api.SnapshotsStub(channel)
        try:
            during = await storm_on(stub, storm, server, sim, blob)
            containers = [f"container-{index}" for index in range(storm.concurrency)]
            images = [f"sha256:{index:064x}" for index in range(storm.concurrency)]
            name = f"{storm.mode}-k{storm.concurrency}-{time.time_ns()}-remove"
            with profiled(storm, name, {"obdsnap": server.process.pid}):
                remove_containers = await timed_removes(stub, containers)
                overlayfs = storm.mode == "overlayfs"
                remove_images = await timed_removes(stub, images) if overlayfs else 0
            if not storm.populate:
                await remove_all(stub)
        finally:
            channel.close()
    finally:
        status = server.stop()
        if status != 0:
            print(f"obdsnap exited with {status}; log in {workdir}", file=sys.stderr)
    return Result(
        mode=storm.mode,
        concurrency=storm.concurrency,
        round=round_number,
        storm_s=round(during.seconds, 3),
        latency=latency_ms([latency for latency, _ in during.outcomes]),
        errors=sum(1 for _, ok in during.outcomes if not ok),
        cpu_ms_per_device=during.cpu_ms_per_device,
        remove_containers_s=round(remove_containers, 3),
        remove_images_s=round(remove_images, 3),
        load=during.load,
    )


def summarize(results: Sequence[Result]) -> list[dict[str, Any]]:
    """Per (mode, K): medians over the rounds, the storm time with its spread."""
    keys = sorted({(result.mode, result.concurrency) for result in results})
    summary = []
    for mode, concurrency in keys:
        rounds = [r for r in results if (r.mode, r.concurrency) == (mode, concurrency)]
        cpu = [r.cpu_ms_per_device["total"] or 0.0 for r in rounds]
        own = [r.cpu_ms_per_device["obdsnap"] or 0.0 for r in rounds]
        summary.append(
            {
                "mode": mode,
                "concurrency": concurrency,
                "rounds": len(rounds),
                "storm_s": spread([r.storm_s for r in rounds]).as_dict(),
                "p50_ms": spread([r.latency["p50_ms"] for r in rounds]).median,
                "p99_ms": spread([r.latency["p99_ms"] for r in rounds]).median,
                "cpu_ms_per_device": spread(cpu).median,
                "obdsnap_cpu_ms_per_device": spread(own).median,
                "remove_containers_s": spread([r.remove_containers_s for r in rounds]).median,
                "remove_images_s": spread([r.remove_images_s for r in rounds]).median,
                "errors": sum(r.errors for r in rounds),
            }
        )
    return summary


def target_checks(summary: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each target a run can speak to: the figure, the target, whether it is met."""
    checks = []

    def check(name: str, value: float, target: float) -> None:
        checks.append({"name": name, "value": value, "target": target, "met": value <= target})

    for row in summary:
        mode, k = row["mode"], row["concurrency"]
        if (mode, k) in TARGETS:
            check(f"storm {mode} K={k} s", row["storm_s"]["median"], TARGETS[mode, k])
        if k == 1:
            check(f"one container start {mode} ms", row["p50_ms"], ONE_START_MS[mode])
        if k >= 16:
            cpu = row["obdsnap_cpu_ms_per_device"]
            check(f"obdsnap CPU per attach {mode} K={k} ms", cpu, CPU_PER_ATTACH_MS)
        if k == 300:
            removal = row["remove_containers_s"] + row["remove_images_s"]
            check(f"Remove of 300 {mode} s", removal, REMOVE_300_S)
    return checks


def charts(out: Path, summary: Sequence[dict[str, Any]]) -> list[str]:
    modes = sorted({row["mode"] for row in summary})
    ks = sorted({row["concurrency"] for row in summary})

    def series(figure: Callable[[dict[str, Any]], float]) -> dict[str, list[float]]:
        by = {(row["mode"], row["concurrency"]): figure(row) for row in summary}
        return {mode: [by.get((mode, k), 0.0) for k in ks] for mode in modes}

    groups = [f"K={k}" for k in ks]
    own = series(lambda row: float(row["obdsnap_cpu_ms_per_device"]))
    total = series(lambda row: float(row["cpu_ms_per_device"]))
    bar_chart(
        out / "storm.png",
        "container-start storm: first to last",
        "seconds",
        groups,
        series(lambda row: float(row["storm_s"]["median"])),
    )
    bar_chart(
        out / "storm-cpu.png",
        "CPU per device: obdsnap's own, and with the simulator and tools",
        "ms",
        groups,
        {
            **{f"{mode} obdsnap": values for mode, values in own.items()},
            **{f"{mode} total": values for mode, values in total.items()},
        },
        {"target": CPU_PER_ATTACH_MS},
    )
    return [str(out / "storm.png"), str(out / "storm-cpu.png")]


async def warm_up(
    sim: RunningSimulator, blob: Blob, work: Path, storm_modes: set[str], open_latency: float
) -> None:
    """One container per mode, not measured: the simulator's first device pays once what a
    node paid at boot (tcm_loop, the first loop device, the blob's first digest), about 8 ms
    that would otherwise land on the first storm measured (at K=1, its whole p50)."""
    for mode in sorted(storm_modes):
        await run_one(sim, blob, work, Storm(mode, 1, open_latency), 0)


async def run_storms(storms: Sequence[Storm], rounds: int, open_latency: float) -> list[Result]:
    results: list[Result] = []
    with (
        scratch_dir() as work,
        running_simulator(work / "sim", open_latency=open_latency, log_level="WARNING") as sim,
    ):
        blob = build_blob(sim, work)
        await warm_up(sim, blob, work, {storm.mode for storm in storms}, open_latency)
        for storm in storms:
            for round_number in range(1, rounds + 1):
                result = await run_one(sim, blob, work, storm, round_number)
                print(json.dumps(asdict(result)), file=sys.stderr)
                results.append(result)
        leftover = sim.loop_devices()
        if leftover:
            print(f"loop devices left: {leftover}", file=sys.stderr)
    return results


def finish(out: Path, name: str, document: dict[str, Any], results: Sequence[Result]) -> int:
    """Publishes the document with every run; the exit status: 1 if a container failed."""
    publish(out, name, {**document, "runs": [asdict(result) for result in results]})
    return 0 if all(result.errors == 0 for result in results) else 1


def k_values(text: str) -> list[int]:
    return [int(value) for value in text.split(",")]


def add_storm_arguments(
    parser: argparse.ArgumentParser, concurrency: str, mode: str
) -> argparse.ArgumentParser:
    """The options of a storm, shared with usage_load.py."""
    parser.add_argument(
        "--concurrency", type=k_values, default=k_values(concurrency), help=f"K ({concurrency})"
    )
    parser.add_argument("--mode", choices=["overlayfs", "dir", "both"], default=mode)
    parser.add_argument(
        "--open-latency", type=float, default=0.1, help="seconds an image open takes (0.1)"
    )
    parser.add_argument("--out", type=Path, default=Path(".build/bench"), help="results dir")
    return parser


def modes(argument: str) -> list[str]:
    return ["overlayfs", "dir"] if argument == "both" else [argument]


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    add_storm_arguments(parser, "1,16,100,300", "both")
    parser.add_argument("--rounds", type=int, default=1, help="measurements per K (1)")
    parser.add_argument(
        "--profile", type=Path, help="py-spy's stacks of obdsnap and the simulator (raw) go here"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    if cannot_run("storm"):
        return 2
    storms = [
        Storm(mode, k, arguments.open_latency, profile=arguments.profile)
        for mode in modes(arguments.mode)
        for k in arguments.concurrency
    ]
    results = asyncio.run(run_storms(storms, arguments.rounds, arguments.open_latency))
    summary = summarize(results)
    document = {
        "open_latency_s": arguments.open_latency,
        "summary": summary,
        "targets": target_checks(summary),
        "charts": charts(arguments.out, summary),
    }
    return finish(arguments.out, "storm", document, results)


if __name__ == "__main__":
    sys.exit(main())
