"""An obdsnap server in its own process, on a fresh root and socket, for tests."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

DEFAULT_COMMAND = (
    f"{shlex.quote(sys.executable)} -m obdsnap serve --root {{root}} --address {{address}}"
)


def short_tmpdir() -> Path:
    """A work directory under /tmp/obd-*: the kernel (and the simulator) cut a TCMU
    device's dev_config, the path of its config under obdsnap's root, at 255 bytes."""
    return Path(tempfile.mkdtemp(prefix="obd-", dir="/tmp"))


class ServerProcess:
    """Starts ``command`` (a template with {root}, {address}, {config}) and waits for its socket."""

    def __init__(
        self,
        workdir: Path,
        command: str | None = None,
        *,
        config: str | None = None,
        start_timeout: float = 20.0,
    ) -> None:
        self.workdir = workdir
        self.root = workdir / "root"
        self.address = workdir / "obdsnap.sock"
        self.log_path = workdir / "obdsnap.log"
        self.config_path = workdir / "config.json"
        self._command = command or os.environ.get("OBDSNAP_SERVER_CMD") or DEFAULT_COMMAND
        self._config = config
        self._start_timeout = start_timeout
        self._process: subprocess.Popen[bytes] | None = None

    @classmethod
    def with_config(
        cls,
        workdir: Path,
        settings: dict[str, object],
        *,
        env: Mapping[str, str] | None = None,
        **options: float,
    ) -> ServerProcess:
        """A server started with ``--config``: ``settings`` plus this workdir's root and socket;
        ``env``: variables set for it (and the tools it runs)."""
        config = {
            "root": str(workdir / "root"),
            "address": str(workdir / "obdsnap.sock"),
            **settings,
        }
        variables = [shlex.quote(f"{name}={value}") for name, value in (env or {}).items()]
        prefix = f"env {' '.join(variables)} " if variables else ""
        command = f"{prefix}{shlex.quote(sys.executable)} -m obdsnap serve --config {{config}}"
        return cls(workdir, command, config=json.dumps(config), **options)

    def start(self) -> ServerProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self._config
        if config is None:
            config = json.dumps({"root": str(self.root), "address": str(self.address)})
        self.config_path.write_text(config)
        command = (
            self._command.replace("{root}", shlex.quote(str(self.root)))
            .replace("{address}", shlex.quote(str(self.address)))
            .replace("{config}", shlex.quote(str(self.config_path)))
        )
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                ["bash", "-c", f"exec {command}"],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + self._start_timeout
        # A connection that gets through, not the socket file: after a crash the
        # dead server's socket file is still there until the new one replaces it.
        while not self.accepts_connections():
            if self._process.poll() is not None:
                raise RuntimeError(f"obdsnap exited with {self._process.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(
                    f"obdsnap did not listen within {self._start_timeout}s:\n{self.log()}"
                )
            time.sleep(0.02)
        return self

    def accepts_connections(self) -> bool:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(self.address))
            except OSError:
                return False
        return True

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def rss_kib(self) -> int:
        """The server's resident memory."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError(f"no VmRSS for pid {self.pid}")

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def signal(self, signum: int) -> None:
        assert self._process is not None
        os.kill(self._process.pid, signum)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, wait; SIGKILL if it does not stop. Returns the exit status."""
        assert self._process is not None
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self._process.wait()

    def kill(self) -> None:
        assert self._process is not None
        if self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-8000:]
        except FileNotFoundError:
            return ""

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._process is not None:
            self.stop()


def refusal(output: str) -> str:
    """The one line with which obdsnap refused to start: it may log its start-up line
    (version and config) before, but it says what is wrong in exactly one line, never
    with a traceback."""
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("obdsnap: ")]
    assert len(errors) == 1, output
    return errors[0]
