"""Start and stop a proxy snapshotter server process from a command template.

The template (env ``OBDSNAP_SERVER_CMD``) is run by bash after substituting
``{root}`` (a fresh root directory), ``{address}`` (the unix socket to serve)
and ``{config}`` (a JSON file ``{"root": ..., "address": ...}``). The server
gets its own process group; stopping sends SIGTERM to the group and SIGKILL
after a grace period.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

# The name containerd's config gives the proxy plugin, i.e. the snapshotter name.
PROXY_PLUGIN_NAME = "obdsnap"
DEFAULT_SERVER_CMD = "python3 -m obdsnap serve --root {root} --address {address}"
REPO_ROOT = Path(__file__).resolve().parents[2]
# sockaddr_un.sun_path holds 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107


def server_command_template() -> str:
    return os.environ.get("OBDSNAP_SERVER_CMD") or DEFAULT_SERVER_CMD


class ServerError(RuntimeError):
    """The server failed to start, died by itself, or ignored SIGTERM."""


def socket_accepts(address: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        try:
            probe.connect(str(address))
        except OSError:
            return False
    return True


class SnapshotterServer:
    """One server process on its own root directory and socket.

    Usable as a context manager; ``stop`` raises ServerError when the server
    had died before it was asked to stop, or had to be killed.
    """

    def __init__(
        self,
        root: Path,
        address: Path,
        log_path: Path,
        command_template: str | None = None,
        cwd: Path = REPO_ROOT,
    ) -> None:
        if len(os.fsencode(address)) > MAX_SOCKET_PATH:
            raise ValueError(f"socket path longer than {MAX_SOCKET_PATH} bytes: {address}")
        self.root = root
        self.address = address
        self.log_path = log_path
        self.config_path = root.with_name(root.name + ".config.json")
        self.template = command_template or server_command_template()
        self.cwd = cwd
        self.command = (
            self.template.replace("{root}", str(root))
            .replace("{address}", str(address))
            .replace("{config}", str(self.config_path))
        )
        self._process: subprocess.Popen[bytes] | None = None
        self._stopped = False

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 20.0) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(
            json.dumps({"root": str(self.root), "address": str(self.address)})
        )
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                ["bash", "-c", self.command],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not socket_accepts(self.address):
            if self._process.poll() is not None:
                raise ServerError(
                    f"server exited with {self._process.returncode} before listening on "
                    f"{self.address}\ncommand: {self.command}\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                self._terminate(grace=2.0)
                raise ServerError(
                    f"server did not listen on {self.address} within {timeout:.0f}s\n"
                    f"command: {self.command}\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def stop(self, grace: float = 5.0) -> None:
        if self._process is None or self._stopped:
            return
        self._stopped = True
        if self._process.poll() is not None:
            raise ServerError(
                f"server died by itself (exit status {self._process.returncode})\n"
                f"command: {self.command}\n{self.log_tail()}"
            )
        if not self._terminate(grace):
            raise ServerError(
                f"server ignored SIGTERM for {grace:.0f}s and was killed\n"
                f"command: {self.command}\n{self.log_tail()}"
            )

    def _terminate(self, grace: float) -> bool:
        """SIGTERM, then SIGKILL after grace; True if SIGTERM was enough."""
        assert self._process is not None
        group = self._process.pid
        self._signal_group(group, signal.SIGTERM)
        try:
            self._process.wait(timeout=grace)
            graceful = True
        except subprocess.TimeoutExpired:
            graceful = False
        # Also reaches helpers that outlived the server.
        self._signal_group(group, signal.SIGKILL)
        self._process.wait()
        return graceful

    @staticmethod
    def _signal_group(group: int, signum: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signum)

    def log_tail(self, max_bytes: int = 4096) -> str:
        try:
            with self.log_path.open("rb") as log:
                log.seek(max(0, log.seek(0, os.SEEK_END) - max_bytes))
                tail = log.read().decode(errors="replace")
        except OSError as error:
            return f"(no server log: {error})"
        return f"--- server log {self.log_path} (tail) ---\n{tail}"

    def __enter__(self) -> SnapshotterServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
