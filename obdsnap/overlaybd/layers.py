"""overlaybd layers of snapshots: their storage type, device configs and writable layers.

The snapshotter decides *when* (DESIGN §6, §7); this module knows *what*: which
config a snapshot's device opens, built from its parent's, and how a writable
layer is made and committed with overlaybd's tools.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from obdsnap import labels as L
from obdsnap.blocking import BlockingRunner
from obdsnap.errors import InvalidArgument, failure_context
from obdsnap.fsutil import fsync_path
from obdsnap.layout import Layout
from obdsnap.overlaybd import device_config
from obdsnap.overlaybd.device_config import DeviceConfig, Lower, Upper
from obdsnap.overlaybd.storage_type import detect_storage_type
from obdsnap.overlaybd.tools import OverlaybdTools, ZFileConfig
from obdsnap.role import StorageType, TraceFlags
from obdsnap.storage import Kind, Record

log = logging.getLogger(__name__)


class BlockLayers:
    def __init__(
        self,
        layout: Layout,
        tools: OverlaybdTools,
        blocking: BlockingRunner,
        *,
        sparse: bool,
        insecure_registry: Callable[[str], bool] = lambda host: False,
    ) -> None:
        self._insecure_registry = insecure_registry  # mirrorRegistry's http hosts (DESIGN-v1 §18)
        self._layout = layout
        self._tools = tools
        self._blocking = blocking
        self._sparse = sparse
        self._committed_types: dict[int, StorageType] = {}

    # ------------------------------------------------------------------ paths

    def config_path(self, snapshot_id: int) -> Path:
        return self._layout.block(snapshot_id).config

    # ------------------------------------------------------------------ storage type

    async def storage_type(self, record: Record) -> StorageType:
        """Cached for committed snapshots, whose files no longer change."""
        cached = self._committed_types.get(record.id)
        if cached is not None:
            return cached
        found = await self._blocking(
            detect_storage_type, record.info.labels, self._layout, record.id
        )
        if record.kind == Kind.COMMITTED:
            self._committed_types[record.id] = found
        return found

    def forget(self, snapshot_id: int) -> None:
        self._committed_types.pop(snapshot_id, None)

    # ------------------------------------------------------------------ configs

    async def read_config(self, snapshot_id: int) -> DeviceConfig:
        return await self._blocking(device_config.read_config, self.config_path(snapshot_id))

    async def write_config(self, snapshot_id: int, config: DeviceConfig) -> None:
        await self._blocking(device_config.write_config, self.config_path(snapshot_id), config)

    async def config_from_parent(self, snapshot_id: int, parent: Record | None) -> DeviceConfig:
        """A layer's config always starts from its parent's (lowers and repoBlobUrl)."""
        base = DeviceConfig() if parent is None else await self.read_config(parent.id)
        result_file = str(self._layout.block(snapshot_id).result_file)
        return DeviceConfig(
            repo_blob_url=base.repo_blob_url, lowers=base.lowers, result_file=result_file
        )

    async def write_acceleration_config(self, record: Record, parent: Record) -> None:
        """An acceleration layer: the (block) parent's whole config plus its own unpacked files."""
        config = await self.read_config(parent.id)
        lower = Lower(dir=str(self._layout.fs_dir(record.id)))
        await self.write_config(record.id, config.with_lower(lower))

    async def write_remote_config(self, record: Record, parent: Record | None) -> None:
        """A remote layer's device config: its blob, fetched lazily into its own ``fs/``.

        overlaybd-tcmu keeps a downloaded blob in the lower's ``dir``; the Go
        snapshotter names the layer's ``fs/`` there, so both agree where it lives.
        """
        labels = record.info.labels
        try:
            size = int(labels[L.BLOB_SIZE])
        except ValueError as exc:
            raise InvalidArgument(
                f"{L.BLOB_SIZE} is not a number: {labels[L.BLOB_SIZE]!r}"
            ) from exc
        config = await self.config_from_parent(record.id, parent)
        config = replace(
            config,
            repo_blob_url=device_config.repo_blob_url(
                device_config.image_ref(labels), self._insecure_registry
            ),
        ).with_lower(
            Lower(
                digest=labels[L.BLOB_DIGEST],
                size=size,
                dir=str(self._layout.fs_dir(record.id)),
            )
        )
        await self.write_config(record.id, config)

    async def write_local_config(self, record: Record, parent: Record | None) -> None:
        """A committed local layer: the parent's lowers plus its own ``fs/overlaybd.commit``."""
        config = await self.config_from_parent(record.id, parent)
        await self.write_config(
            record.id, config.with_lower(Lower(dir=str(self._layout.fs_dir(record.id))))
        )

    async def set_trace_flags(self, parent_id: int, own_id: int | None, flags: TraceFlags) -> None:
        """The role's trace flags on the parent's config (and the own one, when writable)."""
        # A writable device opens its own config, not the parent's: it needs the flags too.
        for snapshot_id in (parent_id, *([] if own_id is None else [own_id])):
            config = await self.read_config(snapshot_id)
            flagged = replace(
                config,
                acceleration_layer=flags.acceleration_layer,
                record_trace_path=flags.record_trace_path,
            )
            await self.write_config(snapshot_id, flagged)

    # ------------------------------------------------------------------ writable layers

    async def create_writable_layer(self, record: Record, parent: Record | None) -> None:
        block = self._layout.block(record.id)
        data, index = block.writable_data, block.writable_index
        with failure_context(snapshot_id=record.id, step="overlaybd-create"):
            await self._tools.create_writable_layer(data, index, sparse=self._sparse)
        config = await self.config_from_parent(record.id, parent)
        await self.write_config(
            record.id, replace(config, upper=Upper(index=str(index), data=str(data)))
        )

    async def commit_writable_layer(self, record: Record, zfile: ZFileConfig) -> None:
        """``overlaybd-commit`` the writable layer into ``fs/overlaybd.commit``.

        The tool writes a partial file that is renamed into place once complete, so
        a commit cut by a crash leaves no half layer file and can simply be retried.
        """
        block = self._layout.block(record.id)
        partial = self._layout.partial_commit_file(record.id)
        with failure_context(snapshot_id=record.id, step="overlaybd-commit"):
            await self._blocking(_remove_files, partial)
            await self._tools.commit_writable_layer(
                block.writable_data, block.writable_index, partial, zfile
            )
            await self._blocking(_publish, partial, self._layout.commit_file(record.id))

    async def keep_writable_config(self, snapshot_id: int) -> None:
        """Before a commit replaces the writable layer's config: keep it for a roll-back."""
        block = self._layout.block(snapshot_id)
        await self._blocking(_keep, block.config, block.kept_config)

    async def settle_commit(self, snapshot_id: int, *, committed: bool) -> str:
        """After a writable commit, however it ended: finish it or roll it back.

        The row decides: committed, the writable layer is dropped (the layer file has
        its data); still active, the writable layer and its config are as before.
        """
        if not committed:
            await self.roll_back_commit(snapshot_id)
            return "rolled back"
        try:
            await self.drop_writable_layer(snapshot_id)
        except OSError as exc:  # the commit stands all the same
            log.warning("snapshot %d: writable layer not dropped: %s", snapshot_id, exc)
        return "finished"

    async def roll_back_commit(self, snapshot_id: int) -> None:
        """Undo a commit that did not reach the metadata: the writable layer is as it was."""
        block = self._layout.block(snapshot_id)
        await self._blocking(_restore, block.kept_config, block.config)
        await self._blocking(
            _remove_files,
            self._layout.partial_commit_file(snapshot_id),
            self._layout.commit_file(snapshot_id),
        )

    async def drop_writable_layer(self, snapshot_id: int) -> None:
        """After the commit reached the metadata: the layer file has the data now."""
        block = self._layout.block(snapshot_id)
        await self._blocking(
            _remove_files, block.writable_data, block.writable_index, block.kept_config
        )


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
