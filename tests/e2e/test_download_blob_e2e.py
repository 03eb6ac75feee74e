"""``download-remote-blob``: a remote overlaybd image unpacked locally (DESIGN-v1 §6 step 2.3).

The image is in its registry form (layer *k* a tar holding ``overlaybd.commit``,
annotated with its blob digest, size and the image ref) and is pulled with
containerd's own unpacker with ``overlaybd/download-remote-blob=download`` on
every layer, as ``ctr rpull --download-blobs`` does. obdsnap writes the remote
config and answers each Prepare with a bind of ``fs/``; containerd downloads the
blob and unpacks it there, and commits. The committed layer stays remote by
its labels, with the downloaded layer file in its config's ``dir``, so
overlaybd opens the local file and never the registry.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from obdsnap.labels import (
    BLOB_DIGEST,
    BLOB_SIZE,
    DOWNLOAD_REMOTE_BLOB,
    DOWNLOAD_REMOTE_BLOB_VALUE,
    IMAGE_REF,
    TARGET_SNAPSHOT_REF,
)

from .blockimage import BlockImage, file_digest, push_downloadable_image
from .blockstack import PLUGIN, StartStack, check_overlay_on_device, committed_chain
from .registry import LocalRegistry

pytestmark = [pytest.mark.root, pytest.mark.slow]

REPOSITORY = "obdsnap-e2e/download"
TAG = "v1"
DOWNLOAD_LABELS = {DOWNLOAD_REMOTE_BLOB: DOWNLOAD_REMOTE_BLOB_VALUE}


def test_download_remote_blob_pull_run_remove(
    block_image: BlockImage,
    start_stack: StartStack,
    registry: LocalRegistry,
    unpack_pull: Path,
) -> None:
    image = push_downloadable_image(registry, block_image, REPOSITORY, TAG)
    stack = start_stack()
    containerd = stack.containerd
    pulled = containerd.pull_unpacking(unpack_pull, image.reference, PLUGIN, DOWNLOAD_LABELS)
    assert pulled == image.manifest_digest

    # containerd downloaded every layer tar in full.
    chain = block_image.chain_ids
    layer_digests = [layer.diff_id for layer in block_image.layers]
    served = registry.served_bytes()
    sizes = {digest: served[digest] for digest in layer_digests}
    assert all(size > 0 for size in sizes.values()), f"layers not downloaded: {sizes}"
    assert set(layer_digests) <= containerd.content_digests()
    listed = {row.key: row for row in containerd.list_snapshots(PLUGIN)}
    assert listed == committed_chain(chain), "ctr snapshot ls: not the committed chain"

    backend = stack.backend()
    assert set(backend) == set(chain), sorted(backend)
    ids = stack.ids_by_top_lower("digest")
    repo_blob_url = f"https://{registry.host}/v2/{REPOSITORY}/blobs"
    lowers: list[dict[str, object]] = []
    for chain_id, layer, digest in zip(chain, block_image.layers, layer_digests, strict=True):
        key, info = backend[chain_id]
        assert info["Kind"] == "Committed", (key, info)
        # Remote by its labels (DESIGN §3): blob digest and size, and the image ref.
        assert info["Labels"] == {
            TARGET_SNAPSHOT_REF: chain_id,
            BLOB_DIGEST: digest,
            BLOB_SIZE: str(sizes[digest]),
            IMAGE_REF: image.reference,
            **DOWNLOAD_LABELS,
        }, info
        snapshot_id = ids[digest]
        # containerd unpacked the blob into fs/: the layer file is the overlaybd blob.
        assert file_digest(stack.fs(snapshot_id) / "overlaybd.commit") == layer.digest
        lowers.append({"digest": digest, "size": sizes[digest], "dir": str(stack.fs(snapshot_id))})
        config = stack.config(snapshot_id)
        assert (config["repoBlobUrl"], config["lowers"], config["upper"]) == (
            repo_blob_url,
            lowers,
            {},
        ), config
    assert stack.loop_devices() == [], "pulling attached a device"

    top_id = ids[layer_digests[-1]]
    root = stack.run_reader(image.reference, "downloaded-reader").root
    check_overlay_on_device(stack, root, top_id, only_device=True)
    assert (stack.block(top_id) / "init-debug.log").read_text() == "success"

    stack.remove_container("downloaded-reader")
    containerd.remove_image(image.reference)
    stack.assert_all_released()
