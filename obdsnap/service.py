"""The gRPC adapter: containerd.services.snapshots.v1.Snapshots onto the Snapshotter.

Thin on purpose (containerd's contrib/snapshotservice is the model): convert
messages, time every call, and turn errors into the status codes containerd's
proxy client maps back to its error kinds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

import betterproto.lib.google.protobuf as pb
from grpclib import GRPCError
from grpclib.const import Status

from obdsnap.errors import SnapshotError
from obdsnap.genproto.containerd.services.snapshots import v1 as api
from obdsnap.genproto.containerd.types import Mount as MountMessage
from obdsnap.metrics import Metrics
from obdsnap.mounts import Mount
from obdsnap.snapshotter import Snapshotter
from obdsnap.storage import Info, Kind

log = logging.getLogger(__name__)


class CallGate:
    """Counts calls in flight; once closed, new calls are refused with UNAVAILABLE."""

    def __init__(self) -> None:
        self._in_flight = 0
        self._closed = False
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        if self._closed:
            raise GRPCError(Status.UNAVAILABLE, "obdsnap is shutting down")
        self._in_flight += 1
        self._idle.clear()

    def leave(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0:
            self._idle.set()

    async def close(self, timeout: float) -> bool:
        """Refuse new calls and wait for the running ones; False if some outlived timeout."""
        self._closed = True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True


class SnapshotsService(api.SnapshotsBase):
    def __init__(self, snapshotter: Snapshotter, metrics: Metrics, gate: CallGate) -> None:
        self._snapshotter = snapshotter
        self._metrics = metrics
        self._gate = gate

    @asynccontextmanager
    async def _call(self, function: str) -> AsyncIterator[None]:
        self._gate.enter()
        try:
            async with self._metrics.observe(function):
                try:
                    yield
                except SnapshotError as exc:
                    log.debug("%s: %s: %s", function, exc.status.name, exc)
                    raise GRPCError(exc.status, str(exc)) from exc
                except (GRPCError, asyncio.CancelledError):
                    raise
                except Exception as exc:
                    log.exception("%s failed", function)
                    raise GRPCError(Status.UNKNOWN, f"{function}: {exc}") from exc
        finally:
            self._gate.leave()

    async def prepare(self, request: api.PrepareSnapshotRequest) -> api.PrepareSnapshotResponse:
        async with self._call("Prepare"):
            mounts = await self._snapshotter.prepare(request.key, request.parent, request.labels)
        return api.PrepareSnapshotResponse(mounts=_mount_messages(mounts))

    async def view(self, request: api.ViewSnapshotRequest) -> api.ViewSnapshotResponse:
        async with self._call("View"):
            mounts = await self._snapshotter.view(request.key, request.parent, request.labels)
        return api.ViewSnapshotResponse(mounts=_mount_messages(mounts))

    async def mounts(self, request: api.MountsRequest) -> api.MountsResponse:
        async with self._call("Mounts"):
            mounts = await self._snapshotter.mounts(request.key)
        return api.MountsResponse(mounts=_mount_messages(mounts))

    async def commit(self, request: api.CommitSnapshotRequest) -> pb.Empty:
        async with self._call("Commit"):
            await self._snapshotter.commit(request.name, request.key, request.labels)
        return pb.Empty()

    async def remove(self, request: api.RemoveSnapshotRequest) -> pb.Empty:
        async with self._call("Remove"):
            await self._snapshotter.remove(request.key)
        return pb.Empty()

    async def stat(self, request: api.StatSnapshotRequest) -> api.StatSnapshotResponse:
        async with self._call("Stat"):
            info = self._snapshotter.stat(request.key)
        return api.StatSnapshotResponse(info=_info_message(info))

    async def update(self, request: api.UpdateSnapshotRequest) -> api.UpdateSnapshotResponse:
        async with self._call("Update"):
            wanted = Info(request.info.name, "", Kind.UNKNOWN, dict(request.info.labels))
            paths = list(request.update_mask.paths) if request.update_mask else []
            info = await self._snapshotter.update(wanted, paths)
        return api.UpdateSnapshotResponse(info=_info_message(info))

    async def list(
        self, request: api.ListSnapshotsRequest
    ) -> AsyncIterator[api.ListSnapshotsResponse]:
        async with self._call("Walk"):
            for chunk in self._snapshotter.walk(request.filters):
                yield api.ListSnapshotsResponse(info=[_info_message(info) for info in chunk])

    async def usage(self, request: api.UsageRequest) -> api.UsageResponse:
        async with self._call("Usage"):
            usage = await self._snapshotter.usage(request.key)
        return api.UsageResponse(size=usage.size, inodes=usage.inodes)

    async def cleanup(self, request: api.CleanupRequest) -> pb.Empty:
        async with self._call("Cleanup"):
            await self._snapshotter.cleanup()
        return pb.Empty()


def _mount_messages(mounts: Iterable[Mount]) -> list[MountMessage]:
    return [
        MountMessage(type=m.type, source=m.source, target=m.target, options=list(m.options))
        for m in mounts
    ]


def _info_message(info: Info) -> api.Info:
    return api.Info(
        name=info.name,
        parent=info.parent,
        kind=api.Kind(int(info.kind)),
        created_at=info.created_at,
        updated_at=info.updated_at,
        labels=dict(info.labels),
    )
