"""The server process: signals, its socket, the boot config and the metrics exporter."""

from __future__ import annotations

import asyncio
import grp
import json
import shlex
import signal
import socket
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from grpclib.client import Channel
from grpclib.config import Configuration
from grpclib.const import Status
from support.server_process import ServerProcess
from support.snapshots import (
    connect,
    expect_status,
    list_chunks,
    list_infos,
    prepare,
    start_server,
    stat,
    wait_until,
)

from obdsnap.genproto.containerd.services.snapshots import v1 as api

SERVE = f"{shlex.quote(sys.executable)} -m obdsnap serve"
WITH_CONFIG = f"{SERVE} --config {{config}} --root {{root}} --address {{address}}"


def with_config(workdir: Path, config: dict[str, Any]) -> ServerProcess:
    return ServerProcess(workdir, WITH_CONFIG, config=json.dumps(config), start_timeout=10)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# ---------------------------------------------------------------------- signals and socket


async def test_sigterm_exits_0_and_removes_the_socket(tmp_path: Path) -> None:
    server = await start_server(ServerProcess(tmp_path))
    async with connect(server) as client:
        await prepare(client, "a")
    server.signal(signal.SIGTERM)
    assert await wait_until(lambda: not server.running(), within=15)
    assert server.stop() == 0
    assert not server.address.exists()
    assert "Traceback" not in server.log()


async def test_sigint_also_stops_cleanly(tmp_path: Path) -> None:
    server = await start_server(ServerProcess(tmp_path))
    server.signal(signal.SIGINT)
    assert await wait_until(lambda: not server.running(), within=15)
    assert server.stop() == 0
    assert not server.address.exists()


async def test_a_stale_socket_is_replaced(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(server.address))
    stale.close()  # the file stays, nobody listens
    assert server.address.is_socket()
    await start_server(server)
    try:
        async with connect(server) as client:
            await prepare(client, "a")
            assert (await stat(client, "a")).name == "a"
    finally:
        assert server.stop() == 0
    assert not server.address.exists()


async def test_a_regular_file_at_the_socket_path_stops_start_up(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, start_timeout=10)
    server.address.write_text("precious")
    with pytest.raises(RuntimeError) as raised:
        server.start()
    assert not server.running()
    assert "not a socket" in str(raised.value)
    assert str(server.address) in server.log()
    assert "Traceback" not in server.log()
    assert server.address.read_text() == "precious"


async def test_a_second_instance_on_the_same_root_refuses_to_start(tmp_path: Path) -> None:
    first = await start_server(ServerProcess(tmp_path / "first"))
    try:
        second = ServerProcess(tmp_path / "second", start_timeout=10)
        second.root = first.root
        with pytest.raises(RuntimeError) as raised:
            second.start()
        assert f"in use by obdsnap pid {first.pid}" in str(raised.value)
        assert "Traceback" not in second.log()
        async with connect(first) as client:
            await prepare(client, "still-served")
    finally:
        assert first.stop() == 0


async def test_socket_group_makes_the_socket_0660_for_that_group(tmp_path: Path) -> None:
    server = ServerProcess.with_config(tmp_path, {"socketGroup": "daemon"})
    await start_server(server)
    try:
        mode = server.address.stat()
        assert (mode.st_mode & 0o777, mode.st_gid) == (0o660, grp.getgrnam("daemon").gr_gid)
        async with connect(server) as client:
            await prepare(client, "served")
    finally:
        assert server.stop() == 0


async def test_calls_beyond_the_request_cap_wait_their_turn(tmp_path: Path) -> None:
    """maxConcurrentRequests 1: a List whose client stopped reading holds the one slot."""
    server = ServerProcess.with_config(tmp_path, {"maxConcurrentRequests": 1})
    await start_server(server)
    labels = {f"label-{i}": "v" * 500 for i in range(5)}  # a List message is ~250 kB
    try:
        async with connect(server) as client:
            await asyncio.gather(*(prepare(client, f"k{i}", labels=labels) for i in range(300)))
            # HTTP/2's default 64 KiB windows: the client takes no more than that unread.
            small_windows = Configuration(
                http2_connection_window_size=65535, http2_stream_window_size=65535
            )
            channel = Channel(path=str(server.address), config=small_windows)
            stalled = aiter(api.SnapshotsStub(channel).list(api.ListSnapshotsRequest()))
            await anext(stalled)  # then it stops reading: the server blocks on flow control
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(stat(client, "k0"), 1.0)
            await stalled.aclose()  # type: ignore[attr-defined]
            channel.close()
            # The slot is free again; the queued calls that gave up left no trace.
            assert (await asyncio.wait_for(stat(client, "k0"), 10.0)).name == "k0"
            assert len(await list_infos(client)) == 300
    finally:
        assert server.stop() == 0


async def test_socket_directory_is_created(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path)
    server.address = tmp_path / "run" / "deeper" / "obdsnap.sock"
    await start_server(server)
    try:
        assert server.address.is_socket()
        assert server.address.stat().st_mode & 0o777 == 0o600
        assert server.address.parent.stat().st_mode & 0o777 == 0o700
    finally:
        assert server.stop() == 0


