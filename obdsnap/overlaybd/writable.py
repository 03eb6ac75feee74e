"""A writable layer's life (DESIGN-v1 §6 step 5, §8): where its files live, made or
reused at Prepare, compressed or sealed at Commit, and settled after a crash.

Its files live in ``block/`` or in the ``overlay.active.path`` directory. A layer
outside ``block/`` is recorded in ``block/writable_location`` with whether obdsnap
created it there or found it (reused): obdsnap deletes only the files it created.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from obdsnap import labels as L
from obdsnap.blocking import BlockingRunner
from obdsnap.errors import FailedPrecondition, SnapshotError, failure_context
from obdsnap.fsutil import fsync_path, write_file_durably
from obdsnap.layout import BlockDir, Layout, WritableDir
from obdsnap.overlaybd.storage_type import LayerMagic, file_magic
from obdsnap.overlaybd.tools import OverlaybdTools, ZFileConfig

log = logging.getLogger(__name__)

READ_ONLY_LAYER = "local block device is readonly, not support writable"


@dataclass(frozen=True)
class Location:
    """Where a snapshot's writable layer is, and whether obdsnap made it there."""

    dir: WritableDir
    created: bool = True


@dataclass(frozen=True)
class CommitRequest:
    """What a sealing commit commits: a crash after the seal finishes it at start-up."""

    name: str
    labels: Mapping[str, str]


def vsize_gb(labels: Mapping[str, str], *, has_parent: bool) -> int:
    """The ``vsize`` label without a parent, 0 with one (the layer takes its lowers' size).

    Absent or not a decimal integer (as Go's ``strconv.Atoi`` reads it): 64. Zero or
    less, which Go would hand to overlaybd-create, gives a layer without a size: 64 too.
    """
    if has_parent:
        return 0
    value = labels.get(L.VSIZE, "")
    if not re.fullmatch(r"[+-]?[0-9]+", value) or int(value) <= 0:
        return L.DEFAULT_VSIZE_GB
    return int(value)


