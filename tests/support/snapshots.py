"""Snapshots through obdsnap's gRPC API: status checks, calls, listing, IDs, on-disk names."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from grpclib import GRPCError
from grpclib.client import Channel
from grpclib.const import Status

from obdsnap.genproto.containerd.services.snapshots import v1 as api
from obdsnap.genproto.containerd.types import Mount
from support.mounts import mount_options
from support.server_process import ServerProcess

# containerd's overlayfs snapshotter adds index=off when the kernel knows the parameter.
INDEX_OFF = Path("/sys/module/overlay/parameters/index").exists()
KIND_NAMES = {
    api.Kind.ACTIVE: "active",
    api.Kind.VIEW: "view",
    api.Kind.COMMITTED: "committed",
}


async def expect_status(call: Awaitable[Any], status: Status) -> GRPCError:
    """Await ``call``; it must fail with ``status``. Returns the error for message checks."""
    try:
        result = await call
    except GRPCError as exc:
        assert exc.status == status, f"expected {status.name}, got {exc.status.name}: {exc.message}"
        return exc
    raise AssertionError(f"expected {status.name}, but the call succeeded: {result!r}")


# ---------------------------------------------------------------------- listing


async def list_chunks(
    client: api.SnapshotsStub, filters: Sequence[str] = (), snapshotter: str = ""
) -> list[list[api.Info]]:
    """Every message of a List stream, as lists of infos."""
    request = api.ListSnapshotsRequest(snapshotter=snapshotter, filters=list(filters))
    chunks: list[list[api.Info]] = []
    async for reply in client.list(request):
        chunks.append(list(reply.info))
    return chunks


async def list_infos(
    client: api.SnapshotsStub, filters: Sequence[str] = (), snapshotter: str = ""
) -> list[api.Info]:
    return [info for chunk in await list_chunks(client, filters, snapshotter) for info in chunk]


async def list_names(client: api.SnapshotsStub, *filters: str) -> set[str]:
    names = [info.name for info in await list_infos(client, filters)]
    assert len(names) == len(set(names)), f"List answered a name twice: {sorted(names)}"
    return set(names)


@dataclass(frozen=True)
class Snap:
    """What Stat/List tell about one snapshot, in a comparable form."""

    name: str
    parent: str
    kind: str
    labels: tuple[tuple[str, str], ...]
    created_at: datetime
    updated_at: datetime


def snap(info: api.Info) -> Snap:
    return Snap(
        name=info.name,
        parent=info.parent,
        kind=KIND_NAMES.get(info.kind, f"kind {int(info.kind)}"),
        labels=tuple(sorted(info.labels.items())),
        created_at=info.created_at,
        updated_at=info.updated_at,
    )


async def store_state(client: api.SnapshotsStub) -> dict[str, Snap]:
    """Everything List says, by name."""
    return {info.name: snap(info) for info in await list_infos(client)}


async def usage(client: api.SnapshotsStub, key: str) -> tuple[int, int]:
    reply = await client.usage(api.UsageRequest(key=key))
    return reply.size, reply.inodes


async def stat(client: api.SnapshotsStub, key: str) -> api.Info:
    reply = await client.stat(api.StatSnapshotRequest(key=key))
    info: api.Info = reply.info
    return info


# ---------------------------------------------------------------------- snapshots on disk


def snapshots_dir(root: Path) -> Path:
    return root / "snapshots"


def fs_dir(root: Path, snapshot_id: int) -> Path:
    return root / "snapshots" / str(snapshot_id) / "fs"


def dir_entries(root: Path) -> set[str]:
    """Names under ``<root>/snapshots``."""
    return {entry.name for entry in snapshots_dir(root).iterdir()}


def is_dir(path: str | Path) -> bool:
    return Path(path).is_dir()


def numeric_ids(root: Path) -> set[int]:
    return {int(name) for name in dir_entries(root) if name.isdigit()}


def id_of_path(path: str | Path, root: Path) -> int:
    """The snapshot ID of ``<root>/snapshots/<ID>/fs`` or ``.../work``."""
    relative = Path(path).relative_to(snapshots_dir(root))
    assert len(relative.parts) == 2, f"not a snapshot subdirectory: {path}"
    assert relative.parts[0].isdigit(), f"snapshot directory is not named by an ID: {path}"
    return int(relative.parts[0])


def own_id(mounts: Sequence[Mount], root: Path) -> int:
    """The ID of an active snapshot (or a parentless view) from its mounts."""
    assert len(mounts) == 1, mounts
    mount = mounts[0]
    if mount.type == "bind":
        return id_of_path(mount.source, root)
    return id_of_path(mount_options(mount)["upperdir"], root)


def lower_ids(mount: Mount, root: Path) -> list[int]:
    lowerdir = mount_options(mount)["lowerdir"]
    return [id_of_path(lower, root) for lower in lowerdir.split(":")]


async def prepare(
    client: api.SnapshotsStub,
    key: str,
    parent: str = "",
    labels: Mapping[str, str] | None = None,
) -> list[Mount]:
    reply = await client.prepare(
        api.PrepareSnapshotRequest(key=key, parent=parent, labels=dict(labels or {}))
    )
    return list(reply.mounts)


async def view(
    client: api.SnapshotsStub,
    key: str,
    parent: str = "",
    labels: Mapping[str, str] | None = None,
) -> list[Mount]:
    reply = await client.view(
        api.ViewSnapshotRequest(key=key, parent=parent, labels=dict(labels or {}))
    )
    return list(reply.mounts)


async def commit(
    client: api.SnapshotsStub, name: str, key: str, labels: Mapping[str, str] | None = None
) -> None:
    await client.commit(api.CommitSnapshotRequest(name=name, key=key, labels=dict(labels or {})))


async def commit_layer(
    client: api.SnapshotsStub,
    root: Path,
    name: str,
    parent: str = "",
    *,
    files: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
) -> int:
    """Prepare ``<name>-active``, write ``files`` into its fs/, commit it as ``name``; its ID."""
    key = f"{name}-active"
    snapshot_id = own_id(await prepare(client, key, parent), root)
    for relative, content in (files or {}).items():
        path = fs_dir(root, snapshot_id) / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    await commit(client, name, key, labels)
    return snapshot_id


async def commit_chain(
    client: api.SnapshotsStub, root: Path, names: Iterable[str], parent: str = ""
) -> list[int]:
    """Commit a chain of layers, each on the one before, each with a file ``<name>.txt``."""
    ids = []
    for name in names:
        ids.append(await commit_layer(client, root, name, parent, files={f"{name}.txt": name}))
        parent = name
    return ids


async def wait_until(predicate: Callable[[], bool], within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def settle(client: api.SnapshotsStub, root: Path, quiet: float = 0.3) -> set[str]:
    """Wait until snapshots/ holds exactly one ID directory per listed snapshot and neither
    changes for ``quiet`` seconds (removals and abandoned creates finish in the background).
    Returns the listed names.
    """
    deadline = time.monotonic() + 10
    last: tuple[set[str], set[str]] | None = None
    stable_since = time.monotonic()
    while True:
        names = await list_names(client)
        entries = dir_entries(root)
        now = time.monotonic()
        if (names, entries) != last:
            last, stable_since = (names, entries), now
        consistent = len(entries) == len(names) and all(e.isdigit() for e in entries)
        if consistent and now - stable_since >= quiet:
            return names
        assert now < deadline, f"never settled: {sorted(names)} vs {sorted(entries)}"
        await asyncio.sleep(0.02)


def assert_recent_utc(moment: datetime, since: datetime, until: datetime) -> None:
    """A timestamp in UTC, taken between ``since`` and ``until`` (with a little slack)."""
    assert moment.tzinfo is not None, f"naive timestamp {moment!r}"
    assert moment.utcoffset() == timedelta(0), f"timestamp not in UTC: {moment!r}"
    slack = timedelta(seconds=1)
    assert since - slack <= moment <= until + slack, (moment, since, until)


def utc_now() -> datetime:
    return datetime.now(UTC)


# ---------------------------------------------------------------------- servers


@asynccontextmanager
async def connect(server: ServerProcess) -> AsyncIterator[api.SnapshotsStub]:
    channel = Channel(path=str(server.address))
    try:
        yield api.SnapshotsStub(channel)
    finally:
        channel.close()


async def start_server(server: ServerProcess) -> ServerProcess:
    """Start ``server``; it returns once a connection gets through."""
    return await asyncio.to_thread(server.start)
