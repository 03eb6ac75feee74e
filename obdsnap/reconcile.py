"""Keeping the disk and the devices in step with the metadata: start-up, Cleanup, removal.

At start-up, operations a crash cut short are settled, creates that never
finished are dropped, then Cleanup reclaims what no snapshot owns: devices
first, then mounts, then directories; whatever is busy stays. The directories
of removed snapshots go in the background (snapshot_dirs.py), or with
``asyncRemove`` at the next Cleanup; what the background leaves, Cleanup takes.
A ``new-*`` directory whose create is under way is never an orphan, and a
directory with a mount still inside is never removed: it waits for a later Cleanup.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from obdsnap.blocking import BlockingRunner
from obdsnap.device.manager import DeviceManager
from obdsnap.device.mounter import Mounter
from obdsnap.errors import AlreadyExists, SnapshotError
from obdsnap.fsutil import remove_tree
from obdsnap.layout import Layout
from obdsnap.locks import KeyedLocks
from obdsnap.overlaybd.layers import BlockLayers
from obdsnap.row_commit import commit_row
from obdsnap.storage import Kind, MetaStore, Operation, Record

log = logging.getLogger(__name__)


@dataclass
class CleanupReport:
    directories_removed: int = 0
    devices_released: int = 0
    mounts_removed: int = 0
    kept: list[str] = field(default_factory=list)  # busy, or failed to go

    def __str__(self) -> str:
        kept = f", kept (busy) {', '.join(self.kept)}" if self.kept else ""
        return (
            f"{self.directories_removed} orphan directories removed, "
            f"{self.devices_released} orphan devices released, "
            f"{self.mounts_removed} stray mounts removed{kept}"
        )


@dataclass(frozen=True)
class ReconcileReport:
    """What the start-up reconcile did."""

    snapshots: int
    settled: list[str]  # interrupted operations, and how each was settled
    creates_dropped: int
    cleanup: CleanupReport


class Reconciler:
    """Start-up reconciliation and Cleanup, sharing the snapshotter's locks.

    ``building`` holds the ``new-*`` directories of creates under way: never orphans.
    """

    def __init__(
        self,
        layout: Layout,
        store: MetaStore,
        layers: BlockLayers,
        devices: DeviceManager,
        mounter: Mounter,
        blocking: BlockingRunner,
        locks: KeyedLocks,
        building: set[Path],
    ) -> None:
        self._layout = layout
        self._store = store
        self._layers = layers
        self._devices = devices
        self._mounter = mounter
        self._blocking = blocking
        self._locks = locks
        self._building = building

    async def reconcile(self) -> ReconcileReport:
        """Operations a crash cut short first, then unfinished creates, then Cleanup."""
        settled = await self._settle_intents()
        dropped = await self._drop_unfinished_creates()
        report = await self.cleanup()
        log.info(
            "reconciled at start-up: %d snapshots; %d interrupted operations%s; "
            "%d unfinished creates dropped; %s",
            len(self._store),
            len(settled),
            f" ({'; '.join(settled)})" if settled else "",
            dropped,
            report,
        )
        return ReconcileReport(len(self._store), settled, dropped, report)

    async def cleanup(self) -> CleanupReport:
        """Remove what no snapshot owns: devices, then directories; what is busy stays.

        One failure does not stop it: the rest is still cleaned up.
        """
        report = CleanupReport()
        names = await self._blocking(self._layout.entries)
        attached = await self._devices.attached_ids()
        # Judged after the listing: a directory takes its ID only once its row is
        # durable, and a new-* directory is registered before it is made.
        orphans = self._layout.orphans(names, self._store.ids(), self._building)
        for orphan in orphans:
            if not await self._blocking(os.path.lexists, orphan):
                continue  # e.g. a new-* directory that took its ID since the listing
            if orphan.name.isdigit() and await self._has_device(int(orphan.name), attached):
                attached.discard(int(orphan.name))
                if not await self._release_orphan_device(int(orphan.name)):
                    report.kept.append(orphan.name)
                    continue
                report.devices_released += 1
            if not await self._unmount_strays(orphan, report):
                report.kept.append(orphan.name)
                continue
            log.info("cleanup: removing %s, which no snapshot owns", orphan)
            try:
                if orphan.name.isdigit():  # what it created outside its directory goes too
                    await self._layers.writable.remove_created(int(orphan.name))
                # Refused (EBUSY) if a mount appeared inside since: never removed through one.
                await self._blocking(remove_tree, orphan)
                report.directories_removed += 1
            except OSError as exc:
                log.warning(
                    "cleanup: could not remove %s (kept for a later Cleanup): %s", orphan, exc
                )
                report.kept.append(orphan.name)
        for snapshot_id in attached - self._store.ids():
            # Only our own: another snapshotter on this host may use the same HBA.
            if await self._devices.owns(snapshot_id):
                if await self._release_orphan_device(snapshot_id):
                    report.devices_released += 1
                else:
                    report.kept.append(self._devices.describe(snapshot_id))
        return report

    async def _unmount_strays(self, orphan: Path, report: CleanupReport) -> bool:
        """Unmount what is mounted under an orphan directory; False if one is still in use."""
        points = await self._blocking(self._mounter.mounts_under, orphan)
        for point in sorted(points, key=len, reverse=True):
            if await self._blocking(self._mounter.overlay_uses, Path(point)):
                log.info("cleanup: %s is the lower of an overlay; %s kept", point, orphan)
                return False
            try:
                await self._mounter.unmount(Path(point))
            except SnapshotError as exc:
                log.warning("cleanup: could not unmount %s; %s kept: %s", point, orphan, exc)
                return False
            log.info("cleanup: unmounted %s, which no snapshot owns", point)
            report.mounts_removed += 1
        return True

    async def _has_device(self, snapshot_id: int, attached: set[int]) -> bool:
        if snapshot_id in attached and await self._devices.may_own(snapshot_id):
            return True
        return await self._devices.is_marked(snapshot_id)

    async def _release_orphan_device(self, snapshot_id: int) -> bool:
        """Detach the device of a snapshot that is gone; False if an overlay still uses it."""
        async with self._locks.hold(snapshot_id):
            mountpoint = self._layout.block(snapshot_id).mountpoint
            if await self._blocking(self._mounter.overlay_uses, mountpoint):
                log.info("cleanup: device of removed snapshot %d is still in use", snapshot_id)
                return False
            try:
                await self._devices.detach(snapshot_id)
            except (OSError, SnapshotError) as exc:
                log.warning("cleanup: could not detach device %d: %s", snapshot_id, exc)
                return False
        return True

    async def _settle_intents(self) -> list[str]:
        """Finish or roll back every operation with an open intent; what was done to each.

        Device operations go first: a commit cut short during its detach finds the
        device detached. An intent that cannot be settled stays for the next start.
        """
        by_id = {record.id: record for record in self._store.records()}
        settled: list[str] = []
        for intent in sorted(self._store.intents(), key=lambda i: i.operation is Operation.COMMIT):
            what = f"{intent.operation.value} of snapshot {intent.snapshot_id}"
            try:
                if intent.operation is Operation.COMMIT:
                    record = by_id.get(intent.snapshot_id)
                    committed = record is not None and record.kind == Kind.COMMITTED
                    if record is not None and not committed:
                        committed = await self._finish_sealed_commit(record)
                    outcome = await self._layers.settle_commit(
                        intent.snapshot_id, committed=committed
                    )
                else:
                    outcome = await self._devices.reconcile(intent)
                await self._store.clear_intent(intent)
            except (OSError, SnapshotError) as exc:
                log.warning("%s, interrupted, could not be settled: %s", what, exc)
                settled.append(f"{what}: failed, {exc}")
                continue
            log.warning("%s was interrupted: %s", what, outcome)
            settled.append(f"{what} {outcome}")
        return settled

    async def _finish_sealed_commit(self, record: Record) -> bool:
        """A sealing commit that kept its request but has no row: it goes ahead.

        Its writable layer is (being) sealed, so it cannot be rolled back; the row it asked
        for is committed now. False when there is no such commit, or its name was taken.
        """
        request = await self._layers.writable.finish_seal(record.id)
        if request is None:
            return False
        parent = self._store.find(record.parent) if record.parent else None
        try:
            await commit_row(
                self._layers, self._store, record, parent, request.name, request.labels, local=True
            )
        except AlreadyExists:
            log.error(
                "snapshot %r: sealed, but %r is taken: not committed", record.key, request.name
            )
            return False
        return True

    async def _drop_unfinished_creates(self) -> int:
        """Roll back the creates a crash interrupted; none of them was acknowledged.

        A row without its directory died before the rename; a row not ready died
        during its set-up. The rows go here; their directories and devices are
        orphans that the Cleanup run after this reclaims. Returns how many.
        """
        present = set(await self._blocking(self._layout.entries))
        dropped = 0
        for record in self._store.records():
            finished = record.ready and str(record.id) in present
            if finished or self._store.has_children(record.key):
                continue
            log.warning("rolling back snapshot %r: its create never finished", record.key)
            await self._store.remove(record.key)
            dropped += 1
        return dropped
