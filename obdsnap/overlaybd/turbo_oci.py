"""TurboOCI layers (DESIGN-v1 §12): a small meta layer per original OCI layer.

containerd unpacks the meta layer (``ext4.fs.meta`` or ``erofs.fs.meta``, and
``gzip.meta`` for a gzip original) into the snapshot's ``fs/``; the device
reads the file system's metadata from the meta and the data lazily from the
original blob (``targetDigest``) in the registry.

Which meta: the bottom layer takes the first of ``turboFsType`` that it has
(skipping EROFS when the kernel lacks it), and every other layer the bottom's
choice, so one image never mixes file systems (§22 quirk 12).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from obdsnap.blocking import BlockingRunner
from obdsnap.config import DEFAULT_TURBO_FS_TYPES
from obdsnap.device.erofs import EROFS, ErofsKernel
from obdsnap.labels import TurboOciTarget
from obdsnap.layout import Layout
from obdsnap.overlaybd.device_config import Lower

META_SUFFIX = ".fs.meta"
GZIP_META = "gzip.meta"
EXT4 = "ext4"
EXT4_FALLBACK_FLAG = ".TurboOCI_ext4"  # the operator's emergency switch to the ext4 metas


def meta_name(fs_type: str) -> str:
    return f"{fs_type}{META_SUFFIX}"


def meta_fs_type(file: str) -> str | None:
    """The file system a meta file holds, by its name (``erofs.fs.meta`` → ``erofs``)."""
    name = os.path.basename(file)
    if name.endswith(META_SUFFIX) and len(name) > len(META_SUFFIX):
        return name[: -len(META_SUFFIX)]
    return None


def served_fs_type(lowers: Sequence[Lower]) -> str | None:
    """The file system a TurboOCI device serves: that of its lowers' metas, bottom first."""
    for lower in lowers:
        fs_type = meta_fs_type(lower.file)
        if fs_type is not None:
            return fs_type
    return None


def present_metas(fs_dir: Path, fs_types: Sequence[str]) -> list[str]:
    """Blocking: the types of ``fs_types`` whose meta the layer has, in their order."""
    return [fs_type for fs_type in fs_types if (fs_dir / meta_name(fs_type)).is_file()]


def inherited_meta(fs_dir: Path, parent_lowers: Sequence[Lower]) -> Path | None:
    """A layer above the bottom: the bottom's meta name in its own ``fs/``; none without one."""
    name = os.path.basename(parent_lowers[0].file)
    return fs_dir / name if name else None


def turbo_lower(fs_dir: Path, meta: Path | None, target: TurboOciTarget) -> Lower:
    """The layer's lower: its meta, the original blob, and ``fs/`` (no digest or size)."""
    return Lower(
        gzip_index=str(fs_dir / GZIP_META) if target.gzipped else "",
        file="" if meta is None else str(meta),
        target_digest=target.digest,
        dir=str(fs_dir),
    )


def ext4_fallback(lowers: Sequence[Lower]) -> tuple[Lower, ...]:
    """§12 rule 5 with §22 quirk 12: every meta becomes the ext4 one beside it."""
    return tuple(
        replace(lower, file=os.path.join(os.path.dirname(lower.file), meta_name(EXT4)))
        if lower.file
        else lower
        for lower in lowers
    )


@dataclass(frozen=True)
class TurboOciSettings:
    fs_types: tuple[str, ...] = DEFAULT_TURBO_FS_TYPES  # ``turboFsType``: preferred first
    proc_filesystems: Path = Path("/proc/filesystems")
    modprobe: str = "modprobe"


DEFAULT_TURBO_OCI = TurboOciSettings()


class TurboOciMetas:
    """Chooses the metas of TurboOCI layers and applies the ext4 fallback."""

    def __init__(self, layout: Layout, blocking: BlockingRunner, settings: TurboOciSettings):
        self._layout = layout
        self._blocking = blocking
        self._fs_types = settings.fs_types
        self.kernel = ErofsKernel(settings.proc_filesystems, settings.modprobe, blocking)

    async def lower(
        self, snapshot_id: int, parent_lowers: Sequence[Lower], target: TurboOciTarget
    ) -> Lower:
        fs_dir = self._layout.fs_dir(snapshot_id)
        if parent_lowers:
            meta = inherited_meta(fs_dir, parent_lowers)
        else:
            meta = fs_dir / meta_name(await self._bottom_choice(fs_dir))
        return turbo_lower(fs_dir, meta, target)

    async def _bottom_choice(self, fs_dir: Path) -> str:
        """§12 rule 3: the first present meta the kernel can mount; none, ext4."""
        for fs_type in await self._blocking(present_metas, fs_dir, self._fs_types):
            if fs_type != EROFS or await self.kernel.supported():
                return fs_type
        return EXT4

    async def with_fallback(self, lowers: tuple[Lower, ...]) -> tuple[Lower, ...]:
        """The lowers as built, or all on ext4 metas when ``<root>/.TurboOCI_ext4`` exists."""
        if not lowers or not lowers[0].file:
            return lowers
        if not await self._blocking((self._layout.root / EXT4_FALLBACK_FLAG).exists):
            return lowers
        return ext4_fallback(lowers)
