"""Where a snapshot lives under the root, and how its directory is built.

    root/metadata.db
    root/status.json    (the serving process and its last reconcile; see runstatus.py)
    root/snapshots/<ID>/fs/                  the layer's files (overlayfs upper or lower)
                        fs/overlaybd.commit  a committed writable layer's layer file
                        fs/overlaybd.sealed  a writable layer committed by sealing it
                        layer.tar            an uncompressed OCI layer an external differ put
                        layer.metadata       its tar meta, exported to convert it (DESIGN-v1 §13)
                        temp/                the conversion's workdir (see ConversionDir)
                        work/                overlayfs workdir (active snapshots)
                        block/               the device's files (see BlockDir)
                        image_ref            the image the snapshot was made for (DESIGN-v1 §3)

This module is the one place that spells a file name under the root.

A new directory is built as ``snapshots/new-XXXX`` and renamed to its ID only
after the metadata row exists, so a crash leaves either no directory or one
that no row names, which Cleanup reclaims.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from obdsnap.fsutil import remove_tree

NEW_DIR_PREFIX = "new-"
FS_MODE = 0o755
PRIVATE_DIR_MODE = 0o711
PROCESS_UMASK = 0o022
_NEW_FILE_FLAGS = os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC


_FS, _WORK, _BLOCK = "fs", "work", "block"
_COMMIT_FILE = "overlaybd.commit"
_IMAGE_REF_FILE = "image_ref"
_PARTIAL_COMMIT_FILE = ".overlaybd.commit.partial"
_SEALED_FILE = "overlaybd.sealed"
_LAYER_TAR = "layer.tar"
_LAYER_METADATA = "layer.metadata"
_CONVERSION_DIR = "temp"


@dataclass(frozen=True)
class WritableDir:
    """Where a writable layer's data and index live: ``block/``, or ``overlay.active.path``."""

    path: Path

    @property
    def data(self) -> Path:
        return self.path / "writable_data"

    @property
    def index(self) -> Path:
        return self.path / "writable_index"


@dataclass(frozen=True)
class BlockDir:
    """A snapshot's ``block/``: what its overlaybd device is made of and mounted on."""

    path: Path

    MOUNTPOINT_NAME: ClassVar[str] = "mountpoint"

    @property
    def mountpoint(self) -> Path:
        """Where the device is mounted."""
        return self.path / self.MOUNTPOINT_NAME

    @property
    def config(self) -> Path:
        """The device config overlaybd-tcmu opens (``config.v1.json``)."""
        return self.path / "config.v1.json"

    @property
    def kept_config(self) -> Path:
        """The writable layer's config, kept while a commit replaces it, for a roll-back."""
        return self.path / "config.v1.json.writable"

    @property
    def commit_request(self) -> Path:
        """The name and labels of a sealing commit: once sealed, it can only go ahead."""
        return self.path / "commit_request.json"

    @property
    def result_file(self) -> Path:
        """Where overlaybd writes how opening the image went."""
        return self.path / "init-debug.log"

    @property
    def mark(self) -> Path:
        """Names the device once an attach has finished (its last step)."""
        return self.path / "backstore_mark"

    @property
    def writable(self) -> WritableDir:
        """The writable layer's files when they live here (the default place)."""
        return WritableDir(self.path)

    @property
    def writable_data(self) -> Path:
        return self.writable.data

    @property
    def writable_index(self) -> Path:
        return self.writable.index

    @property
    def writable_location(self) -> Path:
        """Names the directory outside ``block/`` holding the writable layer (absent: here).

        It also says whether obdsnap created the layer there or found it (reused):
        obdsnap deletes only writable files that it created.
        """
        return self.path / "writable_location"


@dataclass(frozen=True)
class ConversionDir:
    """``temp/``: where a local layer is converted to TurboOCI (DESIGN-v1 §13), left on success."""

    path: Path

    @property
    def writable(self) -> WritableDir:
        """The layer turboOCI-apply writes into, then committed into ``fs/overlaybd.commit``."""
        return WritableDir(self.path)

    @property
    def fake_target(self) -> Path:
        return self.path / "fake_target"

    @property
    def service_config(self) -> Path:
        return self.path / "service.json"

    @property
    def config(self) -> Path:
        return self.path / "config.v1.json"

    @property
    def cache(self) -> Path:
        return self.path / "cache"


