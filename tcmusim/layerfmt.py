"""The stand-in overlaybd layer format: real magic, simple body.

Every file starts with a 4096-byte header block: the overlaybd magic as three
little-endian uint64 (LSMT for writable data/index files and plain commits,
ZFile for ``-z`` commits), the 8-byte marker ``TCMUSIM1``, then a JSON object,
NUL-padded. What follows depends on the kind:

``data`` (``block/writable_data``)
    the raw virtual disk image, ``virtual_size`` bytes at offset 4096, sparse,
    so a loop device with ``--offset 4096`` serves it directly.
``index`` (``block/writable_index``)
    the header only; it names the data file it belongs to (``data_uuid``).
``sealed`` (``overlaybd.sealed``, from ``overlaybd-commit --seal``)
    a data file sealed in place: same body as ``data``, read-only, and served as
    a lower without unpacking (its extents are the file's data regions).
``commit`` (``overlaybd.commit``, registry blobs)
    packed: the image's data extents, each at a 4096-aligned file offset, then
    a table of ``(virtual offset, length, file offset)`` little-endian uint64
    triples. Compact (it holds only written data, as a real ZFile/LSMT commit
    does), so it fits in a layer tarball; it is expanded into a sparse image to
    be served.

A commit optionally comes wrapped in a one-member tar (``overlaybd-commit -t``);
readers skip the 512-byte tar header, as overlaybd's tar file adaptor does.

Layers stack because every layer holds the whole merged image up to itself:
``uuid``/``parent_uuid`` record the chain, and a writable layer is initialised
from its parent's image on its first open.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import json
import os
import struct
import tarfile
import uuid as uuidlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HEADER_SIZE = 4096
TAR_BLOCK = 512
MARKER = b"TCMUSIM1"
FORMAT_VERSION = 1
_MAGIC_STRUCT = struct.Struct("<3Q")
_EXTENT = struct.Struct("<3Q")
_COPY_CHUNK = 1 << 20


class Magic(enum.Enum):
    LSMT = (564050879402828, 5478704352671792741, 9993152565363659426)
    ZFILE = (281910587246170, 7384066304294679924, 7017278244700045632)

    @property
    def raw(self) -> bytes:
        return _MAGIC_STRUCT.pack(*self.value)


class Kind(enum.StrEnum):
    DATA = "data"
    INDEX = "index"
    COMMIT = "commit"
    SEALED = "sealed"


class LayerFormatError(Exception):
    """The file is not a layer of the expected kind, or is damaged."""


@dataclass
class Header:
    magic: Magic
    kind: Kind
    virtual_size: int
    uuid: str
    parent_uuid: str = ""
    data_uuid: str = ""  # index: the data file it pairs with
    initialized: bool = False  # data: filled from the parent image on first open
    sparse: bool = False  # data: created with overlaybd-create -s
    algorithm: str = ""  # zfile commit
    block_size: int = 0  # zfile commit, bytes
    table_offset: int = 0  # commit: extent table, relative to the layer start
    extent_count: int = 0
    message: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def encode(self) -> bytes:
        fields = asdict(self)
        fields.pop("magic")
        fields["kind"] = self.kind.value
        document = {"format": "tcmusim-overlaybd", "version": FORMAT_VERSION, **fields}
        body = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
        raw = self.magic.raw + MARKER + body
        if len(raw) >= HEADER_SIZE:
            raise LayerFormatError("layer header does not fit in its block")
        return raw.ljust(HEADER_SIZE, b"\0")

    @classmethod
    def decode(cls, raw: bytes) -> Header:
        magic = magic_of_bytes(raw)
        if magic is None:
            raise LayerFormatError("no overlaybd magic")
        if raw[24:32] != MARKER:
            raise LayerFormatError("overlaybd magic, but not a tcmusim layer (no TCMUSIM1 marker)")
        try:
            document = json.loads(raw[32:HEADER_SIZE].split(b"\0", 1)[0])
            if document.get("version") != FORMAT_VERSION:
                raise LayerFormatError(f"unsupported layer version {document.get('version')!r}")
            return cls(
                magic=magic,
                kind=Kind(document["kind"]),
                virtual_size=int(document["virtual_size"]),
                uuid=str(document["uuid"]),
                parent_uuid=str(document.get("parent_uuid", "")),
                data_uuid=str(document.get("data_uuid", "")),
                initialized=bool(document.get("initialized", False)),
                sparse=bool(document.get("sparse", False)),
                algorithm=str(document.get("algorithm", "")),
                block_size=int(document.get("block_size", 0)),
                table_offset=int(document.get("table_offset", 0)),
                extent_count=int(document.get("extent_count", 0)),
                message=str(document.get("message", "")),
                extra=dict(document.get("extra", {})),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise LayerFormatError(f"damaged layer header: {exc}") from exc


def magic_of_bytes(raw: bytes) -> Magic | None:
    """The magic of a file's first bytes; a short file counts as zero-padded."""
    values = _MAGIC_STRUCT.unpack(raw[:24].ljust(24, b"\0"))
    for magic in Magic:
        if values == magic.value:
            return magic
    return None


