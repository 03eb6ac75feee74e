"""Where each file's data is, in an fs image and in the original layer tars.

The merged tree's regular files each come from one layer tar (the last one that
wrote them): :class:`Origins` follows that while the layers are applied. After
``mkfs``, the image is mounted read-only and asked (``FS_IOC_FIEMAP``) where
each file's blocks are; each block-aligned extent becomes a data map region
(its bytes are checked against the tar they come from) and a hole in the image.
Data the filesystem packs with its metadata (erofs inline tails) stays.
"""

from __future__ import annotations

import fcntl
import os
import stat
import struct
import subprocess
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tcmusim import turbo_fs
from tcmusim.mkimage.tree import BuildError, walk
from tcmusim.turbo_meta import DataMap, Region

_FS_IOC_FIEMAP = 0xC020660B
_FIEMAP = struct.Struct("=QQIIII")
_EXTENT = struct.Struct("=QQQQQIIII")
_FLAG_SYNC = 0x1
_EXTENT_LAST = 0x1
# Unknown place, delayed, encoded, encrypted, not block-aligned, inline, unwritten.
_NOT_PLAIN = 0x2 | 0x4 | 0x8 | 0x80 | 0x100 | 0x200 | 0x800
_BATCH = 64
_BLOCK = 4096


@dataclass(frozen=True)
class Origin:
    """A file's data: ``size`` bytes at ``offset`` in the uncompressed tar ``tar``."""

    digest: str  # of the original blob
    tar: Path
    offset: int


class Origins:
    """Which layer tar each regular file of the merged tree comes from."""

    def __init__(self) -> None:
        self._files: dict[str, Origin] = {}

    def apply(self, merged: Path, tar_path: Path, digest: str) -> None:
        """Record the layer's files; call after the layer is applied onto ``merged``."""
        with tarfile.open(tar_path, "r:") as tar:
            for member in tar:
                name = os.path.normpath("/" + member.name).lstrip("/")
                if member.isreg():
                    self._files[name] = Origin(digest, tar_path, member.offset_data)
                elif member.islnk():
                    target = os.path.normpath("/" + member.linkname).lstrip("/")
                    if target in self._files:
                        self._files[name] = self._files[target]
        # Whiteouts and replaced entries: keep only what is still a regular file.
        self._files = {
            name: origin
            for name, origin in self._files.items()
            if stat.S_ISREG(_lstat_mode(merged / name))
        }

    def of(self, name: str) -> Origin:
        try:
            return self._files[name]
        except KeyError:
            raise BuildError(f"{name}: no layer tar holds its data") from None


def _lstat_mode(path: Path) -> int:
    try:
        return os.lstat(path).st_mode
    except FileNotFoundError:
        return 0


def map_and_punch(image: Path, fs_type: str, merged: Path, origins: Origins) -> DataMap:
    """The data map of ``image`` (made from ``merged``), its data regions made holes."""
    data_map = DataMap()
    found: dict[int, tuple[Region, Path]] = {}
    try:
        with turbo_fs.mounted_image(image, fs_type) as mountpoint:
            for name, st in walk(merged):
                if not stat.S_ISREG(st.st_mode) or st.st_size == 0:
                    continue
                origin = origins.of(name)
                target = data_map.target_index(origin.digest)
                for logical, physical, length in _extents(mountpoint / name):
                    length = min(length, st.st_size - logical)
                    region = Region(physical, length, target, origin.offset + logical)
                    found.setdefault(physical, (region, origin.tar))
    except turbo_fs.Fatal as exc:
        raise BuildError(str(exc)) from exc
    _check_and_clear(image, found.values())
    data_map.regions = sorted((region for region, _ in found.values()),
                              key=lambda region: region.device_offset)  # fmt: skip
    return data_map


def _check_and_clear(image: Path, regions: Iterable[tuple[Region, Path]]) -> None:
    """Check each region's bytes against its tar, zero them, then make every zero block a hole."""
    fd = os.open(image, os.O_RDWR)
    try:
        for region, tar_path in regions:
            with open(tar_path, "rb") as tar:
                tar.seek(region.tar_offset)
                expected = tar.read(region.length)
            if os.pread(fd, region.length, region.device_offset) != expected:
                raise BuildError(f"{image}: the data at {region.device_offset} is not its tar's")
            os.pwrite(fd, bytes(region.length), region.device_offset)
    finally:
        os.close(fd)
    done = subprocess.run(["fallocate", "--dig-holes", str(image)], capture_output=True,
                          text=True, check=False)  # fmt: skip
    if done.returncode != 0:
        raise BuildError(f"fallocate --dig-holes {image}: {done.stderr.strip()}")


def _extents(path: Path) -> Iterator[tuple[int, int, int]]:
    """``(logical, physical, length)`` of the file's plain, block-aligned extents."""
    fd = os.open(path, os.O_RDONLY)
    try:
        start = 0
        while True:
            request = bytearray(
                _FIEMAP.pack(start, (1 << 64) - 1 - start, _FLAG_SYNC, 0, _BATCH, 0)
            )
            request += bytes(_EXTENT.size * _BATCH)
            fcntl.ioctl(fd, _FS_IOC_FIEMAP, request)
            mapped = _FIEMAP.unpack_from(request)[3]
            if mapped == 0:
                return
            for i in range(mapped):
                logical, physical, length, _, _, flags, *_ = _EXTENT.unpack_from(
                    request, _FIEMAP.size + i * _EXTENT.size
                )
                if not flags & _NOT_PLAIN:
                    yield logical, physical, length
                if flags & _EXTENT_LAST:
                    return
                start = logical + length
    finally:
        os.close(fd)
