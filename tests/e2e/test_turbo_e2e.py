"""TurboOCI images (DESIGN-v1 §12, §14) pulled by containerd's own unpacker and run with runc.

The image: the block image's three busybox-based layer trees as gzip'd (or plain
tar) OCI layers, and one meta layer per layer with an erofs meta, an ext4 meta,
or both.
Both kinds of layers are in the loopback registry; the manifest lists the metas,
annotated as the TurboOCI convertor does, and the pull adds the image ref (as
``ctr rpull`` does). obdsnap treats each meta layer as a normal one: containerd
downloads it, unpacks it into ``fs/`` and commits it, and obdsnap writes the
TurboOCI config. The container's rootfs is an overlay on the top layer's device,
which the simulator serves from the top meta with the data read from the
original blobs (from its blob store, standing in for the registry's lazy reads).

Each pull prints a ``TURBO-E2E`` line: bytes downloaded against the original
layers' bytes, the pull time, and the time from the pull's start until the
first container's first output; a plain OCI image through containerd's overlayfs
snapshotter gives the comparison.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from support.server_process import short_tmpdir

from obdsnap.labels import IMAGE_REF, TARGET_SNAPSHOT_REF
from obdsnap.overlaybd.turbo_oci import EXT4_FALLBACK_FLAG
from tcmusim.mkimage.turbo import GZIP_INDEX, TurboBuiltLayer, meta_name, turbo_annotations
from tcmusim.mkimage.turbo import MEDIA_TAR_GZIP as GZIP
from tcmusim.testing import RunningSimulator

from .blockimage import write_layer_trees
from .blockstack import (
    PLUGIN,
    ReaderRun,
    Stack,
    StartStack,
    check_overlay_on_device,
    committed_chain,
    uptime,
)
from .ociimage import find_static_busybox
from .registry import LocalRegistry, PushedImage
from .turboimage import (
    Blob,
    TurboImage,
    build_turbo_image,
    meta_files,
    original_layers,
    push_oci_image,
    push_turbo_image,
)

pytestmark = [pytest.mark.root, pytest.mark.slow]

REPOSITORY = "obdsnap-e2e/turbo"
CONTAINER = "turbo-reader"


@dataclass(frozen=True)
class Sources:
    originals: list[Blob]
    store: Path  # the simulator's blob store


@dataclass(frozen=True)
class Pull:
    started: float  # the host's uptime at the start
    seconds: float
    downloaded: int  # bytes of blobs the registry served


@pytest.fixture(scope="module")
def sources(e2e_host: None, simulator: RunningSimulator) -> Iterator[Sources]:
    """The gzip'd original layers of the block image's trees."""
    busybox = find_static_busybox()
    assert busybox is not None  # e2e_host checked it
    work = short_tmpdir()
    try:
        originals = original_layers(write_layer_trees(work, busybox), work)
        yield Sources(originals, simulator.blob_store)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def timed_pull(
    stack: Stack, registry: LocalRegistry, unpack_pull: Path, image: PushedImage, snapshotter: str
) -> Pull:
    before = sum(registry.served_bytes().values())
    started_uptime, started = uptime(), time.monotonic()
    digest = stack.containerd.pull_unpacking(
        unpack_pull, image.reference, snapshotter, {IMAGE_REF: image.reference}
    )
    seconds = time.monotonic() - started
    assert digest == image.manifest_digest
    return Pull(started_uptime, seconds, sum(registry.served_bytes().values()) - before)


def report(case: str, pull: Pull, reader: ReaderRun, full_bytes: int) -> None:
    """The figures; the first output's time has /proc/uptime's resolution (10 ms)."""
    share = 100.0 * pull.downloaded / full_bytes
    print(
        f"\nTURBO-E2E {case}: downloaded {pull.downloaded} B of {full_bytes} B of layers "
        f"({share:.1f} %), pull {pull.seconds:.2f} s, "
        f"first container output {reader.started - pull.started:.2f} s after the pull started"
    )


def check_downloads(registry: LocalRegistry, image: TurboImage, pushed: PushedImage) -> None:
    """Only the metas (and the config) left the registry, each once and whole."""
    expected = {layer.digest: layer.size for layer in image.layers}
    served = dict(registry.served_bytes())
    assert served.pop(pushed.config_digest, 0) > 0, "the config was not downloaded"
    assert served == expected, f"blobs served {served}, expected only the metas {expected}"


def expected_lower(fs: Path, layer: TurboBuiltLayer, fs_type: str) -> dict[str, str]:
    """§12 rule 2, in config.v1.json's key order: no digest or size."""
    gzip_index = {"gzipIndex": str(fs / GZIP_INDEX)} if layer.target_media_type == GZIP else {}
    file = str(fs / meta_name(fs_type))
    return {**gzip_index, "file": file, "targetDigest": layer.target_digest, "dir": str(fs)}


