"""The TurboOCI test image: the block image's three layer trees as gzip'd OCI layers plus metas.

Each original layer (``tar+gzip``) gets a meta layer (``turboOCIv1.tar.gz``)
holding ``<fs>.fs.meta`` for each file system asked for, ``.turbo.ociv1`` and
``gzip.meta``. The originals go into the simulator's blob store, where its
overlaybd reads a TurboOCI lower's data from; the registry gets both, and a
manifest of the meta layers whose annotations name their originals.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import shutil
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from obdsnap.labels import (
    BLOB_DIGEST,
    BLOB_SIZE,
    TURBO_OCI_TARGET_DIGEST,
    TURBO_OCI_TARGET_MEDIA_TYPE,
)
from tcmusim.mkimage import EPOCH, apply_layer
from tcmusim.turbo_fs import make_fs

from .ociimage import chain_ids
from .registry import MEDIA_LAYER_GZIP, LocalRegistry, PushedImage, layer_descriptor, push_image

VERSION_LABEL = "containerd.io/snapshot/overlaybd/version"
TURBO_OCI_VERSION = "0.1.0-turbo.ociv1"
TURBO_MARKER = ".turbo.ociv1"
GZIP_META = "gzip.meta"
META_FS_SIZE = 64 << 20


@dataclass(frozen=True)
class Blob:
    digest: str  # of the blob as stored (gzip'd)
    size: int
    path: Path
    diff_id: str  # of the uncompressed tar


@dataclass(frozen=True)
class TurboLayer:
    original: Blob
    meta: Blob
    meta_files: tuple[str, ...]  # what the meta layer unpacks into fs/


@dataclass(frozen=True)
class TurboImage:
    fs_types: tuple[str, ...]
    layers: tuple[TurboLayer, ...]

    @property
    def chain_ids(self) -> list[str]:
        """The manifest's layers are the metas: containerd's chain is theirs."""
        return chain_ids([layer.meta.diff_id for layer in self.layers])

    @property
    def original_bytes(self) -> int:
        return sum(layer.original.size for layer in self.layers)


def _normalized(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.mtime = EPOCH
    info.uname = info.gname = ""
    return info


def write_tgz(source: Path, out: Path) -> Blob:
    """A reproducible gzip'd tar of the tree ``source`` (owners and modes kept)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(source.rglob("*")):
            name = path.relative_to(source).as_posix()
            tar.add(path, name, recursive=False, filter=_normalized)
    data = gzip.compress(raw.getvalue(), mtime=0)
    out.write_bytes(data)
    diff_id = "sha256:" + hashlib.sha256(raw.getvalue()).hexdigest()
    return Blob("sha256:" + hashlib.sha256(data).hexdigest(), len(data), out, diff_id)


def store_copy(blob: Blob, store: Path) -> None:
    """Into a blob store (``<store>/sha256/<hex>``), as the registry holds it."""
    target = store / "sha256" / blob.digest.removeprefix("sha256:")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(blob.path, target)


def original_layers(trees: Sequence[Path], work: Path) -> list[Blob]:
    return [write_tgz(tree, work / f"original{index}.tar.gz") for index, tree in enumerate(trees)]


def build_turbo_image(
    trees: Sequence[Path], originals: Sequence[Blob], fs_types: Sequence[str], work: Path
) -> TurboImage:
    """One meta layer per original; the metas of layer *k* describe the merged tree 1..k."""
    merged = work / "merged"
    merged.mkdir()
    layers = []
    for index, (tree, original) in enumerate(zip(trees, originals, strict=True)):
        apply_layer(merged, tree)
        content = work / f"meta{index}"
        content.mkdir()
        for fs_type in fs_types:
            make_fs(fs_type, merged, content / f"{fs_type}.fs.meta", META_FS_SIZE, original.digest)
        (content / TURBO_MARKER).write_bytes(b"")
        (content / GZIP_META).write_bytes(b"")
        meta = write_tgz(content, work / f"meta{index}.tar.gz")
        files = tuple(sorted(path.name for path in content.iterdir()))
        layers.append(TurboLayer(original, meta, files))
    return TurboImage(tuple(fs_types), tuple(layers))


def meta_annotations(layer: TurboLayer) -> dict[str, str]:
    """What the TurboOCI convertor puts on a meta layer's descriptor (DESIGN-v1 §12)."""
    return {
        BLOB_DIGEST: layer.meta.digest,
        BLOB_SIZE: str(layer.meta.size),
        TURBO_OCI_TARGET_DIGEST: layer.original.digest,
        TURBO_OCI_TARGET_MEDIA_TYPE: MEDIA_LAYER_GZIP,
        VERSION_LABEL: TURBO_OCI_VERSION,
    }


def push_turbo_image(
    registry: LocalRegistry, image: TurboImage, repository: str, tag: str
) -> PushedImage:
    """Originals and metas into the repository; the manifest lists the metas."""
    descriptors = []
    for layer in image.layers:
        registry.push_blob(repository, layer.original.path.read_bytes())
        registry.push_blob(repository, layer.meta.path.read_bytes())
        descriptors.append(
            layer_descriptor(
                MEDIA_LAYER_GZIP, layer.meta.digest, layer.meta.size, meta_annotations(layer)
            )
        )
    diff_ids = [layer.meta.diff_id for layer in image.layers]
    return push_image(registry, repository, tag, descriptors, diff_ids)


def push_oci_image(
    registry: LocalRegistry, originals: Sequence[Blob], repository: str, tag: str
) -> PushedImage:
    """The originals as a plain OCI image."""
    descriptors = []
    for blob in originals:
        registry.push_blob(repository, blob.path.read_bytes())
        descriptors.append(layer_descriptor(MEDIA_LAYER_GZIP, blob.digest, blob.size))
    diff_ids = [blob.diff_id for blob in originals]
    return push_image(registry, repository, tag, descriptors, diff_ids)
