"""obdsnap under a real containerd: import, unpack, run, remove, garbage-collect.

Each test gets its own obdsnap (OBDSNAP_SERVER_CMD) and its own containerd
that reaches it as [proxy_plugins.obdsnap].
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

import pytest
from support.server_process import ServerProcess

from . import ociimage
from .containerd import (
    PROXY_PLUGIN_NAME,
    PrivateContainerd,
    SnapshotRow,
    list_snapshots_direct,
    parse_facts,
)
from .ociimage import ImageInfo

pytestmark = [pytest.mark.root, pytest.mark.slow]

SNAPSHOTTER_PLUGIN_TYPE = "io.containerd.snapshotter.v1"
GC_TIMEOUT = 20.0
PARALLEL_CONTAINERS = 8
PARALLEL_LAYERS = 10
WHITEOUT_DIR = PurePosixPath(ociimage.WHITED_OUT_FILE).parent

# Runs in the container (busybox sh); prints one "name=value" line per fact.
_FACT = r"""fact() { printf '%s=%s\n' "$1" "$2"; }
"""
_READ_FACTS = f"""
fact top_content "$(cat /{ociimage.TOP_FILE})"
fact top_mode_owner "$(stat -c '%a %u %g %U' /{ociimage.TOP_FILE})"
fact whited_out "$(test -e /{ociimage.WHITED_OUT_FILE} && echo present || echo absent)"
fact opaque_dir "$(echo $(ls -A /{ociimage.OPAQUE_DIR}))"
"""
SINGLE_CONTAINER_SCRIPT = (
    _FACT
    + _READ_FACTS
    + f"""
fact whiteout_markers "$(ls -A /{WHITEOUT_DIR} /{ociimage.OPAQUE_DIR} | grep -c '^\\.wh\\.')"
fact executable "$(stat -c %a /{ociimage.TOP_EXECUTABLE}) $(/{ociimage.TOP_EXECUTABLE})"
fact base_content "$(cat /{ociimage.BASE_FILE})"
fact version "$(cat /{ociimage.VERSION_FILE})"
fact fillers "$(ls /{ociimage.FILLER_DIR} 2>/dev/null | grep -c '^[0-9]*\\.txt$')"
echo "written by the container" > /e2e-written.txt
fact written "$(cat /e2e-written.txt)"
echo "appended by the container" >> /{ociimage.BASE_FILE}
fact copied_up "$(tail -n 1 /{ociimage.BASE_FILE})"
"""
)
PARALLEL_CONTAINER_SCRIPT = (
    _FACT
    + _READ_FACTS
    + """
echo "$1" > /e2e-written.txt
fact written "$(cat /e2e-written.txt)"
echo READY
exec sleep 600
"""
)


def expected_read_facts() -> dict[str, str]:
    return {
        "top_content": ociimage.TOP_CONTENT.decode().rstrip("\n"),
        "top_mode_owner": f"{ociimage.TOP_MODE:o} {ociimage.TOP_UID} {ociimage.TOP_GID} e2e",
        "whited_out": "absent",
        "opaque_dir": " ".join(ociimage.OPAQUE_DIR_ENTRIES),
    }


def committed_chain(image: ImageInfo) -> list[SnapshotRow]:
    parents = ["", *image.chain_ids[:-1]]
    return [
        SnapshotRow(chain_id, parent, "Committed")
        for chain_id, parent in zip(image.chain_ids, parents, strict=True)
    ]


def backend_rows(server: ServerProcess, namespace: str) -> list[SnapshotRow]:
    """The server's own snapshots of namespace, keys stripped to containerd's."""
    rows = []
    for row in list_snapshots_direct(server.address, PROXY_PLUGIN_NAME):
        scope, _, rest = row.key.partition("/")
        if scope == namespace:
            rows.append(SnapshotRow(rest.partition("/")[2], row.parent, row.kind))
    return rows


def assert_server_empty_after_gc(containerd: PrivateContainerd, server: ServerProcess) -> None:
    """containerd's GC must have called Remove and then Cleanup on the server."""
    snapshot_dir = server.root / "snapshots"
    deadline = time.monotonic() + GC_TIMEOUT
    while True:
        in_containerd = containerd.list_snapshots(PROXY_PLUGIN_NAME)
        in_server = list_snapshots_direct(server.address, PROXY_PLUGIN_NAME)
        on_disk = sorted(p.name for p in snapshot_dir.iterdir()) if snapshot_dir.is_dir() else None
        if not in_containerd and not in_server and on_disk == []:
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert in_containerd == [], "containerd still lists snapshots after image rm --sync"
    assert in_server == [], "the server still holds snapshots after containerd's GC"
    assert on_disk is not None, f"{snapshot_dir} does not exist"
    assert on_disk == [], f"{snapshot_dir} not empty after GC (Remove + Cleanup)"


