"""A writable (``dir``/``dev``) layer's creation (DESIGN-v1 §6 step 5): ``overlay.active.path``,
reuse of a layer found there, the ``vsize`` rules, and record-trace in the layer's own config."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest
from grpclib.const import Status
from support.block import Obd, read_header
from support.block_fixtures import Images, StartObd
from support.processes import run_async
from support.simulator import MISSING
from support.snapshots import expect_status

from obdsnap.labels import ACTIVE_PATH, RECORD_TRACE, RECORD_TRACE_PATH, VSIZE
from tcmusim.testing import only

pytestmark = [pytest.mark.root, pytest.mark.skipif(MISSING is not None, reason=MISSING or "")]

GIB = 1 << 30
READ_ONLY = "local block device is readonly, not support writable"


async def make_layer(obd: Obd, place: Path, vsize_gb: int = 1, *, mkfs: bool = False) -> None:
    """A writable layer made by overlaybd-create, as another tool run would leave it."""
    await asyncio.to_thread(place.mkdir, parents=True, exist_ok=True)
    tool = obd.sim.tools_dir / "overlaybd-create"
    files = (place / "writable_data", place / "writable_index")
    await run_async(tool, *files, str(vsize_gb), *(["--mkfs"] if mkfs else []))


async def test_s6_active_path_holds_the_writable_layer(start_obd: StartObd, tmp_path: Path) -> None:
    """DESIGN-v1 §6 step 5: overlay.active.path is where writable_data/_index are made (0700)."""
    obd = await start_obd(rwMode="dir")
    place = tmp_path / "deep" / "active"
    mounts = await obd.prepare("rootfs", "", {ACTIVE_PATH: str(place)})
    own = obd.own_id(mounts)
    assert (place.stat().st_mode & 0o777) == 0o700
    assert read_header(place / "writable_data").kind == "data"
    assert read_header(place / "writable_index").kind == "index"
    assert not (obd.block(own) / "writable_data").exists()
    upper = obd.config(own)["upper"]
    assert upper == {
        "index": str(place / "writable_index"),
        "data": str(place / "writable_data"),
        "vsize": 64,
    }
    (Path(mounts[0].source) / "file").write_text("kept on the device\n")
    # obdsnap made these files: its Remove takes them, and leaves the directory.
    await obd.remove("rootfs")
    assert sorted(os.listdir(place)) == []


@pytest.mark.parametrize(
    "path",
    ["relative/dir", "/proc/obdsnap", "/sys/x", "/dev/shm/x", "/var/../etc", "/a//b", "/a/b/"],
)
async def test_s6_active_path_must_be_clean_absolute_and_harmless(
    start_obd: StartObd, path: str
) -> None:
    """DESIGN-v1 §6 step 5: the label is a directory obdsnap writes as root: INVALID_ARGUMENT."""
    obd = await start_obd(rwMode="dir")
    await expect_status(obd.prepare("rootfs", "", {ACTIVE_PATH: path}), Status.INVALID_ARGUMENT)
    await expect_status(obd.stat("rootfs"), Status.NOT_FOUND)


async def test_s6_active_path_may_not_be_under_the_root(start_obd: StartObd) -> None:
    """DESIGN-v1 §6 step 5: obdsnap's own root is off limits, as for the trace path."""
    obd = await start_obd(rwMode="dir")
    inside = obd.root / "snapshots" / "elsewhere"
    error = await expect_status(
        obd.prepare("rootfs", "", {ACTIVE_PATH: str(inside)}), Status.INVALID_ARGUMENT
    )
    assert "may not be under" in str(error.message)
    assert not inside.exists()


async def test_s6_an_active_path_on_an_overlayfs_rootfs_is_ignored(
    start_obd: StartObd, tmp_path: Path
) -> None:
    """DESIGN-v1 §6 step 5: only a writable (dir/dev) layer reads the label."""
    obd = await start_obd()
    mounts = await obd.prepare("rootfs", "", {ACTIVE_PATH: "relative"})
    assert mounts[0].type == "bind"


async def test_s22_q4_an_existing_layer_in_active_path_is_reused(
    start_obd: StartObd, tmp_path: Path
) -> None:
    """DESIGN-v1 §6 step 5 and §22 quirk 4: both files there → nothing run, the layer reused,
    its data kept; obdsnap never deletes a layer it found."""
    obd = await start_obd(rwMode="dir")
    place = tmp_path / "persistent"
    await make_layer(obd, place, mkfs=True)
    inode = (place / "writable_data").stat().st_ino
    first = await obd.prepare("first", "", {ACTIVE_PATH: str(place)})
    assert (place / "writable_data").stat().st_ino == inode
    (Path(first[0].source) / "state").write_text("from the first container\n")
    await obd.remove("first")
    assert (place / "writable_data").stat().st_ino == inode
    assert (place / "writable_index").exists()
    # The next container on that directory finds the first one's files: no mkfs on reuse.
    second = await obd.prepare("second", "", {ACTIVE_PATH: str(place)})
    assert (Path(second[0].source) / "state").read_text() == "from the first container\n"


async def test_s6_a_reused_layer_keeps_its_size(start_obd: StartObd, tmp_path: Path) -> None:
    """DESIGN-v1 §6 step 5: a layer found in place keeps its size; only a new one gets vsize."""
    obd = await start_obd(rwMode="dev")
    place = tmp_path / "made"
    await make_layer(obd, place, vsize_gb=2)
    mounts = await obd.prepare("rootfs", "", {ACTIVE_PATH: str(place), VSIZE: "5"})
    assert mounts[0].source.startswith("/dev/")
    assert read_header(place / "writable_data").virtual_size == 2 * GIB


