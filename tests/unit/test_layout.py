"""Tests of obdsnap.layout: the snapshot directory a new snapshot starts with (DESIGN §2)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from obdsnap.layout import Layout

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="lchown to another owner needs root")


@pytest.fixture(autouse=True)
def umask_022() -> Iterator[None]:
    """The server sets umask 022 at start-up; the modes below assume it."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    layout = Layout(tmp_path / "root")
    layout.create_root()
    return layout


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def tree(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


def test_layout_paths(layout: Layout) -> None:
    root = layout.root
    assert layout.metadata_db == root / "metadata.db"
    assert layout.snapshots == root / "snapshots"
    assert layout.snapshot_dir(12) == root / "snapshots" / "12"
    assert layout.fs_dir(12) == root / "snapshots" / "12" / "fs"
    assert layout.work_dir(12) == root / "snapshots" / "12" / "work"
    assert layout.block(12).path == root / "snapshots" / "12" / "block"


def test_create_root_is_private(layout: Layout) -> None:
    assert mode(layout.root) == 0o700
    assert mode(layout.snapshots) == 0o700


def test_active_snapshot_dir(layout: Layout) -> None:
    new_dir = layout.snapshots / "new-abc"
    layout.build_new_snapshot_dir(new_dir, active=True, parent_id=None)
    assert tree(new_dir) == {
        "fs",
        "work",
        "block",
        "block/mountpoint",
        "block/init-debug.log",
    }
    assert mode(new_dir / "fs") == 0o755
    assert mode(new_dir / "work") == 0o711
    assert mode(new_dir / "block") == 0o711
    assert mode(new_dir / "block" / "mountpoint") == 0o711
    log = new_dir / "block" / "init-debug.log"
    assert stat.S_ISREG(os.lstat(log).st_mode)
    assert log.stat().st_size == 0
    for directory in ("fs", "work", "block", "block/mountpoint"):
        assert stat.S_ISDIR(os.lstat(new_dir / directory).st_mode)


def test_view_snapshot_dir_has_no_work(layout: Layout) -> None:
    new_dir = layout.snapshots / "new-view"
    layout.build_new_snapshot_dir(new_dir, active=False, parent_id=None)
    assert tree(new_dir) == {"fs", "block", "block/mountpoint", "block/init-debug.log"}
    assert mode(new_dir / "fs") == 0o755
    assert mode(new_dir / "block") == 0o711
    assert mode(new_dir / "block" / "mountpoint") == 0o711
    assert (new_dir / "block" / "init-debug.log").stat().st_size == 0


def test_existing_new_dir_is_an_error_and_left_alone(layout: Layout) -> None:
    new_dir = layout.snapshots / "new-taken"
    new_dir.mkdir()
    (new_dir / "keep").write_text("x")
    with pytest.raises(FileExistsError):
        layout.build_new_snapshot_dir(new_dir, active=True, parent_id=None)
    assert tree(new_dir) == {"keep"}


@needs_root
def test_fs_is_chowned_to_parent_fs_owner(layout: Layout) -> None:
    parent_fs = layout.fs_dir(3)
    parent_fs.mkdir(parents=True)
    os.chown(parent_fs, 1234, 5678)
    new_dir = layout.snapshots / "new-child"
    layout.build_new_snapshot_dir(new_dir, active=True, parent_id=3)
    fs = os.lstat(new_dir / "fs")
    assert (fs.st_uid, fs.st_gid) == (1234, 5678)
    assert mode(new_dir / "fs") == 0o755
    # Only fs/ follows the parent; the rest stays the process's.
    work = os.lstat(new_dir / "work")
    assert (work.st_uid, work.st_gid) == (os.getuid(), os.getgid())


def test_no_parent_keeps_process_owner(layout: Layout) -> None:
    new_dir = layout.snapshots / "new-root"
    layout.build_new_snapshot_dir(new_dir, active=True, parent_id=None)
    fs = os.lstat(new_dir / "fs")
    assert (fs.st_uid, fs.st_gid) == (os.getuid(), os.getgid())


def test_missing_parent_fs_leaves_nothing(layout: Layout) -> None:
    new_dir = layout.snapshots / "new-orphan"
    with pytest.raises(FileNotFoundError):
        layout.build_new_snapshot_dir(new_dir, active=True, parent_id=99)
    assert not new_dir.exists()
    assert list(layout.snapshots.iterdir()) == []


@pytest.mark.parametrize("failing", ["work", "block", "mountpoint"])
def test_mkdir_failure_midway_leaves_nothing(
    layout: Layout, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    real_mkdir = os.mkdir

    def mkdir(path: Any, *args: Any, **kwargs: Any) -> None:
        if os.path.basename(os.fspath(path)) == failing:
            raise OSError(28, "No space left on device")
        real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    new_dir = layout.snapshots / "new-full"
    with pytest.raises(OSError, match="No space"):
        layout.build_new_snapshot_dir(new_dir, active=True, parent_id=None)
    monkeypatch.undo()
    assert not new_dir.exists()
    assert list(layout.snapshots.iterdir()) == []


def test_log_file_failure_leaves_nothing(layout: Layout, monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = os.open

    def fake_open(path: Any, *args: Any, **kwargs: Any) -> int:
        if os.fspath(path).endswith("init-debug.log"):
            raise OSError(5, "Input/output error")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake_open)
    new_dir = layout.snapshots / "new-io"
    with pytest.raises(OSError, match="Input/output"):
        layout.build_new_snapshot_dir(new_dir, active=False, parent_id=None)
    monkeypatch.undo()
    assert not new_dir.exists()


def test_unknown_entries(layout: Layout) -> None:
    for name in ("1", "2", "7", "new-busy", "new-stale"):
        (layout.snapshots / name).mkdir()
    (layout.snapshots / "stray-file").write_text("")
    busy = {layout.snapshots / "new-busy", layout.snapshots / "7"}
    found = layout.orphans(layout.entries(), {1, 2, 42}, busy)
    assert sorted(found) == sorted(
        [layout.snapshots / "new-stale", layout.snapshots / "stray-file"]
    )


def test_unknown_entries_of_empty_snapshots(layout: Layout) -> None:
    assert layout.orphans(layout.entries(), set(), set()) == []


def test_unknown_entries_all_known(layout: Layout) -> None:
    for name in ("1", "10", "100"):
        (layout.snapshots / name).mkdir()
    assert layout.orphans(layout.entries(), {1, 10, 100}, set()) == []
    assert layout.orphans(layout.entries(), {1, 100}, set()) == [layout.snapshots / "10"]
