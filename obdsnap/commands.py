"""External commands (mkfs, mount, overlaybd tools) as asyncio subprocesses, never a shell."""

from __future__ import annotations

import asyncio
import logging
import time

from obdsnap.errors import SnapshotError

log = logging.getLogger(__name__)


class CommandError(SnapshotError):
    """A command failed; the message holds its output."""


async def run_command(*argv: str, time_limit_s: float = 300.0) -> str:
    """Run ``argv``; its stdout, or CommandError with its status and output."""
    start = time.monotonic()
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        raise CommandError(f"cannot run {argv[0]}: {exc.strerror}") from exc
    try:
        async with asyncio.timeout(time_limit_s):
            stdout, stderr = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise CommandError(f"{argv[0]} did not finish within {time_limit_s:.0f}s") from None
    except asyncio.CancelledError:
        process.kill()
        await process.wait()
        raise
    log.debug("%s: exit %s in %.3fs", " ".join(argv), process.returncode, time.monotonic() - start)
    if process.returncode != 0:
        output = (stderr or stdout).decode(errors="replace").strip()
        raise CommandError(f"{' '.join(argv)} failed (exit {process.returncode}): {output}")
    return stdout.decode(errors="replace")
