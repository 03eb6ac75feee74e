"""sd_notify: STATUS= lines, READY=1 only once the start-up reconcile is done and calls are
answered, STOPPING=1 on SIGTERM; a no-op without NOTIFY_SOCKET; never blocking the loop."""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import shutil
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from grpclib import GRPCError
from grpclib.client import Channel
from grpclib.const import Status
from support.server_process import ServerProcess, short_tmpdir

from obdsnap import systemd
from obdsnap.genproto.containerd.services.snapshots import v1 as api
from obdsnap.systemd import Notifier

from .helpers import NotifyListener, statuses

ORPHANS = 200  # directories no snapshot owns: removing them makes the reconcile take a while


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = short_tmpdir()  # socket paths are limited to 107 bytes
    yield path
    shutil.rmtree(path, ignore_errors=True)


def notified_server(workdir: Path, notify: NotifyListener) -> ServerProcess:
    command = (
        f"env NOTIFY_SOCKET={shlex.quote(str(notify.path))} {shlex.quote(sys.executable)} "
        "-m obdsnap serve --root {root} --address {address}"
    )
    return ServerProcess(workdir, command)


def plant_orphans(root: Path) -> list[Path]:
    orphans = [root / "snapshots" / str(1000 + i) for i in range(ORPHANS)]
    for orphan in orphans:
        (orphan / "fs").mkdir(parents=True)
        (orphan / "fs" / "file").write_text("left behind")
    return orphans


async def test_ready_only_after_the_reconcile_then_stopping_on_sigterm(workdir: Path) -> None:
    with NotifyListener(workdir / "notify") as notify:
        server = notified_server(workdir, notify)
        orphans = plant_orphans(server.root)
        starting = asyncio.create_task(asyncio.to_thread(server.start))
        try:
            ready = await asyncio.to_thread(notify.wait_for, "READY", "1", 60.0)
            # At the moment READY=1 arrives, the reconcile is over...
            left = [orphan for orphan in orphans if orphan.exists()]
            log = server.log()
            assert left == [], f"{len(left)} orphans still there at READY=1"
            assert f"{ORPHANS} orphan directories removed" in log, log
            # ... and calls are answered.
            client = api.SnapshotsStub(Channel(path=str(server.address)))
            with pytest.raises(GRPCError) as raised:
                await client.stat(api.StatSnapshotRequest(key="absent"), timeout=10)
            assert raised.value.status == Status.NOT_FOUND
            client.channel.close()
        finally:
            await starting
        assert ready.pid == server.pid  # the main process speaks (NotifyAccess=main)
        before_ready = notify.messages[: notify.messages.index(ready)]
        assert statuses(before_ready) == [f"reconciling {server.root}"]
        assert ready.fields["STATUS"] == f"serving on {server.address}"

        server.signal(signal.SIGTERM)
        stopping = await asyncio.to_thread(notify.wait_for, "STOPPING", "1", 30.0)
        assert stopping.pid == server.pid
        assert stopping.fields["STATUS"] == "draining 0 calls"
        assert await asyncio.to_thread(server.stop) == 0
        assert all(message.pid == server.pid for message in notify.messages)
        assert [m for m in notify.messages if "READY" in m.fields] == [ready]


def test_without_notify_socket_nothing_is_sent(workdir: Path) -> None:
    """A plain start (no NOTIFY_SOCKET) serves as before; nobody is notified."""
    with NotifyListener(workdir / "notify") as notify:
        server = ServerProcess(workdir).start()
        try:
            assert server.accepts_connections()
        finally:
            assert server.stop() == 0
        assert notify.poll(0.2) == []
        assert "notify" not in server.log()


async def test_abstract_namespace_address_and_environment_taken(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = f"obdsnap-test-{os.getpid()}"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind("\0" + name)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    notifier = Notifier.from_environment()
    try:
        assert "NOTIFY_SOCKET" not in os.environ  # children cannot speak for obdsnap
        await notifier.ready("serving on somewhere")
        assert receiver.recv(4096) == b"READY=1\nSTATUS=serving on somewhere"
    finally:
        notifier.close()
        receiver.close()


async def test_a_full_queue_does_not_block_the_loop(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The manager's queue is full: the notifier retries without blocking, then gives up."""
    monkeypatch.setattr(systemd, "NOTIFY_ATTEMPTS", 10)
    monkeypatch.setattr(systemd, "NOTIFY_RETRY_S", 0.02)
    with NotifyListener(workdir / "notify") as notify:
        filler = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        filler.setblocking(False)
        queued = 0
        while True:
            try:
                filler.sendto(b"STATUS=filler", str(notify.path))
            except BlockingIOError:
                break
            queued += 1
        filler.close()
        notifier = Notifier(str(notify.path))
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.005)

        ticker = asyncio.create_task(tick())
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="obdsnap.systemd"):
            await notifier.status("dropped")
        took = time.monotonic() - started
        ticker.cancel()
        assert ticks >= 5, "the loop did not run while the notifier waited"
        assert took < 5
        assert "queue stays full" in caplog.text
        # Room again: the next message goes through, after the fillers.
        assert len(notify.poll(1.0)) == queued
        await notifier.status("delivered")
        assert statuses(notify.poll(1.0)) == ["delivered"]
        notifier.close()


async def test_a_bad_notify_socket_is_only_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="obdsnap.systemd"):
        Notifier("vsock:2:1234")
        absent = Notifier("/nonexistent/notify")
        await absent.ready("serving")  # no exception: obdsnap serves without systemd
        absent.close()
    assert "not a unix socket path" in caplog.text
    assert "cannot notify systemd at /nonexistent/notify" in caplog.text