class WritableLayers:
    def __init__(
        self, layout: Layout, tools: OverlaybdTools, blocking: BlockingRunner, *, sparse: bool
    ) -> None:
        self._layout = layout
        self._tools = tools
        self._blocking = blocking
        self._sparse = sparse
        self._dir_locks: dict[Path, asyncio.Lock] = {}

    # ------------------------------------------------------------------ create

    async def create(self, snapshot_id: int, labels: Mapping[str, str], vsize: int) -> WritableDir:
        """Make the layer (or reuse the one found in ``overlay.active.path``); its directory."""
        active_path = labels.get(L.ACTIVE_PATH, "")
        block = self._layout.block(snapshot_id)
        if not active_path:
            await self._make(snapshot_id, block.writable, vsize)
            return block.writable
        L.validate_active_path(active_path, str(self._layout.root))
        place = WritableDir(Path(active_path))
        # Two Prepares on one directory: one creates the layer, the other reuses it.
        async with self._dir_locks.setdefault(place.path, asyncio.Lock()):
            if await self._blocking(_existing_layer, place):
                await self._blocking(_write_location, block, Location(place, created=False))
                return place
            # Recorded first: whatever the tool leaves there is then known to be ours.
            await self._blocking(_write_location, block, Location(place))
            await self._make(snapshot_id, place, vsize)
        return place

    async def _make(self, snapshot_id: int, place: WritableDir, vsize: int) -> None:
        with failure_context(snapshot_id=snapshot_id, step="overlaybd-create"):
            await self._tools.create_writable_layer(
                place.data, place.index, vsize, sparse=self._sparse
            )

    async def location(self, snapshot_id: int) -> Location:
        return await self._blocking(_read_location, self._layout.block(snapshot_id))

    async def remove_created(self, snapshot_id: int) -> None:
        """Before the snapshot's directory goes: the files it created outside it go too."""
        location = await self.location(snapshot_id)
        if location.created and location.dir != self._layout.block(snapshot_id).writable:
            await self._blocking(_remove_files, location.dir.data, location.dir.index)

    # ------------------------------------------------------------------ commit

    async def compress(self, snapshot_id: int, zfile: ZFileConfig) -> None:
        """``overlaybd-commit -z`` the writable layer into ``fs/overlaybd.commit``.

        The tool writes a partial file that is renamed into place once complete, so
        a commit cut by a crash leaves no half layer file and can simply be retried.
        """
        place = (await self.location(snapshot_id)).dir
        partial = self._layout.partial_commit_file(snapshot_id)
        with failure_context(snapshot_id=snapshot_id, step="overlaybd-commit"):
            await self._blocking(_remove_files, partial)
            await self._tools.commit_writable_layer(place.data, place.index, partial, zfile)
            await self._blocking(_publish, partial, self._layout.commit_file(snapshot_id))

    async def seal(self, snapshot_id: int, request: CommitRequest) -> None:
        """``overlaybd-commit --seal`` where the layer lives; then it moves to ``fs/``.

        A sealed layer is no writable layer any more, and a crash may hide whether the
        tool finished: once ``request`` is kept (first), the commit can only go ahead.
        """
        place = (await self.location(snapshot_id)).dir
        sealed = self._layout.sealed_file(snapshot_id)
        if not await self._blocking(_same_filesystem, place.path, sealed.parent):
            raise FailedPrecondition(
                f"cannot seal the writable layer in {place.path}: it is on another "
                f"filesystem than {sealed.parent}, where the sealed file must go"
            )
        block = self._layout.block(snapshot_id)
        await self._blocking(_write_request, block.commit_request, request)
        with failure_context(snapshot_id=snapshot_id, step="overlaybd-commit --seal"):
            await self._tools.seal_writable_layer(place.data, place.index)
            await self._blocking(_move, place.data, sealed)

    async def finish_seal(self, snapshot_id: int) -> CommitRequest | None:
        """After a crash: a seal that kept its request goes ahead; the request, sealed file
        in ``fs/``. None when no seal was under way.

        The seal may have finished without obdsnap seeing it, and a sealed layer is no
        writable layer any more: so the seal is run again (a layer sealed already makes
        the tool fail, which is expected) and the file moved into ``fs/``.
        """
        request = await self._blocking(
            _read_request, self._layout.block(snapshot_id).commit_request
        )
        sealed = self._layout.sealed_file(snapshot_id)
        if request is None or await self._blocking(sealed.exists):
            return request
        place = (await self.location(snapshot_id)).dir
        try:
            await self._tools.seal_writable_layer(place.data, place.index)
        except SnapshotError as exc:
            log.warning("snapshot %d: sealed already (seal again: %s)", snapshot_id, exc)
        await self._blocking(_move, place.data, sealed)
        return request

    async def settle(self, snapshot_id: int, *, committed: bool) -> None:
        """After a commit, however it ended: drop what the layer file replaced, or undo.

        Committed: the writable files go, unless the layer was reused and is still
        there (a compress leaves it to its owner; a seal took its data). Not
        committed: a sealed file moved into ``fs/`` goes back, a compressed one is
        deleted, and the writable config is put back.
        """
        location = await self.location(snapshot_id)
        block = self._layout.block(snapshot_id)
        if committed:
            dropped = [block.kept_config, block.writable_location, block.commit_request]
            if location.created or not await self._blocking(location.dir.data.exists):
                dropped += [location.dir.data, location.dir.index]
            await self._blocking(_remove_files, *dropped)
            return
        await self._blocking(_move_back, self._layout.sealed_file(snapshot_id), location.dir.data)
        await self._blocking(_restore, block.kept_config, block.config)
        await self._blocking(
            _remove_files,
            self._layout.partial_commit_file(snapshot_id),
            self._layout.commit_file(snapshot_id),
            block.commit_request,
        )

    async def keep_config(self, snapshot_id: int) -> None:
        """Before a commit replaces the writable layer's config: keep it for a roll-back."""
        block = self._layout.block(snapshot_id)
        await self._blocking(_keep, block.config, block.kept_config)


