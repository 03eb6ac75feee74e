"""The gRPC adapter: containerd.services.snapshots.v1.Snapshots onto the Snapshotter.

Thin on purpose (containerd's contrib/snapshotservice is the model): convert
messages, time every call, and turn errors into the status codes containerd's
proxy client maps back to its error kinds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

import betterproto.lib.google.protobuf as pb
from betterproto import Message
from grpclib import GRPCError
from grpclib.const import Cardinality, Handler, Status
from grpclib.server import Stream

from obdsnap.errors import SnapshotError
from obdsnap.genproto.containerd.services.snapshots import v1 as api
from obdsnap.locks import CountedSemaphore
from obdsnap.metrics import Metrics
from obdsnap.requests import (
    CommitRequest,
    CreateRequest,
    KeyRequest,
    MountsRequest,
    PrepareRequest,
    RemoveRequest,
    Request,
    StatRequest,
    UsageRequest,
    ViewRequest,
)
from obdsnap.snapshotter import Snapshotter
from obdsnap.storage import Info, Kind
from obdsnap.wire import EMPTY, Encoded, InfoEncoder, mounts_reply

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

    def __init__(self, metrics: Metrics, max_concurrent_requests: int) -> None:
        self._metrics = metrics
        self._gate = CallGate(max_concurrent_requests)
        metrics.watch_requests(self._gate.running)
        self._infos = InfoEncoder()
        self._snapshotter: Snapshotter  # set by open(): no call gets past the gate before

    def open(self, snapshotter: Snapshotter) -> None:
        """Serve ``snapshotter``: the calls that waited at the gate since start-up go ahead."""
        self._snapshotter = snapshotter
        self._gate.open()

    def __mapping__(self) -> dict[str, Handler]:
        unary: dict[str, tuple[type[Message | Request], type[Message], UnaryCall]] = {
            "Prepare": (PrepareRequest, api.PrepareSnapshotResponse, self.prepare),
            "View": (ViewRequest, api.ViewSnapshotResponse, self.view),
            "Mounts": (MountsRequest, api.MountsResponse, self.mounts),
            "Commit": (CommitRequest, pb.Empty, self.commit),
            "Remove": (RemoveRequest, pb.Empty, self.remove),
            "Stat": (StatRequest, api.StatSnapshotResponse, self.stat),
            "Update": (api.UpdateSnapshotRequest, api.UpdateSnapshotResponse, self.update),
            "Usage": (UsageRequest, api.UsageResponse, self.usage),
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

    def _call(self, function: str, key: str = "") -> _Call:
        return _Call(self._metrics, self._gate, function, key)

    async def prepare(self, request: CreateRequest) -> Reply:
        return mounts_reply(
            await self._snapshotter.prepare(request.key, request.parent, request.labels)
        )

    async def view(self, request: CreateRequest) -> Reply:
        return mounts_reply(
            await self._snapshotter.view(request.key, request.parent, request.labels)
        )

    async def mounts(self, request: KeyRequest) -> Reply:
        return mounts_reply(await self._snapshotter.mounts(request.key))

    async def commit(self, request: CommitRequest) -> Reply:
        await self._snapshotter.commit(request.name, request.key, request.labels)
        self._infos.forget(request.key)
        return EMPTY

    async def remove(self, request: KeyRequest) -> Reply:
        await self._snapshotter.remove(request.key)
        self._infos.forget(request.key)
        return EMPTY

    async def stat(self, request: KeyRequest) -> Reply:
        return self._infos.reply([self._snapshotter.stat(request.key)])

    async def update(self, request: api.UpdateSnapshotRequest) -> Reply:
        wanted = Info(request.info.name, "", Kind.UNKNOWN, dict(request.info.labels))
        paths = list(request.update_mask.paths) if request.update_mask else []
        return self._infos.reply([await self._snapshotter.update(wanted, paths)])

    async def usage(self, request: KeyRequest) -> Reply:
        usage = await self._snapshotter.usage(request.key)
        return api.UsageResponse(size=usage.size, inodes=usage.inodes)

    async def cleanup(self, request: api.CleanupRequest) -> Reply:
        await self._snapshotter.cleanup()
        return EMPTY


class _Call:
    """One call from its arrival: its turn at the gate, its time, and its answer.

    A SnapshotError becomes the gRPC status it names, any other exception UNKNOWN;
    a call given up at the gate is counted as answered too.
    """

    __slots__ = ("_function", "_gate", "_key", "_metrics", "_started")

    def __init__(self, metrics: Metrics, gate: CallGate, function: str, key: str) -> None:
        self._metrics = metrics
        self._gate = gate
        self._function = function
        self._key = key
        self._started = 0.0

    async def __aenter__(self) -> None:
        try:
            await self._gate.enter()
        except BaseException as exc:
            self._metrics.answered(self._function, exc)
            raise
        self._started = time.perf_counter()

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, _: TracebackType | None
    ) -> None:
        answer = None if error is None else _grpc_error(self._function, self._key, error)
        try:
            elapsed = time.perf_counter() - self._started
            self._metrics.timed(self._function, elapsed, failed=error is not None)
            self._metrics.answered(self._function, answer)
        finally:
            self._gate.leave()
        if answer is not None and answer is not error:
            raise answer from error


def _grpc_error(function: str, key: str, error: BaseException) -> BaseException:
    """What a call that raised ``error`` answers: a GRPCError, or the cancellation."""
    if isinstance(error, SnapshotError):
        _log_failure(function, key, error)
        return GRPCError(error.status, str(error))
    if isinstance(error, GRPCError | asyncio.CancelledError) or not isinstance(error, Exception):
        return error
    log.exception("%s failed: %s", function, error, extra={"rpc": function, "key": key})
    return GRPCError(Status.UNKNOWN, f"{function}: {error}")


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
