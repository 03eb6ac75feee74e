"""DESIGN-v1 §11 and §14: the device's file system, the EROFS sniff, and EROFS being read-only.

The fs type is the ``blob-fs-type`` label, else the TurboOCI metas', else
``defaultFsType``; then an EROFS superblock on the device makes it EROFS (never
the reverse). A writable layer on an EROFS image is refused.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from grpclib.const import Status
from support.block import Image, Obd
from support.block_fixtures import Images, StartObd
from support.mounts import mount_at
from support.simulator import MISSING
from support.snapshots import expect_status, wait_until
from support.turbo import unpack_turbo

from obdsnap.labels import BLOB_FS_TYPE, WRITABLE

from .conftest import EROFS_FILES, TurboImages

pytestmark = [pytest.mark.root, pytest.mark.skipif(MISSING is not None, reason=MISSING or "")]


async def assert_refused_and_gone(obd: Obd, key: str, parent: str, status: Status) -> str:
    """Prepare ``key`` fails with ``status``; no snapshot, directory or device is left of it."""
    before = obd.ids()
    error = await expect_status(obd.prepare(key, parent), status)
    await expect_status(obd.stat(key), Status.NOT_FOUND)
    assert await wait_until(lambda: obd.ids() == before, 10.0), (obd.ids(), before)
    return error.message or ""


@pytest.mark.parametrize("labels", [{}, {BLOB_FS_TYPE: "ext4"}], ids=["no-label", "ext4-label"])
async def test_an_erofs_image_is_mounted_as_erofs(
    obd: Obd, erofs_image: Image, tmp_path: Path, labels: dict[str, str]
) -> None:
    """§11 sniff: the superblock says EROFS, whatever the label or default chose."""
    chain_id, unpack_labels = erofs_image.layer_labels(labels)
    await expect_status(
        obd.prepare(f"extract {chain_id}", "", unpack_labels), Status.ALREADY_EXISTS
    )
    top_id = obd.latest_id()
    rootfs = tmp_path / "rootfs"
    await obd.mount_container("container", chain_id, rootfs)
    entry = mount_at(obd.mountpoint(top_id))
    assert entry is not None and entry.fs_type == "erofs", entry
    assert entry.options.split(",")[0] == "ro"
    assert "discard" not in entry.super_options
    for name, content in EROFS_FILES.items():
        assert (rootfs / name).read_text() == content
    obd.umount_for_real(rootfs)
    # A second container shares the device; the sniff is not fooled by the mount.
    await obd.prepare("container-2", chain_id)
    assert mount_at(obd.mountpoint(top_id)) == entry


async def test_default_fs_type_erofs_fails_to_mount_a_label_less_ext4_image(
    start_obd: StartObd, images: Images
) -> None:
    """§14's known limit: the sniff only upgrades to EROFS; the error is clear, and the server
    keeps serving (a labelled image still mounts)."""
    obd = await start_obd(defaultFsType="erofs")
    top_chain, top_id = await obd.unpack_top(images.single)
    message = await assert_refused_and_gone(obd, "container", top_chain, Status.UNKNOWN)
    assert "erofs" in message and "mount" in message, message
    obd.assert_detached(top_id)
    labelled = images.three
    chain = labelled.chain_ids
    parent = ""
    for index in range(len(chain)):
        _, labels = labelled.layer_labels({BLOB_FS_TYPE: "ext4"}, index)
        await expect_status(
            obd.prepare(f"x{index} {chain[index]}", parent, labels), Status.ALREADY_EXISTS
        )
        parent = chain[index]
    mounts = await obd.prepare("container-ext4", chain[-1])
    assert mounts[0].type == "overlay"
    entry = mount_at(obd.mountpoint(obd.latest_id() - 1))
    assert entry is not None and entry.fs_type == "ext4"


@pytest.mark.parametrize("mode", ["dir", "dev"])
async def test_a_writable_layer_on_an_erofs_image_is_refused(
    start_obd: StartObd, erofs_image: Image, mode: str
) -> None:
    obd = await start_obd(rwMode=mode)
    chain_id, labels = erofs_image.layer_labels()
    await expect_status(obd.prepare(f"extract {chain_id}", "", labels), Status.ALREADY_EXISTS)
    message = await assert_refused_and_gone(obd, "container", chain_id, Status.FAILED_PRECONDITION)
    assert "erofs" in message and "read-only" in message, message
    # Still serving: a rootfs that asks for an overlay on the same image is made.
    mounts = await obd.prepare("overlay-container", chain_id, {WRITABLE: "overlayfs"})
    assert mounts[0].type == "overlay"


async def test_a_writable_layer_on_an_erofs_turbo_image_is_refused(
    start_obd: StartObd, turbo: TurboImages
) -> None:
    obd = await start_obd(rwMode="dir")
    await unpack_turbo(obd, turbo.plain, ("erofs",))
    top = turbo.plain.layers[-1].chain_id
    message = await assert_refused_and_gone(obd, "container", top, Status.FAILED_PRECONDITION)
    assert "erofs" in message, message


async def test_default_fs_type_erofs_never_makes_a_fresh_writable_layer(
    start_obd: StartObd,
) -> None:
    """No parent, rwMode dir: the new device would be mkfs'ed as EROFS, which is read-only."""
    obd = await start_obd(rwMode="dir", defaultFsType="erofs")
    message = await assert_refused_and_gone(obd, "container", "", Status.FAILED_PRECONDITION)
    assert "erofs" in message, message
    # The server goes on: with an ext4 label the same rootfs is made.
    await obd.prepare("container", "", {BLOB_FS_TYPE: "ext4"})
