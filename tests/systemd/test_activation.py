"""Socket activation: the listener systemd passes (LISTEN_FDS) is used and left alone.

What obdsnap does with LISTEN_FDS/LISTEN_PID, as sd_listen_fds(3) would:
variables for another process (LISTEN_PID not obdsnap's) are ignored and obdsnap
creates its own socket; variables for obdsnap that do not describe exactly one
listening unix stream socket stop start-up with one line saying why.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fuzz.rawgrpc import RawClient, frame
from grpclib.client import Channel
from hyperframe.frame import GoAwayFrame, SettingsFrame
from support.server_process import ServerProcess, refusal, short_tmpdir

from obdsnap.genproto.containerd.services.snapshots import v1 as api
from obdsnap.systemd import activated_listener

from .helpers import NotifyListener, read_until_closed

REPO = Path(__file__).resolve().parents[2]
SERVE = [sys.executable, "-m", "obdsnap", "serve"]


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = short_tmpdir()  # socket paths are limited to 107 bytes
    yield path
    shutil.rmtree(path, ignore_errors=True)


class Activated:
    """obdsnap started by systemd-socket-activate on ``socket_path``."""

    def __init__(self, workdir: Path, socket_path: Path, address: Path) -> None:
        activate = shutil.which("systemd-socket-activate")
        if activate is None:
            pytest.skip("systemd-socket-activate not found (systemd)")
        self.log = workdir / "obdsnap.log"
        self.notify = NotifyListener(workdir / "notify")
        command = [*SERVE, "--root", str(workdir / "root"), "--address", str(address)]
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [
                    activate,
                    f"--listen={socket_path}",
                    f"--setenv=PYTHONPATH={REPO}",
                    f"--setenv=NOTIFY_SOCKET={self.notify.path}",
                    *command,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 10
        while not socket_path.exists():
            assert time.monotonic() < deadline and self.process.poll() is None, self.text()
            time.sleep(0.02)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            return self.process.wait()
        finally:
            self.notify.close()


def first_connection(path: Path) -> None:
    """systemd-socket-activate starts its command on the first connection."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.connect(str(path))


async def prepare_and_stat(address: Path, key: str) -> str:
    channel = Channel(path=str(address))
    try:
        client = api.SnapshotsStub(channel)
        await client.prepare(api.PrepareSnapshotRequest(key=key), timeout=30)
        info = await client.stat(api.StatSnapshotRequest(key=key), timeout=30)
        return info.info.name
    finally:
        channel.close()


async def test_the_passed_listener_is_served_and_left_in_place(workdir: Path) -> None:
    path = workdir / "activated.sock"
    server = Activated(workdir, path, address=path)
    try:
        before = path.lstat()
        first_connection(path)
        ready = server.notify.wait_for("READY", "1", 60.0)
        assert ready.pid == server.process.pid  # systemd-socket-activate execs obdsnap
        assert await prepare_and_stat(path, "a") == "a"
    finally:
        status = server.stop()
    assert status == 0, server.text()
    after = path.lstat()  # neither replaced, nor chmod'ed, nor removed at exit
    assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode)
    assert "WARNING" not in server.text()
    assert "Traceback" not in server.text()


async def test_a_config_address_that_differs_is_warned_about(workdir: Path) -> None:
    path = workdir / "activated.sock"
    configured = workdir / "configured.sock"
    server = Activated(workdir, path, address=configured)
    try:
        first_connection(path)
        ready = server.notify.wait_for("READY", "1", 60.0)
        assert ready.fields["STATUS"] == f"serving on {path}"
        assert await prepare_and_stat(path, "b") == "b"
        assert not configured.exists()
    finally:
        assert server.stop() == 0, server.text()
    warning = f"socket from systemd is {path}, config address is {configured}"
    assert warning in server.text()


def test_a_start_up_that_fails_after_the_handshake_ends_the_waiting_call(workdir: Path) -> None:
    """The socket from systemd is answered before the store is opened: containerd gives
    the HTTP/2 handshake one second, and loading a store of 100k snapshots takes longer.
    A call that waited for a start-up that then failed ends with a GOAWAY, not in silence."""
    root = workdir / "root"
    root.mkdir()
    (root / "metadata.db").write_bytes(b"SQLite format 3\0" + b"\xff" * 8000)
    path = workdir / "activated.sock"
    server = Activated(workdir, path, address=path)
    try:
        client = RawClient(path, timeout=30)  # the first connection starts obdsnap
        client.call("Stat", frame(bytes(api.StatSnapshotRequest(key="waiting"))))
        frames = read_until_closed(client.sock)
    finally:
        status = server.stop()
    assert status == 1, server.text()
    assert f"obdsnap: {root / 'metadata.db'}: " in server.text()
    assert [f for f in frames if isinstance(f, SettingsFrame) and "ACK" not in f.flags]
    assert [f for f in frames if isinstance(f, GoAwayFrame)], frames


