"""Summaries, JSON and PNG charts shared by the benchmarks.

Percentiles are nearest-rank over the sorted values (the value at index
round(q x (n - 1))), so p99 of fewer than 100 values is the largest or close to
it. A spread is the median over rounds and half the range relative to it, as
``compare.sh`` quotes its noise.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile; ``fraction`` in [0, 1]."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def latency_ms(seconds: Sequence[float]) -> dict[str, float]:
    """p50, p99 and max of latencies given in seconds, in milliseconds."""
    return {
        "p50_ms": round(percentile(seconds, 0.5) * 1000, 1),
        "p99_ms": round(percentile(seconds, 0.99) * 1000, 1),
        "max_ms": round(max(seconds) * 1000, 1),
    }


@dataclass(frozen=True)
class Spread:
    median: float
    low: float
    high: float

    @property
    def noise(self) -> float:
        """Half the range relative to the median (0 for one round or a zero median)."""
        return (self.high - self.low) / 2 / self.median if self.median else 0.0

    def as_dict(self) -> dict[str, float]:
        return {
            "median": round(self.median, 4),
            "low": round(self.low, 4),
            "high": round(self.high, 4),
            "noise": round(self.noise, 3),
        }


def spread(values: Sequence[float]) -> Spread:
    if not values:
        raise ValueError("no values")
    return Spread(statistics.median(values), min(values), max(values))


def ratio(numerator: float, denominator: float) -> float | None:
    return round(numerator / denominator, 3) if denominator else None


def write_json(path: Path, document: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")


def publish(out: Path, name: str, document: Mapping[str, Any]) -> None:
    """The document as ``out``/``name``.json and on stdout."""
    write_json(out / f"{name}.json", document)
    print(json.dumps(document, indent=2))


def bar_chart(
    path: Path,
    title: str,
    ylabel: str,
    groups: Sequence[str],
    series: Mapping[str, Sequence[float]],
    targets: Mapping[str, float] | None = None,
) -> None:
    """Grouped bars: one group per ``groups`` entry, one bar per series; dashed target lines."""
    import matplotlib  # imported here: only the chart needs the bench extra

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(max(5.0, 1.2 * len(groups) * len(series)), 3.5))
    width = 0.8 / max(1, len(series))
    for offset, (name, values) in enumerate(series.items()):
        positions = [index + offset * width for index in range(len(groups))]
        axes.bar(positions, values, width, label=name)
    axes.set_xticks([index + width * (len(series) - 1) / 2 for index in range(len(groups))])
    axes.set_xticklabels(groups)
    for name, value in (targets or {}).items():
        axes.axhline(value, linestyle="--", linewidth=1, color="grey")
        axes.annotate(name, (0, value), fontsize=7, color="grey", va="bottom")
    axes.set_title(title)
    axes.set_ylabel(ylabel)
    axes.legend(fontsize=7)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    pyplot.close(figure)


def checks_in(out: Path) -> list[dict[str, Any]]:
    """The target checks of every result document in ``out``."""
    found: list[dict[str, Any]] = []
    for path in sorted(out.glob("*.json")):
        document = json.loads(path.read_text())
        found += [{"file": path.name, **check} for check in document.get("targets", [])]
        found += [
            {
                "file": path.name,
                "name": f"storm p99 under load {row['mode']} K={row['concurrency']} (x quiet)",
                "value": row["p99_ratio"],
                "target": 2.0,
                "met": row["met"],
            }
            for row in document.get("pairs", [])
        ]
    return found


def storm_lines(document: Mapping[str, Any]) -> list[str]:
    return [
        f"storm {row['mode']:<9} K={row['concurrency']:<4} {row['storm_s']['median']:.3f} s"
        f"  p50/p99 {row['p50_ms']}/{row['p99_ms']} ms  CPU/device"
        f" {row['obdsnap_cpu_ms_per_device']} obdsnap, {row['cpu_ms_per_device']} total ms"
        f"  Remove {row['remove_containers_s']}"
        f" + {row['remove_images_s']} s"
        for row in document["summary"]
    ]


def scale_lines(document: Mapping[str, Any]) -> list[str]:
    return [
        f"scale N={row['snapshots']:<7} serving {row['serving_s']} s  List {row['list_s']} s"
        f"  RSS {row['rss_mib']} MiB (peak {row['hwm_mib']})"
        + (f"; obdsnap/reference {row['ratio_to_reference']}" if "reference" in row else "")
        for row in document["sizes"]
    ]


def memory_lines(document: Mapping[str, Any]) -> list[str]:
    servers = {name: figures["rss_kib"] // 1024 for name, figures in document["servers"].items()}
    ratios = document["ratio_obdsnap_to_reference"]
    return [
        f"memory N={document['store']['snapshots']} RSS MiB {servers}, obdsnap/reference:"
        f" RSS {ratios['rss']}, growth {ratios['rss_growth']}"
    ]


def headline(out: Path) -> list[str]:
    """The figures of each result document in ``out`` that has them, a line each."""
    lines: list[str] = []
    for name, lines_of in (
        ("storm", storm_lines),
        ("scale", scale_lines),
        ("memory", memory_lines),
    ):
        path = out / f"{name}.json"
        if path.exists():
            lines += lines_of(json.loads(path.read_text()))
    return lines


def main(argv: Sequence[str]) -> int:
    """Prints the headline figures and target checks found in a results directory."""
    out = Path(argv[0]) if argv else Path(".build/bench")
    print("\n".join(headline(out)))
    for check in checks_in(out):
        verdict = "met" if check["met"] else "NOT met"
        print(f"{check['name']:<48} {check['value']:>9} (target {check['target']}) {verdict}")
    print(f"charts: {' '.join(str(path) for path in sorted(out.glob('*.png')))}")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
