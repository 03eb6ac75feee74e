"""Snapshot directories: made together with their metadata row, removed in the background.

A new directory is built as ``snapshots/new-XXXX`` while the row is written, and
takes the row's ID only after both; ``building`` names those under way, so that
Cleanup never takes one for an orphan. The directories of removed snapshots go
in the background once their rows are gone, those queued together in one
executor call (with ``asyncRemove`` the snapshotter queues none: Cleanup takes
them); what that leaves, Cleanup takes.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import secrets
import threading
from collections.abc import Mapping
from pathlib import Path

from obdsnap import labels as L
from obdsnap.blocking import BlockingRunner
from obdsnap.errors import SnapshotError
from obdsnap.fsutil import remove_tree, write_file_no_follow
from obdsnap.layout import NEW_DIR_PREFIX, Layout
from obdsnap.quota import NO_QUOTA_CONFIG, DiskQuota, QuotaSettings
from obdsnap.role import RwMode
from obdsnap.storage import Kind, MetaStore, Record

log = logging.getLogger(__name__)


class SnapshotDirs:
    def __init__(
        self,
        layout: Layout,
        store: MetaStore,
        blocking: BlockingRunner,
        quota: QuotaSettings = NO_QUOTA_CONFIG,
    ) -> None:
        self._layout = layout
        self._store = store
        self._blocking = blocking
        self._quota = DiskQuota(quota, blocking)
        self.building: set[Path] = set()
        self._removals: asyncio.Queue[Path] = asyncio.Queue()
        # Unique names without a getrandom(2) call each: a random prefix, then a count.
        prefix = f"{NEW_DIR_PREFIX}{secrets.token_hex(8)}-"
        self._new_names = (f"{prefix}{n}" for n in itertools.count())
        self._remover: asyncio.Task[None] | None = None
        self._stopping = threading.Event()  # read by the removal's executor thread

    async def create(
        self,
        kind: Kind,
        key: str,
        parent: str,
        labels: Mapping[str, str],
        parent_id: int | None,
        rw_mode: RwMode,
        ready: bool,
    ) -> Record:
        """The row and the directory ``snapshots/<ID>`` of a new snapshot, or neither."""
        # Named here, on the loop, so Cleanup never mistakes it for an orphan.
        new_dir = self._layout.snapshots / next(self._new_names)
        self.building.add(new_dir)
        try:
            # The directory is built while the row is committed; it takes the row's ID after both.
            built = asyncio.ensure_future(
                self._blocking(
                    self._layout.build_new_snapshot_dir,
                    new_dir,
                    active=kind == Kind.ACTIVE,
                    parent_id=parent_id,
                )
            )
            row = asyncio.ensure_future(
                self._store.create(kind, key, parent, labels, rw_mode.value, ready=ready)
            )
            await asyncio.wait([built, row])
            build_error = built.exception()
            row_error = row.exception()
            if row_error is not None:
                await self._blocking(remove_tree, new_dir)
                raise row_error
            record = row.result()
            try:
                if build_error is not None:
                    raise build_error
                work = kind == Kind.ACTIVE and parent_id is not None
                await self._quota.set_on(new_dir, record.id, key, labels, work=work)
                await self._blocking(os.rename, new_dir, self._layout.snapshot_dir(record.id))
            except Exception as exc:
                # The row goes again; its ID is never handed out a second time.
                await self._store.remove(key)
                await self._blocking(remove_tree, new_dir)
                if isinstance(exc, SnapshotError):
                    raise
                raise SnapshotError(
                    f"failed to create the directory of {key!r}: {exc}"
                ).add_context(snapshot_id=record.id, step="snapshot-dir") from exc
            await self._write_image_ref(record)
            return record
        finally:
            self.building.discard(new_dir)

    async def _write_image_ref(self, record: Record) -> None:
        """DESIGN-v1 §3: ``image_ref`` names the image; a failure to write it is only logged."""
        labels = record.info.labels
        reference = labels.get(L.CRI_IMAGE_REF, labels.get(L.IMAGE_REF))
        if reference is None:
            return
        path = self._layout.image_ref_file(record.id)
        try:
            await self._blocking(write_file_no_follow, path, reference.encode())
        except OSError as exc:
            log.warning("snapshot %r: could not write %s: %s", record.key, path, exc)

    def remove_later(self, snapshot_id: int) -> None:
        """Queue the directory of a snapshot whose row is gone."""
        self._removals.put_nowait(self._layout.snapshot_dir(snapshot_id))

    def start(self) -> None:
        """Start removing in the background (after start-up's reconcile)."""
        self._remover = asyncio.create_task(self._run(), name="snapshot-dir-remover")

    async def close(self) -> None:
        """Stop removing, and wait until stopped.

        A removal under way finishes the directory it is in; the rest of its batch and
        what is still queued are left where they are: no row names those directories
        any more, so they are orphans that the next Cleanup (at the latest, the next
        start) takes. The process exits only once its executor threads have ended,
        and a restart must not wait for a batch of hundreds of directories.
        """
        if self._remover is None:
            return
        self._stopping.set()
        self._remover.cancel()
        await asyncio.wait([self._remover])  # its cancellation is no error; ours still is
        self._remover = None

    async def _run(self) -> None:
        while True:
            directories = [await self._removals.get()]
            while not self._removals.empty():  # what queued meanwhile goes in the same hop
                directories.append(self._removals.get_nowait())
            removed = self._blocking(_remove_trees, directories, self._stopping)
            for directory, exc in await removed:
                log.warning("could not remove %s (Cleanup will retry): %s", directory, exc)


def _remove_trees(directories: list[Path], stopping: threading.Event) -> list[tuple[Path, OSError]]:
    """Blocking: remove each tree, until ``stopping``; those that could not be removed, with why."""
    failures = []
    for directory in directories:
        if stopping.is_set():
            break
        try:
            remove_tree(directory)
        except OSError as exc:
            failures.append((directory, exc))
    return failures
