"""Many calls at once: group-committed writes must still give each call its own exact answer."""

from __future__ import annotations

import asyncio
import random
from typing import Any

from betterproto.lib.google.protobuf import FieldMask
from grpclib import GRPCError
from grpclib.const import Status
from support.server_process import ServerProcess
from support.snapshots import (
    commit,
    commit_layer,
    dir_entries,
    expect_status,
    fs_dir,
    is_dir,
    list_names,
    numeric_ids,
    own_id,
    prepare,
    settle,
    stat,
    store_state,
)

from obdsnap.genproto.containerd.services.snapshots import v1 as api


def outcome(result: object) -> Status:
    if isinstance(result, GRPCError):
        return result.status
    if isinstance(result, BaseException):
        raise result
    return Status.OK


async def test_64_concurrent_prepares(client: api.SnapshotsStub, server: ServerProcess) -> None:
    keys = [f"container-{i}" for i in range(64)]
    results = await asyncio.gather(*(prepare(client, key, labels={"i": key}) for key in keys))
    ids = [own_id(mounts, server.root) for mounts in results]
    assert len(set(ids)) == 64
    assert numeric_ids(server.root) == set(ids)
    assert dir_entries(server.root) == {str(i) for i in ids}  # no new-* left over
    assert await list_names(client) == set(keys)
    for key, mounts in zip(keys, results, strict=True):
        assert (await client.mounts(api.MountsRequest(key=key))).mounts == mounts
        assert (await stat(client, key)).labels == {"i": key}


async def test_64_concurrent_prepares_on_one_parent(
    client: api.SnapshotsStub, server: ServerProcess
) -> None:
    base = await commit_layer(client, server.root, "base")
    results = await asyncio.gather(*(prepare(client, f"c{i}", "base") for i in range(64)))
    ids = {own_id(mounts, server.root) for mounts in results}
    assert len(ids) == 64 and base not in ids
    assert all(
        mounts[0].options[-1] == f"lowerdir={fs_dir(server.root, base)}" for mounts in results
    )


async def test_16_concurrent_prepares_of_one_key(
    client: api.SnapshotsStub, server: ServerProcess
) -> None:
    results = await asyncio.gather(
        *(prepare(client, "same", labels={"n": str(i)}) for i in range(16)),
        return_exceptions=True,
    )
    statuses = [outcome(result) for result in results]
    assert statuses.count(Status.OK) == 1, statuses
    assert statuses.count(Status.ALREADY_EXISTS) == 15, statuses
    winner = statuses.index(Status.OK)
    assert (await stat(client, "same")).labels == {"n": str(winner)}
    assert await list_names(client) == {"same"}
    mounts = results[winner]
    assert isinstance(mounts, list)
    assert dir_entries(server.root) == {str(own_id(mounts, server.root))}


async def test_concurrent_commits_of_one_key(
    client: api.SnapshotsStub, server: ServerProcess
) -> None:
    await prepare(client, "work")
    results = await asyncio.gather(
        *(commit(client, f"name-{i}", "work") for i in range(8)), return_exceptions=True
    )
    statuses = [outcome(result) for result in results]
    assert statuses.count(Status.OK) == 1, statuses
    assert statuses.count(Status.NOT_FOUND) == 7, statuses
    assert await list_names(client) == {f"name-{statuses.index(Status.OK)}"}


async def test_concurrent_commits_onto_one_name(client: api.SnapshotsStub) -> None:
    for i in range(8):
        await prepare(client, f"work-{i}")
    results = await asyncio.gather(
        *(commit(client, "layer", f"work-{i}") for i in range(8)), return_exceptions=True
    )
    statuses = [outcome(result) for result in results]
    assert statuses.count(Status.OK) == 1, statuses
    assert statuses.count(Status.ALREADY_EXISTS) == 7, statuses
    winner = statuses.index(Status.OK)
    assert await list_names(client) == {"layer"} | {f"work-{i}" for i in range(8) if i != winner}


