"""Raw protocol abuse on the server's socket: broken protobuf, lying gRPC frames, HTTP/2 garbage.

After each kind of abuse the server must still serve a normal Stat through grpclib, its
RSS must stay bounded, and it must exit 0 on SIGTERM at the end (the fuzz_server fixture).
Error replies must be proper gRPC statuses.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import time
from collections.abc import Iterator

import pytest
from grpclib.client import Channel
from grpclib.const import Status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.server_process import ServerProcess

from obdsnap.genproto.containerd.services.snapshots import v1 as api

from .conftest import count
from .rawgrpc import METHODS, PREFACE, RawClient, abort, frame, unix_socket

SENTINEL = "fuzz-sentinel"
RSS_SLACK_KIB = 30 * 1024
# Codes a malformed request may get: what Go's grpc answers, plus what a decoded (if
# nonsensical) request legitimately gets from the snapshotter.
PROTOCOL_CODES = {Status.INTERNAL, Status.INVALID_ARGUMENT, Status.UNIMPLEMENTED}
SEMANTIC_CODES = {
    Status.OK,
    Status.NOT_FOUND,
    Status.ALREADY_EXISTS,
    Status.FAILED_PRECONDITION,
}
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _tag(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


async def _stat_sentinel(server: ServerProcess) -> api.Info:
    channel = Channel(path=str(server.address))
    try:
        stub = api.SnapshotsStub(channel, timeout=10)
        reply = await stub.stat(api.StatSnapshotRequest(key=SENTINEL))
        info: api.Info = reply.info
        return info
    finally:
        channel.close()


def assert_serving(server: ServerProcess) -> None:
    assert server.running(), f"obdsnap died:\n{server.log()}"
    info = asyncio.run(_stat_sentinel(server))
    assert info.name == SENTINEL and info.kind == api.Kind.COMMITTED, info


@pytest.fixture(scope="module")
def abused(fuzz_server: ServerProcess) -> Iterator[ServerProcess]:
    """The module's server holding one committed snapshot; its RSS is checked at the end."""

    async def populate() -> None:
        channel = Channel(path=str(fuzz_server.address))
        try:
            stub = api.SnapshotsStub(channel, timeout=10)
            await stub.prepare(api.PrepareSnapshotRequest(key=f"{SENTINEL}-active"))
            await stub.commit(api.CommitSnapshotRequest(name=SENTINEL, key=f"{SENTINEL}-active"))
        finally:
            channel.close()

    asyncio.run(populate())
    assert_serving(fuzz_server)
    before = fuzz_server.rss_kib()
    yield fuzz_server
    assert_serving(fuzz_server)
    after = fuzz_server.rss_kib()
    growth = after - before
    print(f"\nobdsnap RSS: {before} KiB before the abuse, {after} KiB after")
    assert growth < RSS_SLACK_KIB, f"RSS grew by {growth} KiB over the abuse"


def one_call(
    server: ServerProcess, method: str, data: bytes, *, end: bool = True
) -> tuple[Status | None, str]:
    client = RawClient(server.address)
    try:
        stream_id = client.call(method, data, end=end)
        (reply,) = client.wait(stream_id)
        assert reply.http_status == "200", reply
        assert reply.ended and reply.reset is None, reply
        code = None if reply.grpc_status is None else Status(reply.grpc_status)
        return code, reply.grpc_message
    finally:
        client.close()


def check_reply(code: Status | None, message: str) -> None:
    """A proper gRPC status, never grpclib's answer to a crashed handler."""
    assert code is not None, "no grpc-status"
    count(f"protocol replies: {code.name}")
    assert code in PROTOCOL_CODES | SEMANTIC_CODES, f"{code.name}: {message}"


# ---------------------------------------------------------------------- bodies

# A valid field 2 (``key`` of most requests, ``parent``/``name`` of others).
_VALID_FIELDS = _tag(2, 2) + _varint(3) + b"abc"
BODIES = st.one_of(
    st.binary(max_size=200),
    # truncated valid messages
    st.integers(0, len(_VALID_FIELDS) - 1).map(lambda n: _VALID_FIELDS[:n]),
    # each field with each wire type, odd payloads
    st.builds(
        lambda number, wire, payload: _tag(number, wire) + payload,
        st.integers(1, 5),
        st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7]),
        st.binary(max_size=12),
    ),
    # length-delimited fields whose length is huge
    st.builds(
        lambda number, length: _tag(number, 2) + _varint(length) + b"xyz",
        st.integers(1, 5),
        st.sampled_from([2**31 - 1, 2**32, 2**63, 1 << 28, 100]),
    ),
    # invalid UTF-8 in a string field
    st.builds(
        lambda raw: _tag(2, 2) + _varint(len(raw)) + raw, st.sampled_from([b"\xff", b"\xc3"])
    ),
    # an over-long varint
    st.just(_tag(2, 0) + b"\xff" * 11),
)
# Methods that would change the store are fuzzed too; semantic answers are allowed.
FUZZ_METHODS = st.sampled_from(METHODS)


