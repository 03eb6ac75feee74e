"""Which kind of layer a snapshot is: plain OCI, overlaybd block, or a local layer to convert."""

from __future__ import annotations

import enum
import errno
import struct
from collections.abc import Mapping
from pathlib import Path

from obdsnap import labels as L
from obdsnap.layout import Layout, WritableDir
from obdsnap.role import StorageType as StorageType
from obdsnap.role import is_remote_layer

ZFILE_MAGIC = (281910587246170, 7384066304294679924, 7017278244700045632)
LSMT_MAGIC = (564050879402828, 5478704352671792741, 9993152565363659426)
_HEADER_SIZE = 32
_MAGIC = struct.Struct("<3Q")


class LayerMagic(enum.Enum):
    ZFILE = ZFILE_MAGIC  # a compressed, read-only layer file
    LSMT = LSMT_MAGIC  # a writable layer, or an uncompressed (sealed or committed) one


def detect_storage_type(labels: Mapping[str, str], layout: Layout, snapshot_id: int) -> StorageType:
    """Blocking: the checks of the Go snapshotter, in its order (DESIGN-v1 §4).

    Labels first; then the committed layer file, the sealed file and the writable
    layer's data: a file with the overlaybd magic is a local block layer, a non-empty
    file without it a normal layer; then a ``layer.tar`` makes a local layer; then a
    device config marks a remote layer. A writable data file that cannot be read (an
    empty one included) is an error, unless ``layer.tar`` decides first.
    """
    if is_remote_layer(labels):
        return StorageType.REMOTE_BLOCK
    for layer_file in (layout.commit_file(snapshot_id), layout.sealed_file(snapshot_id)):
        header = _read_header(layer_file)
        if header:
            return _by_magic(header)
    writable_data = writable_dir_of(labels, layout, snapshot_id).data
    writable_error: OSError | None = None
    try:
        header = _read_header(writable_data, tolerate_errors=False)
        if header:
            return _by_magic(header)
        writable_error = OSError(errno.ENODATA, "empty overlaybd layer file", str(writable_data))
    except FileNotFoundError:
        pass
    except OSError as exc:
        writable_error = exc
    if layout.layer_tar(snapshot_id).exists():
        return StorageType.LOCAL_LAYER
    if writable_error is not None:
        raise writable_error
    if layout.block(snapshot_id).config.exists():
        return StorageType.REMOTE_BLOCK
    return StorageType.NORMAL


def writable_dir_of(labels: Mapping[str, str], layout: Layout, snapshot_id: int) -> WritableDir:
    """``overlay.active.path`` when the label is set, else the snapshot's ``block/``.

    Only an absolute path counts: a relative one (refused for writable layers) would
    name a file relative to wherever obdsnap runs.
    """
    active_path = labels.get(L.ACTIVE_PATH, "")
    if active_path.startswith("/"):
        return WritableDir(Path(active_path))
    return layout.block(snapshot_id).writable


def has_overlaybd_magic(header: bytes) -> bool:
    """ZFile or LSMT magic in the first 24 bytes (a short header counts as zero-padded)."""
    return magic_of(header) is not None


def magic_of(header: bytes) -> LayerMagic | None:
    magic = _MAGIC.unpack_from(header.ljust(_HEADER_SIZE, b"\0"))
    return next((known for known in LayerMagic if known.value == magic), None)


def file_magic(path: Path) -> LayerMagic | None:
    """Blocking: the overlaybd magic the (readable) file at ``path`` starts with, if any."""
    return magic_of(_read_header(path, tolerate_errors=False))


def _by_magic(header: bytes) -> StorageType:
    return StorageType.LOCAL_BLOCK if has_overlaybd_magic(header) else StorageType.NORMAL


def _read_header(path: Path, *, tolerate_errors: bool = True) -> bytes:
    """The first bytes of a layer file; b"" when it is absent or unreadable, if tolerated."""
    try:
        with path.open("rb") as layer:
            return layer.read(_HEADER_SIZE)
    except OSError:
        if tolerate_errors:  # absent or unreadable: the next check decides
            return b""
        raise
