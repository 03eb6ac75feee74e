"""TurboOCI images: the original OCI layers, plus one small meta layer per layer.

From OCI layer tarballs (bottom first), each original is stored as it is pulled
from a registry (a ``tar+gzip`` blob, or with ``gzip_originals=False`` a plain
``tar``), and a meta layer is made for it, a ``tar.gz`` holding:

``<fs>.fs.meta`` (``erofs`` and/or ``ext4``)
    the filesystem (``mkfs.erofs``, ``mkfs.ext4 -d``) of the merged tree of the
    layers up to and including this one, whiteouts applied, so the top layer's
    meta alone gives the whole rootfs. Only its metadata is stored: file data
    is read from the original blobs, at the places its data map says; data of a
    file that came from an older layer is in that layer's original
    (:mod:`tcmusim.turbo_meta`, :mod:`tcmusim.mkimage.datamap`).
``.turbo.ociv1``
    the marker of a TurboOCI layer: the original's digest and media type.
``gzip.meta``
    for a gzip original: its index (here, what overlaybd needs to know of it).

ext4 meta layers are deterministic; an erofs meta holds mkfs.erofs's build time.
Layer descriptors carry the annotations Go's convertor writes
(:func:`turbo_annotations`); :func:`unpack_meta_layer` does what containerd's
unpacker does with a meta layer (it lands in the snapshot's ``fs/``).
"""

from __future__ import annotations

import gzip
import json
import shutil
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tcmusim import layerfmt, turbo_fs
from tcmusim.mkimage.datamap import Origins, map_and_punch
from tcmusim.mkimage.layers import DEFAULT_SIZE_GB, new_root, sha256_of, store_blob
from tcmusim.mkimage.oci import tar_info, write_oci_layout
from tcmusim.mkimage.tree import BuildError, apply_tar, tree_digest
from tcmusim.turbo_lower import is_gzip
from tcmusim.turbo_meta import write_meta

FS_TYPES = turbo_fs.FS_TYPES
MEDIA_TAR = "application/vnd.oci.image.layer.v1.tar"
MEDIA_TAR_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
TURBO_MARK = ".turbo.ociv1"
GZIP_INDEX = "gzip.meta"
VERSION = "0.1.0-turbo.ociv1"
_PREFIX = "containerd.io/snapshot/overlaybd/"
BLOB_DIGEST = _PREFIX + "blob-digest"
BLOB_SIZE = _PREFIX + "blob-size"
TARGET_DIGEST = _PREFIX + "turbo-oci/target-digest"
TARGET_MEDIA_TYPE = _PREFIX + "turbo-oci/target-media-type"
VERSION_ANNOTATION = _PREFIX + "version"


def meta_name(fs_type: str) -> str:
    return f"{fs_type}.fs.meta"


@dataclass
class TurboBuiltLayer:
    source: str
    digest: str  # of the meta layer (tar.gz), the registry blob
    size: int
    path: str
    diff_id: str  # of the meta layer's tar
    target_digest: str  # of the original layer blob
    target_size: int
    target_media_type: str
    fs_metas: dict[str, int] = field(default_factory=dict)  # meta file name → its size


def turbo_annotations(layer: TurboBuiltLayer) -> dict[str, str]:
    """The meta layer descriptor's annotations, as Go's TurboOCI convertor writes them."""
    return {
        BLOB_DIGEST: layer.digest,
        BLOB_SIZE: str(layer.size),
        TARGET_DIGEST: layer.target_digest,
        TARGET_MEDIA_TYPE: layer.target_media_type,
        VERSION_ANNOTATION: VERSION,
    }


def build_turbo_layers(
    sources: Sequence[Path],
    store: Path,
    *,
    fs_types: Sequence[str] = ("erofs",),
    gzip_originals: bool = True,
    size_gb: int = DEFAULT_SIZE_GB,
    work_dir: Path | None = None,
) -> list[TurboBuiltLayer]:
    """Store each original and its meta layer in ``store``; the meta layers, bottom first."""
    if not sources:
        raise BuildError("no layers given")
    if not fs_types or any(fs not in FS_TYPES for fs in fs_types):
        raise BuildError(f"TurboOCI fs types are {', '.join(FS_TYPES)}, not {list(fs_types)}")
    build = _Build(store, tuple(fs_types), gzip_originals, size_gb << 30)
    built: list[TurboBuiltLayer] = []
    with tempfile.TemporaryDirectory(prefix="tcmusim-turbo-", dir=work_dir) as scratch_dir:
        scratch = Path(scratch_dir)
        merged = new_root(scratch / "merged")
        origins = Origins()
        layer_uuid = ""
        for index, source in enumerate(sources):
            layer_dir = scratch / f"layer{index}"
            layer_dir.mkdir()
            tar = _uncompressed(source, layer_dir / "layer.tar")
            apply_tar(merged, tar)
            layer_uuid = layerfmt.derived_uuid("turbo-oci", layer_uuid, tree_digest(merged))
            built.append(_build_layer(build, source, tar, merged, origins, layer_uuid))
    return built


@dataclass(frozen=True)
class _Build:
    store: Path
    fs_types: tuple[str, ...]
    gzip_originals: bool
    size: int  # of an ext4 meta's filesystem