def adopt_found_layer(block: BlockDir, place: WritableDir) -> None:
    """Blocking, at an import: a layer another snapshotter left outside ``block/`` is
    recorded as found there, so obdsnap seals and compresses it in place and never
    deletes it. A location obdsnap recorded itself stays as it is.
    """
    if place != block.writable and not block.writable_location.exists():
        _write_location(block, Location(place, created=False))


def _existing_layer(place: WritableDir) -> bool:
    """Blocking: make the directory; True when a reusable layer is already there.

    Refused: half a layer, and a data file that is no writable layer (a compressed
    layer file, or one without the overlaybd magic).
    """
    place.path.mkdir(mode=0o700, parents=True, exist_ok=True)
    present = [path.exists() for path in (place.data, place.index)]
    if not any(present):
        return False
    if not all(present):
        missing = place.index if present[0] else place.data
        raise FailedPrecondition(f"writable layer in {place.path} is incomplete: no {missing.name}")
    match file_magic(place.data):
        case LayerMagic.ZFILE:
            raise FailedPrecondition(f"{READ_ONLY_LAYER}: {place.data}")
        case None:
            raise FailedPrecondition(f"{place.data} is not an overlaybd writable layer")
    return True


def _write_request(path: Path, request: CommitRequest) -> None:
    document = {"name": request.name, "labels": dict(request.labels)}
    write_file_durably(path, json.dumps(document).encode())


def _read_request(path: Path) -> CommitRequest | None:
    """The request a seal kept; None when there is none, or only part of one.

    The seal starts only once its request is complete on disk, so a request cut short
    (left by a crash of an obdsnap that wrote it in place) means no seal was under way.
    """
    try:
        document = json.loads(path.read_bytes())
        return CommitRequest(str(document["name"]), dict(document["labels"]))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("%s is no complete commit request (%s): no seal was under way", path, exc)
        return None


def _same_filesystem(first: Path, second: Path) -> bool:
    return os.stat(first).st_dev == os.stat(second).st_dev


def _read_location(block: BlockDir) -> Location:
    try:
        document = json.loads(block.writable_location.read_bytes())
    except FileNotFoundError:
        return Location(block.writable)
    return Location(WritableDir(Path(document["dir"])), created=bool(document["created"]))


def _write_location(block: BlockDir, location: Location) -> None:
    document = {"dir": str(location.dir.path), "created": location.created}
    write_file_durably(block.writable_location, json.dumps(document).encode())


def _move(source: Path, target: Path) -> None:
    """Blocking: a durable rename (the source's directory too, when it is another one)."""
    os.replace(source, target)
    fsync_path(target.parent)
    if source.parent != target.parent:
        fsync_path(source.parent)


def _move_back(sealed: Path, data: Path) -> None:
    """Blocking: undo a seal's move into ``fs/``, if it got that far."""
    if sealed.exists() and not data.exists():
        _move(sealed, data)


def _publish(partial: Path, final: Path) -> None:
    """Blocking: make ``partial`` durable, then atomically ``final``."""
    fsync_path(partial)
    os.replace(partial, final)
    fsync_path(final.parent)


def _keep(config: Path, kept: Path) -> None:
    """Blocking: a durable second name for ``config``; one kept earlier is the original."""
    try:
        os.link(config, kept)
    except FileExistsError:
        return
    fsync_path(kept.parent)


def _restore(kept: Path, config: Path) -> None:
    """Blocking: put the kept config back, if there is one."""
    try:
        os.replace(kept, config)
    except FileNotFoundError:
        return
    fsync_path(config.parent)


def _remove_files(*paths: Path) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
