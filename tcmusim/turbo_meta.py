"""The TurboOCI fs meta (``ext4.fs.meta``, ``erofs.fs.meta``): an fs image without its file data.

Like the real TurboOCI meta, it holds the filesystem's metadata only; each
file's data stays in the original OCI layer blobs and is read from there when
the layer is served. A meta is a packed layer file (:mod:`tcmusim.layerfmt`, a
``commit``): the fs image with its file data regions left as holes, so only the
metadata is stored. After the extent table comes the *data map*, a JSON object
(located by ``Header.extra["turbo_oci_meta"]``)::

    {"targets": ["sha256:<original blob>", ...],
     "regions": [[device offset, length, target index, offset in the target's tar], ...]}

Offsets in a target are in the uncompressed layer tar (a gzip original is
decompressed to read them). A region may name an older layer's original: the
file it belongs to came from that layer.

A meta that is a plain fs image (superblock at 1024, data included, as
:func:`tcmusim.turbo_fs.make_fs` makes it) is read as a meta with an empty data
map, so a tree turned into an image serves as a TurboOCI layer too.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from tcmusim import layerfmt, turbo_fs
from tcmusim.layerfmt import CommittedLayer, Header, Kind, LayerFormatError, Magic

META_KEY = "turbo_oci_meta"  # Header.extra of a packed meta (not "turbo_oci": a §13 layer)
_EXTENT_SIZE = 24
_ALIGN = 4096


@dataclass(frozen=True)
class Region:
    """``length`` bytes at ``device_offset`` are at ``tar_offset`` in target ``target``."""

    device_offset: int
    length: int
    target: int
    tar_offset: int


@dataclass
class DataMap:
    targets: list[str] = field(default_factory=list)
    regions: list[Region] = field(default_factory=list)

    def target_index(self, digest: str) -> int:
        if digest not in self.targets:
            self.targets.append(digest)
        return self.targets.index(digest)

    def encode(self) -> bytes:
        regions = [[r.device_offset, r.length, r.target, r.tar_offset] for r in self.regions]
        document = {"targets": self.targets, "regions": regions}
        return json.dumps(document, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes) -> DataMap:
        try:
            document = json.loads(raw)
            targets = [str(target) for target in document["targets"]]
            regions = [Region(*(int(value) for value in entry)) for entry in document["regions"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise LayerFormatError(f"damaged TurboOCI data map: {exc}") from exc
        if any(not 0 <= region.target < len(targets) for region in regions):
            raise LayerFormatError("damaged TurboOCI data map: a region names no target")
        return cls(targets, regions)


@dataclass
class FsMeta:
    """An opened meta: its image (metadata only, or a whole plain fs image) and data map."""

    path: str
    stat: os.stat_result
    uuid: str
    virtual_size: int
    fs_type: str
    data_map: DataMap
    packed: CommittedLayer | None  # None: a plain fs image

    def unpack_into(self, dst: int, dst_base: int) -> None:
        """Write the meta's own blocks into ``dst`` (which must read as zeros)."""
        if self.packed is not None:
            self.packed.unpack_into(dst, dst_base)
            return
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for offset, length in layerfmt.data_extents(fd, 0, self.stat.st_size):
                layerfmt.copy_range(fd, dst, length, offset, dst_base + offset)
        finally:
            os.close(fd)


def write_meta(image: Path, out: Path, *, fs_type: str, uuid: str, data_map: DataMap) -> None:
    """Pack ``image`` (its data regions already holes) with ``data_map`` into the meta ``out``."""
    size = _align(image.stat().st_size)
    header = Header(magic=Magic.LSMT, kind=Kind.COMMIT, virtual_size=size, uuid=uuid)
    src = os.open(image, os.O_RDONLY)
    fd = os.open(out, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        layerfmt.pack(src, 0, header, fd, tar_name=None)
        raw = data_map.encode()
        offset = header.table_offset + header.extent_count * _EXTENT_SIZE
        os.pwrite(fd, raw, offset)
        header.extra[META_KEY] = {"fs": fs_type, "map_offset": offset, "map_length": len(raw)}
        layerfmt.write_header(fd, header)
    finally:
        os.close(src)
        os.close(fd)


def read_meta(path: str) -> FsMeta:
    """Open a meta; OSError if it cannot be read, LayerFormatError if it is not a meta."""
    st = os.stat(path)
    fs_type = turbo_fs.fs_type_of(Path(path))
    if fs_type is not None:
        uuid = layerfmt.derived_uuid("turbo-oci", os.path.realpath(path), str(st.st_ino),
                                     str(st.st_mtime_ns))  # fmt: skip
        return FsMeta(path, st, uuid, _align(st.st_size), fs_type, DataMap(), None)
    packed = layerfmt.open_committed(path)
    info = packed.header.extra.get(META_KEY)
    if not isinstance(info, dict):
        raise LayerFormatError("neither an fs image nor a TurboOCI fs meta")
    fd = os.open(path, os.O_RDONLY)
    try:
        raw = os.pread(fd, int(info["map_length"]), packed.base + int(info["map_offset"]))
    finally:
        os.close(fd)
    data_map = DataMap.decode(raw)
    size = packed.virtual_size
    return FsMeta(path, packed.stat, packed.uuid, size, str(info["fs"]), data_map, packed)


def _align(value: int) -> int:
    return (value + _ALIGN - 1) // _ALIGN * _ALIGN
