"""Restarts under load: obdsnap stopped with SIGTERM and started again 10 times while 16
clients call Stat, Prepare and Remove without pause, and not one call fails.

The socket held across restarts: ``systemd-socket-activate`` (it ships with
systemd) binds the socket and execs its command with the socket as fd 3,
``LISTEN_FDS=1`` and ``LISTEN_PID`` set, as systemd starts obdsnap.service with
obdsnap.socket. Its command here is a bash supervisor playing systemd's
``Restart=always``: it runs obdsnap in a subshell that sets ``LISTEN_PID`` to
its own pid (``$BASHPID``) and ``exec``s obdsnap, so the pid is obdsnap's;
when obdsnap exits it starts the next one. The supervisor keeps fd 3 open all
along, so between two obdsnap processes new connections wait in the socket's
backlog, as they do in the socket systemd holds. Every obdsnap reports to a
test NOTIFY_SOCKET, whose credentials give the pid that sent READY=1: the test
sends SIGTERM to that pid once it has served a while.

The clients are containerd's own: ``restartload`` (Go) drives containerd 1.6's
``snapshots/proxy`` client, dialled with the options containerd uses for a proxy
plugin, so each call fails or not exactly as it would in containerd. It runs
either as containerd does (one connection for all clients) or with one
connection per client.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.gobuild import build_go_program
from support.server_process import short_tmpdir

from .helpers import Notification, NotifyListener

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
RESTARTS = 10
CLIENTS = 16
SERVE_S = 1.5  # how long each obdsnap serves before its SIGTERM
EXIT_TIMEOUT_S = 30.0
READY_TIMEOUT_S = 60.0


@dataclass
class Lifetime:
    """One obdsnap process: from its READY=1 to its SIGTERM."""

    pid: int
    ready_at: float
    stopped_at: float = 0.0


@dataclass
class Rig:
    workdir: Path
    socket: Path
    notify: NotifyListener
    supervisor: subprocess.Popen[bytes]
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


SUPERVISOR = """\
while [ ! -e {stop} ]; do
  (LISTEN_PID=$BASHPID exec {python} -m obdsnap serve --root {root} --address {socket})
  echo "supervisor: obdsnap exited with $?"
done
"""


@pytest.fixture
def rig() -> Iterator[Rig]:
    activate = shutil.which("systemd-socket-activate")
    if activate is None:
        pytest.skip("systemd-socket-activate not found (systemd)")
    workdir = short_tmpdir()
    socket = workdir / "obdsnap.sock"
    script = workdir / "supervisor.sh"
    script.write_text(
        SUPERVISOR.format(
            stop=workdir / "stop", python=sys.executable, root=workdir / "root", socket=socket
        )
    )
    log = workdir / "obdsnap.log"
    notify = NotifyListener(workdir / "notify")
    with log.open("ab") as out:
        supervisor = subprocess.Popen(
            [
                activate,
                f"--listen={socket}",
                f"--setenv=PYTHONPATH={REPO}",
                f"--setenv=NOTIFY_SOCKET={notify.path}",
                "bash",
                str(script),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 10
        while not socket.exists():
            assert supervisor.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "systemd-socket-activate did not listen"
            time.sleep(0.02)
        yield Rig(workdir, socket, notify, supervisor, log)
    finally:
        (workdir / "stop").touch()
        if supervisor.poll() is None:
            os.killpg(supervisor.pid, signal.SIGTERM)
            try:
                supervisor.wait(EXIT_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(supervisor.pid, signal.SIGKILL)
                supervisor.wait()
        notify.close()
        shutil.rmtree(workdir, ignore_errors=True)


def wait_ready(rig: Rig, seen: set[int]) -> Notification:
    """READY=1 from an obdsnap not seen before."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    checked = 0
    while time.monotonic() < deadline:
        for message in rig.notify.messages[checked:]:
            if message.fields.get("READY") == "1" and message.pid not in seen:
                return message
        checked = len(rig.notify.messages)
        assert rig.supervisor.poll() is None, rig.log_text()[-4000:]
        rig.notify.poll(0.2)
    raise AssertionError(f"no new READY=1 within {READY_TIMEOUT_S}s:\n{rig.log_text()[-4000:]}")


def wait_exit(pid: int, rig: Rig) -> None:
    deadline = time.monotonic() + EXIT_TIMEOUT_S
    while Path(f"/proc/{pid}").exists():
        assert time.monotonic() < deadline, f"obdsnap {pid} still runs:\n{rig.log_text()[-4000:]}"
        time.sleep(0.02)


