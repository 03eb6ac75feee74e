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

from .blockimage import BlockImage, file_digest, layer_tar_sizes, push_downloadable_image
from .blockstack import (
    PLUGIN,
    Stack,
    StartStack,
    committed_chain,
    run_on_the_top_device_and_release,
)
from .registry import LocalRegistry, PushedImage

pytestmark = [pytest.mark.root, pytest.mark.slow]

REPOSITORY = "obdsnap-e2e/download"
TAG = "v1"
DOWNLOAD_LABELS = {DOWNLOAD_REMOTE_BLOB: DOWNLOAD_REMOTE_BLOB_VALUE}


def check_downloaded_layers(
    stack: Stack, block_image: BlockImage, image: PushedImage, repo_blob_url: str
) -> dict[str, int]:
    """Each layer remote by its labels, its blob unpacked into fs/; snapshot IDs by digest."""
    chain = block_image.chain_ids
    backend = stack.backend()
    assert set(backend) == set(chain), sorted(backend)
    ids = stack.ids_by_top_lower("digest")
    sizes = layer_tar_sizes(block_image)
    lowers: list[dict[str, object]] = []
    for chain_id, layer in zip(chain, block_image.layers, strict=True):
        key, info = backend[chain_id]
        assert info["Kind"] == "Committed", (key, info)
        # Remote by its labels (DESIGN §3): blob digest and size, and the image ref.
        assert info["Labels"] == {
            TARGET_SNAPSHOT_REF: chain_id,
            BLOB_DIGEST: layer.diff_id,
            BLOB_SIZE: str(sizes[layer.diff_id]),
            IMAGE_REF: image.reference,
            **DOWNLOAD_LABELS,
        }, info
        fs = stack.fs(ids[layer.diff_id])
        # containerd unpacked the blob into fs/: the layer file is the overlaybd blob.
        assert file_digest(fs / "overlaybd.commit") == layer.digest
        lowers.append({"digest": layer.diff_id, "size": sizes[layer.diff_id], "dir": str(fs)})
        config = stack.config(ids[layer.diff_id])
        assert (config["repoBlobUrl"], config["lowers"], config["upper"]) == (
            repo_blob_url,
            lowers,
            {},
        ), config
    return ids


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

    # containerd downloaded every layer tar, whole.
    sizes = layer_tar_sizes(block_image)
    served = registry.served_bytes()
    assert {digest: served[digest] for digest in sizes} == sizes
    assert set(sizes) <= containerd.content_digests()
    listed = {row.key: row for row in containerd.list_snapshots(PLUGIN)}
    assert listed == committed_chain(block_image.chain_ids), "ctr snapshot ls: not the chain"
    repo_blob_url = f"https://{registry.host}/v2/{REPOSITORY}/blobs"
    ids = check_downloaded_layers(stack, block_image, image, repo_blob_url)
    assert stack.loop_devices() == [], "pulling attached a device"

    top_id = ids[block_image.layers[-1].diff_id]
    # overlaybd opened the downloaded files: the blobs are not in the simulator's store.
    run_on_the_top_device_and_release(stack, image.reference, "downloaded-reader", top_id)
