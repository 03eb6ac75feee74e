"""The graceful stop, frame by frame: on SIGTERM a call already started runs to its end,
a stream that arrives later is held, never processed, and refused with the GOAWAY
that follows the last call; the GOAWAY says which is which.

HTTP/2 (RFC 9113 §6.8): GOAWAY carries the last stream id the server processed;
streams above it are refused (RST_STREAM REFUSED_STREAM), and a client may send
them again on another connection. The GOAWAY comes last, so that a client
reconnects only when the next server is about to answer. The client here reads
the frames itself: h2's client state machine stops at GOAWAY and would not read
what follows it.
"""

from __future__ import annotations

import select
import shutil
import signal
import socket
import time
from collections.abc import Iterator

import h2.events
import pytest
from fuzz.rawgrpc import RawClient, frame
from h2.errors import ErrorCodes
from hpack import Decoder
from hyperframe.frame import GoAwayFrame, HeadersFrame, RstStreamFrame
from support.server_process import ServerProcess, short_tmpdir

from obdsnap.genproto.containerd.services.snapshots import v1 as api

from .helpers import read_until_closed

NOT_FOUND = 5


@pytest.fixture
def server() -> Iterator[ServerProcess]:
    workdir = short_tmpdir()
    process = ServerProcess(workdir).start()
    try:
        yield process
    finally:
        process.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def round_trip(client: RawClient) -> None:
    """A PING answered: the server has processed every frame sent before it."""
    client.conn.ping(b"obdsnap!")
    client.flush()
    while True:
        events = client.conn.receive_data(client.sock.recv(65536))
        client.flush()
        if any(isinstance(event, h2.events.PingAckReceived) for event in events):
            return


def wait_for_drain(server: ServerProcess, within: float = 15.0) -> None:
    """Until obdsnap has logged that it is finishing its calls in flight."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if "shutting down: finishing" in server.log():
            return
        time.sleep(0.02)
    raise AssertionError(f"no drain after SIGTERM:\n{server.log()}")


def nothing_to_read(sock: socket.socket, within: float) -> bool:
    """No frame arrives within ``within`` seconds."""
    readable, _, _ = select.select([sock], [], [], within)
    return not readable


def stat_request(key: str) -> bytes:
    return frame(bytes(api.StatSnapshotRequest(key=key)))


def test_sigterm_finishes_the_started_call_and_refuses_a_later_stream(
    server: ServerProcess,
) -> None:
    client = RawClient(server.address, timeout=15)
    round_trip(client)  # the server's SETTINGS are in
    started = client.start("Stat")  # its request body comes only after the SIGTERM
    round_trip(client)  # the server has accepted the stream: the call has started
    server.signal(signal.SIGTERM)
    wait_for_drain(server)
    late = client.call("Stat", stat_request("late"))
    # Held: no answer, no GOAWAY while the started call has not ended.
    assert nothing_to_read(client.sock, within=0.5)
    client.send(started, stat_request("started"), end=True)
    frames = read_until_closed(client.sock)
    assert server.stop() == 0, server.log()

    (goaway,) = [f for f in frames if isinstance(f, GoAwayFrame)]
    assert (goaway.last_stream_id, goaway.error_code) == (started, ErrorCodes.NO_ERROR)
    resets = [(f.stream_id, f.error_code) for f in frames if isinstance(f, RstStreamFrame)]
    # Refused first; h2 answers the late stream's DATA with STREAM_CLOSED afterwards.
    assert resets[0] == (late, ErrorCodes.REFUSED_STREAM), resets
    assert {stream for stream, _ in resets} == {late}
    decoder = Decoder()
    answered: dict[int, dict[str, str]] = {}
    for f in frames:
        if isinstance(f, HeadersFrame):
            headers = {
                (k.decode() if isinstance(k, bytes) else k): (
                    v.decode() if isinstance(v, bytes) else v
                )
                for k, v in decoder.decode(f.data)
            }
            answered.setdefault(f.stream_id, {}).update(headers)
    # The call that had started got its real answer: NotFound for a key never made.
    assert set(answered) == {started}
    assert answered[started].get("grpc-status") == str(NOT_FOUND), answered
    assert "started" in answered[started].get("grpc-message", ""), answered


def test_a_held_stream_the_client_gives_up_is_released(server: ServerProcess) -> None:
    client = RawClient(server.address, timeout=15)
    round_trip(client)
    started = client.start("Stat")
    round_trip(client)
    server.signal(signal.SIGTERM)
    wait_for_drain(server)
    given_up = client.start("Stat")
    late = client.call("Stat", stat_request("late"))
    client.reset(given_up)
    client.send(started, stat_request("started"), end=True)
    frames = read_until_closed(client.sock)
    assert server.stop() == 0, server.log()

    (goaway,) = [f for f in frames if isinstance(f, GoAwayFrame)]
    assert goaway.last_stream_id == started
    refused = {f.stream_id for f in frames if isinstance(f, RstStreamFrame)}
    assert refused == {late}  # the stream the client reset is not refused again
    assert "Traceback" not in server.log()


def test_an_idle_connection_gets_a_goaway_too(server: ServerProcess) -> None:
    client = RawClient(server.address, timeout=15)
    round_trip(client)
    server.signal(signal.SIGTERM)
    frames = read_until_closed(client.sock)  # the server closes it once the GOAWAY is out
    assert server.stop() == 0, server.log()
    (goaway,) = [f for f in frames if isinstance(f, GoAwayFrame)]
    assert (goaway.last_stream_id, goaway.error_code) == (0, ErrorCodes.NO_ERROR)
