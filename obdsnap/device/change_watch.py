"""Waiting for something to appear in a few directories: inotify, with a back-off beside it.

inotify wakes the waiter as soon as an entry is made where the file system
reports it (a local directory). sysfs and FUSE accept a watch but never report
what the kernel or the FUSE daemon itself makes there, so every wait also ends
after a delay that starts short and doubles up to a cap: whichever comes first.
No file system is told apart; where events come, the back-off is never reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
# IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE
_IN_APPEARED = 0x002 | 0x004 | 0x008 | 0x080 | 0x100
_READ_SIZE = 4096

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


@dataclass(frozen=True)
class Backoff:
    first_s: float = 0.001
    max_s: float = 0.02

    def delays(self) -> DelaySequence:
        return DelaySequence(self)


class DelaySequence:
    """The delays of one wait: ``first_s``, doubling up to ``max_s``."""

    def __init__(self, backoff: Backoff) -> None:
        self._next = backoff.first_s
        self._max = backoff.max_s

    def next(self) -> float:
        delay = self._next
        self._next = min(self._next * 2, self._max)
        return delay


class ChangeWatch:
    """Wakes a waiter when an entry changes in any of the directories, or after the back-off.

    Make it with :meth:`open` (blocking: run it in an executor), use it on the event
    loop, and ``close`` it.
    """

    def __init__(self, descriptor: int, backoff: Backoff) -> None:
        self._descriptor = descriptor
        self._delays = backoff.delays()
        self._changed = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def open(cls, directories: Sequence[Path], backoff: Backoff) -> ChangeWatch:
        """Blocking: watches on those of ``directories`` that exist and take one."""
        descriptor = _libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if descriptor >= 0:
            for directory in directories:
                # A directory that is not there yet, or takes no watch: the back-off covers it.
                _libc.inotify_add_watch(descriptor, os.fsencode(directory), _IN_APPEARED)
        return cls(descriptor, backoff)

    async def wait(self, at_most_s: float) -> None:
        """Until a change is reported or the next back-off delay (at most ``at_most_s``) ends."""
        self._listen()
        delay = max(0.0, min(self._delays.next(), at_most_s))
        try:
            await asyncio.wait_for(self._changed.wait(), delay)
        except TimeoutError:
            return
        self._changed.clear()

    def _listen(self) -> None:
        if self._loop is None and self._descriptor >= 0:
            self._loop = asyncio.get_running_loop()
            self._loop.add_reader(self._descriptor, self._drain)

    def _drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._descriptor, _READ_SIZE):
                pass
        self._changed.set()

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self._descriptor)
            self._loop = None
        if self._descriptor >= 0:
            os.close(self._descriptor)
            self._descriptor = -1
