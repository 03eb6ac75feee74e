"""overlaybd layers of snapshots: their storage type, device configs and writable layers.

The snapshotter decides *when* (DESIGN §6, §7); this module knows *what*: which
config a snapshot's device opens, built from its parent's, and how a writable
layer is made and committed with overlaybd's tools.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

from obdsnap import labels as L
from obdsnap.blocking import BlockingRunner
from obdsnap.errors import InvalidArgument
from obdsnap.fsutil import disk_usage
from obdsnap.layout import Layout
from obdsnap.overlaybd import device_config
from obdsnap.overlaybd.conversion import LayerConversion
from obdsnap.overlaybd.device_config import DeviceConfig, Lower, Upper
from obdsnap.overlaybd.storage_type import detect_storage_type
from obdsnap.overlaybd.tools import OverlaybdTools
from obdsnap.overlaybd.turbo_oci import DEFAULT_TURBO_OCI, TurboOciMetas, TurboOciSettings
from obdsnap.overlaybd.writable import WritableLayers, vsize_gb
from obdsnap.role import StorageType, TraceFlags
from obdsnap.storage import Kind, Record, Usage

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
        turbo_oci: TurboOciSettings = DEFAULT_TURBO_OCI,
    ) -> None:
        self._insecure_registry = insecure_registry  # mirrorRegistry's http hosts (DESIGN-v1 §18)
        self._layout = layout
        self._tools = tools
        self._blocking = blocking
        self._committed_types: dict[int, StorageType] = {}
        self.writable = WritableLayers(layout, tools, blocking, sparse=sparse)
        self.conversion = LayerConversion(layout, tools, blocking)
        self.turbo = TurboOciMetas(layout, blocking, turbo_oci)

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

    async def layer_usage(self, snapshot_id: int) -> Usage:
        """What a committed layer records: the usage of its ``fs/``, layer files included."""
        return await self._blocking(disk_usage, self._layout.fs_dir(snapshot_id))

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

    async def write_remote_config(
        self, record: Record, parent: Record | None, labels: Mapping[str, str] | None = None
    ) -> None:
        """A remote layer's device config: its blob, fetched lazily into its own ``fs/``.

        overlaybd-tcmu keeps a downloaded blob in the lower's ``dir``; the Go
        snapshotter names the layer's ``fs/`` there, so both agree where it lives.
        A TurboOCI layer's lower is its meta and the original blob (DESIGN-v1 §12).
        ``labels``: those the layer is committed with, else the snapshot's.
        """
        labels = record.info.labels if labels is None else labels
        base = await self.config_from_parent(record.id, parent)
        url = device_config.repo_blob_url(device_config.image_ref(labels), self._insecure_registry)
        target = L.turbo_oci_target(labels)
        if target is None:
            lower = self._blob_lower(record.id, labels)
        else:
            lower = await self.turbo.lower(record.id, base.lowers, target)
        lowers = await self.turbo.with_fallback((*base.lowers, lower))
        await self.write_config(record.id, replace(base, repo_blob_url=url, lowers=lowers))

    def _blob_lower(self, snapshot_id: int, labels: Mapping[str, str]) -> Lower:
        try:
            size = int(labels[L.BLOB_SIZE])
        except ValueError as exc:
            raise InvalidArgument(
                f"{L.BLOB_SIZE} is not a number: {labels[L.BLOB_SIZE]!r}"
            ) from exc
        return Lower(
            digest=labels[L.BLOB_DIGEST], size=size, dir=str(self._layout.fs_dir(snapshot_id))
        )

    async def write_local_config(self, record: Record, parent: Record | None) -> None:
        """A committed local layer: the parent's lowers plus its own layer file in ``fs/``;
        a converted one names it and the ``layer.tar`` its data is in (DESIGN-v1 §8 step 5)."""
        config = await self.config_from_parent(record.id, parent)
        lower = Lower(dir=str(self._layout.fs_dir(record.id)))
        layer_tar = self._layout.layer_tar(record.id)
        if await self._blocking(layer_tar.exists):
            lower = Lower(file=str(self._layout.commit_file(record.id)), target_file=str(layer_tar))
        await self.write_config(record.id, config.with_lower(lower))

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
        """The layer (DESIGN-v1 §6 step 5) and its config: the parent's lowers plus the upper."""
        vsize = vsize_gb(record.info.labels, has_parent=record.parent != "")
        place = await self.writable.create(record.id, record.info.labels, vsize)
        config = await self.config_from_parent(record.id, parent)
        upper = Upper(index=str(place.index), data=str(place.data), vsize=vsize)
        await self.write_config(record.id, replace(config, upper=upper))

    def local_commit_path(self, snapshot_id: int, *, seal: bool) -> Path:
        """``localcommitpath`` (DESIGN-v1 §22 quirk 5): the sealed file when sealing, else
        the layer file there is."""
        commit_file = self._layout.commit_file(snapshot_id)
        if seal or not commit_file.exists():
            return self._layout.sealed_file(snapshot_id)
        return commit_file

    async def settle_commit(self, snapshot_id: int, *, committed: bool) -> str:
        """After a writable commit, however it ended: finish it or roll it back.

        The row decides: committed, the writable layer is dropped (the layer file has
        its data); still active, the writable layer and its config are as before, and
        what a conversion of its ``layer.tar`` made is gone (DESIGN-v1 §13 step 7).
        """
        if not committed:
            await self.conversion.undo(snapshot_id)
        try:
            await self.writable.settle(snapshot_id, committed=committed)
        except OSError as exc:
            if not committed:
                raise
            # The commit stands all the same.
            log.warning("snapshot %d: writable layer not dropped: %s", snapshot_id, exc)
        return "finished" if committed else "rolled back"
