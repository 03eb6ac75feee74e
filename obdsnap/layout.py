"""Where a snapshot lives under the root, and how its directory is built.

    root/metadata.db
    root/status.json    (the serving process and its last reconcile; see runstatus.py)
    root/snapshots/<ID>/{fs, work, block/{mountpoint, init-debug.log, ...}}

A new directory is built as ``snapshots/new-XXXX`` and renamed to its ID only
after the metadata row exists, so a crash leaves either no directory or one
that no row names, which Cleanup reclaims.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from obdsnap.fsutil import remove_tree

NEW_DIR_PREFIX = "new-"
FS_MODE = 0o755
PRIVATE_DIR_MODE = 0o711
PROCESS_UMASK = 0o022
_NEW_FILE_FLAGS = os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC


@dataclass(frozen=True)
class Layout:
    root: Path

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
        return self.snapshot_dir(snapshot_id) / "fs"

    def work_dir(self, snapshot_id: int) -> Path:
        return self.snapshot_dir(snapshot_id) / "work"

    def block_dir(self, snapshot_id: int) -> Path:
        return self.snapshot_dir(snapshot_id) / "block"

    def mountpoint(self, snapshot_id: int) -> Path:
        """Where the snapshot's block device is mounted."""
        return self.block_dir(snapshot_id) / "mountpoint"

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
            fs = os.path.join(new_dir, "fs")
            os.mkdir(fs, FS_MODE)
            if parent_id is not None:
                parent_fs = os.stat(self.fs_dir(parent_id))
                os.lchown(fs, parent_fs.st_uid, parent_fs.st_gid)
            if active:
                os.mkdir(os.path.join(new_dir, "work"), PRIVATE_DIR_MODE)
            block = os.path.join(new_dir, "block")
            os.mkdir(block, PRIVATE_DIR_MODE)
            os.mkdir(os.path.join(block, "mountpoint"), PRIVATE_DIR_MODE)
            os.close(os.open(os.path.join(block, "init-debug.log"), _NEW_FILE_FLAGS, 0o644))
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
