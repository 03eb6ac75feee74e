"""Start-up reconcile (every row of the README's table) and Cleanup's orphan decisions, in-process.

A crash is an intent entered and never left, then the metadata closed; devices
and mounts stay as the dead process left them.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from support.fake_devices import OTHER_OWNER, FakeDevice
from support.inprocess import InProcess, remote_layer_labels

from obdsnap import labels as L
from obdsnap.layout import WritableDir
from obdsnap.overlaybd.tools import ZFileConfig
from obdsnap.storage import Kind, Operation, Usage

REMOTE_LABELS = remote_layer_labels(
    "remote-layer", "sha256:" + "cd" * 32, 8192, "registry.example/app:1"
)


@pytest.fixture
async def obd(obd: InProcess) -> InProcess:
    """The in-process snapshotter with a remote layer unpacked."""
    await _unpack_remote(obd)
    return obd


async def _unpack_remote(obd: InProcess) -> None:
    with pytest.raises(Exception, match="already exists"):
        await obd.snapshotter.prepare("extract-remote", "", REMOTE_LABELS)


async def _writable(obd: InProcess, key: str = "w") -> int:
    await obd.snapshotter.prepare(key, "remote-layer", {L.WRITABLE: "dir"})
    return obd.id_of(key)


async def _gone(path: Path) -> None:
    for _ in range(500):
        if not await asyncio.to_thread(path.exists):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{path} is still there")


async def crash_inside(obd: InProcess, snapshot_id: int, operation: Operation) -> None:
    await obd.open_intent(snapshot_id, operation).__aenter__()
    await obd.crash()


async def test_a_create_that_never_became_ready_is_rolled_back(obd: InProcess) -> None:
    record = await obd.store.create(Kind.ACTIVE, "half", "remote-layer", {}, "dir", ready=False)
    new = obd.layout.snapshots / "new-half"
    obd.layout.build_new_snapshot_dir(new, active=True, parent_id=None)
    new.rename(obd.layout.snapshot_dir(record.id))
    obd.backend.leave_half_set_up(record.id)  # its attach had begun
    report = await obd.restart()
    assert report.creates_dropped == 1 and obd.store.find("half") is None
    assert not obd.layout.snapshot_dir(record.id).exists()
    assert record.id not in obd.backend.devices
    assert report.cleanup.directories_removed == 1 and report.cleanup.devices_released == 1


async def test_a_row_without_its_directory_is_rolled_back(obd: InProcess) -> None:
    await obd.store.create(Kind.ACTIVE, "no-dir", "remote-layer", {}, "overlayfs")
    report = await obd.restart()
    assert report.creates_dropped == 1 and obd.store.find("no-dir") is None
    assert obd.store.find("remote-layer") is not None  # it has a directory: kept


async def test_an_attach_that_reached_its_mark_is_kept(obd: InProcess) -> None:
    own = await _writable(obd)
    await crash_inside(obd, own, Operation.ATTACH)
    report = await obd.restart()
    assert report.settled == [f"attach of snapshot {own} kept: it had finished"]
    assert obd.mounter.is_mounted(obd.layout.block(own).mountpoint)
    assert own in obd.backend.devices and obd.store.intents() == []


async def test_an_attach_that_did_not_reach_its_mark_is_torn_down(obd: InProcess) -> None:
    remote = obd.id_of("remote-layer")
    block = obd.layout.block(remote)
    device = await obd.backend.attach(remote, block)  # set up, mounted, never marked
    obd.mounter.add_mount(str(device), block.mountpoint)
    await crash_inside(obd, remote, Operation.ATTACH)
    report = await obd.restart()
    assert report.settled == [f"attach of snapshot {remote} rolled back"]
    assert obd.backend.devices == {} and obd.mounter.table == []
    # The next container attaches afresh.
    await obd.snapshotter.prepare("c", "remote-layer", {})
    assert obd.mounter.mounted_source(block.mountpoint) == str(device)


async def test_a_detach_is_finished(obd: InProcess) -> None:
    own = await _writable(obd)
    block = obd.layout.block(own)
    await obd.mounter.unmount(block.mountpoint)  # the detach got past its unmount
    await crash_inside(obd, own, Operation.DETACH)
    report = await obd.restart()
    assert report.settled == [f"detach of snapshot {own} finished"]
    assert own not in obd.backend.devices and not block.mark.exists()


async def _commit_cut_short(obd: InProcess, *, row_committed: bool) -> int:
    """A writable commit that died after overlaybd-commit (and, if told, the row's commit)."""
    own = await _writable(obd)
    record = obd.store.get("w")
    await obd.devices.detach(own)
    await obd.layers.writable.compress(own, ZFileConfig())
    await obd.layers.writable.keep_config(own)
    await obd.layers.write_local_config(record, obd.store.get("remote-layer"))
    if row_committed:
        await obd.store.commit("w", "layer", Usage(), {})
    await crash_inside(obd, own, Operation.COMMIT)
    return own


async def test_a_commit_whose_row_is_still_active_is_rolled_back(obd: InProcess) -> None:
    own = await _commit_cut_short(obd, row_committed=False)
    report = await obd.restart()
    block = obd.layout.block(own)
    assert report.settled == [f"commit of snapshot {own} rolled back"]
    assert not obd.layout.commit_file(own).exists() and not block.kept_config.exists()
    config = json.loads(block.config.read_text())
    assert config["upper"] == {"index": str(block.writable_index), "data": str(block.writable_data)}
    assert block.writable_data.exists()
    # The writable layer works as before: it can be mounted and committed again.
    await obd.snapshotter.mounts("w")
    await obd.snapshotter.commit("layer", "w", {})
    assert obd.layout.commit_file(own).is_file()


async def test_a_commit_whose_row_is_committed_is_finished(obd: InProcess) -> None:
    own = await _commit_cut_short(obd, row_committed=True)
    report = await obd.restart()
    block = obd.layout.block(own)
    assert report.settled == [f"commit of snapshot {own} finished"]
    assert obd.snapshotter.stat("layer").kind == Kind.COMMITTED
    assert obd.layout.commit_file(own).is_file()
    assert not block.writable_data.exists() and not block.kept_config.exists()


async def test_cleanup_removes_an_orphan_directory(obd: InProcess) -> None:
    orphan = obd.layout.snapshots / "99"
    (orphan / "fs").mkdir(parents=True)
    (orphan / "fs" / "file").write_text("left over")
    half = obd.layout.snapshots / "new-0123"
    half.mkdir()
    report = await obd.snapshotter.cleanup()
    assert report.directories_removed == 2 and not orphan.exists() and not half.exists()
    assert obd.layout.snapshot_dir(obd.id_of("remote-layer")).is_dir()


async def test_cleanup_releases_an_orphan_device_of_ours(obd: InProcess) -> None:
    own = await _writable(obd)
    obd.backend.devices[77] = FakeDevice(
        obd.backend.owner_token(obd.layout.block(77)), obd.backend.node(77)
    )
    await obd.store.remove("w")  # the row went; its directory and device did not
    report = await obd.snapshotter.cleanup()
    assert report.devices_released == 2 and report.directories_removed == 1
    assert obd.backend.devices == {} and obd.mounter.table == []
    assert not obd.layout.snapshot_dir(own).exists()


async def test_cleanup_of_an_orphan_deletes_the_layer_it_created_in_active_path(
    obd: InProcess, tmp_path: Path
) -> None:
    place = tmp_path / "active"
    labels = {L.WRITABLE: "dir", L.ACTIVE_PATH: str(place)}
    await obd.snapshotter.prepare("w", "remote-layer", labels)
    own = obd.id_of("w")
    assert sorted(p.name for p in place.iterdir()) == ["writable_data", "writable_index"]
    await obd.store.remove("w")  # the row went; its directory and the files outside did not
    report = await obd.snapshotter.cleanup()
    assert report.directories_removed == 1 and not obd.layout.snapshot_dir(own).exists()
    assert place.is_dir() and list(place.iterdir()) == []


async def test_cleanup_of_an_orphan_leaves_a_reused_layer_in_active_path(
    obd: InProcess, tmp_path: Path
) -> None:
    place = tmp_path / "persistent"
    place.mkdir()
    found = WritableDir(place)
    await obd.tools.create_writable_layer(found.data, found.index, 1, sparse=False)
    before = {path: path.read_bytes() for path in (found.data, found.index)}
    labels = {L.WRITABLE: "dir", L.ACTIVE_PATH: str(place)}
    await obd.snapshotter.prepare("w", "remote-layer", labels)
    own = obd.id_of("w")
    await obd.store.remove("w")
    report = await obd.snapshotter.cleanup()
    assert report.directories_removed == 1 and not obd.layout.snapshot_dir(own).exists()
    assert {path: path.read_bytes() for path in before} == before


async def test_cleanup_leaves_another_snapshotters_device_alone(obd: InProcess) -> None:
    obd.backend.set_up_by_other(55)
    report = await obd.snapshotter.cleanup()
    assert report.devices_released == 0 and obd.backend.devices[55].owner == OTHER_OWNER
    assert obd.backend.detaches == []


async def test_cleanup_keeps_a_device_that_is_an_overlays_lower(obd: InProcess) -> None:
    await obd.snapshotter.prepare("c", "remote-layer", {})
    remote = obd.id_of("remote-layer")
    lower = obd.layout.block(remote).mountpoint
    obd.mounter.add_overlay(Path("/run/containers/c/rootfs"), [lower])
    container_dir = obd.layout.snapshot_dir(obd.id_of("c"))
    await obd.snapshotter.remove("c")
    await _gone(container_dir)  # removed in the background
    await obd.store.remove("remote-layer")  # its row went while a container ran on it
    report = await obd.snapshotter.cleanup()
    assert report.kept == [str(remote)] and report.directories_removed == 0
    assert remote in obd.backend.devices and obd.mounter.is_mounted(lower)
    # Once the container is gone, the next Cleanup reclaims it.
    obd.mounter.table = [m for m in obd.mounter.table if m.fs_type != "overlay"]
    report = await obd.snapshotter.cleanup()
    assert report.devices_released == 1 and report.directories_removed == 1
    assert obd.backend.devices == {} and obd.mounter.table == []


async def test_cleanup_unmounts_a_stray_mount_under_an_orphan(obd: InProcess) -> None:
    orphan = obd.layout.snapshots / "98"
    (orphan / "block" / "mountpoint").mkdir(parents=True)
    obd.mounter.add_mount("/dev/loop9", orphan / "block" / "mountpoint")
    report = await obd.snapshotter.cleanup()
    assert report.mounts_removed == 1 and report.directories_removed == 1
    assert obd.mounter.table == []
