"""TurboOCI images for the tests (DESIGN-v1 §12), pulled as containerd's unpacker pulls them.

An image is its original OCI layers (tar or tar.gz blobs in the simulator's
registry, which serves data from them) and one meta layer per layer. containerd
unpacks a meta layer into the snapshot's ``fs/``; here the metas are written
there directly: each fs meta a whole file system image of the merged tree up to
its layer (``tcmusim.turbo_fs.make_fs``), which the simulator serves as it
serves a real meta.
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from obdsnap.genproto.containerd.types import Mount
from obdsnap.labels import (
    BLOB_DIGEST,
    BLOB_SIZE,
    FASTOCI_TARGET_DIGEST,
    FASTOCI_TARGET_MEDIA_TYPE,
    IMAGE_REF,
    TARGET_SNAPSHOT_REF,
    TURBO_OCI_TARGET_DIGEST,
    TURBO_OCI_TARGET_MEDIA_TYPE,
)
from support.block import Image, Layer, Obd, write_tree
from support.conversion import layer_tar
from tcmusim import layerfmt
from tcmusim.mkimage import store_blob
from tcmusim.mkimage.turbo import (
    TurboBuiltLayer,
    build_turbo_layers,
    turbo_annotations,
    unpack_meta_layer,
)
from tcmusim.turbo_fs import make_fs

GZIP_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_GZIP_TYPE = "application/vnd.docker.image.rootfs.diff.tar.gzip"
TAR_TYPE = "application/vnd.oci.image.layer.v1.tar"
TURBO_VERSION = "containerd.io/snapshot/overlaybd/version"
META_SIZE = 64 << 20

LAYER_FILES: tuple[dict[str, str], ...] = (
    {"etc/os-release": "turbo base\n", "bin/hello": "hello from layer 1\n"},
    {"two.txt": "layer 2\n"},
    {"three.txt": "layer 3\n", "etc/os-release": "turbo top\n"},
)


@dataclass(frozen=True)
class TurboLayer:
    chain_id: str
    target_digest: str  # the original OCI layer blob, in the registry
    media_type: str
    meta_digest: str  # the meta layer's blob (obdsnap never reads it)
    meta_size: int
    files: Mapping[str, str]  # what the layer adds
    tree: Path  # the merged tree up to this layer: what its fs metas hold

    @property
    def gzipped(self) -> bool:
        return self.media_type in (GZIP_TYPE, DOCKER_GZIP_TYPE)


@dataclass(frozen=True)
class TurboImage:
    ref: str
    layers: tuple[TurboLayer, ...]

    @property
    def files(self) -> dict[str, str]:
        """The image's merged files: what a rootfs on its top layer reads."""
        merged: dict[str, str] = {}
        for layer in self.layers:
            merged.update(layer.files)
        return merged


def build_turbo_image(
    store: Path, work: Path, ref: str, media_types: Sequence[str], name: str = "img"
) -> TurboImage:
    """Originals of LAYER_FILES (one per media type; the base names the image) in ``store``;
    the merged trees in ``work``."""
    layers: list[TurboLayer] = []
    chain = ""
    for index, media_type in enumerate(media_types):
        files = {**LAYER_FILES[index], **({"image": f"{name}\n"} if index == 0 else {})}
        tree = work / f"{name}-tree{index}"
        if layers:
            shutil.copytree(layers[-1].tree, tree)
        write_tree(tree, files)
        tar = layer_tar(work / f"{name}-layer{index}.tar", files)
        diff_id = "sha256:" + hashlib.sha256(tar.read_bytes()).hexdigest()
        if media_type != TAR_TYPE:
            tar.write_bytes(gzip.compress(tar.read_bytes(), mtime=0))
        target, _ = store_blob(store, tar)
        chain = diff_id if not chain else _chain(chain, diff_id)
        meta = hashlib.sha256(f"meta of {target}".encode()).hexdigest()
        layers.append(TurboLayer(chain, target, media_type, f"sha256:{meta}", 4096, files, tree))
    return TurboImage(ref, tuple(layers))


def _chain(parent: str, diff_id: str) -> str:
    return "sha256:" + hashlib.sha256(f"{parent} {diff_id}".encode()).hexdigest()


def turbo_labels(
    image: TurboImage, index: int, *, legacy: bool = False, ref_label: str = IMAGE_REF
) -> dict[str, str]:
    """The labels containerd unpacks a TurboOCI layer with (``legacy``: the fastoci names)."""
    layer = image.layers[index]
    digest, media = (
        (FASTOCI_TARGET_DIGEST, FASTOCI_TARGET_MEDIA_TYPE)
        if legacy
        else (TURBO_OCI_TARGET_DIGEST, TURBO_OCI_TARGET_MEDIA_TYPE)
    )
    labels = {
        TARGET_SNAPSHOT_REF: layer.chain_id,
        BLOB_DIGEST: layer.meta_digest,
        BLOB_SIZE: str(layer.meta_size),
        digest: layer.target_digest,
        media: layer.media_type,
        TURBO_VERSION: "0.1.0-turbo.ociv1",
    }
    if ref_label:
        labels[ref_label] = image.ref
    return labels


