"""The gRPC adapter: containerd.services.snapshots.v1.Snapshots onto the Snapshotter.

Thin on purpose (containerd's contrib/snapshotservice is the model): convert
messages, time every call, and turn errors into the status codes containerd's
proxy client maps back to its error kinds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

import betterproto.lib.google.protobuf as pb
from betterproto import Message
from grpclib import GRPCError
from grpclib.const import Cardinality, Handler, Status
from grpclib.server import Stream

from obdsnap.errors import SnapshotError
from obdsnap.genproto.containerd.services.snapshots import v1 as api
from obdsnap.genproto.containerd.types import Mount as MountMessage
from obdsnap.locks import CountedSemaphore
from obdsnap.metrics import Metrics
from obdsnap.mounts import Mount
from obdsnap.snapshotter import Snapshotter
from obdsnap.storage import Info, Kind
from obdsnap.wire import Encoded, InfoEncoder

log = logging.getLogger(__name__)


class CallGate:
    """Calls in flight: none until ``open`` (start-up is not done), then at most
    ``limit`` at once; the rest wait their turn."""

    def __init__(self, limit: int) -> None:
        self.running = CountedSemaphore(limit)
        self._open = asyncio.Event()

    def open(self) -> None:
        self._open.set()

    async def enter(self) -> None:
        await self._open.wait()
        await self.running.acquire()

    def leave(self) -> None:
        self.running.release()


SERVICE = "containerd.services.snapshots.v1.Snapshots"
Reply = Message | Encoded
UnaryCall = Callable[[Any], Awaitable[Reply]]


class SnapshotsService:
    """grpclib handlers of every Snapshots RPC (grpclib finds them through ``__mapping__``)."""

    def __init__(self, snapshotter: Snapshotter, metrics: Metrics, gate: CallGate) -> None:
        self._snapshotter = snapshotter
        self._metrics = metrics
        self._gate = gate
        metrics.watch_requests(gate.running)
        self._infos = InfoEncoder()

    def __mapping__(self) -> dict[str, Handler]:
        unary: dict[str, tuple[type[Message], type[Message], UnaryCall]] = {
            "Prepare": (api.PrepareSnapshotRequest, api.PrepareSnapshotResponse, self.prepare),
            "View": (api.ViewSnapshotRequest, api.ViewSnapshotResponse, self.view),
            "Mounts": (api.MountsRequest, api.MountsResponse, self.mounts),
            "Commit": (api.CommitSnapshotRequest, pb.Empty, self.commit),
            "Remove": (api.RemoveSnapshotRequest, pb.Empty, self.remove),
            "Stat": (api.StatSnapshotRequest, api.StatSnapshotResponse, self.stat),
            "Update": (api.UpdateSnapshotRequest, api.UpdateSnapshotResponse, self.update),
            "Usage": (api.UsageRequest, api.UsageResponse, self.usage),
            "Cleanup": (api.CleanupRequest, pb.Empty, self.cleanup),
        }
        mapping = {
            f"/{SERVICE}/{name}": Handler(
                self._unary_handler(name, call), Cardinality.UNARY_UNARY, request, reply
            )
            for name, (request, reply, call) in unary.items()
        }
        mapping[f"/{SERVICE}/List"] = Handler(
            self._list_handler,
            Cardinality.UNARY_STREAM,
            api.ListSnapshotsRequest,
            api.ListSnapshotsResponse,
        )
        return mapping

    def _unary_handler(
        self, name: str, call: UnaryCall
    ) -> Callable[[Stream[Any, Any]], Awaitable[None]]:
        async def handle(stream: Stream[Any, Any]) -> None:
            request = await _receive(stream)
            async with self._call(name, _key_of(request)):
                reply = await call(request)
            await stream.send_message(reply)

        return handle

    async def _list_handler(self, stream: Stream[Any, Any]) -> None:
        request: api.ListSnapshotsRequest = await _receive(stream)
        async with self._call("Walk"):  # the Go snapshotter's name for List
            for chunk in self._snapshotter.walk(request.filters):
                await stream.send_message(self._infos.reply(chunk))

    @asynccontextmanager
    async def _call(self, function: str, key: str = "") -> AsyncIterator[None]:
        async with self._metrics.answer(function):  # a call given up at the gate counts too
            await self._gate.enter()
            try:
                async with self._metrics.observe(function):
                    try:
                        yield
                    except SnapshotError as exc:
                        _log_failure(function, key, exc)
                        raise GRPCError(exc.status, str(exc)) from exc
                    except (GRPCError, asyncio.CancelledError):
                        raise
                    except Exception as exc:
                        log.exception(
                            "%s failed: %s", function, exc, extra={"rpc": function, "key": key}
                        )
                        raise GRPCError(Status.UNKNOWN, f"{function}: {exc}") from exc
            finally:
                self._gate.leave()

    async def prepare(self, request: api.PrepareSnapshotRequest) -> Reply:
        mounts = await self._snapshotter.prepare(request.key, request.parent, request.labels)
        return api.PrepareSnapshotResponse(mounts=_mount_messages(mounts))

    async def view(self, request: api.ViewSnapshotRequest) -> Reply:
        mounts = await self._snapshotter.view(request.key, request.parent, request.labels)
        return api.ViewSnapshotResponse(mounts=_mount_messages(mounts))

    async def mounts(self, request: api.MountsRequest) -> Reply:
        mounts = await self._snapshotter.mounts(request.key)
        return api.MountsResponse(mounts=_mount_messages(mounts))

    async def commit(self, request: api.CommitSnapshotRequest) -> Reply:
        await self._snapshotter.commit(request.name, request.key, request.labels)
        self._infos.forget(request.key)
        return pb.Empty()

    async def remove(self, request: api.RemoveSnapshotRequest) -> Reply:
        await self._snapshotter.remove(request.key)
        self._infos.forget(request.key)
        return pb.Empty()

    async def stat(self, request: api.StatSnapshotRequest) -> Reply:
        return self._infos.reply([self._snapshotter.stat(request.key)])

    async def update(self, request: api.UpdateSnapshotRequest) -> Reply:
        wanted = Info(request.info.name, "", Kind.UNKNOWN, dict(request.info.labels))
        paths = list(request.update_mask.paths) if request.update_mask else []
        return self._infos.reply([await self._snapshotter.update(wanted, paths)])

    async def usage(self, request: api.UsageRequest) -> Reply:
        usage = await self._snapshotter.usage(request.key)
        return api.UsageResponse(size=usage.size, inodes=usage.inodes)

    async def cleanup(self, request: api.CleanupRequest) -> Reply:
        await self._snapshotter.cleanup()
        return pb.Empty()


# The client's own mistakes and the answers containerd expects (e.g. ALREADY_EXISTS
# for a remote layer, NOT_FOUND from a Stat before a Prepare): not worth a warning.
EXPECTED_ANSWERS = frozenset(
    {
        Status.NOT_FOUND,
        Status.ALREADY_EXISTS,
        Status.INVALID_ARGUMENT,
        Status.FAILED_PRECONDITION,
        Status.UNIMPLEMENTED,
    }
)


def _log_failure(function: str, key: str, exc: SnapshotError) -> None:
    """One line per failed call; a warning or an error when it is not the client's fault."""
    if exc.status in EXPECTED_ANSWERS:
        level = logging.DEBUG
    elif exc.status is Status.UNAVAILABLE:  # e.g. a disk that was slow to appear: may pass
        level = logging.WARNING
    else:
        level = logging.ERROR
    where = f" at {exc.step}" if exc.step else ""
    fields = {
        "rpc": function,
        "key": key,
        "id": exc.snapshot_id,
        "step": exc.step,
        "reason": exc.reason,
    }
    log.log(level, "%s failed%s: %s: %s", function, where, exc.status.name, exc, extra=fields)


def _key_of(request: Any) -> str:
    """The snapshot key a request names (Update names it in its info), or ""."""
    key = getattr(request, "key", None)
    if isinstance(key, str):
        return key
    info = getattr(request, "info", None)
    name = getattr(info, "name", None)
    return name if isinstance(name, str) else ""


async def _receive(stream: Stream[Any, Any]) -> Any:
    """The request message; a body that cannot be read is the client's error, as in grpc-go."""
    try:
        request = await stream.recv_message()
    except GRPCError:
        raise
    except NotImplementedError as exc:  # e.g. a compressed message: no compression here
        raise GRPCError(Status.UNIMPLEMENTED, f"grpc: {exc}") from exc
    except Exception as exc:
        raise GRPCError(Status.INTERNAL, f"grpc: error unmarshalling request: {exc}") from exc
    if request is None:
        raise GRPCError(Status.INVALID_ARGUMENT, "request message missing")
    return request


def _mount_messages(mounts: Iterable[Mount]) -> list[MountMessage]:
    return [
        MountMessage(type=m.type, source=m.source, target=m.target, options=list(m.options))
        for m in mounts
    ]