def failure_summary(failures: list[dict[str, object]]) -> str:
    """How many calls failed, by kind and error, then the first of them in full."""
    counts = Counter(f"{failure['kind']}: {failure['error']}" for failure in failures)
    lines = [f"{count} calls: {what}" for what, count in counts.most_common(10)]
    return "\n".join([*lines, json.dumps(failures[:5], indent=2)])


def successes_between(report: dict[str, object], start: float, end: float) -> int:
    """Calls that succeeded between two time.time() moments (whole timeline buckets)."""
    width = int(report["bucket_ms"])  # type: ignore[call-overload]
    timeline: dict[str, int] = report["timeline"]  # type: ignore[assignment]
    first, last = int(start * 1000) // width, int(end * 1000) // width
    return sum(count for bucket, count in timeline.items() if first <= int(bucket) <= last)


@pytest.mark.parametrize("connections", [1, CLIENTS], ids=["one-connection", "one-per-client"])
def test_ten_restarts_under_load_fail_no_call(rig: Rig, connections: int, tmp_path: Path) -> None:
    load_binary = build_go_program(Path(__file__).parent / "restartload", "restartload")
    report_path = tmp_path / "restartload.json"
    with report_path.open("wb") as out, (tmp_path / "restartload.err").open("wb") as err:
        load = subprocess.Popen(
            [
                str(load_binary),
                f"-address={rig.socket}",
                f"-clients={CLIENTS}",
                f"-connections={connections}",
            ],
            stdout=out,
            stderr=err,
        )
    lifetimes: list[Lifetime] = []
    try:
        # The clients' first connection makes systemd-socket-activate start the supervisor.
        for _ in range(RESTARTS):
            ready = wait_ready(rig, {life.pid for life in lifetimes})
            life = Lifetime(ready.pid, ready.received)
            lifetimes.append(life)
            time.sleep(SERVE_S)
            life.stopped_at = time.time()
            os.kill(life.pid, signal.SIGTERM)
            wait_exit(life.pid, rig)
        last = wait_ready(rig, {life.pid for life in lifetimes})
        lifetimes.append(Lifetime(last.pid, last.received))
        time.sleep(SERVE_S)
        lifetimes[-1].stopped_at = time.time()
    finally:
        load.send_signal(signal.SIGINT)  # the clients finish their calls and report
        try:
            load.wait(120)
        except subprocess.TimeoutExpired:
            load.kill()
            load.wait()
    assert load.returncode == 0, (tmp_path / "restartload.err").read_text()
    report = json.loads(report_path.read_text())

    figures = {
        "restarts": RESTARTS,
        "clients": CLIENTS,
        "connections": connections,
        "calls": report["total"],
        "calls_by_kind": report["calls"],
        "failures": len(report["failures"]),
        "longest_call_ms": report["longest_call_ms"],
        "longest_call": report["longest_call"],
        "obdsnap_pids": [life.pid for life in lifetimes],
        # From each SIGTERM to the next READY=1 (drain, exit, start, reconcile).
        "longest_restart_s": round(
            max(new.ready_at - old.stopped_at for old, new in itertools.pairwise(lifetimes)), 3
        ),
    }
    (tmp_path / "restart-figures.json").write_text(json.dumps(figures, indent=2))
    print(f"\nrestarts under load ({connections} connections): {json.dumps(figures)}")

    assert report["failures"] == [], failure_summary(report["failures"])
    # 10 restarts: 11 different obdsnap processes, each of which said READY=1, and
    # STOPPING=1 when it got its SIGTERM.
    pids = [life.pid for life in lifetimes]
    assert len(set(pids)) == RESTARTS + 1, pids
    rig.notify.poll()
    stopping = {m.pid for m in rig.notify.messages if "STOPPING" in m.fields}
    assert set(pids[:-1]) <= stopping, (pids, stopping)
    # The calls kept going: every process answered calls, up to the end.
    for life in lifetimes:
        answered = successes_between(report, life.ready_at, life.stopped_at)
        assert answered > 0, f"no call answered by obdsnap {life.pid}: {figures}"
    assert report["calls"]["Prepare"] >= len(lifetimes) * 10, figures
    log = rig.log_text()
    assert log.count("supervisor: obdsnap exited with 0") == RESTARTS, log[-4000:]
    assert "Traceback" not in log
