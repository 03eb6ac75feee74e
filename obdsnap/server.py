"""The obdsnap process: start-up, the listening socket, signals and graceful shutdown."""

from __future__ import annotations

import asyncio
import fcntl
import gc
import io
import logging
import os
import signal
import socket
import stat
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO

from obdsnap import __version__
from obdsnap.blocking import BlockingRunner
from obdsnap.config import BootConfig, socket_group_id
from obdsnap.device.backend import DeviceBackend
from obdsnap.device.manager import DeviceManager
from obdsnap.device.mounter import HostMounter
from obdsnap.device.tcmu import TcmuBackend
from obdsnap.grpcserver import GracefulServer
from obdsnap.layout import PROCESS_UMASK, Layout
from obdsnap.metrics import Exporter, Metrics
from obdsnap.mounts import overlay_has_index_param
from obdsnap.overlaybd.layers import BlockLayers
from obdsnap.overlaybd.tools import OverlaybdTools
from obdsnap.overlaybd.turbo_oci import TurboOciSettings
from obdsnap.quota import QuotaSettings
from obdsnap.role import RwMode
from obdsnap.runstatus import ReconcileSummary, ServingStatus, write_status
from obdsnap.service import SnapshotsService
from obdsnap.snapshotter import ReconcileReport, Snapshotter, SnapshotterOptions
from obdsnap.storage import MetaStore, StoreError
from obdsnap.storage.migration import MigrationError, import_go_metadata
from obdsnap.systemd import ActivationError, Notifier, activated_listener, socket_path
from obdsnap.wire import SnapshotsCodec

log = logging.getLogger(__name__)

DRAIN_TIMEOUT_S = 10.0
_STARTED = datetime.now(UTC)  # the process's start, as near as obdsnap sees it
LISTEN_BACKLOG = 1024


class StartupError(Exception):
    """Start-up cannot go on; the message says why."""


async def serve(config: BootConfig) -> None:
    """Serve until SIGTERM or SIGINT, then stop gracefully."""
    os.umask(PROCESS_UMASK)
    notifier = Notifier.from_environment()
    stopping = _install_signal_handlers()  # before any socket is served: a stop is never lost
    metrics = Metrics()
    service = SnapshotsService(metrics, config.max_concurrent_requests)
    server = GracefulServer([service], codec=SnapshotsCodec())
    activated = _activated_listener(config)
    serving = _Serving(service, server, stopping, notifier, activated)
    try:
        if activated is not None:
            # Connections are queued already: answer their HTTP/2 handshake at once
            # (containerd's client gives it one second, and loading a store of 100k
            # snapshots takes longer); their calls wait at the gate until start-up is done.
            await serving.start(activated)
        await _serve_root(config, serving, metrics)
    finally:
        await serving.close()  # after a failed start-up too: the calls waiting get an error
        notifier.close()
    log.info("obdsnap stopped")


@dataclass
class _Serving:
    """What answers the calls: set up before the root is, so that a socket from systemd
    is answered from the start."""

    service: SnapshotsService
    server: GracefulServer
    stopping: asyncio.Event
    notifier: Notifier
    activated: socket.socket | None
    listener: socket.socket | None = None  # served (systemd's or our own) until closed

    async def start(self, listener: socket.socket) -> None:
        await self.server.start(sock=listener, backlog=LISTEN_BACKLOG)
        self.listener = listener

    async def close(self) -> None:
        """The GOAWAY (the streams held are refused), then every connection closed; once."""
        listener, self.listener = self.listener, None
        if listener is None:
            return
        self.server.go_away()
        self.server.close()
        await self.server.wait_closed()
        listener.close()


async def _serve_root(config: BootConfig, serving: _Serving, metrics: Metrics) -> None:
    """Open the root (lock, store, snapshotter) and serve it."""
    blocking = BlockingRunner()
    layout = await _resolved_root(config, blocking)
    config = replace(config, root=str(layout.root))
    root_lock = await blocking(lock_root, layout)
    store = MetaStore(layout.metadata_db, metrics)
    try:
        await blocking(import_go_metadata, layout, RwMode(config.rw_mode))
        await store.open()
    except (MigrationError, StoreError) as exc:
        root_lock.close()
        raise StartupError(str(exc)) from None
    try:
        snapshotter = await build_snapshotter(config, layout, store, blocking, metrics)
        try:
            await _serve_snapshotter(config, snapshotter, serving, metrics, blocking)
        finally:
            await snapshotter.close()
    finally:
        await store.close()
        root_lock.close()


async def _resolved_root(config: BootConfig, blocking: BlockingRunner) -> Layout:
    """The root, created, then resolved through symlinks (DESIGN-v1 §1)."""
    try:
        # Resolved first too: a symlink loop is named as such, not as mkdir's "File exists".
        await blocking((await blocking(Layout.resolved, config.root)).create_root)
        return await blocking(Layout.resolved, config.root, strict=True)
    except OSError as exc:
        raise StartupError(f"invalid root {config.root}: {exc.strerror or exc}") from None


