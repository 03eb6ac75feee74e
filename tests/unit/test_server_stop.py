"""Tests of the stop's order in obdsnap.server: the snapshotter is closed before the
GOAWAY, but never holds the GOAWAY back for good."""

from __future__ import annotations

import asyncio
import logging
from typing import cast

import pytest

from obdsnap import server
from obdsnap.snapshotter import Snapshotter


class Closing:
    def __init__(self, takes: float) -> None:
        self.takes = takes
        self.closed = False

    async def close(self) -> None:
        await asyncio.sleep(self.takes)
        self.closed = True


async def test_the_snapshotter_is_closed_before_the_go_away() -> None:
    snapshotter = Closing(takes=0.01)
    await server._close_before_go_away(cast(Snapshotter, snapshotter))
    assert snapshotter.closed


async def test_a_close_that_hangs_does_not_hold_the_go_away_back(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A mutation stuck on a device: the GOAWAY (and the retry of the held calls) goes
    out after the bound all the same."""
    monkeypatch.setattr(server, "DRAIN_TIMEOUT_S", 0.05)
    snapshotter = Closing(takes=3600)
    with caplog.at_level(logging.WARNING, logger="obdsnap.server"):
        await asyncio.wait_for(server._close_before_go_away(cast(Snapshotter, snapshotter)), 10)
    assert not snapshotter.closed
    assert "snapshotter still closing after 0s; going away first" in caplog.text