@FUZZ
@given(method=FUZZ_METHODS, body=BODIES)
def test_malformed_bodies(abused: ServerProcess, method: str, body: bytes) -> None:
    count("protocol: malformed bodies")
    check_reply(*one_call(abused, method, frame(body)))


@FUZZ
@given(
    method=FUZZ_METHODS,
    body=st.binary(max_size=64),
    length=st.one_of(st.integers(0, 80), st.sampled_from([2**32 - 1, 2**31, 1 << 24])),
    compressed=st.booleans(),
    tail=st.binary(max_size=8),
)
def test_lying_grpc_frames(
    abused: ServerProcess, method: str, body: bytes, length: int, compressed: bool, tail: bytes
) -> None:
    """Length prefixes that lie (both ways), the compressed flag without compression, junk."""
    count("protocol: lying frames")
    check_reply(*one_call(abused, method, frame(body, compressed=compressed, length=length) + tail))


def test_frame_shorter_than_prefix_header(abused: ServerProcess) -> None:
    for method in METHODS:
        for data in (b"\x00", b"\x00\x00\x00", b"\x01\x00\x00\x00"):
            count("protocol: short frame headers")
            check_reply(*one_call(abused, method, data))
    assert_serving(abused)


@pytest.mark.parametrize(
    "path",
    [
        "/containerd.services.snapshots.v1.Snapshots/Nope",
        "/containerd.services.snapshots.v1.Snapshots/",
        "/containerd.services.snapshots.v1.Snapshot/Stat",
        "/",
        "/x/y/z",
        "/containerd.services.snapshots.v1.Snapshots/stat",
    ],
)
def test_unknown_methods(abused: ServerProcess, path: str) -> None:
    count("protocol: unknown methods")
    status, message = one_call(abused, path, frame(b""))
    assert status == Status.UNIMPLEMENTED, (status, message)
    assert_serving(abused)


# ---------------------------------------------------------------------- HTTP/2 garbage


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(garbage=st.binary(min_size=1, max_size=300), preface=st.booleans())
def test_http2_garbage(abused: ServerProcess, garbage: bytes, preface: bool) -> None:
    """Random bytes after a valid preface, or in place of one: the server drops the connection."""
    count("protocol: HTTP/2 garbage")
    sock = unix_socket(abused.address, timeout=5)
    try:
        sock.sendall((PREFACE if preface else b"") + garbage)
        sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # read until the server closes (or gives up on us)
            try:
                if not sock.recv(65536):
                    break
            except (TimeoutError, ConnectionResetError):
                break
    finally:
        sock.close()


@pytest.mark.parametrize(
    "preface",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n",
        PREFACE[:10],
        b"\x00" * 24,
        PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00" * 3 + b"\xff" * 40,
    ],
)
def test_bad_prefaces(abused: ServerProcess, preface: bytes) -> None:
    count("protocol: bad prefaces")
    sock = unix_socket(abused.address, timeout=3)
    try:
        sock.sendall(preface)
        try:
            while sock.recv(65536):
                pass
        except (TimeoutError, ConnectionResetError):
            pass
    finally:
        abort(sock)
    assert_serving(abused)


def test_half_closed_and_abandoned_streams(abused: ServerProcess) -> None:
    """Requests that never end, whose length prefix promises more than comes, then a hang-up."""
    for method in METHODS:
        count("protocol: abandoned streams")
        client = RawClient(abused.address)
        client.call(method, frame(b"\x12\x01a", length=1 << 20), end=False)
        client.call(method, frame(b"\x12\x01a"), end=False)  # complete message, no END_STREAM
        client.start(method)  # headers only
        time.sleep(0.01)
        abort(client.sock)
    assert_serving(abused)


def test_rst_stream_mid_request(abused: ServerProcess) -> None:
    """RST_STREAM halfway through requests; the same connection then serves a normal call."""
    client = RawClient(abused.address)
    try:
        for method in METHODS:
            count("protocol: RST_STREAM mid-request")
            stream_id = client.call(method, frame(b"\x12\x05abc", length=5)[:6], end=False)
            client.reset(stream_id)
        key = _tag(2, 2) + _varint(len(SENTINEL)) + SENTINEL.encode()
        (reply,) = client.wait(client.call("Stat", frame(key)))
        assert reply.grpc_status == Status.OK.value, reply
    finally:
        client.close()
    assert_serving(abused)


