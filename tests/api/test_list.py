"""List: the stream itself (empty store, messages of at most 100 infos, the snapshotter field)."""

from __future__ import annotations

import asyncio

import pytest
from grpclib.const import Status

from obdsnap.genproto.containerd.services.snapshots import v1 as api

from .helpers import expect_status, list_chunks, list_infos, list_names, prepare


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