async def test_concurrent_removes_of_one_key(client: api.SnapshotsStub) -> None:
    await prepare(client, "a")
    results = await asyncio.gather(
        *(client.remove(api.RemoveSnapshotRequest(key="a")) for _ in range(8)),
        return_exceptions=True,
    )
    statuses = [outcome(result) for result in results]
    assert statuses.count(Status.OK) == 1, statuses
    assert statuses.count(Status.NOT_FOUND) == 7, statuses


async def test_concurrent_label_updates_all_land(client: api.SnapshotsStub) -> None:
    await prepare(client, "a", labels={"keep": "1"})
    await asyncio.gather(
        *(
            client.update(
                api.UpdateSnapshotRequest(
                    info=api.Info(name="a", labels={f"k{i}": str(i)}),
                    update_mask=FieldMask(paths=[f"labels.k{i}"]),
                )
            )
            for i in range(32)
        )
    )
    assert (await stat(client, "a")).labels == {"keep": "1"} | {f"k{i}": str(i) for i in range(32)}


async def test_remove_parent_racing_with_prepares_on_it(
    client: api.SnapshotsStub, server: ServerProcess
) -> None:
    await commit_layer(client, server.root, "p")
    calls: list[Any] = [prepare(client, f"c{i}", "p") for i in range(20)]
    calls.insert(10, client.remove(api.RemoveSnapshotRequest(key="p")))
    results = await asyncio.gather(*calls, return_exceptions=True)
    statuses = [outcome(result) for result in results]
    removed = statuses.pop(10) == Status.OK
    state = await store_state(client)
    if removed:
        assert "p" not in state
        assert set(statuses) <= {Status.OK, Status.NOT_FOUND}
    else:
        assert statuses == [Status.OK] * 20
    # Never a child without its parent.
    for name, snap in state.items():
        assert snap.parent == "" or snap.parent in state, name
    for i, status in enumerate(statuses):
        assert (f"c{i}" in state) == (status == Status.OK)


async def test_cleanup_racing_with_prepares(client: api.SnapshotsStub) -> None:
    rng = random.Random(1234)
    for round_ in range(30):
        keys = [f"r{round_}-{i}" for i in range(100)]
        calls: list[Any] = [prepare(client, key) for key in keys]
        calls += [client.cleanup(api.CleanupRequest()) for _ in range(20)]
        rng.shuffle(calls)
        results = await asyncio.gather(*calls, return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        assert failures == [], failures[:3]
        for key in keys:
            mounts = (await client.mounts(api.MountsRequest(key=key))).mounts
            assert is_dir(mounts[0].source), f"{key}: {mounts[0].source} is gone"


async def test_prepares_cut_short_by_deadlines_leave_a_consistent_store(
    client: api.SnapshotsStub, server: ServerProcess
) -> None:
    keys = [f"hurried-{i}" for i in range(100)]
    results = await asyncio.gather(
        *(client.prepare(api.PrepareSnapshotRequest(key=key), timeout=0.002) for key in keys),
        return_exceptions=True,
    )
    acknowledged = {key for key, result in zip(keys, results, strict=True) if outcome_ok(result)}
    # Creates the clients gave up on either finish or leave nothing behind.
    names = await settle(client, server.root)
    assert acknowledged <= names
    for key in names:
        mounts = (await client.mounts(api.MountsRequest(key=key))).mounts
        assert is_dir(mounts[0].source), key
        await expect_status(prepare(client, key), Status.ALREADY_EXISTS)
    # The others can be created now (or were, late, by their abandoned call).
    late = await asyncio.gather(
        *(prepare(client, key) for key in set(keys) - names), return_exceptions=True
    )
    assert {outcome(result) for result in late} <= {Status.OK, Status.ALREADY_EXISTS}
    assert await settle(client, server.root, quiet=0.1) == set(keys)


def outcome_ok(result: object) -> bool:
    """True for a reply; False for a deadline the client ran into."""
    if isinstance(result, TimeoutError | asyncio.TimeoutError):
        return False
    if isinstance(result, GRPCError):
        assert result.status in (Status.DEADLINE_EXCEEDED, Status.CANCELLED), result
        return False
    if isinstance(result, BaseException):
        raise result
    return True