async def _serve_snapshotter(
    config: BootConfig,
    snapshotter: Snapshotter,
    serving: _Serving,
    metrics: Metrics,
    blocking: BlockingRunner,
) -> None:
    """Serve on the socket systemd passed (served already), else on one of obdsnap's own."""
    notifier = serving.notifier
    if serving.activated is None:  # obdsnap's own socket appears once the reconcile is done
        await _reconcile(config, snapshotter, notifier, blocking)
    exporter = await _start_exporter(config, metrics)
    own_socket = Path(config.address) if serving.activated is None else None
    try:
        if own_socket is not None:
            await serving.start(await blocking(open_unix_socket, own_socket, _group(config)))
        else:
            await _reconcile(config, snapshotter, notifier, blocking)
        # What start-up loaded (the whole store) is left out of every later garbage
        # collection: a full one would walk each record again, for no cycle to find.
        gc.freeze()
        serving.service.open(snapshotter)
        metrics.is_alive.set({}, 1)
        where = config.address if serving.activated is None else socket_path(serving.activated)
        log.info("obdsnap serving on %s (root %s)", where, config.root)
        await notifier.ready(f"serving on {where}")
        await serving.stopping.wait()
        metrics.is_alive.set({}, 0)
        await _drain(serving.server, notifier, own_socket, blocking)
        await _close_before_go_away(snapshotter)
    finally:
        if own_socket is not None:
            await blocking(_remove_socket, own_socket)
        await serving.close()
        if exporter is not None:
            await exporter.stop()


async def _close_before_go_away(snapshotter: Snapshotter) -> None:
    """Close the snapshotter before the GOAWAY: from the GOAWAY on, a client that
    reconnects gives the next obdsnap one second to answer, and this one's exit is
    spent out of it. Bounded: a mutation stuck on a device must not keep back the
    GOAWAY, and with it the retry of the calls held (the close is waited for again
    after it)."""
    try:
        async with asyncio.timeout(DRAIN_TIMEOUT_S):
            await snapshotter.close()
    except TimeoutError:
        log.warning("snapshotter still closing after %.0fs; going away first", DRAIN_TIMEOUT_S)


async def _drain(
    server: GracefulServer, notifier: Notifier, own_socket: Path | None, blocking: BlockingRunner
) -> None:
    """Accept no more connections or calls, finish the calls started.

    The GOAWAY follows once they are done (``GracefulServer.go_away``).
    """
    calls = server.calls_in_flight
    log.info("shutting down: finishing %d calls in flight", calls)
    await notifier.stopping(f"draining {calls} calls")
    server.stop_accepting()
    if own_socket is not None:  # a socket from systemd stays: calls queue there meanwhile
        await blocking(_remove_socket, own_socket)
    try:
        async with asyncio.timeout(DRAIN_TIMEOUT_S):
            await server.calls_done()
    except TimeoutError:
        log.warning(
            "%d calls still running after %.0fs; cancelling them",
            server.calls_in_flight,
            DRAIN_TIMEOUT_S,
        )


async def _start_exporter(config: BootConfig, metrics: Metrics) -> Exporter | None:
    if not config.exporter.enable:
        return None
    exporter = Exporter(
        metrics, config.exporter.host, config.exporter.port, config.exporter.uri_prefix
    )
    await exporter.start()
    return exporter


async def _reconcile(
    config: BootConfig, snapshotter: Snapshotter, notifier: Notifier, blocking: BlockingRunner
) -> None:
    await notifier.status(f"reconciling {config.root}")
    started, clock = datetime.now(UTC), time.monotonic()
    report = await snapshotter.start()
    status = _serving_status(config, started, time.monotonic() - clock, report)
    try:
        await blocking(write_status, Layout(Path(config.root)).status_file, status)
    except OSError as exc:  # only `obdsnap status` reads it: serve all the same
        log.warning("could not write the status file: %s", exc)


def _serving_status(
    config: BootConfig, started: datetime, seconds: float, report: ReconcileReport
) -> ServingStatus:
    cleanup = report.cleanup
    reconcile = ReconcileSummary(
        started=started.isoformat(),
        finished=(started + timedelta(seconds=seconds)).isoformat(),
        seconds=round(seconds, 6),
        snapshots=report.snapshots,
        interrupted_operations=report.settled,
        creates_dropped=report.creates_dropped,
        directories_removed=cleanup.directories_removed,
        devices_released=cleanup.devices_released,
        mounts_removed=cleanup.mounts_removed,
        kept=cleanup.kept,
    )
    return ServingStatus(os.getpid(), __version__, config.address, _STARTED.isoformat(), reconcile)


def _activated_listener(config: BootConfig) -> socket.socket | None:
    """The socket from systemd's socket activation; obdsnap then never creates,
    chmods nor removes the socket file: the socket unit owns it."""
    try:
        listener = activated_listener()
    except ActivationError as exc:
        raise StartupError(str(exc)) from None
    if listener is None:
        return None
    where = socket_path(listener)
    if where != config.address:
        log.warning(
            "socket from systemd is %s, config address is %s: serving on %s",
            where,
            config.address,
            where,
        )
    if config.socket_group:
        log.warning(
            "socketGroup is not applied to the socket from systemd: "
            "set SocketGroup= in its socket unit"
        )
    return listener


