"""Interrupted operations: an attach, detach or writable commit cut by a crash is recorded
as an intent in the metadata, and start-up finishes or rolls it back before serving.

Some crashes are real (SIGKILL while a step blocks); others are planted: the state a
crash at an exact step leaves (files, devices, the intent row) is made by hand on a
killed server, since a kill cannot land between two given steps reliably.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
from pathlib import Path

import pytest
from grpclib.const import Status
from support.block import Obd
from support.block_fixtures import StartObd, WritableRootfs, write_synced
from support.intents import open_intents, plant_intent, slow_overlaybd_commit
from support.mounts import mount_at
from support.simulator import MISSING
from support.snapshots import expect_status, wait_until

from obdsnap.genproto.containerd.services.snapshots import v1 as api
from obdsnap.labels import WRITABLE

pytestmark = [pytest.mark.root, pytest.mark.skipif(MISSING is not None, reason=MISSING or "")]

ACTIVE, COMMITTED = api.Kind(2), api.Kind(3)


async def restart_after(obd: Obd, snapshot_id: int, operation: str) -> None:
    """Kill obdsnap, plant the intent, start again; start-up must have settled it."""
    obd.close_channel()
    obd.server.kill()
    plant_intent(obd, snapshot_id, operation)
    await obd.start()
    assert open_intents(obd) == []


async def test_a_commit_killed_inside_overlaybd_commit_is_rolled_back(
    writable_rootfs: WritableRootfs, tmp_path: Path
) -> None:
    rootfs = await writable_rootfs()
    obd, own = rootfs.obd, rootfs.id
    config_before = obd.config_path(own).read_bytes()
    started = tmp_path / "commit-started"
    with slow_overlaybd_commit(obd, started):
        pending = asyncio.ensure_future(obd.commit("layer", "rootfs"))
        assert await wait_until(started.exists, 15.0), "overlaybd-commit never ran"
        assert open_intents(obd) == [(own, "commit")]
        obd.server.kill()
        with contextlib.suppress(Exception):
            await pending
    obd.close_channel()
    await obd.start()
    assert open_intents(obd) == []
    assert f"commit of snapshot {own} was interrupted: rolled back" in obd.server.log()
    # The commit never answered: the snapshot is active, its writable layer as it was.
    assert (await obd.stat("rootfs")).kind == ACTIVE
    await expect_status(obd.stat("layer"), Status.NOT_FOUND)
    assert obd.config_path(own).read_bytes() == config_before
    assert not (obd.fs(own) / "overlaybd.commit").exists()
    # And it commits when asked again.
    await rootfs.assert_mounts_and_commits()


async def test_a_commit_cut_after_its_row_committed_is_finished(
    writable_rootfs: WritableRootfs,
) -> None:
    """The row says committed: start-up drops what is left of the writable layer."""
    rootfs = await writable_rootfs()
    obd, own = rootfs.obd, rootfs.id
    await obd.commit("layer", "rootfs")
    committed_config = obd.config_path(own).read_bytes()
    # What a crash just after the row committed leaves: the writable layer and its config.
    leftovers = [obd.block(own) / name for name in ("writable_data", "writable_index")]
    leftovers.append(obd.block(own) / "config.v1.json.writable")
    for leftover in leftovers:
        leftover.write_bytes(b"left by a crash")
    await restart_after(obd, own, "commit")
    assert f"commit of snapshot {own} was interrupted: finished" in obd.server.log()
    assert [path for path in leftovers if path.exists()] == []
    assert obd.config_path(own).read_bytes() == committed_config
    assert (await obd.stat("layer")).kind == COMMITTED
    child = await obd.prepare("child", "layer", {WRITABLE: "dir"})
    assert (Path(child[0].source) / "file").read_text() == "data\n"


async def test_an_attach_cut_before_its_mark_is_torn_down_and_mounts_attaches_again(
    writable_rootfs: WritableRootfs,
) -> None:
    rootfs = await writable_rootfs()
    obd, own = rootfs.obd, rootfs.id
    # Cut before the mark, the attach's last step: the device is up, mounted, unmarked.
    (obd.block(own) / "backstore_mark").unlink()
    await restart_after(obd, own, "attach")
    assert f"attach of snapshot {own} was interrupted: rolled back" in obd.server.log()
    obd.assert_detached(own)
    assert await obd.mounts("rootfs") == rootfs.mounts
    obd.assert_attached(own, mounted="rw")
    rootfs.assert_holds()


async def test_an_attach_that_got_to_its_mark_is_kept_for_the_container_using_it(
    writable_rootfs: WritableRootfs,
) -> None:
    """A running container keeps its rootfs: a finished attach is not torn down."""
    rootfs = await writable_rootfs(files={})
    obd, own = rootfs.obd, rootfs.id
    device = obd.assert_attached(own, mounted="rw")
    with (obd.mountpoint(own) / "log").open("w") as container_file:
        await restart_after(obd, own, "attach")
        assert f"attach of snapshot {own} was interrupted: kept" in obd.server.log()
        assert obd.assert_attached(own, mounted="rw") == device
        container_file.write("still writing\n")
        container_file.flush()
    assert (obd.mountpoint(own) / "log").read_text() == "still writing\n"


async def test_a_detach_cut_half_way_is_finished(writable_rootfs: WritableRootfs) -> None:
    rootfs = await writable_rootfs()
    obd, own = rootfs.obd, rootfs.id
    # Cut after the unmount, before the configfs teardown.
    obd.close_channel()
    obd.server.kill()
    mountpoint = obd.mountpoint(own)
    await asyncio.to_thread(os.sync)
    assert mount_at(mountpoint) is not None
    await asyncio.to_thread(lambda: os.system(f"umount {shlex.quote(str(mountpoint))}"))
    plant_intent(obd, own, "detach")
    await obd.start()
    assert open_intents(obd) == []
    assert f"detach of snapshot {own} was interrupted: finished" in obd.server.log()
    obd.assert_detached(own)
    await obd.mounts("rootfs")
    rootfs.assert_holds()


async def test_the_loser_of_two_commits_to_one_name_keeps_its_writable_layer(
    start_obd: StartObd,
) -> None:
    """Both pass the early name check; the metadata takes one, the other rolls back."""
    obd = await start_obd(rwMode="dir")
    first = obd.own_id(await obd.prepare("first"))
    second = obd.own_id(await obd.prepare("second"))
    for snapshot_id, key in ((first, "first"), (second, "second")):
        write_synced(obd.mountpoint(snapshot_id), {"owner": key})
    configs = {i: obd.config_path(i).read_bytes() for i in (first, second)}
    outcomes = await asyncio.gather(
        obd.commit("layer", "first"), obd.commit("layer", "second"), return_exceptions=True
    )
    winner = "first" if outcomes[0] is None else "second"
    loser, loser_id = ("second", second) if winner == "first" else ("first", first)
    failure = outcomes[1] if winner == "first" else outcomes[0]
    assert getattr(failure, "status", None) == Status.ALREADY_EXISTS, outcomes
    assert open_intents(obd) == []
    # The loser is active with its writable layer and config as before, and its data.
    assert (await obd.stat(loser)).kind == ACTIVE
    assert obd.config_path(loser_id).read_bytes() == configs[loser_id]
    assert not (obd.fs(loser_id) / "overlaybd.commit").exists()
    await obd.mounts(loser)
    assert (obd.mountpoint(loser_id) / "owner").read_text() == loser
    child = await obd.prepare("child", "layer", {WRITABLE: "dir"})
    assert (Path(child[0].source) / "owner").read_text() == winner


async def test_a_mounts_during_a_writable_commit_waits_for_it(
    writable_rootfs: WritableRootfs, tmp_path: Path
) -> None:
    """The commit detaches the device: a Mounts half-way must not attach it again."""
    rootfs = await writable_rootfs()
    obd, own = rootfs.obd, rootfs.id
    started = tmp_path / "commit-started"
    with slow_overlaybd_commit(obd, started, seconds=1):
        commit = asyncio.ensure_future(obd.commit("layer", "rootfs"))
        assert await wait_until(started.exists, 10.0), "overlaybd-commit never ran"
        mounts = asyncio.ensure_future(obd.mounts("rootfs"))
        await commit
    # Committed: the active key is gone, and no device was attached behind the commit.
    with pytest.raises(Exception) as raised:
        await mounts
    assert getattr(raised.value, "status", None) == Status.NOT_FOUND
    obd.assert_detached(own)
    assert not (obd.block(own) / "writable_data").exists()
