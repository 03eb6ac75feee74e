"""benchmarks/profile_top.py: shares of a py-spy raw profile, per function."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from profile_top import function_of, read_profile, top_rows

RAW = [
    "main (obdsnap/cli.py:10);serve (obdsnap/server.py:20);handle (obdsnap/service.py:30) 6",
    "main (obdsnap/cli.py:10);serve (obdsnap/server.py:21) 2",
    # A recursive function is on the stack once per sample, not twice.
    "main (obdsnap/cli.py:10);walk (obdsnap/x.py:5);walk (obdsnap/x.py:6) 2",
    "not a sample line",
]


def test_a_function_is_one_row_whatever_its_line() -> None:
    assert function_of("serve (obdsnap/server.py:20)") == "serve (obdsnap/server.py)"
    assert function_of("run (/usr/lib/python3.11/asyncio/runners.py:118)") == (
        "run (asyncio/runners.py)"
    )
    assert function_of("flush (/venv/lib/python3.11/site-packages/grpclib/protocol.py:9)") == (
        "flush (grpclib/protocol.py)"
    )
    assert function_of("<module>") == "<module>"


def test_total_counts_a_stack_once_and_self_its_top() -> None:
    profile = read_profile(RAW)
    assert profile.samples == 10
    assert profile.total["main (obdsnap/cli.py)"] == 10
    assert profile.total["serve (obdsnap/server.py)"] == 8
    assert profile.self["serve (obdsnap/server.py)"] == 2
    assert profile.total["walk (obdsnap/x.py)"] == 2
    assert profile.self["handle (obdsnap/service.py)"] == 6


def test_rows_are_percentages_heaviest_first() -> None:
    rows = top_rows(read_profile(RAW), 2)
    assert rows[0] == {"function": "main (obdsnap/cli.py)", "total_pct": 100.0, "self_pct": 0.0}
    assert rows[1]["function"] == "serve (obdsnap/server.py)"
    assert rows[1]["total_pct"] == 80.0
    # The heaviest by self that the total rows left out follow them.
    assert {"function": "handle (obdsnap/service.py)", "total_pct": 60.0, "self_pct": 60.0} in rows
