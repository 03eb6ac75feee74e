"""obdsnap's metrics exporter as a test sees it: scraped over HTTP, parsed by prometheus_client."""

from __future__ import annotations

import asyncio
import socket
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class Sample:
    name: str
    labels: Mapping[str, str]
    value: float


class Exposition:
    """The samples of one scrape, by sample name (``x_total``, ``x_bucket``, ``x_count``...)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: dict[str, list[Sample]] = {}
        self.types: dict[str, str] = {}
        for family in text_string_to_metric_families(text):
            self.types[family.name] = family.type
            for sample in family.samples:
                entry = Sample(sample.name, dict(sample.labels), float(sample.value))
                self.samples.setdefault(sample.name, []).append(entry)

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples of ``name`` whose labels include ``labels``; 0 if none."""
        return sum(
            sample.value
            for sample in self.samples.get(name, [])
            if all(sample.labels.get(key) == wanted for key, wanted in labels.items())
        )

    def by_label(self, name: str, label: str) -> dict[str, float]:
        return {sample.labels[label]: sample.value for sample in self.samples.get(name, [])}


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as reply:
        body: bytes = reply.read()
        return body.decode()


async def scrape(port: int, path: str = "/metrics") -> Exposition:
    text = await asyncio.to_thread(fetch, f"http://127.0.0.1:{port}{path}")
    return Exposition(text)
