"""Commit of an active snapshot (DESIGN-v1 §8): the writable layer turned into a layer file,
compressed (``writableCommit: compress``) or sealed (``seal``), then the row committed.

Every check comes before the first side effect (DESIGN-v1 §22 quirks 2 and 3); the
writable part runs under the commit intent, so a crash is settled at start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Mapping

from obdsnap import labels as L
from obdsnap.blocking import BlockingRunner
from obdsnap.device.manager import DeviceManager
from obdsnap.errors import AlreadyExists, FailedPrecondition
from obdsnap.layout import Layout
from obdsnap.locks import KeyedLocks
from obdsnap.mountinfo import overlay_uses
from obdsnap.overlaybd.layers import BlockLayers
from obdsnap.overlaybd.tools import ZFileConfig
from obdsnap.overlaybd.writable import CommitRequest
from obdsnap.role import StorageType, commits_local_layer
from obdsnap.row_commit import commit_row
from obdsnap.storage import MetaStore, Operation, Record
from obdsnap.turbo_commit import commit_turbo_oci


class CommitFlow:
    def __init__(
        self,
        layout: Layout,
        store: MetaStore,
        layers: BlockLayers,
        devices: DeviceManager,
        blocking: BlockingRunner,
        locks: KeyedLocks,
        *,
        seal: bool,
    ) -> None:
        self._layout = layout
        self._store = store
        self._layers = layers
        self._devices = devices
        self._blocking = blocking
        self._locks = locks
        self._seal = seal
        self._names: set[str] = set()  # the names commits under way will take

    @contextlib.contextmanager
    def reserve(self, name: str) -> Iterator[None]:
        """One commit at a time to a name: a sealed loser could not be rolled back."""
        if name in self._names:
            raise AlreadyExists(f"snapshot {name!r} already exists")
        self._names.add(name)
        try:
            yield
        finally:
            self._names.discard(name)

    async def commit_writable(
        self,
        active: Record,
        parent: Record | None,
        name: str,
        labels: Mapping[str, str],
        zfile: ZFileConfig,
    ) -> None:
        """The writable layer becomes a local layer file, then the row commits."""
        # The lock keeps a Mounts from attaching the device again half-way.
        async with self._locks.hold(active.id):
            await self._refuse_busy_device(active)
            async with self._store.intent(active.id, Operation.COMMIT):
                try:
                    await self._devices.detach(active.id)
                    if self._seal:
                        final = self._labels(active.id, labels, local=True)
                        await self._layers.writable.seal(active.id, CommitRequest(name, final))
                    else:
                        await self._layers.writable.compress(active.id, zfile)
                    await self._layers.writable.keep_config(active.id)
                    await self.commit_record(active, parent, name, labels)
                finally:
                    await asyncio.shield(self.settle(active, name))

    async def settle(self, active: Record, name: str) -> None:
        """After a commit under the intent: keep its files if the row committed, else undo."""
        committed = self._store.find(name)
        done = committed is not None and committed.id == active.id
        await self._layers.settle_commit(active.id, committed=done)

    async def commit_record(
        self,
        active: Record,
        parent: Record | None,
        name: str,
        labels: Mapping[str, str],
        storage: StorageType | None = None,
    ) -> None:
        """The row; a local block layer gets its config and ``localcommitpath`` first.

        ``storage``: the active snapshot's, when the caller has just detected it.
        """
        if L.turbo_oci_target(labels) is not None:
            await commit_turbo_oci(self._layers, self._store, active, parent, name, labels)
            return
        if storage is None:
            storage = await self._layers.storage_type(active)
        local = commits_local_layer(storage)
        final = self._labels(active.id, labels, local=local)
        await commit_row(self._layers, self._store, active, parent, name, final, local=local)

    def _labels(
        self, snapshot_id: int, labels: Mapping[str, str], *, local: bool
    ) -> dict[str, str]:
        """The committed labels: the request's, and for a local block layer its file's path
        (DESIGN-v1 §8 step 5, §22 quirk 5); sealing drops ``overlaybd.writable``."""
        final = dict(labels)
        if local:
            path = self._layers.local_commit_path(snapshot_id, seal=self._seal)
            final[L.LOCAL_COMMIT_PATH] = str(path)
            if self._seal:
                final.pop(L.WRITABLE, None)
        return final

    async def _refuse_busy_device(self, active: Record) -> None:
        """A device an overlay still stacks on (DESIGN-v1 §9's busy rule) is not committed.

        A client's own mount of the rootfs does not count: containerd's snapshotter
        suite, like its clients, commits with the rootfs still mounted.
        """
        mountpoint = self._layout.block(active.id).mountpoint
        if await self._devices.marked_device(active.id) is None:
            return
        if await self._blocking(overlay_uses, mountpoint):
            raise FailedPrecondition(
                f"cannot commit snapshot {active.key!r}: an overlay still uses its device "
                f"at {mountpoint}; unmount it first"
            )
