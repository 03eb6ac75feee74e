"""obdsnap's overlaybd flows under a real containerd and runc, on the TCMU simulator.

Each test starts its own obdsnap, configured with the module's simulator
(configfs/sysfs roots and overlaybd tools), behind its own private containerd:

- local block layers: ``ctr image import`` of an overlaybd-format image from
  ``tcmusim mkimage`` (layer k is a tar holding one file, ``overlaybd.commit``)
  unpacks every layer into a snapshot (keys ``<ns>/<n>/extract-...``, no
  labels) and commits it; obdsnap finds the overlaybd magic and makes it a
  local block layer. ``ctr run`` then gets an overlay on the top layer's
  read-only device, or (rwMode ``dir``/``dev``, from the boot config or the
  ``overlaybd.writable`` snapshot label) a writable device of its own;
- remote block layers: an image in a private registry on 127.0.0.1 whose layer
  descriptors carry the overlaybd annotations, pulled with containerd's own
  unpacker (``unpackpull/main.go``: ctr 1.6's ``image pull`` passes no labels).
  Every layer Prepare is answered ALREADY_EXISTS, nothing is downloaded, and
  the simulator reads the blobs from its blob store.

Devices are real loop devices (the simulator binds them), so containerd's
shim mounts and runc's container really read and write through them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from obdsnap.labels import (
    BLOB_DIGEST,
    BLOB_SIZE,
    IMAGE_REF,
    REMOTE,
    REMOTE_VALUE,
    TARGET_SNAPSHOT_REF,
    WRITABLE,
)

from .blockimage import (
    REMOTE_REPOSITORY,
    REMOTE_TAG,
    WRITTEN_CONTENT,
    WRITTEN_FILE,
    BlockImage,
    push_overlaybd_image,
)
from .blockstack import (
    PLUGIN,
    StartStack,
    check_local_layers,
    check_overlay_on_device,
    committed_chain,
    read_from_device,
    run_on_the_top_device_and_release,
)
from .containerd import SnapshotRow, list_snapshots_direct
from .registry import LocalRegistry

pytestmark = [pytest.mark.root, pytest.mark.slow]


def test_local_block_layers_import_run_remove(
    block_image: BlockImage, start_stack: StartStack
) -> None:
    stack = start_stack()
    containerd = stack.containerd
    assert list_snapshots_direct(stack.server.address, PLUGIN) == []
    containerd.import_image(block_image.archive, PLUGIN)
    ids = check_local_layers(stack, block_image)
    top_id = ids[block_image.chain_ids[-1]]

    root = stack.run_reader(block_image.reference, "reader").root
    container_id = check_overlay_on_device(stack, root, top_id, only_device=True)
    assert stack.backend()["reader"][1]["Kind"] == "Active"
    assert stack.mark(container_id) is None, "an overlayfs rootfs has no device of its own"
    listed = {row.key: row for row in containerd.list_snapshots(PLUGIN)}
    assert listed["reader"] == SnapshotRow("reader", block_image.chain_ids[-1], "Active")

    stack.remove_container("reader")
    stack.assert_device(top_id, mounted="ro")  # autoRemoveDev is off: the image's device stays
    containerd.remove_image(block_image.reference)
    stack.assert_all_released()


def test_import_attaches_no_device(block_image: BlockImage, start_stack: StartStack) -> None:
    """Unpacking a layer is never a container's rootfs: no device is needed to import."""
    stack = start_stack()
    stack.containerd.import_image(block_image.archive, PLUGIN)
    ids = check_local_layers(stack, block_image)
    attached = {chain_id: stack.mark(i) for chain_id, i in ids.items() if stack.mark(i)}
    assert attached == {}, f"import attached devices: {attached}"
    assert stack.loop_devices() == []


WRITABLE_CASES = [
    pytest.param({"rwMode": "dir"}, {}, "dir", id="config-dir"),
    pytest.param({}, {WRITABLE: "dir"}, "dir", id="label-dir"),
    pytest.param({}, {WRITABLE: "dev"}, "dev", id="label-dev"),
]


