"""Fault injection: every failure is the right gRPC error, with overlaybd's reason,
leaves nothing behind, and does not stop the next Prepare from working.

Faults are simulator knobs restricted to one device (``only(value, ID)``);
snapshot IDs start at 1 on each test's fresh server.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from grpclib import GRPCError
from grpclib.const import Status
from grpclib.exceptions import StreamTerminatedError
from support.block import Layer, Obd, remote_labels
from support.block_fixtures import Images, StartObd, WritableRootfs
from support.simulator import MISSING
from support.snapshots import expect_status, wait_until

from obdsnap.genproto.containerd.services.snapshots import v1 as api
from obdsnap.labels import BLOB_FS_TYPE, ZFILE_CONFIG
from tcmusim.testing import only

pytestmark = [pytest.mark.root, pytest.mark.skipif(MISSING is not None, reason=MISSING or "")]

OPEN_LATENCY = 0.1
# obdsnap's disk discovery timeout (TcmuTimings.disk_timeout_s).
DISCOVERY_TIMEOUT = 10.0


async def assert_nothing_left(obd: Obd, snapshot_id: int, key: str) -> None:
    """No snapshot row or directory, no configfs object, mount or loop device of ``snapshot_id``."""
    await expect_status(obd.stat(key), Status.NOT_FOUND)
    assert key not in {info.name for info in await obd.list_infos()}
    await obd.wait_gone(snapshot_id)
    assert obd.configfs_entries(snapshot_id) == []
    assert obd.leftovers() == []


async def test_failed_open_is_reported_at_once_with_overlaybds_reason(
    start_obd: StartObd,
) -> None:
    obd = await start_obd(rwMode="dir")
    obd.sim.control.set(open_latency=OPEN_LATENCY, fail_open=only("bad image magic", 1))
    started = time.monotonic()
    error = await expect_status(obd.prepare("rootfs"), Status.UNKNOWN)
    elapsed = time.monotonic() - started
    assert "bad image magic" in (error.message or "")
    # From the result file, not after the discovery timeout.
    assert elapsed < 2.0, f"the failed open took {elapsed:.2f}s to be reported"
    await assert_nothing_left(obd, 1, "rootfs")
    # Snapshot 2 opens fine.
    mounts = await obd.prepare("rootfs")
    assert obd.own_id(mounts) == 2
    obd.assert_attached(2, mounted="rw")


async def test_failed_open_of_a_parent_device_leaves_the_parent_as_it_was(
    obd: Obd, images: Images
) -> None:
    top_chain, top = await obd.unpack_top(images.single)
    obd.sim.control.set(open_latency=OPEN_LATENCY, fail_open=only("registry said 403", top))
    started = time.monotonic()
    error = await expect_status(obd.prepare("rootfs", top_chain), Status.UNKNOWN)
    assert time.monotonic() - started < 2.0
    assert "registry said 403" in (error.message or "")
    await expect_status(obd.stat("rootfs"), Status.NOT_FOUND)
    await obd.wait_gone(top + 1)
    assert (await obd.stat(top_chain)).kind.name == "COMMITTED"
    obd.assert_detached(top)
    assert obd.leftovers() == []
    obd.sim.control.clear()
    await obd.prepare("rootfs", top_chain)
    obd.assert_attached(top, mounted="ro")


async def test_a_blob_missing_from_the_registry_fails_with_overlaybds_reason(
    obd: Obd, images: Images
) -> None:
    real = images.single.layers[0]
    missing = Layer("sha256:" + "0" * 64, real.size, real.diff_id, real.path)
    chain_id = "sha256:" + "1" * 64
    labels = remote_labels(chain_id, missing, images.single.ref)
    await expect_status(obd.prepare(f"extract-1 {chain_id}", "", labels), Status.ALREADY_EXISTS)
    top = obd.latest_id()
    error = await expect_status(obd.prepare("rootfs", chain_id), Status.UNKNOWN)
    message = error.message or ""
    assert "failed to open remote file" in message
    assert f"https://quay.io/v2/org/single/blobs/{missing.digest}" in message
    await assert_nothing_left(obd, top + 1, "rootfs")
    obd.assert_detached(top)


async def test_eagain_on_enable_is_retried(start_obd: StartObd) -> None:
    obd = await start_obd(rwMode="dir")
    obd.sim.control.set(eagain=only(3, 1))
    log_start = len(obd.sim.log())
    mounts = await obd.prepare("rootfs")
    obd.assert_attached(obd.own_id(mounts), mounted="rw")
    assert obd.sim.log()[log_start:].count("dev_1: EAGAIN") == 3


async def test_endless_eagain_gives_up_and_leaves_nothing(start_obd: StartObd) -> None:
    """100 attempts 50 ms apart, then the error (with the result file's text, empty here)."""
    obd = await start_obd(rwMode="dir")
    obd.sim.control.set(eagain=only(1000, 1))
    log_start = len(obd.sim.log())
    error = await expect_status(obd.prepare("rootfs"), Status.UNKNOWN)
    assert "Resource temporarily unavailable" in (error.message or "")
    assert obd.sim.log()[log_start:].count("dev_1: EAGAIN") == 100
    await assert_nothing_left(obd, 1, "rootfs")
    mounts = await obd.prepare("rootfs")
    obd.assert_attached(obd.own_id(mounts), mounted="rw")


async def test_a_disk_that_never_appears_is_unavailable_after_the_discovery_timeout(
    start_obd: StartObd,
) -> None:
    obd = await start_obd(rwMode="dir")
    obd.sim.control.set(never_appear=only(True, 1))
    started = time.monotonic()
    error = await expect_status(obd.prepare("rootfs"), Status.UNAVAILABLE)
    elapsed = time.monotonic() - started
    assert DISCOVERY_TIMEOUT - 0.5 <= elapsed < DISCOVERY_TIMEOUT + 5, elapsed
    assert "did not appear" in (error.message or "")
    await assert_nothing_left(obd, 1, "rootfs")
    mounts = await obd.prepare("rootfs")
    obd.assert_attached(obd.own_id(mounts), mounted="rw")


@pytest.mark.parametrize(
    ("fs_type", "reason"),
    [("ext4;;-Z", "mkfs"), ("ext4;no_such_option", "mount")],
    ids=["mkfs-fails", "mount-fails"],
)
async def test_a_failing_mkfs_or_mount_detaches_the_device_again(
    start_obd: StartObd, fs_type: str, reason: str
) -> None:
    obd = await start_obd(rwMode="dir")
    error = await expect_status(obd.prepare("rootfs", "", {BLOB_FS_TYPE: fs_type}), Status.UNKNOWN)
    assert reason in (error.message or "")
    await assert_nothing_left(obd, 1, "rootfs")
    mounts = await obd.prepare("rootfs")
    obd.assert_attached(obd.own_id(mounts), mounted="rw")


@pytest.mark.parametrize(
    "zfile_config",
    ['{"algorithm":"gzip"}', '{"blockSize":3}', "not json", '["lz4"]', '{"blockSize":true}'],
)
async def test_a_bad_zfile_config_is_invalid_argument_and_the_snapshot_stays_active(
    writable_rootfs: WritableRootfs, zfile_config: str
) -> None:
    rootfs = await writable_rootfs()
    obd = rootfs.obd
    await expect_status(
        obd.commit("layer", "rootfs", {ZFILE_CONFIG: zfile_config}), Status.INVALID_ARGUMENT
    )
    assert (await obd.stat("rootfs")).kind.name == "ACTIVE"
    await expect_status(obd.stat("layer"), Status.NOT_FOUND)
    assert not (obd.fs(rootfs.id) / "overlaybd.commit").exists()
    # Its device answers again, with the data, and a good commit works.
    await rootfs.assert_mounts_and_commits({ZFILE_CONFIG: '{"algorithm":"lz4","blockSize":4}'})


async def test_a_bad_zfile_config_is_rejected_before_the_device_is_touched(
    writable_rootfs: WritableRootfs,
) -> None:
    rootfs = await writable_rootfs(files={})
    device = rootfs.obd.assert_attached(rootfs.id, mounted="rw")
    await expect_status(
        rootfs.obd.commit("layer", "rootfs", {ZFILE_CONFIG: '{"algorithm":"gzip"}'}),
        Status.INVALID_ARGUMENT,
    )
    assert rootfs.obd.assert_attached(rootfs.id, mounted="rw") == device


async def test_a_failing_overlaybd_commit_keeps_the_snapshot_active_and_its_data(
    writable_rootfs: WritableRootfs,
) -> None:
    rootfs = await writable_rootfs()
    obd = rootfs.obd
    # overlaybd-commit cannot run at all.
    tool = obd.sim.tools_dir / "overlaybd-commit"
    tool.chmod(0o644)
    try:
        error = await expect_status(obd.commit("layer", "rootfs"), Status.UNKNOWN)
    finally:
        tool.chmod(0o755)
    assert "overlaybd-commit" in (error.message or "")
    assert not (obd.fs(rootfs.id) / "overlaybd.commit").exists()
    assert (await obd.stat("rootfs")).kind.name == "ACTIVE"
    assert (obd.block(rootfs.id) / "writable_data").exists()
    # Mounts brings the device back, with the data.
    await rootfs.assert_mounts_and_commits()


async def test_a_prepare_whose_client_gave_up_finishes_or_undoes_cleanly(
    start_obd: StartObd,
) -> None:
    """The deadline passes while the device opens: the snapshot is wholly there or not at all."""
    obd = await start_obd(rwMode="dir")
    obd.sim.control.set(open_latency=only(0.5, 1))
    request = obd.client.prepare(api.PrepareSnapshotRequest(key="rootfs"), timeout=0.1)
    with pytest.raises((TimeoutError, GRPCError)):
        await request
    await asyncio.sleep(1.0)
    try:
        info = await obd.stat("rootfs")
    except GRPCError as exc:
        assert exc.status == Status.NOT_FOUND
        assert obd.leftovers() == []
    else:
        assert info.kind.name == "ACTIVE"
        obd.assert_attached(1, mounted="rw")
        await obd.remove("rootfs")
        obd.assert_detached(1)
    assert obd.sim.loop_devices() == []


@pytest.mark.parametrize("phase", ["opening the device", "making the filesystem"])
async def test_a_prepare_killed_during_set_up_is_rolled_back_at_start_up(
    start_obd: StartObd, phase: str
) -> None:
    """A crash inside a writable device's set-up (attach, mkfs) leaves nothing half-made.

    The kill waits for the phase to be visible rather than for a time, so it always lands
    inside the set-up: the Prepare must not have answered when the server dies.
    """
    obd = await start_obd(rwMode="dir")
    if phase == "opening the device":
        obd.sim.control.set(open_latency=only(3, 1))
        reached = lambda: obd.target_dir(1).exists()  # noqa: E731
    else:
        obd.sim.control.set(slow_io_ms=only(50, 1))
        reached = lambda: obd.device_of(1) is not None  # noqa: E731
    pending = asyncio.ensure_future(obd.prepare("rootfs"))
    assert await wait_until(reached, 15.0), f"the Prepare never got to {phase}"
    await asyncio.sleep(0.1)
    assert not pending.done(), f"the Prepare answered before the kill: {pending}"
    obd.server.kill()
    with pytest.raises((GRPCError, StreamTerminatedError, OSError)):
        await pending
    obd.sim.control.clear()
    obd.close_channel()
    await obd.start()
    await assert_nothing_left(obd, 1, "rootfs")
    mounts = await obd.prepare("rootfs")
    assert obd.own_id(mounts) == 2
    obd.assert_attached(2, mounted="rw")
