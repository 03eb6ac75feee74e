"""A stand-in for systemd's notification socket, and obdsnap under socket activation."""

from __future__ import annotations

import select
import socket
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from hyperframe.frame import Frame

FRAME_HEADER = 9
# struct ucred: pid, uid, gid
UCRED = struct.Struct("3i")


@dataclass(frozen=True)
class Notification:
    pid: int
    fields: dict[str, str]
    received: float  # time.time() when it arrived

    def __str__(self) -> str:
        return f"pid {self.pid}: {self.fields}"


class NotifyListener:
    """A datagram socket at ``path``, as systemd's NOTIFY_SOCKET, that knows who sent what."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.messages: list[Notification] = []
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self._socket.bind(str(path))

    def poll(self, timeout: float = 0.0) -> list[Notification]:
        """Read what arrived (waiting up to ``timeout`` for the first); returns the new ones."""
        new: list[Notification] = []
        while select.select([self._socket], [], [], timeout)[0]:
            data, ancillary, _, _ = self._socket.recvmsg(4096, socket.CMSG_SPACE(UCRED.size))
            pid = -1
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = UCRED.unpack(payload[: UCRED.size])[0]
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if line)
            new.append(Notification(pid, fields, time.time()))
            timeout = 0.0
        self.messages.extend(new)
        return new

    def wait_for(self, field: str, value: str | None = None, within: float = 30.0) -> Notification:
        """The first message (already read or arriving within ``within``) with ``field``."""
        deadline = time.monotonic() + within
        seen = 0
        while True:
            for message in self.messages[seen:]:
                if field in message.fields and value in (None, message.fields[field]):
                    return message
            seen = len(self.messages)
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {field} within {within}s; got {self.messages}")
            self.poll(min(left, 0.5))

    def close(self) -> None:
        self._socket.close()

    def __enter__(self) -> NotifyListener:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def statuses(messages: list[Notification]) -> list[str]:
    return [message.fields["STATUS"] for message in messages if "STATUS" in message.fields]


def read_until_closed(sock: socket.socket) -> list[Frame]:
    """Every HTTP/2 frame the server sends until it closes the connection."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    frames = []
    while len(data) >= FRAME_HEADER:
        parsed, length = Frame.parse_frame_header(memoryview(data[:FRAME_HEADER]))
        parsed.parse_body(memoryview(data[FRAME_HEADER : FRAME_HEADER + length]))
        frames.append(parsed)
        data = data[FRAME_HEADER + length :]
    return frames