@pytest.mark.parametrize(("settings", "labels", "mode"), WRITABLE_CASES)
def test_writable_device_rootfs(
    settings: dict[str, object],
    labels: dict[str, str],
    mode: str,
    block_image: BlockImage,
    start_stack: StartStack,
) -> None:
    """rwMode dir/dev: the container's rootfs is a writable device of its own."""
    stack = start_stack(**settings)
    containerd = stack.containerd
    containerd.import_image(block_image.archive, PLUGIN)
    ids = check_local_layers(stack, block_image)
    top_id = ids[block_image.chain_ids[-1]]

    root = stack.run_reader(block_image.reference, "writer", labels).root
    assert root.fs_type == "ext4", root
    assert root.source.startswith("/dev/loop"), root
    container_id = stack.device_owner(root.source)
    assert container_id not in ids.values()
    _, info = stack.backend()["writer"]
    assert info["Kind"] == "Active"
    assert (info.get("Labels") or {}).get(WRITABLE) == labels.get(WRITABLE), info
    block = stack.block(container_id)
    config = stack.config(container_id)
    assert config["lowers"] == stack.config(top_id)["lowers"], config
    assert config["upper"] == {
        "index": str(block / "writable_index"),
        "data": str(block / "writable_data"),
    }, config
    assert stack.mark(top_id) is None, "a writable rootfs needs no device of its parent"

    # What the container wrote is on its device, not in fs/.
    assert not (stack.fs(container_id) / WRITTEN_FILE).exists()
    if mode == "dir":
        device = stack.assert_device(container_id, mounted="rw")
        written = (stack.mountpoint(container_id) / WRITTEN_FILE).read_text()
    else:
        device = stack.assert_device(container_id, mounted=None)
        written = read_from_device(device, WRITTEN_FILE)
    assert written == WRITTEN_CONTENT + "\n"

    stack.remove_container("writer")
    assert stack.configfs_entries(container_id) == []
    assert device not in stack.loop_devices()
    containerd.remove_image(block_image.reference)
    stack.assert_all_released()


def test_remote_block_layers_pull_run_remove(
    block_image: BlockImage,
    start_stack: StartStack,
    registry: LocalRegistry,
    unpack_pull: Path,
) -> None:
    image = push_overlaybd_image(registry, block_image, REMOTE_REPOSITORY, REMOTE_TAG)
    stack = start_stack()
    containerd = stack.containerd
    assert containerd.pull_unpacking(unpack_pull, image.reference, PLUGIN) == image.manifest_digest

    # containerd skipped every layer: nothing but the manifest and config was downloaded.
    content = containerd.content_digests()
    assert {image.manifest_digest, image.config_digest} <= content
    assert content.isdisjoint(layer.digest for layer in image.layers), content
    listed = {row.key: row for row in containerd.list_snapshots(PLUGIN)}
    assert listed == committed_chain(image.chain_ids), "ctr snapshot ls: not the committed chain"

    # Each layer was committed through the remote path, under its chain ID.
    backend = stack.backend()
    assert {name: key for name, (key, _) in backend.items()} == {c: c for c in image.chain_ids}
    ids_by_digest = stack.ids_by_top_lower("digest")
    repo_blob_url = f"https://{registry.host}/v2/{REMOTE_REPOSITORY}/blobs"
    lowers: list[dict[str, object]] = []
    for chain_id, layer in zip(image.chain_ids, image.layers, strict=True):
        _, info = backend[chain_id]
        assert info["Kind"] == "Committed", info
        assert info["Labels"] == {
            TARGET_SNAPSHOT_REF: chain_id,
            BLOB_DIGEST: layer.digest,
            BLOB_SIZE: str(layer.size),
            IMAGE_REF: image.reference,
            REMOTE: REMOTE_VALUE,
        }, info
        snapshot_id = ids_by_digest[layer.digest]
        lowers.append(
            {"digest": layer.digest, "size": layer.size, "dir": str(stack.fs(snapshot_id))}
        )
        config = stack.config(snapshot_id)
        assert (config["repoBlobUrl"], config["lowers"], config["upper"]) == (
            repo_blob_url,
            lowers,
            {},
        ), config
        assert list(stack.fs(snapshot_id).iterdir()) == [], "a remote layer has nothing in fs/"
    assert stack.loop_devices() == [], "pulling attached a device"

    top_id = ids_by_digest[image.layers[-1].digest]
    # The simulator opened the remote lowers from its blob store (its registry).
    run_on_the_top_device_and_release(stack, image.reference, "remote-reader", top_id)
