#!/usr/bin/env python3
"""Container starts that attach block devices at once: K concurrent rootfs Prepares.

Starts the TCMU simulator (tcmusim) and obdsnap on it, then for each K runs K
Prepares at the same time, each of which attaches a device that takes
``--open-latency`` seconds to open (overlaybd fetching and opening an image):

- ``overlayfs`` mode: K different overlaybd images (remote layers of one blob),
  each container an overlay on its image's read-only device;
- ``dir`` mode: K containers with a fresh writable device each (overlaybd-create,
  mkfs, mount read-write).

Every K gets a fresh obdsnap root; afterwards everything is removed again (which
detaches the devices). Prints JSON: per K the wall time, per-Prepare p50/p99,
and ``serial_s`` = K x open latency, the least that attaching one device after
the other would take.

    python3 benchmarks/concurrent_start.py [--concurrency 1,16,100] [--open-latency 0.1]
        [--mode overlayfs|dir|both] [--rounds 1]

Needs root, /dev/fuse, loop devices and mfusepy (see tcmusim.testing).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from grpclib import GRPCError
from grpclib.client import Channel
from grpclib.const import Status

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))  # this checkout's obdsnap and tcmusim, wherever we are run from

from obdsnap.genproto.containerd.services.snapshots import v1 as api  # noqa: E402
from tcmusim.testing import (  # noqa: E402
    RunningSimulator,
    missing_requirements,
    running_simulator,
)

IMAGE_REF = "docker.io/library/bench:1"
SNAPSHOT_REF = "containerd.io/snapshot.ref"
BLOB_DIGEST = "containerd.io/snapshot/overlaybd/blob-digest"
BLOB_SIZE = "containerd.io/snapshot/overlaybd/blob-size"
IMAGE_REF_LABEL = "containerd.io/snapshot/image-ref"
WRITABLE = "containerd.io/snapshot/overlaybd.writable"


@dataclass(frozen=True)
class Blob:
    digest: str
    size: int


@dataclass(frozen=True)
class Result:
    mode: str
    concurrency: int
    round: int
    open_latency_s: float
    wall_s: float
    serial_s: float
    wall_over_serial: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    errors: int


class Server:
    """obdsnap serving on the simulator, from a config file, in its own process group."""

    def __init__(
        self,
        workdir: Path,
        sim: RunningSimulator,
        rw_mode: str,
        settings: dict[str, object] | None = None,
    ) -> None:
        self.workdir = workdir
        self.address = workdir / "obdsnap.sock"
        config = {
            "root": str(workdir / "root"),
            "address": str(self.address),
            "rwMode": rw_mode,
            "configfsRoot": str(sim.configfs),
            "sysfsRoot": str(sim.sysfs),
            "overlaybd_util_bin_dir": str(sim.tools_dir),
            "verbose": "warn",
            **(settings or {}),
        }
        config_path = workdir / "config.json"
        config_path.write_text(json.dumps(config))
        self._log = (workdir / "obdsnap.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "obdsnap", "serve", "--config", str(config_path)],
            cwd=REPO,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    async def wait_listening(self, within: float = 20.0) -> None:
        deadline = time.monotonic() + within
        while True:
            try:
                _, writer = await asyncio.open_unix_connection(str(self.address))
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"obdsnap did not start; see {self.workdir}") from None
                await asyncio.sleep(0.02)
            else:
                writer.close()
                await writer.wait_closed()
                return

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
        self._log.close()
        return self.process.wait()


def build_blob(sim: RunningSimulator, work: Path) -> Blob:
    """One small overlaybd layer in the simulator's registry."""
    layer = work / "layer"
    (layer / "etc").mkdir(parents=True)
    (layer / "etc/hostname").write_text("bench\n")
    done = subprocess.run(
        [sys.executable, "-m", "tcmusim", "mkimage", "--store", str(sim.blob_store), str(layer)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    entry = json.loads(done.stdout)["layers"][0]
    return Blob(str(entry["digest"]), int(entry["size"]))


async def make_images(stub: api.SnapshotsStub, blob: Blob, count: int) -> list[str]:
    """``count`` remote overlaybd images (one layer each), unpacked the way containerd does."""
    names = []
    for index in range(count):
        chain_id = f"sha256:{index:064x}"
        labels = {
            SNAPSHOT_REF: chain_id,
            BLOB_DIGEST: blob.digest,
            BLOB_SIZE: str(blob.size),
            IMAGE_REF_LABEL: IMAGE_REF,
        }
        request = api.PrepareSnapshotRequest(key=f"extract-{index} {chain_id}", labels=labels)
        try:
            await stub.prepare(request)
        except GRPCError as exc:
            if exc.status != Status.ALREADY_EXISTS:
                raise
        else:
            raise RuntimeError("a remote layer Prepare did not answer ALREADY_EXISTS")
        names.append(chain_id)
    return names


async def timed_prepare(
    stub: api.SnapshotsStub, key: str, parent: str, labels: dict[str, str]
) -> tuple[float, bool]:
    started = time.monotonic()
    try:
        await stub.prepare(api.PrepareSnapshotRequest(key=key, parent=parent, labels=labels))
    except GRPCError as exc:
        print(f"Prepare {key}: {exc.status.name}: {exc.message}", file=sys.stderr)
        return time.monotonic() - started, False
    return time.monotonic() - started, True


async def remove_all(stub: api.SnapshotsStub) -> None:
    for _ in range(10):
        infos = [
            info async for reply in stub.list(api.ListSnapshotsRequest()) for info in reply.info
        ]
        if not infos:
            return
        parents = {info.parent for info in infos}
        leaves = [info.name for info in infos if info.name not in parents]
        await asyncio.gather(*(stub.remove(api.RemoveSnapshotRequest(key=name)) for name in leaves))
    raise RuntimeError("could not remove every snapshot")


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


async def run_one(
    sim: RunningSimulator,
    blob: Blob,
    work: Path,
    mode: str,
    concurrency: int,
    round_number: int,
    open_latency: float,
) -> Result:
    workdir = Path(tempfile.mkdtemp(prefix=f"k{concurrency}-", dir=work))
    server = Server(workdir, sim, "overlayfs")
    try:
        await server.wait_listening()
        channel = Channel(path=str(server.address))
        stub = api.SnapshotsStub(channel)
        try:
            parents = [""] * concurrency
            labels: dict[str, str] = {WRITABLE: "dir"} if mode == "dir" else {}
            if mode == "overlayfs":
                parents = await make_images(stub, blob, concurrency)
            started = time.monotonic()
            outcomes = await asyncio.gather(
                *(
                    timed_prepare(stub, f"container-{index}", parent, labels)
                    for index, parent in enumerate(parents)
                )
            )
            wall = time.monotonic() - started
            await remove_all(stub)
        finally:
            channel.close()
    finally:
        status = server.stop()
        if status != 0:
            print(f"obdsnap exited with {status}; log in {workdir}", file=sys.stderr)
    latencies = [seconds for seconds, _ in outcomes]
    serial = concurrency * open_latency
    return Result(
        mode=mode,
        concurrency=concurrency,
        round=round_number,
        open_latency_s=open_latency,
        wall_s=round(wall, 3),
        serial_s=round(serial, 3),
        wall_over_serial=round(wall / serial, 3) if serial else 0.0,
        p50_ms=round(statistics.median(latencies) * 1000, 1),
        p99_ms=round(percentile(latencies, 0.99) * 1000, 1),
        max_ms=round(max(latencies) * 1000, 1),
        errors=sum(1 for _, ok in outcomes if not ok),
    )


@contextlib.contextmanager
def scratch_dir() -> Iterator[Path]:
    # Short: the kernel (and the simulator) cut a device's dev_config at 255 bytes.
    path = Path(tempfile.mkdtemp(prefix="obdb-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def main_async(arguments: argparse.Namespace) -> list[Result]:
    modes = ["overlayfs", "dir"] if arguments.mode == "both" else [arguments.mode]
    results: list[Result] = []
    with (
        scratch_dir() as work,
        running_simulator(work / "sim", open_latency=arguments.open_latency) as sim,
    ):
        blob = build_blob(sim, work)
        for mode in modes:
            for concurrency in arguments.concurrency:
                for round_number in range(1, arguments.rounds + 1):
                    result = await run_one(
                        sim, blob, work, mode, concurrency, round_number, arguments.open_latency
                    )
                    print(json.dumps(asdict(result)), file=sys.stderr)
                    results.append(result)
        leftover = sim.loop_devices()
        if leftover:
            print(f"loop devices left: {leftover}", file=sys.stderr)
    return results


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--concurrency",
        type=lambda text: [int(value) for value in text.split(",")],
        default=[1, 16, 100],
        help="comma-separated K values (default 1,16,100)",
    )
    parser.add_argument(
        "--open-latency", type=float, default=0.1, help="seconds an image open takes (0.1)"
    )
    parser.add_argument("--mode", choices=["overlayfs", "dir", "both"], default="both")
    parser.add_argument("--rounds", type=int, default=1, help="measurements per K (1)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    missing = missing_requirements()
    if missing is not None:
        print(f"concurrent_start: {missing}", file=sys.stderr)
        return 2
    results = asyncio.run(main_async(arguments))
    json.dump([asdict(result) for result in results], sys.stdout, indent=2)
    print()
    return 0 if all(result.errors == 0 for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
