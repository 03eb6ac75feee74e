"""List: the stream itself (empty store, messages of at most 100 infos, the snapshotter field)."""

from __future__ import annotations

import asyncio

import pytest
from grpclib.client import Channel
from grpclib.config import Configuration
from grpclib.const import Status
from support.server_process import ServerProcess
from support.snapshots import expect_status, list_chunks, list_infos, list_names, prepare

from obdsnap.genproto.containerd.services.snapshots import v1 as api


async def test_empty_store_is_an_empty_stream(client: api.SnapshotsStub) -> None:
    assert await list_chunks(client) == []
    assert await list_chunks(client, ["kind==active"]) == []
    assert await list_chunks(client, ["labels.a==b", "name~=x"]) == []


async def test_malformed_filter_on_an_empty_store(client: api.SnapshotsStub) -> None:
    await expect_status(list_chunks(client, ["name=="]), Status.INVALID_ARGUMENT)


async def test_no_match_is_an_empty_stream(client: api.SnapshotsStub) -> None:
    await prepare(client, "a")
    assert await list_chunks(client, ["name==b"]) == []


@pytest.mark.parametrize("snapshotter", ["", "overlaybd", "xyz", "io.containerd.snapshotter.v1"])
async def test_any_snapshotter_name_is_accepted(
    client: api.SnapshotsStub, snapshotter: str
) -> None:
    await prepare(client, "a")
    infos = await list_infos(client, snapshotter=snapshotter)
    assert [info.name for info in infos] == ["a"]
    assert await list_chunks(client, ["name==a"], snapshotter=snapshotter) != []


async def test_results_come_in_messages_of_at_most_100(client: api.SnapshotsStub) -> None:
    keys = [f"snapshot-{i:03}" for i in range(250)]
    await asyncio.gather(
        *(prepare(client, key, labels={"even": str(i % 2 == 0)}) for i, key in enumerate(keys))
    )

    chunks = await list_chunks(client)
    assert [len(chunk) for chunk in chunks] == [100, 100, 50]
    names = [info.name for chunk in chunks for info in chunk]
    assert sorted(names) == keys  # each one exactly once

    # Chunking applies to what the filters keep.
    chunks = await list_chunks(client, ["labels.even==True"])
    assert [len(chunk) for chunk in chunks] == [100, 25]
    assert {info.labels["even"] for chunk in chunks for info in chunk} == {"True"}
    chunks = await list_chunks(client, ["name~=^snapshot-0[0-9][0-9]$"])
    assert [len(chunk) for chunk in chunks] == [100]
    chunks = await list_chunks(client, ["name~=^snapshot-00"])
    assert [len(chunk) for chunk in chunks] == [10]


async def test_list_follows_creates_and_removes(client: api.SnapshotsStub) -> None:
    await prepare(client, "a")
    await prepare(client, "b")
    assert await list_names(client) == {"a", "b"}
    await client.remove(api.RemoveSnapshotRequest(key="a"))
    assert await list_names(client) == {"b"}
    await client.commit(api.CommitSnapshotRequest(name="c", key="b"))
    assert await list_names(client) == {"c"}


async def test_slow_list_readers_do_not_pin_memory(
    client: api.SnapshotsStub, server: ServerProcess
) -> None:
    """Streams whose clients stop reading hold a flow-control window each, not the store.

    The store encodes to about 6 MB per List; 40 stalled streams that each held all
    of it would grow the server by hundreds of MB.
    """
    labels = {f"label-{i}": "v" * 500 for i in range(5)}
    count = 2000
    for start in range(0, count, 200):
        await asyncio.gather(
            *(prepare(client, f"snap-{i:05}", labels=labels) for i in range(start, start + 200))
        )
    before = server.rss_kib()
    # A connection each: on a shared one, the stalled streams would use up the
    # connection's flow-control window and stall the client's other calls too.
    # HTTP/2's default 64 KiB windows: a client takes no more than that unread.
    small_windows = Configuration(
        http2_connection_window_size=65535, http2_stream_window_size=65535
    )
    channels = [Channel(path=str(server.address), config=small_windows) for _ in range(40)]
    stalled = []
    for channel in channels:
        stream = aiter(api.SnapshotsStub(channel).list(api.ListSnapshotsRequest()))
        await anext(stream)  # one message, then this client stops reading
        stalled.append(stream)
    await asyncio.sleep(1.0)
    grown_mib = (server.rss_kib() - before) / 1024
    try:
        assert grown_mib < 40, f"40 stalled List streams grew obdsnap by {grown_mib:.0f} MiB"
        # Meanwhile the server serves everyone else, List included.
        assert len(await list_infos(client)) == count
    finally:
        for stream in stalled:
            await stream.aclose()  # type: ignore[attr-defined]
        for channel in channels:
            channel.close()
    assert len(await list_infos(client)) == count
