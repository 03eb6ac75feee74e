"""The snapshotter: snapshot directories and the mounts containerd gets for them.

The model is containerd's overlayfs snapshotter (snapshots/overlay): a plain
OCI layer is a directory ``fs/`` and a container's rootfs an overlay of its
parents' ``fs/``. Metadata lives in the MetaStore; this module keeps the
directories in step with it and never holds a metadata transaction while it
touches the disk.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from obdsnap import filters
from obdsnap.blocking import BlockingRunner, CompletionGuard
from obdsnap.errors import AlreadyExists, FailedPrecondition, InvalidArgument, SnapshotError
from obdsnap.fsutil import disk_usage, remove_tree
from obdsnap.labels import validate_key, validate_labels
from obdsnap.layout import NEW_DIR_PREFIX, Layout
from obdsnap.mounts import Mount, bind_mount, overlay_mount
from obdsnap.storage import Info, Kind, MetaStore, Record, Usage

log = logging.getLogger(__name__)

LIST_CHUNK = 100


class Snapshotter:
    def __init__(
        self,
        layout: Layout,
        store: MetaStore,
        *,
        index_off: bool,
        blocking: BlockingRunner | None = None,
    ) -> None:
        self._layout = layout
        self._store = store
        self._index_off = index_off
        self._blocking = blocking or BlockingRunner()
        self._guard = CompletionGuard()
        self._building: set[Path] = set()
        self._removals: asyncio.Queue[Path] = asyncio.Queue()
        self._remover: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._drop_unfinished_creates()
        self._remover = asyncio.create_task(self._remove_dirs(), name="snapshot-dir-remover")

    async def close(self) -> None:
        await self._guard.drain()
        if self._remover is not None:
            self._remover.cancel()
            self._remover = None

    # ------------------------------------------------------------------ create

    async def prepare(self, key: str, parent: str, labels: Mapping[str, str]) -> list[Mount]:
        return await self._create(Kind.ACTIVE, key, parent, labels)

    async def view(self, key: str, parent: str, labels: Mapping[str, str]) -> list[Mount]:
        return await self._create(Kind.VIEW, key, parent, labels)

    async def _create(
        self, kind: Kind, key: str, parent: str, labels: Mapping[str, str]
    ) -> list[Mount]:
        validate_key(key)
        validate_labels(labels)
        parent_id = self._committed_parent(parent).id if parent else None
        if self._store.find(key) is not None:
            raise AlreadyExists(f"snapshot {key!r} already exists")
        record = await self._guard.run(self._create_snapshot(kind, key, parent, labels, parent_id))
        return self._mounts(record)

    def _committed_parent(self, parent: str) -> Record:
        record = self._store.get(parent)
        if record.kind != Kind.COMMITTED:
            raise InvalidArgument(f"parent {parent!r} is not a committed snapshot")
        return record

    async def _create_snapshot(
        self,
        kind: Kind,
        key: str,
        parent: str,
        labels: Mapping[str, str],
        parent_id: int | None,
    ) -> Record:
        # Named here, on the loop, so Cleanup never mistakes it for an orphan.
        new_dir = self._layout.snapshots / f"{NEW_DIR_PREFIX}{secrets.token_hex(8)}"
        self._building.add(new_dir)
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
            row = asyncio.ensure_future(self._store.create(kind, key, parent, labels))
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
                await self._blocking(os.rename, new_dir, self._layout.snapshot_dir(record.id))
            except Exception as exc:
                # The row goes again; its ID is never handed out a second time.
                await self._store.remove(key)
                await self._blocking(remove_tree, new_dir)
                raise SnapshotError(f"failed to create the directory of {key!r}: {exc}") from exc
            return record
        finally:
            self._building.discard(new_dir)

    # ------------------------------------------------------------------ mounts

    async def mounts(self, key: str) -> list[Mount]:
        validate_key(key)
        record = self._store.get(key)
        if record.kind not in (Kind.ACTIVE, Kind.VIEW):
            raise FailedPrecondition(f"snapshot {key!r} is not active or view")
        return self._mounts(record)

    def _mounts(self, record: Record) -> list[Mount]:
        parents = self._store.ancestors(record)
        fs = self._layout.fs_dir
        if not parents:
            return [bind_mount(fs(record.id), readonly=record.kind == Kind.VIEW)]
        if record.kind == Kind.ACTIVE:
            lowers = [fs(parent.id) for parent in parents]
            return [
                overlay_mount(
                    lowers,
                    upper=fs(record.id),
                    work=self._layout.work_dir(record.id),
                    index_off=self._index_off,
                )
            ]
        if len(parents) == 1:
            return [bind_mount(fs(parents[0].id), readonly=True)]
        return [overlay_mount([fs(p.id) for p in parents], index_off=self._index_off)]

    # ------------------------------------------------------------------ commit, remove

    async def commit(self, name: str, key: str, labels: Mapping[str, str]) -> None:
        validate_key(name, "name")
        validate_key(key)
        validate_labels(labels)
        active = self._store.get(key)
        if self._store.find(name) is not None:
            raise AlreadyExists(f"snapshot {name!r} already exists")
        if active.kind != Kind.ACTIVE:
            raise FailedPrecondition(f"snapshot {key!r} is not active")
        usage = await self._blocking(disk_usage, self._layout.fs_dir(active.id))
        await self._guard.run(self._store.commit(key, name, usage, labels))

    async def remove(self, key: str) -> None:
        validate_key(key)
        record = await self._guard.run(self._store.remove(key))
        # The row is gone for good; the directory is reclaimed in the background.
        self._removals.put_nowait(self._layout.snapshot_dir(record.id))

    async def _remove_dirs(self) -> None:
        while True:
            directory = await self._removals.get()
            try:
                await self._blocking(remove_tree, directory)
            except OSError as exc:
                log.warning("could not remove %s (Cleanup will retry): %s", directory, exc)

    # ------------------------------------------------------------------ info

    def stat(self, key: str) -> Info:
        validate_key(key)
        return self._store.get(key).info

    async def update(self, info: Info, paths: Sequence[str]) -> Info:
        validate_key(info.name)
        validate_labels(info.labels)
        return await self._guard.run(self._store.update(info.name, info.labels, paths))

    def walk(self, filter_strings: Sequence[str]) -> Iterator[list[Info]]:
        """Matching infos in chunks of LIST_CHUNK; a bad filter raises before the first chunk."""
        selected = filters.parse_all(filter_strings)
        return _chunks(
            (record.info for record in self._store.records()),
            lambda info: selected.match(_info_fields(info)),
        )

    async def usage(self, key: str) -> Usage:
        validate_key(key)
        record = self._store.get(key)
        if record.kind == Kind.ACTIVE:
            return await self._blocking(disk_usage, self._layout.fs_dir(record.id))
        return record.usage

    # ------------------------------------------------------------------ cleanup

    async def cleanup(self) -> None:
        orphans = await self._blocking(
            self._layout.unknown_entries, self._store.ids(), set(self._building)
        )
        for orphan in orphans:
            log.info("cleanup: removing %s, which no snapshot owns", orphan)
            await self._blocking(remove_tree, orphan)

    async def _drop_unfinished_creates(self) -> None:
        """Rows of creates that died between the row and the rename have no directory.

        They were never acknowledged; drop them (their directories are
        ``new-*`` leftovers that Cleanup reclaims).
        """
        present = set(await self._blocking(os.listdir, self._layout.snapshots))
        for record in self._store.records():
            if str(record.id) in present or self._store.has_children(record.key):
                continue
            log.warning("dropping snapshot %r: its create never finished", record.key)
            await self._store.remove(record.key)


def _info_fields(info: Info) -> filters.Lookup:
    def lookup(path: Sequence[str]) -> str | None:
        if not path:
            return None
        field = path[0]
        if field == "name":
            return info.name
        if field == "parent":
            return info.parent
        if field == "kind":
            return info.kind.label if info.kind != Kind.UNKNOWN else None
        if field == "labels" and info.labels:
            return info.labels.get(".".join(path[1:]))
        return None

    return lookup


def _chunks(infos: Iterable[Info], keep: Callable[[Info], bool]) -> Iterator[list[Info]]:
    chunk: list[Info] = []
    for info in infos:
        if keep(info):
            chunk.append(info)
            if len(chunk) == LIST_CHUNK:
                yield chunk
                chunk = []
    if chunk:
        yield chunk
