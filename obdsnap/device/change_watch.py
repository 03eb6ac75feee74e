"""Waiting for named entries to appear in a directory: inotify, with a back-off beside it.

One inotify watch on the directory serves every waiter, and an event wakes only
the waiters of the entry it names: a hundred attaches waiting at once are not
all woken by each disk. sysfs accepts a watch but never reports what the kernel
makes there, so every wait also ends after a delay that starts short and
doubles up to a cap, whichever comes first. No file system is told apart: where
events come, the back-off is never reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from obdsnap.blocking import BlockingRunner

# IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE
_IN_APPEARED = 0x008 | 0x080 | 0x100
_IN_Q_OVERFLOW = 0x4000
_EVENT = struct.Struct("=iIII")  # struct inotify_event, without its name
_READ_SIZE = 65536

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


@dataclass(frozen=True)
class Backoff:
    first_s: float = 0.001
    max_s: float = 0.02


class Waiter:
    """One waiter for one entry: woken by its event, or after its next back-off delay."""

    def __init__(self, backoff: Backoff) -> None:
        self.event = asyncio.Event()
        self._next_s = backoff.first_s
        self._max_s = backoff.max_s

    def next_delay(self) -> float:
        delay = self._next_s
        self._next_s = min(self._next_s * 2, self._max_s)
        return delay

    async def wait(self, at_most_s: float) -> None:
        """Until the entry is reported (maybe already, since the last wait) or the delay ends."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.event.wait(), max(0.0, min(self.next_delay(), at_most_s)))
        self.event.clear()


class EntryWatch:
    """Waiters for entries of one directory, woken by name from one inotify watch."""

    def __init__(self, directory: Path, backoff: Backoff) -> None:
        self._directory = directory
        self._backoff = backoff
        self._descriptor: int | None = None  # -1: the directory takes no watch
        self._loop: asyncio.AbstractEventLoop | None = None
        self._opening = asyncio.Lock()
        self._waiters: dict[str, set[Waiter]] = {}

    async def start(self, blocking: BlockingRunner) -> None:
        """The watch, added once (in the executor: it looks the directory up)."""
        async with self._opening:
            if self._descriptor is None:
                self._descriptor = await blocking(_open_watch, self._directory)
            loop = asyncio.get_running_loop()
            if self._descriptor >= 0 and self._loop is not loop:
                loop.add_reader(self._descriptor, self._drain)
                self._loop = loop

    @contextlib.contextmanager
    def expecting(self, name: str) -> Iterator[Waiter]:
        """A waiter for entry ``name``, registered before the first look so no event is lost."""
        waiter = Waiter(self._backoff)
        self._waiters.setdefault(name, set()).add(waiter)
        try:
            yield waiter
        finally:
            waiters = self._waiters[name]
            waiters.discard(waiter)
            if not waiters:
                del self._waiters[name]

    def _drain(self) -> None:
        assert self._descriptor is not None
        data = b""
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(self._descriptor, _READ_SIZE):
                data += chunk
        for name, overflow in _parse_events(data):
            woken = self._waiters.values() if overflow else [self._waiters.get(name, set())]
            for waiters in woken:
                for waiter in waiters:
                    waiter.event.set()

    def close(self) -> None:
        if self._loop is not None and self._descriptor is not None:
            self._loop.remove_reader(self._descriptor)
        if self._descriptor is not None and self._descriptor >= 0:
            os.close(self._descriptor)
        self._descriptor, self._loop = None, None


def _open_watch(directory: Path) -> int:
    """Blocking: an inotify descriptor watching ``directory``; -1 where that cannot be."""
    descriptor = int(_libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC))
    if (
        descriptor >= 0
        and _libc.inotify_add_watch(descriptor, os.fsencode(directory), _IN_APPEARED) < 0
    ):
        os.close(descriptor)
        return -1
    return descriptor


def _parse_events(data: bytes) -> Iterator[tuple[str, bool]]:
    """The entry names of inotify events, and whether the kernel's queue overflowed."""
    offset = 0
    while offset + _EVENT.size <= len(data):
        _, mask, _, length = _EVENT.unpack_from(data, offset)
        start = offset + _EVENT.size
        name = data[start : start + length].rstrip(b"\0")
        yield os.fsdecode(name), bool(mask & _IN_Q_OVERFLOW)
        offset = start + length
