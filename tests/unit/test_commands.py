"""run_command: children spawned off the event loop, with their output, errors, time limit
and cancellation."""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
from pathlib import Path

import pytest

from obdsnap.commands import CommandError, CommandTimedOut, run_command


async def test_stdout_is_returned_and_the_child_is_spawned_off_the_loop_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spawned_on: list[int] = []
    real_popen = subprocess.Popen

    def popen(*args: object, **kwargs: object) -> object:
        spawned_on.append(threading.get_ident())
        return real_popen(*args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(subprocess, "Popen", popen)
    assert await run_command("sh", "-c", "echo out; echo err >&2") == "out\n"
    assert spawned_on and threading.get_ident() not in spawned_on


async def test_large_output_on_both_pipes_is_read_whole() -> None:
    script = "head -c 300000 /dev/zero; head -c 300000 /dev/zero >&2"
    assert len(await run_command("sh", "-c", script)) == 300000


async def test_a_failing_command_reports_its_status_and_stderr() -> None:
    with pytest.raises(CommandError) as caught:
        await run_command("sh", "-c", "echo out; echo broken >&2; exit 3")
    assert str(caught.value) == "sh -c echo out; echo broken >&2; exit 3 failed (exit 3): broken"
    assert caught.value.step == "sh" and caught.value.reason == "broken"


async def test_without_stderr_the_failure_quotes_stdout() -> None:
    with pytest.raises(CommandError, match=r"failed \(exit 1\): only out$"):
        await run_command("sh", "-c", "echo only out; exit 1")


async def test_a_command_that_cannot_run_is_a_command_error(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-tool")
    with pytest.raises(CommandError) as caught:
        await run_command(missing, "x")
    assert str(caught.value) == f"cannot run {missing}: No such file or directory"
    assert caught.value.step == "no-such-tool"


async def test_past_its_limit_the_child_is_killed(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    with pytest.raises(CommandTimedOut) as caught:
        await run_command("sh", "-c", f"echo $$ > {pid_file}; exec sleep 30", time_limit_s=0.3)
    assert str(caught.value) == "sh did not finish within 0s"
    assert caught.value.reason == "timed out"
    assert_gone(int(pid_file.read_text()))


async def test_cancelled_the_child_is_killed_and_reaped(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    task = asyncio.ensure_future(run_command("sh", "-c", f"echo $$ > {pid_file}; exec sleep 30"))
    for _ in range(500):
        if pid_file.exists() and pid_file.read_text():
            break
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert_gone(int(pid_file.read_text()))


def assert_gone(pid: int) -> None:
    """Killed and reaped: no such process (a zombie would still be there)."""
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_without_pidfds_the_exit_is_polled(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_pidfd(pid: int, flags: int = 0) -> int:
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(os, "pidfd_open", no_pidfd)
    assert await run_command("sh", "-c", "echo done") == "done\n"
    with pytest.raises(CommandError, match=r"failed \(exit 4\)"):
        await run_command("sh", "-c", "exit 4")
