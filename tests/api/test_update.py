"""Labels: stored on Prepare/View/Commit, changed by Update; timestamps; the size limit."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any

import pytest
from betterproto.lib.google.protobuf import FieldMask
from grpclib.const import Status
from support.server_process import ServerProcess
from support.snapshots import (
    assert_recent_utc,
    commit,
    commit_layer,
    expect_status,
    prepare,
    stat,
    utc_now,
    view,
)

from obdsnap.genproto.containerd.services.snapshots import v1 as api

GC_ROOT = "containerd.io/gc.root"


async def update(
    client: api.SnapshotsStub,
    name: str,
    labels: Mapping[str, str],
    paths: Sequence[str] | None = None,
    *,
    parent: str = "",
    kind: int = 0,
) -> api.Info:
    request = api.UpdateSnapshotRequest(
        info=api.Info(name=name, parent=parent, kind=api.Kind(kind), labels=dict(labels))
    )
    if paths is not None:
        request.update_mask = FieldMask(paths=list(paths))
    reply = await client.update(request)
    info: api.Info = reply.info
    # What Update answers is what is stored.
    stored = await stat(client, name)
    assert (stored.labels, stored.updated_at) == (info.labels, info.updated_at)
    return info


async def labelled(client: api.SnapshotsStub, labels: Mapping[str, str]) -> str:
    await prepare(client, "s", labels=labels)
    return "s"


# ---------------------------------------------------------------------- labels at creation


async def test_labels_are_stored_on_prepare_and_view(
    client: api.SnapshotsStub, server: ServerProcess
) -> None:
    await prepare(client, "a", labels={"a": "1", GC_ROOT: "x"})
    await commit_layer(client, server.root, "base")
    await view(client, "v", "base", {"b": "2"})
    assert (await stat(client, "a")).labels == {"a": "1", GC_ROOT: "x"}
    assert (await stat(client, "v")).labels == {"b": "2"}


async def test_empty_label_values_are_never_stored(client: api.SnapshotsStub) -> None:
    await prepare(client, "a", labels={"empty": "", "full": "1"})
    assert (await stat(client, "a")).labels == {"full": "1"}
    await commit(client, "c", "a", {"empty": "", "other": "2"})
    assert (await stat(client, "c")).labels == {"other": "2"}
    await view(client, "v", "c", {"only-empty": ""})
    assert (await stat(client, "v")).labels == {}


async def test_commit_labels_replace_those_of_the_active(client: api.SnapshotsStub) -> None:
    await prepare(client, "a", labels={"from-active": "1", "shared": "active"})
    await commit(client, "c", "a", {"shared": "commit", "from-commit": "2"})
    assert (await stat(client, "c")).labels == {"shared": "commit", "from-commit": "2"}
    await prepare(client, "b", labels={"from-active": "1"})
    await commit(client, "d", "b")
    assert (await stat(client, "d")).labels == {}


@pytest.mark.parametrize(
    "size",
    [4096, 4097],
    ids=["4096 bytes accepted", "4097 bytes rejected"],
)
@pytest.mark.parametrize("rpc", ["prepare", "view", "commit", "update"])
async def test_label_size_limit(
    client: api.SnapshotsStub, server: ServerProcess, rpc: str, size: int
) -> None:
    # Bytes, not characters: "é" is two bytes in UTF-8.
    key = "containerd.io/snapshot/some-key"
    value = "é" * ((size - len(key)) // 2) + "v" * ((size - len(key)) % 2)
    labels = {key: value, "small": "ok"}
    assert len((key + value).encode()) == size
    await commit_layer(client, server.root, "base")
    await prepare(client, "active")
    call: Coroutine[Any, Any, object]
    if rpc == "prepare":
        call = prepare(client, "new", "base", labels)
    elif rpc == "view":
        call = view(client, "new", "base", labels)
    elif rpc == "commit":
        call = commit(client, "new", "active", labels)
    else:
        call = update(client, "active", labels)
    if size > 4096:
        await expect_status(call, Status.INVALID_ARGUMENT)
        await expect_status(client.stat(api.StatSnapshotRequest(key="new")), Status.NOT_FOUND)
        assert (await stat(client, "active")).labels == {}
    else:
        await call
        target = "active" if rpc == "update" else "new"
        assert (await stat(client, target)).labels == labels


# ---------------------------------------------------------------------- update


async def test_update_without_paths_replaces_all_labels(client: api.SnapshotsStub) -> None:
    key = await labelled(client, {"a": "1", "b": "2"})
    info = await update(client, key, {"b": "3", "c": "4"})
    assert info.labels == {"b": "3", "c": "4"}
    info = await update(client, key, {})
    assert info.labels == {}


async def test_update_path_labels_replaces_all_labels(client: api.SnapshotsStub) -> None:
    key = await labelled(client, {"a": "1", "b": "2"})
    info = await update(client, key, {"c": "3"}, ["labels"])
    assert info.labels == {"c": "3"}


async def test_update_path_label_sets_one_label(client: api.SnapshotsStub) -> None:
    key = await labelled(client, {"a": "1", "b": "2"})
    # Labels of the request that no path names are ignored.
    info = await update(client, key, {"a": "changed", "b": "ignored", "z": "ignored"}, ["labels.a"])
    assert info.labels == {"a": "changed", "b": "2"}
    info = await update(client, key, {"new": "x"}, ["labels.new"])
    assert info.labels == {"a": "changed", "b": "2", "new": "x"}


async def test_update_path_label_absent_from_info_deletes_it(client: api.SnapshotsStub) -> None:
    key = await labelled(client, {"a": "1", "b": "2"})
    info = await update(client, key, {}, ["labels.a"])
    assert info.labels == {"b": "2"}
    # Deleting a label that is not there is fine.
    info = await update(client, key, {}, ["labels.never-there"])
    assert info.labels == {"b": "2"}


async def test_update_path_label_with_empty_value_deletes_it(client: api.SnapshotsStub) -> None:
    key = await labelled(client, {"a": "1", "b": "2"})
    info = await update(client, key, {"a": ""}, ["labels.a"])
    assert info.labels == {"b": "2"}
    info = await update(client, key, {"b": "", "c": "3"})
    assert info.labels == {"c": "3"}


async def test_update_label_keys_with_dots_and_slashes(client: api.SnapshotsStub) -> None:
    key = await labelled(client, {"a": "1"})
    info = await update(client, key, {GC_ROOT: "2024-01-01"}, [f"labels.{GC_ROOT}"])
    assert info.labels == {"a": "1", GC_ROOT: "2024-01-01"}
    info = await update(client, key, {}, [f"labels.{GC_ROOT}"])
    assert info.labels == {"a": "1"}


async def test_update_several_paths_at_once(client: api.SnapshotsStub) -> None:
    key = await labelled(client, {"a": "1", "b": "2", "c": "3"})
    info = await update(client, key, {"a": "new", "d": "4"}, ["labels.a", "labels.b", "labels.d"])
    assert info.labels == {"a": "new", "c": "3", "d": "4"}


async def test_update_with_a_bad_path_changes_nothing(client: api.SnapshotsStub) -> None:
    key = await labelled(client, {"a": "1"})
    before = await stat(client, key)
    for paths in (["name"], ["parent"], ["kind"], ["labels.a", "kind"], ["labelsx"]):
        await expect_status(update(client, key, {"a": "2"}, paths), Status.INVALID_ARGUMENT)
    after = await stat(client, key)
    assert (after.labels, after.updated_at) == ({"a": "1"}, before.updated_at)


async def test_update_ignores_other_info_fields(
    client: api.SnapshotsStub, server: ServerProcess
) -> None:
    await commit_layer(client, server.root, "base")
    await prepare(client, "s", "base", {"a": "1"})
    info = await update(client, "s", {"b": "2"}, parent="elsewhere", kind=api.Kind.VIEW)
    assert (info.name, info.parent, info.kind) == ("s", "base", api.Kind.ACTIVE)
    assert info.labels == {"b": "2"}


@pytest.mark.parametrize("kind", ["view", "committed"])
async def test_update_views_and_committed_snapshots(
    client: api.SnapshotsStub, server: ServerProcess, kind: str
) -> None:
    await commit_layer(client, server.root, "base", labels={"a": "1"})
    key = "base"
    if kind == "view":
        await view(client, "v", "base", {"a": "1"})
        key = "v"
    info = await update(client, key, {"b": "2"}, ["labels.b"])
    assert info.labels == {"a": "1", "b": "2"}
    expected = api.Kind.VIEW if kind == "view" else api.Kind.COMMITTED
    assert info.kind == expected


async def test_update_refreshes_updated_at_only(client: api.SnapshotsStub) -> None:
    key = await labelled(client, {"a": "1"})
    created = await stat(client, key)
    await asyncio.sleep(0.01)
    before = utc_now()
    info = await update(client, key, {"a": "2"})
    after = utc_now()
    assert info.created_at == created.created_at
    assert info.updated_at > created.updated_at
    assert_recent_utc(info.updated_at, before, after)
    assert before <= info.updated_at
    await asyncio.sleep(0.01)
    again = await update(client, key, {"a": "3"}, ["labels.a"])
    assert again.created_at == created.created_at
    assert again.updated_at > info.updated_at
