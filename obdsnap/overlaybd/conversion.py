"""Local OCI → TurboOCI conversion (DESIGN-v1 §13): a snapshot's ``layer.tar``, put there by
containerd's proxy differ, becomes the TurboOCI layer file ``fs/overlaybd.commit``.

The tools run in the Go snapshotter's order: ``turboOCI-apply --export`` (not for EROFS),
``overlaybd-create --turboOCI`` in ``temp/``, the service and image configs there,
``turboOCI-apply`` onto that layer, ``overlaybd-commit -z --turboOCI``. A failure undoes
what the steps made; on success ``temp/`` stays, as Go leaves it.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from obdsnap import labels as L
from obdsnap.blocking import BlockingRunner
from obdsnap.errors import SnapshotError, StepFailed, failure_context
from obdsnap.fsutil import remove_tree, write_file_no_follow
from obdsnap.layout import ConversionDir, Layout
from obdsnap.overlaybd import device_config
from obdsnap.overlaybd.device_config import DeviceConfig, Upper
from obdsnap.overlaybd.tools import OverlaybdTools

EROFS = "erofs"
CONVERSION_FAILED = "failed to construct overlaybd config"
_CACHE_SIZE_GB = 4
_TEMP_DIR_MODE = 0o755
_TEMP_FILE_MODE = 0o644


def conversion_fs_type(labels: Mapping[str, str], default_fs_type: str) -> str:
    """Step 1: the ``blob-fs-type`` label, taken whole, else the boot config's default."""
    return labels.get(L.BLOB_FS_TYPE) or default_fs_type


def service_config(conversion: ConversionDir) -> dict[str, Any]:
    """Step 4: turboOCI-apply's ``service.json``: a file cache in ``temp/``, no downloads."""
    return {
        "registryFsVersion": "v2",
        "logPath": "",
        "logLevel": 1,
        "cacheConfig": {
            "cacheType": "file",
            "cacheDir": str(conversion.cache),
            "cacheSizeGB": _CACHE_SIZE_GB,
        },
        "gzipCacheConfig": {"enable": False},
        "credentialConfig": {"mode": "file", "path": ""},
        "ioEngine": 0,
        "download": {"enable": False},
        "enableAudit": False,
    }


def conversion_config(base: DeviceConfig, conversion: ConversionDir) -> DeviceConfig:
    """Step 4: the parent's lowers and repoBlobUrl with the layer's own resultFile (``base``),
    and the conversion's layer as the upper, its target the empty ``fake_target``."""
    place = conversion.writable
    upper = Upper(index=str(place.index), data=str(place.data), target=str(conversion.fake_target))
    return DeviceConfig(
        repo_blob_url=base.repo_blob_url,
        lowers=base.lowers,
        upper=upper,
        result_file=base.result_file,
    )


class LayerConversion:
    def __init__(self, layout: Layout, tools: OverlaybdTools, blocking: BlockingRunner) -> None:
        self._layout = layout
        self._tools = tools
        self._blocking = blocking

    async def convert(self, snapshot_id: int, fs_type: str, base: DeviceConfig) -> None:
        """Steps 2-6 onto ``base`` (the layer's config before its own lower is added).

        A failure removes ``temp/``, the layer file and the tar meta, and raises
        ``failed to construct overlaybd config: ...``; the snapshot is as before.
        """
        try:
            await self._run(snapshot_id, fs_type, base)
        except SnapshotError as exc:  # failure_context makes every OSError one
            await asyncio.shield(self.undo(snapshot_id))
            error = StepFailed(f"{CONVERSION_FAILED}: {exc}")
            error.add_context(snapshot_id=snapshot_id, step=exc.step, reason=exc.reason)
            raise error from exc

    async def _run(self, snapshot_id: int, fs_type: str, base: DeviceConfig) -> None:
        meta = await self._tar_meta(snapshot_id, fs_type)
        conversion = self._layout.conversion(snapshot_id)
        place = conversion.writable
        with failure_context(snapshot_id=snapshot_id, step="temp/"):
            await self._blocking(_fresh_dir, conversion.path)
        with failure_context(snapshot_id=snapshot_id, step="overlaybd-create --turboOCI"):
            mkfs = fs_type != EROFS and not base.lowers
            await self._tools.create_turbo_layer(place.data, place.index, mkfs=mkfs)
        with failure_context(snapshot_id=snapshot_id, step="conversion configs"):
            await self._blocking(_write_configs, conversion, conversion_config(base, conversion))
        with failure_context(snapshot_id=snapshot_id, step="turboOCI-apply"):
            await self._tools.apply_turbo_layer(
                meta,
                conversion.config,
                conversion.service_config,
                fs_type,
                import_meta=fs_type != EROFS,
            )
        with failure_context(snapshot_id=snapshot_id, step="overlaybd-commit --turboOCI"):
            commit_file = self._layout.commit_file(snapshot_id)
            await self._tools.commit_turbo_layer(place.data, place.index, commit_file)

    async def _tar_meta(self, snapshot_id: int, fs_type: str) -> Path:
        """Step 2: EROFS reads the tarball itself; otherwise its exported tar meta."""
        layer_tar = self._layout.layer_tar(snapshot_id)
        if fs_type == EROFS:
            return layer_tar
        meta = self._layout.layer_metadata(snapshot_id)
        if await self._blocking(layer_tar.exists):
            with failure_context(snapshot_id=snapshot_id, step="turboOCI-apply --export"):
                await self._tools.export_tar_meta(layer_tar, meta)
        return meta

    async def undo(self, snapshot_id: int) -> None:
        """What the steps made goes: ``temp/``, the layer file and the tar meta."""
        await self._blocking(_undo, self._layout, snapshot_id)


def _fresh_dir(path: Path) -> None:
    """Blocking: ``temp/`` made anew; one a failed attempt could not remove is replaced."""
    remove_tree(path)
    os.mkdir(path, _TEMP_DIR_MODE)


def _write_configs(conversion: ConversionDir, config: DeviceConfig) -> None:
    """Blocking: the empty target, ``service.json`` and ``config.v1.json`` (0644) in ``temp/``."""
    write_file_no_follow(conversion.fake_target, b"", _TEMP_FILE_MODE)
    service = json.dumps(service_config(conversion), separators=(",", ":")).encode()
    write_file_no_follow(conversion.service_config, service, _TEMP_FILE_MODE)
    write_file_no_follow(conversion.config, device_config.encode(config), _TEMP_FILE_MODE)


def _undo(layout: Layout, snapshot_id: int) -> None:
    """Blocking: :meth:`LayerConversion.undo`.

    A device config written since (the commit's, cut before its row) goes with
    ``temp/``, unless the snapshot had one of its own before, which is put back.
    """
    block, conversion = layout.block(snapshot_id), layout.conversion(snapshot_id)
    removed = [layout.commit_file(snapshot_id), layout.layer_metadata(snapshot_id)]
    if conversion.path.exists() and not block.kept_config.exists():
        removed.append(block.config)
    remove_tree(conversion.path)
    for path in removed:
        path.unlink(missing_ok=True)