async def test_sigusr1_dumps_stacks_and_keeps_serving(tmp_path: Path) -> None:
    server = await start_server(ServerProcess(tmp_path))
    try:
        async with connect(server) as client:
            await prepare(client, "a")
            server.signal(signal.SIGUSR1)
            assert await wait_until(lambda: "stack dump" in server.log(), within=10), server.log()
            assert await wait_until(lambda: "File " in server.log(), within=10)
            assert server.running()
            assert (await stat(client, "a")).name == "a"
            await prepare(client, "b")
            server.signal(signal.SIGUSR1)
            assert await wait_until(lambda: server.log().count("stack dump") >= 2, within=10)
            assert (await stat(client, "b")).name == "b"
    finally:
        assert server.stop() == 0


async def test_sigpipe_is_ignored(tmp_path: Path) -> None:
    server = await start_server(ServerProcess(tmp_path))
    try:
        server.signal(signal.SIGPIPE)
        await asyncio.sleep(0.2)
        assert server.running()
        async with connect(server) as client:
            await prepare(client, "a")
    finally:
        assert server.stop() == 0


# ---------------------------------------------------------------------- boot config


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"rwMode": "rw"}, "rwMode"),
        ({"verbose": "loud"}, "verbose"),
        ({"autoRemoveDev": "yes"}, "autoRemoveDev"),
        ({"writableLayerType": "dense"}, "writableLayerType"),
        ({"exporterConfig": {"enable": True, "port": "9863"}}, "exporterConfig.port"),
    ],
    ids=["rwMode", "verbose", "autoRemoveDev", "writableLayerType", "exporterConfig.port"],
)
async def test_bad_config_value_stops_start_up_with_one_line(
    tmp_path: Path, config: dict[str, Any], key: str
) -> None:
    server = with_config(tmp_path, config)
    with pytest.raises(RuntimeError) as raised:
        server.start()
    assert str(raised.value).startswith("obdsnap exited with 1")
    lines = [line for line in server.log().splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert key in lines[0]
    assert not server.address.exists()


async def test_unknown_config_keys_are_only_warnings(tmp_path: Path) -> None:
    config = {"someLaterKey": 1, "anotherFutureKey": [], "rwMode": "overlayfs"}
    server = await start_server(with_config(tmp_path, config))
    try:
        log = server.log()
        for key in ("someLaterKey", "anotherFutureKey"):
            (line,) = [line for line in log.splitlines() if key in line]
            assert "WARN" in line
        async with connect(server) as client:
            await prepare(client, "a")
    finally:
        assert server.stop() == 0


async def test_config_root_and_address_are_used(tmp_path: Path) -> None:
    root = tmp_path / "config-root"
    address = tmp_path / "config.sock"
    config = json.dumps({"root": str(root), "address": str(address)})
    server = ServerProcess(tmp_path, f"{SERVE} --config {{config}}", config=config)
    server.address = address
    await start_server(server)
    try:
        async with connect(server) as client:
            await prepare(client, "a")
        assert (root / "snapshots" / "1" / "fs").is_dir()
    finally:
        assert server.stop() == 0


# ---------------------------------------------------------------------- metrics


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as reply:
        body: bytes = reply.read()
        return body.decode()


async def test_metrics_exporter(tmp_path: Path) -> None:
    port = free_port()
    server = await start_server(
        with_config(tmp_path, {"exporterConfig": {"enable": True, "port": port}})
    )
    url = f"http://127.0.0.1:{port}/metrics"
    loop = asyncio.get_running_loop()
    try:
        async with connect(server) as client:
            await prepare(client, "a")
            await stat(client, "a")
            await list_chunks(client)
            await expect_status(client.stat(api.StatSnapshotRequest(key="nope")), Status.NOT_FOUND)
            text = await loop.run_in_executor(None, fetch, url)
            # Bound to the loopback only, unless exporterConfig.host says otherwise.
            assert tcp_listeners(port) == ["0100007F"]
    finally:
        assert server.stop() == 0
    lines = text.splitlines()
    assert "is_alive 1" in lines
    stat_buckets = [
        line for line in lines if line.startswith('grpc_latency_seconds_bucket{function="Stat"')
    ]
    assert len(stat_buckets) == 21, stat_buckets  # 20 exponential buckets and +Inf
    assert 'le="0.0001"' in stat_buckets[0]
    calls = series(lines, "grpc_latency_seconds_count")
    errors = series(lines, "grpc_error_count")
    # List is reported as Walk.
    assert (calls["Stat"], calls["Prepare"], calls["Walk"]) == (2, 1, 1)
    assert errors == {"Stat": 1}


def tcp_listeners(port: int) -> list[str]:
    """Local addresses (kernel hex) listening on ``port``, IPv4 and IPv6."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, _, hex_port = fields[1].partition(":")
            if int(hex_port, 16) == port and fields[3] == "0A":  # 0A: LISTEN
                found.append(address)
    return found


def series(lines: list[str], name: str) -> dict[str, float]:
    """The values of ``name{function="X"} value`` lines, by function."""
    values: dict[str, float] = {}
    prefix = name + '{function="'
    for line in lines:
        if line.startswith(prefix):
            labels, _, value = line.partition("} ")
            values[labels[len(prefix) : -1]] = float(value)
    return values


async def test_metrics_uri_prefix(tmp_path: Path) -> None:
    port = free_port()
    config = {"exporterConfig": {"enable": True, "port": port, "uriPrefix": "/custom"}}
    server = await start_server(with_config(tmp_path, config))
    loop = asyncio.get_running_loop()
    try:
        text = await loop.run_in_executor(None, fetch, f"http://127.0.0.1:{port}/custom")
        assert "is_alive 1" in text.splitlines()
    finally:
        assert server.stop() == 0
