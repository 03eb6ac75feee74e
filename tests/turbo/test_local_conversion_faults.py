"""A local TurboOCI conversion (DESIGN-v1 §13) that fails or is cut by a crash: whatever step
it stops at, what it made is gone (step 7), the active snapshot is as it was, and committing it
again converts the layer. Failures answer UNKNOWN ``failed to construct overlaybd config``;
crashes are settled at start-up under the commit intent."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest
from grpclib import GRPCError
from grpclib.const import Status
from support.block import Obd
from support.conversion import (
    LocalLayer,
    broken_tool,
    converted_layer,
    stalled_tool,
    tree,
    unpack_layer,
    when_run_with,
)
from support.intents import open_intents, plant_intent
from support.simulator import MISSING
from support.snapshots import expect_status, wait_until
from support.tool_faults import replaced_tool

from obdsnap import labels as L
from obdsnap.genproto.containerd.services.snapshots import v1 as api

pytestmark = [pytest.mark.root, pytest.mark.skipif(MISSING is not None, reason=MISSING or "")]

ACTIVE, COMMITTED = api.Kind(2), api.Kind(3)
FILES = {"etc/os-release": "layer\n", "bin/tool": "tool\n"}
# Each step of §13 by the tool and an argument only its run there has.
STEPS = {
    "export": ("turboOCI-apply", "--export"),
    "create": ("overlaybd-create", "--turboOCI"),
    "apply": ("turboOCI-apply", "--service_config_path"),
    "commit": ("overlaybd-commit", "--turboOCI"),
}


async def assert_untouched(layer: LocalLayer) -> None:
    """The active snapshot is as the differ left it: nothing of a conversion remains."""
    assert layer.leftovers() == []
    assert (await layer.obd.stat(layer.key)).kind == ACTIVE
    await expect_status(layer.obd.stat(layer.name), Status.NOT_FOUND)
    assert await layer.obd.mounts(layer.key) == layer.mounts
    assert layer.layer_tar.exists()


async def assert_commits(layer: LocalLayer, files: dict[str, str] = FILES) -> None:
    """Committing again converts the layer, and a rootfs on it holds ``files``."""
    await layer.commit()
    assert (await layer.obd.stat(layer.name)).kind == COMMITTED
    assert layer.obd.config(layer.id)["lowers"][-1] == layer.lower()
    await layer.obd.prepare("rootfs", layer.name)
    assert await asyncio.to_thread(tree, layer.obd.mountpoint(layer.id)) == files


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("parent", [False, True], ids=["bottom", "on-parent"])
async def test_s13_step7_a_failed_step_is_undone_and_the_commit_can_be_retried(
    obd: Obd, step: str, parent: bool
) -> None:
    """Each step failing after its tool wrote its files: UNKNOWN, nothing left, retry works."""
    parent_name = ""
    if parent:
        parent_name = (await converted_layer(obd, "base", files={"base": "base\n"})).name
    layer = await unpack_layer(obd, "layer", parent_name, FILES)
    tool, argument = STEPS[step]
    message = f"{step}: failure injected by the test"
    with broken_tool(obd, tool, argument, message, after_real_run=True):
        error = await expect_status(layer.commit(), Status.UNKNOWN)
    assert str(error.message).startswith("failed to construct overlaybd config: ")
    assert message in str(error.message)
    await assert_untouched(layer)
    await assert_commits(layer, {"base": "base\n", **FILES} if parent else FILES)


async def test_s13_step4_configs_that_cannot_be_written_are_undone(obd: Obd) -> None:
    """An I/O error writing temp/'s configs fails the Commit as a tool's failure does."""
    layer = await unpack_layer(obd, "layer", "", FILES)
    # After the layer is made, a directory stands where service.json goes.
    blocker = '"$REAL" "$@" || exit 1\nmkdir "$(dirname "$1")/service.json"\nexit 0'
    with replaced_tool(obd.sim.tools_dir, "overlaybd-create", when_run_with("-s", blocker)):
        error = await expect_status(layer.commit(), Status.UNKNOWN)
    assert str(error.message).startswith("failed to construct overlaybd config: ")
    assert "service.json" in str(error.message)
    await assert_untouched(layer)
    await assert_commits(layer)


async def test_s13_an_erofs_apply_that_fails_is_undone(obd: Obd) -> None:
    """EROFS (no export): a failing turboOCI-apply is undone all the same."""
    layer = await unpack_layer(obd, "layer", "", FILES)
    with broken_tool(obd, "turboOCI-apply", "erofs", "no erofs", after_real_run=False):
        error = await expect_status(layer.commit({L.BLOB_FS_TYPE: "erofs"}), Status.UNKNOWN)
    assert "no erofs" in str(error.message)
    await assert_untouched(layer)


@pytest.mark.parametrize("step", STEPS)
async def test_s13_a_conversion_killed_inside_a_step_is_rolled_back_at_start_up(
    obd: Obd, step: str, tmp_path: Path
) -> None:
    """SIGKILL while a step's tool runs: start-up rolls the commit back; it commits again."""
    layer = await unpack_layer(obd, "layer", "", FILES)
    started = tmp_path / "started"
    tool, argument = STEPS[step]
    with stalled_tool(obd, tool, started, argument):
        pending = asyncio.ensure_future(layer.commit())
        assert await wait_until(started.exists, 30.0), f"{tool} never ran"
        assert open_intents(obd) == [(layer.id, "commit")]
        obd.server.kill()
        with contextlib.suppress(Exception):
            await pending
    obd.close_channel()
    if step == "commit":
        # What a crash after the layer file and the layer's config, before the row, leaves.
        layer.commit_file.write_bytes(layer.layer_tar.read_bytes()[:4096])
        obd.config_path(layer.id).write_text("{}")
    await obd.start()
    assert open_intents(obd) == []
    assert f"commit of snapshot {layer.id} was interrupted: rolled back" in obd.server.log()
    await assert_untouched(layer)
    await assert_commits(layer)


