"""What a local TurboOCI conversion reads and writes besides layers: tar metas and fs images.

The tar meta (``turboOCI-apply --export``): the real tool keeps only a layer
tarball's headers; the simulator's layers hold their data, so its tar meta is a
tar of all the layer's members (contents too) followed by a trailer that marks
it as exported (``TCMUSIM-TAR-META``, a JSON object and its length).

The fs images: the filesystem type of an image (superblock magic at 1024), its
tree read through a read-only loop mount, and a new image made from a tree
(``mkfs.ext4 -d`` as the image builder does, or ``mkfs.erofs``).
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from tcmusim import layerfmt
from tcmusim.mkimage.layers import make_ext4
from tcmusim.mkimage.tree import BuildError

FS_TYPES = ("ext4", "erofs")
TAR_META_MARK = b"TCMUSIM-TAR-META"
_TRAILER = struct.Struct("<16sQ")  # mark, length of the JSON before it
_SUPERBLOCK = 1024
_EXT4_MAGIC = 0xEF53
_EROFS_MAGIC = 0xE0F5E1E2
_EXT4_INCOMPAT_64BIT = 0x80


class Fatal(Exception):
    """The tool gives up: message to stderr, exit status 255 (the C tools' exit(-1))."""


# -- the tar meta ---------------------------------------------------------------------


def export_tar_meta(source: Path, out: str) -> int:
    """Write the tar meta of ``source`` to ``out``; the number of members."""
    try:
        fd = os.open(out, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    except OSError as exc:
        raise Fatal(f"failed to open file '{out}', {exc.errno}: {exc.strerror}") from exc
    try:
        with os.fdopen(fd, "w+b") as f:
            count = _copy_members(source, f)
            trailer = json.dumps({"format": "tcmusim-tar-meta", "version": 1, "members": count})
            f.write(trailer.encode() + _TRAILER.pack(TAR_META_MARK, len(trailer)))
            f.flush()
            os.fsync(f.fileno())
    except (Fatal, OSError) as exc:
        layerfmt.remove_quietly(Path(out))
        if isinstance(exc, Fatal):
            raise
        raise Fatal(f"create dst file failed: {exc}") from exc
    return count


def _copy_members(source: Path, out: IO[bytes]) -> int:
    try:
        with (
            tarfile.open(source, "r:*") as tar,
            tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as meta,
        ):
            count = 0
            for member in tar:
                meta.addfile(member, tar.extractfile(member) if member.isreg() else None)
                count += 1
    except (tarfile.TarError, EOFError) as exc:
        raise Fatal(f"failed to dump tar headers of {source}: {exc}") from exc
    if count == 0:
        raise Fatal(f"failed to dump tar headers of {source}: no tar header found")
    return count


def tar_meta_info(path: Path) -> dict[str, object] | None:
    """The trailer of a tar meta made by ``--export``; None for anything else."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        if size < _TRAILER.size:
            return None
        f.seek(size - _TRAILER.size)
        mark, length = _TRAILER.unpack(f.read(_TRAILER.size))
        if mark != TAR_META_MARK or length > size - _TRAILER.size:
            return None
        f.seek(size - _TRAILER.size - length)
        try:
            info = json.loads(f.read(length))
        except ValueError:
            return None
    return info if isinstance(info, dict) else None


# -- filesystem images ----------------------------------------------------------------


def fs_type_of(image: Path) -> str | None:
    """``ext4``, ``erofs`` or None, from the superblock magic."""
    with open(image, "rb") as f:
        f.seek(_SUPERBLOCK)
        raw = f.read(1024)
    if len(raw) < 1024:
        return None
    if struct.unpack_from("<I", raw, 0)[0] == _EROFS_MAGIC:
        return "erofs"
    if struct.unpack_from("<H", raw, 56)[0] == _EXT4_MAGIC:
        return "ext4"
    return None


def _ext4_size(image: Path) -> int:
    with open(image, "rb") as f:
        f.seek(_SUPERBLOCK)
        raw = f.read(1024)
    blocks: int = struct.unpack_from("<I", raw, 4)[0]
    block_size: int = 1024 << struct.unpack_from("<I", raw, 24)[0]
    if struct.unpack_from("<I", raw, 0x60)[0] & _EXT4_INCOMPAT_64BIT:
        blocks |= struct.unpack_from("<I", raw, 0x150)[0] << 32
    return blocks * block_size


def read_base_tree(base: Path, fstype: str, merged: Path, size: int, *, fresh: bool) -> int:
    """Copy the base image's tree into ``merged``; the size of the filesystem to make.

    ``fresh``: the layer starts a new filesystem (``--mkfs``, or erofs without lowers).
    """
    if fresh:
        return size
    found = fs_type_of(base)
    if found != fstype:
        what = found or "no filesystem"
        if fstype == "ext4":
            raise Fatal(f"new extfs failed, the image holds {what}, not ext4")
        raise Fatal(f"failed to extract: the lowers hold {what}, not {fstype}")
    with mounted_image(base, fstype) as mountpoint:
        command = ["cp", "-a", f"{mountpoint}/.", str(merged)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise Fatal(f"failed to read the lowers' tree: {done.stderr.strip()}")
    return _ext4_size(base) if fstype == "ext4" else size


@contextlib.contextmanager
def mounted_image(image: Path, fstype: str) -> Iterator[Path]:
    """``image`` mounted read-only through a loop device, on ``<image>.mnt``."""
    mountpoint = image.with_name(image.name + ".mnt")
    mountpoint.mkdir()
    done = subprocess.run(
        ["mount", "-t", fstype, "-o", "ro,loop", str(image), str(mountpoint)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise Fatal(f"failed to mount the {fstype} image {image}: {done.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        unmounted = subprocess.run(["umount", str(mountpoint)], capture_output=True, check=False)
        if unmounted.returncode != 0:  # never leave the loop mount behind
            subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True, check=False)


def make_fs(fstype: str, root: Path, image: Path, size: int, layer_uuid: str) -> None:
    if fstype == "ext4":
        try:
            make_ext4(root, image, size, layer_uuid)
        except BuildError as exc:
            raise Fatal(f"failed to extract: {exc}") from exc
        return
    done = subprocess.run(
        ["mkfs.erofs", "--quiet", "-U", layerfmt.derived_uuid("fs", layer_uuid), str(image),
         str(root)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise Fatal(f"failed to extract: mkfs.erofs: {done.stderr.strip()}")
    if image.stat().st_size > size:
        raise Fatal(f"failed to extract: the erofs image does not fit in {size} bytes")
