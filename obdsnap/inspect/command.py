"""The inspection commands, from parsed arguments to what they print."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import uvloop

from obdsnap.config import BootConfig
from obdsnap.health import check_health
from obdsnap.inspect import render
from obdsnap.inspect.state import Inspector

COMMANDS = ("status", "ls", "devices", "intents")
STATUS_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class Request:
    command: str
    as_json: bool = False
    filters: Sequence[str] = ()
    usage: bool = False
    timeout_s: float = STATUS_TIMEOUT_S


def run(config: BootConfig, request: Request) -> str:
    """What the command prints; InspectError (one line) when the root cannot be read."""
    inspector = Inspector(config)
    metadata = inspector.metadata()
    if request.command == "ls":
        rows = inspector.snapshots(metadata, request.filters, usage=request.usage)
        return _out(request, render.snapshots_json(rows), lambda: render.snapshots_table(rows))
    if request.command == "devices":
        devices = inspector.devices(metadata)
        return _out(request, render.devices_json(devices), lambda: render.devices_table(devices))
    if request.command == "intents":
        intents = inspector.intents(metadata)
        return _out(request, render.intents_json(intents), lambda: render.intents_table(intents))
    health = uvloop.run(check_health(config.address, request.timeout_s))
    status = inspector.status(metadata, health.healthy, health.detail)
    return _out(request, render.status_json(status), lambda: render.status_text(status))


def _out(request: Request, document: dict[str, object], text: render.TextMaker) -> str:
    return render.to_json(document) if request.as_json else text()
