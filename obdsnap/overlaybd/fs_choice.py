"""Which file system a snapshot's device is mounted with (DESIGN-v1 §11).

Before the device exists: the ``blob-fs-type`` label of the device's snapshot
(its own when writable, the parent's otherwise), else the file system of its
TurboOCI metas (the bottom layer's choice, §22 quirk 12), else the boot
config's ``defaultFsType``. Once the device is there, the sniff: an EROFS
superblock makes it EROFS, whatever was chosen (never the reverse).
"""

from __future__ import annotations

from obdsnap import labels as L
from obdsnap.device.filesystem import FsSpec, fs_spec, spec_for
from obdsnap.overlaybd.layers import BlockLayers
from obdsnap.overlaybd.turbo_oci import served_fs_type
from obdsnap.storage import Record


class DeviceFs:
    """The file system chosen for a snapshot's device before the sniff."""

    def __init__(self, layers: BlockLayers, default_fs_type: str) -> None:
        self._layers = layers
        self._default = default_fs_type

    async def spec(self, record: Record) -> FsSpec:
        """``record``: the snapshot whose labels decide (own when writable, else the parent)."""
        labels = record.info.labels
        if labels.get(L.BLOB_FS_TYPE):
            return fs_spec(labels)
        if L.turbo_oci_target(labels) is not None:
            config = await self._layers.read_config(record.id)
            fs_type = served_fs_type(config.lowers)
            if fs_type is not None:
                return spec_for(fs_type)
        return spec_for(self._default)
