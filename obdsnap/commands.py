"""External commands (mkfs, mount, overlaybd tools) as asyncio subprocesses, never a shell."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from obdsnap.errors import SnapshotError

log = logging.getLogger(__name__)


class CommandError(SnapshotError):
    """A command failed; the message holds its output, ``step`` the command's name."""

    def __init__(self, argv: tuple[str, ...], message: str, reason: str) -> None:
        super().__init__(message)
        self.add_context(step=Path(argv[0]).name, reason=reason)


class CommandTimedOut(CommandError):
    """A command ran past its time limit and was killed."""


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
        raise CommandError(
            argv, f"cannot run {argv[0]}: {exc.strerror}", str(exc.strerror)
        ) from exc
    try:
        async with asyncio.timeout(time_limit_s):
            stdout, stderr = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        message = f"{argv[0]} did not finish within {time_limit_s:.0f}s"
        raise CommandTimedOut(argv, message, "timed out") from None
    except asyncio.CancelledError:
        process.kill()
        await process.wait()
        raise
    log.debug("%s: exit %s in %.3fs", " ".join(argv), process.returncode, time.monotonic() - start)
    if process.returncode != 0:
        output = (stderr or stdout).decode(errors="replace").strip()
        raise CommandError(
            argv, f"{' '.join(argv)} failed (exit {process.returncode}): {output}", output
        )
    return stdout.decode(errors="replace")