def write_metas(fs_dir: Path, layer: TurboLayer, fs_types: Sequence[str]) -> None:
    """What the meta layer unpacks to: the fs metas, the marker, the gzip index."""
    for fs_type in fs_types:
        make_fs(fs_type, layer.tree, fs_dir / f"{fs_type}.fs.meta", META_SIZE, layer.chain_id)
    (fs_dir / ".turbo.ociv1").write_bytes(b"")
    if layer.gzipped:
        (fs_dir / "gzip.meta").write_bytes(b"gzip index of " + layer.target_digest.encode())


async def unpack_turbo_layer(
    obd: Obd,
    image: TurboImage,
    index: int,
    fs_types: Sequence[str],
    labels: Mapping[str, str] | None = None,
) -> tuple[str, int, list[Mount]]:
    """Prepare the layer's unpack (as a normal layer), put its metas into fs/, Commit it.

    Returns its extract key, its snapshot ID and what Prepare answered.
    """
    layer = image.layers[index]
    labels = turbo_labels(image, index) if labels is None else labels
    parent = image.layers[index - 1].chain_id if index else ""
    key = f"extract-{index} {layer.chain_id}"
    mounts = await obd.prepare(key, parent, labels)
    snapshot_id = obd.latest_id()
    write_metas(obd.fs(snapshot_id), layer, fs_types)
    await obd.commit(layer.chain_id, key, labels)
    return key, snapshot_id, mounts


async def unpack_turbo(obd: Obd, image: TurboImage, fs_types: Sequence[str]) -> list[int]:
    """Every layer, base first; their snapshot IDs."""
    ids = []
    for index in range(len(image.layers)):
        ids.append((await unpack_turbo_layer(obd, image, index, fs_types))[1])
    return ids


def build_erofs_image(store: Path, work: Path, ref: str, files: Mapping[str, str]) -> Image:
    """A native EROFS overlaybd image of one layer (no fs label tells it, DESIGN-v1 §14)."""
    tree = write_tree(work / "erofs-tree", files)
    image = work / "erofs.img"
    make_fs("erofs", tree, image, META_SIZE, "erofs-image")
    with image.open("r+b") as f:
        f.truncate(META_SIZE)
    layer_uuid = layerfmt.derived_uuid("layer", "", "erofs-image")
    header = layerfmt.Header(
        magic=layerfmt.Magic.LSMT,
        kind=layerfmt.Kind.COMMIT,
        virtual_size=META_SIZE,
        uuid=layer_uuid,
    )
    packed = work / "erofs.commit"
    with image.open("rb") as src, packed.open("xb") as out:
        layerfmt.pack(src.fileno(), 0, header, out.fileno(), tar_name=None)
    digest, size = store_blob(store, packed)
    diff_id = "sha256:" + hashlib.sha256(f"diff of {digest}".encode()).hexdigest()
    return Image(ref, (Layer(digest, size, diff_id, store / "sha256" / digest.split(":")[1]),))


@dataclass(frozen=True)
class PackedTurboImage:
    """A TurboOCI image as ``tcmusim mkimage --turbo-oci`` builds it: metas without file data,
    which the device reads from the original blobs."""

    ref: str
    layers: tuple[TurboBuiltLayer, ...]
    chain_ids: tuple[str, ...]

    def labels(self, index: int) -> dict[str, str]:
        """What containerd unpacks meta layer ``index`` with: its annotations and the ref."""
        return {
            TARGET_SNAPSHOT_REF: self.chain_ids[index],
            IMAGE_REF: self.ref,
            **turbo_annotations(self.layers[index]),
        }


def build_packed_turbo_image(
    store: Path, work: Path, ref: str, fs_types: Sequence[str]
) -> PackedTurboImage:
    """LAYER_FILES as a TurboOCI image with gzip originals, metas of ``fs_types``."""
    sources = [
        layer_tar(work / f"packed-layer{index}.tar", files)
        for index, files in enumerate(LAYER_FILES)
    ]
    layers = build_turbo_layers(sources, store, fs_types=fs_types, work_dir=work)
    chain: list[str] = []
    for layer in layers:
        chain.append(_chain(chain[-1], layer.diff_id) if chain else layer.diff_id)
    return PackedTurboImage(ref, tuple(layers), tuple(chain))


async def unpack_packed_turbo(obd: Obd, image: PackedTurboImage) -> list[int]:
    """containerd's unpacker: each meta layer extracted into its snapshot's fs/, committed."""
    ids = []
    parent = ""
    for index, layer in enumerate(image.layers):
        key = f"extract-{index} {image.chain_ids[index]}"
        labels = image.labels(index)
        await obd.prepare(key, parent, labels)
        ids.append(obd.latest_id())
        unpack_meta_layer(Path(layer.path), obd.fs(ids[-1]))
        await obd.commit(image.chain_ids[index], key, labels)
        parent = image.chain_ids[index]
    return ids
