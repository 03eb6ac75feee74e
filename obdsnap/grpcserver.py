"""The gRPC server: grpclib's, with HTTP/2's graceful stop.

grpclib's ``Server.close()`` cancels the calls in flight. To stop without
failing a call, obdsnap does what HTTP/2 provides for (RFC 9113 §6.8): a
GOAWAY frame on every connection names the last stream the server will
process. The calls up to it run to their end; streams above it are refused
(RST_STREAM with REFUSED_STREAM), never run, and a client may send them again
on a new connection: grpc-go does so by itself, the call does not fail.

h2's own ``close_connection()`` would also close h2's state machine, which
then refuses to send the replies of the calls still running, so the GOAWAY
frame is written after h2's output instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection
from typing import Any, cast

from grpclib._typing import IServable
from grpclib.config import Configuration
from grpclib.encoding.base import CodecBase
from grpclib.protocol import AbstractHandler, H2Protocol, Stream
from grpclib.server import Server
from h2.config import H2Configuration
from h2.errors import ErrorCodes
from hyperframe.frame import GoAwayFrame


class GracefulServer(Server):
    """grpclib's Server that can stop without failing a call.

    ``stop_accepting``, ``go_away``, ``calls_done``, then ``close``.
    """

    def __init__(self, handlers: Collection[IServable], *, codec: CodecBase) -> None:
        super().__init__(handlers, codec=codec)
        self._connections: set[_Connection] = set()
        self._calls = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.draining = False

    def _protocol_factory(self) -> H2Protocol:
        plain = super()._protocol_factory()  # registers grpclib's handler for close()
        return _Connection(plain.handler, plain.config, plain.h2_config, self)

    @property
    def calls_in_flight(self) -> int:
        return self._calls

    def stop_accepting(self) -> None:
        """Close the listening socket. Under socket activation systemd keeps its own
        copy open: new connections wait in its backlog for the next obdsnap."""
        if self._server is not None:
            self._server.close()

    def go_away(self) -> None:
        """GOAWAY on every connection: the calls started run to their end, new streams
        are refused (a client sends them again on a new connection)."""
        self.draining = True
        for connection in list(self._connections):
            connection.go_away()

    async def calls_done(self) -> None:
        await self._idle.wait()

    def close(self) -> None:
        """Cancel the calls still running (grpclib's close) and close every connection."""
        super().close()
        for connection in list(self._connections):
            connection.close_transport()

    def _call_started(self) -> None:
        self._calls += 1
        self._idle.clear()

    def _call_finished(self) -> None:
        self._calls -= 1
        if self._calls == 0:
            self._idle.set()


class _StreamGate(AbstractHandler):
    """Between one connection and grpclib's handler: counts the calls, refuses the
    streams above the GOAWAY's last stream id."""

    def __init__(self, handler: AbstractHandler, server: GracefulServer) -> None:
        self._handler = handler
        self._server = server
        self.highest_stream_id = 0
        self.last_stream_id: int | None = None  # set when the GOAWAY is sent

    def accept(self, stream: Stream, headers: Any, release_stream: Callable[[], Any]) -> None:
        assert stream.id is not None
        if self.last_stream_id is not None and stream.id > self.last_stream_id:
            stream.reset_nowait(ErrorCodes.REFUSED_STREAM)
            release_stream()
            return
        self.highest_stream_id = stream.id
        self._server._call_started()

        def release() -> None:
            release_stream()
            self._server._call_finished()

        self._handler.accept(stream, headers, release)

    def cancel(self, stream: Stream) -> None:
        self._handler.cancel(stream)

    def close(self) -> None:
        self._handler.close()


class _Connection(H2Protocol):
    def __init__(
        self,
        handler: AbstractHandler,
        config: Configuration,
        h2_config: H2Configuration,
        server: GracefulServer,
    ) -> None:
        self._streams = _StreamGate(handler, server)
        super().__init__(self._streams, config, h2_config)
        self._server = server
        self._transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._transport = transport
        self._server._connections.add(self)
        if self._server.draining:  # accepted just before the listening socket closed
            self.go_away()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._server._connections.discard(self)
        self._transport = None
        super().connection_lost(exc)

    def go_away(self) -> None:
        """GOAWAY naming the highest stream received: all of those are processed."""
        transport = self._transport
        if self._streams.last_stream_id is not None or transport is None:
            return
        if transport.is_closing():
            return
        self._streams.last_stream_id = self._streams.highest_stream_id
        self.connection.flush()  # h2's pending frames go first
        frame = GoAwayFrame(
            stream_id=0, last_stream_id=self._streams.last_stream_id, error_code=ErrorCodes.NO_ERROR
        )
        cast(asyncio.WriteTransport, transport).write(frame.serialize())  # uvloop's: duck-typed

    def close_transport(self) -> None:
        if self._transport is not None:
            self._transport.close()
