#!/usr/bin/env python3
"""Mounts and Remove on a node with thousands of mounts: at 50 mounts, then at 5,000.

Runs itself in a private mount namespace (``unshare -m``), so the mounts it
makes are seen by nobody else and go when it ends. There it starts the TCMU
simulator and obdsnap, prepares a container on an overlaybd image (which
attaches the image's device), then for each mount count N: fills the
namespace's mount table up to N with tmpfs mounts and times, as a client sees
them, Mounts of the container (which checks that the image's device is still
mounted) and Prepare + Remove of another container (whose directory removal
checks that nothing is mounted inside), and asks the same two questions of
obdsnap.mountinfo in its own process, free of gRPC's noise. Prints JSON: per N
the median and p90 of each RPC in ms, the median of each question in µs, and
the difference between the last N and the first.

    python3 benchmarks/mounts_scale.py [--mounts 50,5000] [--samples 200]

Needs root, unshare(1), /dev/fuse, loop devices and mfusepy (see tcmusim.testing).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import ctypes.util
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # this checkout's obdsnap and tcmusim
sys.path.insert(0, str(HERE))

from grpclib.client import Channel  # noqa: E402
from node import Server, build_blob, pull_images, remove_all, scratch_dir  # noqa: E402
from report import percentile  # noqa: E402

from obdsnap.genproto.containerd.services.snapshots import v1 as api  # noqa: E402
from obdsnap.mountinfo import device_mounted_on, mounts_under  # noqa: E402
from tcmusim.testing import missing_requirements, running_simulator  # noqa: E402

IN_NAMESPACE = "OBDSNAP_MOUNTS_SCALE_NAMESPACE"
MOUNTINFO = Path("/proc/self/mountinfo")
MNT_DETACH = 2

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


@dataclass(frozen=True)
class Row:
    mounts: int
    mounts_p50_ms: float
    mounts_p90_ms: float
    remove_p50_ms: float
    remove_p90_ms: float
    # The same questions asked in this process, without gRPC's noise: median µs per call.
    device_mounted_us: float
    mounts_under_us: float


class Filler:
    """tmpfs mounts under one directory, to make the mount table as long as wanted."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._points: list[Path] = []

    def grow_to(self, total: int) -> None:
        """Mount tmpfs until the namespace has ``total`` mounts (never unmounts)."""
        missing = total - len(MOUNTINFO.read_text().splitlines())
        for _ in range(max(0, missing)):
            point = self._directory / str(len(self._points))
            point.mkdir(parents=True)
            if _libc.mount(b"none", os.fsencode(point), b"tmpfs", 0, None) != 0:
                raise OSError(ctypes.get_errno(), f"mount tmpfs on {point}")
            self._points.append(point)

    def clear(self) -> None:
        for point in reversed(self._points):
            _libc.umount2(os.fsencode(point), MNT_DETACH)
        self._points.clear()


async def timed(samples: int, call: Callable[[int], Awaitable[object]]) -> list[float]:
    seconds = []
    for index in range(samples):
        started = time.perf_counter()
        await call(index)
        seconds.append(time.perf_counter() - started)
    return seconds


async def measure(
    stub: api.SnapshotsStub, root: Path, image: str, mounts: int, samples: int
) -> Row:
    mounts_s = await timed(samples, lambda _: stub.mounts(api.MountsRequest(key="container")))

    async def prepare_and_remove(index: int) -> None:
        key = f"short-lived-{mounts}-{index}"
        await stub.prepare(api.PrepareSnapshotRequest(key=key, parent=image))
        started = time.perf_counter()
        await stub.remove(api.RemoveSnapshotRequest(key=key))
        removes.append(time.perf_counter() - started)

    removes: list[float] = []
    await timed(samples, prepare_and_remove)
    return Row(mounts, *_ms(mounts_s), *_ms(removes), *in_process(root, samples))


def in_process(root: Path, samples: int) -> tuple[float, float]:
    """Median µs of "is the image's device mounted on its mountpoint" and of "what is
    mounted in a snapshot's directory", asked of obdsnap.mountinfo here."""
    [mark] = root.glob("snapshots/*/block/backstore_mark")
    device, mountpoint = Path(mark.read_text()), mark.parent / "mountpoint"
    assert device_mounted_on(device, mountpoint)
    return (
        _median_us(samples, lambda: device_mounted_on(device, mountpoint)),
        _median_us(samples, lambda: mounts_under(mark.parent.parent)),
    )


def _median_us(samples: int, call: Callable[[], object]) -> float:
    seconds = []
    for _ in range(samples):
        started = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - started)
    return round(statistics.median(seconds) * 1e6, 1)


def _ms(seconds: Sequence[float]) -> tuple[float, float]:
    return round(statistics.median(seconds) * 1000, 3), round(percentile(seconds, 0.9) * 1000, 3)


async def main_async(arguments: argparse.Namespace) -> list[Row]:
    with scratch_dir() as work, running_simulator(work / "sim", open_latency=0.01) as sim:
        blob = build_blob(sim, work)
        (work / "obdsnap").mkdir()
        server = Server(work / "obdsnap", sim, "overlayfs")
        filler = Filler(work / "filler")
        try:
            await server.wait_listening()
            channel = Channel(path=str(server.address))
            try:
                stub = api.SnapshotsStub(channel)
                [image] = await pull_images(stub, blob, 1)
                await stub.prepare(api.PrepareSnapshotRequest(key="container", parent=image))
                rows, samples = [], arguments.samples
                for total in arguments.mounts:
                    filler.grow_to(total)
                    row = await measure(stub, server.workdir / "root", image, total, samples)
                    rows.append(row)
                    print(json.dumps(asdict(rows[-1])), file=sys.stderr)
                await remove_all(stub)
            finally:
                channel.close()
        finally:
            server.stop()
            filler.clear()
    return rows


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--mounts",
        type=lambda text: [int(value) for value in text.split(",")],
        default=[50, 5000],
        help="comma-separated mount counts, ascending (default 50,5000)",
    )
    parser.add_argument("--samples", type=int, default=200, help="calls timed per count (200)")
    return parser.parse_args(argv)


def in_own_namespace(argv: Sequence[str]) -> int:
    """This script again, in a mount namespace of its own whose mounts propagate nowhere."""
    command = ["unshare", "--mount", "--propagation", "private", sys.executable, __file__]
    env = {**os.environ, IN_NAMESPACE: "1"}
    return subprocess.run([*command, *argv], env=env, check=False).returncode


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    arguments = parse_arguments(argv)
    if os.environ.get(IN_NAMESPACE) != "1":
        return in_own_namespace(argv)
    missing = missing_requirements()
    if missing is not None:
        print(f"mounts_scale: {missing}", file=sys.stderr)
        return 2
    rows = asyncio.run(main_async(arguments))
    first, last = rows[0], rows[-1]
    report = {
        "rows": [asdict(row) for row in rows],
        "mounts_p50_delta_ms": round(last.mounts_p50_ms - first.mounts_p50_ms, 3),
        "remove_p50_delta_ms": round(last.remove_p50_ms - first.remove_p50_ms, 3),
        "device_mounted_delta_us": round(last.device_mounted_us - first.device_mounted_us, 1),
        "mounts_under_delta_us": round(last.mounts_under_us - first.mounts_under_us, 1),
    }
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
