"""The commit intent seen from outside: open intents in the metadata, planted crashes, and an
overlaybd-commit slow enough to kill obdsnap while it runs."""

from __future__ import annotations

import contextlib
import shlex
import sqlite3
from pathlib import Path

from support.block import Obd
from support.tool_faults import replaced_tool


def open_intents(obd: Obd) -> list[tuple[int, str]]:
    with contextlib.closing(sqlite3.connect(obd.root / "metadata.db")) as db:
        rows = db.execute("SELECT snapshot_id, operation FROM intents ORDER BY snapshot_id")
        return [(int(snapshot_id), str(operation)) for snapshot_id, operation in rows]


def plant_intent(obd: Obd, snapshot_id: int, operation: str) -> None:
    """What a crash inside the operation leaves in the metadata (the server is down)."""
    with contextlib.closing(sqlite3.connect(obd.root / "metadata.db")) as db:
        db.execute("INSERT INTO intents VALUES (?, ?, 0)", (snapshot_id, operation))
        db.commit()


def slow_overlaybd_commit(
    obd: Obd, started: Path, seconds: float = 60
) -> contextlib.AbstractContextManager[Path]:
    """overlaybd-commit touches ``started``, then waits ``seconds`` before it does anything."""
    body = f'touch {shlex.quote(str(started))}\nsleep {seconds}\nexec "$REAL" "$@"\n'
    return replaced_tool(obd.sim.tools_dir, "overlaybd-commit", body)
