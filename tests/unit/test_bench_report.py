"""The summary figures of benchmarks/: percentiles, spreads, CPU from /proc/<pid>/stat."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from proc import TICKS, CpuTimes, parse_stat, per_device_ms
from report import latency_ms, percentile, ratio, spread


def test_percentile_is_nearest_rank() -> None:
    values = [float(value) for value in range(1, 101)]  # 1..100, shuffled order irrelevant
    assert percentile(list(reversed(values)), 0.5) == 51.0  # index round(49.5) = 50
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 1.0) == 100.0
    assert percentile(values, 0.0) == 1.0


def test_p99_of_few_values_is_the_largest() -> None:
    assert percentile([0.3, 0.1, 0.2], 0.99) == 0.3
    assert percentile([5.0], 0.5) == 5.0


def test_percentile_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError):
        percentile([], 0.5)


def test_latency_ms_converts_and_rounds() -> None:
    assert latency_ms([0.1, 0.2, 0.30004]) == {"p50_ms": 200.0, "p99_ms": 300.0, "max_ms": 300.0}


def test_spread_is_median_and_half_range() -> None:
    figures = spread([1.0, 3.0, 2.0, 10.0])
    assert (figures.median, figures.low, figures.high) == (2.5, 1.0, 10.0)
    assert figures.noise == pytest.approx(9 / 2 / 2.5)
    assert spread([4.0]).as_dict() == {"median": 4.0, "low": 4.0, "high": 4.0, "noise": 0.0}
    assert spread([0.0, 0.0]).noise == 0.0


def test_ratio_of_zero_is_none() -> None:
    assert ratio(3.0, 2.0) == 1.5
    assert ratio(1.0, 0.0) is None


def test_parse_stat_reads_utime_to_cstime_past_a_name_with_spaces() -> None:
    fields = ["S"] + ["0"] * 10 + [str(TICKS), str(2 * TICKS), str(3 * TICKS), str(4 * TICKS)]
    line = "1234 (python3 -m (x)) " + " ".join(fields + ["0"] * 30)
    assert parse_stat(line) == CpuTimes(own=3.0, children=7.0)


def test_cpu_per_device_splits_and_sums() -> None:
    figures = per_device_ms(CpuTimes(0.2, 0.1), CpuTimes(0.1, 0.05), 10)
    assert figures == {"obdsnap": 20.0, "simulator": 10.0, "children": 15.0, "total": 45.0}
    assert per_device_ms(CpuTimes(1, 1), CpuTimes(1, 1), 0)["total"] is None


def test_cpu_times_subtract() -> None:
    assert CpuTimes(3.0, 2.0) - CpuTimes(1.0, 0.5) == CpuTimes(2.0, 1.5)
