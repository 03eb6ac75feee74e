"""Which kind of layer a snapshot is: a plain OCI layer, or an overlaybd block layer."""

from __future__ import annotations

import struct
from collections.abc import Mapping
from pathlib import Path

from obdsnap.layout import Layout
from obdsnap.role import StorageType as StorageType
from obdsnap.role import is_remote_layer

ZFILE_MAGIC = (281910587246170, 7384066304294679924, 7017278244700045632)
LSMT_MAGIC = (564050879402828, 5478704352671792741, 9993152565363659426)
_HEADER_SIZE = 32
_MAGIC = struct.Struct("<3Q")


def detect_storage_type(labels: Mapping[str, str], layout: Layout, snapshot_id: int) -> StorageType:
    """Blocking: the checks of the Go snapshotter, in its order.

    Labels first; then the committed layer file and the writable layer's data: a
    file with the overlaybd magic is a local block layer, a non-empty file without
    it a normal layer; then a device config marks a remote layer.
    """
    if is_remote_layer(labels):
        return StorageType.REMOTE_BLOCK
    block = layout.block(snapshot_id)
    commit_file = layout.commit_file(snapshot_id)
    for layer_file, tolerate_errors in ((commit_file, True), (block.writable_data, False)):
        header = _read_header(layer_file, tolerate_errors)
        if header:
            return StorageType.LOCAL_BLOCK if has_overlaybd_magic(header) else StorageType.NORMAL
    if block.config.exists():
        return StorageType.REMOTE_BLOCK
    return StorageType.NORMAL


def has_overlaybd_magic(header: bytes) -> bool:
    """ZFile or LSMT magic in the first 24 bytes (a short header counts as zero-padded)."""
    magic = _MAGIC.unpack_from(header.ljust(_HEADER_SIZE, b"\0"))
    return magic in (ZFILE_MAGIC, LSMT_MAGIC)


def _read_header(path: Path, tolerate_errors: bool) -> bytes:
    """The first bytes of a layer file; b"" when it is absent (or unreadable, if tolerated)."""
    try:
        with path.open("rb") as layer:
            return layer.read(_HEADER_SIZE)
    except FileNotFoundError:
        return b""
    except OSError:
        if tolerate_errors:
            return b""
        raise
