"""Prometheus metrics of the original snapshotter, and the HTTP exporter that serves them."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aioprometheus.collectors import Counter, Gauge, Histogram, Registry

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


class Metrics:
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
        # aioprometheus keys series by their label dict; reuse one dict per function.
        self._labels = {name: {"function": name} for name in FUNCTIONS}
        self.is_alive.set({}, 0)

    @asynccontextmanager
    async def observe(self, function: str) -> AsyncIterator[None]:
        """Time a call; count it as an error if it raises."""
        labels = self._labels[function]
        start = time.perf_counter()
        try:
            yield
        except BaseException:
            self.errors.inc(labels)
            raise
        finally:
            self.latency.observe(labels, time.perf_counter() - start)


class Exporter:
    """Serves the registry over HTTP at ``uri_prefix`` on ``host:port``."""

    def __init__(self, metrics: Metrics, host: str, port: int, uri_prefix: str) -> None:
        # Imported here: it pulls in aiohttp (~14 MiB resident), needed only with the exporter on.
        from aioprometheus.service import Service

        self._service = Service(registry=metrics.registry)
        self._host, self._port, self._uri_prefix = host, port, uri_prefix

    async def start(self) -> None:
        await self._service.start(addr=self._host, port=self._port, metrics_url=self._uri_prefix)
        log.info("metrics exporter on http://%s:%d%s", self._host, self._port, self._uri_prefix)

    async def stop(self) -> None:
        await self._service.stop()
