"""DESIGN §6: acceleration layers (trace-prefetch) and recording a start-up trace.

An acceleration layer is unpacked by containerd like a plain layer, into a rw
bind of ``fs/``, but its device config is the overlaybd parent's plus
``{dir: fs}``. A container on it marks the config ``accelerationLayer``; a
container asking for ``record-trace`` gets ``recordTracePath`` into its
parent's config instead, and overlaybd writes the trace when it opens the image.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from grpclib.const import Status
from support.block import Obd
from support.block_fixtures import Images, StartObd
from support.mounts import mount_options
from support.simulator import MISSING
from support.snapshots import expect_status

from obdsnap.genproto.containerd.types import Mount
from obdsnap.labels import (
    ACCELERATION_LAYER,
    IMAGE_REF,
    RECORD_TRACE,
    RECORD_TRACE_PATH,
    TARGET_SNAPSHOT_REF,
    WRITABLE,
)

pytestmark = [pytest.mark.root, pytest.mark.skipif(MISSING is not None, reason=MISSING or "")]

ACCEL_CHAIN = "sha256:" + "ac" * 32


def accel_labels(images: Images) -> dict[str, str]:
    return {
        TARGET_SNAPSHOT_REF: ACCEL_CHAIN,
        ACCELERATION_LAYER: "yes",
        IMAGE_REF: images.three.ref,
    }


ACCEL_KEY = f"extract-accel {ACCEL_CHAIN}"


async def prepare_acceleration_layer(obd: Obd, images: Images) -> tuple[int, list[Mount]]:
    """The three-layer image, and the unpack of an acceleration layer on it begun: the top
    layer's ID and the unpack's mounts."""
    top_chain, top = await obd.unpack_top(images.three)
    mounts = await obd.prepare(ACCEL_KEY, top_chain, accel_labels(images))
    assert [(m.type, m.source, list(m.options)) for m in mounts] == [
        ("bind", str(obd.fs(obd.own_id(mounts))), ["rw", "bind"])
    ]
    return top, mounts


async def unpack_acceleration_layer(obd: Obd, images: Images) -> tuple[int, int]:
    """The three-layer image plus an acceleration layer on top: (top layer ID, accel ID)."""
    top, mounts = await prepare_acceleration_layer(obd, images)
    # The layer tar holds the trace; containerd unpacks it into fs/.
    (Path(mounts[0].source) / ".trace").write_text("trace of the start-up reads\n")
    await obd.commit(ACCEL_CHAIN, ACCEL_KEY, accel_labels(images))
    return top, obd.own_id(mounts)


async def test_acceleration_layer_config_is_the_parents_plus_its_fs(
    obd: Obd, images: Images
) -> None:
    top, mounts = await prepare_acceleration_layer(obd, images)
    accel = obd.own_id(mounts)
    key = ACCEL_KEY
    parent_config = obd.config(top)
    assert obd.config(accel) == {
        **parent_config,
        "lowers": [*parent_config["lowers"], {"dir": str(obd.fs(accel))}],
    }
    assert obd.config(accel)["resultFile"] == parent_config["resultFile"]
    # Mounts answers the same rw bind; nothing is attached for an unpack.
    assert await obd.mounts(key) == mounts
    assert obd.sim.loop_devices() == []


async def test_acceleration_layer_on_a_dir_mode_server(start_obd: StartObd, images: Images) -> None:
    """rwMode dir does not make the acceleration unpack a writable device."""
    obd = await start_obd(rwMode="dir")
    _, accel = await unpack_acceleration_layer(obd, images)
    assert obd.sim.loop_devices() == []
    assert (obd.fs(accel) / ".trace").exists()


async def test_container_on_an_acceleration_layer_marks_its_config(
    obd: Obd, images: Images, tmp_path: Path
) -> None:
    top, accel = await unpack_acceleration_layer(obd, images)
    mounts = await obd.prepare("rootfs", ACCEL_CHAIN)
    assert mount_options(mounts[0])["lowerdir"] == str(obd.mountpoint(accel))
    config = obd.config(accel)
    assert config["accelerationLayer"] is True
    assert "recordTracePath" not in config
    # The image opens with the acceleration layer (overlaybd sets it aside as the trace).
    obd.assert_attached(accel, mounted="ro")
    obd.assert_detached(top)
    rootfs = tmp_path / "rootfs"
    obd.mount_for_real(mounts[0], rootfs)
    assert (rootfs / "three.txt").read_text() == "layer 3\n"
    assert (rootfs / "bin/hello").read_text() == "hello from layer 1\n"
    obd.umount_for_real(rootfs)


async def test_writable_container_on_an_acceleration_layer_marks_both_configs(
    obd: Obd, images: Images
) -> None:
    _, accel = await unpack_acceleration_layer(obd, images)
    mounts = await obd.prepare("rootfs", ACCEL_CHAIN, {WRITABLE: "dir"})
    own = obd.own_id(mounts)
    assert obd.config(accel)["accelerationLayer"] is True
    assert obd.config(own)["accelerationLayer"] is True
    assert obd.config(own)["lowers"] == obd.config(accel)["lowers"]
    obd.assert_attached(own, mounted="rw")
    assert (Path(mounts[0].source) / "two.txt").read_text() == "layer 2\n"


@pytest.mark.parametrize("parent_kind", ["none", "plain"])
async def test_acceleration_layer_needs_an_overlaybd_parent(
    obd: Obd, images: Images, parent_kind: str
) -> None:
    parent = ""
    if parent_kind == "plain":
        await obd.prepare("plain-active")
        await obd.commit("plain", "plain-active")
        parent = "plain"
    before = {info.name for info in await obd.list_infos()}
    key = f"extract-accel {ACCEL_CHAIN}"
    await expect_status(obd.prepare(key, parent, accel_labels(images)), Status.INVALID_ARGUMENT)
    assert {info.name for info in await obd.list_infos()} == before
    await expect_status(obd.stat(key), Status.NOT_FOUND)
    assert obd.leftovers() == []


async def test_record_trace_labels_set_the_parents_trace_path(
    obd: Obd, images: Images, tmp_path: Path
) -> None:
    top_chain, top = await obd.unpack_top(images.three)
    trace = tmp_path / "start.trace"
    labels = {RECORD_TRACE: "yes", RECORD_TRACE_PATH: str(trace)}
    await obd.prepare("recording", top_chain, labels)
    config = obd.config(top)
    assert config["recordTracePath"] == str(trace)
    assert "accelerationLayer" not in config
    obd.assert_attached(top, mounted="ro")
    # overlaybd (the simulator) recorded the trace when it opened the image.
    recorded = json.loads(trace.read_text())
    assert recorded["tcmusim_trace"] == 1
    assert recorded["device"] == f"dev_{top}"


async def test_record_trace_is_ignored_on_an_acceleration_layer(
    obd: Obd, images: Images, tmp_path: Path
) -> None:
    _, accel = await unpack_acceleration_layer(obd, images)
    trace = tmp_path / "start.trace"
    labels = {RECORD_TRACE: "yes", RECORD_TRACE_PATH: str(trace)}
    await obd.prepare("rootfs", ACCEL_CHAIN, labels)
    config = obd.config(accel)
    assert config["accelerationLayer"] is True
    assert "recordTracePath" not in config
    assert not trace.exists()


async def test_a_container_without_trace_labels_clears_the_trace_path(
    obd: Obd, images: Images, tmp_path: Path
) -> None:
    top_chain, top = await obd.unpack_top(images.three)
    labels = {RECORD_TRACE: "yes", RECORD_TRACE_PATH: str(tmp_path / "trace")}
    await obd.prepare("recording", top_chain, labels)
    await obd.prepare("plain-container", top_chain)
    assert "recordTracePath" not in obd.config(top)
    # record-trace without a path (or not "yes") records nothing.
    await obd.prepare("no-path", top_chain, {RECORD_TRACE: "yes"})
    await obd.prepare("not-yes", top_chain, {RECORD_TRACE: "no", RECORD_TRACE_PATH: "/x"})
    assert "recordTracePath" not in obd.config(top)
