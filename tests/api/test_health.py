"""`obdsnap health`: exit 0 while obdsnap answers, 1 when it does not, within the timeout."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

from support.processes import run
from support.server_process import ServerProcess


def health(address: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    health = [sys.executable, "-m", "obdsnap", "health", "--address", str(address), *extra]
    return run(*health, check=False, timeout=60)


def test_healthy_while_serving(server: ServerProcess) -> None:
    result = health(server.address)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "serving: Stat answered NOT_FOUND" in result.stdout


def test_unhealthy_without_a_server(tmp_path: Path) -> None:
    result = health(tmp_path / "absent.sock")
    assert result.returncode == 1
    assert "not serving: cannot connect" in result.stdout


def test_unhealthy_when_the_answer_does_not_come_in_time(tmp_path: Path) -> None:
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.bind(str(tmp_path / "silent.sock"))
    silent.listen(1)  # accepts the connection, never speaks HTTP/2
    try:
        start = time.monotonic()
        result = health(tmp_path / "silent.sock", "--timeout", "0.5")
        elapsed = time.monotonic() - start
    finally:
        silent.close()
    assert result.returncode == 1
    assert "no answer within 0.5s" in result.stdout
    assert elapsed < 10