def _build_layer(
    build: _Build, source: Path, tar: Path, merged: Path, origins: Origins, layer_uuid: str
) -> TurboBuiltLayer:
    """The original and the meta layer of ``tar``, once it is applied onto ``merged``."""
    target, target_size = _store_original(source, tar, build.store, build.gzip_originals)
    origins.apply(merged, tar, target)
    media_type = MEDIA_TAR_GZIP if build.gzip_originals else MEDIA_TAR
    meta_dir = tar.parent / "meta"
    meta_dir.mkdir()
    for fs_type in build.fs_types:
        _make_meta(fs_type, merged, meta_dir, build.size, layer_uuid, origins)
    _write_markers(meta_dir, target, media_type, tar if build.gzip_originals else None)
    layer = _store_meta_layer(meta_dir, tar.parent / "meta.tar", build.store)
    layer.source, layer.target_digest = str(source), target
    layer.target_size, layer.target_media_type = target_size, media_type
    return layer


def _uncompressed(source: Path, out: Path) -> Path:
    if not source.is_file():
        raise BuildError(f"{source}: TurboOCI layers are built from layer tarballs")
    opener = gzip.open if is_gzip(source) else open
    with opener(source, "rb") as f, open(out, "wb") as tar:
        shutil.copyfileobj(f, tar)
    return out


def _store_original(source: Path, tar: Path, store: Path, gzipped: bool) -> tuple[str, int]:
    """The original layer blob, as a registry holds it: gzip'd (kept as given) or plain."""
    blob = tar.with_name("original")
    if not gzipped:
        shutil.copyfile(tar, blob)
    elif is_gzip(source):
        shutil.copyfile(source, blob)
    else:
        _gzip(tar, blob)
    return store_blob(store, blob)


def _gzip(src: Path, out: Path) -> None:
    with (
        open(src, "rb") as f,
        open(out, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as compressed,
    ):
        shutil.copyfileobj(f, compressed)


def _make_meta(
    fs_type: str, merged: Path, meta_dir: Path, size: int, layer_uuid: str, origins: Origins
) -> None:
    image = meta_dir.parent / f"{fs_type}.img"
    fs_uuid = layerfmt.derived_uuid(fs_type, layer_uuid)
    try:
        turbo_fs.make_fs(fs_type, merged, image, size, fs_uuid)
    except turbo_fs.Fatal as exc:
        raise BuildError(str(exc)) from exc
    data_map = map_and_punch(image, fs_type, merged, origins)
    write_meta(image, meta_dir / meta_name(fs_type), fs_type=fs_type, uuid=fs_uuid,
               data_map=data_map)  # fmt: skip
    image.unlink()


def _write_markers(meta_dir: Path, target: str, media_type: str, gzip_tar: Path | None) -> None:
    mark = {"format": "tcmusim-turbo-ociv1", "version": 1, "targetDigest": target,
            "targetMediaType": media_type}  # fmt: skip
    (meta_dir / TURBO_MARK).write_text(json.dumps(mark, sort_keys=True) + "\n")
    if gzip_tar is not None:
        index = {"format": "tcmusim-gzip-index", "version": 1, "targetDigest": target,
                 "uncompressedSize": gzip_tar.stat().st_size}  # fmt: skip
        (meta_dir / GZIP_INDEX).write_text(json.dumps(index, sort_keys=True) + "\n")


def _store_meta_layer(meta_dir: Path, tar_path: Path, store: Path) -> TurboBuiltLayer:
    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tar:
        for member in sorted(meta_dir.iterdir()):
            with open(member, "rb") as f:
                tar.addfile(tar_info(member.name, member.stat().st_size), f)
    diff_id = "sha256:" + sha256_of(tar_path)
    fs_metas = {p.name: p.stat().st_size for p in meta_dir.glob("*.fs.meta")}
    compressed = tar_path.with_suffix(".tar.gz")
    _gzip(tar_path, compressed)
    digest, size = store_blob(store, compressed)
    path = store / "sha256" / digest.removeprefix("sha256:")
    return TurboBuiltLayer("", digest, size, str(path), diff_id, "", 0, "", fs_metas)


def unpack_meta_layer(blob: Path, fs_dir: Path) -> list[str]:
    """What containerd's unpacker does with a meta layer: extract it into ``fs_dir``."""
    fs_dir.mkdir(parents=True, exist_ok=True)
    with tarfile.open(blob, "r:*") as tar:
        names = tar.getnames()
        tar.extractall(fs_dir, filter="data")
    return names


def write_turbo_oci_archive(layers: list[TurboBuiltLayer], out: Path, ref: str, store: Path) -> str:
    """The OCI layout tar of the TurboOCI image; its blobs include the originals.

    Returns the manifest digest.
    """
    descriptors: list[dict[str, object]] = []
    blobs: dict[str, bytes | Path] = {}
    for layer in layers:
        annotations = turbo_annotations(layer)
        descriptors.append({"mediaType": MEDIA_TAR_GZIP, "digest": layer.digest,
                            "size": layer.size, "annotations": annotations})  # fmt: skip
        blobs[layer.digest] = Path(layer.path)
        blobs[layer.target_digest] = store / "sha256" / layer.target_digest.split(":", 1)[1]
    return write_oci_layout(out, ref, descriptors, [layer.diff_id for layer in layers], blobs)
