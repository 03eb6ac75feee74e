"""change_watch: a wait ends when one of its entries appears or is written in a watched
directory, else after the back-off; an entry wakes only its own waiters."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from obdsnap.blocking import BlockingRunner
from obdsnap.device.change_watch import NO_WATCH, Backoff, ChangeWatch, Waiter

LONG = Backoff(first_s=30.0, max_s=30.0)


@pytest.fixture
async def watch(tmp_path: Path) -> AsyncIterator[ChangeWatch]:
    changes = ChangeWatch(LONG)
    await changes.start(BlockingRunner(), tmp_path)
    yield changes
    changes.close()


def test_delays_start_short_and_double_up_to_the_cap() -> None:
    waiter = Waiter(Backoff(first_s=0.001, max_s=0.02))
    delays = [waiter.next_delay() for _ in range(7)]
    assert delays == [0.001, 0.002, 0.004, 0.008, 0.016, 0.02, 0.02]


async def test_an_entry_made_by_rename_ends_its_wait(tmp_path: Path, watch: ChangeWatch) -> None:
    (tmp_path / "tmp-link").symlink_to("elsewhere")
    with watch.expecting(tmp_path / "3:0:1:0") as waiter:
        rename = (tmp_path / "tmp-link").rename
        asyncio.get_running_loop().call_later(0.05, rename, tmp_path / "3:0:1:0")
        await asyncio.wait_for(waiter.wait(30.0), 10.0)


async def test_an_entry_made_before_the_wait_is_not_missed(
    tmp_path: Path, watch: ChangeWatch
) -> None:
    with watch.expecting(tmp_path / "sdc") as waiter:
        (tmp_path / "sdc").mkdir()
        await asyncio.sleep(0.05)  # the event is read while nobody waits
        await asyncio.wait_for(waiter.wait(30.0), 10.0)


async def test_another_entry_does_not_end_the_wait(tmp_path: Path, watch: ChangeWatch) -> None:
    with watch.expecting(tmp_path / "3:0:1:0") as waiter:
        (tmp_path / "3:0:2:0").mkdir()
        started = time.monotonic()
        await waiter.wait(0.2)
        assert time.monotonic() - started >= 0.15


async def test_without_a_watch_the_wait_ends_after_the_back_off(tmp_path: Path) -> None:
    changes = ChangeWatch(Backoff(first_s=0.05, max_s=0.05))
    await changes.start(BlockingRunner(), tmp_path / "missing")
    try:
        with changes.expecting(tmp_path / "missing" / "sdc") as waiter:
            started = time.monotonic()
            await waiter.wait(30.0)
            await waiter.wait(30.0)
            assert time.monotonic() - started >= 0.1
    finally:
        changes.close()


async def test_the_wait_never_outlasts_what_is_left(tmp_path: Path, watch: ChangeWatch) -> None:
    with watch.expecting(tmp_path / "sdc") as waiter:
        await asyncio.wait_for(waiter.wait(0.01), 10.0)


async def test_a_file_written_in_a_directory_watched_for_a_while_ends_the_wait(
    tmp_path: Path, watch: ChangeWatch
) -> None:
    block = tmp_path / "block"
    block.mkdir()
    result = block / "result"
    result.write_text("")
    with watch.expecting(tmp_path / "sdc", result) as waiter:
        added = await watch.watch(BlockingRunner(), block)
        assert added != NO_WATCH
        try:
            asyncio.get_running_loop().call_later(0.05, result.write_text, "success")
            await asyncio.wait_for(waiter.wait(30.0), 10.0)
        finally:
            watch.unwatch(added)


async def test_a_directory_no_longer_watched_wakes_nobody(
    tmp_path: Path, watch: ChangeWatch
) -> None:
    block = tmp_path / "block"
    block.mkdir()
    watch.unwatch(await watch.watch(BlockingRunner(), block))
    with watch.expecting(block / "result") as waiter:
        (block / "result").write_text("success")
        started = time.monotonic()
        await waiter.wait(0.2)
        assert time.monotonic() - started >= 0.15


async def test_where_events_have_come_the_back_off_is_the_long_one(tmp_path: Path) -> None:
    changes = ChangeWatch(Backoff(first_s=0.001, max_s=0.001, reported_max_s=30.0))
    await changes.start(BlockingRunner(), tmp_path)
    try:
        with changes.expecting(tmp_path / "sdc") as before:
            assert before.next_delay() == 0.001
            (tmp_path / "sdc").mkdir()
            await asyncio.wait_for(before.wait(30.0), 10.0)
        with changes.expecting(tmp_path / "sdd") as after:
            assert after.next_delay() == after.next_delay() == 30.0
        with changes.expecting(tmp_path / "elsewhere" / "sde") as elsewhere:
            assert elsewhere.next_delay() == elsewhere.next_delay() == 0.001
    finally:
        changes.close()
