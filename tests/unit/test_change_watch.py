"""change_watch: a wait ends when its entry appears in the watched directory, else after the
back-off; an entry wakes only its own waiters."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from obdsnap.blocking import BlockingRunner
from obdsnap.device.change_watch import Backoff, EntryWatch, Waiter

LONG = Backoff(first_s=30.0, max_s=30.0)


@pytest.fixture
async def watch(tmp_path: Path) -> AsyncIterator[EntryWatch]:
    entries = EntryWatch(tmp_path, LONG)
    await entries.start(BlockingRunner())
    yield entries
    entries.close()


def test_delays_start_short_and_double_up_to_the_cap() -> None:
    waiter = Waiter(Backoff(first_s=0.001, max_s=0.02))
    delays = [waiter.next_delay() for _ in range(7)]
    assert delays == [0.001, 0.002, 0.004, 0.008, 0.016, 0.02, 0.02]


async def test_an_entry_made_by_rename_ends_its_wait(tmp_path: Path, watch: EntryWatch) -> None:
    (tmp_path / "tmp-link").symlink_to("elsewhere")
    with watch.expecting("3:0:1:0") as waiter:
        rename = (tmp_path / "tmp-link").rename
        asyncio.get_running_loop().call_later(0.05, rename, tmp_path / "3:0:1:0")
        await asyncio.wait_for(waiter.wait(30.0), 10.0)


async def test_an_entry_made_before_the_wait_is_not_missed(
    tmp_path: Path, watch: EntryWatch
) -> None:
    with watch.expecting("sdc") as waiter:
        (tmp_path / "sdc").mkdir()
        await asyncio.sleep(0.05)  # the event is read while nobody waits
        await asyncio.wait_for(waiter.wait(30.0), 10.0)


async def test_another_entry_does_not_end_the_wait(tmp_path: Path, watch: EntryWatch) -> None:
    with watch.expecting("3:0:1:0") as waiter:
        (tmp_path / "3:0:2:0").mkdir()
        started = time.monotonic()
        await waiter.wait(0.2)
        assert time.monotonic() - started >= 0.15


async def test_without_a_watch_the_wait_ends_after_the_back_off(tmp_path: Path) -> None:
    entries = EntryWatch(tmp_path / "missing", Backoff(first_s=0.05, max_s=0.05))
    await entries.start(BlockingRunner())
    try:
        with entries.expecting("sdc") as waiter:
            started = time.monotonic()
            await waiter.wait(30.0)
            await waiter.wait(30.0)
            assert time.monotonic() - started >= 0.1
    finally:
        entries.close()


async def test_the_wait_never_outlasts_what_is_left(watch: EntryWatch) -> None:
    with watch.expecting("sdc") as waiter:
        await asyncio.wait_for(waiter.wait(0.01), 10.0)
