"""Fixtures: a fresh snapshotter server and a private containerd that uses it."""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.server_process import ServerProcess

from .containerd import PROXY_PLUGIN_NAME, PrivateContainerd, unmount_all_under
from .ociimage import ImageInfo, build_image, find_static_busybox

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
