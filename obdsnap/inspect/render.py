"""Tables for people, JSON for scripts: the output of the inspection commands.

The JSON shapes are stable (README, "Inspecting a node"): keys are only ever added.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from obdsnap import __version__
from obdsnap.inspect.state import DeviceRow, IntentRow, SnapshotRow, Status
from obdsnap.runstatus import ServingStatus

EMPTY = "-"
TextMaker = Callable[[], str]


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Aligned columns under a header; the last column is not padded."""
    cells = [[cell or EMPTY for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in [list(headers), *cells]) for i in range(len(headers))]
    lines = []
    for row in [list(headers), *cells]:
        padded = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=False)]
        lines.append("  ".join([*padded, row[-1]]).rstrip())
    return "\n".join(lines) + "\n"


def to_json(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2) + "\n"


def yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def age_text(seconds: float) -> str:
    """A short age: 42s, 5m07s, 3h12m."""
    whole = max(0, int(seconds))
    if whole < 120:
        return f"{whole}s"
    if whole < 7200:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole // 60 % 60:02d}m"


def size_text(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------- ls


def snapshots_json(rows: Sequence[SnapshotRow]) -> dict[str, Any]:
    return {"snapshots": [_snapshot_json(row) for row in rows]}


def _snapshot_json(row: SnapshotRow) -> dict[str, Any]:
    record = row.record
    return {
        "key": record.key,
        "id": record.id,
        "kind": record.kind.label,
        "parent": record.parent,
        "storageType": row.storage_type,
        "rwMode": record.rw_mode,
        "ready": record.ready,
        "device": row.device,
        "mountpoint": row.mountpoint,
        "mounted": row.mounted,
        "usage": (
            None if row.usage is None else {"size": row.usage.size, "inodes": row.usage.inodes}
        ),
    }


def snapshots_table(rows: Sequence[SnapshotRow]) -> str:
    headers = ["ID", "KIND", "STORAGE", "RW MODE", "DEVICE", "MOUNTED"]
    with_usage = any(row.usage is not None for row in rows)
    if with_usage:
        headers += ["SIZE", "INODES"]
    headers += ["KEY", "PARENT"]
    body = []
    for row in rows:
        record = row.record
        cells = [
            str(record.id),
            record.kind.label + ("" if record.ready else " (not ready)"),
            row.storage_type,
            record.rw_mode,
            row.device,
            yes_no(row.mounted),
        ]
        if with_usage:
            usage = row.usage
            cells += [size_text(usage.size), str(usage.inodes)] if usage else [EMPTY, EMPTY]
        body.append([*cells, record.key, record.parent])
    return table(headers, body)


# ---------------------------------------------------------------------- devices


def devices_json(rows: Sequence[DeviceRow]) -> dict[str, Any]:
    return {
        "devices": [
            {
                "snapshotId": row.snapshot_id,
                "key": row.key,
                "target": row.target,
                "deviceNode": row.device_node,
                "ours": row.ours,
                "state": row.state,
                "orphan": row.orphan,
                "mountpoint": row.mountpoint,
                "mounted": row.mounted,
                "result": row.result,
            }
            for row in rows
        ]
    }


def devices_table(rows: Sequence[DeviceRow]) -> str:
    headers = ["ID", "TARGET", "DEVICE", "OURS", "STATE", "MOUNTED", "KEY", "RESULT"]
    body = [
        [
            str(row.snapshot_id),
            f"dev_{row.snapshot_id}" if row.target else EMPTY,
            row.device_node,
            yes_no(row.ours),
            row.state.upper() if row.orphan else row.state,
            yes_no(row.mounted),
            row.key,
            row.result,
        ]
        for row in rows
    ]
    return table(headers, body)


# ---------------------------------------------------------------------- intents


def intents_json(rows: Sequence[IntentRow]) -> dict[str, Any]:
    return {
        "intents": [
            {
                "snapshotId": row.intent.snapshot_id,
                "key": row.key,
                "operation": row.intent.operation.value,
                "startedAt": row.intent.started_at.isoformat(),
                "ageSeconds": round(row.age_seconds, 3),
            }
            for row in rows
        ]
    }


def intents_table(rows: Sequence[IntentRow]) -> str:
    headers = ["ID", "OPERATION", "STARTED", "AGE", "KEY"]
    body = [
        [
            str(row.intent.snapshot_id),
            row.intent.operation.value,
            row.intent.started_at.isoformat(timespec="seconds"),
            age_text(row.age_seconds),
            row.key,
        ]
        for row in rows
    ]
    return table(headers, body)


# ---------------------------------------------------------------------- status


def status_json(status: Status) -> dict[str, Any]:
    process = status.process
    return {
        "version": __version__,
        "root": status.root,
        "address": status.address,
        "serving": status.serving,
        "health": status.health,
        "process": None if process is None else process.as_json(),
        "snapshots": dict(status.snapshots),
        "devices": dict(status.devices),
        "intentsOpen": status.intents_open,
    }


def status_text(status: Status) -> str:
    process = status.process
    serving = "serving" if status.serving else "not serving"
    lines = [
        ("version", __version__),
        ("root", status.root),
        ("socket", f"{status.address} ({serving}: {status.health})"),
        ("snapshots", _counts(status.snapshots)),
        ("devices", _counts(status.devices)),
        ("intents", f"{status.intents_open} open"),
    ]
    if process is None:
        lines.append(("last reconcile", "none recorded (no status file)"))
    else:
        reconcile = process.reconcile
        lines.append(("process", f"pid {process.pid}, obdsnap {process.version}"))
        lines.append(("last reconcile", f"{reconcile.finished} ({reconcile.seconds:.3f}s)"))
        lines.append(("reconcile did", _did(process)))
    width = max(len(name) for name, _ in lines)
    return "".join(f"{name + ':':<{width + 1}} {value}\n" for name, value in lines)


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{value} {name}" for name, value in counts.items())


def _did(process: ServingStatus) -> str:
    reconcile = process.reconcile
    parts = [
        f"{reconcile.snapshots} snapshots",
        f"{len(reconcile.interrupted_operations)} interrupted operations settled",
        f"{reconcile.creates_dropped} unfinished creates dropped",
        f"{reconcile.directories_removed} orphan directories removed",
        f"{reconcile.devices_released} orphan devices released",
        f"{reconcile.mounts_removed} stray mounts removed",
    ]
    if reconcile.kept:
        parts.append(f"kept (busy) {', '.join(reconcile.kept)}")
    return "; ".join(parts)
