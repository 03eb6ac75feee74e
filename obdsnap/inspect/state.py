"""What a root holds, read as it is: metadata (SQLite, read-only), configfs, sysfs, mounts.

Nothing here creates, changes or locks anything, so it is safe while obdsnap
serves: SQLite's WAL lets a reader see the last committed state while obdsnap
writes. A read-only reader still takes a read mark in ``metadata.db-shm``, as
every SQLite reader must; when obdsnap is stopped and there is no ``-wal``
file, the database is opened immutable, so that no ``-wal``/``-shm`` is created.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from obdsnap import filters
from obdsnap.config import BootConfig
from obdsnap.device.tcmu import TcmuBackend, dev_config, info_config, read_result
from obdsnap.errors import SnapshotError
from obdsnap.layout import Layout
from obdsnap.mountinfo import read_mounts
from obdsnap.overlaybd.storage_type import StorageType, detect_storage_type
from obdsnap.runstatus import ServingStatus, read_status
from obdsnap.snapshotter import info_fields
from obdsnap.storage.model import Intent, Kind, Record, Usage
from obdsnap.storage.sqlite import (
    SELECT_INTENTS,
    SELECT_RECORDS,
    intent_from_row,
    record_from_row,
)
from obdsnap.usage import measured_usage


class InspectError(Exception):
    """The root cannot be inspected; the message says why, in one line."""


@dataclass(frozen=True)
class Metadata:
    records: list[Record]
    intents: list[Intent]

    def by_id(self) -> dict[int, Record]:
        return {record.id: record for record in self.records}


@dataclass(frozen=True)
class SnapshotRow:
    record: Record
    storage_type: str
    device: str  # the backstore mark: the device an attach finished with
    mountpoint: str
    mounted: bool
    usage: Usage | None


@dataclass(frozen=True)
class DeviceRow:
    snapshot_id: int
    key: str  # "" when no snapshot of this root has the ID
    target: bool  # a configfs target exists
    device_node: str  # from the LUN's SCSI address in sysfs
    ours: bool  # the target was set up from this snapshot's config
    state: str  # attached, attaching, failed, orphan, missing, foreign
    mountpoint: str
    mounted: bool
    result: str  # the last line of overlaybd's result file

    @property
    def orphan(self) -> bool:
        """A device of this root that no snapshot owns, or a mark with no device."""
        return self.state in ("orphan", "missing")


@dataclass(frozen=True)
class IntentRow:
    intent: Intent
    key: str
    age_seconds: float


@dataclass(frozen=True)
class Status:
    root: str
    address: str
    serving: bool
    health: str
    process: ServingStatus | None
    snapshots: dict[str, int]
    devices: dict[str, int]
    intents_open: int


class Inspector:
    """Reads one root under one boot config."""

    def __init__(self, config: BootConfig) -> None:
        self.config = config
        self.layout = Layout.resolved(config.root)  # the paths the server emitted
        # Its thread pool starts no thread until something is submitted; only its
        # synchronous readers are used here.
        self._tcmu = TcmuBackend(
            Path(config.configfs_root), Path(config.sysfs_root), tenant=config.tenant
        )

    # ------------------------------------------------------------------ metadata

    def metadata(self) -> Metadata:
        db_path = self.layout.metadata_db
        if not self.layout.root.is_dir():
            raise InspectError(f"root {self.layout.root} does not exist")
        if not db_path.is_file():
            raise InspectError(f"{db_path} does not exist: obdsnap has not used this root yet")
        try:
            with contextlib.closing(_connect_read_only(db_path)) as db:
                records = [record_from_row(row) for row in db.execute(SELECT_RECORDS)]
                intents = [intent_from_row(row) for row in db.execute(SELECT_INTENTS)]
        except (sqlite3.Error, ValueError) as exc:
            raise InspectError(f"{db_path}: {exc}") from None
        return Metadata(records, intents)

    # ------------------------------------------------------------------ ls

    def snapshots(
        self, metadata: Metadata, filter_strings: Sequence[str], *, usage: bool
    ) -> list[SnapshotRow]:
        try:
            selected = filters.parse_all(filter_strings)
        except SnapshotError as exc:
            raise InspectError(f"bad filter: {exc}") from None
        mounts = _mounted_points()
        rows = []
        for record in sorted(metadata.records, key=lambda r: r.id):
            if selected.match(info_fields(record.info)):
                rows.append(self._snapshot_row(record, mounts, usage=usage))
        return rows

    def _snapshot_row(self, record: Record, mounts: set[str], *, usage: bool) -> SnapshotRow:
        storage: StorageType | None = None
        try:
            storage = detect_storage_type(record.info.labels, self.layout, record.id)
            storage_type = storage.value
        except OSError as exc:
            storage_type = f"unknown ({exc.strerror})"
        block = self.layout.block(record.id)
        mountpoint = block.mountpoint
        return SnapshotRow(
            record,
            storage_type,
            _read_line(block.mark),
            str(mountpoint),
            str(mountpoint) in mounts,
            self._usage(record, storage) if usage else None,
        )

    def _usage(self, record: Record, storage: StorageType | None) -> Usage | None:
        """As Usage answers (DESIGN-v1 §10); None where it fails: the type is unknown."""
        return None if storage is None else measured_usage(record, storage, self.layout)

    # ------------------------------------------------------------------ devices

    def devices(self, metadata: Metadata) -> list[DeviceRow]:
        by_id = metadata.by_id()
        targets = self._tcmu.target_ids()
        marked = {i for i in by_id if self.layout.block(i).mark.exists()}
        failed = {i for i in by_id if self._result(i).startswith("failed")}
        mounts = _mounted_points()
        return [
            self._device_row(snapshot_id, by_id.get(snapshot_id), snapshot_id in targets, mounts)
            for snapshot_id in sorted(targets | marked | failed)
        ]

    def _device_row(
        self, snapshot_id: int, record: Record | None, target: bool, mounts: set[str]
    ) -> DeviceRow:
        block = self.layout.block(snapshot_id)
        configured = info_config(self._tcmu.read_info(snapshot_id) or "") if target else None
        ours = target and record is not None and configured == dev_config(block.config)
        under_root = configured is not None and configured.startswith(
            dev_config(self.layout.snapshots) + "/"
        )
        mark = _read_line(block.mark)
        result = self._result(snapshot_id) if record is not None or under_root else ""
        device_node = self._tcmu.find_disk(snapshot_id) if target else None
        mountpoint = block.mountpoint
        return DeviceRow(
            snapshot_id,
            record.key if record is not None else "",
            target,
            str(device_node) if device_node else "",
            ours,
            _device_state(target, ours, under_root, mark, result, configured),
            str(mountpoint),
            str(mountpoint) in mounts,
            result,
        )

    def _result(self, snapshot_id: int) -> str:
        text = read_result(self.layout.block(snapshot_id).result_file)
        lines = [line for line in text.splitlines() if line.strip()]
        return lines[-1].strip() if lines else ""

    # ------------------------------------------------------------------ intents

    def intents(self, metadata: Metadata, now: datetime | None = None) -> list[IntentRow]:
        moment = now or datetime.now(UTC)
        by_id = metadata.by_id()
        return [
            IntentRow(
                intent,
                record.key if (record := by_id.get(intent.snapshot_id)) else "",
                (moment - intent.started_at).total_seconds(),
            )
            for intent in sorted(metadata.intents, key=lambda i: (i.started_at, i.snapshot_id))
        ]

    # ------------------------------------------------------------------ status

    def status(self, metadata: Metadata, serving: bool, health: str) -> Status:
        kinds = Counter(record.kind.label for record in metadata.records)
        devices = self.devices(metadata)
        try:
            process = read_status(self.layout.status_file)
        except (OSError, ValueError):
            process = None
        return Status(
            root=str(self.layout.root),
            address=self.config.address,
            serving=serving,
            health=health,
            process=process,
            snapshots={kind.label: kinds[kind.label] for kind in _KINDS},
            devices={
                "targets": sum(row.target for row in devices),
                "ours": sum(row.ours for row in devices),
                "orphans": sum(row.orphan for row in devices),
                "failed": sum(row.state == "failed" for row in devices),
            },
            intents_open=len(metadata.intents),
        )


_KINDS = (Kind.ACTIVE, Kind.VIEW, Kind.COMMITTED)


def _device_state(
    target: bool, ours: bool, under_root: bool, mark: str, result: str, configured: str | None
) -> str:
    if result.startswith("failed"):
        return "failed"
    if not target:
        return "missing" if mark else "detached"
    if ours:
        return "attached" if mark else "attaching"
    if under_root or configured is None:
        return "orphan"
    return "foreign"


def _connect_read_only(path: Path) -> sqlite3.Connection:
    """Read-only; immutable when no -wal file says a writer may be at work.

    Opening a WAL database read-only creates its -wal and -shm files when they are
    missing (obdsnap removes both when it stops cleanly); an immutable open does
    not. Without a -wal file every committed change is in the main file.
    """
    wal = path.with_name(path.name + "-wal")
    mode = "mode=ro" if wal.exists() else "mode=ro&immutable=1"
    db = sqlite3.connect(f"{path.as_uri()}?{mode}", uri=True)
    db.execute("PRAGMA query_only=ON")
    return db


def _mounted_points() -> set[str]:
    return {entry.mount_point for entry in read_mounts()}


def _read_line(path: Path) -> str:
    try:
        return path.read_text(errors="replace").strip()
    except (FileNotFoundError, NotADirectoryError):
        return ""
