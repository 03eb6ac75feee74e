"""Fixtures: a fresh snapshotter server and a private containerd that uses it.

For the overlaybd flows: the block image, obdsnap on the simulator behind its
own containerd (``start_stack``), a private registry and containerd's unpacker.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.gobuild import build_go_program
from support.server_process import ServerProcess, short_tmpdir
from support.simulator import settings_on

from tcmusim.testing import RunningSimulator

from .blockimage import BlockImage, build_block_image
from .blockstack import PLUGIN, Stack, StartStack
from .containerd import PROXY_PLUGIN_NAME, PrivateContainerd, unmount_all_under
from .ociimage import ImageInfo, build_image, find_static_busybox
from .registry import REGISTRY_BIN, LocalRegistry

UNPACK_PULL_SOURCE = Path(__file__).with_name("unpackpull")
REQUIRED_BINARIES = ("containerd", "ctr", "runc", "containerd-shim-runc-v2")


def missing_requirements() -> list[str]:
    missing = []
    if os.geteuid() != 0:
        missing.append("root (containerd, runc and mounts)")
    binaries = [name for name in REQUIRED_BINARIES if shutil.which(name) is None]
    if binaries:
        missing.append(", ".join(binaries) + " (apt-get install containerd runc)")
    if find_static_busybox() is None:
        missing.append("a static /bin/busybox (apt-get install busybox-static)")
    with open("/proc/filesystems") as filesystems:
        if "overlay" not in filesystems.read().split():
            missing.append("overlayfs in the kernel (modprobe overlay)")
    return missing


@pytest.fixture(scope="session")
def e2e_host() -> None:
    missing = missing_requirements()
    if missing:
        pytest.skip("containerd e2e needs " + "; ".join(missing))


@pytest.fixture(scope="session")
def image_factory(
    e2e_host: None, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[int], ImageInfo]:
    """Builds (once per layer count) the test image with that many layers."""
    directory = tmp_path_factory.mktemp("images")
    built: dict[int, ImageInfo] = {}

    def image_with_layers(layer_count: int) -> ImageInfo:
        if layer_count not in built:
            built[layer_count] = build_image(
                directory / f"e2e-{layer_count}.tar",
                layer_count,
                reference=f"docker.io/library/obdsnap-e2e:{layer_count}-layers",
            )
        return built[layer_count]

    return image_with_layers


@pytest.fixture
def snapshotter_server(e2e_host: None) -> Iterator[ServerProcess]:
    """A server from OBDSNAP_SERVER_CMD on a fresh root and socket.

    Root and socket share a short /tmp dir (socket paths are limited, and
    overlay mount options get long with deep roots).
    """
    workdir = Path(tempfile.mkdtemp(prefix="obdsnap-", dir="/tmp"))
    server = ServerProcess(workdir)
    try:
        server.start()
        yield server
        assert server.running(), f"obdsnap died during the test:\n{server.log()}"
    finally:
        try:
            status = server.stop()
            assert status == 0, f"obdsnap exited with {status}:\n{server.log()}"
        finally:
            if unmount_all_under(workdir):
                warnings.warn(f"mounts remain under {workdir}; not removed", stacklevel=1)
            else:
                shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def private_containerd(
    snapshotter_server: ServerProcess, tmp_path: Path
) -> Iterator[PrivateContainerd]:
    """containerd with [proxy_plugins.obdsnap] on the server's socket."""
    containerd = PrivateContainerd(
        tmp_path / "logs", {PROXY_PLUGIN_NAME: snapshotter_server.address}
    )
    with containerd.running():
        yield containerd


@pytest.fixture(scope="module")
def block_image(e2e_host: None, simulator: RunningSimulator) -> Iterator[BlockImage]:
    """The test image; its blobs go straight into the simulator's blob store (its registry)."""
    busybox = find_static_busybox()
    assert busybox is not None  # e2e_host checked it
    work = short_tmpdir()
    try:
        yield build_block_image(work, simulator.blob_store, busybox)
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def start_stack(
    e2e_host: None, simulator: RunningSimulator, tmp_path: Path
) -> Iterator[StartStack]:
    """``start_stack(rwMode="dir")``: obdsnap (boot config keys given) behind a containerd."""
    stacks: list[Stack] = []

    def start(**settings: object) -> Stack:
        workdir = short_tmpdir()
        config = settings_on(simulator, **{"rwMode": "overlayfs", **settings})
        server = ServerProcess.with_config(workdir, config)
        containerd = PrivateContainerd(
            tmp_path / f"containerd-{len(stacks)}", {PLUGIN: server.address}
        )
        stack = Stack(simulator, workdir, server, containerd)
        stacks.append(stack)
        server.start()
        containerd.start()
        return stack

    try:
        yield start
    finally:
        simulator.control.clear()
        problems = [problem for stack in stacks for problem in stack.tear_down()]
        assert not problems, "\n".join(problems)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[LocalRegistry]:
    if not os.access(REGISTRY_BIN, os.X_OK):
        pytest.skip(f"the remote flow needs {REGISTRY_BIN} (apt-get install docker-registry)")
    workdir = tmp_path / "registry"
    workdir.mkdir()
    with LocalRegistry(workdir) as running:
        yield running


@pytest.fixture(scope="session")
def unpack_pull() -> Path:
    return build_go_program(UNPACK_PULL_SOURCE, "unpackpull")
