"""Usage of a snapshot (DESIGN-v1 §10): what its directories hold now, or what Commit recorded.

An active snapshot and a committed block layer are measured at each call: ``fs/``
and, for a block layer, ``block/`` without the device mounted in it. A committed
normal layer keeps the usage its Commit recorded; a view has none.
"""

from __future__ import annotations

from obdsnap.blocking import BlockingRunner
from obdsnap.fsutil import disk_usage
from obdsnap.layout import BlockDir, Layout
from obdsnap.overlaybd.layers import BlockLayers
from obdsnap.role import StorageType
from obdsnap.storage import Kind, Record, Usage

_SKIPPED_IN_BLOCK = frozenset({BlockDir.MOUNTPOINT_NAME})


async def snapshot_usage(
    record: Record, layers: BlockLayers, layout: Layout, blocking: BlockingRunner
) -> Usage:
    """What Usage answers; a storage type that cannot be identified fails it."""
    if record.kind == Kind.VIEW:
        return record.usage
    storage = await layers.storage_type(record)
    return await blocking(measured_usage, record, storage, layout)


def measured_usage(record: Record, storage: StorageType, layout: Layout) -> Usage:
    """Blocking: the usage of a snapshot of ``storage`` type, walked where §10 says so."""
    if record.kind == Kind.VIEW or (record.kind == Kind.COMMITTED and not storage.is_block):
        return record.usage
    return live_usage(layout, record.id, with_block=storage.is_block)


def live_usage(layout: Layout, snapshot_id: int, *, with_block: bool) -> Usage:
    """Blocking: ``fs/``, plus ``block/`` without mountpoints; each walk counts an inode once."""
    usage = disk_usage(layout.fs_dir(snapshot_id))
    if not with_block:
        return usage
    block = disk_usage(layout.block(snapshot_id).path, skip=_SKIPPED_IN_BLOCK)
    return Usage(size=usage.size + block.size, inodes=usage.inodes + block.inodes)