def test_many_concurrent_streams(abused: ServerProcess) -> None:
    """As many concurrent streams as the server allows on one connection, all answered."""
    client = RawClient(abused.address)
    try:
        client.pump()  # the server's SETTINGS
        limit = min(client.conn.remote_settings.max_concurrent_streams, 500)
        key = _tag(2, 2) + _varint(len(SENTINEL)) + SENTINEL.encode()
        streams = [client.call("Stat", frame(key)) for _ in range(limit)]
        count("protocol: concurrent streams", len(streams))
        replies = client.wait(*streams)
        assert all(r.grpc_status == Status.OK.value for r in replies), [
            r for r in replies if r.grpc_status
        ]
    finally:
        client.close()
    assert_serving(abused)


def test_silent_clients(abused: ServerProcess) -> None:
    """Clients that connect and never send (or send only the preface) do not block others."""
    silent = [unix_socket(abused.address) for _ in range(50)]
    silent += [unix_socket(abused.address) for _ in range(50)]
    for sock in silent[50:]:
        sock.sendall(PREFACE)
    count("protocol: silent clients", len(silent))
    try:
        assert_serving(abused)
    finally:
        for sock in silent:
            abort(sock)
    assert_serving(abused)


def test_abrupt_close_mid_reply(abused: ServerProcess) -> None:
    """Connections reset right after a request, before the reply is read (List streams too)."""
    for method in METHODS:
        if method in ("Cleanup", "Prepare", "View", "Commit", "Remove"):
            continue
        for _ in range(10):
            count("protocol: abrupt closes")
            client = RawClient(abused.address)
            key = _tag(2, 2) + _varint(len(SENTINEL)) + SENTINEL.encode()
            client.call(method, frame(key))
            abort(client.sock)
    assert_serving(abused)


def test_repeated_abuse_keeps_rss_bounded(abused: ServerProcess) -> None:
    """Many rounds of mixed abuse; RSS measured after a warm-up must stay nearly flat."""

    def round_of_abuse(i: int) -> None:
        client = RawClient(abused.address)
        try:
            method = METHODS[i % len(METHODS)]
            if method in ("Prepare", "View", "Commit", "Remove", "Cleanup"):
                method = "Stat"
            s1 = client.call(method, frame(os.urandom(32)))
            s2 = client.call(method, frame(b"\x12\x01a", compressed=True))
            s3 = client.call(method, frame(b"\x12", length=1 << 24), end=False)
            client.reset(s3)
            client.wait(s1, s2)
        finally:
            abort(client.sock)
        sock = unix_socket(abused.address)
        sock.sendall(PREFACE + os.urandom(64))
        abort(sock)

    for i in range(100):  # warm-up: caches, allocator arenas
        round_of_abuse(i)
    assert_serving(abused)
    before = abused.rss_kib()
    rounds = 600
    for i in range(rounds):
        round_of_abuse(i)
    count("protocol: RSS rounds", 100 + rounds)
    assert_serving(abused)
    after = abused.rss_kib()
    assert after - before < RSS_SLACK_KIB // 2, f"RSS {before} -> {after} KiB over {rounds} rounds"


# ---------------------------------------------------------------------- malformed requests


@pytest.mark.parametrize(
    "data",
    [
        frame(b"\xff\xff"),  # not protobuf
        frame(_tag(2, 2) + _varint(100) + b"abc"),  # truncated length-delimited field
        frame(_tag(2, 2) + b"\x01\xff"),  # invalid UTF-8 in a string
        frame(b"\x12\x01a", compressed=True),  # compressed flag, no grpc-encoding
        frame(b"\x12\x01a", length=100),  # length prefix longer than the body
        b"\x00\x00",  # a frame header cut short
    ],
    ids=["garbage", "truncated", "bad-utf8", "compressed", "long-prefix", "short-header"],
)
def test_malformed_requests_get_a_proper_status(abused: ServerProcess, data: bytes) -> None:
    count("protocol: malformed-request status checks")
    status, message = one_call(abused, "Stat", data)
    assert status in (Status.INTERNAL, Status.INVALID_ARGUMENT, Status.UNIMPLEMENTED), (
        status,
        message,
    )


def test_struct_sanity() -> None:
    assert frame(b"ab", length=7) == struct.pack(">?I", False, 7) + b"ab"
