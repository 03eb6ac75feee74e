"""Commit of a local layer (DESIGN-v1 §4): an active snapshot holding a ``layer.tar``.

Its layer is converted to TurboOCI (overlaybd/conversion.py, §13), then the row is
committed as a local block layer (§8 step 5). Both run under the commit intent: a crash
in between is rolled back at start-up (``BlockLayers.settle_commit``), leaving the
active snapshot as it was, to be committed again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping

from obdsnap import labels as L
from obdsnap.commit_flow import CommitFlow
from obdsnap.errors import FailedPrecondition, NotFound
from obdsnap.locks import KeyedLocks
from obdsnap.overlaybd.conversion import conversion_fs_type
from obdsnap.overlaybd.device_config import DeviceConfig
from obdsnap.overlaybd.layers import BlockLayers
from obdsnap.storage import Kind, MetaStore, Operation, Record


class LocalLayerCommit:
    def __init__(
        self,
        store: MetaStore,
        layers: BlockLayers,
        commits: CommitFlow,
        default_fs_type: str,
    ) -> None:
        self._store = store
        self._layers = layers
        self._commits = commits
        self._default_fs_type = default_fs_type
        self._converting = KeyedLocks()

    async def commit(
        self, active: Record, parent: Record | None, name: str, labels: Mapping[str, str]
    ) -> None:
        """Convert, then commit the row; the caller has reserved ``name``.

        One conversion at a time per snapshot: a second Commit of the key waits, then
        finds it committed (NOT_FOUND) instead of converting into the same ``temp/``.
        """
        base = await self._base_config(active, parent)
        fs_type = conversion_fs_type(labels, self._default_fs_type)
        async with self._converting.hold(active.id):
            current = self._store.find(active.key)
            if current is None or current.id != active.id or current.kind != Kind.ACTIVE:
                raise NotFound(f"snapshot {active.key!r} does not exist")
            await self._keep_own_config(active.id)
            async with self._store.intent(active.id, Operation.COMMIT):
                try:
                    await self._layers.conversion.convert(active.id, fs_type, base)
                    # §8 step 5: a local block layer is no writable layer.
                    final = {key: value for key, value in labels.items() if key != L.WRITABLE}
                    await self._commits.commit_record(active, parent, name, final)
                finally:
                    await asyncio.shield(self._commits.settle(active, name))

    async def _base_config(self, active: Record, parent: Record | None) -> DeviceConfig:
        """The layer stacks on its parent's lowers: a parent must be an overlaybd layer."""
        try:
            return await self._layers.config_from_parent(active.id, parent)
        except FileNotFoundError:
            assert parent is not None  # only a parent's config is read
            raise FailedPrecondition(
                f"cannot convert snapshot {active.key!r} to TurboOCI: its parent "
                f"{parent.key!r} is not an overlaybd layer (it has no device config)"
            ) from None

    async def _keep_own_config(self, snapshot_id: int) -> None:
        """A config the snapshot had before is kept before the intent, put back on a roll-back."""
        with contextlib.suppress(FileNotFoundError):
            await self._layers.writable.keep_config(snapshot_id)
