"""Waiting for named entries to appear or change: inotify, with a back-off beside it.

One inotify descriptor serves every waiter, whatever directory it waits in, and
an event wakes only the waiters of the entry it names: a hundred attaches waiting
at once are not all woken by each disk. sysfs accepts a watch but never reports
what the kernel makes there, so every wait also ends after a delay that starts
short and doubles up to a cap, whichever comes first. No file system is told
apart by name: a directory that has reported an event since its watch began is
known to report, and a wait there looks again only after a far longer delay.
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
NO_WATCH = -1

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


@dataclass(frozen=True)
class Backoff:
    first_s: float = 0.001
    max_s: float = 0.02
    reported_max_s: float = 0.5  # the cap where the directory is known to report events


class Waiter:
    """One waiter for some entries: woken by their events, or after its next back-off delay."""

    def __init__(self, backoff: Backoff, *, reported: bool = False) -> None:
        self.event = asyncio.Event()
        # Where events come, a look after a delay only guards against a lost one.
        self._next_s = backoff.reported_max_s if reported else backoff.first_s
        self._max_s = backoff.reported_max_s if reported else backoff.max_s

    def next_delay(self) -> float:
        delay = self._next_s
        self._next_s = min(self._next_s * 2, self._max_s)
        return delay

    async def wait(self, at_most_s: float) -> None:
        """Until an entry is reported (maybe already, since the last wait) or the delay ends."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.event.wait(), max(0.0, min(self.next_delay(), at_most_s)))
        self.event.clear()


class ChangeWatch:
    """Waiters for entries of watched directories, woken by path from one inotify descriptor.

    A directory watched for good is named to ``start``; one watched for a while
    (a snapshot's block directory during its attach) is added with ``watch`` and
    taken off with ``unwatch``.
    """

    def __init__(self, backoff: Backoff) -> None:
        self._backoff = backoff
        self._descriptor: int | None = None  # NO_WATCH: there is no inotify here
        self._loop: asyncio.AbstractEventLoop | None = None
        self._opening = asyncio.Lock()
        self._directories: dict[int, str] = {}  # watch descriptor: directory
        self._reporting: set[str] = set()  # directories an event has come from
        self._waiters: dict[str, set[Waiter]] = {}  # entry path: its waiters

    async def start(self, blocking: BlockingRunner, *directories: Path) -> None:
        """The descriptor and the watches of ``directories``, added once (in the executor:
        a watch looks its directory up)."""
        async with self._opening:
            if self._descriptor is None:
                self._descriptor = await blocking(_new_descriptor)
                for directory in directories:
                    await self.watch(blocking, directory)
            loop = asyncio.get_running_loop()
            if self._descriptor != NO_WATCH and self._loop is not loop:
                loop.add_reader(self._descriptor, self._drain)
                self._loop = loop

    async def watch(self, blocking: BlockingRunner, directory: Path) -> int:
        """Watch ``directory`` too; the watch to ``unwatch``, NO_WATCH if none.

        The watch is added in the executor and recorded here, on the loop, which alone
        reads and changes the table of watches.
        """
        if self._descriptor is None or self._descriptor == NO_WATCH:
            return NO_WATCH
        watch = await blocking(_add_watch, self._descriptor, directory)
        if watch != NO_WATCH:
            self._directories[watch] = str(directory)
        return watch

    def unwatch(self, watch: int) -> None:
        """Stop watching what ``watch`` names (a directory removed since is no error)."""
        directory = self._directories.pop(watch, None) if watch != NO_WATCH else None
        if directory is None:
            return
        self._reporting.discard(directory)
        if self._descriptor is not None and self._descriptor != NO_WATCH:
            _libc.inotify_rm_watch(self._descriptor, watch)

    @contextlib.contextmanager
    def expecting(self, *entries: Path) -> Iterator[Waiter]:
        """A waiter woken when any of ``entries`` appears or is written, registered before
        the first look so no event is lost. Its delay is the long one where the first
        entry's directory is known to report events."""
        waiter = Waiter(self._backoff, reported=str(entries[0].parent) in self._reporting)
        paths = [str(entry) for entry in entries]
        for path in paths:
            self._waiters.setdefault(path, set()).add(waiter)
        try:
            yield waiter
        finally:
            for path in paths:
                waiters = self._waiters[path]
                waiters.discard(waiter)
                if not waiters:
                    del self._waiters[path]

    def _drain(self) -> None:
        assert self._descriptor is not None
        data = b""
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(self._descriptor, _READ_SIZE):
                data += chunk
        for watch, name, overflow in _parse_events(data):
            if overflow:
                woken = list(self._waiters.values())
            else:
                directory = self._directories.get(watch)
                if directory is None:
                    continue
                self._reporting.add(directory)
                path = f"{directory}/{name}"
                woken = [self._waiters.get(path, set())]
            for waiters in woken:
                for waiter in waiters:
                    waiter.event.set()

    def close(self) -> None:
        if self._loop is not None and self._descriptor is not None:
            self._loop.remove_reader(self._descriptor)
        if self._descriptor is not None and self._descriptor != NO_WATCH:
            os.close(self._descriptor)
        self._descriptor, self._loop = None, None
        self._directories.clear()
        self._reporting.clear()


def _new_descriptor() -> int:
    """Blocking: an inotify descriptor, NO_WATCH where there is no inotify."""
    return max(int(_libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)), NO_WATCH)


def _add_watch(descriptor: int, directory: Path) -> int:
    """Blocking: a watch of ``directory``'s new and written entries, NO_WATCH if refused."""
    watch = int(_libc.inotify_add_watch(descriptor, os.fsencode(directory), _IN_APPEARED))
    return max(watch, NO_WATCH)


def _parse_events(data: bytes) -> Iterator[tuple[int, str, bool]]:
    """The watch and entry name of each inotify event, and whether the queue overflowed."""
    offset = 0
    while offset + _EVENT.size <= len(data):
        watch, mask, _, length = _EVENT.unpack_from(data, offset)
        start = offset + _EVENT.size
        name = data[start : start + length].rstrip(b"\0")
        yield watch, os.fsdecode(name), bool(mask & _IN_Q_OVERFLOW)
        offset = start + length
