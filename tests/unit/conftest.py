"""The unit suite's snapshotter: obdsnap in-process on fake devices, without root."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from support.inprocess import InProcess, start_in_process


@pytest.fixture
async def obd(tmp_path: Path) -> AsyncIterator[InProcess]:
    node = await start_in_process(tmp_path)
    yield node
    await node.close()
