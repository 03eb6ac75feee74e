"""Commit of a writable layer (DESIGN-v1 §8, §22): ``writableCommit`` ``compress`` and ``seal``,
every check before a side effect, a busy device refused, and crashes settled at start-up."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
from pathlib import Path

import pytest
from grpclib.const import Status
from support.block import Obd, read_header
from support.block_fixtures import Images, Rootfs, StartObd, WritableRootfs
from support.intents import open_intents, plant_intent, slow_overlaybd_commit
from support.mounts import mount_at
from support.processes import run_async
from support.simulator import MISSING
from support.snapshots import expect_status, wait_until

from obdsnap.genproto.containerd.services.snapshots import v1 as api
from obdsnap.genproto.containerd.types import Mount
from obdsnap.labels import ACTIVE_PATH, LOCAL_COMMIT_PATH, WRITABLE, ZFILE_CONFIG
from tcmusim import layerfmt

pytestmark = [pytest.mark.root, pytest.mark.skipif(MISSING is not None, reason=MISSING or "")]

ACTIVE, COMMITTED = api.Kind(2), api.Kind(3)
SEAL = {"writableCommit": "seal"}


def sealed_file(obd: Obd, snapshot_id: int) -> Path:
    return obd.fs(snapshot_id) / "overlaybd.sealed"


def commit_file(obd: Obd, snapshot_id: int) -> Path:
    return obd.fs(snapshot_id) / "overlaybd.commit"


def assert_untouched(rootfs: Rootfs, config: bytes) -> None:
    """The writable layer, its config and its device are as the Prepare left them."""
    obd, own = rootfs.obd, rootfs.id
    assert read_header(obd.block(own) / "writable_data").kind == "data"
    assert (obd.block(own) / "writable_index").exists()
    assert obd.config_path(own).read_bytes() == config
    assert not sealed_file(obd, own).exists() and not commit_file(obd, own).exists()
    assert open_intents(obd) == []


async def test_s8_compress_commit_makes_overlaybd_commit_and_names_it(
    writable_rootfs: WritableRootfs,
) -> None:
    """DESIGN-v1 §22 writableCommit "compress": overlaybd-commit -z with zfile-config."""
    rootfs = await writable_rootfs()
    obd, own = rootfs.obd, rootfs.id
    zfile = json.dumps({"algorithm": "zstd", "blockSize": 8})
    await obd.commit("layer", "rootfs", {ZFILE_CONFIG: zfile, WRITABLE: "dir"})
    header = read_header(commit_file(obd, own))
    assert header.magic is layerfmt.Magic.ZFILE
    assert (header.algorithm, header.block_size) == ("zstd", 8 * 1024)
    labels = (await obd.stat("layer")).labels
    assert labels[LOCAL_COMMIT_PATH] == str(commit_file(obd, own))
    assert labels[WRITABLE] == "dir"
    assert not sealed_file(obd, own).exists()
    assert not (obd.block(own) / "writable_data").exists()
    child = await obd.prepare("child", "layer", {WRITABLE: "dir"})
    assert (Path(child[0].source) / "file").read_text() == "data\n"


async def test_s8_seal_commit_moves_the_sealed_layer_into_fs(
    writable_rootfs: WritableRootfs,
) -> None:
    """DESIGN-v1 §8 step 2 and 5: --seal, rename to fs/overlaybd.sealed, localcommitpath,
    zfile-config ignored, overlaybd.writable dropped, config lower {dir: fs}."""
    rootfs = await writable_rootfs(**SEAL)
    obd, own = rootfs.obd, rootfs.id
    labels = {ZFILE_CONFIG: "not even json", WRITABLE: "dir", "team": "build"}
    await obd.commit("layer", "rootfs", labels)
    sealed = sealed_file(obd, own)
    header = read_header(sealed)
    assert (header.magic, header.kind) == (layerfmt.Magic.LSMT, "sealed")
    assert not commit_file(obd, own).exists()
    for name in ("writable_data", "writable_index", "config.v1.json.writable"):
        assert not (obd.block(own) / name).exists(), name
    info = await obd.stat("layer")
    assert info.kind == COMMITTED
    expected = {ZFILE_CONFIG: "not even json", "team": "build", LOCAL_COMMIT_PATH: str(sealed)}
    assert info.labels == expected
    assert obd.config(own)["lowers"][-1] == {"dir": str(obd.fs(own))}
    assert "upper" not in obd.config(own) or not obd.config(own)["upper"]
    usage = await obd.usage("layer")
    assert usage.size >= sealed.stat().st_blocks * 512 > 0
    child = await obd.prepare("child", "layer", {WRITABLE: "dir"})
    assert (Path(child[0].source) / "file").read_text() == "data\n"


@pytest.mark.parametrize(
    ("mode", "named"), [("compress", "overlaybd.commit"), ("seal", "overlaybd.sealed")]
)
async def test_s22_q5_localcommitpath_of_an_overlaybd_commit_layer(
    start_obd: StartObd, images: Images, mode: str, named: str
) -> None:
    """DESIGN-v1 §22 quirk 5: the sealed file in seal mode (as Go), the existing file otherwise."""
    obd = await start_obd(writableCommit=mode)
    own = obd.own_id(await obd.prepare("extract-1 sha256:abc", ""))
    shutil.copyfile(images.single.layers[0].path, commit_file(obd, own))
    await obd.commit("layer", "extract-1 sha256:abc", {WRITABLE: "dir"})
    labels = (await obd.stat("layer")).labels
    assert labels[LOCAL_COMMIT_PATH] == str(obd.fs(own) / named)
    assert (WRITABLE in labels) is (mode == "compress")


async def test_s22_q2_commit_checks_come_before_any_side_effect(
    writable_rootfs: WritableRootfs,
) -> None:
    """DESIGN-v1 §22 quirk 2: NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION, then the seal."""
    rootfs = await writable_rootfs(**SEAL)
    obd, own = rootfs.obd, rootfs.id
    config = obd.config_path(own).read_bytes()
    await obd.prepare("other", "", {WRITABLE: "overlayfs"})
    await obd.commit("taken", "other")
    await expect_status(obd.commit("new", "missing"), Status.NOT_FOUND)
    await expect_status(obd.commit("taken", "rootfs"), Status.ALREADY_EXISTS)
    # Name taken and key not active: ALREADY_EXISTS first (DESIGN §1 order).
    await expect_status(obd.commit("taken", "taken"), Status.ALREADY_EXISTS)
    await expect_status(obd.commit("new", "taken"), Status.FAILED_PRECONDITION)
    assert_untouched(rootfs, config)
    obd.assert_attached(own, mounted="rw")
    await rootfs.assert_mounts_and_commits()


@pytest.mark.parametrize("mode", ["dir", "dev"])
async def test_s22_q3_a_client_mount_of_the_rootfs_does_not_make_it_busy(
    writable_rootfs: WritableRootfs, mode: str
) -> None:
    """DESIGN-v1 §9 busy rule, §22 quirk 3: only an overlay on the mountpoint makes the device
    busy; containerd's clients commit with the rootfs still mounted, and the commit goes on."""
    rootfs = await writable_rootfs(mode=mode, **SEAL)
    obd, own = rootfs.obd, rootfs.id
    target = obd.server.workdir / "container-rootfs"
    obd.mount_for_real(rootfs.mounts[0], target)
    try:
        await obd.commit("layer", "rootfs")
    finally:
        obd.umount_for_real(target)
    assert sealed_file(obd, own).exists()
    await expect_status(obd.stat("rootfs"), Status.NOT_FOUND)


