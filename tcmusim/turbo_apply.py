"""Stand-in for overlaybd's ``turboOCI-apply`` (local OCI → TurboOCI conversion).

Same arguments, messages and exit statuses as the real tool where the simulator
can honour them::

    turboOCI-apply [--mkfs] [--fstype TYPE] [--verbose]
                   [--service_config_path FILEPATH] [--gz_index_path FILEPATH]
                   [--import] [--export] input_path [image_config_path]

``--export``: ``image_config_path`` is the output, the *tar meta* of the layer
tarball ``input_path``. The real tool keeps only the tar headers there (the
data stays in the tarball, which becomes the layer's ``targetFile``). The
simulator serves every layer as a whole merged image, so its tar meta carries
the data too: it is a tar of the layer's members followed by a trailer
(``TCMUSIM-TAR-META``) that marks it as exported. ``--import`` takes such a tar
meta and nothing else; the layer tarball itself is never read again.

Otherwise the layer (tar meta with ``--import``, or a tarball) is applied onto
the image that ``image_config_path`` (a config.v1.json) describes: its lowers'
merged tree (the top lower's image, read through a read-only loop mount) with
the layer applied with overlay semantics (:func:`tcmusim.mkimage.apply_tar`),
rebuilt with ``mkfs.ext4 -d`` (``--fstype ext4``, the default, the size of the
existing filesystem) or ``mkfs.erofs`` (``--fstype erofs``) and written into the
config's upper, a writable layer made by ``overlaybd-create --turboOCI``. The
upper records the top lower as its parent, as a first open by overlaybd would,
so ``overlaybd-commit -z --turboOCI`` makes a layer that stacks on those lowers.

Fidelity notes: the type is the text before any ``;`` of ``--fstype``, and only
``ext4`` and ``erofs`` are accepted (the real tool treats anything but erofs as
ext4); ext4 needs an ext4 image below (a lower's, or ``--mkfs``'d by
overlaybd-create or by ``--mkfs`` here); gzip'd tarballs are read, but no gzip
index is written (``--gz_index_path`` is accepted and unused: the simulator's
layers hold their data). Lowers are opened as overlaybd does: a TurboOCI lower
(``targetDigest``) by :mod:`tcmusim.turbo_lower`, else ``file``, else
``dir``/overlaybd.commit or overlaybd.sealed, else ``digest`` from the blob
store named by ``TCMUSIM_BLOB_STORE`` (set by ``tools.install``). Needs root
(loop mounts).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tcmusim import layerfmt
from tcmusim.backing import ServedLayer
from tcmusim.imageconfig import ImageConfig, LowerConfig, parse_image_config
from tcmusim.layerfmt import CommittedLayer, Header, Kind, LayerFormatError
from tcmusim.mkimage.layers import sha256_of
from tcmusim.mkimage.tree import BuildError, apply_tar
from tcmusim.turbo_fs import (
    FS_TYPES,
    Fatal,
    export_tar_meta,
    make_fs,
    read_base_tree,
    tar_meta_info,
)
from tcmusim.turbo_lower import TurboLayer, TurboOpenError, open_turbo_lower

TOOL = "turboOCI-apply"
BLOB_STORE_ENV = "TCMUSIM_BLOB_STORE"
TURBO_OCI_KEY = "turbo_oci"  # Header.extra: made by overlaybd-create --turboOCI


def main(argv: Sequence[str]) -> int:
    # Killed with SIGTERM, the tool still unmounts and removes its scratch files.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    parser = _parser()
    args = parser.parse_args(argv)
    if not os.path.isfile(args.input_path):
        parser.error(f"input_path: File does not exist: {args.input_path}")
    if args.export_meta:
        count = export_tar_meta(Path(args.input_path), args.image_config_path)
        print(f"objects count: {count}")
        return 0
    if not os.path.isfile(args.service_config_path):
        parser.error(f"--service_config_path: File does not exist: {args.service_config_path}")
    fstype = _fs_type(args.fstype)
    if not args.image_config_path or not os.path.exists(args.image_config_path):
        raise Fatal(f"can't found overlaybd config: {args.image_config_path}")
    _check_service_config(args.service_config_path)
    config = _image_config(args.image_config_path)
    source = Path(args.input_path)
    is_meta = tar_meta_info(source) is not None
    if args.import_meta and not is_meta:
        raise Fatal(f"failed to extract: {source} is not a tar meta (make it with --export)")
    try:
        apply_layer_to_upper(config, source, fstype, mkfs=args.mkfs)
    except OSError as exc:
        raise Fatal(f"failed to extract: {exc}") from exc
    print("turboOCI-apply done")
    return 0


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=TOOL,
        description="this is turboOCI-apply, apply OCIv1 tar layer to "
        "'Overlaybd-TurboOCI v1' format",
    )
    parser.add_argument("--mkfs", action="store_true", help="mkfs before apply")
    parser.add_argument("--fstype", default="ext4", help="filesystem type")
    parser.add_argument("--verbose", action="store_true", help="output debug info")
    parser.add_argument(
        "--service_config_path",
        default="/etc/overlaybd/overlaybd.json",
        metavar="FILEPATH",
        help="overlaybd image service config path",
    )
    parser.add_argument(
        "--gz_index_path",
        default="gzip.meta",
        metavar="FILEPATH",
        help="build gzip index if layer is gzip, only used with turboOCI",
    )
    parser.add_argument(
        "--import",
        dest="import_meta",
        action="store_true",
        help="generate turboOCI file from <input_path>",
    )
    parser.add_argument(
        "--export",
        dest="export_meta",
        action="store_true",
        help="export tar meta from <input_path>",
    )
    parser.add_argument("input_path", metavar="input_path", help="input OCIv1 tar(gz) layer path")
    parser.add_argument(
        "image_config_path", nargs="?", default="", help="overlaybd image config path"
    )
    return parser


def _fs_type(value: str) -> str:
    fstype = value.split(";", 1)[0]
    if fstype not in FS_TYPES:
        raise Fatal(
            f"unsupported --fstype '{value}': the simulator's turboOCI-apply writes "
            f"{' or '.join(FS_TYPES)}"
        )
    return fstype


# -- the configs ----------------------------------------------------------------------------


def _check_service_config(path: str) -> None:
    try:
        with open(path, "rb") as f:
            document = json.load(f)
    except (OSError, ValueError) as exc:
        raise Fatal(f"failed to create image service: {path}: {exc}") from exc
    if not isinstance(document, dict):
        raise Fatal(f"failed to create image service: {path} is not a JSON object")


def _image_config(path: str) -> ImageConfig:
    try:
        with open(path, "rb") as f:
            document = json.load(f)
        config = parse_image_config(document)
    except (OSError, ValueError) as exc:
        raise Fatal(f"failed to create image file: {path}: {exc}") from exc
    if not (config.upper_data and config.upper_index):
        raise Fatal(
            f"failed to create image file: {path} has no upper (data and index) to write into"
        )
    target = document["upper"].get("target", "")
    if not isinstance(target, str):
        raise Fatal(f"failed to create image file: {path}: upper.target must be a string")
    if target and not os.path.exists(target):
        raise Fatal(f"failed to create image file: upper target {target}: No such file")
    return config


# -- applying ---------------------------------------------------------------------------------


@dataclass
class _Upper:
    data: str
    header: Header


def apply_layer_to_upper(config: ImageConfig, source: Path, fstype: str, *, mkfs: bool) -> None:
    upper = _open_upper(config.upper_data, config.upper_index)
    top = _top_lower(config)
    size = upper.header.virtual_size or (top.virtual_size if top else 0)
    if size == 0:
        raise Fatal(f"failed to create image file: upper layer {upper.data} has no size")
    if top is not None and top.virtual_size > size:
        raise Fatal(
            f"failed to create image file: upper layer {upper.data} ({size} bytes) is "
            f"smaller than its lowers ({top.virtual_size} bytes)"
        )
    with tempfile.TemporaryDirectory(prefix="turboOCI-apply-") as scratch:
        base = Path(scratch) / "base.img"
        _expand_base(upper, top, base, size)
        merged = Path(scratch) / "merged"
        merged.mkdir(mode=0o755)
        first = top is None and not upper.header.initialized
        fresh = mkfs or (fstype == "erofs" and first)
        fs_size = read_base_tree(base, fstype, merged, size, fresh=fresh)
        try:
            apply_tar(merged, source)
        except (BuildError, OSError, tarfile.TarError) as exc:
            raise Fatal(f"failed to extract: {exc}") from exc
        image = Path(scratch) / "image"
        make_fs(fstype, merged, image, fs_size, upper.header.uuid)
        _write_upper(upper, image, size, top)


def _open_upper(data: str, index: str) -> _Upper:
    try:
        fd = os.open(data, os.O_RDONLY)
        try:
            header = layerfmt.read_header(fd)
        finally:
            os.close(fd)
        fd = os.open(index, os.O_RDONLY)
        try:
            index_header = layerfmt.read_header(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise Fatal(f"failed to create image file: {exc.filename}: {exc.strerror}") from exc
    except LayerFormatError as exc:
        raise Fatal(f"failed to create image file: upper layer: {exc}") from exc
    if header.kind is not Kind.DATA or index_header.kind is not Kind.INDEX:
        raise Fatal(f"failed to create image file: {data}, {index}: not a writable layer")
    if index_header.data_uuid != header.uuid:
        raise Fatal(f"failed to create image file: index {index} does not belong to {data}")
    if not header.extra.get(TURBO_OCI_KEY):
        raise Fatal(
            f"failed to create image file: upper layer {data} was not made with "
            "overlaybd-create --turboOCI"
        )
    return _Upper(data, header)


def _top_lower(config: ImageConfig) -> ServedLayer | None:
    top: ServedLayer | None = None
    for index, lower in enumerate(config.lowers):
        if lower.target_digest:
            top = _open_turbo(lower, config.repo_blob_url)
            continue
        layer = _open_lower(index, lower, config.repo_blob_url)
        if layer is None:
            continue
        expected = top.uuid if top else ""
        if layer.header.parent_uuid != expected:
            raise Fatal(
                f"failed to create image file: layer {index} ({layer.path}) was built on "
                f"{layer.header.parent_uuid or 'nothing'}, not on {expected or 'nothing'}"
            )
        top = layer
    return top


def _open_lower(index: int, lower: LowerConfig, repo_blob_url: str) -> CommittedLayer | None:
    path = lower.file
    if not path and lower.dir:
        for name in ("overlaybd.commit", "overlaybd.sealed"):
            if os.path.exists(os.path.join(lower.dir, name)):
                path = os.path.join(lower.dir, name)
                break
    if not path and lower.digest:
        path = _blob_path(index, lower.digest, repo_blob_url)
    if not path:
        if lower.dir and os.path.isdir(lower.dir):
            return None  # a layer without image data
        raise Fatal(f"failed to create image file: layer {index} has no file, dir or digest")
    try:
        return layerfmt.open_committed(path)
    except OSError as exc:
        raise Fatal(f"failed to open layer {index}: {path}: {exc.strerror}") from exc
    except LayerFormatError as exc:
        raise Fatal(f"failed to open layer {index}: {path}: {exc}") from exc


def _open_turbo(lower: LowerConfig, repo_blob_url: str) -> TurboLayer:
    """A TurboOCI lower, as overlaybd opens it (its meta holds the whole merged tree)."""
    store = os.environ.get(BLOB_STORE_ENV, "")
    try:
        return open_turbo_lower(lower, repo_blob_url, Path(store) if store else None, sha256_of)
    except TurboOpenError as exc:
        raise Fatal(f"failed to create image file: {exc}") from exc


def _blob_path(index: int, digest: str, repo_blob_url: str) -> str:
    store = os.environ.get(BLOB_STORE_ENV, "")
    if not repo_blob_url:
        raise Fatal(f"failed to open layer {index}: empty repoBlobUrl")
    if not store or not digest.startswith("sha256:"):
        raise Fatal(f"failed to open remote file {repo_blob_url}/{digest}: no blob store")
    return os.path.join(store, "sha256", digest.removeprefix("sha256:"))


def _expand_base(upper: _Upper, top: ServedLayer | None, out: Path, size: int) -> None:
    """The image below the layer: the upper's once written, else the top lower's."""
    fd = os.open(out, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, size)
        if upper.header.initialized or top is None:
            src = os.open(upper.data, os.O_RDONLY)
            try:
                end = layerfmt.HEADER_SIZE + upper.header.virtual_size
                for offset, length in layerfmt.data_extents(src, layerfmt.HEADER_SIZE, end):
                    layerfmt.copy_range(src, fd, length, offset, offset - layerfmt.HEADER_SIZE)
            finally:
                os.close(src)
        else:
            top.unpack_into(fd, 0)
    finally:
        os.close(fd)


def _write_upper(upper: _Upper, image: Path, size: int, top: ServedLayer | None) -> None:
    """The new image becomes the upper's content, parented on the top lower."""
    fd = os.open(upper.data, os.O_RDWR)
    try:
        os.ftruncate(fd, layerfmt.HEADER_SIZE)
        os.ftruncate(fd, layerfmt.HEADER_SIZE + size)
        src = os.open(image, os.O_RDONLY)
        try:
            for offset, length in layerfmt.data_extents(src, 0, image.stat().st_size):
                layerfmt.copy_range(src, fd, length, offset, layerfmt.HEADER_SIZE + offset)
        finally:
            os.close(src)
        header = upper.header
        header.virtual_size = size
        header.parent_uuid = top.uuid if top else ""
        header.initialized = True
        os.fsync(fd)
        layerfmt.write_header(fd, header)
        os.fsync(fd)
    finally:
        os.close(fd)
