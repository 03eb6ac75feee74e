"""DESIGN-v1 §3, §5, §6: what a new snapshot gets: its ``image_ref`` file, image layers
prepared with ``snapshot/type=image``, and the ``overlaybd.writable`` label only on overlaybd
layers."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest
from support.block import Obd
from support.block_fixtures import Images, StartObd
from support.inprocess import start_in_process
from support.simulator import MISSING

from obdsnap import snapshot_dirs
from obdsnap.labels import (
    CRI_IMAGE_REF,
    IMAGE_REF,
    SNAPSHOT_TYPE,
    SNAPSHOT_TYPE_IMAGE,
    TARGET_SNAPSHOT_REF,
    WRITABLE,
)
from obdsnap.role import is_rootfs

pytestmark = [pytest.mark.root, pytest.mark.skipif(MISSING is not None, reason=MISSING or "")]

CRI_REF = "registry.example.com/team/app:from-cri"
PLAIN_REF = "registry.example.com/team/app:plain"


def image_ref_of(obd: Obd, snapshot_id: int) -> Path:
    return obd.snapshot_dir(snapshot_id) / "image_ref"


async def plain_layer(obd: Obd, name: str = "sha256:plain") -> str:
    """A plain OCI layer, unpacked and committed as containerd does."""
    key = f"extract-1 {name}"
    await obd.prepare(key, "", {TARGET_SNAPSHOT_REF: name})
    await obd.commit(name, key)
    return name


# ---------------------------------------------------------------------- §3 image_ref


async def test_s3_image_ref_file_prefers_cri_image_ref(start_obd: StartObd) -> None:
    """DESIGN-v1 §3: image_ref = cri.image-ref (preferred) else image-ref; 0644, no newline."""
    obd = await start_obd()
    await obd.prepare("both", "", {CRI_IMAGE_REF: CRI_REF, IMAGE_REF: PLAIN_REF})
    path = image_ref_of(obd, obd.latest_id())
    assert path.read_bytes() == CRI_REF.encode()
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    await obd.prepare("plain", "", {IMAGE_REF: PLAIN_REF})
    assert image_ref_of(obd, obd.latest_id()).read_bytes() == PLAIN_REF.encode()


async def test_s3_no_image_ref_file_without_a_reference(start_obd: StartObd) -> None:
    """DESIGN-v1 §3: without either image-ref label there is nothing to write."""
    obd = await start_obd()
    await obd.prepare("bare", "", {"other": "label"})
    snapshot_id = obd.latest_id()
    assert obd.snapshot_dir(snapshot_id).is_dir()
    assert not image_ref_of(obd, snapshot_id).exists()


async def test_s3_image_ref_file_of_remote_layers(start_obd: StartObd, images: Images) -> None:
    """DESIGN-v1 §3: every new snapshot gets the file, remote layers committed at once too."""
    obd = await start_obd()
    await obd.unpack_remote(images.three)
    assert len(obd.ids()) == len(images.three.layers)
    for snapshot_id in obd.ids():
        assert image_ref_of(obd, snapshot_id).read_text() == images.three.ref


async def test_s3_image_ref_write_failure_is_only_logged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """DESIGN-v1 §3: an image_ref that cannot be written is logged; the create succeeds."""

    def refuse(path: Path, data: bytes, mode: int = 0o644) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(snapshot_dirs, "write_file_no_follow", refuse)
    node = await start_in_process(tmp_path)
    try:
        with caplog.at_level(logging.WARNING, logger=snapshot_dirs.__name__):
            await node.snapshotter.prepare("rootfs", "", {IMAGE_REF: PLAIN_REF})
        snapshot_id = node.id_of("rootfs")
        assert node.layout.snapshot_dir(snapshot_id).is_dir()
        assert not node.layout.image_ref_file(snapshot_id).exists()
        assert "could not write" in caplog.text
        assert "Permission denied" in caplog.text
    finally:
        await node.close()


# ---------------------------------------------------------------------- §5 rootfs


@pytest.mark.parametrize(
    ("key", "labels", "rootfs"),
    [
        ("c1", {}, True),
        ("c1", {SNAPSHOT_TYPE: "container"}, True),
        ("c1", {SNAPSHOT_TYPE: SNAPSHOT_TYPE_IMAGE}, False),
        ("c1", {TARGET_SNAPSHOT_REF: "sha256:x"}, False),
        ("extract-1 sha256:x", {}, False),
    ],
)
def test_s5_rootfs_is_no_snapshot_ref_and_not_type_image(
    key: str, labels: dict[str, str], rootfs: bool
) -> None:
    """DESIGN-v1 §5: rootfs = no snapshot.ref label and snapshot/type ≠ image."""
    assert is_rootfs(key, labels) is rootfs


async def test_s5_type_image_prepare_is_an_image_layer(start_obd: StartObd, images: Images) -> None:
    """DESIGN-v1 §2, §5: a Prepare with snapshot/type=image and no snapshot.ref is an image
    layer: no device (even in dir mode, on an overlaybd parent), unpacked like a plain layer."""
    obd = await start_obd(rwMode="dir")
    top = (await obd.unpack_remote(images.three))[-1]
    top_id = obd.latest_id()
    mounts = await obd.prepare("layer-4", top, {SNAPSHOT_TYPE: SNAPSHOT_TYPE_IMAGE})
    layer_id = obd.latest_id()
    assert [mount.type for mount in mounts] == ["overlay"]
    assert f"upperdir={obd.fs(layer_id)}" in mounts[0].options
    assert f"lowerdir={obd.fs(top_id)}" in ",".join(mounts[0].options)
    assert obd.configfs_entries(layer_id) == []
    assert obd.configfs_entries(top_id) == []
    assert not obd.config_path(layer_id).exists()
    assert await obd.mounts("layer-4") == mounts
    await obd.commit("sha256:layer-4", "layer-4")
    assert (await obd.stat("sha256:layer-4")).kind.name == "COMMITTED"
    # The same Prepare as a container's rootfs gets a writable device of its own.
    rootfs = await obd.prepare("rootfs", top)
    rootfs_id = obd.latest_id()
    assert rootfs[0].type == "bind"
    assert obd.configfs_entries(rootfs_id) != []


# ---------------------------------------------------------------------- §6 step 6


async def test_s6_writable_label_erased_on_normal_snapshots(start_obd: StartObd) -> None:
    """DESIGN-v1 §6 step 6: a new snapshot whose type is normal loses overlaybd.writable
    (metadata update, updated_at refreshed); its other labels stay."""
    obd = await start_obd()
    parent = await plain_layer(obd)
    rootfs = await obd.prepare("rootfs", parent, {WRITABLE: "dir", "keep": "me"})
    await obd.view("view", parent, {WRITABLE: "dev"})
    await obd.prepare("extract-2 sha256:next", parent, {TARGET_SNAPSHOT_REF: "x", WRITABLE: "dir"})
    for key in ("rootfs", "view", "extract-2 sha256:next"):
        info = await obd.stat(key)
        assert WRITABLE not in info.labels, key
        assert info.updated_at > info.created_at, key
    assert (await obd.stat("rootfs")).labels == {"keep": "me"}
    assert await obd.mounts("rootfs") == rootfs  # DESIGN-v1 §7: a normal snapshot's overlay
    assert rootfs[0].type == "overlay"


async def test_s6_writable_label_erased_over_overlaybd_parent_unless_writable(
    start_obd: StartObd, images: Images
) -> None:
    """DESIGN-v1 §6 step 6: on an overlaybd parent, a dir/dev writable layer is overlaybd and
    keeps the label; any other value makes an overlay rootfs (normal), which loses it."""
    obd = await start_obd()
    top = (await obd.unpack_remote(images.three))[-1]
    writable = await obd.prepare("writable", top, {WRITABLE: "dir"})
    kept = await obd.stat("writable")
    assert kept.labels == {WRITABLE: "dir"}
    assert kept.updated_at == kept.created_at
    overlay = await obd.prepare("overlay", top, {WRITABLE: "overlayfs"})
    assert WRITABLE not in (await obd.stat("overlay")).labels
    assert await obd.mounts("overlay") == overlay
    assert await obd.mounts("writable") == writable
    assert writable[0].source == str(obd.mountpoint(obd.own_id(writable)))
