"""Fixtures of the block-device tests: the TCMU simulator, test images, obdsnap servers.

One simulator per test module (faults are set per device, or by modules of
their own); a fresh obdsnap server (own root, so snapshot IDs start at 1) per
test, all on the module's simulator. Roots live under a short ``/tmp/obd-*``
directory: the kernel (and the simulator) cut ``dev_config`` at 255 bytes.

After each test every snapshot is removed and the server stopped; then no
device, mount or loop device may be left (a test marked xfail is exempt: it
shows a bug, and its leftovers are cleaned up without a verdict).
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from support.block import Image, Obd, build_image, copy_blobs, force_clean
from support.server_process import ServerProcess, short_tmpdir

from tcmusim.testing import RunningSimulator, missing_requirements, running_simulator

MISSING = missing_requirements()

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


@pytest.fixture(scope="module")
def sim(images: Images) -> Iterator[RunningSimulator]:
    """One simulator per test module, its registry holding every test image."""
    if MISSING is not None:
        pytest.skip(MISSING)
    work = short_tmpdir()
    try:
        with running_simulator(work / "sim") as simulator:
            for image in (images.three, images.zfile, images.single):
                copy_blobs(image, simulator.blob_store)
            yield simulator
            simulator.control.clear()
            status = simulator.stop()
            assert status == 0, f"simulator exited with {status}:\n{simulator.log()}"
            assert simulator.loop_devices() == [], "loop devices left after the simulator stopped"
    finally:
        shutil.rmtree(work, ignore_errors=True)


StartObd = Callable[..., Awaitable[Obd]]


@pytest_asyncio.fixture
async def start_obd(
    sim: RunningSimulator, request: pytest.FixtureRequest
) -> AsyncIterator[StartObd]:
    """Starts obdsnap servers on the module's simulator: ``await start_obd(rwMode="dir")``.

    Keyword arguments are boot config keys; the simulator's paths are filled in.
    """
    started: list[Obd] = []
    workdirs: list[Path] = []
    sim.control.clear()

    async def start(**settings: object) -> Obd:
        workdir = short_tmpdir()
        workdirs.append(workdir)
        config: dict[str, object] = {
            "rwMode": "overlayfs",
            "configfsRoot": str(sim.configfs),
            "sysfsRoot": str(sim.sysfs),
            "overlaybd_util_bin_dir": str(sim.tools_dir),
            **settings,
        }
        obd = Obd(sim, ServerProcess.with_config(workdir, config), config)
        started.append(obd)
        return await obd.start()

    try:
        yield start
    finally:
        sim.control.clear()
        problems = await _tear_down(started)
        leftovers = [item for obd in started for item in obd.leftovers()]
        force_clean(sim, workdirs)
        for workdir in workdirs:
            shutil.rmtree(workdir, ignore_errors=True)
        if request.node.get_closest_marker("xfail") is None:
            assert not problems, "\n".join(problems)
            assert not leftovers, f"left behind: {leftovers}"


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
