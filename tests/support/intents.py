"""The commit intent seen from outside: open intents in the metadata, planted crashes, and an
overlaybd-commit slow enough to kill obdsnap while it runs."""

from __future__ import annotations

import contextlib
import shlex
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from support.block import Obd


def open_intents(obd: Obd) -> list[tuple[int, str]]:
    with contextlib.closing(sqlite3.connect(obd.root / "metadata.db")) as db:
        rows = db.execute("SELECT snapshot_id, operation FROM intents ORDER BY snapshot_id")
        return [(int(snapshot_id), str(operation)) for snapshot_id, operation in rows]


def plant_intent(obd: Obd, snapshot_id: int, operation: str) -> None:
    """What a crash inside the operation leaves in the metadata (the server is down)."""
    with contextlib.closing(sqlite3.connect(obd.root / "metadata.db")) as db:
        db.execute("INSERT INTO intents VALUES (?, ?, 0)", (snapshot_id, operation))
        db.commit()


@contextlib.contextmanager
def slow_overlaybd_commit(obd: Obd, started: Path, seconds: float = 60) -> Iterator[None]:
    """overlaybd-commit touches ``started``, then waits ``seconds`` before it does anything."""
    tool = obd.sim.tools_dir / "overlaybd-commit"
    real = tool.with_name("overlaybd-commit.real")
    tool.rename(real)
    try:
        tool.write_text(
            "#!/bin/sh\n"
            f"touch {shlex.quote(str(started))}\n"
            f"sleep {seconds}\n"
            f'exec {shlex.quote(str(real))} "$@"\n'
        )
        tool.chmod(0o755)
        yield
    finally:
        real.replace(tool)
