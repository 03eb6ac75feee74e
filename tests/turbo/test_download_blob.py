"""DESIGN-v1 §6 step 2.3 and §18: ``download-remote-blob=download`` (``ctr rpull
--download-blobs``): the remote layer is unpacked locally instead of being skipped.

Prepare writes the remote config and answers a bind of ``fs/``; containerd
unpacks the overlaybd blob (a tar of ``overlaybd.commit``) there and Commits;
the layer stays remote by its labels, and overlaybd finds the local file in the
top lower's ``dir``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from grpclib.const import Status
from support.block import Obd
from support.block_fixtures import Images
from support.simulator import MISSING
from support.snapshots import expect_status
from support.turbo import turbo_labels, unpack_turbo_layer, write_metas

from obdsnap.labels import DOWNLOAD_REMOTE_BLOB, REMOTE

from .conftest import TurboImages

pytestmark = [pytest.mark.root, pytest.mark.skipif(MISSING is not None, reason=MISSING or "")]

DOWNLOAD = {DOWNLOAD_REMOTE_BLOB: "download"}


def fs_bind(obd: Obd, snapshot_id: int) -> list[tuple[str, str, list[str]]]:
    return [("bind", str(obd.fs(snapshot_id)), ["rw", "bind"])]


async def test_download_prepare_binds_fs_and_the_commit_stays_remote(
    obd: Obd, images: Images, tmp_path: Path
) -> None:
    image = images.single
    chain_id, labels = image.layer_labels(DOWNLOAD)
    key = f"extract-0 {chain_id}"
    mounts = await obd.prepare(key, "", labels)
    snapshot_id = obd.latest_id()
    assert [(m.type, m.source, list(m.options)) for m in mounts] == fs_bind(obd, snapshot_id)
    assert (await obd.stat(key)).kind.name == "ACTIVE"
    assert await obd.mounts(key) == mounts
    expected = {
        "repoBlobUrl": "https://quay.io/v2/org/single/blobs",
        "lowers": [
            {
                "digest": image.layers[0].digest,
                "size": image.layers[0].size,
                "dir": str(obd.fs(snapshot_id)),
            }
        ],
        "upper": {},
        "resultFile": str(obd.block(snapshot_id) / "init-debug.log"),
    }
    assert obd.config(snapshot_id) == expected

    # containerd unpacks the blob (its overlaybd.commit) into fs/, then commits.
    shutil.copyfile(image.layers[0].path, Path(mounts[0].source) / "overlaybd.commit")
    await obd.commit(chain_id, key, labels)
    info = await obd.stat(chain_id)
    assert (info.kind.name, info.labels) == ("COMMITTED", labels)
    assert REMOTE not in info.labels
    assert obd.config(snapshot_id) == expected

    rootfs = tmp_path / "rootfs"
    await obd.mount_container("container", chain_id, rootfs)
    obd.assert_attached(snapshot_id, mounted="ro")
    assert (rootfs / "single.txt").read_text() == "single\n"
    obd.umount_for_real(rootfs)


async def test_a_download_unpack_that_is_removed_leaves_nothing(obd: Obd, images: Images) -> None:
    chain_id, labels = images.single.layer_labels(DOWNLOAD)
    key = f"extract-0 {chain_id}"
    await obd.prepare(key, "", labels)
    snapshot_id = obd.latest_id()
    await obd.remove(key)
    await expect_status(obd.stat(key), Status.NOT_FOUND)
    await obd.wait_gone(snapshot_id)


async def test_download_of_a_turbo_oci_layer_writes_the_turbo_config(
    obd: Obd, turbo: TurboImages, tmp_path: Path
) -> None:
    """§6 step 2.3: the TurboOCI form at Prepare, built again at Commit with the metas there."""
    image = turbo.plain
    _, base_id, _ = await unpack_turbo_layer(obd, image, 0, ("erofs", "ext4"))
    layer = image.layers[1]
    labels = {**turbo_labels(image, 1), **DOWNLOAD}
    key = f"extract-1 {layer.chain_id}"
    mounts = await obd.prepare(key, image.layers[0].chain_id, labels)
    snapshot_id = obd.latest_id()
    assert [(m.type, m.source, list(m.options)) for m in mounts] == fs_bind(obd, snapshot_id)

    def lower(snapshot: int, target: str) -> dict[str, str]:
        fs_dir = obd.fs(snapshot)
        return {"file": str(fs_dir / "erofs.fs.meta"), "targetDigest": target, "dir": str(fs_dir)}

    lowers = [
        lower(base_id, image.layers[0].target_digest),
        lower(snapshot_id, layer.target_digest),
    ]
    assert obd.config(snapshot_id)["lowers"] == lowers
    write_metas(obd.fs(snapshot_id), layer, ("erofs", "ext4"))
    await obd.commit(layer.chain_id, key, labels)
    assert obd.config(snapshot_id)["lowers"] == lowers
    rootfs = tmp_path / "rootfs"
    await obd.mount_container("container", layer.chain_id, rootfs)
    assert (rootfs / "two.txt").read_text() == "layer 2\n"
    obd.umount_for_real(rootfs)