@dataclass(frozen=True)
class Layout:
    root: Path

    @classmethod
    def resolved(cls, root: str | Path, *, strict: bool = False) -> Layout:
        """Blocking: the layout of ``root`` through its symlinks (DESIGN-v1 §1).

        Every path obdsnap hands out (mounts, device configs, labels) names the
        real directory. ``strict``: OSError when ``root`` does not resolve.
        """
        try:
            return cls(Path(root).resolve(strict=strict))
        except RuntimeError as exc:  # a symlink loop, before Python 3.13
            raise OSError(errno.ELOOP, str(exc), str(root)) from None

    @property
    def metadata_db(self) -> Path:
        return self.root / "metadata.db"

    @property
    def lock_file(self) -> Path:
        return self.root / "obdsnap.lock"

    @property
    def status_file(self) -> Path:
        return self.root / "status.json"

    @property
    def snapshots(self) -> Path:
        return self.root / "snapshots"

    def snapshot_dir(self, snapshot_id: int) -> Path:
        return self.snapshots / str(snapshot_id)

    def fs_dir(self, snapshot_id: int) -> Path:
        return self.snapshot_dir(snapshot_id) / _FS

    def work_dir(self, snapshot_id: int) -> Path:
        return self.snapshot_dir(snapshot_id) / _WORK

    @staticmethod
    def fs_in(snapshot_dir: Path) -> Path:
        """``fs/`` of a snapshot directory by path, e.g. a ``new-*`` one not yet renamed."""
        return snapshot_dir / _FS

    @staticmethod
    def work_in(snapshot_dir: Path) -> Path:
        return snapshot_dir / _WORK

    def block(self, snapshot_id: int) -> BlockDir:
        return BlockDir(self.snapshot_dir(snapshot_id) / _BLOCK)

    def image_ref_file(self, snapshot_id: int) -> Path:
        """The image reference a new snapshot was created with, for tools that read it."""
        return self.snapshot_dir(snapshot_id) / _IMAGE_REF_FILE

    def commit_file(self, snapshot_id: int) -> Path:
        """A committed writable layer's layer file, made by overlaybd-commit."""
        return self.fs_dir(snapshot_id) / _COMMIT_FILE

    def partial_commit_file(self, snapshot_id: int) -> Path:
        """What overlaybd-commit writes, renamed to ``commit_file`` once complete."""
        return self.fs_dir(snapshot_id) / _PARTIAL_COMMIT_FILE

    def sealed_file(self, snapshot_id: int) -> Path:
        """A writable layer committed with ``overlaybd-commit --seal``, moved into ``fs/``."""
        return self.fs_dir(snapshot_id) / _SEALED_FILE

    def layer_tar(self, snapshot_id: int) -> Path:
        """An uncompressed OCI layer placed by an external differ: a "local layer"."""
        return self.snapshot_dir(snapshot_id) / _LAYER_TAR

    def layer_metadata(self, snapshot_id: int) -> Path:
        """The tar meta of ``layer_tar``, exported for its conversion (DESIGN-v1 §13)."""
        return self.snapshot_dir(snapshot_id) / _LAYER_METADATA

    def conversion(self, snapshot_id: int) -> ConversionDir:
        return ConversionDir(self.snapshot_dir(snapshot_id) / _CONVERSION_DIR)

    def create_root(self) -> None:
        for directory in (self.root, self.snapshots):
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(directory, 0o700)

    def build_new_snapshot_dir(self, new_dir: Path, *, active: bool, parent_id: int | None) -> None:
        """Blocking: make ``new_dir`` (a ``snapshots/new-XXXX``) with what a snapshot starts with.

        Modes assume the process umask is 022 (set at start-up), so no chmod is needed.
        """
        os.mkdir(new_dir, 0o700)
        try:
            fs = new_dir / _FS
            os.mkdir(fs, FS_MODE)
            if parent_id is not None:
                parent_fs = os.stat(self.fs_dir(parent_id))
                os.lchown(fs, parent_fs.st_uid, parent_fs.st_gid)
            if active:
                os.mkdir(new_dir / _WORK, PRIVATE_DIR_MODE)
            block = BlockDir(new_dir / _BLOCK)
            os.mkdir(block.path, PRIVATE_DIR_MODE)
            os.mkdir(block.mountpoint, PRIVATE_DIR_MODE)
            os.close(os.open(block.result_file, _NEW_FILE_FLAGS, 0o644))
        except BaseException:
            remove_tree(new_dir)
            raise

    def entries(self) -> list[str]:
        """Blocking: the names under ``snapshots/``."""
        return os.listdir(self.snapshots)

    def orphans(self, names: Iterable[str], known_ids: set[int], busy: set[Path]) -> list[Path]:
        """Entries of ``snapshots/`` that no metadata row and no running call owns."""
        known = {str(snapshot_id) for snapshot_id in known_ids}
        entries = (self.snapshots / name for name in names if name not in known)
        return [entry for entry in entries if entry not in busy]
