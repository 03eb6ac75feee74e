"""A running container survives an obdsnap restart (SIGTERM or SIGKILL).

containerd keeps its [proxy_plugins.obdsnap] connection config and redials the
socket; obdsnap comes back on the same root and socket. The container's task
keeps running on its overlay rootfs, ``ctr task exec`` still reads the image and
what the container wrote, a new container starts, and removing everything leaves
obdsnap with no snapshots.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from support.server_process import ServerProcess

from . import ociimage
from .blockimage import TOP_FILE, BlockImage
from .blockstack import PLUGIN, StartStack, check_local_layers, check_overlay_on_device
from .containerd import PROXY_PLUGIN_NAME, CommandError, PrivateContainerd, list_snapshots_direct
from .ociimage import ImageInfo
from .test_containerd_e2e import assert_server_empty_after_gc, wait_until_ready

pytestmark = [pytest.mark.root, pytest.mark.slow]

LAYERS = 3
CONTAINER = "survivor"
WRITTEN_FILE = "/e2e-before-restart.txt"
WRITTEN_CONTENT = "written before the restart"
TOP_CONTENT = ociimage.TOP_CONTENT.decode().rstrip("\n")
SURVIVOR_SCRIPT = f"""
echo "{WRITTEN_CONTENT}" > {WRITTEN_FILE}
echo READY
exec sleep 600
"""
RESTART_TIMEOUT = 20.0
REDIAL_TIMEOUT = 30.0


def restart_server(server: ServerProcess, signum: int) -> None:
    """Stops obdsnap with signum, starts it again on the same root and socket."""
    if signum == signal.SIGKILL:
        server.kill()
    else:
        server.signal(signum)
        status = server.stop()
        assert status == 0, f"obdsnap exited with {status} on {signum}:\n{server.log()}"
    assert not server.running()
    # After SIGKILL the stale socket file remains: start() then returns at once,
    # so wait until the new process really answers.
    server.start()
    deadline = time.monotonic() + RESTART_TIMEOUT
    while True:
        assert server.running(), f"obdsnap exited after the restart:\n{server.log()}"
        try:
            list_snapshots_direct(server.address, PROXY_PLUGIN_NAME, timeout=5)
            return
        except CommandError as error:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"obdsnap not answering after restart:\n{server.log()}"
                ) from error
            time.sleep(0.1)


def wait_for_containerd_redial(containerd: PrivateContainerd) -> float:
    """Waits until containerd reaches obdsnap again; returns the seconds waited.

    containerd's gRPC client to a proxy plugin is fail-fast and redials with
    exponential backoff (1 s, 1.6x): right after the restart its calls may
    still fail with "connection refused" until the next attempt.
    """
    started = time.monotonic()
    while True:
        try:
            containerd.list_snapshots(PROXY_PLUGIN_NAME)
            return time.monotonic() - started
        except CommandError:
            if time.monotonic() - started > REDIAL_TIMEOUT:
                raise
            time.sleep(0.2)


def exec_in(containerd: PrivateContainerd, container_id: str, exec_id: str, *command: str) -> str:
    result = containerd.ctr(
        "tasks", "exec", "--exec-id", exec_id, "--fifo-dir", str(containerd.fifo_dir),
        container_id, *command,
    )  # fmt: skip
    return result.stdout.rstrip("\n")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_running_container_survives_restart(
    signum: int,
    image_factory: Callable[[int], ImageInfo],
    snapshotter_server: ServerProcess,
    private_containerd: PrivateContainerd,
    tmp_path: Path,
) -> None:
    image = image_factory(LAYERS)
    containerd, server = private_containerd, snapshotter_server
    containerd.import_image(image.archive, PROXY_PLUGIN_NAME)
    log_file = tmp_path / f"{CONTAINER}.out"
    containerd.run_container(
        image.reference,
        CONTAINER,
        ["/bin/sh", "-c", SURVIVOR_SCRIPT],
        snapshotter=PROXY_PLUGIN_NAME,
        detach=True,
        log_file=log_file,
    )
    wait_until_ready(log_file, timeout=30)
    assert containerd.task_statuses().get(CONTAINER) == "RUNNING"

    restart_server(server, signum)
    waited = wait_for_containerd_redial(containerd)

    # (1) the task kept running; (2) its rootfs still has the image and its writes.
    assert containerd.task_statuses().get(CONTAINER) == "RUNNING"
    assert exec_in(containerd, CONTAINER, "read-top", "cat", f"/{ociimage.TOP_FILE}") == (
        TOP_CONTENT
    )
    assert exec_in(containerd, CONTAINER, "read-written", "cat", WRITTEN_FILE) == WRITTEN_CONTENT
    # (3) a new container starts on the restarted obdsnap.
    fresh = containerd.ctr(
        "run", "--rm", "--snapshotter", PROXY_PLUGIN_NAME,
        "--runc-root", str(containerd.runc_root), "--fifo-dir", str(containerd.fifo_dir),
        image.reference, "fresh", "cat", f"/{ociimage.TOP_FILE}",
    )  # fmt: skip
    assert fresh.stdout.rstrip("\n") == TOP_CONTENT
    assert containerd.task_statuses().get(CONTAINER) == "RUNNING"

    # (4) everything removed: obdsnap holds nothing.
    containerd.remove_container(CONTAINER)
    assert containerd.ctr("containers", "ls", "-q").stdout.split() == []
    containerd.remove_image(image.reference)
    assert_server_empty_after_gc(containerd, server)
    assert server.running(), f"obdsnap died during the test:\n{server.log()}"
    print(f"{signal.Signals(signum).name}: containerd reached obdsnap again after {waited:.1f}s")


def test_block_layer_container_survives_sigkill(
    block_image: BlockImage, start_stack: StartStack, tmp_path: Path
) -> None:
    """A rootfs overlay on the top layer's read-only loop device outlives obdsnap's SIGKILL."""
    stack = start_stack()
    containerd = stack.containerd
    containerd.import_image(block_image.archive, PLUGIN)
    top_id = check_local_layers(stack, block_image)[block_image.chain_ids[-1]]
    log_file = tmp_path / f"{CONTAINER}.out"
    containerd.run_container(
        block_image.reference,
        CONTAINER,
        ["/bin/sh", "-c", SURVIVOR_SCRIPT],
        snapshotter=PLUGIN,
        detach=True,
        log_file=log_file,
    )
    wait_until_ready(log_file, timeout=30)
    device = stack.assert_device(top_id, mounted="ro")

    restart_server(stack.server, signal.SIGKILL)
    wait_for_containerd_redial(containerd)

    assert stack.assert_device(top_id, mounted="ro") == device
    assert containerd.task_statuses().get(CONTAINER) == "RUNNING"
    top = exec_in(containerd, CONTAINER, "read-top", "cat", f"/{TOP_FILE}")
    assert top == "top layer"
    assert exec_in(containerd, CONTAINER, "read-written", "cat", WRITTEN_FILE) == WRITTEN_CONTENT
    root = stack.run_reader(block_image.reference, "fresh").root
    check_overlay_on_device(stack, root, top_id, only_device=True)
    assert containerd.task_statuses().get(CONTAINER) == "RUNNING"

    stack.remove_container("fresh")
    stack.remove_container(CONTAINER)
    containerd.remove_image(block_image.reference)
    stack.assert_all_released()
    assert stack.server.running(), f"obdsnap died during the test:\n{stack.server.log()}"
