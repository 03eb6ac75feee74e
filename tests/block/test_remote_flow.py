"""DESIGN §4/§6: remote overlaybd layers, exactly as containerd's unpacker drives them.

For each layer containerd calls Prepare("extract-<n> <chainid>", parent=previous
chain ID) with the ``snapshot.ref`` and overlaybd blob labels; obdsnap commits
the layer under its chain ID at once and answers ALREADY_EXISTS, so containerd
skips the download. A container's rootfs is then an overlay on the top layer's
device, attached read-only.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from grpclib.const import Status
from support.block import Obd, remote_labels
from support.block_fixtures import Images
from support.mounts import mount_options
from support.simulator import MISSING
from support.snapshots import expect_status

from obdsnap.labels import (
    BLOB_SIZE,
    CRI_IMAGE_REF,
    IMAGE_REF,
    REMOTE,
    REMOTE_VALUE,
)

pytestmark = [pytest.mark.root, pytest.mark.skipif(MISSING is not None, reason=MISSING or "")]


def blob_dir_lowers(obd: Obd, images: Images, ids: list[int]) -> list[dict[str, object]]:
    """As the Go snapshotter writes them: each blob's dir is its own layer's fs/ (DESIGN §8)."""
    return [
        {"digest": layer.digest, "size": layer.size, "dir": str(obd.fs(snapshot_id))}
        for layer, snapshot_id in zip(images.three.layers[: len(ids)], ids, strict=True)
    ]


async def test_unpacker_flow_commits_every_layer_as_a_remote_snapshot(
    obd: Obd, images: Images
) -> None:
    image = images.three
    parent = ""
    ids: list[int] = []
    for index, (chain_id, layer) in enumerate(zip(image.chain_ids, image.layers, strict=True)):
        key = f"extract-{index}-{os.getpid()} {chain_id}"
        labels = remote_labels(chain_id, layer, image.ref)
        error = await expect_status(obd.prepare(key, parent, labels), Status.ALREADY_EXISTS)
        # The exact text (quotes included) is test_remote_layer_answer_is_... below.
        assert f'target snapshot "{chain_id}"' in (error.message or "").replace("'", '"')
        ids.append(obd.latest_id())

        # The extract key is gone; the chain ID is committed with the remote label.
        await expect_status(obd.stat(key), Status.NOT_FOUND)
        info = await obd.stat(chain_id)
        assert info.kind.name == "COMMITTED"
        assert info.parent == parent
        assert info.labels == {**labels, REMOTE: REMOTE_VALUE}

        # The device config: the parent's lowers, then this layer's blob.
        assert obd.config(ids[-1]) == {
            "repoBlobUrl": "https://registry-1.docker.io/v2/library/obdtest/blobs",
            "lowers": blob_dir_lowers(obd, images, ids),
            "upper": {},
            "resultFile": str(obd.block(ids[-1]) / "init-debug.log"),
        }
        assert os.stat(obd.config_path(ids[-1])).st_mode & 0o777 == 0o600
        # No device yet: remote layers are attached only when a container needs them.
        obd.assert_detached(ids[-1])
        parent = chain_id
    assert len(set(ids)) == 3
    assert {info.name for info in await obd.list_infos()} == set(image.chain_ids)


async def test_remote_layer_usage_counts_its_fs_and_block_now(obd: Obd, images: Images) -> None:
    """DESIGN-v1 §10: its (empty) fs/ and its block/ without the mountpoint; not 0/0."""
    chain = await obd.unpack_remote(images.three)
    ids = sorted(obd.ids())  # one snapshot per layer, IDs in the order of the Prepares
    assert len(ids) == len(chain)
    for chain_id, snapshot_id in zip(chain, ids, strict=True):
        usage = await obd.usage(chain_id)
        block = obd.block(snapshot_id)
        counted = [obd.fs(snapshot_id), block]
        counted += [entry for entry in block.iterdir() if entry.name != "mountpoint"]
        assert (usage.size, usage.inodes) == (
            sum(os.lstat(path).st_blocks * 512 for path in counted),
            len(counted),
        )
        assert usage.size > 0


async def test_remote_layer_answer_is_target_snapshot_already_exists(
    obd: Obd, images: Images
) -> None:
    chain_id, labels = images.single.layer_labels()
    error = await expect_status(
        obd.prepare(f"extract-1 {chain_id}", "", labels), Status.ALREADY_EXISTS
    )
    assert error.message == f'target snapshot "{chain_id}": already exists'


async def test_rootfs_on_remote_image_is_an_overlay_on_the_top_layer_device(
    obd: Obd, images: Images, tmp_path: Path
) -> None:
    top_chain, top_id = await obd.unpack_top(images.three)

    mounts = await obd.prepare("container-1", top_chain)
    own = obd.latest_id()
    assert len(mounts) == 1
    mount = mounts[0]
    assert (mount.type, mount.source) == ("overlay", "overlay")
    options = mount_options(mount)
    assert options["lowerdir"] == str(obd.mountpoint(top_id))
    assert options["upperdir"] == str(obd.fs(own))
    assert options["workdir"] == str(obd.snapshot_dir(own) / "work")
    assert "metacopy" not in options
    # The top layer's device, read-only; the lower layers have none of their own.
    obd.assert_attached(top_id, mounted="ro")
    for lower_id in range(top_id - 2, top_id):
        obd.assert_detached(lower_id)
    assert (obd.block(top_id) / "init-debug.log").read_text() == "success"
    assert oct(os.stat(obd.block(top_id) / "backstore_mark").st_mode & 0o777) == "0o644"

    # containerd mounts it: every layer's files, whiteouts applied.
    rootfs = tmp_path / "rootfs"
    obd.mount_for_real(mount, rootfs)
    assert (rootfs / "bin/hello").read_text() == "hello from layer 1\n"
    assert (rootfs / "data/keep").read_text() == "kept\n"
    assert not (rootfs / "data/gone").exists()
    assert sorted(os.listdir(rootfs / "opq")) == ["new"]
    assert (rootfs / "two.txt").read_text() == "layer 2\n"
    assert (rootfs / "three.txt").read_text() == "layer 3\n"
    assert (rootfs / "etc/os-release").read_text() == "layer3\n"

    # Writes land in the container's upper dir, never on the read-only device.
    (rootfs / "written.txt").write_text("by the container\n")
    (rootfs / "etc/os-release").write_text("changed\n")
    assert (obd.fs(own) / "written.txt").read_text() == "by the container\n"
    assert (obd.fs(own) / "etc/os-release").read_text() == "changed\n"
    assert not (obd.mountpoint(top_id) / "written.txt").exists()
    assert (obd.mountpoint(top_id) / "etc/os-release").read_text() == "layer3\n"

    # Mounts answers the same.
    assert await obd.mounts("container-1") == mounts
    obd.umount_for_real(rootfs)


async def test_second_container_shares_the_attached_device(obd: Obd, images: Images) -> None:
    top_chain, top_id = await obd.unpack_top(images.single)
    await obd.prepare("c1", top_chain)
    device = obd.assert_attached(top_id, mounted="ro")
    await obd.prepare("c2", top_chain)
    assert obd.assert_attached(top_id, mounted="ro") == device
    assert len(obd.sim.loop_devices()) == 1


async def test_view_of_remote_image_is_a_readonly_bind_of_the_device(
    obd: Obd, images: Images
) -> None:
    top_chain, top_id = await obd.unpack_top(images.single)
    mounts = await obd.view("view-1", top_chain)
    assert [(m.type, m.source, list(m.options)) for m in mounts] == [
        ("bind", str(obd.mountpoint(top_id)), ["ro", "rbind"])
    ]
    obd.assert_attached(top_id, mounted="ro")
    assert (obd.mountpoint(top_id) / "single.txt").read_text() == "single\n"
    assert await obd.mounts("view-1") == mounts


async def test_unpacking_an_image_again_answers_already_exists_and_leaves_nothing(
    obd: Obd, images: Images
) -> None:
    chain = await obd.unpack_remote(images.single)
    before = obd.ids()
    labels = remote_labels(chain[0], images.single.layers[0], images.single.ref)
    error = await expect_status(
        obd.prepare(f"extract-again {chain[0]}", "", labels), Status.ALREADY_EXISTS
    )
    assert chain[0] in (error.message or "")
    await expect_status(obd.stat(f"extract-again {chain[0]}"), Status.NOT_FOUND)
    for snapshot_id in obd.ids() - before:
        await obd.wait_gone(snapshot_id)
    assert obd.ids() == before


@pytest.mark.parametrize(
    ("labels", "url"),
    [
        (
            {IMAGE_REF: "docker.io/library/redis:7"},
            "https://registry-1.docker.io/v2/library/redis/blobs",
        ),
        ({IMAGE_REF: "docker.io/redis:7"}, "https://registry-1.docker.io/v2/redis/blobs"),
        (
            {CRI_IMAGE_REF: "registry.example.com:5000/team/app@sha256:" + "a" * 64},
            "https://registry.example.com:5000/v2/team/app/blobs",
        ),
        (
            {IMAGE_REF: "ghcr.io/owner/image:1", CRI_IMAGE_REF: "docker.io/library/other:1"},
            "https://ghcr.io/v2/owner/image/blobs",
        ),
    ],
    ids=["docker.io-library", "docker.io-user", "cri-ref-with-port", "image-ref-preferred"],
)
async def test_repo_blob_url_comes_from_the_image_ref(
    obd: Obd, images: Images, labels: dict[str, str], url: str
) -> None:
    chain_id, all_labels = images.single.layer_labels()
    del all_labels[IMAGE_REF]
    await expect_status(
        obd.prepare(f"extract-1 {chain_id}", "", {**all_labels, **labels}), Status.ALREADY_EXISTS
    )
    assert obd.config(obd.latest_id())["repoBlobUrl"] == url


async def test_a_bad_blob_size_is_invalid_argument_and_leaves_nothing(
    obd: Obd, images: Images
) -> None:
    chain_id, labels = images.single.layer_labels({BLOB_SIZE: "big"})
    await expect_status(obd.prepare(f"extract-1 {chain_id}", "", labels), Status.INVALID_ARGUMENT)
    assert await obd.list_infos() == []
    await obd.wait_gone(1)
    # The next unpack of the layer works.
    await obd.unpack_remote(images.single)


@pytest.mark.parametrize(
    "reference",
    ["https://registry.example/app:1", "bad host!/app:1", "/app:1", "registry.example/a b:1"],
    ids=["url", "bad-host", "no-host", "bad-repository"],
)
async def test_a_bad_image_ref_is_invalid_argument_and_leaves_nothing(
    obd: Obd, images: Images, reference: str
) -> None:
    chain_id, labels = images.single.layer_labels({IMAGE_REF: reference})
    error = await expect_status(
        obd.prepare(f"extract-1 {chain_id}", "", labels), Status.INVALID_ARGUMENT
    )
    assert "image reference" in (error.message or "")
    assert await obd.list_infos() == []
    await obd.wait_gone(1)
    assert obd.leftovers() == []
