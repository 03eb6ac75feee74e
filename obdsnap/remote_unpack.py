"""The unpack of a remote overlaybd layer that containerd is told to skip (DESIGN §6 2.).

The layer is committed under its target at once, with its device config; the
``ALREADY_EXISTS`` answer makes containerd skip the download. The config is
written before the row commits: a crash in between leaves a snapshot that is not
ready, which start-up rolls back.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import NoReturn

from obdsnap import labels as L
from obdsnap.errors import AlreadyExists
from obdsnap.overlaybd.layers import BlockLayers
from obdsnap.storage import MetaStore, Record


async def commit_remote_layer(
    layers: BlockLayers,
    store: MetaStore,
    record: Record,
    parent: Record | None,
    target: str,
    undo: Callable[[Record], Awaitable[None]],
) -> NoReturn:
    """Commit ``record`` as ``target``; when another unpack took it first, ``undo`` it."""
    await layers.write_remote_config(record, parent)
    labels = {**record.info.labels, L.REMOTE: L.REMOTE_VALUE}
    try:
        await store.commit(record.key, target, await layers.layer_usage(record.id), labels)
    except AlreadyExists:
        await undo(record)
    raise AlreadyExists(f'target snapshot "{target}": already exists')