def magic_of(path: str | Path) -> Magic | None:
    with open(path, "rb") as f:
        return magic_of_bytes(f.read(32))


def new_uuid() -> str:
    return str(uuidlib.uuid4())


def derived_uuid(*parts: str) -> str:
    """A UUID that only depends on ``parts`` (deterministic layer builds)."""
    digest = hashlib.sha256("\0".join(parts).encode()).digest()
    return str(uuidlib.UUID(bytes=digest[:16], version=4))


def tar_base(fd: int) -> int:
    """Where the layer starts: 512 inside a one-member tar (``-t``), else 0."""
    raw = os.pread(fd, TAR_BLOCK, 0)
    if len(raw) == TAR_BLOCK and raw[257:262] == b"ustar":
        return TAR_BLOCK
    return 0


def read_header(fd: int, base: int = 0) -> Header:
    raw = os.pread(fd, HEADER_SIZE, base)
    if len(raw) < 32:
        raise LayerFormatError("file too short for a layer header")
    return Header.decode(raw.ljust(HEADER_SIZE, b"\0"))


def write_header(fd: int, header: Header, base: int = 0) -> None:
    os.pwrite(fd, header.encode(), base)


def data_extents(fd: int, start: int, end: int) -> Iterator[tuple[int, int]]:
    """``(offset, length)`` of the data regions of ``fd`` within ``[start, end)``."""
    offset = start
    while offset < end:
        try:
            data = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError:  # ENXIO: nothing but a hole up to the end of the file
            return
        if data >= end:
            return
        hole = min(os.lseek(fd, data, os.SEEK_HOLE), end)
        yield data, hole - data
        offset = hole


def copy_range(src: int, dst: int, length: int, src_offset: int, dst_offset: int) -> None:
    while length > 0:
        try:
            done = os.copy_file_range(src, dst, min(length, 1 << 30), src_offset, dst_offset)
        except OSError:
            done = 0
        if done <= 0:
            chunk = os.pread(src, min(length, _COPY_CHUNK), src_offset)
            if not chunk:
                raise LayerFormatError("layer shorter than its extent table says")
            done = os.pwrite(dst, chunk, dst_offset)
        length -= done
        src_offset += done
        dst_offset += done


def create_writable(
    data_path: Path,
    index_path: Path,
    virtual_size: int,
    *,
    sparse: bool,
    parent_uuid: str = "",
    extra: dict[str, Any] | None = None,
) -> Header:
    """overlaybd-create: a fresh data/index pair, both created exclusively."""
    header = Header(
        magic=Magic.LSMT,
        kind=Kind.DATA,
        virtual_size=virtual_size,
        uuid=new_uuid(),
        parent_uuid=parent_uuid,
        sparse=sparse,
        extra=dict(extra or {}),
    )
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL
    fd = os.open(data_path, flags, 0o644)
    try:
        write_header(fd, header)
        os.ftruncate(fd, HEADER_SIZE + virtual_size)
    finally:
        os.close(fd)
    index = Header(
        magic=Magic.LSMT,
        kind=Kind.INDEX,
        virtual_size=virtual_size,
        uuid=new_uuid(),
        data_uuid=header.uuid,
    )
    fd = os.open(index_path, flags, 0o644)
    try:
        write_header(fd, index)
    finally:
        os.close(fd)
    return header


def pack(src: int, src_base: int, header: Header, out: int, *, tar_name: str | None) -> Header:
    """Write the image ``src[src_base : src_base + virtual_size]`` as a commit to ``out``.

    ``header`` supplies magic, uuids and compression fields; the extent table
    fields are filled in. With ``tar_name``, the layer is wrapped in a tar.
    """
    base = TAR_BLOCK if tar_name else 0
    position = HEADER_SIZE
    table = bytearray()
    count = 0
    for offset, length in data_extents(src, src_base, src_base + header.virtual_size):
        copy_range(src, out, length, offset, base + position)
        table += _EXTENT.pack(offset - src_base, length, position)
        count += 1
        position = _align(position + length)
    header.kind = Kind.COMMIT
    header.table_offset = position
    header.extent_count = count
    os.pwrite(out, bytes(table), base + position)
    write_header(out, header, base)
    size = position + len(table)
    if tar_name:
        info = tarfile.TarInfo(tar_name)
        info.size, info.mode, info.mtime = size, 0o644, 0
        os.pwrite(out, info.tobuf(format=tarfile.USTAR_FORMAT), 0)
        end = TAR_BLOCK + _align(size, TAR_BLOCK)
        os.pwrite(out, b"\0" * (end - TAR_BLOCK - size + 2 * TAR_BLOCK), TAR_BLOCK + size)
    return header


