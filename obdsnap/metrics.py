"""Prometheus metrics, and the HTTP exporter that serves them.

The first three series are the Go snapshotter's, unchanged: ``is_alive``,
``grpc_error_count{function}`` (every call that did not answer OK, including the
NOT_FOUND and ALREADY_EXISTS that containerd expects) and
``grpc_latency_seconds{function}``. To alert on errors use
``obdsnap_requests_total{function,code}``, which tells the expected answers
from the failures by their gRPC status.

The others show how busy the node is: calls and device operations running and
waiting at their caps, attach times and failures, devices, intents and
snapshots, metadata commits, and the standard ``process_*`` series. Gauges of
state (process, queues, snapshots) are read when the exporter is scraped.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from aioprometheus.collectors import Counter, Gauge, Histogram, Registry
from grpclib import GRPCError
from grpclib.const import Status

from obdsnap import __version__
from obdsnap.device.backend import ATTACH_FAILURE_REASONS, attach_failure_reason
from obdsnap.storage import Intent, Kind, Record

log = logging.getLogger(__name__)

# The Go snapshotter's function names: List is reported as "Walk".
FUNCTIONS = (
    "Stat",
    "Update",
    "Usage",
    "Prepare",
    "View",
    "Mounts",
    "Commit",
    "Remove",
    "Walk",
    "Cleanup",
)
LATENCY_BUCKETS = tuple(0.0001 * 2**i for i in range(20))
ATTACH_BUCKETS = tuple(0.005 * 2**i for i in range(16))  # 5 ms .. 164 s
COMMIT_BATCH_BUCKETS = tuple(float(2**i) for i in range(11))  # 1 .. 1024 writes
COMMIT_SECONDS_BUCKETS = tuple(0.0005 * 2**i for i in range(14))  # 0.5 ms .. 4 s
SNAPSHOT_KINDS = {Kind.VIEW: "view", Kind.ACTIVE: "active", Kind.COMMITTED: "committed"}


class Counted(Protocol):
    """A cap: how many hold it and how many wait (locks.CountedSemaphore)."""

    @property
    def in_flight(self) -> int: ...

    @property
    def waiting(self) -> int: ...


class SnapshotState(Protocol):
    """The metadata in memory (storage.MetaStore)."""

    def records(self) -> list[Record]: ...

    def intents(self) -> list[Intent]: ...


class Metrics:
    """The registry. It observes the calls, the attaches (device.manager.AttachObserver)
    and the metadata commits (storage.writer.CommitObserver), and reads the
    sources it is told to watch when scraped."""

    def __init__(self) -> None:
        self.registry = Registry()
        self.is_alive = Gauge("is_alive", "1 while the snapshotter serves", registry=self.registry)
        self.errors = Counter(
            "grpc_error_count", "RPCs that returned an error", registry=self.registry
        )
        self.latency = Histogram(
            "grpc_latency_seconds",
            "RPC latency in seconds",
            registry=self.registry,
            buckets=LATENCY_BUCKETS,
        )
        self._process = ProcessGauges(self.registry)
        self._requests = Counter(
            "obdsnap_requests_total",
            "Answered calls by function and gRPC status code (OK for success)",
            registry=self.registry,
        )
        self._queues = {
            name: (
                _gauge(self.registry, f"obdsnap_{name}_in_flight", f"{what} running"),
                _gauge(self.registry, f"obdsnap_{name}_waiting", f"{what} waiting at {cap}"),
            )
            for name, what, cap in (
                ("requests", "Calls", "maxConcurrentRequests"),
                ("device_ops", "Device set-ups", "maxConcurrentDeviceOps"),
            )
        }
        self._attach_seconds = Histogram(
            "obdsnap_attach_seconds",
            "Seconds a fresh attach took, from its turn at maxConcurrentDeviceOps to its mark",
            registry=self.registry,
            buckets=ATTACH_BUCKETS,
        )
        self._attach_failures = Counter(
            "obdsnap_attach_failures_total",
            "Failed attaches by reason: open_failed, timeout, busy, kernel",
            registry=self.registry,
        )
        self._devices_attached = _gauge(
            self.registry, "obdsnap_devices_attached", "Snapshots with a device set up"
        )
        self._intents_open = _gauge(
            self.registry, "obdsnap_intents_open", "Device and commit operations under way"
        )
        self._snapshots = Gauge(
            "obdsnap_snapshots",
            "Snapshots by kind (view, active, committed)",
            registry=self.registry,
        )
        self._commit_batch = Histogram(
            "obdsnap_metadata_commit_batch_size",
            "Writes per metadata transaction",
            registry=self.registry,
            buckets=COMMIT_BATCH_BUCKETS,
        )
        self._commit_seconds = Histogram(
            "obdsnap_metadata_commit_seconds",
            "Seconds a metadata transaction took to commit and fsync",
            registry=self.registry,
            buckets=COMMIT_SECONDS_BUCKETS,
        )
        build_info = Gauge("obdsnap_build_info", "obdsnap's version", registry=self.registry)
        build_info.set({"version": __version__}, 1)
        # aioprometheus keys series by their label dict; reuse one dict per label set.
        self._labels = {name: {"function": name} for name in FUNCTIONS}
        self._answer_labels: dict[tuple[str, str], dict[str, str]] = {}
        self._reason_labels = {reason: {"reason": reason} for reason in ATTACH_FAILURE_REASONS}
        self._kind_labels = {kind: {"kind": name} for kind, name in SNAPSHOT_KINDS.items()}
        for labels in self._reason_labels.values():
            self._attach_failures.set(labels, 0)
        self.is_alive.set({}, 0)
        self._counted: dict[str, Counted] = {}
        self._store: SnapshotState | None = None
        self._count_devices: Callable[[], Awaitable[int]] | None = None

    # ------------------------------------------------------------------ sources

    def watch_requests(self, gate: Counted) -> None:
        self._counted["requests"] = gate

    def watch_devices(self, ops: Counted, count_attached: Callable[[], Awaitable[int]]) -> None:
        self._counted["device_ops"] = ops
        self._count_devices = count_attached

    def watch_store(self, store: SnapshotState) -> None:
        self._store = store

    async def refresh(self) -> None:
        """Read every watched source into its gauges (before a scrape is rendered)."""
        self._process.update()
        for name, (in_flight, waiting) in self._queues.items():
            counted = self._counted.get(name)
            in_flight.set({}, counted.in_flight if counted else 0)
            waiting.set({}, counted.waiting if counted else 0)
        if self._store is not None:
            self._count_snapshots(self._store.records())
            self._intents_open.set({}, len(self._store.intents()))
        if self._count_devices is not None:
            try:
                self._devices_attached.set({}, await self._count_devices())
            except OSError as exc:
                log.warning("metrics: cannot count attached devices: %s", exc)

    def _count_snapshots(self, records: Iterable[Record]) -> None:
        counts = dict.fromkeys(SNAPSHOT_KINDS, 0)
        for record in records:
            if record.kind in counts:
                counts[record.kind] += 1
        for kind, labels in self._kind_labels.items():
            self._snapshots.set(labels, counts[kind])

    # ------------------------------------------------------------------ calls

    def answered(self, function: str, error: BaseException | None) -> None:
        """Count a call by the status it was answered with (``error``: how it failed, if it did)."""
        self._requests.inc(self._answer_label(function, _status_name(error)))

    def _answer_label(self, function: str, code: str) -> dict[str, str]:
        labels = self._answer_labels.get((function, code))
        if labels is None:
            labels = self._answer_labels[(function, code)] = {"function": function, "code": code}
        return labels

    def timed(self, function: str, seconds: float, *, failed: bool) -> None:
        """A call ran for ``seconds`` after its turn at the gate; ``failed``: it raised."""
        labels = self._labels[function]
        if failed:
            self.errors.inc(labels)
        self.latency.observe(labels, seconds)

    # ------------------------------------------------------------------ observers

    def attached(self, seconds: float) -> None:
        self._attach_seconds.observe({}, seconds)

    def attach_failed(self, error: Exception) -> None:
        self._attach_failures.inc(self._reason_labels[attach_failure_reason(error)])

    def committed(self, writes: int, seconds: float) -> None:
        self._commit_batch.observe({}, writes)
        self._commit_seconds.observe({}, seconds)


def _status_name(error: BaseException | None) -> str:
    if error is None:
        return Status.OK.name
    if isinstance(error, GRPCError):
        return error.status.name
    if isinstance(error, asyncio.CancelledError):
        return Status.CANCELLED.name
    return Status.UNKNOWN.name


@dataclass(frozen=True)
class ProcessStats:
    cpu_seconds: float
    resident_bytes: int
    virtual_bytes: int
    open_fds: int
    max_fds: int
    start_time_seconds: float


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE_SIZE = resource.getpagesize()


def read_process_stats(proc: str = "/proc") -> ProcessStats:
    """The standard process metrics of this process, from procfs (a few small reads)."""
    with open(f"{proc}/self/stat", "rb") as stat_file:
        stat = stat_file.read()
    # Fields after the command name, which may hold spaces: state is field 3 of proc(5).
    fields = stat[stat.rindex(b")") + 2 :].split()
    utime, stime, start_ticks = int(fields[11]), int(fields[12]), int(fields[19])
    return ProcessStats(
        cpu_seconds=(utime + stime) / _CLOCK_TICKS,
        resident_bytes=int(fields[21]) * _PAGE_SIZE,
        virtual_bytes=int(fields[20]),
        open_fds=len(os.listdir(f"{proc}/self/fd")),
        max_fds=resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        start_time_seconds=_boot_time(proc) + start_ticks / _CLOCK_TICKS,
    )


def _boot_time(proc: str) -> float:
    with open(f"{proc}/stat", "rb") as stat_file:
        for line in stat_file:
            if line.startswith(b"btime "):
                return float(line.split()[1])
    raise OSError(f"no btime in {proc}/stat")


class ProcessGauges:
    """``process_*`` as the Prometheus clients name them."""

    def __init__(self, registry: Registry) -> None:
        self._cpu = Counter(
            "process_cpu_seconds_total", "User and system CPU seconds", registry=registry
        )
        self._resident = _gauge(registry, "process_resident_memory_bytes", "Resident memory")
        self._virtual = _gauge(registry, "process_virtual_memory_bytes", "Virtual memory size")
        self._open_fds = _gauge(registry, "process_open_fds", "Open file descriptors")
        self._max_fds = _gauge(registry, "process_max_fds", "Maximum open file descriptors")
        self._start_time = _gauge(
            registry, "process_start_time_seconds", "Start time since the epoch, in seconds"
        )

    def update(self) -> None:
        try:
            stats = read_process_stats()
        except (OSError, ValueError, IndexError) as exc:
            log.warning("metrics: cannot read /proc/self: %s", exc)
            return
        self._cpu.set({}, stats.cpu_seconds)
        self._resident.set({}, stats.resident_bytes)
        self._virtual.set({}, stats.virtual_bytes)
        self._open_fds.set({}, stats.open_fds)
        self._max_fds.set({}, stats.max_fds)
        self._start_time.set({}, stats.start_time_seconds)


def _gauge(registry: Registry, name: str, doc: str) -> Gauge:
    gauge = Gauge(name, doc, registry=registry)
    gauge.set({}, 0)
    return gauge


class Exporter:
    """Serves the registry over HTTP at ``uri_prefix`` on ``host:port``."""

    def __init__(self, metrics: Metrics, host: str, port: int, uri_prefix: str) -> None:
        # Imported here: it pulls in aiohttp (~14 MiB resident), needed only with the exporter on.
        from aioprometheus.service import Service

        class RefreshingService(Service):
            async def handle_metrics(self, request: Any) -> Any:
                await metrics.refresh()
                return await super().handle_metrics(request)

        self._service = RefreshingService(registry=metrics.registry)
        self._host, self._port, self._uri_prefix = host, port, uri_prefix

    async def start(self) -> None:
        await self._service.start(addr=self._host, port=self._port, metrics_url=self._uri_prefix)
        log.info("metrics exporter on http://%s:%d%s", self._host, self._port, self._uri_prefix)

    async def stop(self) -> None:
        await self._service.stop()