def import_and_check_chain(
    containerd: PrivateContainerd, server: ServerProcess, image: ImageInfo
) -> float:
    """Imports image through the proxy; returns the import wall time."""
    assert list_snapshots_direct(server.address, PROXY_PLUGIN_NAME) == [], (
        "a fresh server must hold no snapshots"
    )
    assert containerd.plugin_status(SNAPSHOTTER_PLUGIN_TYPE, PROXY_PLUGIN_NAME) == "ok"

    started = time.monotonic()
    containerd.import_image(image.archive, PROXY_PLUGIN_NAME)
    import_seconds = time.monotonic() - started

    chain = committed_chain(image)
    listed = containerd.list_snapshots(PROXY_PLUGIN_NAME)
    assert {row.key: row for row in listed} == {row.key: row for row in chain}, (
        "ctr snapshot ls: not exactly the committed chain"
    )
    backend = backend_rows(server, containerd.namespace)
    assert {row.key for row in backend} == set(image.chain_ids)
    assert {row.kind for row in backend} == {"Committed"}
    return import_seconds


@pytest.mark.parametrize("layers", [3, 6])
def test_import_run_remove(
    layers: int,
    image_factory: Callable[[int], ImageInfo],
    snapshotter_server: ServerProcess,
    private_containerd: PrivateContainerd,
) -> None:
    image = image_factory(layers)
    containerd, server = private_containerd, snapshotter_server
    import_seconds = import_and_check_chain(containerd, server, image)

    started = time.monotonic()
    result = containerd.run_container(
        image.reference,
        "reader",
        ["/bin/sh", "-c", SINGLE_CONTAINER_SCRIPT],
        snapshotter=PROXY_PLUGIN_NAME,
    )
    run_seconds = time.monotonic() - started
    facts = parse_facts(result.stdout)
    assert facts == {
        **expected_read_facts(),
        "whiteout_markers": "0",
        "executable": f"755 {ociimage.TOP_EXECUTABLE_OUTPUT}",
        "base_content": ociimage.BASE_CONTENT.decode().rstrip("\n"),
        "version": ociimage.VERSION_CONTENT.decode().rstrip("\n"),
        "fillers": str(image.filler_count),
        "written": "written by the container",
        "copied_up": "appended by the container",
    }, f"container output:\n{result.stdout}{result.stderr}"

    listed = {row.key: row for row in containerd.list_snapshots(PROXY_PLUGIN_NAME)}
    assert listed.get("reader") == SnapshotRow("reader", image.top_chain_id, "Active")

    containerd.remove_container("reader")
    assert "reader" not in {row.key for row in containerd.list_snapshots(PROXY_PLUGIN_NAME)}
    started = time.monotonic()
    containerd.remove_image(image.reference)
    assert_server_empty_after_gc(containerd, server)
    gc_seconds = time.monotonic() - started
    assert server.running(), "the server died during the test"
    print(
        f"layers={layers} import={import_seconds:.2f}s run={run_seconds:.2f}s "
        f"image-rm+gc={gc_seconds:.2f}s"
    )


def wait_until_ready(log_file: Path, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        output = log_file.read_text() if log_file.exists() else ""
        if "READY" in output:
            return output
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
    raise AssertionError(f"{log_file.name} not ready within {timeout:.0f}s: {output!r}")


def test_parallel_containers(
    image_factory: Callable[[int], ImageInfo],
    snapshotter_server: ServerProcess,
    private_containerd: PrivateContainerd,
    tmp_path: Path,
) -> None:
    image = image_factory(PARALLEL_LAYERS)
    containerd, server = private_containerd, snapshotter_server
    import_and_check_chain(containerd, server, image)
    container_ids = [f"parallel-{number}" for number in range(PARALLEL_CONTAINERS)]
    log_files = {cid: tmp_path / f"{cid}.out" for cid in container_ids}

    def start(container_id: str) -> None:
        containerd.run_container(
            image.reference,
            container_id,
            ["/bin/sh", "-c", PARALLEL_CONTAINER_SCRIPT, "sh", container_id],
            snapshotter=PROXY_PLUGIN_NAME,
            detach=True,
            log_file=log_files[container_id],
        )

    started = time.monotonic()
    with ThreadPoolExecutor(PARALLEL_CONTAINERS) as pool:
        list(pool.map(start, container_ids))
    start_seconds = time.monotonic() - started

    for container_id in container_ids:
        facts = parse_facts(wait_until_ready(log_files[container_id], timeout=60))
        assert facts == {**expected_read_facts(), "written": container_id}, container_id
    statuses = containerd.task_statuses()
    assert {cid: statuses.get(cid) for cid in container_ids} == dict.fromkeys(
        container_ids, "RUNNING"
    )
    listed = {row.key: row for row in containerd.list_snapshots(PROXY_PLUGIN_NAME)}
    assert {cid: listed.get(cid) for cid in container_ids} == {
        cid: SnapshotRow(cid, image.top_chain_id, "Active") for cid in container_ids
    }

    started = time.monotonic()
    with ThreadPoolExecutor(PARALLEL_CONTAINERS) as pool:
        list(pool.map(containerd.remove_container, container_ids))
    remove_seconds = time.monotonic() - started
    remaining = {row.key for row in containerd.list_snapshots(PROXY_PLUGIN_NAME)}
    assert remaining.isdisjoint(container_ids)

    containerd.remove_image(image.reference)
    assert_server_empty_after_gc(containerd, server)
    assert server.running(), "the server died during the test"
    print(
        f"{PARALLEL_CONTAINERS} containers on {PARALLEL_LAYERS} layers: "
        f"start={start_seconds:.2f}s remove={remove_seconds:.2f}s"
    )
