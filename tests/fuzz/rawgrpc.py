"""A blocking, deliberately unforgiving gRPC-over-HTTP/2 client for protocol abuse (h2 + socket)."""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import h2.exceptions

SERVICE = "containerd.services.snapshots.v1.Snapshots"
METHODS = (
    "Prepare",
    "View",
    "Mounts",
    "Commit",
    "Remove",
    "Stat",
    "Update",
    "List",
    "Usage",
    "Cleanup",
)
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def frame(body: bytes, *, compressed: bool = False, length: int | None = None) -> bytes:
    """A gRPC length-prefixed message; ``length`` may lie about the body."""
    size = len(body) if length is None else length
    return struct.pack(">?I", compressed, size) + body


def unix_socket(path: Path, timeout: float = 5.0) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(str(path))
    return sock


def abort(sock: socket.socket) -> None:
    """Close with a reset rather than an orderly shutdown (SO_LINGER 0)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@dataclass
class Reply:
    """What came back on one stream."""

    headers: dict[str, str] = field(default_factory=dict)
    trailers: dict[str, str] = field(default_factory=dict)
    data: bytes = b""
    ended: bool = False
    reset: int | None = None

    @property
    def grpc_status(self) -> int | None:
        """grpc-status from the trailers, or from a trailers-only reply's headers."""
        for source in (self.trailers, self.headers):
            if "grpc-status" in source:
                return int(source["grpc-status"])
        return None

    @property
    def grpc_message(self) -> str:
        return self.trailers.get("grpc-message", self.headers.get("grpc-message", ""))

    @property
    def http_status(self) -> str:
        return self.headers.get(":status", "")


class RawClient:
    """One HTTP/2 connection to the server; streams are driven by hand."""

    def __init__(self, path: Path, timeout: float = 5.0) -> None:
        self.sock = unix_socket(path, timeout)
        config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        self.conn = h2.connection.H2Connection(config=config)
        self.conn.initiate_connection()
        self.replies: dict[int, Reply] = {}
        self.terminated = False
        self.flush()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def headers(
        self, method: str, *, content_type: str = "application/grpc"
    ) -> list[tuple[str, str]]:
        return [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", method if method.startswith("/") else f"/{SERVICE}/{method}"),
            (":authority", "localhost"),
            ("content-type", content_type),
            ("te", "trailers"),
        ]

    def start(self, method: str, *, content_type: str = "application/grpc") -> int:
        stream_id: int = self.conn.get_next_available_stream_id()
        self.conn.send_headers(stream_id, self.headers(method, content_type=content_type))
        self.replies[stream_id] = Reply()
        self.flush()
        return stream_id

    def send(self, stream_id: int, data: bytes, *, end: bool = False) -> None:
        """Send ``data`` (within the flow-control window); END_STREAM, if ``end``, on its
        last frame, as gRPC clients do: a server never sees the whole request without it."""
        while data:
            window = min(
                self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size
            )
            if window <= 0:
                self.pump()
                continue
            chunk, data = data[:window], data[window:]
            self.conn.send_data(stream_id, chunk, end_stream=end and not data)
            self.flush()
            if end and not data:
                return
        if end:
            self.conn.end_stream(stream_id)
            self.flush()

    def reset(self, stream_id: int) -> None:
        self.conn.reset_stream(stream_id)
        self.flush()

    def call(self, method: str, body: bytes, *, end: bool = True) -> int:
        stream_id = self.start(method)
        self.send(stream_id, body, end=end)
        return stream_id

    def pump(self) -> None:
        """Read once from the socket and process the events; raises on EOF."""
        data = self.sock.recv(65536)
        if not data:
            self.terminated = True
            raise ConnectionError("server closed the connection")
        for event in self.conn.receive_data(data):
            self._handle(event)
        self.flush()

    def _handle(self, event: h2.events.Event) -> None:
        stream_id = getattr(event, "stream_id", None)
        reply = self.replies.get(stream_id) if stream_id else None
        if isinstance(event, h2.events.ResponseReceived) and reply is not None:
            reply.headers.update(_decoded(event.headers))
        elif isinstance(event, h2.events.TrailersReceived) and reply is not None:
            reply.trailers.update(_decoded(event.headers))
        elif isinstance(event, h2.events.DataReceived):
            if reply is not None:
                reply.data += event.data
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded) and reply is not None:
            reply.ended = True
        elif isinstance(event, h2.events.StreamReset) and reply is not None:
            reply.reset = int(event.error_code)
            reply.ended = True
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.terminated = True

    def wait(self, *stream_ids: int) -> list[Reply]:
        """Pump until every given stream has ended (or the connection is gone)."""
        while not all(self.replies[s].ended for s in stream_ids):
            if self.terminated:
                break
            try:
                self.pump()
            except ConnectionError:
                break
        return [self.replies[s] for s in stream_ids]

    def close(self) -> None:
        try:
            self.conn.close_connection()
            self.flush()
        except (OSError, h2.exceptions.ProtocolError):
            pass
        self.sock.close()


def _decoded(headers: object) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in headers:  # type: ignore[attr-defined]
        key = name.decode() if isinstance(name, bytes) else str(name)
        out[key] = value.decode() if isinstance(value, bytes) else str(value)
    return out