async def test_s6_a_compressed_layer_file_in_active_path_is_refused(
    start_obd: StartObd, images: Images, tmp_path: Path
) -> None:
    """DESIGN-v1 §6 step 5: a read-only layer as writable_data → the Go message, no change."""
    obd = await start_obd(rwMode="dir")
    place = tmp_path / "readonly"
    place.mkdir()
    shutil.copyfile(images.zfile.layers[0].path, place / "writable_data")
    (place / "writable_index").write_bytes(b"")
    before = (place / "writable_data").read_bytes()
    error = await expect_status(
        obd.prepare("rootfs", "", {ACTIVE_PATH: str(place)}), Status.FAILED_PRECONDITION
    )
    assert READ_ONLY in str(error.message)
    assert (place / "writable_data").read_bytes() == before
    assert (place / "writable_index").exists()
    await expect_status(obd.stat("rootfs"), Status.NOT_FOUND)


@pytest.mark.parametrize(
    ("present", "reason"),
    [
        ({"writable_data": b"no magic here", "writable_index": b""}, "not an overlaybd"),
        ({"writable_data": b"a lone data file"}, "incomplete: no writable_index"),
    ],
)
async def test_s6_what_is_no_writable_layer_is_refused(
    start_obd: StartObd, tmp_path: Path, present: dict[str, bytes], reason: str
) -> None:
    """DESIGN-v1 §6 step 5: half a layer, or a magic-less file, is neither reused nor clobbered."""
    obd = await start_obd(rwMode="dir")
    place = tmp_path / "odd"
    place.mkdir()
    for name, content in present.items():
        (place / name).write_bytes(content)
    error = await expect_status(
        obd.prepare("rootfs", "", {ACTIVE_PATH: str(place)}), Status.FAILED_PRECONDITION
    )
    assert reason in str(error.message)
    assert {name: (place / name).read_bytes() for name in os.listdir(place)} == present


async def test_s6_a_failed_prepare_deletes_only_the_layer_it_created(
    start_obd: StartObd, tmp_path: Path
) -> None:
    """DESIGN-v1 §6 step 5: the undo of a failed create takes the files it made in active.path."""
    obd = await start_obd(rwMode="dir")
    place = tmp_path / "undone"
    obd.sim.control.set(fail_open=only("cannot open", 1))
    await expect_status(obd.prepare("rootfs", "", {ACTIVE_PATH: str(place)}), Status.UNKNOWN)
    assert os.listdir(place) == []
    obd.sim.control.clear()
    await make_layer(obd, place)
    obd.sim.control.set(fail_open=only("cannot open", 2))
    await expect_status(obd.prepare("again", "", {ACTIVE_PATH: str(place)}), Status.UNKNOWN)
    assert sorted(os.listdir(place)) == ["writable_data", "writable_index"]


@pytest.mark.parametrize(
    ("label", "gigabytes"), [("3", 3), ("+2", 2), ("three", 64), (" 3", 64), ("0", 64), (None, 64)]
)
async def test_s6_vsize_label_sizes_a_layer_without_parent(
    start_obd: StartObd, label: str | None, gigabytes: int
) -> None:
    """DESIGN-v1 §2, §6 step 5: vsize label in GB; absent or unparsable → 64; in upper.vsize."""
    obd = await start_obd(rwMode="dev")
    labels = {} if label is None else {VSIZE: label}
    own = obd.own_id(await obd.prepare("rootfs", "", labels))
    assert read_header(obd.block(own) / "writable_data").virtual_size == gigabytes * GIB
    assert obd.config(own)["upper"]["vsize"] == gigabytes


async def test_s6_vsize_is_ignored_with_a_parent(start_obd: StartObd, images: Images) -> None:
    """DESIGN-v1 §6 step 5: with a parent, overlaybd-create gets 0 and upper.vsize is omitted."""
    obd = await start_obd(rwMode="dir")
    top, top_id = await obd.unpack_top(images.three)
    own = obd.own_id(await obd.prepare("rootfs", top, {VSIZE: "2"}))
    assert "vsize" not in obd.config(own)["upper"]
    lower_size = read_header(images.three.layers[-1].path).virtual_size
    assert read_header(obd.block(own) / "writable_data").virtual_size == lower_size
    assert top_id != own


async def test_s6_record_trace_goes_into_the_writable_layer_config(
    start_obd: StartObd, images: Images, tmp_path: Path
) -> None:
    """DESIGN-v1 §6 step 5, §18: the trace path is in the parent's and the own config."""
    obd = await start_obd(rwMode="dir")
    top, top_id = await obd.unpack_top(images.three)
    trace = tmp_path / "trace"
    await asyncio.to_thread(trace.write_bytes, b"")
    place = tmp_path / "active"
    labels = {RECORD_TRACE: "yes", RECORD_TRACE_PATH: str(trace), ACTIVE_PATH: str(place)}
    own = obd.own_id(await obd.prepare("rootfs", top, labels))
    assert obd.config(own)["recordTracePath"] == str(trace)
    assert obd.config(top_id)["recordTracePath"] == str(trace)
    assert obd.config(own)["upper"]["data"] == str(place / "writable_data")
    assert trace.stat().st_size > 0  # the simulator recorded the start of the device