async def test_s22_q3_a_device_under_an_overlay_is_not_committed(
    writable_rootfs: WritableRootfs,
) -> None:
    """DESIGN-v1 §22 quirk 3: an overlay on the device's mountpoint keeps it busy."""
    rootfs = await writable_rootfs(**SEAL)
    obd, own = rootfs.obd, rootfs.id
    config = obd.config_path(own).read_bytes()
    work = obd.server.workdir
    for name in ("upper", "work"):
        (work / name).mkdir()
    options = [f"lowerdir={obd.mountpoint(own)}", f"upperdir={work / 'upper'}"]
    overlay = Mount(
        type="overlay", source="overlay", options=[*options, f"workdir={work / 'work'}"]
    )
    obd.mount_for_real(overlay, work / "merged")
    error = await expect_status(obd.commit("layer", "rootfs"), Status.FAILED_PRECONDITION)
    assert "overlay" in str(error.message)
    assert_untouched(rootfs, config)
    obd.umount_for_real(work / "merged")
    await obd.commit("layer", "rootfs")


async def kill_inside_overlaybd_commit(rootfs: Rootfs, started: Path) -> None:
    """Commit, and SIGKILL obdsnap while its overlaybd-commit runs; then start it again."""
    obd = rootfs.obd
    with slow_overlaybd_commit(obd, started):
        pending = asyncio.ensure_future(obd.commit("layer", "rootfs"))
        assert await wait_until(started.exists, 15.0), "overlaybd-commit never ran"
        assert open_intents(obd) == [(rootfs.id, "commit")]
        obd.server.kill()
        with contextlib.suppress(Exception):
            await pending
    obd.close_channel()
    await obd.start()
    assert open_intents(obd) == []


