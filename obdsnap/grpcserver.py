"""The gRPC server: grpclib's, with HTTP/2's graceful stop.

grpclib's ``Server.close()`` cancels the calls in flight. To stop without
failing a call, obdsnap does what HTTP/2 provides for (RFC 9113 §6.8): a
GOAWAY frame on every connection names the last stream the server processed;
streams above it are refused (RST_STREAM with REFUSED_STREAM), never run, and a
client may send them again on a new connection: grpc-go does so by itself, the
call does not fail.

The GOAWAY goes out last, once the calls in flight are done: streams that arrive
while they finish are held, unprocessed, and refused with it. A client reconnects
as soon as it reads a GOAWAY, and containerd's client gives the next server one
second to answer the HTTP/2 handshake (grpc-go's first back-off): a GOAWAY sent
at the start of a drain would spend that second on the drain.

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

    ``stop_accepting`` (new streams are held from then on), ``calls_done``,
    ``go_away`` (the held streams are refused), then ``close``.
    """

    def __init__(self, handlers: Collection[IServable], *, codec: CodecBase) -> None:
        super().__init__(handlers, codec=codec)
        self._connections: set[_Connection] = set()
        self._calls = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.draining = False
        self.gone_away = False

    def _protocol_factory(self) -> H2Protocol:
        plain = super()._protocol_factory()  # registers grpclib's handler for close()
        return _Connection(plain.handler, plain.config, plain.h2_config, self)

    @property
    def calls_in_flight(self) -> int:
        return self._calls

    def stop_accepting(self) -> None:
        """Close the listening socket and hold every new stream unprocessed. Under
        socket activation systemd keeps its own copy of the socket open: new
        connections wait in its backlog for the next obdsnap."""
        self.draining = True
        if self._server is not None:
            self._server.close()

    async def calls_done(self) -> None:
        await self._idle.wait()

    def go_away(self) -> None:
        """GOAWAY on every connection, naming the last stream processed; the held
        streams are refused (a client sends them again on a new connection)."""
        self.gone_away = True
        for connection in list(self._connections):
            connection.go_away()

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


_Held = tuple[Stream, Callable[[], Any]]


class _StreamGate(AbstractHandler):
    """Between one connection and grpclib's handler: counts the calls, holds the
    streams that arrive during a drain and refuses them at the GOAWAY."""

    def __init__(self, handler: AbstractHandler, server: GracefulServer) -> None:
        self._handler = handler
        self._server = server
        self.highest_stream_id = 0
        self._held: dict[int, _Held] = {}
        self.gone_away = False

    def accept(self, stream: Stream, headers: Any, release_stream: Callable[[], Any]) -> None:
        assert stream.id is not None
        if self.gone_away:
            _refuse(stream, release_stream)
        elif self._server.draining:
            self._held[stream.id] = (stream, release_stream)
        else:
            self.highest_stream_id = stream.id
            self._server._call_started()

            def release() -> None:
                release_stream()
                self._server._call_finished()

            self._handler.accept(stream, headers, release)

    def refuse_held(self) -> None:
        self.gone_away = True
        held, self._held = self._held, {}
        for stream, release_stream in held.values():
            _refuse(stream, release_stream)

    def cancel(self, stream: Stream) -> None:
        assert stream.id is not None
        held = self._held.pop(stream.id, None)
        if held is not None:  # the client gave up on a held stream
            held[1]()
        else:
            self._handler.cancel(stream)

    def close(self) -> None:
        self._handler.close()


def _refuse(stream: Stream, release_stream: Callable[[], Any]) -> None:
    stream.reset_nowait(ErrorCodes.REFUSED_STREAM)
    release_stream()


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
        if self._server.gone_away:  # accepted just before the listening socket closed
            self.go_away()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._server._connections.discard(self)
        self._transport = None
        super().connection_lost(exc)

    def go_away(self) -> None:
        """GOAWAY naming the highest stream processed, then the held streams refused."""
        transport = self._transport
        if self._streams.gone_away or transport is None or transport.is_closing():
            return
        self.connection.flush()  # h2's pending frames go first
        frame = GoAwayFrame(
            stream_id=0,
            last_stream_id=self._streams.highest_stream_id,
            error_code=ErrorCodes.NO_ERROR,
        )
        cast(asyncio.WriteTransport, transport).write(frame.serialize())  # uvloop's: duck-typed
        self._streams.refuse_held()

    def close_transport(self) -> None:
        if self._transport is not None:
            self._transport.close()
