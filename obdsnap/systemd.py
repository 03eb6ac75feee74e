"""systemd: readiness notification (sd_notify) and socket activation (sd_listen_fds).

Both are the plain protocols of sd_notify(3) and sd_listen_fds(3), without
libsystemd: a datagram to ``$NOTIFY_SOCKET``, and listening sockets handed
over from fd 3 with ``$LISTEN_FDS``/``$LISTEN_PID``. Without those variables
(not started by systemd) everything here is a no-op.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket

log = logging.getLogger(__name__)

SD_LISTEN_FDS_START = 3
LISTEN_VARIABLES = ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")
# A full receive queue on the manager's side: try again for this long, then give up.
NOTIFY_RETRY_S = 0.05
NOTIFY_ATTEMPTS = 40


class ActivationError(Exception):
    """The sockets systemd passed cannot be used; the message says why."""


class Notifier:
    """sd_notify(3): state changes for the service manager; a no-op without NOTIFY_SOCKET.

    Sending never blocks the loop: the socket is non-blocking, and a full queue
    is retried a little later.
    """

    def __init__(self, address: str | None) -> None:
        self._address = _notify_address(address) if address else None
        self._socket: socket.socket | None = None

    @classmethod
    def from_environment(cls) -> Notifier:
        """The manager's socket from NOTIFY_SOCKET, taken out of the environment so that
        children (mkfs, the overlaybd tools) cannot speak for obdsnap."""
        return cls(os.environ.pop("NOTIFY_SOCKET", None))

    @property
    def enabled(self) -> bool:
        return self._address is not None

    async def status(self, text: str) -> None:
        await self._send(f"STATUS={text}")

    async def ready(self, status: str) -> None:
        await self._send("READY=1", f"STATUS={status}")

    async def stopping(self, status: str) -> None:
        await self._send("STOPPING=1", f"STATUS={status}")

    async def _send(self, *assignments: str) -> None:
        if self._address is None:
            return
        message = "\n".join(assignments).encode()
        for _ in range(NOTIFY_ATTEMPTS):
            try:
                self._connected().sendto(message, self._address)
                return
            except BlockingIOError:
                await asyncio.sleep(NOTIFY_RETRY_S)
            except OSError as exc:
                log.warning("cannot notify systemd at %s: %s", self._printable(), exc.strerror)
                return
        log.warning("cannot notify systemd at %s: its queue stays full", self._printable())

    def _connected(self) -> socket.socket:
        if self._socket is None:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._socket.setblocking(False)
        return self._socket

    def _printable(self) -> str:
        assert self._address is not None
        return self._address.replace("\0", "@", 1)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _notify_address(address: str) -> str | None:
    if address.startswith("@"):  # the abstract namespace
        return "\0" + address[1:]
    if address.startswith("/"):
        return address
    log.warning("NOTIFY_SOCKET=%s is not a unix socket path: not notifying systemd", address)
    return None


def activated_listener() -> socket.socket | None:
    """The listening socket systemd passed (sd_listen_fds), or None without socket activation.

    As sd_listen_fds does, variables meant for another process (LISTEN_PID not
    ours) are ignored, and the variables are removed from the environment in
    any case so that children do not take them for theirs. Variables meant for
    this process that do not describe exactly one listening unix stream socket
    are an error: serving somewhere else than where containerd connects would
    fail every call.
    """
    variables = {name: os.environ.pop(name, None) for name in LISTEN_VARIABLES}
    fds, pid = variables["LISTEN_FDS"], variables["LISTEN_PID"]
    if fds is None and pid is None:
        return None
    if pid is None or not pid.isdecimal():
        raise ActivationError(f"LISTEN_PID={pid} is not a process id (LISTEN_FDS={fds})")
    if int(pid) != os.getpid():
        log.warning(
            "LISTEN_FDS=%s is for pid %s, not this process (%d): ignored", fds, pid, os.getpid()
        )
        return None
    if fds is None or not fds.isdecimal():
        raise ActivationError(f"LISTEN_FDS={fds} is not a number of sockets")
    if int(fds) != 1:
        raise ActivationError(
            f"LISTEN_FDS={fds}: obdsnap takes exactly one socket (one ListenStream=)"
        )
    return _listening_unix_socket(SD_LISTEN_FDS_START)


def _listening_unix_socket(fd: int) -> socket.socket:
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise ActivationError(
            f"fd {fd} from LISTEN_FDS is not a socket: {exc.strerror or exc}"
        ) from None
    accepting = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM or not accepting:
        found = f"{sock.family.name} {sock.type.name}, {'' if accepting else 'not '}listening"
        sock.detach()  # not ours to close: only reported
        raise ActivationError(
            f"fd {fd} from LISTEN_FDS is not a listening unix stream socket ({found})"
        )
    sock.set_inheritable(False)  # children must not hold the socket containerd connects to
    sock.setblocking(False)
    return sock


def socket_path(sock: socket.socket) -> str:
    """Where a unix socket is bound (``@name`` for the abstract namespace)."""
    name = sock.getsockname()
    if isinstance(name, bytes):
        return "@" + name[1:].decode(errors="replace")
    return str(name)