def _align(value: int, unit: int = HEADER_SIZE) -> int:
    return (value + unit - 1) // unit * unit


@dataclass(frozen=True)
class Extent:
    virtual_offset: int
    length: int
    file_offset: int


@dataclass
class CommittedLayer:
    """An opened, validated commit (a lower layer)."""

    path: str
    base: int
    header: Header
    extents: list[Extent]
    stat: os.stat_result

    @property
    def uuid(self) -> str:
        return self.header.uuid

    @property
    def virtual_size(self) -> int:
        return self.header.virtual_size

    def unpack_into(self, dst: int, dst_base: int) -> None:
        """Write the image's data into ``dst`` at ``dst_base`` (which must read as zeros)."""
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for extent in self.extents:
                copy_range(
                    fd,
                    dst,
                    extent.length,
                    self.base + extent.file_offset,
                    dst_base + extent.virtual_offset,
                )
        finally:
            os.close(fd)


def open_committed(path: str) -> CommittedLayer:
    """Open and check a commit or sealed layer; OSError if it cannot, LayerFormatError if bad."""
    fd = os.open(path, os.O_RDONLY)
    try:
        st = os.fstat(fd)
        base = tar_base(fd)
        header = read_header(fd, base)
        if header.kind is Kind.SEALED and base == 0:
            return _open_sealed(fd, path, header, st)
        if header.kind is not Kind.COMMIT:
            raise LayerFormatError(f"a {header.kind.value} file, not a committed layer")
        layer_size = st.st_size - base
        table_size = header.extent_count * _EXTENT.size
        if header.table_offset < HEADER_SIZE or header.table_offset + table_size > layer_size:
            raise LayerFormatError("extent table outside the file (truncated layer?)")
        raw = os.pread(fd, table_size, base + header.table_offset)
        extents = [Extent(*_EXTENT.unpack_from(raw, i)) for i in range(0, table_size, _EXTENT.size)]
        for extent in extents:
            if (
                extent.virtual_offset + extent.length > header.virtual_size
                or extent.file_offset < HEADER_SIZE
                or extent.file_offset + extent.length > header.table_offset
            ):
                raise LayerFormatError("extent out of bounds (damaged layer)")
        return CommittedLayer(path, base, header, extents, st)
    finally:
        os.close(fd)


def _open_sealed(fd: int, path: str, header: Header, st: os.stat_result) -> CommittedLayer:
    """A sealed layer keeps the data file's body: its extents are where data was written."""
    end = HEADER_SIZE + header.virtual_size
    extents = [
        Extent(offset - HEADER_SIZE, length, offset)
        for offset, length in data_extents(fd, HEADER_SIZE, end)
    ]
    return CommittedLayer(path, 0, header, extents, st)


def seal(data_path: Path, index_path: Path) -> Header:
    """overlaybd-commit --seal: the data file becomes a read-only layer, in place.

    Only the header changes, and it is written in one ``pwrite`` after the body is
    durable, so a seal cut short leaves the writable layer as it was.
    """
    fd = os.open(data_path, os.O_RDWR)
    try:
        header = read_header(fd)
        index_fd = os.open(index_path, os.O_RDONLY)
        try:
            index = read_header(index_fd)
        finally:
            os.close(index_fd)
        if header.kind is not Kind.DATA or index.kind is not Kind.INDEX:
            raise LayerFormatError("not a writable data/index pair")
        if index.data_uuid != header.uuid:
            raise LayerFormatError("the index belongs to another data file")
        os.fsync(fd)
        header.kind = Kind.SEALED
        write_header(fd, header)
        os.fsync(fd)
        return header
    finally:
        os.close(fd)


def image_digest(fd: int, base: int, virtual_size: int) -> str:
    """A digest of the image's content that ignores where its holes are stored."""
    digest = hashlib.sha256(str(virtual_size).encode())
    for offset, length in data_extents(fd, base, base + virtual_size):
        position, end = offset, offset + length
        while position < end:
            chunk = os.pread(fd, min(_COPY_CHUNK, end - position), position)
            if chunk.count(0) != len(chunk):
                digest.update(struct.pack("<Q", position - base))
                digest.update(chunk)
            position += len(chunk)
    return digest.hexdigest()


def remove_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