async def test_s8_a_compress_killed_inside_overlaybd_commit_is_rolled_back(
    writable_rootfs: WritableRootfs, tmp_path: Path
) -> None:
    """DESIGN-v1 §22: compress keeps the commit intent; a SIGKILL mid-way is rolled back."""
    rootfs = await writable_rootfs()
    obd, own = rootfs.obd, rootfs.id
    config = obd.config_path(own).read_bytes()
    await kill_inside_overlaybd_commit(rootfs, tmp_path / "commit-started")
    assert f"commit of snapshot {own} was interrupted: rolled back" in obd.server.log()
    assert (await obd.stat("rootfs")).kind == ACTIVE
    await expect_status(obd.stat("layer"), Status.NOT_FOUND)
    obd.assert_detached(own)
    assert_untouched(rootfs, config)
    await rootfs.assert_mounts_and_commits()
    labels = (await obd.stat("layer")).labels
    assert labels[LOCAL_COMMIT_PATH] == str(commit_file(obd, own))


async def test_s8_a_seal_killed_inside_overlaybd_commit_is_finished(
    writable_rootfs: WritableRootfs, tmp_path: Path
) -> None:
    """DESIGN-v1 §22: seal keeps the commit intent; a sealed layer cannot be rolled back, so
    a SIGKILL during the seal finishes the commit at start-up (the seal is run again)."""
    rootfs = await writable_rootfs(**SEAL)
    obd, own = rootfs.obd, rootfs.id
    await kill_inside_overlaybd_commit(rootfs, tmp_path / "commit-started")
    assert f"commit of snapshot {own} was interrupted: finished" in obd.server.log()
    await expect_status(obd.stat("rootfs"), Status.NOT_FOUND)
    info = await obd.stat("layer")
    assert (info.kind, info.labels) == (COMMITTED, {LOCAL_COMMIT_PATH: str(sealed_file(obd, own))})
    assert read_header(sealed_file(obd, own)).kind == "sealed"
    for name in ("writable_data", "writable_index", "commit_request.json"):
        assert not (obd.block(own) / name).exists(), name
    child = await obd.prepare("child", "layer", {WRITABLE: "dir"})
    assert (Path(child[0].source) / "file").read_text() == "data\n"


async def restart_with_intent(obd: Obd, snapshot_id: int) -> None:
    obd.close_channel()
    obd.server.kill()
    plant_intent(obd, snapshot_id, "commit")
    await obd.start()
    assert open_intents(obd) == []


async def test_s8_a_seal_cut_after_its_move_into_fs_is_finished(
    writable_rootfs: WritableRootfs,
) -> None:
    """DESIGN-v1 §22 (seal keeps the commit intent): once sealed, the commit cannot be rolled
    back; a crash after the move into fs/ and before the row is finished at start-up."""
    rootfs = await writable_rootfs(**SEAL)
    obd, own = rootfs.obd, rootfs.id
    block = obd.block(own)
    # What the commit did before the crash: detach, keep its request, seal, move the file.
    obd.close_channel()
    obd.server.kill()
    obd.detach_like_reboot(own)
    (block / "backstore_mark").unlink()
    labels = {"team": "build", LOCAL_COMMIT_PATH: str(sealed_file(obd, own))}
    request = {"name": "layer", "labels": labels}
    (block / "commit_request.json").write_text(json.dumps(request))
    tool = obd.sim.tools_dir / "overlaybd-commit"
    await run_async(tool, "--seal", block / "writable_data", block / "writable_index")
    (block / "writable_data").rename(sealed_file(obd, own))
    plant_intent(obd, own, "commit")
    await obd.start()
    assert open_intents(obd) == []
    assert f"commit of snapshot {own} was interrupted: finished" in obd.server.log()
    info = await obd.stat("layer")
    assert (info.kind, info.labels) == (COMMITTED, labels)
    await expect_status(obd.stat("rootfs"), Status.NOT_FOUND)
    for name in ("writable_index", "commit_request.json"):
        assert not (block / name).exists(), name
    assert obd.config(own)["lowers"][-1] == {"dir": str(obd.fs(own))}
    child = await obd.prepare("child", "layer", {WRITABLE: "dir"})
    assert (Path(child[0].source) / "file").read_text() == "data\n"


