"""Running blocking work off the event loop, and work that must finish once started."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class BlockingRunner:
    """Runs blocking calls in an executor pool (filesystem walks, renames, mounts...)."""

    def __init__(self, executor: Executor | None = None) -> None:
        self._executor = executor

    async def __call__(self, func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(func, *args, **kwargs))


class CompletionGuard:
    """Runs multi-step mutations to completion even when the RPC that started them is cancelled.

    A cancelled client must not leave a metadata row without its directory, so
    the mutation runs in its own task; the RPC only waits for it. ``drain``
    lets shutdown wait for every mutation still running.
    """

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._forget)
        return await asyncio.shield(task)

    def _forget(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: the RPC that wanted it may be gone

    async def drain(self) -> None:
        while self._tasks:
            await asyncio.wait(set(self._tasks))
