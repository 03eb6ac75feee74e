"""External commands (mkfs, overlaybd tools...) as child processes, never a shell.

A child is spawned from a thread of its own pool, never from the event loop:
a spawn blocks until the child has exec'ed (~10 ms under load), which would
stall every RPC. subprocess.Popen without preexec_fn uses vfork and runs no
at-fork handlers (logging's among them). Its output and exit are then awaited
on the loop: the pipes as streams, the exit through a pidfd.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from obdsnap.errors import SnapshotError

log = logging.getLogger(__name__)

SPAWN_THREADS = 4
EXIT_POLL_INTERVAL_S = 0.005
_spawner = ThreadPoolExecutor(max_workers=SPAWN_THREADS, thread_name_prefix="spawn")


class CommandError(SnapshotError):
    """A command failed; the message holds its output, ``step`` the command's name."""

    def __init__(self, argv: tuple[str, ...], message: str, reason: str) -> None:
        super().__init__(message)
        self.add_context(step=Path(argv[0]).name, reason=reason)


class CommandTimedOut(CommandError):
    """A command ran past its time limit and was killed."""


def _spawn(argv: tuple[str, ...]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


async def run_command(*argv: str, time_limit_s: float = 300.0) -> str:
    """Run ``argv``; its stdout, or CommandError with its status and output."""
    start = time.monotonic()
    loop = asyncio.get_running_loop()
    try:
        process = await loop.run_in_executor(_spawner, functools.partial(_spawn, argv))
    except OSError as exc:
        raise CommandError(
            argv, f"cannot run {argv[0]}: {exc.strerror}", str(exc.strerror)
        ) from exc
    try:
        async with asyncio.timeout(time_limit_s):
            stdout, stderr = await _communicate(process)
    except TimeoutError:
        await _kill(process)
        message = f"{argv[0]} did not finish within {time_limit_s:.0f}s"
        raise CommandTimedOut(argv, message, "timed out") from None
    except asyncio.CancelledError:
        await asyncio.shield(_kill(process))
        raise
    log.debug("%s: exit %s in %.3fs", " ".join(argv), process.returncode, time.monotonic() - start)
    if process.returncode != 0:
        output = (stderr or stdout).decode(errors="replace").strip()
        raise CommandError(
            argv, f"{' '.join(argv)} failed (exit {process.returncode}): {output}", output
        )
    return stdout.decode(errors="replace")


async def _communicate(process: subprocess.Popen[bytes]) -> tuple[bytes, bytes]:
    """Both pipes read to their end, then the exit awaited; the pipes are closed after."""
    try:
        assert process.stdout is not None and process.stderr is not None
        stdout, stderr = await asyncio.gather(
            _read_all(process.stdout.fileno()), _read_all(process.stderr.fileno())
        )
        await _exited(process)
        return stdout, stderr
    finally:
        _close_pipes(process)


async def _read_all(fd: int) -> bytes:
    loop = asyncio.get_running_loop()
    os.set_blocking(fd, False)
    chunks: list[bytes] = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            await _readable(loop, fd)
            continue
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


async def _readable(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    ready: asyncio.Future[None] = loop.create_future()
    loop.add_reader(fd, _wake, ready)
    try:
        await ready
    finally:
        loop.remove_reader(fd)


def _wake(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)


async def _exited(process: subprocess.Popen[bytes]) -> None:
    """The child's exit, awaited on a pidfd (readable once it has exited) and then reaped."""
    if process.poll() is not None:
        return
    try:
        pidfd = os.pidfd_open(process.pid)
    except OSError:  # a kernel before 5.3: no pidfd, poll instead
        while True:
            if process.poll() is not None:
                return
            await asyncio.sleep(EXIT_POLL_INTERVAL_S)
    try:
        while process.poll() is None:
            await _readable(asyncio.get_running_loop(), pidfd)
    finally:
        os.close(pidfd)


async def _kill(process: subprocess.Popen[bytes]) -> None:
    """Kill the child and wait until it is gone."""
    with contextlib.suppress(ProcessLookupError):
        process.kill()
    try:
        await _exited(process)
    finally:
        _close_pipes(process)


def _close_pipes(process: subprocess.Popen[bytes]) -> None:
    for pipe in (process.stdout, process.stderr):
        if pipe is not None:
            pipe.close()