async def test_s8_a_seal_cut_while_keeping_its_request_is_rolled_back(
    writable_rootfs: WritableRootfs,
) -> None:
    """DESIGN-v1 §22: the seal starts only once its request is kept whole, so a crash while
    the request is written (an empty one, as a write in place left it, and the temporary
    file of a write by rename) had sealed nothing: the commit is rolled back, and the
    start-up goes on."""
    rootfs = await writable_rootfs(**SEAL)
    obd, own = rootfs.obd, rootfs.id
    block = obd.block(own)
    config = obd.config_path(own).read_bytes()
    (block / "commit_request.json").write_bytes(b"")
    (block / ".commit_request.json.k2p9xw").write_bytes(b'{"name": "lay')
    await restart_with_intent(obd, own)
    assert f"commit of snapshot {own} was interrupted: rolled back" in obd.server.log()
    assert (await obd.stat("rootfs")).kind == ACTIVE
    await expect_status(obd.stat("layer"), Status.NOT_FOUND)
    assert not (block / "commit_request.json").exists()
    assert_untouched(rootfs, config)
    await rootfs.assert_mounts_and_commits()


async def test_s8_a_seal_cut_after_its_row_committed_is_finished(
    writable_rootfs: WritableRootfs,
) -> None:
    """DESIGN-v1 §8: the row says committed: what is left of the writable layer goes."""
    rootfs = await writable_rootfs(**SEAL)
    obd, own = rootfs.obd, rootfs.id
    await obd.commit("layer", "rootfs")
    leftovers = [obd.block(own) / name for name in ("writable_index", "config.v1.json.writable")]
    for leftover in leftovers:
        leftover.write_bytes(b"left by a crash")
    await restart_with_intent(obd, own)
    assert f"commit of snapshot {own} was interrupted: finished" in obd.server.log()
    assert [path for path in leftovers if path.exists()] == []
    assert read_header(sealed_file(obd, own)).kind == "sealed"
    child = await obd.prepare("child", "layer", {WRITABLE: "dir"})
    assert (Path(child[0].source) / "file").read_text() == "data\n"


async def test_s22_q4_seal_happens_where_the_layer_was_created(
    start_obd: StartObd, tmp_path: Path
) -> None:
    """DESIGN-v1 §22 quirk 4: an overlay.active.path layer is sealed there, then moved to fs/."""
    obd = await start_obd(rwMode="dir", **SEAL)
    place = tmp_path / "active"
    mounts = await obd.prepare("rootfs", "", {ACTIVE_PATH: str(place)})
    own = obd.own_id(mounts)
    (Path(mounts[0].source) / "file").write_text("outside\n")
    await obd.commit("layer", "rootfs")
    assert not (place / "writable_data").exists() and not (place / "writable_index").exists()
    assert read_header(sealed_file(obd, own)).kind == "sealed"
    assert not (obd.block(own) / "writable_location").exists()
    child = await obd.prepare("child", "layer", {WRITABLE: "dir"})
    assert (Path(child[0].source) / "file").read_text() == "outside\n"


async def test_s8_buildkit_flow_dev_prepare_seal_and_commit_sealed(
    start_obd: StartObd, tmp_path: Path
) -> None:
    """DESIGN-v1 §8, §23 item 2: buildkit prepares with overlaybd.writable=dev, writes, commits;
    localcommitpath names the sealed file, and overlaybd-commit --commit_sealed makes a ZFile."""
    obd = await start_obd(**SEAL)
    mounts = await obd.prepare("build", "", {WRITABLE: "dev"})
    assert mounts[0].source.startswith("/dev/")
    own = obd.own_id(mounts)
    target = tmp_path / "mnt"
    obd.mount_for_real(mounts[0], target)
    (target / "built").write_text("by the builder\n")
    obd.umount_for_real(target)
    await obd.commit("built-layer", "build", {WRITABLE: "dev"})
    sealed = Path((await obd.stat("built-layer")).labels[LOCAL_COMMIT_PATH])
    assert sealed == sealed_file(obd, own)
    tool = obd.sim.tools_dir / "overlaybd-commit"
    # The blob to push: a ZFile in a one-member tar.
    blob = tmp_path / "layer.blob"
    await run_async(tool, "--commit_sealed", sealed, blob, "-z", "-t")
    with blob.open("rb") as layer:
        layer.seek(layerfmt.TAR_BLOCK)
        assert layerfmt.magic_of_bytes(layer.read(32)) is layerfmt.Magic.ZFILE
    # The local layer file, served instead of the sealed one.
    out = obd.fs(own) / "overlaybd.commit.temp"
    await run_async(tool, "--commit_sealed", sealed, out, "-z")
    assert read_header(out).magic is layerfmt.Magic.ZFILE
    out.rename(commit_file(obd, own))
    await asyncio.to_thread(sealed.unlink)
    child = await obd.prepare("child", "built-layer", {WRITABLE: "dir"})
    assert (Path(child[0].source) / "built").read_text() == "by the builder\n"
    assert mount_at(Path(child[0].source)) is not None
