"""Running a command from a test: one way from plain code, one from a coroutine.

Both capture the output as text and, unless ``check=False``, fail the test with
the command's output when it exits non-zero.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Mapping
from pathlib import Path

Arg = str | Path


def run(
    *argv: Arg,
    check: bool = True,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 600,
) -> subprocess.CompletedProcess[str]:
    """Blocking: run ``argv`` to its end."""
    args = [str(arg) for arg in argv]
    done = subprocess.run(
        args,
        capture_output=True,
        text=True,
        check=False,
        cwd=cwd,
        env=None if env is None else dict(env),
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    if check:
        _assert_succeeded(args, done.returncode, done.stdout, done.stderr)
    return done


async def run_async(
    *argv: Arg, check: bool = True, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``run`` for a coroutine: the event loop goes on while the command runs (the caller
    bounds it with ``asyncio.timeout``)."""
    args = [str(arg) for arg in argv]
    process = await asyncio.create_subprocess_exec(
        *args,
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    returncode = process.returncode
    assert returncode is not None
    done = subprocess.CompletedProcess(args, returncode, out.decode(), err.decode())
    if check:
        _assert_succeeded(args, returncode, done.stdout, done.stderr)
    return done


def _assert_succeeded(args: list[str], returncode: int, stdout: str, stderr: str) -> None:
    assert returncode == 0, (
        f"{' '.join(args)} exited with {returncode}:\n{stderr[-4000:]}{stdout[-4000:]}"
    )
