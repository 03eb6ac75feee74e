"""Commit of a TurboOCI meta layer (DESIGN-v1 §8 step 5, §12 rule 2).

containerd has unpacked the meta layer into ``fs/``; the committed layer is a
remote block layer by its labels, whose device reads the metas from ``fs/`` and
the data from the original blobs. Its config is written before the row commits,
durably: a crash in between leaves the snapshot active (a Commit again rewrites
the config), never a committed layer without one.
"""

from __future__ import annotations

from collections.abc import Mapping

from obdsnap.errors import SnapshotError
from obdsnap.overlaybd.layers import BlockLayers
from obdsnap.role import is_remote_layer
from obdsnap.row_commit import commit_row
from obdsnap.storage import MetaStore, Record

NORMAL_STORAGE = 1  # Go's storageTypeNormal, as its message names it


class TurboOciConfigFailed(SnapshotError):
    """UNKNOWN, as Go answers: ``failed to construct overlaybd config: …``."""


async def commit_turbo_oci(
    layers: BlockLayers,
    store: MetaStore,
    active: Record,
    parent: Record | None,
    name: str,
    labels: Mapping[str, str],
) -> None:
    """The layer's TurboOCI config, then the row; nothing is committed if the config fails."""
    if not is_remote_layer(labels):
        raise TurboOciConfigFailed(
            f"failed to construct overlaybd config: unexpect storage {NORMAL_STORAGE} of "
            f"snapshot {name} during construct overlaybd spec(id={active.id}): a TurboOCI "
            "layer is committed with its blob labels and an image-ref label"
        )
    try:
        await layers.write_remote_config(active, parent, labels)
    except (SnapshotError, OSError, ValueError) as exc:
        raise TurboOciConfigFailed(f"failed to construct overlaybd config: {exc}") from exc
    await commit_row(layers, store, active, parent, name, labels, local=False)
