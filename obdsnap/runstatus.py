"""``root/status.json``: the serving process and what its start-up reconcile did.

The server writes it once the reconcile is done (temp file + rename, so a reader
sees the old file or the new one, never half of one); ``obdsnap status`` reads it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from obdsnap.fsutil import write_file_no_follow

STATUS_VERSION = 1


@dataclass(frozen=True)
class ReconcileSummary:
    started: str  # ISO 8601, UTC
    finished: str
    seconds: float
    snapshots: int
    interrupted_operations: list[str] = field(default_factory=list)
    creates_dropped: int = 0
    directories_removed: int = 0
    devices_released: int = 0
    mounts_removed: int = 0
    kept: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ServingStatus:
    pid: int
    version: str
    address: str
    started: str  # when the process started serving, ISO 8601 UTC
    reconcile: ReconcileSummary

    def as_json(self) -> dict[str, Any]:
        return {"statusVersion": STATUS_VERSION, **asdict(self)}


def write_status(path: Path, status: ServingStatus) -> None:
    """Blocking: replace the status file atomically."""
    temporary = path.with_name(f".{path.name}.tmp")
    write_file_no_follow(temporary, json.dumps(status.as_json(), indent=2).encode() + b"\n")
    os.replace(temporary, path)


def read_status(path: Path) -> ServingStatus | None:
    """Blocking: the status file, None if there is none; ValueError if it cannot be read as one."""
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    try:
        reconcile = ReconcileSummary(**document["reconcile"])
        return ServingStatus(
            int(document["pid"]),
            str(document["version"]),
            str(document["address"]),
            str(document["started"]),
            reconcile,
        )
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a status file: {exc}") from None
