"""`obdsnap containerd-config` as containerd 1.6 reads it: CRI on, the proxy snapshotter loaded.

The printed text goes, as it is, at the end of a private containerd's config
whose CRI plugin is enabled (its CNI dirs private, nothing that needs the
network). containerd must load the CRI plugin and the proxy snapshotter, export
the address (and, from containerd 1.7 on, the root) that were printed, and run a
container through the snapshotter under the printed name.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.processes import run
from support.server_process import ServerProcess

from . import ociimage
from .containerd import DISABLED_PLUGINS, PrivateContainerd, run_command
from .ociimage import ImageInfo

pytestmark = [pytest.mark.root, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]
CRI_PLUGIN = "io.containerd.grpc.v1.cri"
SNAPSHOTTER_PLUGIN_TYPE = "io.containerd.snapshotter.v1"
# Dots and a dash: the printed TOML must quote the name as one key.
SNAPSHOTTER_NAME = "obd.snap-e2e"


def printed_config(server: ServerProcess) -> str:
    command = [sys.executable, "-m", "obdsnap", "containerd-config", "--config"]
    return run(*command, server.config_path, "--name", SNAPSHOTTER_NAME, cwd=REPO_ROOT).stdout


def cri_private_dirs(workdir: Path) -> str:
    """The CRI settings a private containerd needs: CNI dirs of its own, a local stream server."""
    return (
        f'\n[plugins."{CRI_PLUGIN}"]\n'
        '  stream_server_address = "127.0.0.1"\n'
        '  stream_server_port = "0"\n'
        f'[plugins."{CRI_PLUGIN}".cni]\n'
        f'  bin_dir = "{workdir / "cni-bin"}"\n'
        f'  conf_dir = "{workdir / "cni-conf"}"\n\n'
    )


def containerd_version() -> tuple[int, int]:
    output = run_command(["containerd", "--version"], timeout=30).stdout
    found = re.search(r" v?(\d+)\.(\d+)\.", output)
    assert found, output
    return int(found.group(1)), int(found.group(2))


@pytest.fixture
def cri_containerd(
    snapshotter_server: ServerProcess, tmp_path: Path
) -> Iterator[PrivateContainerd]:
    containerd = PrivateContainerd(
        tmp_path / "logs",
        {},
        disabled_plugins=[plugin for plugin in DISABLED_PLUGINS if plugin != CRI_PLUGIN],
    )
    containerd.extra_config = cri_private_dirs(containerd.workdir) + printed_config(
        snapshotter_server
    )
    with containerd.running():
        yield containerd


def test_the_printed_config_loads_cri_and_the_snapshotter(
    image_factory: Callable[[int], ImageInfo],
    snapshotter_server: ServerProcess,
    cri_containerd: PrivateContainerd,
) -> None:
    containerd, server = cri_containerd, snapshotter_server
    config = containerd.config_path.read_text()
    assert f'[proxy_plugins."{SNAPSHOTTER_NAME}"]' in config
    assert "disable_snapshot_annotations = false" in config
    assert containerd.plugin_status("io.containerd.grpc.v1", "cri") == "ok", containerd.log_tail()
    assert containerd.plugin_status(SNAPSHOTTER_PLUGIN_TYPE, SNAPSHOTTER_NAME) == "ok"
    # The CRI plugin logs the config it started with: the printed table reached it.
    started_with = [
        line
        for line in containerd.log_path.read_text().splitlines()
        if "Start cri plugin with config" in line
    ]
    assert started_with, containerd.log_tail()
    settings = re.findall(
        r"[{ ](Snapshotter|DisableSnapshotAnnotations):([^ }]*)", started_with[-1]
    )
    assert ("Snapshotter", SNAPSHOTTER_NAME) in settings
    assert [value for name, value in settings if name == "DisableSnapshotAnnotations"] == ["false"]
    exports = containerd.plugin_exports(SNAPSHOTTER_PLUGIN_TYPE, SNAPSHOTTER_NAME)
    assert exports.get("address") == str(server.address)
    if containerd_version() >= (1, 7):
        assert exports.get("root") == str(server.root)
    else:  # containerd 1.6 has no exports for proxy plugins: the key is read and ignored
        assert "root" not in exports

    image = image_factory(3)
    containerd.import_image(image.archive, SNAPSHOTTER_NAME)
    result = containerd.run_container(
        image.reference,
        "through-printed-config",
        ["/bin/cat", f"/{ociimage.TOP_FILE}"],
        snapshotter=SNAPSHOTTER_NAME,
    )
    assert result.stdout.encode() == ociimage.TOP_CONTENT, result.stderr
    containerd.remove_container("through-printed-config")
    containerd.remove_image(image.reference)
    assert server.running(), "the server died during the test"
