"""One asyncio lock per snapshot ID, created on demand and dropped when nobody holds it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class KeyedLocks:
    def __init__(self) -> None:
        self._locks: dict[int, asyncio.Lock] = {}
        self._users: dict[int, int] = {}

    @asynccontextmanager
    async def hold(self, *keys: int) -> AsyncIterator[None]:
        """Take the locks of ``keys`` in the order given (callers use own ID, then parent's)."""
        taken: list[int] = []
        try:
            for key in dict.fromkeys(keys):
                await self._acquire(key)
                taken.append(key)
            yield
        finally:
            for key in reversed(taken):
                self._release(key)

    async def _acquire(self, key: int) -> None:
        lock = self._locks.setdefault(key, asyncio.Lock())
        self._users[key] = self._users.get(key, 0) + 1
        try:
            await lock.acquire()
        except BaseException:
            self._forget(key)
            raise

    def _release(self, key: int) -> None:
        self._locks[key].release()
        self._forget(key)

    def _forget(self, key: int) -> None:
        self._users[key] -= 1
        if self._users[key] == 0:
            del self._users[key]
            del self._locks[key]


class CountedSemaphore:
    """A semaphore that tells how many hold it and how many wait for it (for metrics)."""

    def __init__(self, limit: int) -> None:
        self._semaphore = asyncio.Semaphore(limit)
        self.in_flight = 0
        self.waiting = 0

    async def acquire(self) -> None:
        self.waiting += 1
        try:
            await self._semaphore.acquire()
        finally:
            self.waiting -= 1
        self.in_flight += 1

    def release(self) -> None:
        self.in_flight -= 1
        self._semaphore.release()

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()
