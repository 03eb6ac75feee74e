"""Group commit: writes queued by many callers, applied and made durable by one task.

Every write queued while the previous transaction was being fsync'ed goes into the
next transaction, so N concurrent RPCs cost one fsync, not N. Each write is validated
against the state left by the writes before it in the same batch; a write that fails
validation is rolled back alone and the others still commit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from obdsnap.errors import SnapshotError, Unavailable
from obdsnap.storage.batch import Batch
from obdsnap.storage.index import Index

log = logging.getLogger(__name__)

T = TypeVar("T")

Persist = Callable[[Batch], Awaitable[None]]


class CommitObserver(Protocol):
    """Told of every transaction the writer commits (the metrics)."""

    def committed(self, writes: int, seconds: float) -> None:
        """A transaction of ``writes`` writes was committed and fsync'ed in ``seconds``."""
        ...


class _Unobserved:
    def committed(self, writes: int, seconds: float) -> None:
        pass


UNOBSERVED = _Unobserved()


@dataclass
class _Write(Generic[T]):
    apply: Callable[[Batch], T]
    done: asyncio.Future[T]


_Outcome = tuple[_Write[Any], Any, BaseException | None]


class Writer:
    """Applies queued writes to batches over ``index``; ``persist`` makes a batch durable,
    after which the index shows it and the writers get their results."""

    def __init__(self, index: Index, persist: Persist, observer: CommitObserver) -> None:
        self._index = index
        self._persist = persist
        self._observer = observer
        self._queue: list[_Write[Any]] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="metastore-writer")

    async def stop(self) -> None:
        """Commit what is queued, then stop; later writes are Unavailable."""
        self._stopping = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
            self._task = None

    async def write(self, apply: Callable[[Batch], T]) -> T:
        """``apply`` run on a batch, once that batch is durable; its result or its error."""
        if self._stopping:
            raise Unavailable("metadata store is closing")
        done: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append(_Write(apply, done))
        self._wakeup.set()
        return await asyncio.shield(done)

    async def _loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                writes, self._queue = self._queue, []
                await self._commit(writes)
            if self._stopping:
                return

    async def _commit(self, writes: list[_Write[Any]]) -> None:
        batch = self._index.batch()
        outcomes = [_apply(write, batch) for write in writes]
        started = time.perf_counter()
        try:
            await self._persist(batch)
        except Exception as exc:  # disk full, I/O error: nothing of this batch happened
            log.exception("metadata transaction failed")
            failure = SnapshotError(f"metadata write failed: {exc}")
            outcomes = [(write, None, error or failure) for write, _, error in outcomes]
            self._index.use_up_ids(batch)
        else:
            self._index.apply(batch)
            written = sum(1 for _, _, error in outcomes if error is None)
            if written:  # each write that passed validation changed the batch
                self._observer.committed(written, time.perf_counter() - started)
        for write, result, error in outcomes:
            if write.done.done():
                continue
            if error is None:
                write.done.set_result(result)
            else:
                write.done.set_exception(error)


def _apply(write: _Write[Any], batch: Batch) -> _Outcome:
    """One write on the batch; a write that fails leaves the batch as it found it."""
    mark = batch.checkpoint()
    try:
        return write, write.apply(batch), None
    except SnapshotError as exc:
        batch.restore(mark)
        return write, None, exc
    except Exception as exc:  # a bug in one write must not stop the writer
        log.exception("metadata write failed")
        batch.restore(mark)
        return write, None, SnapshotError(f"metadata write failed: {exc}")
