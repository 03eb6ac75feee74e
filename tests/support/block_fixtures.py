"""Fixtures of the block-device tests: test images, obdsnap servers on the simulator, and a
writable rootfs on a device.

A fresh obdsnap server (own root, so snapshot IDs start at 1) per test, all on
the module's :func:`support.simulator.simulator`. Roots live under a short
``/tmp/obd-*`` directory: the kernel (and the simulator) cut ``dev_config`` at
255 bytes.

After each test every snapshot is removed and the server stopped; then no
device, mount or loop device may be left (a test marked xfail is exempt: it
shows a bug, and its leftovers are cleaned up without a verdict).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from obdsnap.genproto.containerd.types import Mount
from obdsnap.labels import WRITABLE
from support.block import Image, Obd, build_image, copy_blobs
from support.server_process import ServerProcess, short_tmpdir
from support.simulator import MISSING, RunningSimulator, force_clean, settings_on

# The three-layer test image: whiteouts in layer 2, an overwrite in layer 3.
LAYER_FILES: tuple[dict[str, str], ...] = (
    {
        "etc/os-release": "layer1\n",
        "bin/hello": "hello from layer 1\n",
        "data/keep": "kept\n",
        "data/gone": "whited out by layer 2\n",
        "opq/old": "hidden by the opaque dir of layer 2\n",
    },
    {
        "two.txt": "layer 2\n",
        "data/.wh.gone": "",
        "opq/.wh..wh..opq": "",
        "opq/new": "layer 2 opaque dir\n",
    },
    {"three.txt": "layer 3\n", "etc/os-release": "layer3\n"},
)
DATA = {"file": "data\n"}


@dataclass(frozen=True)
class Images:
    three: Image  # three LSMT layers from docker.io
    zfile: Image  # one ZFile layer from a registry with a port
    single: Image  # one layer, from another repository


@pytest.fixture(scope="session")
def images() -> Iterator[Images]:
    if MISSING is not None:
        pytest.skip(MISSING)
    work = short_tmpdir()
    try:
        store = work / "store"
        yield Images(
            three=build_image(store, work / "three", LAYER_FILES, "docker.io/library/obdtest:v1"),
            zfile=build_image(
                store,
                work / "zfile",
                [{"z.txt": "zfile layer\n"}],
                "registry.example.com:5000/team/zimg:v2",
                zfile=True,
            ),
            single=build_image(
                store, work / "single", [{"single.txt": "single\n"}], "quay.io/org/single:1"
            ),
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


StartObd = Callable[..., Awaitable[Obd]]


@pytest_asyncio.fixture
async def start_obd(
    simulator: RunningSimulator, images: Images, request: pytest.FixtureRequest
) -> AsyncIterator[StartObd]:
    """Starts obdsnap servers on the module's simulator: ``await start_obd(rwMode="dir")``.

    Keyword arguments are boot config keys; the simulator's paths are filled in.
    The simulator's registry holds every test image.
    """
    for image in (images.three, images.zfile, images.single):
        copy_blobs(image, simulator.blob_store)
    started: list[Obd] = []
    workdirs: list[Path] = []
    simulator.control.clear()

    async def start(**settings: object) -> Obd:
        workdir = short_tmpdir()
        workdirs.append(workdir)
        config = settings_on(simulator, **{"rwMode": "overlayfs", **settings})
        obd = Obd(simulator, ServerProcess.with_config(workdir, config), config)
        started.append(obd)
        return await obd.start()

    try:
        yield start
    finally:
        simulator.control.clear()
        problems = await _tear_down(started)
        leftovers = [item for obd in started for item in obd.leftovers()]
        force_clean(simulator, workdirs)
        for workdir in workdirs:
            shutil.rmtree(workdir, ignore_errors=True)
        if request.node.get_closest_marker("xfail") is None:
            assert not problems, "\n".join(problems)
            assert not leftovers, f"left behind: {leftovers}"


@pytest_asyncio.fixture
async def obd(start_obd: StartObd) -> Obd:
    """obdsnap with the default boot config (``overlayfs``) on the module's simulator."""
    return await start_obd()


async def _tear_down(started: list[Obd]) -> list[str]:
    problems: list[str] = []
    for obd in started:
        for target in reversed(obd.real_mounts):
            with contextlib.suppress(AssertionError):
                obd.umount_for_real(target)
        if not obd.server.running():
            continue
        try:
            await obd.remove_all()
        except Exception as exc:
            problems.append(f"removing the snapshots failed: {exc}")
        status = await obd.stop()
        if status != 0:
            problems.append(f"obdsnap exited with {status}:\n{obd.server.log()}")
    return problems


# ---------------------------------------------------------------------- a writable rootfs


@dataclass(frozen=True)
class Rootfs:
    """A writable snapshot on its own device (``dir`` or ``dev`` mode), just prepared."""

    obd: Obd
    key: str
    mounts: list[Mount]
    id: int

    @property
    def mountpoint(self) -> Path:
        """Where obdsnap mounted the device (``dir`` mode)."""
        return self.obd.mountpoint(self.id)

    def assert_holds(self, files: Mapping[str, str] = DATA) -> None:
        """Its mounted device holds ``files`` (``dir`` mode)."""
        for name, content in files.items():
            assert (self.mountpoint / name).read_text() == content, name

    async def assert_mounts_and_commits(
        self, labels: Mapping[str, str] | None = None, files: Mapping[str, str] = DATA
    ) -> None:
        """Mounts answers as Prepare did, with ``files`` on the device; the rootfs then commits
        (with ``labels``) as ``layer``, and a child of it reads ``files``."""
        assert await self.obd.mounts(self.key) == self.mounts
        self.assert_holds(files)
        await self.obd.commit("layer", self.key, labels)
        child = await self.obd.prepare("child", "layer", {WRITABLE: "dir"})
        for name, content in files.items():
            assert (Path(child[0].source) / name).read_text() == content, name

    def write(self, files: Mapping[str, str]) -> None:
        """Write ``files`` as a container would, synced to the device. In ``dev`` mode the
        device is mounted for it (as a VM runtime would) and unmounted again."""
        if not files:
            return
        if self.mounts[0].type == "bind":
            write_synced(self.mountpoint, files)
            return
        target = self.obd.server.workdir / f"{self.key}-mounted"
        self.obd.mount_for_real(self.mounts[0], target)
        try:
            write_synced(target, files)
        finally:
            self.obd.umount_for_real(target)


WritableRootfs = Callable[..., Awaitable[Rootfs]]


@pytest_asyncio.fixture
async def writable_rootfs(start_obd: StartObd) -> WritableRootfs:
    """``await writable_rootfs()``: obdsnap in ``dir`` mode, a rootfs ``rootfs`` prepared on
    its own device, and ``file`` written into it. Keywords: ``mode``, ``key``, ``files``, and
    boot config keys for the server."""

    async def make(
        *,
        mode: str = "dir",
        key: str = "rootfs",
        files: Mapping[str, str] = DATA,
        **settings: object,
    ) -> Rootfs:
        obd = await start_obd(rwMode=mode, **settings)
        mounts = await obd.prepare(key)
        rootfs = Rootfs(obd, key, mounts, obd.own_id(mounts))
        rootfs.write(files)
        return rootfs

    return make


def write_synced(directory: Path, files: Mapping[str, str]) -> None:
    """Write ``files`` under ``directory`` and fsync each: on a device, a crash keeps them."""
    for name, content in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w") as file:
            file.write(content)
            file.flush()
            os.fsync(file.fileno())
