"""change_watch: a wait ends when a watched directory reports a change, else after the back-off."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from obdsnap.device.change_watch import Backoff, ChangeWatch

LONG = Backoff(first_s=30.0, max_s=30.0)


def test_delays_start_short_and_double_up_to_the_cap() -> None:
    delays = Backoff(first_s=0.001, max_s=0.02).delays()
    assert [delays.next() for _ in range(7)] == [0.001, 0.002, 0.004, 0.008, 0.016, 0.02, 0.02]


async def test_an_entry_made_in_a_watched_directory_ends_the_wait(tmp_path: Path) -> None:
    watched = tmp_path / "watched"
    watched.mkdir()
    watch = ChangeWatch.open([tmp_path / "missing", watched], LONG)
    try:
        asyncio.get_running_loop().call_later(0.05, (watched / "sda").write_text, "")
        await asyncio.wait_for(watch.wait(30.0), 10.0)
    finally:
        watch.close()


async def test_a_write_to_a_file_in_a_watched_directory_ends_the_wait(tmp_path: Path) -> None:
    result = tmp_path / "init-debug.log"
    result.write_text("")
    watch = ChangeWatch.open([tmp_path], LONG)
    try:
        asyncio.get_running_loop().call_later(0.05, result.write_text, "success")
        await asyncio.wait_for(watch.wait(30.0), 10.0)
    finally:
        watch.close()


async def test_without_a_change_the_wait_ends_after_the_back_off(tmp_path: Path) -> None:
    watch = ChangeWatch.open([tmp_path / "missing"], Backoff(first_s=0.05, max_s=0.05))
    try:
        started = time.monotonic()
        await watch.wait(30.0)
        await watch.wait(30.0)
        assert time.monotonic() - started >= 0.1
    finally:
        watch.close()


async def test_the_wait_never_outlasts_what_is_left(tmp_path: Path) -> None:
    watch = ChangeWatch.open([tmp_path], LONG)
    try:
        await asyncio.wait_for(watch.wait(0.01), 10.0)
    finally:
        watch.close()
