"""Metadata semantics: IDs never reused, commit keeps ID and parent, parent links."""

from __future__ import annotations

from grpclib.const import Status
from support.server_process import ServerProcess
from support.snapshots import (
    commit,
    commit_layer,
    dir_entries,
    expect_status,
    fs_dir,
    lower_ids,
    numeric_ids,
    own_id,
    prepare,
    settle,
    stat,
    view,
)

from obdsnap.genproto.containerd.services.snapshots import v1 as api


async def new_id(server: ServerProcess, before: set[int]) -> int:
    (created,) = numeric_ids(server.root) - before
    return created


async def test_ids_only_grow(client: api.SnapshotsStub, server: ServerProcess) -> None:
    root = server.root
    seen: list[int] = []

    async def created(kind: str, key: str, parent: str = "") -> int:
        before = numeric_ids(root)
        if kind == "view":
            await view(client, key, parent)
        else:
            await prepare(client, key, parent)
        snapshot_id = await new_id(server, before)
        assert all(snapshot_id > earlier for earlier in seen), (snapshot_id, seen)
        assert str(snapshot_id) in dir_entries(root)
        seen.append(snapshot_id)
        return snapshot_id

    await created("active", "a")
    await commit(client, "base", "a")
    await created("active", "b", "base")
    await created("view", "v", "base")
    # Remove the newest: its ID is not handed out again.
    await client.remove(api.RemoveSnapshotRequest(key="v"))
    await created("active", "c")
    await client.remove(api.RemoveSnapshotRequest(key="c"))
    await client.remove(api.RemoveSnapshotRequest(key="b"))
    await created("active", "not-committed")
    # Failed creates leave no directory and do not bring an ID back.
    await settle(client, root)  # the removed snapshots' directories are gone
    entries = dir_entries(root)
    assert entries == {str(seen[0]), str(seen[-1])}
    await expect_status(prepare(client, "base"), Status.ALREADY_EXISTS)
    await expect_status(prepare(client, "x", "missing"), Status.NOT_FOUND)
    await expect_status(prepare(client, "x", "not-committed"), Status.INVALID_ARGUMENT)
    await expect_status(view(client, "base"), Status.ALREADY_EXISTS)
    await expect_status(prepare(client, "", labels={}), Status.INVALID_ARGUMENT)
    await expect_status(prepare(client, "x", labels={"k": "v" * 5000}), Status.INVALID_ARGUMENT)
    assert dir_entries(root) == entries
    await created("view", "w", "base")
    await created("active", "d", "base")
    assert seen == sorted(seen)
    assert len(set(seen)) == len(seen)


async def test_ids_are_decimal_directory_names(
    client: api.SnapshotsStub, server: ServerProcess
) -> None:
    for key in ("a", "b", "c"):
        await prepare(client, key)
    assert dir_entries(server.root) == {"1", "2", "3"}


async def test_commit_keeps_id_and_parent(client: api.SnapshotsStub, server: ServerProcess) -> None:
    root = server.root
    base_id = await commit_layer(client, root, "base")
    active_id = own_id(await prepare(client, "work", "base"), root)
    await commit(client, "layer", "work")
    info = await stat(client, "layer")
    assert info.parent == "base"
    assert numeric_ids(root) == {base_id, active_id}
    child = await prepare(client, "child", "layer")
    assert lower_ids(child[0], root) == [active_id, base_id]
    # The child's own directory is new.
    assert own_id(child, root) > active_id


async def test_parent_link_follows_a_commit(
    client: api.SnapshotsStub, server: ServerProcess
) -> None:
    await commit_layer(client, server.root, "base")
    await prepare(client, "work", "base")
    await commit(client, "layer", "work")
    # The committed child holds the parent...
    await expect_status(
        client.remove(api.RemoveSnapshotRequest(key="base")), Status.FAILED_PRECONDITION
    )
    # ...and only it: once it is gone, the parent can go (no dangling link to "work").
    await client.remove(api.RemoveSnapshotRequest(key="layer"))
    await client.remove(api.RemoveSnapshotRequest(key="base"))
    await expect_status(client.stat(api.StatSnapshotRequest(key="base")), Status.NOT_FOUND)


async def test_one_namespace_for_all_kinds(
    client: api.SnapshotsStub, server: ServerProcess
) -> None:
    await commit_layer(client, server.root, "name")
    await expect_status(prepare(client, "name"), Status.ALREADY_EXISTS)
    await expect_status(view(client, "name", "name"), Status.ALREADY_EXISTS)
    await prepare(client, "a")
    await expect_status(commit(client, "a", "a"), Status.ALREADY_EXISTS)
    await view(client, "v", "name")
    await prepare(client, "b")
    await expect_status(commit(client, "v", "b"), Status.ALREADY_EXISTS)


async def test_commit_check_order(client: api.SnapshotsStub, server: ServerProcess) -> None:
    await commit_layer(client, server.root, "taken")
    await view(client, "a-view", "taken")
    # key missing wins over name taken
    await expect_status(commit(client, "taken", "missing"), Status.NOT_FOUND)
    # name taken wins over key not active
    await expect_status(commit(client, "taken", "a-view"), Status.ALREADY_EXISTS)
    await expect_status(commit(client, "a-view", "taken"), Status.ALREADY_EXISTS)
    # and with a free name, the kind decides
    await expect_status(commit(client, "free", "a-view"), Status.FAILED_PRECONDITION)
    await expect_status(commit(client, "free", "taken"), Status.FAILED_PRECONDITION)
    await expect_status(client.stat(api.StatSnapshotRequest(key="free")), Status.NOT_FOUND)


async def test_create_check_order(client: api.SnapshotsStub, server: ServerProcess) -> None:
    await prepare(client, "active")
    # Parent checks come before the key check, as in containerd's storage.
    await expect_status(prepare(client, "active", "missing"), Status.NOT_FOUND)
    await expect_status(prepare(client, "active", "active"), Status.INVALID_ARGUMENT)


async def test_child_directories_point_at_parents(
    client: api.SnapshotsStub, server: ServerProcess
) -> None:
    root = server.root
    ids = [await commit_layer(client, root, "l0")]
    ids.append(await commit_layer(client, root, "l1", "l0"))
    ids.append(await commit_layer(client, root, "l2", "l1"))
    mounts = await prepare(client, "top", "l2")
    assert lower_ids(mounts[0], root) == ids[::-1]
    for snapshot_id in ids:
        assert fs_dir(root, snapshot_id).is_dir()