def _group(config: BootConfig) -> int | None:
    return socket_group_id(config.socket_group) if config.socket_group else None


def lock_root(layout: Layout) -> IO[str]:
    """Blocking: hold ``root/obdsnap.lock`` for the life of the process.

    Two snapshotters on one root would corrupt each other's metadata and devices.
    """
    lock_file = open(layout.lock_file, "a+")  # noqa: SIM115 - held until the process ends
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock_file.seek(0)
        holder = lock_file.read().strip() or "another process"
        lock_file.close()
        raise StartupError(f"root {layout.root} is in use by obdsnap pid {holder}") from None
    lock_file.truncate(0)
    lock_file.write(f"{os.getpid()}\n")
    lock_file.flush()
    return lock_file


def _tcmu_backend(config: BootConfig) -> DeviceBackend:
    backend = TcmuBackend(Path(config.configfs_root), Path(config.sysfs_root), tenant=config.tenant)
    if backend.names.shares_prefix:
        log.warning(
            "tenant %d: its devices' WWNs start %s, as those of every tenant 100 apart do: "
            "two such snapshotters on this host collide on equal snapshot IDs",
            config.tenant,
            backend.names.wwn_prefix,
        )
    return backend


# Config "deviceBackend" -> how the backend is built (config.DEVICE_BACKENDS names them).
DEVICE_BACKENDS: dict[str, Callable[[BootConfig], DeviceBackend]] = {"tcmu": _tcmu_backend}


async def build_snapshotter(
    config: BootConfig,
    layout: Layout,
    store: MetaStore,
    blocking: BlockingRunner,
    metrics: Metrics | None = None,
) -> Snapshotter:
    tools = OverlaybdTools(Path(config.overlaybd_util_bin_dir))
    layers = BlockLayers(
        layout,
        tools,
        blocking,
        sparse=config.writable_layer_type == "sparse",
        insecure_registry=config.insecure_registry,
        turbo_oci=TurboOciSettings(
            config.turbo_fs_type, Path(config.proc_filesystems), config.modprobe_command
        ),
    )
    backend = DEVICE_BACKENDS[config.device_backend](config)
    options = SnapshotterOptions(
        rw_mode=RwMode(config.rw_mode),
        auto_remove_dev=config.auto_remove_dev,
        index_off=await blocking(overlay_has_index_param),
        async_remove=config.async_remove,
        seal_writable=config.writable_commit == "seal",
        docker_mode=config.docker_mode,
        default_fs_type=config.default_fs_type,
        quota=QuotaSettings.from_config(config),
    )
    metrics = metrics or Metrics()
    mounter = HostMounter()
    devices = DeviceManager(
        backend, layout, mounter, blocking, store, config.max_concurrent_device_ops, metrics
    )

    async def count_attached() -> int:
        return len(await devices.attached_ids() & store.ids())

    metrics.watch_devices(devices.attaching, count_attached)
    metrics.watch_store(store)
    return Snapshotter(layout, store, layers, devices, mounter, options, blocking)


def open_unix_socket(path: Path, group: int | None = None) -> socket.socket:
    """Blocking: a listening unix socket at ``path`` (mode 0600, its directory 0700).

    With ``group``, the socket is 0660 and owned by that group.

    A stale socket from an earlier run is replaced; any other kind of file in
    the way is an error, never removed.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        existing = path.lstat()
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(existing.st_mode):
            raise StartupError(f"{path} exists and is not a socket; not removing it")
        path.unlink()
    # Bound and listening under a temporary name first: the socket file appears
    # under its real name only once connections are accepted.
    staging = path.with_name(f".s{os.getpid()}")  # short: socket paths are limited to 107 bytes
    staging.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    previous_umask = os.umask(0o177)  # the socket file is born 0600, with no window
    try:
        sock.bind(str(staging))
        if group is not None:
            os.chown(staging, -1, group)
            os.chmod(staging, 0o660)
        sock.listen(LISTEN_BACKLOG)
        os.rename(staging, path)
    except OSError as exc:
        sock.close()
        staging.unlink(missing_ok=True)
        raise StartupError(f"cannot listen on {path}: {exc.strerror}") from exc
    finally:
        os.umask(previous_umask)
    sock.setblocking(False)
    return sock


def _remove_socket(path: Path) -> None:
    try:
        if stat.S_ISSOCK(path.lstat().st_mode):
            path.unlink()
    except FileNotFoundError:
        pass


def _install_signal_handlers() -> asyncio.Event:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    loop.add_signal_handler(signal.SIGUSR1, dump_stacks)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    return stopping


def dump_stacks() -> None:
    """Log the stack of every thread and every asyncio task (SIGUSR1)."""
    out = io.StringIO()
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    for ident, frame in sys._current_frames().items():
        out.write(f"--- thread {names.get(ident, '?')} ({ident})\n")
        out.write("".join(traceback.format_stack(frame)))
    for task in asyncio.all_tasks():
        out.write(f"--- task {task.get_name()}: {task.get_coro()!r}\n")
        task.print_stack(file=out)
    log.warning("stack dump (SIGUSR1):\n%s", out.getvalue())