def check_layers(
    stack: Stack, image: TurboImage, pushed: PushedImage, repo_blob_url: str, fs_type: str
) -> dict[str, int]:
    """Each meta layer committed normally, with its labels, fs/ and TurboOCI config.

    The container (key ``CONTAINER``) is running on the image meanwhile.
    """
    listed = {row.key: row for row in stack.containerd.list_snapshots(PLUGIN)}
    assert listed.pop(CONTAINER).parent == image.chain_ids[-1]
    assert listed == committed_chain(image.chain_ids), "ctr snapshot ls: not the committed chain"
    backend = stack.backend()
    assert backend.pop(CONTAINER)[1]["Kind"] == "Active"
    assert set(backend) == set(image.chain_ids), sorted(backend)
    ids = stack.ids_by_top_lower("targetDigest")
    lowers: list[dict[str, str]] = []
    for chain_id, layer in zip(image.chain_ids, image.layers, strict=True):
        key, info = backend[chain_id]
        assert info["Kind"] == "Committed", (key, info)
        labels = {TARGET_SNAPSHOT_REF: chain_id, IMAGE_REF: pushed.reference}
        assert info["Labels"] == {**labels, **turbo_annotations(layer)}, info
        fs = stack.fs(ids[layer.target_digest])
        assert sorted(entry.name for entry in fs.iterdir()) == meta_files(layer)
        lowers.append(expected_lower(fs, layer, fs_type))
        config = stack.config(ids[layer.target_digest])
        assert (config["repoBlobUrl"], config["lowers"], config["upper"]) == (
            repo_blob_url,
            lowers,
            {},
        ), config
        # The key order of config.v1.json (DESIGN-v1 §3); neither digest nor size.
        assert [list(entry) for entry in config["lowers"]] == [list(entry) for entry in lowers]
    return ids


@dataclass(frozen=True)
class Case:
    metas: tuple[str, ...]  # the fs metas of each meta layer
    fs_type: str  # the one obdsnap must choose
    settings: Mapping[str, object] = field(default_factory=dict)
    ext4_flag: bool = False  # the operator's emergency switch (§12 rule 5)
    gzip: bool = True  # the originals are tar+gzip (else plain tar: no gzip index)


BOTH = ("erofs", "ext4")
CASES = {
    "erofs": Case(("erofs",), "erofs"),
    "ext4": Case(("ext4",), "ext4"),
    "both-erofs-first": Case(BOTH, "erofs"),
    "both-ext4-first": Case(BOTH, "ext4", {"turboFsType": ["ext4", "erofs"]}),
    "both-ext4-flag": Case(BOTH, "ext4", ext4_flag=True),
    "erofs-tar-originals": Case(("erofs",), "erofs", gzip=False),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_turbo_oci_pull_run_remove(
    case: Case,
    request: pytest.FixtureRequest,
    sources: Sources,
    start_stack: StartStack,
    registry: LocalRegistry,
    unpack_pull: Path,
    tmp_path: Path,
) -> None:
    name = request.node.callspec.id
    image = build_turbo_image(
        sources.originals, case.metas, sources.store, tmp_path, gzip=case.gzip
    )
    pushed = push_turbo_image(registry, image, sources.store, REPOSITORY, name)
    stack = start_stack(**case.settings)
    if case.ext4_flag:
        (stack.root / EXT4_FALLBACK_FLAG).touch()

    pull = timed_pull(stack, registry, unpack_pull, pushed, PLUGIN)
    assert stack.loop_devices() == [], "pulling attached a device"
    reader = stack.run_reader(pushed.reference, CONTAINER)
    report(name, pull, reader, image.original_bytes)

    check_downloads(registry, image, pushed)
    repo_blob_url = f"https://{registry.host}/v2/{REPOSITORY}/blobs"
    ids = check_layers(stack, image, pushed, repo_blob_url, case.fs_type)
    top_id = ids[image.layers[-1].target_digest]
    check_overlay_on_device(stack, reader.root, top_id, only_device=True, fs_type=case.fs_type)
    assert (stack.block(top_id) / "init-debug.log").read_text() == "success"

    stack.remove_container(CONTAINER)
    stack.containerd.remove_image(pushed.reference)
    stack.assert_all_released()


def test_plain_oci_through_overlayfs(
    sources: Sources,
    start_stack: StartStack,
    registry: LocalRegistry,
    unpack_pull: Path,
) -> None:
    """The comparison: the same layers as a plain OCI image, downloaded whole."""
    pushed = push_oci_image(registry, sources.originals, REPOSITORY, "plain-oci")
    stack = start_stack()
    pull = timed_pull(stack, registry, unpack_pull, pushed, "overlayfs")
    reader = stack.run_reader(pushed.reference, "oci-reader", snapshotter="overlayfs")
    full_bytes = sum(blob.size for blob in sources.originals)
    report("plain-oci-overlayfs", pull, reader, full_bytes)

    served = registry.served_bytes()
    assert {blob.digest: served[blob.digest] for blob in sources.originals} == {
        blob.digest: blob.size for blob in sources.originals
    }
    assert reader.root.fs_type == "overlay", reader.root
    assert stack.backend() == {}, "a plain overlayfs pull reached obdsnap"
    stack.containerd.remove_container("oci-reader")
    stack.containerd.remove_image(pushed.reference)
