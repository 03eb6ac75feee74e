"""DESIGN §3: a snapshot's storage type, seen through what obdsnap does with it.

containerd unpacks an overlaybd *local-format* image (layer tars holding one
file, ``overlaybd.commit``) like any image: Prepare with ``snapshot.ref`` but
no blob labels, apply the tar into the returned mount, Commit. A committed
layer whose ``fs/overlaybd.commit`` has the overlaybd magic is a local block
layer; without the magic it stays a plain layer.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support.block import Image, Obd, read_header
from support.block_fixtures import Images, StartObd
from support.mounts import mount_at, mount_options
from support.simulator import MISSING

from obdsnap.genproto.containerd.types import Mount
from obdsnap.labels import (
    BLOB_DIGEST,
    BLOB_SIZE,
    IMAGE_REF,
    LOCAL_COMMIT_PATH,
    TARGET_SNAPSHOT_REF,
    WRITABLE,
)

pytestmark = [pytest.mark.root, pytest.mark.skipif(MISSING is not None, reason=MISSING or "")]


async def unpack_local(obd: Obd, image: Image, *, blobs: list[bytes] | None = None) -> list[int]:
    """containerd's unpack of a local-format image: each layer tar holds ``overlaybd.commit``.

    The layer's file is written into the mount Prepare returned, as applying the
    layer tar would; ``blobs`` replaces the file contents. The snapshot IDs.
    """
    ids: list[int] = []
    parent = ""
    for index, chain_id in enumerate(image.chain_ids):
        key = f"extract-{index} {chain_id}"
        labels = {TARGET_SNAPSHOT_REF: chain_id, IMAGE_REF: image.ref}
        mounts = await obd.prepare(key, parent, labels)
        content = image.layers[index].path.read_bytes() if blobs is None else blobs[index]
        write_into_mount(mounts, "overlaybd.commit", content)
        ids.append(obd.own_id(mounts))
        await obd.commit(chain_id, key, labels)
        parent = chain_id
    return ids


def write_into_mount(mounts: list[Mount], name: str, content: bytes) -> None:
    """Write a file into the directory containerd would apply a layer tar to."""
    assert len(mounts) == 1
    mount = mounts[0]
    # For an overlay the upper dir is where the layer's files land.
    upper = mount.source if mount.type == "bind" else mount_options(mount)["upperdir"]
    target = Path(upper)
    (target / name).write_bytes(content)


async def test_remote_labels_make_a_remote_block_layer(obd: Obd, images: Images) -> None:
    chain = await obd.unpack_remote(images.single)
    remote_id = obd.latest_id()
    mounts = await obd.prepare("rootfs", chain[0])
    assert mount_options(mounts[0])["lowerdir"] == str(obd.mountpoint(remote_id))
    obd.assert_attached(remote_id, mounted="ro")


@pytest.mark.parametrize(
    "missing", [BLOB_DIGEST, BLOB_SIZE, IMAGE_REF], ids=["no-digest", "no-size", "no-image-ref"]
)
async def test_remote_needs_every_remote_label(obd: Obd, images: Images, missing: str) -> None:
    """Without one of the labels the layer is unpacked normally: a rw bind of ``fs/``."""
    chain_id, labels = images.single.layer_labels()
    del labels[missing]
    mounts = await obd.prepare(f"extract-1 {chain_id}", "", labels)
    own = obd.own_id(mounts)
    assert [(m.type, m.source, list(m.options)) for m in mounts] == [
        ("bind", str(obd.fs(own)), ["rw", "rbind"])
    ]
    assert not obd.config_path(own).exists()
    assert (await obd.stat(f"extract-1 {chain_id}")).kind.name == "ACTIVE"


@pytest.mark.parametrize("zfile", [False, True], ids=["lsmt", "zfile"])
async def test_overlaybd_commit_with_magic_makes_a_local_block_layer(
    obd: Obd, images: Images, zfile: bool
) -> None:
    image = images.zfile if zfile else images.single
    [layer_id] = await unpack_local(obd, image)
    chain_id = image.chain_ids[0]

    info = await obd.stat(chain_id)
    assert info.labels[LOCAL_COMMIT_PATH] == str(obd.fs(layer_id) / "overlaybd.commit")
    assert obd.config(layer_id) == {
        "repoBlobUrl": "",
        "lowers": [{"dir": str(obd.fs(layer_id))}],
        "upper": {},
        "resultFile": str(obd.block(layer_id) / "init-debug.log"),
    }
    obd.assert_detached(layer_id)

    # A container on it gets the layer's device.
    mounts = await obd.prepare("rootfs", chain_id)
    assert mount_options(mounts[0])["lowerdir"] == str(obd.mountpoint(layer_id))
    obd.assert_attached(layer_id, mounted="ro")
    name = "z.txt" if zfile else "single.txt"
    assert (obd.mountpoint(layer_id) / name).exists()


async def test_local_block_layers_stack_their_lowers_parent_first(
    obd: Obd, images: Images, tmp_path: Path
) -> None:
    ids = await unpack_local(obd, images.three)
    top = ids[-1]
    assert obd.config(top)["lowers"] == [{"dir": str(obd.fs(i))} for i in ids]
    for index, snapshot_id in enumerate(ids):
        assert obd.config(snapshot_id)["lowers"] == [
            {"dir": str(obd.fs(i))} for i in ids[: index + 1]
        ]

    mounts = await obd.prepare("rootfs", images.three.chain_ids[-1])
    rootfs = tmp_path / "rootfs"
    obd.mount_for_real(mounts[0], rootfs)
    assert (rootfs / "bin/hello").read_text() == "hello from layer 1\n"
    assert not (rootfs / "data/gone").exists()
    assert (rootfs / "two.txt").read_text() == "layer 2\n"
    assert (rootfs / "etc/os-release").read_text() == "layer3\n"
    obd.umount_for_real(rootfs)


async def test_overlaybd_commit_without_magic_stays_a_normal_layer(
    obd: Obd, images: Images
) -> None:
    not_a_layer = b"this is not an overlaybd layer file" * 10
    [layer_id] = await unpack_local(obd, images.single, blobs=[not_a_layer])
    chain_id = images.single.chain_ids[0]

    info = await obd.stat(chain_id)
    assert LOCAL_COMMIT_PATH not in info.labels
    assert not obd.config_path(layer_id).exists()
    # A container on it is a plain overlay on the layer's fs/, and the writable
    # label cannot make a block device of it (DESIGN §5).
    for key, labels in (("rootfs", {}), ("rootfs-dir", {WRITABLE: "dir"})):
        mounts = await obd.prepare(key, chain_id, labels)
        assert mounts[0].type == "overlay"
        assert mount_options(mounts[0])["lowerdir"] == str(obd.fs(layer_id))
    assert obd.sim.loop_devices() == []


async def test_short_file_with_magic_prefix_counts_as_zero_padded(obd: Obd, images: Images) -> None:
    """Only the first 24 bytes matter; a file shorter than the 32-byte header is padded."""
    header = images.single.layers[0].path.read_bytes()[:24]
    [layer_id] = await unpack_local(obd, images.single, blobs=[header])
    assert LOCAL_COMMIT_PATH in (await obd.stat(images.single.chain_ids[0])).labels
    assert obd.config(layer_id)["lowers"] == [{"dir": str(obd.fs(layer_id))}]


async def test_empty_overlaybd_commit_falls_through_to_normal(obd: Obd, images: Images) -> None:
    [layer_id] = await unpack_local(obd, images.single, blobs=[b""])
    assert LOCAL_COMMIT_PATH not in (await obd.stat(images.single.chain_ids[0])).labels
    assert not obd.config_path(layer_id).exists()


async def test_unpack_prepare_is_never_a_writable_rootfs_even_with_rw_mode_dir(
    start_obd: StartObd, images: Images
) -> None:
    obd = await start_obd(rwMode="dir")
    chain_id = images.single.chain_ids[0]
    labels = {TARGET_SNAPSHOT_REF: chain_id, IMAGE_REF: images.single.ref}
    mounts = await obd.prepare(f"extract-1 {chain_id}", "", labels)
    own = obd.own_id(mounts)
    write_into_mount(mounts, "overlaybd.commit", images.single.layers[0].path.read_bytes())
    await obd.commit(chain_id, f"extract-1 {chain_id}", labels)
    # What the image's containers see: the layer's files (the image's own lost+found
    # included), not one file overlaybd.commit on a device of the unpack's own.
    await obd.prepare("rootfs", chain_id, {WRITABLE: "overlayfs"})
    assert sorted(os.listdir(obd.mountpoint(own))) == ["lost+found", "single.txt"]
    blob = images.single.layers[0].path.read_bytes()
    assert (obd.fs(own) / "overlaybd.commit").read_bytes() == blob


async def test_unpack_prepare_on_a_block_parent_attaches_no_device(
    obd: Obd, images: Images
) -> None:
    [first] = await unpack_local(obd, Image(images.three.ref, images.three.layers[:1]))
    chain = images.three.chain_ids
    labels = {TARGET_SNAPSHOT_REF: chain[1], IMAGE_REF: images.three.ref}
    mounts = await obd.prepare(f"extract-2 {chain[1]}", chain[0], labels)
    try:
        assert mount_options(mounts[0])["lowerdir"] == str(obd.fs(first))
        obd.assert_detached(first)
    finally:
        await obd.remove(f"extract-2 {chain[1]}")


async def test_a_committed_writable_layer_is_a_local_block_parent(start_obd: StartObd) -> None:
    """A dir-mode layer: writable_data (LSMT magic) while active, fs/overlaybd.commit (ZFile)
    once committed; its children see a block parent."""
    obd = await start_obd(rwMode="dir")
    mounts = await obd.prepare("w")
    own = obd.own_id(mounts)
    header = read_header(obd.block(own) / "writable_data")
    assert (header.kind, header.magic.name) == ("data", "LSMT")
    await obd.commit("W", "w")
    assert read_header(obd.fs(own) / "overlaybd.commit").magic.name == "ZFILE"
    child = await obd.prepare("child", "W", {WRITABLE: "overlayfs"})
    assert mount_options(child[0])["lowerdir"] == str(obd.mountpoint(own))
    assert mount_at(obd.mountpoint(own)) is not None
