"""Tests of obdsnap.snapshot_dirs: the background removal of snapshot directories."""

from __future__ import annotations

import asyncio
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from obdsnap import snapshot_dirs as snapshot_dirs_module
from obdsnap.blocking import BlockingRunner
from obdsnap.layout import Layout
from obdsnap.snapshot_dirs import SnapshotDirs
from obdsnap.storage import MetaStore


def snapshot_dirs(root: Path) -> tuple[Layout, SnapshotDirs]:
    layout = Layout(root)
    layout.create_root()
    # Removal never touches the store; an unopened one has no task of its own.
    return layout, SnapshotDirs(layout, MetaStore(layout.metadata_db), BlockingRunner())


async def test_removes_queued_directories_and_close_waits_for_the_remover(
    tmp_path: Path,
) -> None:
    layout, dirs = snapshot_dirs(tmp_path)
    (layout.snapshot_dir(3) / "fs").mkdir(parents=True)
    dirs.start()
    dirs.remove_later(3)
    for _ in range(200):
        if not layout.snapshot_dir(3).exists():
            break
        await asyncio.sleep(0.01)
    assert not layout.snapshot_dir(3).exists()

    await dirs.close()
    # The remover has ended, not merely been asked to: no task is left behind.
    assert [task for task in asyncio.all_tasks() if task is not asyncio.current_task()] == []
    await dirs.close()  # closing twice is harmless


async def test_what_is_queued_at_close_stays_for_cleanup(tmp_path: Path) -> None:
    layout, dirs = snapshot_dirs(tmp_path)
    layout.snapshot_dir(4).mkdir()
    dirs.start()
    await asyncio.sleep(0)  # the remover waits on its queue
    await dirs.close()
    dirs.remove_later(4)  # after close: nothing removes it any more
    await asyncio.sleep(0.05)
    assert layout.snapshot_dir(4).exists()


async def test_a_batch_under_way_at_close_ends_after_the_directory_it_is_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The process exits only once its executor threads have: a restart must not wait
    for the rest of a batch (the next Cleanup takes it)."""
    layout = Layout(tmp_path)
    layout.create_root()
    executor = ThreadPoolExecutor(max_workers=1)
    dirs = SnapshotDirs(layout, MetaStore(layout.metadata_db), BlockingRunner(executor))
    for snapshot_id in range(1, 6):
        layout.snapshot_dir(snapshot_id).mkdir()
    in_first, go_on = threading.Event(), threading.Event()

    def held_remove_tree(path: Path) -> None:
        in_first.set()
        go_on.wait(10)
        shutil.rmtree(path)

    monkeypatch.setattr(snapshot_dirs_module, "remove_tree", held_remove_tree)
    for snapshot_id in range(1, 6):
        dirs.remove_later(snapshot_id)
    dirs.start()
    assert await asyncio.to_thread(in_first.wait, 10)
    await dirs.close()
    go_on.set()
    executor.shutdown(wait=True)
    left = sorted(int(p.name) for p in layout.snapshots.iterdir() if p.name.isdigit())
    assert left == [2, 3, 4, 5]