async def test_s13_a_conversion_cut_after_its_row_committed_is_finished(obd: Obd) -> None:
    """The row says committed: start-up keeps the layer file, its config and temp/."""
    layer = await converted_layer(obd, "layer", files=FILES)
    config = obd.config_path(layer.id).read_bytes()
    obd.close_channel()
    obd.server.kill()
    plant_intent(obd, layer.id, "commit")
    await obd.start()
    assert open_intents(obd) == []
    assert f"commit of snapshot {layer.id} was interrupted: finished" in obd.server.log()
    assert obd.config_path(layer.id).read_bytes() == config
    assert layer.temp.is_dir() and layer.meta.exists() and layer.commit_file.exists()
    await obd.prepare("rootfs", "layer")
    assert await asyncio.to_thread(tree, obd.mountpoint(layer.id)) == FILES


async def test_s13_two_commits_of_one_layer_convert_it_once(obd: Obd) -> None:
    """The second Commit of the key waits for the first, then finds the key gone: the layer
    the first committed keeps its file, config and temp/."""
    layer = await unpack_layer(obd, "layer", "", FILES)
    labels = {L.TARGET_SNAPSHOT_REF: "layer"}
    outcomes = await asyncio.gather(
        obd.commit("first", layer.key, labels),
        obd.commit("second", layer.key, labels),
        return_exceptions=True,
    )
    failed = [outcome for outcome in outcomes if isinstance(outcome, GRPCError)]
    assert len(failed) == 1 and failed[0].status is Status.NOT_FOUND, outcomes
    winner = "second" if outcomes[0] is failed[0] else "first"
    assert (await obd.stat(winner)).kind == COMMITTED
    await expect_status(obd.stat("first" if winner == "second" else "second"), Status.NOT_FOUND)
    assert obd.config(layer.id)["lowers"] == [layer.lower()]
    assert layer.temp.is_dir() and layer.meta.exists()
    await obd.prepare("rootfs", winner)
    assert await asyncio.to_thread(tree, obd.mountpoint(layer.id)) == FILES
