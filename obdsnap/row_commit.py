"""The last step of every Commit: the committed row, after the files it names."""

from __future__ import annotations

from collections.abc import Mapping

from obdsnap.overlaybd.layers import BlockLayers
from obdsnap.storage import MetaStore, Record


async def commit_row(
    layers: BlockLayers,
    store: MetaStore,
    active: Record,
    parent: Record | None,
    name: str,
    labels: Mapping[str, str],
    *,
    local: bool,
) -> None:
    """Commit the row with ``labels``; a ``local`` block layer gets its config first."""
    if local:
        await layers.write_local_config(active, parent)
    await store.commit(active.key, name, await layers.layer_usage(active.id), labels)