def start_failure(workdir: Path, fd3: int | None, variables: str) -> tuple[int, str]:
    """obdsnap started by bash with ``variables`` (``$$`` is obdsnap's pid) and ``fd3``
    as its fd 3; returns its exit status and output."""
    address = workdir / "obdsnap.sock"
    command = " ".join(shlex.quote(arg) for arg in SERVE)
    script = (
        f"{variables} exec {command} --root {shlex.quote(str(workdir / 'root'))} "
        f"--address {shlex.quote(str(address))}"
    )

    def as_fd3() -> None:
        if fd3 is not None:
            os.dup2(fd3, 3)

    done = subprocess.run(
        ["bash", "-c", script],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        pass_fds=(3,) if fd3 is not None else (),
        preexec_fn=as_fd3,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert not address.exists(), "obdsnap created its own socket"
    return done.returncode, done.stdout + done.stderr


def assert_one_line_error(status: int, output: str, message: str) -> None:
    assert status == 1, output
    assert message in refusal(output), output


def test_fd_3_that_is_not_a_socket_stops_start_up(workdir: Path) -> None:
    with open(os.devnull) as devnull:
        status, output = start_failure(workdir, devnull.fileno(), "LISTEN_FDS=1 LISTEN_PID=$$")
    assert_one_line_error(status, output, "fd 3 from LISTEN_FDS is not a socket")


@pytest.mark.parametrize(
    "kind",
    [
        (socket.AF_UNIX, socket.SOCK_DGRAM),
        (socket.AF_UNIX, socket.SOCK_STREAM),  # bound, not listening
        (socket.AF_INET, socket.SOCK_STREAM),  # listening, not unix
    ],
    ids=["datagram", "not-listening", "tcp"],
)
def test_a_socket_that_is_not_a_listening_unix_stream_stops_start_up(
    workdir: Path, kind: tuple[socket.AddressFamily, socket.SocketKind]
) -> None:
    family, kind_ = kind
    with socket.socket(family, kind_) as sock:
        if family == socket.AF_UNIX:
            sock.bind(str(workdir / "other.sock"))
        else:
            sock.bind(("127.0.0.1", 0))
            sock.listen()
        status, output = start_failure(workdir, sock.fileno(), "LISTEN_FDS=1 LISTEN_PID=$$")
    assert_one_line_error(status, output, "is not a listening unix stream socket")


def test_more_than_one_socket_stops_start_up(workdir: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(workdir / "one.sock"))
        sock.listen()
        status, output = start_failure(workdir, sock.fileno(), "LISTEN_FDS=2 LISTEN_PID=$$")
    assert_one_line_error(status, output, "LISTEN_FDS=2: obdsnap takes exactly one socket")


def test_a_malformed_listen_pid_stops_start_up(workdir: Path) -> None:
    status, output = start_failure(workdir, None, "LISTEN_FDS=1 LISTEN_PID=self")
    assert_one_line_error(status, output, "LISTEN_PID=self is not a process id")


def test_variables_for_another_process_are_ignored(workdir: Path) -> None:
    """As sd_listen_fds: LISTEN_PID of another process means the sockets are not ours."""
    command = (
        f"env LISTEN_FDS=1 LISTEN_PID=1 {shlex.quote(sys.executable)} "
        "-m obdsnap serve --root {root} --address {address}"
    )
    server = ServerProcess(workdir, command).start()
    try:
        assert server.address.is_socket()  # its own socket, as without activation
        assert server.address.stat().st_mode & 0o777 == 0o600
    finally:
        assert server.stop() == 0
    assert "LISTEN_FDS=1 is for pid 1, not this process" in server.log()
    assert not server.address.exists()


def test_the_variables_are_taken_out_of_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Children (mkfs, the overlaybd tools) must not take the sockets for theirs."""
    monkeypatch.setenv("LISTEN_FDS", "1")
    monkeypatch.setenv("LISTEN_PID", "1")
    monkeypatch.setenv("LISTEN_FDNAMES", "obdsnap")
    assert activated_listener() is None
    assert not {"LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"} & set(os.environ)
    assert activated_listener() is None  # and without them: no activation
