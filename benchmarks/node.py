"""A node on the TCMU simulator: obdsnap serving on it, overlaybd images pulled into it.

The simulator (tcmusim) stands in for configfs/TCMU and overlaybd-tcmu, with
real loop devices underneath; an image open takes its ``open_latency``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from grpclib import GRPCError
from grpclib.const import Status

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))  # this checkout's obdsnap and tcmusim, wherever we are run from

from obdsnap.genproto.containerd.services.snapshots import v1 as api  # noqa: E402
from tcmusim.testing import RunningSimulator, missing_requirements  # noqa: E402

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
        self.root = workdir / "root"
        self.address = workdir / "obdsnap.sock"
        config = {
            "root": str(self.root),
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

    async def wait_listening(self, within: float = 60.0) -> None:
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


async def pull_images(
    stub: api.SnapshotsStub, blob: Blob, count: int, image_ref: str = IMAGE_REF
) -> list[str]:
    """``count`` remote overlaybd images of one layer each, pulled as containerd's unpacker
    does: a Stat of the layer (NOT_FOUND), then its Prepare (ALREADY_EXISTS: it is remote)."""
    chain_ids = []
    for index in range(count):
        chain_id = f"sha256:{index:064x}"
        try:
            await stub.stat(api.StatSnapshotRequest(key=chain_id))
        except GRPCError as exc:
            if exc.status != Status.NOT_FOUND:
                raise
        labels = {
            SNAPSHOT_REF: chain_id,
            BLOB_DIGEST: blob.digest,
            BLOB_SIZE: str(blob.size),
            IMAGE_REF_LABEL: image_ref,
        }
        request = api.PrepareSnapshotRequest(key=f"extract-{index} {chain_id}", labels=labels)
        try:
            await stub.prepare(request)
        except GRPCError as exc:
            if exc.status != Status.ALREADY_EXISTS:
                raise
        else:
            raise RuntimeError("a remote layer Prepare did not answer ALREADY_EXISTS")
        chain_ids.append(chain_id)
    return chain_ids


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


SCRATCH_BYTES = 16 << 30  # a sparse image: only what is written takes room


@contextlib.contextmanager
def scratch_dir() -> Iterator[Path]:
    """A fresh directory for one benchmark, by default on its own journaled ext4.

    A node keeps containerd's root on a journaled file system, and so do these
    benchmarks (as root; ``BENCH_SCRATCH=tmp`` takes a plain directory in /tmp). It
    matters: ext4 without a journal, the root file system of some VM images, passes
    over every inode freed in the last 30 s when it allocates one
    (``recently_deleted``), so a storm that follows the Remove of hundreds of
    snapshots spends most of its CPU in the kernel's inode allocator, more with each
    round. A fresh file system also keeps one run's deletes out of the next one's.
    """
    # Short: the kernel (and the simulator) cut a device's dev_config at 255 bytes.
    path = Path(tempfile.mkdtemp(prefix="obdb-", dir="/tmp"))
    image = path.with_suffix(".img")
    mounted = os.geteuid() == 0 and os.environ.get("BENCH_SCRATCH", "ext4") == "ext4"
    try:
        if mounted:
            _mount_scratch_ext4(image, path)
        yield path
    finally:
        if mounted:
            subprocess.run(["umount", "--lazy", str(path)], check=False)
        image.unlink(missing_ok=True)
        shutil.rmtree(path, ignore_errors=True)


def _mount_scratch_ext4(image: Path, mountpoint: Path) -> None:
    with image.open("wb") as f:
        f.truncate(SCRATCH_BYTES)
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", str(image)],
        check=True,
    )
    subprocess.run(["mount", "-o", "loop", str(image), str(mountpoint)], check=True)


def cannot_run(tool: str) -> bool:
    """Whether the simulator cannot run here (not root, no /dev/fuse...), saying why."""
    missing = missing_requirements()
    if missing is not None:
        print(f"{tool}: {missing}", file=sys.stderr)
    return missing is not None
