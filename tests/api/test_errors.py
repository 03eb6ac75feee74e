"""Every error of the status-code table, and that no error costs the server or the store anything.

All cases share one server (see ``populated``): after each error the server
must still answer and List must show exactly the snapshots it showed before.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from betterproto.lib.google.protobuf import FieldMask
from grpclib.const import Status
from support.snapshots import dir_entries, expect_status, list_infos, stat, store_state

from obdsnap.genproto.containerd.services.snapshots import v1 as api

from .conftest import Populated

pytestmark = pytest.mark.asyncio(loop_scope="module")

Call = Callable[[api.SnapshotsStub], Coroutine[Any, Any, Any]]
BIG = "v" * 4096  # with any key, more than containerd's 4096 bytes per label


def _prepare(key: str, parent: str = "", labels: dict[str, str] | None = None) -> Call:
    request = api.PrepareSnapshotRequest(key=key, parent=parent, labels=labels or {})
    return lambda client: client.prepare(request)


def _view(key: str, parent: str = "", labels: dict[str, str] | None = None) -> Call:
    request = api.ViewSnapshotRequest(key=key, parent=parent, labels=labels or {})
    return lambda client: client.view(request)


def _commit(name: str, key: str, labels: dict[str, str] | None = None) -> Call:
    request = api.CommitSnapshotRequest(name=name, key=key, labels=labels or {})
    return lambda client: client.commit(request)


def _update(name: str, labels: dict[str, str], paths: list[str] | None = None) -> Call:
    request = api.UpdateSnapshotRequest(info=api.Info(name=name, labels=labels))
    if paths is not None:
        request.update_mask = FieldMask(paths=paths)
    return lambda client: client.update(request)


def _stat(key: str) -> Call:
    return lambda client: client.stat(api.StatSnapshotRequest(key=key))


def _mounts(key: str) -> Call:
    return lambda client: client.mounts(api.MountsRequest(key=key))


def _remove(key: str) -> Call:
    return lambda client: client.remove(api.RemoveSnapshotRequest(key=key))


def _usage(key: str) -> Call:
    return lambda client: client.usage(api.UsageRequest(key=key))


def _list(*filters: str) -> Call:
    return lambda client: list_infos(client, filters)


CASES: dict[str, tuple[Call, Status]] = {
    # ------------------------------------------------------------ NOT_FOUND
    "stat missing": (_stat("missing"), Status.NOT_FOUND),
    "mounts missing": (_mounts("missing"), Status.NOT_FOUND),
    "remove missing": (_remove("missing"), Status.NOT_FOUND),
    "commit missing key": (_commit("new-name", "missing"), Status.NOT_FOUND),
    "commit missing key, name taken": (_commit("base", "missing"), Status.NOT_FOUND),
    "usage missing": (_usage("missing"), Status.NOT_FOUND),
    "update missing": (_update("missing", {"a": "b"}), Status.NOT_FOUND),
    "update missing with path": (_update("missing", {"a": "b"}, ["labels.a"]), Status.NOT_FOUND),
    "prepare unknown parent": (_prepare("new", "missing"), Status.NOT_FOUND),
    "view unknown parent": (_view("new", "missing"), Status.NOT_FOUND),
    # ------------------------------------------------------------ ALREADY_EXISTS
    "prepare key of an active": (_prepare("active"), Status.ALREADY_EXISTS),
    "prepare key of an active, same parent": (_prepare("active", "layer2"), Status.ALREADY_EXISTS),
    "prepare key of a committed": (_prepare("base"), Status.ALREADY_EXISTS),
    "prepare key of a view": (_prepare("view", "layer2"), Status.ALREADY_EXISTS),
    "view key of an active": (_view("solo"), Status.ALREADY_EXISTS),
    "view key of a committed": (_view("layer2", "base"), Status.ALREADY_EXISTS),
    "view key of a view": (_view("solo-view"), Status.ALREADY_EXISTS),
    "commit onto a committed name": (_commit("base", "solo"), Status.ALREADY_EXISTS),
    "commit onto an active name": (_commit("active", "solo"), Status.ALREADY_EXISTS),
    "commit onto a view name": (_commit("view", "solo"), Status.ALREADY_EXISTS),
    "commit onto its own key": (_commit("solo", "solo"), Status.ALREADY_EXISTS),
    "commit of a view onto a taken name": (_commit("base", "view"), Status.ALREADY_EXISTS),
    "commit of a committed onto a taken name": (
        _commit("layer2", "base"),
        Status.ALREADY_EXISTS,
    ),
    # ------------------------------------------------------------ INVALID_ARGUMENT
    "prepare empty key": (_prepare(""), Status.INVALID_ARGUMENT),
    "view empty key": (_view(""), Status.INVALID_ARGUMENT),
    "stat empty key": (_stat(""), Status.INVALID_ARGUMENT),
    "mounts empty key": (_mounts(""), Status.INVALID_ARGUMENT),
    "remove empty key": (_remove(""), Status.INVALID_ARGUMENT),
    "usage empty key": (_usage(""), Status.INVALID_ARGUMENT),
    "commit empty key": (_commit("new-name", ""), Status.INVALID_ARGUMENT),
    "commit empty name": (_commit("", "solo"), Status.INVALID_ARGUMENT),
    "update empty name": (_update("", {"a": "b"}), Status.INVALID_ARGUMENT),
    "prepare key with NUL": (_prepare("a\x00b"), Status.INVALID_ARGUMENT),
    "view key with NUL": (_view("a\x00b"), Status.INVALID_ARGUMENT),
    "commit name with NUL": (_commit("a\x00b", "solo"), Status.INVALID_ARGUMENT),
    "prepare key over 4096 bytes": (_prepare("k" * 4097), Status.INVALID_ARGUMENT),
    "prepare key over 4096 bytes in UTF-8": (_prepare("é" * 2049), Status.INVALID_ARGUMENT),
    "commit name over 4096 bytes": (_commit("n" * 4097, "solo"), Status.INVALID_ARGUMENT),
    "stat key over 4096 bytes": (_stat("k" * 4097), Status.INVALID_ARGUMENT),
    "prepare on an active parent": (_prepare("new", "active"), Status.INVALID_ARGUMENT),
    "prepare on a view parent": (_prepare("new", "view"), Status.INVALID_ARGUMENT),
    "view on an active parent": (_view("new", "solo"), Status.INVALID_ARGUMENT),
    "view on a view parent": (_view("new", "solo-view"), Status.INVALID_ARGUMENT),
    "update path name": (_update("solo", {}, ["name"]), Status.INVALID_ARGUMENT),
    "update path parent": (_update("solo", {}, ["parent"]), Status.INVALID_ARGUMENT),
    "update path kind": (_update("solo", {}, ["kind"]), Status.INVALID_ARGUMENT),
    "update path created_at": (_update("active", {}, ["created_at"]), Status.INVALID_ARGUMENT),
    "update bad path after a good one": (
        _update("active", {"team": "changed"}, ["labels.team", "name"]),
        Status.INVALID_ARGUMENT,
    ),
    "prepare label too big": (_prepare("new", labels={"k": BIG}), Status.INVALID_ARGUMENT),
    "view label too big": (_view("new", "base", {"k": BIG}), Status.INVALID_ARGUMENT),
    "commit label too big": (_commit("new-name", "solo", {"k": BIG}), Status.INVALID_ARGUMENT),
    "update label too big": (_update("solo", {"k": BIG}), Status.INVALID_ARGUMENT),
    "update label too big, by path": (
        _update("solo", {"k": BIG}, ["labels.k"]),
        Status.INVALID_ARGUMENT,
    ),
    "filter without value": (_list("name=="), Status.INVALID_ARGUMENT),
    "filter ending in a dot": (_list("labels."), Status.INVALID_ARGUMENT),
    "filter ending in a comma": (_list("kind==active,"), Status.INVALID_ARGUMENT),
    "filter without field": (_list("==active"), Status.INVALID_ARGUMENT),
    "filter with unknown operator": (_list("name=~solo"), Status.INVALID_ARGUMENT),
    "filter with unterminated quote": (_list('labels."foo'), Status.INVALID_ARGUMENT),
    "filter with trailing words": (_list("name==solo extra"), Status.INVALID_ARGUMENT),
    "one malformed filter of several": (_list("kind==view", "name=="), Status.INVALID_ARGUMENT),
    # ------------------------------------------------------------ FAILED_PRECONDITION
    "commit of a view": (_commit("new-name", "view"), Status.FAILED_PRECONDITION),
    "commit of a parentless view": (_commit("new-name", "solo-view"), Status.FAILED_PRECONDITION),
    "commit of a committed": (_commit("new-name", "layer2"), Status.FAILED_PRECONDITION),
    "remove parent with children": (_remove("layer2"), Status.FAILED_PRECONDITION),
    "remove grandparent": (_remove("base"), Status.FAILED_PRECONDITION),
    "mounts of a committed": (_mounts("base"), Status.FAILED_PRECONDITION),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_error_leaves_server_and_store_intact(populated: Populated, case: str) -> None:
    call, status = CASES[case]
    client = populated.client
    await expect_status(call(client), status)
    # Still serving, and nothing was lost, added or changed.
    assert (await stat(client, "solo")).kind == api.Kind.ACTIVE
    assert await store_state(client) == populated.initial
    assert dir_entries(populated.root) == populated.dirs


async def test_errors_carry_a_message(populated: Populated) -> None:
    error = await expect_status(_stat("no-such-key")(populated.client), Status.NOT_FOUND)
    assert error.message and "no-such-key" in error.message
    error = await expect_status(_list("name==")(populated.client), Status.INVALID_ARGUMENT)
    assert error.message and "name==" in error.message
