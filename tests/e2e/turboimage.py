"""The TurboOCI test image: the block image's three layer trees as gzip'd OCI layers plus metas.

``tcmusim mkimage``'s TurboOCI builder makes a meta layer (``turboOCIv1.tar.gz``)
per original layer (``tar+gzip``), holding ``<fs>.fs.meta`` for each file system
asked for, ``.turbo.ociv1`` and ``gzip.meta``; it stores the originals and the
metas in the simulator's blob store, where its overlaybd reads a TurboOCI
lower's data from. The registry gets both, and a manifest of the meta layers
annotated as Go's convertor does.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tcmusim.mkimage import EPOCH
from tcmusim.mkimage.turbo import (
    GZIP_INDEX,
    MEDIA_TAR_GZIP,
    TURBO_MARK,
    TurboBuiltLayer,
    build_turbo_layers,
    turbo_annotations,
)

from .ociimage import chain_ids
from .registry import LocalRegistry, PushedImage, layer_descriptor, push_image


@dataclass(frozen=True)
class Blob:
    digest: str  # of the blob as stored (gzip'd)
    size: int
    path: Path
    diff_id: str  # of the uncompressed tar


@dataclass(frozen=True)
class TurboImage:
    layers: tuple[TurboBuiltLayer, ...]

    @property
    def chain_ids(self) -> list[str]:
        """The manifest's layers are the metas: containerd's chain is theirs."""
        return chain_ids([layer.diff_id for layer in self.layers])

    @property
    def original_bytes(self) -> int:
        return sum(layer.target_size for layer in self.layers)


def meta_files(layer: TurboBuiltLayer) -> list[str]:
    """What a meta layer unpacks into ``fs/``."""
    gzip_index = [GZIP_INDEX] if layer.target_media_type == MEDIA_TAR_GZIP else []
    return sorted([*layer.fs_metas, TURBO_MARK, *gzip_index])


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


def original_layers(trees: Sequence[Path], work: Path) -> list[Blob]:
    return [write_tgz(tree, work / f"original{index}.tar.gz") for index, tree in enumerate(trees)]


def build_turbo_image(
    originals: Sequence[Blob], fs_types: Sequence[str], store: Path, work: Path, *, gzip: bool
) -> TurboImage:
    """Originals (``tar+gzip``, or ``tar`` without ``gzip``) and metas into ``store``.

    The meta of layer *k* describes the merged trees 1..k.
    """
    sources = [blob.path for blob in originals]
    layers = build_turbo_layers(
        sources, store, fs_types=fs_types, gzip_originals=gzip, work_dir=work
    )
    return TurboImage(tuple(layers))


def push_turbo_image(
    registry: LocalRegistry, image: TurboImage, store: Path, repository: str, tag: str
) -> PushedImage:
    """Originals and metas (from ``store``) into the repository; the manifest lists the metas."""
    descriptors = []
    for layer in image.layers:
        original = store / "sha256" / layer.target_digest.removeprefix("sha256:")
        assert registry.push_blob(repository, original.read_bytes())[0] == layer.target_digest
        digest, size = registry.push_blob(repository, Path(layer.path).read_bytes())
        annotations = turbo_annotations(layer)
        descriptors.append(layer_descriptor(MEDIA_TAR_GZIP, digest, size, annotations))
    diff_ids = [layer.diff_id for layer in image.layers]
    return push_image(registry, repository, tag, descriptors, diff_ids)


def push_oci_image(
    registry: LocalRegistry, originals: Sequence[Blob], repository: str, tag: str
) -> PushedImage:
    """The originals as a plain OCI image."""
    descriptors = []
    for blob in originals:
        registry.push_blob(repository, blob.path.read_bytes())
        descriptors.append(layer_descriptor(MEDIA_TAR_GZIP, blob.digest, blob.size))
    diff_ids = [blob.diff_id for blob in originals]
    return push_image(registry, repository, tag, descriptors, diff_ids)
